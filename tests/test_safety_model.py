"""Loading lc0 weights (``.pb.gz``) as untrusted input, and ``from_path``'s options: bounded decompression and
decoding, weights validated at load (naming the layer), a sanity forward at load, package errors for every bad
value, and networks loaded inside ``torch.inference_mode()`` that can still be explained."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import torch

from lczerolens import LczeroBoard, LczeroModel
from lczerolens.errors import (
    InputFormatError,
    InvalidBoardError,
    InvalidOptionError,
    LczeroLensError,
    ModelLoadError,
)
from lczerolens.model.proto import Net, serialize_net
from lczerolens.model.weights import encode_layer
from lczerolens.testing import random_net

MAGIC = b"\x0d" + struct.pack("<I", 0x1C0)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def small_net(**spec) -> Net:
    return random_net(blocks=1, filters=8, seed=spec.pop("seed", 5), **spec)


def write(net: Net, path) -> str:
    path.write_bytes(serialize_net(net))
    return str(path)


# ----------------------------------------------------------------------------------------------- bounded reading


def test_small_gzip_declaring_a_gib_field_fails_fast(tmp_path):
    """~1 MB on disk: a weights field declaring 1 GiB, 'filled' with zeros (1024 gzip members of 1 MiB each)."""
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    first = gzip.compress(MAGIC + b"\x52" + varint(1 << 30) + bytes(1 << 20), compresslevel=9, mtime=0)
    path = tmp_path / "bomb.pb.gz"
    path.write_bytes(first + zeros * 1023)
    assert path.stat().st_size < 1.5e6
    with pytest.raises(ModelLoadError, match="decompression bomb"):
        LczeroModel.from_path(path)


def test_declared_length_past_the_end_is_refused_before_allocating(tmp_path):
    path = tmp_path / "short.pb.gz"
    path.write_bytes(gzip.compress(MAGIC + b"\x52" + varint(1 << 30) + bytes(100), mtime=0))
    with pytest.raises(ModelLoadError, match="claims 1073741824 bytes"):
        LczeroModel.from_path(path)


def test_decompressed_size_cap_is_configurable(tmp_path, monkeypatch):
    path = write(small_net(), tmp_path / "n.pb.gz")
    with pytest.raises(ModelLoadError, match="limit"):
        LczeroModel.from_path(path, max_bytes=10_000)
    monkeypatch.setenv("LCZEROLENS_MAX_MODEL_BYTES", "10000")
    with pytest.raises(ModelLoadError, match="limit"):
        LczeroModel.from_path(path)
    LczeroModel.from_path(path, max_bytes=10**8)  # the argument wins over the environment


def test_many_tiny_fields_hit_the_decode_budget(tmp_path):
    # 2 million empty residual blocks (4 MB raw): more fields than any lc0 net, refused before building objects.
    path = tmp_path / "many.pb.gz"
    path.write_bytes(gzip.compress(MAGIC + b"\x52" + varint(4_000_000) + b"\x12\x00" * 2_000_000, mtime=0))
    with pytest.raises(ModelLoadError, match="fields"):
        LczeroModel.from_path(path)


def test_truncated_gzip_is_a_model_load_error(tmp_path):
    data = serialize_net(small_net())
    path = tmp_path / "cut.pb.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="gzip"):
        LczeroModel.from_path(path)


def test_gunzip_matches_gzip_on_real_files(maia_pb_path):
    from lczerolens.model.proto import _gunzip

    data = maia_pb_path.read_bytes()
    assert bytes(_gunzip(data, "maia", 1 << 31)) == gzip.decompress(data)
    two = gzip.compress(b"abc", mtime=0) + gzip.compress(b"def", mtime=0)
    assert bytes(_gunzip(two, "two", 1 << 31)) == b"abcdef"
    with pytest.raises(ModelLoadError):
        _gunzip(zlib.compress(b"not gzip"), "zlib", 1 << 31)


# ----------------------------------------------------------------------------------------------- validation


def test_nan_linear16_range_is_refused_naming_the_layer(tmp_path):
    net = small_net()
    net.weights.residual[0].conv1.weights.min_val = float("nan")
    with pytest.raises(ModelLoadError, match=r"residual\[0\]\.conv1\.weights|residual.0..conv1.weights"):
        LczeroModel.from_path(write(net, tmp_path / "nan.pb.gz"))


def test_infinite_max_val_is_refused(tmp_path):
    net = small_net()
    net.weights.residual[0].conv1.biases.max_val = float("inf")
    with pytest.raises(ModelLoadError, match="conv1.biases"):
        LczeroModel.from_path(write(net, tmp_path / "inf.pb.gz"))


def test_nan_float32_value_is_refused_naming_the_layer(tmp_path):
    net = small_net()
    values = np.ones(8, np.float32)
    layer = encode_layer(values, "FLOAT32")
    layer.params = layer.params[:8] + struct.pack("<f", float("nan")) + layer.params[12:]
    net.weights.residual[0].conv2.bn_betas = layer
    with pytest.raises(ModelLoadError, match="conv2.bn_betas"):
        LczeroModel.from_path(write(net, tmp_path / "nan32.pb.gz"))


def test_negative_batch_norm_variance_is_refused(tmp_path):
    net = small_net()
    net.weights.residual[0].conv2.bn_stddivs = encode_layer(np.array([1.0] * 7 + [-0.5]))
    with pytest.raises(ModelLoadError, match=r"bn_stddivs.*variance"):
        LczeroModel.from_path(write(net, tmp_path / "var.pb.gz"))


def test_unknown_encoding_flag_is_refused_naming_the_layer(tmp_path):
    net = small_net()
    net.weights.residual[0].conv1.biases.encoding = 99
    with pytest.raises(ModelLoadError, match=r"conv1.biases.*unknown weight encoding 99"):
        LczeroModel.from_path(write(net, tmp_path / "enc.pb.gz"))


def test_missing_tensor_is_refused(tmp_path):
    net = small_net()
    net.weights.residual[0].conv1.clear("weights")
    with pytest.raises(ModelLoadError, match="conv1.weights"):
        LczeroModel.from_path(write(net, tmp_path / "missing.pb.gz"))


def test_shape_inconsistent_with_the_architecture_is_refused(tmp_path):
    net = small_net()
    net.weights.residual[0].conv2.weights = encode_layer(np.ones(8 * 8 * 9 - 1))
    with pytest.raises(ModelLoadError, match="conv2.weights"):
        LczeroModel.from_path(write(net, tmp_path / "shape.pb.gz"))


def test_changed_encoding_flag_is_an_error_or_a_finite_model(tmp_path):
    for i, enc in enumerate(("FLOAT16", "BFLOAT16", "FLOAT32")):
        net = small_net()
        net.weights.residual[0].conv1.weights.encoding = {"FLOAT16": 2, "BFLOAT16": 3, "FLOAT32": 4}[enc]
        try:
            model = LczeroModel.from_path(write(net, tmp_path / f"e{i}.pb.gz"))
        except ModelLoadError:
            continue
        out = model(LczeroBoard())
        assert all(torch.isfinite(v).all() for v in out.values())


def test_attention_net_with_a_nan_weight_is_refused(tmp_path):
    from lczerolens.testing import random_net as rn

    try:
        net = rn("attention", seed=2)
    except NotImplementedError:
        pytest.skip("attention generator missing")
    layer = net.weights.encoder[0].ffn.dense1_b
    layer.min_val = float("nan")
    with pytest.raises(ModelLoadError, match="dense1_b"):
        LczeroModel.from_path(write(net, tmp_path / "att.pb.gz"))


# ----------------------------------------------------------------------------------------------- options


@pytest.fixture(params=["pb", "onnx"])
def any_path(request, maia_pb_path, maia_onnx_path):
    return maia_pb_path if request.param == "pb" else maia_onnx_path


def test_unknown_input_format_is_an_input_format_error(any_path):
    with pytest.raises(InputFormatError, match="99"):
        LczeroModel.from_path(any_path, input_format=99)


def test_input_format_by_number_and_name(any_path):
    assert LczeroModel.from_path(any_path, input_format="CLASSICAL_112_PLANE").input_format == 1
    assert LczeroModel.from_path(any_path, input_format=1).input_format == 1


def test_device_and_dtype_are_options_of_both_kinds(any_path):
    model = LczeroModel.from_path(any_path, device="cpu")
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model64 = LczeroModel.from_path(any_path, dtype=torch.float64)
    assert model64.dtype == torch.float64
    torch.testing.assert_close(
        model64(LczeroBoard())["policy"].float(), model(LczeroBoard())["policy"], atol=1e-3, rtol=1e-4
    )
    assert LczeroModel.from_path(any_path, half=True).dtype == torch.float16


@pytest.mark.parametrize(
    "options",
    [{"device": "nonsense"}, {"dtype": torch.int32}, {"dtype": "float32"}, {"half": "yes"},
     {"half": True, "dtype": torch.float64}],
)  # fmt: skip
def test_bad_options_are_invalid_option_errors(any_path, options):
    with pytest.raises(InvalidOptionError):
        LczeroModel.from_path(any_path, **options)


def test_unknown_keyword_is_the_same_type_error_for_both_kinds(maia_pb_path, maia_onnx_path):
    messages = []
    for path in (maia_pb_path, maia_onnx_path):
        with pytest.raises(TypeError) as info:
            LczeroModel.from_path(path, colour="blue")
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_board_from_a_non_string_is_an_invalid_board_error():
    for bad in (5, 3.5, b"rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1", object()):
        with pytest.raises(InvalidBoardError):
            LczeroBoard(bad)


# ----------------------------------------------------------------------------------------------- inference mode


def test_model_loaded_in_inference_mode_can_be_explained(any_path):
    from lczerolens.lenses import LrpLens

    with torch.inference_mode():
        model = LczeroModel.from_path(any_path)
    assert not any(p.is_inference() for p in model.parameters())
    rel = LrpLens().relevance(model, LczeroBoard(), target="value")
    assert torch.isfinite(rel.planes).all() and rel.planes.abs().sum() > 0


def test_every_error_is_in_the_hierarchy_for_garbage(tmp_path):
    for i, data in enumerate([b"\x0d", b"\x08\x07", b"\x1f\x8b\x08\x00", b"\x0d\xc0\x01\x00\x00\x52\xff\xff"]):
        path = tmp_path / f"g{i}.bin"
        path.write_bytes(data)
        with pytest.raises(LczeroLensError):
            LczeroModel.from_path(path)


def test_huge_finite_weight_seen_only_by_some_positions_is_refused(tmp_path):
    """A finite weight of 1e30 on the side-to-move plane: the start position (white to move) is unaffected, black
    positions overflow. The load-time probe (other positions, all-ones planes) refuses the file, naming the layer."""
    from lczerolens.model.weights import decode_layer

    net = small_net()
    w = decode_layer(net.weights.input.weights).reshape(8, 112, 3, 3).astype(np.float64)
    w[0, 108, 1, 1] = 1e30
    net.weights.input.weights = encode_layer(w, "FLOAT32")
    path = write(net, tmp_path / "huge.pb.gz")
    with pytest.raises(ModelLoadError, match=r"module inputconv.*probe"):
        LczeroModel.from_path(path)
