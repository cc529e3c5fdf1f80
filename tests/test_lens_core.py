"""What every lens shares: targets, batches, the Relevance result, latent and conditional relevance, threads."""

from __future__ import annotations

import math
import threading

import chess
import pytest
import torch

from lczerolens.board import LczeroBoard
from lczerolens.errors import InputShapeError, InvalidMoveError, LczeroLensError, LensError
from lczerolens.lenses import LrpLens, Relevance
from lczerolens.lenses.lrp.lens import GAMMA_COMPOSITE
from lczerolens.testing import random_boards, write_random_net

ITALIAN = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"


@pytest.fixture(scope="module")
def maia(maia_pb_path):
    from lczerolens.model import LczeroModel

    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    from lczerolens.model import LczeroModel

    path = write_random_net(tmp_path_factory.mktemp("att") / "att.pb.gz", "attention", seed=5)
    return LczeroModel.from_path(path)


@pytest.fixture(scope="module")
def positions():
    return random_boards(6, seed=21, min_plies=4)


# --------------------------------------------------------------------------------------------------------------
# Targets: one language for every lens


def test_san_uci_move_and_index_name_the_same_target(maia):
    board = LczeroBoard(ITALIAN)
    lens = LrpLens()
    by_uci = lens.relevance(maia, board, "f1c4")
    index = board.encode_move("f1c4")
    for same in ("Bc4", chess.Move.from_uci("f1c4"), index, torch.tensor(index)):
        rel = lens.relevance(maia, board, same)
        assert torch.equal(rel.planes, by_uci.planes) and rel.moves == by_uci.moves


def test_castling_in_san(maia):
    board = LczeroBoard("r3k2r/pppq1ppp/2npbn2/4p3/4P3/2NPBN2/PPPQ1PPP/R3K2R w KQkq - 0 1")
    a = LrpLens().relevance(maia, board, "O-O")
    b = LrpLens().relevance(maia, board, "e1g1")
    assert torch.equal(a.planes, b.planes)


@pytest.mark.parametrize(
    "target, error, match",
    [
        ("Value", InvalidMoveError, "did you mean 'value'"),
        ("wim", InvalidMoveError, "did you mean 'win'"),
        (b"e2e4", InvalidMoveError, "bytes"),
        ("Nf6", InvalidMoveError, "not a legal move"),
        (torch.tensor([1.5]), InputShapeError, "integer policy index"),
        (["value"], LensError, "names a head"),
        (3.5, LensError, "is not None"),
    ],
)
def test_bad_targets_get_one_clear_error(maia, target, error, match):
    with pytest.raises(error, match=match):
        LrpLens().relevance(maia, LczeroBoard(), target)


def test_misspelt_record_name_gets_a_suggestion(maia):
    with pytest.raises(LensError, match="did you mean"):
        LrpLens().relevance(maia, LczeroBoard(), record="block3/conv2/rleu")


# --------------------------------------------------------------------------------------------------------------
# Batches, progress, the result object


def test_batch_size_gives_the_same_result_as_one_call(maia, positions):
    lens = LrpLens()
    whole = lens.relevance(maia, positions, "value")
    parts = lens.relevance(maia, positions, "value", batch_size=4, progress=True)
    scale = whole.planes.abs().max()
    # float32 convolutions sum in a batch-size-dependent order: a few 1e-6 of the map's largest value
    torch.testing.assert_close(parts.planes / scale, whole.planes / scale, rtol=0, atol=5e-6)
    assert torch.equal(parts.target, whole.target) or torch.allclose(parts.target, whole.target, atol=1e-6)
    assert [b.fen() for b in parts.boards] == [b.fen() for b in whole.boards]
    with pytest.raises(LensError, match="batch_size"):
        lens.relevance(maia, positions, "value", batch_size=0)


def test_conservation_is_the_share_of_the_target(maia, positions):
    rel = LrpLens().relevance(maia, positions, None)
    expected = rel.planes.sum(dim=(1, 2, 3)) / rel.target
    torch.testing.assert_close(rel.conservation, expected)
    assert "map sums to" in rel.caption(0)
    zero = Relevance(torch.zeros(1, 112, 8, 8), torch.zeros(1), [LczeroBoard()], 1, "value")
    assert torch.isnan(zero.conservation).all() and "map sums" not in zero.caption(0)


def test_save_and_load_round_trip_with_history(maia, positions, tmp_path):
    rel = LrpLens().relevance(maia, positions[:3], None, record="block2/conv2/relu")
    path = rel.save(tmp_path / "rel.npz")
    back = Relevance.load(path)
    assert torch.equal(back.planes, rel.planes) and torch.equal(back.squares, rel.squares)
    assert torch.equal(back.target, rel.target) and torch.equal(back.policy_indices, rel.policy_indices)
    assert torch.equal(back.layers["block2/conv2/relu"], rel.layers["block2/conv2/relu"])
    assert [b.move_stack for b in back.boards] == [b.move_stack for b in rel.boards]
    for a, b in zip(back.boards, rel.boards, strict=True):
        assert torch.equal(a.to_input_tensor(), b.to_input_tensor())
    assert back.moves == rel.moves and back.target_name == rel.target_name


def test_load_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(LczeroLensError, match="not a relevance"):
        Relevance.load(bad)
    with pytest.raises(LczeroLensError, match="no saved relevance"):
        Relevance.load(tmp_path / "missing.npz")


def test_cat_and_indexing_are_inverse(maia, positions):
    rel = LrpLens().relevance(maia, positions, "value")
    again = Relevance.cat([rel[0:2], rel[2:]])
    assert torch.equal(again.planes, rel.planes) and torch.equal(again.squares, rel.squares)
    with pytest.raises(InputShapeError):
        Relevance.cat([rel, LrpLens().relevance(maia, positions, None)])


# --------------------------------------------------------------------------------------------------------------
# Latent relevance and conditional relevance (CRP)


def _bias_free_double(model):
    from lczerolens.model.native import load_pb

    net = load_pb(model).double()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    return net


def test_latent_relevance_propagates_to_the_input_relevance(maia_pb_path, positions):
    """In float64, R at a block's output, sent down from there on its own, gives the input relevance."""
    net = _bias_free_double(maia_pb_path)
    # The gate held constant (the default's gate rule for value targets keeps a share at the sigmoid's offset)
    # and the ReLUs under the identity rule (the default's smoothed ReLU rule does not conserve).
    lens = LrpLens(epsilon=1e-12, softmax="cp", se_gate="constant", relu_beta=math.inf)
    layer = "block3/conv2/relu"
    rel = lens.relevance(net, positions, "value", record=layer)
    latent = rel.layers[layer]
    assert latent.shape == (len(positions), 64, 8, 8)
    # Conserving rules: the layer's total equals the input's total equals the explained value.
    torch.testing.assert_close(latent.sum(dim=(1, 2, 3)), rel.planes.sum(dim=(1, 2, 3)), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(latent.sum(dim=(1, 2, 3)), rel.target.double(), rtol=1e-7, atol=1e-9)
    # Propagating R_layer alone from the layer down reproduces the input map.
    tree = lens.explaining_network(net, "value")
    from lczerolens.board import encode_boards

    store = {}
    hook = tree.get_submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        x = encode_boards(positions, net.input_format).double().requires_grad_(True)
        tree(x)
    finally:
        hook.remove()
    a = store["a"]
    seed = torch.where(a != 0, latent / torch.where(a != 0, a, 1), torch.zeros_like(a))
    (g,) = torch.autograd.grad(a, x, seed)
    torch.testing.assert_close(x.detach() * g, rel.planes, rtol=1e-9, atol=1e-12)


def test_record_does_not_change_the_map(maia, positions):
    plain = LrpLens().relevance(maia, positions, None)
    recorded = LrpLens().relevance(maia, positions, None, record=["inputconv/relu", "block5/conv2/relu"])
    assert torch.equal(plain.planes, recorded.planes)
    assert set(recorded.layers) == {"inputconv/relu", "block5/conv2/relu"}


def test_channel_maps_sum_to_the_unconditional_map_maia(maia, positions):
    layer = "block2/conv2/relu"
    lens = LrpLens()
    plain = lens.relevance(maia, positions[:2], None)
    cond = lens.relevance(maia, positions[:2], None, condition=[{layer: [c]} for c in range(64)])
    assert cond.planes.shape == (2 * 64, 112, 8, 8) and len(cond.conditions) == 64
    total = cond.planes.unflatten(0, (2, 64)).sum(dim=1)
    scale = plain.planes.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert ((total - plain.planes).abs() / scale).max() < 1e-5


def test_one_condition_equals_a_masked_gradient(maia, positions):
    layer, channels = "block3/conv2/relu", [17, 40]
    lens = LrpLens()
    rel = lens.relevance(maia, positions[:3], "value", condition={layer: channels})
    # By hand: the gradient at the layer, kept on those channels, sent down to the input.
    tree = lens.explaining_network(maia, "value")
    store = {}
    hook = tree.get_submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        from lczerolens.board import encode_boards

        x = encode_boards(positions[:3], maia.input_format).requires_grad_(True)
        out = tree(x)["wdl_logits"]
    finally:
        hook.remove()
    a = store["a"]
    (ga,) = torch.autograd.grad(out[:, 0] - out[:, 2], a, torch.ones(3), retain_graph=True)
    mask = torch.zeros_like(ga)
    mask[:, channels] = 1
    (gx,) = torch.autograd.grad(a, x, ga * mask)
    torch.testing.assert_close(rel.planes, x.detach() * gx, rtol=1e-5, atol=1e-7)


def test_channel_maps_sum_to_the_unconditional_map_attention(attention, positions):
    layer = "encoder0/ln2"
    lens = LrpLens()
    plain = lens.relevance(attention, positions[:2], "value", record=layer)
    width = plain.layers[layer].shape[-1]
    assert plain.layers[layer].shape[-2:] == (64, width) or plain.layers[layer].shape == (2 * 64, width)
    cond = lens.relevance(attention, positions[:2], "value", condition=[{layer: [c]} for c in range(width)])
    total = cond.planes.unflatten(0, (2, width)).sum(dim=1)
    scale = plain.planes.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert ((total - plain.planes).abs() / scale).max() < 1e-5
    # Tokens split the map too: the 64 squares' conditions add up to the whole.
    one = lens.relevance(attention, positions[:1], "value")
    tokens = lens.relevance(attention, positions[:1], "value", condition=[{layer: {"tokens": [t]}} for t in range(64)])
    torch.testing.assert_close(tokens.planes.sum(dim=0), one.planes[0], rtol=0, atol=1e-5 * float(scale[0]))


@pytest.mark.parametrize(
    "condition, match",
    [
        ({"block3/conv2/relu": [99]}, "outside"),
        ({"nope": [1]}, "no module named"),
        ([{"block3/conv2/relu": [1]}, {"block2/conv2/relu": [1]}], "one module"),
        ({"block3/conv2/relu": []}, "selects no"),
        ({"block3/conv2/relu": {"chanels": [1]}}, "unknown keys"),
    ],
)
def test_bad_conditions(maia, condition, match):
    with pytest.raises(LensError, match=match):
        LrpLens().relevance(maia, LczeroBoard(), condition=condition)


# --------------------------------------------------------------------------------------------------------------
# Never mutating the model: concurrent use of one model stays exact


def test_concurrent_lenses_and_gradients_on_one_model_are_exact(maia):
    boards = random_boards(4, seed=3, min_plies=2)
    lenses = {"eps": LrpLens(), "gamma": LrpLens(**GAMMA_COMPOSITE), "cp": LrpLens(softmax="cp")}
    x0 = torch.stack([b.to_input_tensor() for b in boards])

    def grad_x_input() -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        out = maia(x)["wdl_logits"]
        (g,) = torch.autograd.grad((out[:, 0] - out[:, 2]).sum(), x)
        return x.detach() * g

    reference = {k: lens.relevance(maia, boards, "value").planes for k, lens in lenses.items()}
    reference["grad"] = grad_x_input()
    results: dict[str, list[torch.Tensor]] = {k: [] for k in reference}
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            for _ in range(6):
                if key == "grad":
                    results[key].append(grad_x_input())
                else:
                    results[key].append(lenses[key].relevance(maia, boards, "value").planes)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in reference for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for key, ref in reference.items():
        scale = ref.abs().max()
        assert len(results[key]) == 12
        for got in results[key]:
            assert ((got - ref).abs() / scale).max() <= 1e-6, key


def test_lens_leaves_no_trace_on_the_model(maia):
    before = [(n, id(m), type(m)) for n, m in maia.named_modules()]
    LrpLens(**GAMMA_COMPOSITE).relevance(maia, LczeroBoard(), None, record="block1/conv1/relu")
    LrpLens().relevance(maia, LczeroBoard(), None, condition={"block1/conv2/relu": [3]})
    assert [(n, id(m), type(m)) for n, m in maia.named_modules()] == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in maia.modules())


def test_gamma_on_a_net_without_convolutions_is_refused(attention):
    with pytest.raises(LensError, match="needs convolutions"):
        LrpLens(conv_rule="gamma").relevance(attention, LczeroBoard(), "value")


def test_history_is_drawn_on_the_positions_it_encodes(maia, monkeypatch):
    board = LczeroBoard()
    for san in ("e4", "e5", "Nf3", "Nc6", "Bb5"):
        board.push_san(san)
    rel = LrpLens().relevance(maia, board, None)
    seen = {}

    def capture(boards, values, **options):
        seen["boards"], seen["values"] = boards, values
        return None

    monkeypatch.setattr("lczerolens.visual.render_grid", capture)
    rel.render_history(0)
    drawn = seen["boards"]
    assert [b.fen() for b in drawn[:6]] == [
        LczeroBoard().fen() if k == 5 else _back(board, k).fen() for k in range(6)
    ]
    assert drawn[7].fen() == LczeroBoard().fen()  # older slots repeat the start
    # The piece planes of each slot put relevance only on squares occupied in the drawn position.
    slots = rel.board_planes[0, :104].unflatten(0, (8, 13))[:, :12].sum(dim=1).flatten(1)
    for k in range(6):
        empty = [s for s in chess.SQUARES if drawn[k].piece_at(s) is None]
        assert slots[k, empty].abs().max() == 0


def _back(board: LczeroBoard, plies: int) -> chess.Board:
    past = board.copy()
    for _ in range(plies):
        past.pop()
    return past


def test_half_precision_models_are_explained_in_float32(maia, maia_fp16_onnx_path):
    from lczerolens.model import LczeroModel

    half = LczeroModel.from_path(maia_fp16_onnx_path, half=True)
    assert next(half.parameters()).dtype == torch.float16
    boards = random_boards(3, seed=8, min_plies=2)
    rel = LrpLens().relevance(half, boards, "value")
    ref = LrpLens().relevance(maia, boards, "value")
    assert rel.planes.dtype == torch.float32
    # What is left is the fp16 rounding of the weights themselves (lc0's fp16 export differs by ~1e-2 too).
    assert ((rel.squares - ref.squares).abs().max() / ref.squares.abs().max()) < 0.03
    assert next(half.parameters()).dtype == torch.float16  # the model keeps its own weights


@pytest.mark.parametrize("fen", ["8/8/8/8/8/8/8/Kk6 w - - 0 1", "P7/8/8/8/8/8/8/K1k5 w - - 0 1"])
def test_invalid_positions_are_explained_with_a_warning(maia, fen):
    from lczerolens.errors import InvalidPositionWarning

    with pytest.warns(InvalidPositionWarning, match="not positions of a legal game") as record:
        LrpLens().relevance(maia, LczeroBoard(fen), "value")
    assert record[0].filename == __file__  # points at the caller's line


def test_valid_positions_give_no_warning(maia, positions):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LrpLens().relevance(maia, positions, None)


def test_relevance_carries_the_networks_outputs(maia, positions, tmp_path):
    rel = LrpLens().relevance(maia, positions, "value")
    with torch.no_grad():
        plain = maia.network(torch.stack([b.to_input_tensor() for b in positions]))
    for key in ("policy", "wdl_logits"):
        torch.testing.assert_close(rel.outputs[key], plain[key], rtol=1e-5, atol=1e-5)
    assert torch.equal(rel[1:3].outputs["wdl_logits"], rel.outputs["wdl_logits"][1:3])
    back = Relevance.load(rel.save(tmp_path / "r.npz"))
    assert torch.equal(back.outputs["policy"], rel.outputs["policy"])
    cond = LrpLens().relevance(maia, positions[:2], "value", condition=[{"block1/conv2/relu": [c]} for c in (1, 2, 3)])
    expected = rel.outputs["wdl_logits"][:2].repeat_interleave(3, 0)
    torch.testing.assert_close(cond.outputs["wdl_logits"], expected, rtol=1e-5, atol=1e-5)
