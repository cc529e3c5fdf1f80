"""Reader and writer of lc0's weights files (the protobuf message ``Net``, gzipped or not).

Written by hand from the facts of lc0's schema (``proto/net.proto``: message layout, field names and numbers);
no generated code and no protobuf runtime is used. Every message is a small Python object whose attribute
names are exactly the schema's field names::

    net = read_net("maia-1900.pb.gz")
    net.format.network_format.input          # 1 (an IntEnum member when the value is known)
    layer = net.weights.input.weights         # a Layer: min_val, max_val, params, encoding, dims
    len(net.weights.residual)                 # repeated fields are lists

Semantics follow protobuf's (proto2) rules:

- Reading an absent scalar gives its default (``0``, ``0.0``, ``b""``, ``""``); ``msg.has("name")`` tells
  whether it was present.
- Reading an absent sub-message gives an empty message that is not attached to its parent; assigning any field
  of it attaches it (so ``net.weights.input.weights.params = b"..."`` works on an empty ``Net``), exactly like
  protobuf's generated classes. Absent messages are never written.
- Repeated fields are plain lists (``msg.residual.append(Residual())``).
- Unknown fields are skipped by the decoder but kept as raw bytes and written back unchanged, so a
  read -> write round trip reproduces the file byte for byte when it was written in field-number order.

The wire format is implemented directly: varints, 64-bit, length-delimited and 32-bit fields, packed or
unpacked repeated scalars. A malformed file raises :class:`~lczerolens.errors.ModelLoadError` naming the file
and what is wrong. Nothing is ever unpickled or executed.
"""

from __future__ import annotations

import copy
import gzip
import struct
import zlib
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar

from lczerolens.errors import ModelLoadError, ModelNotFoundError

__all__ = [
    "WEIGHTS_MAGIC",
    "Message",
    "Field",
    "EngineVersion",
    "Weights",
    "Layer",
    "ConvBlock",
    "SEunit",
    "Residual",
    "Smolgen",
    "MHA",
    "FFN",
    "EncoderLayer",
    "PolicyHead",
    "ValueHead",
    "PolicyHeadMap",
    "PolicyHeads",
    "ValueHeadMap",
    "ValueHeads",
    "TrainingParams",
    "NetworkFormat",
    "Format",
    "OnnxModel",
    "BackendCache",
    "Net",
    "ProtoDecodeError",
    "parse_net",
    "read_net",
    "serialize_net",
    "write_net",
]

#: lc0's magic number in field 1 of ``Net``.
WEIGHTS_MAGIC = 0x1C0

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Scalar kinds: name -> wire type.
_SCALAR_WIRE = {
    "uint32": _VARINT,
    "uint64": _VARINT,
    "int32": _VARINT,
    "int64": _VARINT,
    "bool": _VARINT,
    "enum": _VARINT,
    "float": _I32,
    "fixed32": _I32,
    "double": _I64,
    "fixed64": _I64,
    "bytes": _LEN,
    "string": _LEN,
}
_DEFAULTS = {
    "uint32": 0,
    "uint64": 0,
    "int32": 0,
    "int64": 0,
    "bool": False,
    "enum": 0,
    "float": 0.0,
    "fixed32": 0,
    "double": 0.0,
    "fixed64": 0,
    "bytes": b"",
    "string": "",
}


class ProtoDecodeError(ValueError):
    """Malformed protobuf data (turned into :class:`ModelLoadError` by the file-level functions)."""


class Field:
    """One field of a message: number, name, kind (a scalar kind or a Message class), repeated or not."""

    __slots__ = ("number", "name", "kind", "repeated", "enum")

    def __init__(
        self, number: int, name: str, kind: Any, repeated: bool = False, enum: type[IntEnum] | None = None
    ) -> None:
        self.number = number
        self.name = name
        self.kind = kind  # str (scalar kind) or a Message subclass
        self.repeated = repeated
        self.enum = enum

    @property
    def is_message(self) -> bool:
        return not isinstance(self.kind, str)

    @property
    def wire_type(self) -> int:
        return _LEN if self.is_message else _SCALAR_WIRE[self.kind]


class Message:
    """Base of every message: fields are attributes named as in ``net.proto``.

    Subclasses define ``FIELDS`` (a tuple of :class:`Field`). Keyword arguments set fields::

        layer = Weights.Layer(min_val=-1.0, max_val=1.0, params=b"\\x00\\x00", encoding=1)
    """

    FIELDS: ClassVar[tuple[Field, ...]] = ()
    _by_name: ClassVar[dict[str, Field]]
    _by_number: ClassVar[dict[int, Field]]

    __slots__ = ("_values", "_unknown", "_parent", "_parent_field")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._by_name = {f.name: f for f in cls.FIELDS}
        cls._by_number = {f.number: f for f in cls.FIELDS}

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_unknown", [])
        object.__setattr__(self, "_parent", None)
        object.__setattr__(self, "_parent_field", None)
        for name, value in fields.items():
            setattr(self, name, value)

    # -- copies -----------------------------------------------------------------------------------------------
    # __setattr__ only takes field names, so copy's default slot-by-slot rebuild cannot set the slots; a native
    # network keeps its parsed Net (for LczeroModel.save), and copy.deepcopy(network) must work.
    def __copy__(self) -> Message:
        new = type(self).__new__(type(self))
        object.__setattr__(new, "_values", dict(self._values))
        object.__setattr__(new, "_unknown", list(self._unknown))
        object.__setattr__(new, "_parent", None)
        object.__setattr__(new, "_parent_field", None)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Message:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for slot in Message.__slots__:
            object.__setattr__(new, slot, copy.deepcopy(object.__getattribute__(self, slot), memo))
        return new

    # -- attribute access -------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        field = type(self)._by_name.get(name)
        if field is None:
            raise AttributeError(f"{type(self).__qualname__} has no field {name!r}")
        values = self._values
        if name in values:
            return values[name]
        if field.repeated:
            # An empty list writes nothing, so attaching it at once is harmless and lets `append` work.
            lst: list[Any] = []
            values[name] = lst
            return lst
        if field.is_message:
            child = field.kind()
            object.__setattr__(child, "_parent", self)
            object.__setattr__(child, "_parent_field", name)
            return child
        return _DEFAULTS[field.kind]

    def __setattr__(self, name: str, value: Any) -> None:
        field = type(self)._by_name.get(name)
        if field is None:
            raise AttributeError(f"{type(self).__qualname__} has no field {name!r}")
        if field.repeated:
            value = list(value)
        elif field.is_message:
            if not isinstance(value, field.kind):
                raise TypeError(f"{name} must be a {field.kind.__qualname__}, not {type(value).__name__}")
        elif field.enum is not None:
            value = _to_enum(field.enum, int(value))
        self._values[name] = value
        self._attach()

    def _attach(self) -> None:
        # Setting a field of a detached default sub-message makes it present in its parent (protobuf semantics).
        parent = self._parent
        if parent is not None:
            name = self._parent_field
            if name not in parent._values:
                parent._values[name] = self
                parent._attach()
            object.__setattr__(self, "_parent", None)

    def has(self, name: str) -> bool:
        """Whether field ``name`` is present (for repeated fields: non-empty)."""
        if name not in type(self)._by_name:
            raise AttributeError(f"{type(self).__qualname__} has no field {name!r}")
        value = self._values.get(name)
        if value is None:
            return False
        return bool(value) if isinstance(value, list) else True

    HasField = has  # protobuf's spelling

    def clear(self, name: str) -> None:
        """Remove field ``name``."""
        self._values.pop(name, None)

    def fields(self) -> list[tuple[str, Any]]:
        """The present fields as ``(name, value)`` pairs in field-number order."""
        out = []
        for f in self.FIELDS:
            if self.has(f.name):
                out.append((f.name, self._values[f.name]))
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.fields() == other.fields() and self._unknown == other._unknown

    def __repr__(self) -> str:
        parts = []
        for name, value in self.fields():
            if isinstance(value, bytes):
                parts.append(f"{name}=<{len(value)} bytes>")
            elif isinstance(value, list) and value and isinstance(value[0], Message):
                parts.append(f"{name}=[{len(value)} x {type(value[0]).__name__}]")
            else:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- wire format ------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Message:
        """Decode ``data`` (the serialized message). Raises :class:`ProtoDecodeError` on malformed data."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        return _decode_message(cls, view, 0, len(view), cls.__qualname__, [MAX_DECODED_ITEMS])

    def serialize(self) -> bytes:
        """Encode this message (fields in number order, unknown fields last)."""
        out = bytearray()
        _encode_message(self, out)
        return bytes(out)


def _to_enum(enum: type[IntEnum], value: int) -> int:
    try:
        return enum(value)
    except ValueError:
        return value  # unknown enum values are kept as plain ints (proto2 would keep them as unknown fields)


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------
def _read_varint(buf: Any, pos: int, end: int, where: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoDecodeError(f"truncated varint in {where} at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoDecodeError(f"bad varint (more than 10 bytes) in {where} at byte {pos}")


def _signed(value: int, bits: int) -> int:
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    if bits == 32:
        value = ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    return value


def _convert_varint(kind: str, value: int) -> Any:
    if kind == "uint32":
        return value & 0xFFFFFFFF
    if kind == "uint64":
        return value & 0xFFFFFFFFFFFFFFFF
    if kind in ("int32", "enum"):
        return _signed(value, 32)
    if kind == "int64":
        return _signed(value, 64)
    if kind == "bool":
        return value != 0
    raise ProtoDecodeError(f"a {kind} field cannot hold a varint")


_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")


def _convert_fixed(kind: str, raw: Any) -> Any:
    if kind == "float":
        return _F32.unpack(raw)[0]
    if kind == "fixed32":
        return _U32.unpack(raw)[0]
    if kind == "double":
        return _F64.unpack(raw)[0]
    if kind == "fixed64":
        return _U64.unpack(raw)[0]
    raise ProtoDecodeError(f"a {kind} field cannot hold a fixed-width value")


#: Most fields (messages, scalars, packed values, unknown fields) one decode may produce: a bound on the Python
#: objects a small file can make the reader build (maia-1900 holds 468; a 30-block or 15-layer net a few
#: thousand).
MAX_DECODED_ITEMS = 250_000


def _spend(budget: list[int], n: int, where: str) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise ProtoDecodeError(
            f"{where}: more than {MAX_DECODED_ITEMS} fields; no lc0 network has that many (corrupted or hostile)"
        )


def _decode_message(cls: type[Message], buf: Any, pos: int, end: int, where: str, budget: list[int]) -> Message:
    msg = cls()
    values = msg._values
    by_number = cls._by_number
    while pos < end:
        _spend(budget, 1, where)
        start = pos
        key, pos = _read_varint(buf, pos, end, where)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoDecodeError(f"field number 0 in {where} at byte {start}")
        # Read the raw payload by wire type.
        if wire == _VARINT:
            raw, pos = _read_varint(buf, pos, end, where)
        elif wire == _I64:
            if pos + 8 > end:
                raise ProtoDecodeError(f"truncated 64-bit field {number} in {where} at byte {start}")
            raw = bytes(buf[pos : pos + 8])
            pos += 8
        elif wire == _I32:
            if pos + 4 > end:
                raise ProtoDecodeError(f"truncated 32-bit field {number} in {where} at byte {start}")
            raw = bytes(buf[pos : pos + 4])
            pos += 4
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos, end, where)
            if pos + length > end:
                raise ProtoDecodeError(
                    f"field {number} of {where} at byte {start} claims {length} bytes but only "
                    f"{end - pos} remain (truncated or corrupted)"
                )
            raw = (pos, pos + length)
            pos += length
        else:
            raise ProtoDecodeError(f"invalid wire type {wire} for field {number} in {where} at byte {start}")

        field = by_number.get(number)
        if field is None:
            values_unknown = msg._unknown
            values_unknown.append(bytes(buf[start:pos]))
            continue
        fname = field.name
        sub_where = f"{where}.{fname}"
        if field.is_message:
            if wire != _LEN:
                raise ProtoDecodeError(f"{sub_where}: expected a length-delimited message, got wire type {wire}")
            child = _decode_message(field.kind, buf, raw[0], raw[1], sub_where, budget)
            if field.repeated:
                values.setdefault(fname, []).append(child)
            elif fname in values:
                _merge(values[fname], child)  # protobuf merges repeated occurrences of a message field
            else:
                values[fname] = child
            continue
        kind = field.kind
        expected = _SCALAR_WIRE[kind]
        if wire == _LEN and kind not in ("bytes", "string"):
            if not field.repeated:
                raise ProtoDecodeError(f"{sub_where}: unexpected length-delimited data for a {kind}")
            packed = _decode_packed(kind, buf, raw[0], raw[1], sub_where, budget)
            values.setdefault(fname, []).extend(packed)
            continue
        if wire != expected:
            raise ProtoDecodeError(f"{sub_where}: wire type {wire} does not match its type {kind}")
        if wire == _VARINT:
            value = _convert_varint(kind, raw)
            if field.enum is not None:
                value = _to_enum(field.enum, value)
        elif wire == _LEN:
            data = bytes(buf[raw[0] : raw[1]])
            if kind == "string":
                try:
                    value = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ProtoDecodeError(f"{sub_where}: invalid UTF-8 in a string field") from exc
            else:
                value = data
        else:
            value = _convert_fixed(kind, raw)
        if field.repeated:
            values.setdefault(fname, []).append(value)
        else:
            values[fname] = value
    if pos != end:
        raise ProtoDecodeError(f"{where}: last field runs past the end of the message")
    return msg


def _decode_packed(kind: str, buf: Any, pos: int, end: int, where: str, budget: list[int]) -> list[Any]:
    out: list[Any] = []
    wire = _SCALAR_WIRE[kind]
    # At least one byte per value: charge the most values this payload can hold before building any.
    _spend(budget, end - pos, where)
    if wire == _VARINT:
        while pos < end:
            raw, pos = _read_varint(buf, pos, end, where)
            out.append(_convert_varint(kind, raw))
    else:
        size = 4 if wire == _I32 else 8
        if (end - pos) % size:
            raise ProtoDecodeError(f"{where}: packed data length {end - pos} is not a multiple of {size}")
        for p in range(pos, end, size):
            out.append(_convert_fixed(kind, bytes(buf[p : p + size])))
    return out


def _merge(into: Message, other: Message) -> None:
    for f in type(into).FIELDS:
        if f.name not in other._values:
            continue
        value = other._values[f.name]
        if f.repeated:
            into._values.setdefault(f.name, []).extend(value)
        elif f.is_message and f.name in into._values:
            _merge(into._values[f.name], value)
        else:
            into._values[f.name] = value
    into._unknown.extend(other._unknown)


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------
def _varint_bytes(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # negative int32/int64 are written as 10-byte two's complement
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _encode_scalar(kind: str, value: Any) -> bytes:
    if kind in ("uint32", "uint64", "int32", "int64", "enum"):
        return _varint_bytes(int(value))
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind == "float":
        return _F32.pack(value)
    if kind == "fixed32":
        return _U32.pack(value)
    if kind == "double":
        return _F64.pack(value)
    if kind == "fixed64":
        return _U64.pack(value)
    if kind == "string":
        data = value.encode("utf-8")
        return _varint_bytes(len(data)) + data
    if kind == "bytes":
        data = bytes(value)
        return _varint_bytes(len(data)) + data
    raise ValueError(f"unknown scalar kind {kind!r}")


def _encode_message(msg: Message, out: bytearray) -> None:
    values = msg._values
    for field in msg.FIELDS:
        if field.name not in values:
            continue
        value = values[field.name]
        items = value if field.repeated else (value,)
        key = _varint_bytes((field.number << 3) | field.wire_type)
        for item in items:
            out += key
            if field.is_message:
                sub = bytearray()
                _encode_message(item, sub)
                out += _varint_bytes(len(sub))
                out += sub
            else:
                # proto2 writes repeated scalars unpacked unless declared packed (net.proto declares none).
                out += _encode_scalar(field.kind, item)
    for raw in msg._unknown:
        out += raw


# ---------------------------------------------------------------------------------------------------------------
# Schema (lc0's proto/net.proto, package pblczero)
# ---------------------------------------------------------------------------------------------------------------
class EngineVersion(Message):
    __slots__ = ()
    FIELDS = (Field(1, "major", "uint32"), Field(2, "minor", "uint32"), Field(3, "patch", "uint32"))


class Layer(Message):
    """A tensor: ``params`` holds the values in ``encoding`` (LINEAR16 uses ``min_val``/``max_val``)."""

    class Encoding(IntEnum):
        UNKNOWN_ENCODING = 0
        LINEAR16 = 1
        FLOAT16 = 2
        BFLOAT16 = 3
        FLOAT32 = 4

    __slots__ = ()
    FIELDS = (
        Field(1, "min_val", "float"),
        Field(2, "max_val", "float"),
        Field(3, "params", "bytes"),
        Field(4, "encoding", "enum", enum=Encoding),
        Field(5, "dims", "uint32", repeated=True),
    )


def _layers(*pairs: tuple[int, str]) -> tuple[Field, ...]:
    return tuple(Field(n, name, Layer) for n, name in pairs)


class ConvBlock(Message):
    __slots__ = ()
    FIELDS = _layers((1, "weights"), (2, "biases"), (3, "bn_means"), (4, "bn_stddivs"), (5, "bn_gammas"),
                     (6, "bn_betas"))


class SEunit(Message):
    __slots__ = ()
    FIELDS = _layers((1, "w1"), (2, "b1"), (3, "w2"), (4, "b2"))


class Residual(Message):
    __slots__ = ()
    FIELDS = (Field(1, "conv1", ConvBlock), Field(2, "conv2", ConvBlock), Field(3, "se", SEunit))


class Smolgen(Message):
    __slots__ = ()
    FIELDS = _layers((1, "compress"), (2, "dense1_w"), (3, "dense1_b"), (4, "ln1_gammas"), (5, "ln1_betas"),
                     (6, "dense2_w"), (7, "dense2_b"), (8, "ln2_gammas"), (9, "ln2_betas"))


class MHA(Message):
    __slots__ = ()
    FIELDS = (
        *_layers((1, "q_w"), (2, "q_b"), (3, "k_w"), (4, "k_b"), (5, "v_w"), (6, "v_b"), (7, "dense_w"),
                 (8, "dense_b")),
        Field(9, "smolgen", Smolgen),
        *_layers((10, "rpe_q"), (11, "rpe_k"), (12, "rpe_v")),
    )


class FFN(Message):
    __slots__ = ()
    FIELDS = _layers((1, "dense1_w"), (2, "dense1_b"), (3, "dense2_w"), (4, "dense2_b"))


class EncoderLayer(Message):
    __slots__ = ()
    FIELDS = (
        Field(1, "mha", MHA),
        *_layers((2, "ln1_gammas"), (3, "ln1_betas")),
        Field(4, "ffn", FFN),
        *_layers((5, "ln2_gammas"), (6, "ln2_betas")),
    )


class PolicyHead(Message):
    __slots__ = ()
    FIELDS = (
        *_layers((1, "ip_pol_w"), (2, "ip_pol_b"), (3, "ip2_pol_w"), (4, "ip2_pol_b"), (5, "ip3_pol_w"),
                 (6, "ip3_pol_b"), (7, "ip4_pol_w")),
        Field(8, "pol_encoder", EncoderLayer, repeated=True),
        Field(9, "pol_headcount", "uint32"),
        Field(10, "policy1", ConvBlock),
        Field(11, "policy", ConvBlock),
    )


class ValueHead(Message):
    __slots__ = ()
    FIELDS = (
        *_layers((1, "ip_val_w"), (2, "ip_val_b"), (3, "ip1_val_w"), (4, "ip1_val_b"), (5, "ip2_val_w"),
                 (6, "ip2_val_b"), (7, "ip_val_err_w"), (8, "ip_val_err_b"), (9, "ip_val_cat_w"),
                 (10, "ip_val_cat_b")),
        Field(11, "value", ConvBlock),
    )


class PolicyHeadMap(Message):
    __slots__ = ()
    FIELDS = (Field(1, "key", "string"), Field(2, "value", PolicyHead))


class PolicyHeads(Message):
    __slots__ = ()
    FIELDS = (
        *_layers((1, "ip_pol_w"), (2, "ip_pol_b")),
        Field(3, "vanilla", PolicyHead),
        Field(4, "optimistic_st", PolicyHead),
        Field(5, "soft", PolicyHead),
        Field(6, "opponent", PolicyHead),
        Field(7, "policy_head_map", PolicyHeadMap, repeated=True),
    )


class ValueHeadMap(Message):
    __slots__ = ()
    FIELDS = (Field(1, "key", "string"), Field(2, "value", ValueHead))


class ValueHeads(Message):
    __slots__ = ()
    FIELDS = (
        Field(1, "winner", ValueHead),
        Field(2, "q", ValueHead),
        Field(3, "st", ValueHead),
        Field(4, "value_head_map", ValueHeadMap, repeated=True),
    )


class Weights(Message):
    """``pblczero.Weights``: every tensor of a network (residual or attention body and all heads)."""

    Layer = Layer
    ConvBlock = ConvBlock
    SEunit = SEunit
    Residual = Residual
    Smolgen = Smolgen
    MHA = MHA
    FFN = FFN
    EncoderLayer = EncoderLayer
    PolicyHead = PolicyHead
    ValueHead = ValueHead
    PolicyHeadMap = PolicyHeadMap
    PolicyHeads = PolicyHeads
    ValueHeadMap = ValueHeadMap
    ValueHeads = ValueHeads

    __slots__ = ()
    FIELDS = (
        Field(1, "input", ConvBlock),
        Field(2, "residual", Residual, repeated=True),
        Field(3, "policy", ConvBlock),
        *_layers((4, "ip_pol_w"), (5, "ip_pol_b")),
        Field(6, "value", ConvBlock),
        *_layers((7, "ip1_val_w"), (8, "ip1_val_b"), (9, "ip2_val_w"), (10, "ip2_val_b")),
        Field(11, "policy1", ConvBlock),
        Field(12, "moves_left", ConvBlock),
        *_layers((13, "ip1_mov_w"), (14, "ip1_mov_b"), (15, "ip2_mov_w"), (16, "ip2_mov_b"),
                 (17, "ip2_pol_w"), (18, "ip2_pol_b"), (19, "ip3_pol_w"), (20, "ip3_pol_b")),
        Field(21, "pol_encoder", EncoderLayer, repeated=True),
        *_layers((22, "ip4_pol_w")),
        Field(24, "pol_headcount", "uint32"),
        *_layers((25, "ip_emb_w"), (26, "ip_emb_b")),
        Field(27, "encoder", EncoderLayer, repeated=True),
        Field(28, "headcount", "uint32"),
        *_layers((29, "ip_val_w"), (30, "ip_val_b"), (31, "ip_mov_w"), (32, "ip_mov_b"), (33, "ip_mult_gate"),
                 (34, "ip_add_gate"), (35, "smolgen_w"), (36, "smolgen_b"), (37, "ip_emb_preproc_w"),
                 (38, "ip_emb_preproc_b"), (39, "ip_emb_ln_gammas"), (40, "ip_emb_ln_betas")),
        Field(41, "ip_emb_ffn", FFN),
        *_layers((42, "ip_emb_ffn_ln_gammas"), (43, "ip_emb_ffn_ln_betas")),
        Field(44, "value_heads", ValueHeads),
        Field(45, "policy_heads", PolicyHeads),
    )


class TrainingParams(Message):
    __slots__ = ()
    FIELDS = (
        Field(1, "training_steps", "uint32"),
        Field(2, "learning_rate", "float"),
        Field(3, "mse_loss", "float"),
        Field(4, "policy_loss", "float"),
        Field(5, "accuracy", "float"),
        Field(6, "lc0_params", "string"),
    )


class NetworkFormat(Message):
    """``pblczero.NetworkFormat``: what the weights mean (input encoding, body, heads, activations)."""

    class InputFormat(IntEnum):
        INPUT_UNKNOWN = 0
        INPUT_CLASSICAL_112_PLANE = 1
        INPUT_112_WITH_CASTLING_PLANE = 2
        INPUT_112_WITH_CANONICALIZATION = 3
        INPUT_112_WITH_CANONICALIZATION_HECTOPLIES = 4
        INPUT_112_WITH_CANONICALIZATION_HECTOPLIES_ARMAGEDDON = 132
        INPUT_112_WITH_CANONICALIZATION_V2 = 5
        INPUT_112_WITH_CANONICALIZATION_V2_ARMAGEDDON = 133

    class OutputFormat(IntEnum):
        OUTPUT_UNKNOWN = 0
        OUTPUT_CLASSICAL = 1
        OUTPUT_WDL = 2

    class NetworkStructure(IntEnum):
        NETWORK_UNKNOWN = 0
        NETWORK_CLASSICAL = 1
        NETWORK_SE = 2
        NETWORK_CLASSICAL_WITH_HEADFORMAT = 3
        NETWORK_SE_WITH_HEADFORMAT = 4
        NETWORK_ONNX = 5
        NETWORK_ATTENTIONBODY_WITH_HEADFORMAT = 6
        NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT = 7
        NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT = 134

    class PolicyFormat(IntEnum):
        POLICY_UNKNOWN = 0
        POLICY_CLASSICAL = 1
        POLICY_CONVOLUTION = 2
        POLICY_ATTENTION = 3

    class ValueFormat(IntEnum):
        VALUE_UNKNOWN = 0
        VALUE_CLASSICAL = 1
        VALUE_WDL = 2
        VALUE_PARAM = 3

    class MovesLeftFormat(IntEnum):
        MOVES_LEFT_NONE = 0
        MOVES_LEFT_V1 = 1

    class ActivationFunction(IntEnum):
        ACTIVATION_DEFAULT = 0
        ACTIVATION_MISH = 1
        ACTIVATION_RELU = 2
        ACTIVATION_NONE = 3
        ACTIVATION_TANH = 4
        ACTIVATION_SIGMOID = 5
        ACTIVATION_SELU = 6
        ACTIVATION_SWISH = 7
        ACTIVATION_RELU_2 = 8
        ACTIVATION_SOFTMAX = 9

    class DefaultActivation(IntEnum):
        DEFAULT_ACTIVATION_RELU = 0
        DEFAULT_ACTIVATION_MISH = 1

    class InputEmbeddingFormat(IntEnum):
        INPUT_EMBEDDING_NONE = 0
        INPUT_EMBEDDING_PE_MAP = 1
        INPUT_EMBEDDING_PE_DENSE = 2

    __slots__ = ()
    FIELDS = (
        Field(1, "input", "enum", enum=InputFormat),
        Field(2, "output", "enum", enum=OutputFormat),
        Field(3, "network", "enum", enum=NetworkStructure),
        Field(4, "policy", "enum", enum=PolicyFormat),
        Field(5, "value", "enum", enum=ValueFormat),
        Field(6, "moves_left", "enum", enum=MovesLeftFormat),
        Field(7, "default_activation", "enum", enum=DefaultActivation),
        Field(8, "smolgen_activation", "enum", enum=ActivationFunction),
        Field(9, "ffn_activation", "enum", enum=ActivationFunction),
        Field(10, "input_embedding", "enum", enum=InputEmbeddingFormat),
    )


class Format(Message):
    class Encoding(IntEnum):
        UNKNOWN = 0
        LINEAR16 = 1

    __slots__ = ()
    FIELDS = (
        Field(1, "weights_encoding", "enum", enum=Encoding),
        Field(2, "network_format", NetworkFormat),
    )


class OnnxModel(Message):
    class DataType(IntEnum):
        UNKNOWN_DATATYPE = 0
        FLOAT = 1
        FLOAT16 = 10
        BFLOAT16 = 16

    __slots__ = ()
    FIELDS = (
        Field(1, "model", "bytes"),
        Field(2, "data_type", "enum", enum=DataType),
        Field(3, "input_planes", "string"),
        Field(4, "output_value", "string"),
        Field(5, "output_wdl", "string"),
        Field(6, "output_policy", "string"),
        Field(7, "output_mlh", "string"),
    )


class BackendCache(Message):
    __slots__ = ()
    FIELDS = (
        Field(1, "id", "string"),
        Field(2, "x", "int32"),
        Field(3, "y", "int32"),
        Field(4, "z", "int32"),
        Field(5, "val", "bytes"),
    )


class Net(Message):
    """``pblczero.Net``: the top-level message of an lc0 weights file."""

    __slots__ = ()
    FIELDS = (
        Field(1, "magic", "fixed32"),
        Field(2, "license", "string"),
        Field(3, "min_version", EngineVersion),
        Field(4, "format", Format),
        Field(5, "training_params", TrainingParams),
        Field(10, "weights", Weights),
        Field(11, "onnx_model", OnnxModel),
        Field(12, "backend_cache", BackendCache, repeated=True),
    )


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
_GZIP_MAGIC = b"\x1f\x8b"


def _describe(source: Any) -> str:
    return f"'{source}'" if isinstance(source, (str, Path)) else "the given bytes"


def _gunzip(data: bytes, name: str, max_bytes: int) -> bytearray:
    """Decompress gzip ``data`` in chunks, refusing output beyond ``max_bytes`` or a bomb's ratio.

    The output may reach ``min(max_bytes, max(RATIO_FLOOR_BYTES, MAX_RATIO * len(data)))``: decompression stops
    (and nothing larger is ever held) as soon as it would go past that. Concatenated gzip members are read in
    turn, as gzip and zlib's ``gzread`` (lc0's reader) do.
    """
    from lczerolens.model.safety import MAX_RATIO, RATIO_FLOOR_BYTES

    limit = min(max_bytes, max(RATIO_FLOOR_BYTES, MAX_RATIO * len(data)))
    out = bytearray()
    view = memoryview(data)
    pos = 0
    # Input is fed in slices of `in_chunk` bytes: zlib's unconsumed tail is then at most one slice, never the rest
    # of the file (copying that tail on every call made decompression quadratic: 9 s for a 96 MB file).
    in_chunk, out_chunk = 1 << 20, 1 << 22
    try:
        while pos < len(view):
            inflater = zlib.decompressobj(wbits=31)
            while not inflater.eof:
                tail = inflater.unconsumed_tail
                if tail:
                    piece = inflater.decompress(tail, out_chunk)
                elif pos < len(view):
                    piece = inflater.decompress(view[pos : pos + in_chunk], out_chunk)
                    pos = min(pos + in_chunk, len(view))
                else:
                    # No input left: flush what is pending, still bounded; nothing more means a truncated stream.
                    piece = inflater.decompress(b"", out_chunk)
                    if not piece and not inflater.eof:
                        raise zlib.error("incomplete or truncated gzip stream")
                out += piece
                if len(out) > limit:
                    raise ModelLoadError(_too_big(name, len(data), limit, max_bytes))
            # Input the member did not use: what follows it in the last slice fed.
            pos -= len(inflater.unused_data)
            if view[pos : pos + 2] != _GZIP_MAGIC:
                break  # trailing bytes after the last member: ignored, as gzip.decompress does with zero padding
    except zlib.error as exc:
        raise ModelLoadError(
            f"{name} is not a valid lc0 weights file: its gzip data is corrupted or truncated ({exc}). "
            "Download the network again."
        ) from exc
    return out


def _too_big(name: str, compressed: int, limit: int, max_bytes: int) -> str:
    if limit < max_bytes:
        return (
            f"{name} decompresses to more than {limit} bytes from {compressed} (a ratio no lc0 network has: a "
            "decompression bomb or a corrupted file); refusing it."
        )
    return (
        f"{name} decompresses to more than the {max_bytes}-byte limit; if this really is an lc0 network, raise "
        "the limit with max_bytes= or LCZEROLENS_MAX_MODEL_BYTES."
    )


def parse_net(
    data: bytes | bytearray | memoryview, source: str | Path | None = None, *, max_bytes: int | None = None
) -> Net:
    """Decode an lc0 weights file's content (gzipped or raw protobuf) into a :class:`Net`.

    Decompression and decoding are bounded (see :mod:`lczerolens.model.safety`): every declared length is
    checked against the bytes left before anything is allocated for it.

    Parameters
    ----------
    data : bytes
        The file's bytes; gzip is detected from its magic bytes.
    source : str or Path, optional
        Named in error messages.
    max_bytes : int, optional
        Cap on the decompressed size (default 2 GiB, see :func:`lczerolens.model.safety.max_bytes_limit`).

    Returns
    -------
    Net

    Raises
    ------
    ModelLoadError
        Bad gzip data, malformed protobuf, or not an lc0 network (magic is not 0x1c0).

    Examples
    --------
    >>> net = parse_net(Path("assets/cache/maia-1900.pb.gz").read_bytes())  # doctest: +SKIP
    >>> net.magic == WEIGHTS_MAGIC  # doctest: +SKIP
    True
    """
    from lczerolens.model.safety import max_bytes_limit

    cap = max_bytes_limit(max_bytes)
    name = _describe(source if source is not None else data)
    data = bytes(data)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, name, cap)
    elif len(data) > cap:
        raise ModelLoadError(_too_big(name, len(data), cap, cap))
    if len(data) < 2:
        raise ModelLoadError(f"{name} is not an lc0 weights file: it is empty or too small ({len(data)} bytes).")
    try:
        net = Net.parse(data)
    except ProtoDecodeError as exc:
        raise ModelLoadError(
            f"{name} is not a valid lc0 weights file: {exc}. The file may be truncated or corrupted."
        ) from exc
    if net.magic != WEIGHTS_MAGIC:
        found = f"0x{net.magic:x}" if net.has("magic") else "none"
        raise ModelLoadError(
            f"{name} is not an lc0 weights file: wrong magic number {found} (lc0 files start with 0x1c0). "
            "Pass an lc0 network (.pb.gz) or an lc0 ONNX export (.onnx)."
        )
    return net


def read_net(path: str | Path, *, max_bytes: int | None = None) -> Net:
    """Read an lc0 weights file (``.pb.gz`` or ``.pb``) into a :class:`Net`.

    Examples
    --------
    >>> net = read_net("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
    >>> len(net.weights.residual)  # doctest: +SKIP
    6
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"network file '{path}' does not exist; check the path.")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a directory, not an lc0 weights file.")
    from lczerolens.model.safety import max_bytes_limit

    cap = max_bytes_limit(max_bytes)
    size = path.stat().st_size
    if size > cap:
        raise ModelLoadError(
            f"'{path}' is {size} bytes, over the {cap}-byte limit; if this really is an lc0 network, raise the "
            "limit with max_bytes= or LCZEROLENS_MAX_MODEL_BYTES."
        )
    return parse_net(path.read_bytes(), source=path, max_bytes=cap)


def serialize_net(net: Net, compress: bool = True) -> bytes:
    """Encode ``net`` as an lc0 weights file's bytes (gzipped unless ``compress=False``)."""
    data = net.serialize()
    # mtime=0 keeps the output reproducible.
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def write_net(net: Net, path: str | Path, compress: bool | None = None) -> Path:
    """Write ``net`` to ``path``; gzipped when ``compress`` is true or (by default) the name ends in ``.gz``.

    Examples
    --------
    >>> write_net(read_net("in.pb.gz"), "out.pb.gz")  # doctest: +SKIP
    PosixPath('out.pb.gz')
    """
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(serialize_net(net, compress=compress))
    return path
