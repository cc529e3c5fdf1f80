"""The logit lens, the tuned lens, depth_kl and render_depth."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest
import torch
from torch import nn

from lczerolens import LczeroBoard, LczeroModel, render_depth
from lczerolens.errors import InputShapeError, LensError, UnsupportedModelError
from lczerolens.lenses import LogitLens, TunedLens, depth_kl, depth_layers
from lczerolens.testing import AttentionNetSpec, random_boards, write_attention_net, write_random_net
from lczerolens.visual import RenderError

ROOT = Path(__file__).resolve().parents[1]
BT_DISTILLED = ROOT / "assets" / "nets" / "bt-distilled.pb.gz"
# PE_MAP: lc0's leela2onnx exports it as the weights mean (its PE_DENSE export differs, see test_native_attention).
MAP_SPEC = AttentionNetSpec(embedding="PE_MAP", encoder_layers=3, input_gates=True, seed=5)


@pytest.fixture(scope="module")
def boards() -> list[LczeroBoard]:
    return random_boards(6, seed=3, min_plies=4)


@pytest.fixture(scope="module")
def maia(maia_pb_path: Path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture(scope="module")
def attention_path(generated_dir: Path) -> Path:
    return write_attention_net(MAP_SPEC, generated_dir / "depth-map.pb.gz")


@pytest.fixture(scope="module")
def attention(attention_path: Path) -> LczeroModel:
    return LczeroModel.from_path(attention_path)


def _check_last_is_output(model: LczeroModel, boards: list[LczeroBoard]) -> None:
    out = LogitLens().outputs(model, boards)
    names = list(out.keys())
    assert names == depth_layers(model)
    reference = model(boards)
    last = out[names[-1]]
    for key in last.keys():
        assert torch.equal(last[key], reference[key]), key
    for name in names:
        assert out[name]["policy"].shape == (len(boards), 1858)
        assert out[name]["value"].shape == (len(boards),)


def test_last_entry_is_the_output_maia(maia: LczeroModel, boards: list[LczeroBoard]) -> None:
    _check_last_is_output(maia, boards)
    assert depth_layers(maia) == ["inputconv", *(f"block{i}" for i in range(6))]


def test_last_entry_is_the_output_maia_onnx(maia_onnx_path: Path, boards: list[LczeroBoard]) -> None:
    _check_last_is_output(LczeroModel.from_path(maia_onnx_path), boards)


def test_last_entry_is_the_output_fp16_onnx(maia_fp16_onnx_path: Path, boards: list[LczeroBoard]) -> None:
    model = LczeroModel.from_path(maia_fp16_onnx_path, half=True)
    _check_last_is_output(model, boards)
    assert LogitLens().outputs(model, boards)["block1"]["policy"].dtype == torch.float16


def test_last_entry_is_the_output_random_attention(attention: LczeroModel, boards: list[LczeroBoard]) -> None:
    _check_last_is_output(attention, boards)
    assert depth_layers(attention) == ["attn_body", "encoder0", "encoder1", "encoder2"]


def test_last_entry_is_the_output_bt_distilled(boards: list[LczeroBoard]) -> None:
    if not BT_DISTILLED.exists():
        pytest.skip("assets/nets/bt-distilled.pb.gz is missing")
    _check_last_is_output(LczeroModel.from_path(BT_DISTILLED), boards)


def test_value_head_net_with_classical_policy(generated_dir: Path, boards: list[LczeroBoard]) -> None:
    path = write_random_net(generated_dir / "depth-value.pb.gz", blocks=2, filters=8, policy="classical",
                            value="value", seed=2)
    model = LczeroModel.from_path(path)
    _check_last_is_output(model, boards)
    out = LogitLens().outputs(model, boards)
    assert "wdl" not in out["block0"].keys()
    assert bool((out["inputconv"]["value"].abs() <= 1).all())


def test_intermediate_entry_is_the_heads_on_that_block(maia: LczeroModel, boards: list[LczeroBoard]) -> None:
    """block2's entry = the policy and value heads written out by hand on block2's output (a forward hook)."""
    network = maia.network
    m = dict(network.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handle = m["block2/conv2/relu"].register_forward_hook(lambda mod, args, out: captured.setdefault("x", out))
    try:
        with torch.no_grad():
            maia(boards)
    finally:
        handle.remove()
    x = captured["x"]
    with torch.no_grad():
        p = torch.relu(m["policy/conv1"](x))
        policy = m["policy/conv2"](p).flatten(1)[:, network.policy_mapping]
        v = torch.relu(m["value/conv"](x)).flatten(1)
        wdl = torch.softmax(m["value/dense2"](torch.relu(m["value/dense1"](v))), dim=-1)
    out = LogitLens().outputs(maia, boards)["block2"]
    torch.testing.assert_close(out["policy"], policy, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["wdl"], wdl, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["value"], wdl[:, 0] - wdl[:, 2], rtol=0, atol=1e-6)


def test_native_and_onnx_agree_through_depth(
    attention_path: Path, attention: LczeroModel, lc0_binary: Path, generated_dir: Path, boards: list[LczeroBoard]
) -> None:
    """The ONNX path cuts the heads out of lc0's own export; the native path runs forward_heads."""
    from tests.lens_oracles import export

    onnx_model = LczeroModel.from_path(export(lc0_binary, attention_path, generated_dir / "depth-map.onnx"))
    native = LogitLens().outputs(attention, boards)
    exported = LogitLens().outputs(onnx_model, boards)
    assert list(native.keys()) == list(exported.keys())
    for name in native.keys():
        for key in ("policy", "wdl", "value"):
            torch.testing.assert_close(exported[name][key], native[name][key], rtol=0, atol=1e-4)


def test_batches_give_the_same_entries(maia: LczeroModel, boards: list[LczeroBoard]) -> None:
    whole = LogitLens().outputs(maia, boards, batch_size=None)
    parts = LogitLens().outputs(maia, boards, batch_size=4)
    for name in whole.keys():
        torch.testing.assert_close(parts[name]["policy"], whole[name]["policy"], rtol=0, atol=1e-5)


def test_tuned_lens_at_identity_is_the_logit_lens(attention: LczeroModel, maia: LczeroModel,
                                                  boards: list[LczeroBoard]) -> None:
    for model in (maia, attention):
        logit = LogitLens().outputs(model, boards)
        tuned = TunedLens.identity(model).outputs(model, boards)
        for name in logit.keys():
            for key in logit[name].keys():
                assert torch.equal(tuned[name][key], logit[name][key]), (name, key)


def _fens(seed: int, n: int) -> list[str]:
    path = ROOT / "assets" / "cache" / f"positions-maia-1900-seed{seed}.txt"
    if not path.exists():
        pytest.skip(f"{path} is missing: run `make assets`")
    return [line.strip() for line in path.read_text().splitlines() if line and not line.startswith("#")][:n]


def test_fitting_lowers_held_out_kl_and_leaves_the_model_alone(maia: LczeroModel) -> None:
    train = _fens(1, 64)
    held_out = [LczeroBoard(fen) for fen in _fens(0, 32)]
    before = {k: v.clone() for k, v in maia.state_dict().items()}
    lens = TunedLens.fit(maia, train, steps=6, batch_size=32, lr=1e-2, seed=0)
    assert len(lens.losses) == 6
    logit_kl = depth_kl(LogitLens(), maia, held_out)
    tuned_kl = depth_kl(lens, maia, held_out)
    assert tuned_kl["block5"] == logit_kl["block5"] == 0.0
    early = ["inputconv", "block0", "block1", "block2", "block3", "block4"]
    assert sum(tuned_kl[k] for k in early) < sum(logit_kl[k] for k in early)
    for key, value in maia.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in maia.parameters())


def test_fit_is_seeded(generated_dir: Path) -> None:
    path = write_random_net(generated_dir / "depth-small.pb.gz", blocks=2, filters=8, seed=4)
    model = LczeroModel.from_path(path)
    boards = random_boards(24, seed=8, min_plies=2)
    a = TunedLens.fit(model, boards, steps=3, batch_size=8, seed=1)
    b = TunedLens.fit(model, boards, steps=3, batch_size=8, seed=1)
    for name in a.translators:
        assert torch.equal(a.translators[name][0], b.translators[name][0])
    assert a.losses == b.losses


def test_fit_reads_a_file(maia: LczeroModel, tmp_path: Path) -> None:
    epd = tmp_path / "few.epd"
    epd.write_text("\n".join(_fens(2, 8)) + "\n")
    lens = TunedLens.fit(maia, epd, steps=1, batch_size=4)
    assert len(lens.losses) == 1
    assert set(lens.translators) == set(depth_layers(maia)[:-1])


def test_render_depth(maia: LczeroModel) -> None:
    board = LczeroBoard("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3")
    out = LogitLens().outputs(maia, [board])
    picture = render_depth(out, board)
    svg = picture.svg
    assert svg.startswith("<svg")
    final = maia.evaluate(board, top_k=1)
    assert f"top move {board.san(final.best_move)}" in svg
    assert svg.count('class="point value"') == 7
    # The last layer's point is the network's own value, and its move is ranked first.
    assert f'data-layer="block5" data-value="{float(out["block5"]["value"][0])!r}"' in svg
    assert 'data-layer="block5"' in svg and 'data-rank="1"' in svg
    with pytest.raises(RenderError, match="index"):
        render_depth(out, board, index=3)
    with pytest.raises(RenderError, match="LogitLens"):
        render_depth({"a": 1}, board)
    with pytest.raises(RenderError, match="LczeroBoard"):
        render_depth(out, chess.Board())


def test_bad_input_gives_clear_errors(maia: LczeroModel, attention: LczeroModel, boards: list[LczeroBoard]) -> None:
    other = nn.Linear(2, 2)
    other.input_format = maia.input_format
    with pytest.raises(UnsupportedModelError, match="residual net"):
        LogitLens().outputs(other, boards)
    with pytest.raises(LensError, match="fitted on a network"):
        TunedLens.identity(maia).outputs(attention, boards)
    with pytest.raises(LensError, match="steps"):
        TunedLens.fit(maia, boards, steps=-1)
    with pytest.raises(LensError, match="not a file"):
        TunedLens.fit(maia, "no-such-file.pgn")
    with pytest.raises(LensError, match="not a board"):
        TunedLens.fit(maia, [1, 2, 3])
    with pytest.raises(LensError, match="head"):
        depth_kl(LogitLens(), maia, boards, head="mlh")
    with pytest.raises(InputShapeError, match="planes"):
        LogitLens().outputs(maia, boards, planes=torch.zeros(1, 112, 8, 8))


def test_unsplittable_graph_is_refused() -> None:
    """An ONNX-like graph whose heads read the input planes by another path than the last layer's output."""
    from torch import fx

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._modules["block0/conv1"] = nn.Conv2d(112, 4, 1)
            self._modules["value/conv"] = nn.Conv2d(4, 1, 1)
            self.input_format = 1

        def forward(self, planes: torch.Tensor) -> dict[str, torch.Tensor]:
            x = self._modules["block0/conv1"](planes)
            v = self._modules["value/conv"](x).flatten(1)
            return {"policy": planes.flatten(1)[:, :1858] + v.sum(1, keepdim=True), "value_logit": v[:, 0]}

    graph = fx.symbolic_trace(Net())
    graph.input_format = 1
    with pytest.raises(UnsupportedModelError, match="another path"):
        LogitLens().outputs(graph, [LczeroBoard()])


def test_tuned_lens_saves_and_loads(maia: LczeroModel, boards: list[LczeroBoard], tmp_path: Path) -> None:
    lens = TunedLens.fit(maia, boards, steps=2, batch_size=4)
    again = TunedLens.load(lens.save(tmp_path / "tuned.safetensors"))
    a, b = lens.outputs(maia, boards), again.outputs(maia, boards)
    for name in a.keys():
        assert torch.equal(a[name]["policy"], b[name]["policy"])
    (tmp_path / "bad.pt").write_bytes(b"not a lens")
    with pytest.raises(LensError, match="cannot read"):
        TunedLens.load(tmp_path / "bad.pt")


def test_tuned_lens_files_are_checked(maia: LczeroModel, boards: list[LczeroBoard], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    lens = TunedLens.fit(maia, boards, steps=1, batch_size=4)
    path = lens.save(tmp_path / "tuned.safetensors")
    with pytest.raises(LensError, match="no tuned lens"):
        TunedLens.load(tmp_path / "missing.safetensors")
    # A safetensors file of something else, and a lens whose map is not finite, are refused by name.
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LensError, match="not a tuned lens"):
        TunedLens.load(tmp_path / "other.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    first = next(k for k in tensors if k.endswith(".weight"))
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=metadata)
    with pytest.raises(LensError, match="not finite|NaN"):
        TunedLens.load(tmp_path / "nan.safetensors")
