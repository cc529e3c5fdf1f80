"""Layer decoding/encoding: each lc0 encoding against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lczerolens.errors import ModelLoadError
from lczerolens.model.proto import Layer
from lczerolens.model.weights import ENCODINGS, decode_layer, encode_layer, layer_size


def test_linear16_formula() -> None:
    q = np.array([0, 1, 32768, 65534, 65535], dtype="<u2")
    layer = Layer(min_val=-0.5, max_val=1.5, params=q.tobytes())
    expected = [-0.5 + 2.0 * v / 65535 for v in q.tolist()]
    np.testing.assert_allclose(decode_layer(layer), expected, rtol=0, atol=1e-7)
    # UNKNOWN_ENCODING (0) and LINEAR16 (1) read the same.
    layer.encoding = Layer.Encoding.LINEAR16
    np.testing.assert_allclose(decode_layer(layer), expected, rtol=0, atol=1e-7)


def test_linear16_is_little_endian() -> None:
    layer = Layer(min_val=0.0, max_val=65535.0, params=b"\x01\x00\x00\x01")
    assert decode_layer(layer).tolist() == [1.0, 256.0]


def test_float16_bfloat16_float32_references() -> None:
    x = np.array([0.0, -0.0, 1.0, -2.5, 0.1, 3.0e-5, 60000.0], dtype=np.float32)
    f16 = Layer(params=x.astype("<f2").tobytes(), encoding=Layer.Encoding.FLOAT16)
    np.testing.assert_array_equal(decode_layer(f16), x.astype(np.float16).astype(np.float32))
    # bfloat16: the top 16 bits of the float32 pattern (these values are exact in bfloat16 after truncation).
    trunc = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    bf16 = Layer(params=(trunc.view(np.uint32) >> 16).astype("<u2").tobytes(), encoding=Layer.Encoding.BFLOAT16)
    np.testing.assert_array_equal(decode_layer(bf16), trunc)
    f32 = Layer(params=x.astype("<f4").tobytes(), encoding=Layer.Encoding.FLOAT32)
    np.testing.assert_array_equal(decode_layer(f32), x)
    assert decode_layer(f32).dtype == np.float32


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encode_decode_within_rounding(encoding: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, 4000).astype(np.float32)
    y = decode_layer(encode_layer(x, encoding))
    err = np.abs(y - x)
    bound = {
        "LINEAR16": (x.max() - x.min()) / 65535 / 2 * 1.01 + 1e-7,
        "FLOAT16": np.abs(x) * 2.0**-11 + 2.0**-25,
        "BFLOAT16": np.abs(x) * 2.0**-8,
        "FLOAT32": 0.0,
    }[encoding]
    assert np.all(err <= bound)
    # min and max are exact in LINEAR16.
    if encoding == "LINEAR16":
        assert y.min() == x.min() and y.max() == x.max()


def test_bfloat16_rounds_to_nearest_even() -> None:
    # 1 + 2^-8 lies halfway between two bfloat16 values: ties go to the even mantissa (1.0).
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20], dtype=np.float32)
    y = decode_layer(encode_layer(x, "BFLOAT16"))
    assert y.tolist() == [1.0, 1.0 + 2 * 2.0**-7, 1.0 + 2.0**-7]


def test_constant_and_empty_layers() -> None:
    assert decode_layer(encode_layer(np.full(5, 0.25), "LINEAR16")).tolist() == [0.25] * 5
    assert decode_layer(Layer()).size == 0
    assert layer_size(Layer()) == 0
    assert layer_size(encode_layer(np.zeros(7), "FLOAT32")) == 7


def test_dims_recorded_on_request() -> None:
    layer = encode_layer(np.zeros((3, 4, 2)), "FLOAT16", dims=True)
    assert layer.dims == [3, 4, 2]
    assert encode_layer(np.zeros((3, 4)), "FLOAT16").dims == []


def test_bad_layers_raise_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match=r"residual\[0\]\.conv1\.weights.*3 bytes"):
        decode_layer(Layer(params=b"abc"), "residual[0].conv1.weights")
    with pytest.raises(ModelLoadError, match="6 bytes is not a whole number of FLOAT32"):
        decode_layer(Layer(params=b"abcdef", encoding=4))
    with pytest.raises(ModelLoadError, match="unknown weight encoding 9"):
        decode_layer(Layer(params=b"ab", encoding=9), "x")


def test_non_finite_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        encode_layer(np.array([1.0, np.nan]))


@settings(max_examples=50, deadline=None)
@given(
    x=arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e4, 1e4, width=32)),
    encoding=st.sampled_from(ENCODINGS),
)
def test_encoding_is_stable(x: np.ndarray, encoding: str) -> None:
    # Encoding what a layer decodes to gives the same values back (a fixed point after one round).
    once = decode_layer(encode_layer(x, encoding))
    twice = decode_layer(encode_layer(once, encoding))
    if encoding == "LINEAR16":
        span = float(x.max()) - float(x.min())
        np.testing.assert_allclose(twice, once, rtol=0, atol=span / 65535 * 1.01 + 1e-6)
    else:
        np.testing.assert_array_equal(twice, once)
