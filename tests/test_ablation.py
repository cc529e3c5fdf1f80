"""AblationLens against forward hooks on private copies; mean/resample by hand; Parquet runs; top_positions."""

from __future__ import annotations

import copy

import pytest
import torch

from lczerolens.board import LczeroBoard, encode_boards
from lczerolens.errors import InvalidOptionError, LensError
from lczerolens.lenses import AblationLens, rank_units
from lczerolens.model import LczeroModel
from lczerolens.testing import random_boards

FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 3 3",
    "6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1",
]


@pytest.fixture(scope="module")
def maia(maia_pb_path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture(scope="module")
def attention_model(tmp_path_factory) -> LczeroModel:
    from lczerolens.testing import AttentionNetSpec, write_attention_net

    spec = AttentionNetSpec(embedding="PE_MAP", embedding_size=16, encoder_layers=2, heads=2, seed=9)
    path = write_attention_net(spec, tmp_path_factory.mktemp("ablation") / "attn.pb.gz")
    return LczeroModel.from_path(path)


def boards_with_history() -> list[LczeroBoard]:
    boards = [LczeroBoard(f) for f in FENS]
    boards.append(LczeroBoard.from_moves(["e2e4", "c7c5", "g1f3", "d7d6"]))
    return boards


def read_value(outputs) -> torch.Tensor:
    if "wdl_logits" in outputs:
        return (outputs["wdl_logits"][:, 0] - outputs["wdl_logits"][:, 2]).double()
    return outputs["value_logit"].reshape(-1).double()


def hooked(model, boards, name, edit) -> dict:
    """The network's outputs with module ``name``'s output passed through ``edit``: a hook on a private copy."""
    net = copy.deepcopy(model.network)
    module = dict(net.named_modules())[name]
    handle = module.register_forward_hook(lambda m, i, o: edit(o))
    try:
        with torch.no_grad():
            return net(encode_boards(boards, model.input_format))
    finally:
        handle.remove()


def zero_unit(axis: int, unit: int, n: int):
    """An edit that zeroes ``unit`` along ``axis`` of the boards-first view of an output of ``n`` boards."""

    def edit(o: torch.Tensor) -> torch.Tensor:
        view = o.reshape(n, *o.shape[1:]) if o.shape[0] == n else o.reshape(n, o.shape[0] // n, *o.shape[1:])
        view = view.clone()
        view.select(axis, unit).zero_()
        return view.reshape(o.shape)

    return edit


@pytest.mark.parametrize("name", ["block3/conv2/relu", "block1/conv1/relu", "block5/conv2/se/mul"])
def test_zeroed_channel_equals_a_hook(maia, name):
    boards = boards_with_history()
    n = len(boards)
    lens = AblationLens(name, max_rows=40)  # passes of 10 channels: the checked first pass, then the fast ones
    value = lens.effects(maia, boards, target="value")[name]
    assert value.shape == (n, 64) and value.dtype == torch.float32
    top = lens.ablate(maia, boards)  # top legal move, read at the clean position's index
    clean = maia.network(encode_boards(boards, 1))
    index = torch.tensor([b.encode_move(m) for b, m in zip(boards, top.moves, strict=True)])
    for channel in (0, 17, 63):
        out = hooked(maia, boards, name, zero_unit(1, channel, n))
        expected = read_value(out) - read_value(clean)
        torch.testing.assert_close(value[:, channel].double(), expected, atol=1e-3, rtol=0)
        moved = out["policy"].gather(1, index[:, None])[:, 0] - clean["policy"].gather(1, index[:, None])[:, 0]
        torch.testing.assert_close(top.effects[name][:, channel], moved.detach(), atol=1e-3, rtol=0)


def test_move_targets_and_units_subset(maia):
    boards = [LczeroBoard(FENS[0]), LczeroBoard(FENS[1])]
    name = "block4/conv2/relu"
    effects = AblationLens(name).effects(maia, boards, target=["f1b5", "g8f6"], units=[40, 3])[name]
    assert effects.shape == (2, 2)
    clean = maia.network(encode_boards(boards, 1))["policy"]
    index = torch.tensor([boards[0].encode_move("f1b5"), boards[1].encode_move("g8f6")])
    for column, channel in enumerate((40, 3)):
        out = hooked(maia, boards, name, zero_unit(1, channel, 2))["policy"]
        expected = (out - clean).gather(1, index[:, None])[:, 0]
        torch.testing.assert_close(effects[:, column], expected.detach(), atol=1e-3, rtol=0)


def test_heads_neurons_and_tokens_of_an_attention_net(attention_model):
    boards = boards_with_history()
    n = len(boards)
    clean = read_value(attention_model.network(encode_boards(boards, attention_model.input_format)))
    cases = [
        ("encoder1/mha/QKV/matmul", 1, 2),  # [N, heads, 64, depth]: heads
        ("encoder0/mha/QK/softmax", 1, 2),
        ("encoder0/ffn/dense1/sqrrelu/sqr", 2, 48),  # [N, 64, hidden]: FFN neurons
        ("encoder0/ln2", 2, 16),  # the token stream's features
    ]
    for name, axis, units in cases:
        effects = AblationLens(name, max_rows=8).effects(attention_model, boards, target="value")[name]
        assert effects.shape == (n, units), name
        for unit in sorted({0, 1, units - 1}):
            out = hooked(attention_model, boards, name, zero_unit(axis, unit, n))
            torch.testing.assert_close(effects[:, unit].double(), read_value(out) - clean, atol=1e-3, rtol=0)


def test_mean_mode_uses_the_batch_mean_or_a_reference(maia):
    from lczerolens.lenses import ActivationLens

    boards = boards_with_history()
    reference = random_boards(5, seed=4)
    name = "block2/conv2/relu"
    clean = read_value(maia.network(encode_boards(boards, 1)))
    for ref in (None, reference):
        lens = AblationLens(name, mode="mean", reference=ref)
        effects = lens.effects(maia, boards, target="value", batch_size=3)[name]  # the mean spans the chunks
        mean = ActivationLens(name).activations(maia, boards if ref is None else ref)[name].mean(0)
        for channel in (5, 30):

            def edit(o, channel=channel, mean=mean):
                o = o.clone()
                o[:, channel] = mean[channel]
                return o

            expected = read_value(hooked(maia, boards, name, edit)) - clean
            torch.testing.assert_close(effects[:, channel].double(), expected, atol=1e-3, rtol=0)


def test_resample_mode_takes_the_unit_from_the_donor(maia, attention_model):
    from lczerolens.lenses import ActivationLens

    boards = boards_with_history()
    for model, name, axis in ((maia, "block3/conv2/relu", 1), (attention_model, "encoder0/mha/QKV/matmul", 1)):
        lens = AblationLens(name, mode="resample", seed=3)
        donors = lens.donors(len(boards))
        assert not (donors == torch.arange(len(boards))).any()
        assert torch.equal(donors, AblationLens(name, mode="resample", seed=3).donors(len(boards)))
        effects = lens.effects(model, boards, target="value", batch_size=2)[name]
        acts = ActivationLens(name).activations(model, boards)[name]
        clean = read_value(model.network(encode_boards(boards, model.input_format)))
        for unit in (0, 1):

            def edit(o, unit=unit, acts=acts, donors=donors, axis=axis):
                view = o.reshape(acts.shape).clone()
                view.select(axis, unit).copy_(acts[donors].select(axis, unit))
                return view.reshape(o.shape)

            expected = read_value(hooked(model, boards, name, edit)) - clean
            torch.testing.assert_close(effects[:, unit].double(), expected, atol=1e-3, rtol=0)


def test_chunks_agree_and_the_model_is_untouched(maia):
    boards = random_boards(7, seed=2)
    name = "block5/conv2/relu"
    before = {k: v.clone() for k, v in maia.network.state_dict().items()}
    whole = AblationLens(name).effects(maia, boards, target="win")[name]
    parts = AblationLens(name, max_rows=9).effects(maia, boards, target="win", batch_size=3)[name]
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=0)
    for key, value in maia.network.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in maia.network.modules())
    # A plain forward still gives what it gave before the lens ran.
    x = encode_boards(boards, 1)
    torch.testing.assert_close(maia.network(x)["policy"], copy.deepcopy(maia.network)(x)["policy"])


def test_clear_errors(maia):
    board = LczeroBoard()
    with pytest.raises(InvalidOptionError, match="mode='average'"):
        AblationLens("block0/conv2/relu", mode="average")
    with pytest.raises(LensError, match="no module matches 'block9/conv2/relu'"):
        AblationLens("block9/conv2/relu").effects(maia, board)
    with pytest.raises(InvalidOptionError, match="out of range"):
        AblationLens("block0/conv2/relu").effects(maia, board, units=[64])
    with pytest.raises(LensError, match="at least 2 boards"):
        AblationLens("block0/conv2/relu", mode="resample").effects(maia, board)
    with pytest.raises(InvalidOptionError, match="reference="):
        AblationLens("block0/conv2/relu", reference=[board])
    from lczerolens.lenses.ablation import unit_axis

    with pytest.raises(LensError, match="no units to ablate"):
        unit_axis(torch.zeros(2, 3, 4, 5), "x")  # no maia module has such an output; the rule itself


def test_rank_units_of_effects(maia):
    boards = boards_with_history()
    effects = AblationLens("block5/conv2/relu").effects(maia, boards, target="value")
    table = rank_units(effects)
    assert table.num_rows == 64
    first = table.slice(0, 1).to_pylist()[0]
    mean_abs = effects["block5/conv2/relu"].abs().double().mean(0)
    assert first["unit"] == int(mean_abs.argmax()) and first["rank"] == 1
    assert first["mean_abs"] == pytest.approx(float(mean_abs.max()), rel=1e-6)


SMALL_PGN = """[Event "A"]
[Result "1-0"]

1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0

[Event "Mate"]
[Result "1-0"]

1. e4 e5 2. Bc4 Nc6 3. Qh5 Nf6 4. Qxf7# 1-0
"""


def test_explain_dataset_writes_effects_and_ranks_units(maia, tmp_path):
    pytest.importorskip("pyarrow")
    from lczerolens.data import read_pgn
    from lczerolens.run import explain_dataset, load_results

    pgn = tmp_path / "small.pgn"
    pgn.write_text(SMALL_PGN)
    modules = ("block4/conv2/relu", "block5/conv2/relu")
    lens = AblationLens(modules)
    source = read_pgn(pgn, every=2, min_ply=1)
    out = explain_dataset(maia, source, tmp_path / "run", targets=("top", "value"), lens=lens, batch_size=3,
                          progress=False)  # fmt: skip
    table = load_results(out)
    assert table.schema.field("effects").type.value_type == "float"
    assert "relevance" not in table.column_names and table.schema.metadata[b"lens"].decode() == repr(lens)
    rows = table.to_pylist()
    positions = list(read_pgn(pgn, every=2, min_ply=1))
    boards = [p.board for p in positions]
    # top: a position without legal moves has no row; value: every position; each with both modules.
    assert len(rows) == 2 * (len(boards) + sum(1 for b in boards if any(True for _ in b.legal_moves)))
    for target in ("top", "value"):
        mine = [r for r in rows if r["target"] == target]
        chosen = [b for b in boards if any(True for _ in b.legal_moves)] if target == "top" else boards
        result = lens.ablate(maia, chosen, None if target == "top" else "value")
        for name in modules:
            got = torch.tensor([r["effects"] for r in mine if r["module"] == name])
            torch.testing.assert_close(got, result.effects[name], atol=1e-4, rtol=0)
        assert [r["fen"] for r in mine if r["module"] == modules[0]] == [b.fen() for b in chosen]
        if target == "top":
            assert [r["move"] for r in mine if r["module"] == modules[0]] == [m.uci() for m in result.moves]
    ranked = rank_units(out)
    assert ranked.num_rows == 2 * 2 * 64
    from_table = rank_units(table)
    assert ranked.to_pylist() == from_table.to_pylist()
    value_block5 = [r for r in ranked.to_pylist() if r["target"] == "value" and r["module"] == modules[1]]
    expected = lens.effects(maia, boards, target="value")[modules[1]].abs().double().mean(0)
    assert value_block5[0]["unit"] == int(expected.argmax())
    assert [r["rank"] for r in value_block5] == list(range(1, 65))


def test_cli_run_ablate(maia_pb_path, tmp_path):
    pytest.importorskip("pyarrow")
    from lczerolens.cli import main
    from lczerolens.run import load_results

    pgn = tmp_path / "small.pgn"
    pgn.write_text(SMALL_PGN)
    code = main(["run", str(maia_pb_path), str(pgn), "--out", str(tmp_path / "run"), "--every", "3",
                 "--target", "value", "--ablate", "block5/conv2/relu", "--no-progress"])  # fmt: skip
    assert code == 0
    table = load_results(tmp_path / "run")
    assert set(table.column("module").to_pylist()) == {"block5/conv2/relu"}
    assert all(len(e) == 64 for e in table.column("effects").to_pylist())


NEPO = "assets/cache/chess-data/pgn/nepomniachtchi-liren-game1.pgn"


def brute_force(model, boards, module, unit, k):
    """Every position's best square by a plain loop over the activations, sorted."""
    from lczerolens.concepts import activation_maps
    from lczerolens.lenses import ActivationLens

    act = ActivationLens(module).activations(model, boards)[module]
    maps = activation_maps(act, boards, model.input_format)[:, unit]
    found = []
    for i in range(len(boards)):
        row = maps[i].tolist()
        best = max(row)
        found.append((best, row.index(best), i))
    found.sort(key=lambda e: (-e[0], e[2]))
    return found[:k]


def test_top_positions_equals_brute_force(maia, attention_model):
    from lczerolens.concepts import top_positions
    from lczerolens.data import read_pgn

    reader = read_pgn(NEPO, every=3)
    positions = list(reader)
    boards = [p.board for p in positions]
    expected = brute_force(maia, boards, "block3/conv2/relu", 17, 5)
    for source in (reader, positions, boards):
        top = top_positions(maia, source, "block3/conv2/relu", 17, k=5, batch_size=7)
        assert [(q, boards.index(b) if isinstance(b, LczeroBoard) else positions.index(b)) for _, q, b in top] == [
            (q, i) for _, q, i in expected
        ]
        assert [s for s, _, _ in top] == pytest.approx([s for s, _, _ in expected], abs=1e-5)
    # The square is the python-chess square of the board: the map read back there gives the score.
    score, square, position = top_positions(maia, NEPO, "block3/conv2/relu", 17, k=1, batch_size=16)[0]
    from lczerolens.concepts import unit_maps

    assert float(unit_maps(maia, [position.board], "block3/conv2/relu", 17)[0, square]) == pytest.approx(score)
    # An attention body's token stream: unit = a feature of the tokens.
    few = boards[:12]
    top = top_positions(attention_model, few, "encoder1/ln2", 3, k=4, batch_size=5)
    expected = brute_force(attention_model, few, "encoder1/ln2", 3, 4)
    assert [(q, few.index(b)) for _, q, b in top] == [(q, i) for _, q, i in expected]


def test_top_positions_errors_and_picture(maia, attention_model):
    from lczerolens.concepts import render_top_positions, top_positions

    boards = boards_with_history()
    with pytest.raises(InvalidOptionError, match="unit=64"):
        top_positions(maia, boards, "block3/conv2/relu", 64)
    with pytest.raises(LensError, match="matches 6 modules"):
        top_positions(maia, boards, "block*/conv2/relu", 0)
    with pytest.raises(LensError, match="no activation per square"):
        top_positions(attention_model, boards, "encoder0/mha/QK/softmax", 0)
    top = top_positions(maia, boards, "block3/conv2/relu", 5, k=3)
    assert len(top) == 3 and top[0][0] >= top[1][0] >= top[2][0]
    picture = render_top_positions(maia, top, "block3/conv2/relu", 5)
    assert picture.svg.count('class="board"') == 3 and "#1: " in picture.svg


def test_summarize_refuses_an_ablation_run(maia, tmp_path):
    pytest.importorskip("pyarrow")
    from lczerolens.errors import RunError
    from lczerolens.run import explain_dataset, summarize

    epd = tmp_path / "two.epd"
    epd.write_text("\n".join(f.rsplit(" ", 2)[0] for f in FENS[:2]) + "\n")
    out = explain_dataset(maia, epd, tmp_path / "run", targets=("value",), lens=AblationLens("block5/conv2/relu"),
                          progress=False)  # fmt: skip
    with pytest.raises(RunError, match="rank its units"):
        summarize(out)


def test_concurrent_calls_stay_exact(maia):
    from concurrent.futures import ThreadPoolExecutor

    boards = boards_with_history()
    lenses = [AblationLens("block4/conv2/relu"), AblationLens("block2/conv1/relu", mode="mean")]
    alone = [lens.effects(maia, boards, target="value") for lens in lenses]
    x = encode_boards(boards, 1)
    plain = maia.network(x)["policy"]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(lens.effects, maia, boards, target="value") for lens in lenses]
        forwards = [pool.submit(lambda: maia.network(x)["policy"]) for _ in range(3)]
        together = [f.result() for f in futures]
        for f in forwards:
            torch.testing.assert_close(f.result(), plain)
    for a, b, lens in zip(alone, together, lenses, strict=True):
        name = lens.modules[0]
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def test_block_outputs_rerun_only_what_follows_them(maia, monkeypatch):
    """After one checked fan-out pass, a block output's passes feed one board to the part before it; a module
    inside a block (before the skip connection) takes copies of the previous block's output, the whole input
    repeated only where there is no previous block."""
    from lczerolens.lenses import ablation

    feeds: list[int] = []
    original = ablation._run

    def spy(network, x, replace, skip, k):
        feeds.append(x.shape[0])
        return original(network, x, replace, skip, k)

    monkeypatch.setattr(ablation, "_run", spy)
    boards = boards_with_history()  # 4 boards, 2 units per pass with max_rows=8
    AblationLens("block3/conv2/relu", max_rows=8).effects(maia, boards, target="value", units=range(6))
    assert feeds == [4, 1, 1]
    feeds.clear()
    AblationLens("block3/conv1/relu", max_rows=8).effects(maia, boards, target="value", units=range(6))
    assert feeds == [4, 4, 1, 1]  # the fan-out fails once, the cut at block2/conv2/relu is checked, then used
    feeds.clear()
    AblationLens("block0/conv1/relu", max_rows=8).effects(maia, boards, target="value", units=range(6))
    assert feeds == [4, 8, 8, 8]  # no block before it: the input repeated for each pair of units


def test_lc0_onnx_export_gives_the_same_effects(attention_model, lc0_binary, tmp_path):
    """The same attention net as lc0's own ONNX export (tokens run as [N*64, E] there): the same effects."""
    from lens_oracles import export

    onnx_path = export(lc0_binary, attention_model.source, tmp_path / "attn.onnx")
    exported = LczeroModel.from_path(onnx_path, input_format=attention_model.input_format)
    boards = boards_with_history()
    for name in ("encoder1/mha/QKV/matmul", "encoder0/ffn/dense1/sqrrelu/sqr", "encoder1/ln2"):
        native = AblationLens(name).effects(attention_model, boards, target="value")[name]
        theirs = AblationLens(name).effects(exported, boards, target="value")[name]
        torch.testing.assert_close(theirs, native, atol=1e-3, rtol=0)


def test_docstring_examples_run():
    import doctest

    from lczerolens.concepts import top
    from lczerolens.lenses import ablation

    for module in (ablation, top):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_rank_units_takes_effects_per_target() -> None:
    effects = {"block0/conv2/relu": torch.tensor([[0.0, -2.0, 1.0], [0.0, 2.0, -4.0]])}
    table = rank_units({"value": effects, "top": effects})
    rows = table.to_pylist()
    assert [r["target"] for r in rows] == ["value"] * 3 + ["top"] * 3
    assert [r["unit"] for r in rows[:3]] == [2, 1, 0] and rows[0]["mean_abs"] == 2.5
    assert rank_units(effects).to_pylist()[0]["target"] is None
    with pytest.raises(LensError, match="positions, units"):
        rank_units({"block0/conv2/relu": torch.zeros(3)})
