"""Load an lc0 ONNX export (``lc0 leela2onnx``) as a PyTorch network that follows the network contract.

The file is read with ``onnx``, checked, converted by ``onnx2torch`` into a ``torch.fx.GraphModule`` and then
normalised so that a lens can explain it:

- every nonlinear op becomes a module from :mod:`lczerolens.model.ops` registered under lc0's node name (without
  the leading slash): ``Relu``/``Tanh``/``Selu``/``Sigmoid`` become :class:`~lczerolens.model.ops.Activation`; the
  subgraphs lc0 writes for Mish (``Softplus, Tanh, Mul``), Swish (``Sigmoid, Mul`` by the same input) and squared
  ReLU (``Relu, Mul(r, r)``) are fused into one ``Activation`` under the name of the final ``Mul``; the
  squeeze-excitation gate ``Sigmoid(s1) * x`` becomes one :class:`~lczerolens.model.ops.Gate` (called with
  ``(s1, x)``) under the name of the ``Mul``; products of two position-dependent tensors become
  :class:`~lczerolens.model.ops.Mul` / :class:`~lczerolens.model.ops.MatMul`; attention softmaxes become
  :class:`~lczerolens.model.ops.Softmax`; ``LayerNormalization`` becomes :class:`~lczerolens.model.ops.LayerNorm`.
- every other op module gets ``lrp_linear`` (True when the op is linear in each of its position-dependent
  operands) and ``onnx_op_type`` (the ONNX op it came from), so a lens can refuse an op it has no rule for.
- the outputs become the contract's dict: ``policy`` ``[N, 1858]``; ``wdl_logits`` ``[N, 3]`` (the Softmax that
  produces ``/output/wdl`` is cut off); ``value_logit`` ``[N]`` (the final Tanh of ``/output/value`` is cut off);
  ``mlh`` ``[N]``.

"Position-dependent" is decided by dataflow from the input placeholder: a tensor depends on the position when
it is computed from ``/input/planes`` (shape computations, i.e. ``Shape`` ops, do not count).

Precision: lc0's ``--onnx-data-type=f16`` / ``bf16`` exports store inputs, outputs and weights in half
precision (bf16 exports also cast around each convolution). By default they are converted to float32 before
conversion (weights upcast exactly, ``Cast`` nodes to half retargeted to float32 and then dropped as no-ops), so
the network runs in float32 on any device and takes float32 planes. ``half=True`` keeps an fp16 export as it is
(the network takes and returns float16 tensors, as onnxruntime does on the file); for fp32 and bf16 exports,
``half=True`` converts the float32 network to float16 after loading.

The input format: lc0 0.32.1 does not record the network's input format in the ONNX file (no metadata, no doc
string; the graph only shows 112 input planes). A ``metadata_props`` entry ``input_format`` (a number or an
``InputFormat`` name) is honoured when present; otherwise the format given as ``input_format=`` is used, and
``InputFormat.CLASSICAL_112_PLANE`` when none is given (``network.input_format_source`` says which).
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import fx, nn

from lczerolens.board import InputFormat
from lczerolens.errors import LczeroLensError, ModelLoadError, ModelNotFoundError, UnsupportedModelError
from lczerolens.model import ops
from lczerolens.model.safety import check_network, max_bytes_limit

__all__ = ["load_onnx", "OnnxNetwork", "LINEAR_OP_TYPES"]

_DEFAULT_INPUT = "/input/planes"
_DEFAULT_OUTPUTS = {
    "policy": "/output/policy",
    "wdl": "/output/wdl",
    "value": "/output/value",
    "mlh": "/output/mlh",
}
_OUTPUT_SHAPES = {"policy": 1858, "wdl": 3, "value": 1, "mlh": 1}
_REMEDY_OPSET = (
    "re-export the network with `lc0 leela2onnx --input=NET.pb.gz --output=NET.onnx --onnx-opset=17`, "
    "or load the .pb.gz weights directly"
)

#: ONNX ops linear in each position-dependent operand (given that the other operands are constants, which is
#: checked separately for ``Mul``, ``MatMul``, ``Gemm``, ``Div`` and ``Einsum``).
LINEAR_OP_TYPES = frozenset(
    {
        "Add", "Sub", "Neg", "Sum", "Mean", "Conv", "ConvTranspose", "Gemm", "MatMul", "Mul", "Div",
        "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Split", "Slice", "Squeeze",
        "Unsqueeze", "Flatten", "ReduceMean", "ReduceSum", "GlobalAveragePool", "AveragePool", "Identity",
        "Cast", "Expand", "Tile", "Pad", "BatchNormalization", "Dropout", "Shape", "Constant",
        "ConstantOfShape", "Einsum", "DepthToSpace", "SpaceToDepth",
    }
)  # fmt: skip
# Ops that only move or reshape values: followed backwards to find the softmax feeding an attention MatMul.
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Flatten", "Expand"})
# Ops whose output is a shape, never a function of the position's values.
_SHAPE_OPS = frozenset({"Shape", "Size"})
_ELEMENTWISE = {"Relu": "relu", "Tanh": "tanh", "Selu": "selu", "Sigmoid": "sigmoid", "Mish": "mish"}
# Operands that, when position-dependent, make the op bilinear or worse.
_CONSTANT_OPERANDS_REQUIRED = {"Mul": None, "MatMul": None, "Gemm": None, "Einsum": None, "Div": (1,)}


def load_onnx(
    source: str | Path | bytes,
    *,
    half: bool = False,
    input_format: InputFormat | int | None = None,
    max_bytes: int | None = None,
) -> OnnxNetwork:
    """Load an lc0 ONNX export as a network (see the network contract in the module docstring).

    Parameters
    ----------
    source
        Path of a ``.onnx`` file written by ``lc0 leela2onnx``, or its bytes (e.g. the ONNX model embedded in
        a ``.pb.gz``).
    half
        Keep (fp16 exports) or make (fp32 exports) the network float16. Default: run in float32.
    input_format
        The network's input format when the file does not record it (lc0's exports do not); default classical.
    max_bytes
        Cap on the file's size and on the bytes of its tensors, external data included (default 2 GiB, see
        :func:`lczerolens.model.safety.max_bytes_limit`).

    Returns
    -------
    OnnxNetwork
        ``network(planes)`` -> ``dict`` with ``policy`` and ``wdl_logits`` / ``value_logit`` and ``mlh``;
        attributes ``input_format``, ``input_format_source``, ``heads``, ``description``, ``onnx_opset``,
        ``source``.

    Raises
    ------
    ModelNotFoundError
        The path does not exist.
    ModelLoadError
        The file is not a readable ONNX model, not an lc0 export, over the size limit, holds names that cannot
        be mapped to module names (not UTF-8, control characters, over 512 characters), external data outside
        its folder, or weights that are not finite or fail on the starting position.
    UnsupportedModelError
        The export uses an op or opset that cannot be converted (e.g. ``--onnx-opset=18``).

    Examples
    --------
    >>> net = load_onnx("assets/cache/maia-1900.onnx")  # doctest: +SKIP
    >>> net(torch.zeros(1, 112, 8, 8))["policy"].shape  # doctest: +SKIP
    torch.Size([1, 1858])
    """

    from lczerolens.board import _as_format

    requested = _as_format(input_format) if input_format is not None else None
    cap = max_bytes_limit(max_bytes)
    # Parameters are built outside inference mode, so that a network loaded inside `torch.inference_mode()`
    # can still be explained (inference tensors cannot be saved for backward).
    with torch.inference_mode(False):
        model, label = _read_model(source, cap)
        try:
            gm, to_half = _build(model, label, half, requested)
        except LczeroLensError:
            raise
        except Exception as exc:  # anything else a hostile or corrupted graph makes onnx/onnx2torch/torch raise
            raise ModelLoadError(
                f"{label}: the ONNX graph cannot be converted ({type(exc).__name__}: {exc}); the file is corrupted "
                "or not an lc0 export"
            ) from exc
        check_network(gm, label)
        if to_half:
            gm.half()
    return gm


def _build(model, label: str, half: bool, input_format: InputFormat | None) -> tuple[OnnxNetwork, bool]:
    """The converted, normalised network and whether it still has to be made float16 (``half`` on a non-fp16
    export: done after the sanity check, which runs in float32)."""
    input_name, outputs = _find_inputs_outputs(model, label)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    _check_convertible(model, opsets, label)

    export_dtype = _export_dtype(model, input_name)
    # half=True keeps an fp16 export as it is (its own Casts included); everything else is converted in float32.
    keep_half = half and export_dtype == "fp16"
    if export_dtype != "fp32" and not keep_half:
        _to_float32(model)

    input_name, outputs, originals = _sanitise_names(model, input_name, outputs, label)
    node_types = _module_node_map(model)
    converted = _convert(model, label)
    _normalise(converted, node_types, input_name, outputs, label, drop_float_casts=not keep_half)
    gm = OnnxNetwork(converted, converted.graph)
    if "initializers" in gm._modules:
        gm.initializers.lrp_linear = True  # onnx2torch's container of constants: not an op, nothing to explain
    # half=True on an fp32/bf16 export: converted to float16 by load_onnx after the sanity check in float32.

    fmt, fmt_source = _input_format(model, input_format, label)
    gm.input_format = fmt
    gm.input_format_source = fmt_source
    gm.heads = tuple(h for h in ("policy", "wdl", "value", "mlh") if h in outputs)
    gm.onnx_opset = opset
    gm.onnx_names = {name: original for name, original in originals.items() if name in gm._modules}
    gm.source = label
    gm.description = _describe(gm, label, opset, export_dtype, "float16" if half else "float32")
    gm.eval()
    return gm, half and not keep_half


class OnnxNetwork(fx.GraphModule):
    """The converted network: a ``torch.fx.GraphModule`` whose contract attributes survive ``copy.deepcopy``."""

    _CONTRACT_ATTRS = (
        "input_format", "input_format_source", "heads", "onnx_opset", "source", "description", "onnx_names",
    )

    def __deepcopy__(self, memo: dict) -> OnnxNetwork:
        res = super().__deepcopy__(memo)
        for name in self._CONTRACT_ATTRS:
            if name in self.__dict__:
                setattr(res, name, self.__dict__[name])
        return res


# ----------------------------------------------------------------------------------------------- reading


def _read_model(source: str | Path | bytes, max_bytes: int):
    """Parse and check the ONNX model; return it and a label naming it in messages.

    Everything a file says is checked before it is used: the file's size, every name (see :func:`_check_text`),
    every tensor's declared size against the bytes it holds and the cap, external data (read here, only from
    the model's own folder), and then onnx's checker.
    """
    import onnx
    from google.protobuf.message import DecodeError

    folder: Path | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "<ONNX bytes>"
        if len(data) > max_bytes:
            raise ModelLoadError(f"{label}: {len(data)} bytes, over the {max_bytes}-byte limit (max_bytes=)")
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise ModelNotFoundError(
                f"no such network file: {label}; check the path (lczerolens loads .onnx exports"
                " from `lc0 leela2onnx`, and .pb.gz weights)"
            )
        if path.is_dir():
            raise ModelLoadError(f"{label} is a directory, not an ONNX file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelLoadError(
                f"{label} is {size} bytes, over the {max_bytes}-byte limit; if this really is an lc0 export, raise "
                "the limit with max_bytes= or LCZEROLENS_MAX_MODEL_BYTES"
            )
        data = path.read_bytes()
        folder = path.parent
    if not data:
        raise ModelLoadError(f"{label} is empty: not an ONNX model; re-download or re-export it")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{label} is not a readable ONNX model (truncated or corrupted?): {exc}; re-download or re-export it"
        ) from exc
    if not model.graph.node:
        raise ModelLoadError(f"{label} holds no ONNX graph (truncated, corrupted, or not an ONNX file)")
    _check_strings(model, label)
    _check_tensors(model, label, max_bytes, folder)
    try:
        _check_allocations(model, label, max_bytes)
    except LczeroLensError:
        raise
    except Exception as exc:  # malformed constants: reported as such
        raise ModelLoadError(f"{label}: malformed constant ({type(exc).__name__}: {exc})") from exc
    if model.ir_version < 4 and model.graph.initializer:
        # lc0 writes initializers without listing them as graph inputs, which IR 3 (its opset-7 exports)
        # requires; IR 4 made that optional, with the same meaning.
        model.ir_version = 4
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises ValidationError and a few others
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "No Op registered for" in str(exc):
            # lc0 0.32.1 writes LayerNormalization even for --onnx-opset below 17, where it does not exist.
            raise UnsupportedModelError(
                f"{label} uses an op its opset does not define ({first}); {_REMEDY_OPSET}"
            ) from exc
        raise ModelLoadError(f"{label} is not a valid ONNX model (truncated or corrupted?): {first}") from exc
    return model, label


# ----------------------------------------------------------------------------------------------- untrusted names

#: Longest name (node, value, initializer, attribute) accepted; lc0's are under 50 characters.
MAX_NAME_LENGTH = 512
# Characters kept in a module name; any other becomes "_". None of them can end or escape a Python string
# literal, which is where torch.fx writes module names (`getattr(self, "block0/conv1")`).
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_/*+\-:@#%&()\[\],<>=!?^~|$]")


def _check_text(value, what: str, label: str, limit: int = MAX_NAME_LENGTH) -> None:
    """Refuse a string from the file that is not UTF-8, holds control characters or is absurdly long."""
    if not isinstance(value, str):  # protobuf hands back bytes for a string field that is not valid UTF-8
        raise ModelLoadError(f"{label}: {what} {ascii(bytes(value)[:60])} is not valid UTF-8; the file is corrupted")
    if len(value) > limit:
        raise ModelLoadError(f"{label}: {what} {ascii(value[:60])}... is {len(value)} characters long (over {limit})")
    if not value.isprintable():
        raise ModelLoadError(
            f"{label}: {what} {ascii(value[:60])} holds control characters (newlines, NUL, ...); lc0 never writes "
            "such names: the file is corrupted or hostile"
        )


def _check_strings(model, label: str) -> None:
    """Check every string of the graph a loader may use (see :func:`_check_text`); refuse control flow."""
    import onnx

    graph = model.graph
    if len(model.functions) or len(graph.sparse_initializer):
        raise UnsupportedModelError(f"{label}: ONNX local functions and sparse initializers are not lc0 exports")
    for opset in model.opset_import:
        _check_text(opset.domain, "opset domain", label)
    for prop in model.metadata_props:
        _check_text(prop.key, "metadata key", label)
        _check_text(prop.value, f"metadata value of {prop.key!r}", label, limit=4096)
    for i, node in enumerate(graph.node):
        _check_text(node.name, f"node {i}'s name", label)
        _check_text(node.op_type, f"node {i}'s op type", label)
        _check_text(node.domain, f"node {i}'s domain", label)
        for value in list(node.input) + list(node.output):
            _check_text(value, f"a value name of node {node.name!r}", label)
        for attr in node.attribute:
            _check_text(attr.name, f"an attribute name of node {node.name!r}", label)
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise UnsupportedModelError(
                    f"{label}: node {node.name!r} ({node.op_type}) holds a subgraph; lc0 exports have no control flow"
                )
    for coll, what in ((graph.input, "input"), (graph.output, "output"), (graph.value_info, "value")):
        for v in coll:
            _check_text(v.name, f"graph {what} name", label)
    for t in graph.initializer:
        _check_text(t.name, "initializer name", label)
        for entry in t.external_data:
            _check_text(entry.key, f"external data key of {t.name!r}", label)
            _check_text(entry.value, f"external data value of {t.name!r}", label, limit=4096)


def _sanitise_names(
    model, input_name: str, outputs: dict[str, str], label: str
) -> tuple[str, dict[str, str], dict[str, str]]:
    """Rename, in place and before conversion, every value to a generated identifier and every node to a name
    that is safe in generated code, unique and not an attribute of the network.

    A node's new name is the module name onnx2torch would have given it (lc0's node name without the leading
    ``/``, dots as ``/``), so lc0's exports keep exactly their names (``block0/conv1/relu``); in other files each
    character outside a small safe set becomes ``_`` (keywords, names starting with ``_`` and names of the
    network's own attributes get a ``node_`` prefix; repeats a ``_1``, ``_2``, ... suffix). Returns the input's
    and outputs' new value names and ``{module name: the file's node name}``.
    """
    graph = model.graph
    values: dict[str, str] = {}

    def value(name: str) -> str:
        if not name:
            return name  # an omitted optional input
        if name not in values:
            values[name] = f"__v{len(values)}"
        return values[name]

    reserved = set(dir(OnnxNetwork)) | set(OnnxNetwork._CONTRACT_ATTRS) | {"initializers", "training", "graph", "code"}
    used: set[str] = set()
    originals: dict[str, str] = {}
    for node in graph.node:
        if node.domain not in ("",):
            raise UnsupportedModelError(f"{label}: node {node.name!r} uses op domain {node.domain!r}; lc0 uses none")
        base = node.name.replace(".", "/").lstrip("/") or node.op_type
        base = _UNSAFE_CHAR.sub("_", base) or "node"
        if keyword.iskeyword(base) or base.startswith(("_", "onnx_initializer")) or base in reserved:
            base = "node_" + base
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        originals[name] = node.name
        node.name = name
        node.input[:] = [value(v) for v in node.input]
        node.output[:] = [value(v) for v in node.output]
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            v.name = value(v.name)
    for t in graph.initializer:
        t.name = value(t.name)
    return value(input_name), {head: value(name) for head, name in outputs.items()}, originals


def _itemsize(data_type: int) -> int | None:
    """Bytes per element of a numeric ONNX tensor type (None for strings, undefined and unknown types)."""
    import onnx

    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        import numpy as np

        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return None


def _tensors(graph):
    """Every tensor a graph holds: initializers and tensors in node attributes (e.g. ``Constant``)."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors


def _check_tensors(model, label: str, max_bytes: int, folder: Path | None) -> None:
    """Check each tensor's declared size against the bytes it holds and the cap; read external data safely."""
    import onnx

    total = 0
    for t in _tensors(model.graph):
        name = t.name or "(a constant)"
        size = _itemsize(t.data_type)
        if size is None:
            raise ModelLoadError(f"{label}: tensor {name!r} has data type {t.data_type}, not a numeric type")
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{label}: tensor {name!r} declares negative dimensions {list(t.dims)}")
        count = 1
        for d in t.dims:
            count *= d
        nbytes = count * size
        total += nbytes
        if nbytes > max_bytes or total > max_bytes:
            raise ModelLoadError(
                f"{label}: tensor {name!r} declares {list(t.dims)} values ({nbytes} bytes), over the {max_bytes}-byte "
                "limit; the file is corrupted, or raise the limit with max_bytes="
            )
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _read_external(t, name, nbytes, label, folder)
            _check_finite(t, name, label)
            continue
        if t.raw_data:
            held, expected = len(t.raw_data), nbytes
        else:
            held = sum(
                len(getattr(t, f))
                for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
            )
            expected = count
        if held != expected:
            raise ModelLoadError(
                f"{label}: tensor {name!r} declares shape {list(t.dims)} ({expected} "
                f"{'bytes' if t.raw_data else 'values'}) but holds {held}; the file is truncated or corrupted"
            )
        _check_finite(t, name, label)


def _check_finite(tensor, name: str, label: str) -> None:
    """Refuse a floating-point tensor holding NaN or infinity, naming it as the file does."""
    import numpy as np
    import onnx

    kinds = {onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.FLOAT16: "<f2", onnx.TensorProto.DOUBLE: "<f8"}
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        values = (np.frombuffer(tensor.raw_data, "<u2").astype(np.uint32) << 16).view(np.float32)
        if not tensor.raw_data:
            values = (np.asarray(tensor.int32_data, np.uint32) << 16).view(np.float32)
    elif tensor.data_type in kinds:
        if tensor.raw_data:
            values = np.frombuffer(tensor.raw_data, kinds[tensor.data_type])
        elif tensor.data_type == onnx.TensorProto.FLOAT16:
            values = np.asarray(tensor.int32_data, np.uint16).view(np.float16)
        else:
            values = np.asarray(tensor.double_data if tensor.data_type == onnx.TensorProto.DOUBLE else
                                tensor.float_data)  # fmt: skip
    else:
        return
    if not np.isfinite(values).all():
        raise ModelLoadError(
            f"{label}: tensor {name!r} holds NaN or infinite values; the file is corrupted. Export it again."
        )


def _check_allocations(model, label: str, max_bytes: int) -> None:
    """Refuse ops that would allocate more than ``max_bytes`` from constant sizes (``ConstantOfShape``,
    ``Expand``, ``Tile``, ``Range``): a small file must not make the sanity forward allocate gigabytes."""
    import math

    import numpy as np
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and node.output:
                    constants[node.output[0]] = attr.t

    def value(i: int, node) -> np.ndarray | None:
        if len(node.input) <= i or node.input[i] not in constants:
            return None
        return numpy_helper.to_array(constants[node.input[i]])

    for node in model.graph.node:
        count = None
        if node.op_type in ("ConstantOfShape", "Expand"):
            shape = value(0 if node.op_type == "ConstantOfShape" else 1, node)
            if shape is not None and shape.size and (shape >= 0).all():
                count = math.prod(int(d) for d in shape.reshape(-1))
        elif node.op_type == "Tile":
            repeats, data = value(1, node), value(0, node)
            if repeats is not None and (repeats >= 0).all():
                count = math.prod(int(r) for r in repeats.reshape(-1)) * (data.size if data is not None else 1)
        elif node.op_type == "Range":
            start, limit, delta = (value(i, node) for i in range(3))
            if start is not None and limit is not None and delta is not None:
                with np.errstate(all="ignore"):
                    steps = np.ceil((limit.astype(np.float64) - start) / delta).reshape(-1)
                if steps.size == 1 and not np.isfinite(steps[0]):
                    raise ModelLoadError(f"{label}: Range node {node.name!r} has a non-finite length")
                count = int(max(steps[0], 0)) if steps.size == 1 else None
        if count is not None and count * 4 > max_bytes:
            raise ModelLoadError(
                f"{label}: node {node.name!r} ({node.op_type}) would allocate {count} values, over the "
                f"{max_bytes}-byte limit; the file is corrupted or hostile"
            )


def _read_external(tensor, name: str, nbytes: int, label: str, folder: Path | None) -> None:
    """Read an external-data tensor into ``raw_data``, only from a regular file inside the model's folder."""
    import onnx

    if folder is None:
        raise ModelLoadError(
            f"{label}: tensor {name!r} keeps its data in an external file; load the model from its path so the "
            "file can be found next to it"
        )
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else nbytes
    except ValueError:
        raise ModelLoadError(f"{label}: tensor {name!r} has a malformed external data offset/length") from None
    parts = Path(location).parts
    if (
        not location
        or "\\" in location
        or Path(location).is_absolute()
        or location.startswith(("/", "~"))
        or ".." in parts
        or ":" in location
    ):
        raise ModelLoadError(
            f"{label}: tensor {name!r} names external data {location!r}; only plain relative paths inside the "
            "model's folder are read (no '..', no absolute paths)"
        )
    base = folder.resolve()
    target = (folder / location).resolve()
    if target != base and base not in target.parents:
        raise ModelLoadError(
            f"{label}: tensor {name!r}'s external data {location!r} leads outside the model's folder (a symlink?); "
            "refusing to read it"
        )
    import stat

    try:
        st = target.stat()
    except OSError:
        raise ModelLoadError(f"{label}: external data file {location!r} of tensor {name!r} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{label}: external data {location!r} of tensor {name!r} is not a regular file")
    if offset < 0 or length != nbytes or offset + length > st.st_size:
        raise ModelLoadError(
            f"{label}: tensor {name!r} needs {nbytes} bytes of external data at offset {offset}, but the entry says "
            f"{length} bytes and {location!r} has {st.st_size}; the files do not belong together"
        )
    with target.open("rb") as f:
        f.seek(offset)
        data = f.read(length)
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _elem_type(value_infos: Iterable, name: str) -> int:
    for v in value_infos:
        if v.name == name:
            return v.type.tensor_type.elem_type
    return 0


def _find_inputs_outputs(model, label: str) -> tuple[str, dict[str, str]]:
    """Return the input name and ``{head: output name}``; lc0's default names first, then by shape and name."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    by_name = {v.name: v for v in inputs}
    if _DEFAULT_INPUT in by_name:
        input_name = _DEFAULT_INPUT
    elif len(inputs) == 1 and _dims(inputs[0])[1:] == [112, 8, 8]:
        input_name = inputs[0].name  # exported with --input-planes-name
    else:
        found = ", ".join(f"{v.name} {_dims(v)}" for v in inputs) or "none"
        raise ModelLoadError(
            f"{label} is not an lc0 network export: expected one input {_DEFAULT_INPUT} [batch, 112, 8, 8], "
            f"found {found}; export lc0 weights with `lc0 leela2onnx`"
        )
    dims = _dims(by_name[input_name])
    if dims[1:] != [112, 8, 8]:
        raise ModelLoadError(f"{label}: input {input_name} has shape {dims}, lc0 networks take [batch, 112, 8, 8]")

    outputs: dict[str, str] = {}
    for v in graph.output:
        last = (_dims(v) or [None])[-1]
        head = next((h for h, n in _DEFAULT_OUTPUTS.items() if n == v.name), None)
        if head is None:  # custom head names (--policy-head-name ...): the head's word and its width
            head = next((h for h in _DEFAULT_OUTPUTS if h in v.name.lower() and last == _OUTPUT_SHAPES[h]), None)
        if head is None:
            continue
        if last != _OUTPUT_SHAPES[head]:
            raise ModelLoadError(
                f"{label}: output {v.name} has shape {_dims(v)}, an lc0 {head} head has [batch, {_OUTPUT_SHAPES[head]}]"
            )
        outputs[head] = v.name
    if "policy" not in outputs or not ({"wdl", "value"} & outputs.keys()):
        found = ", ".join(f"{v.name} {_dims(v)}" for v in graph.output) or "none"
        raise ModelLoadError(
            f"{label} is not an lc0 network export: expected outputs {_DEFAULT_OUTPUTS['policy']} [batch, 1858] "
            f"and {_DEFAULT_OUTPUTS['wdl']} or {_DEFAULT_OUTPUTS['value']}, found {found}; "
            "export lc0 weights with `lc0 leela2onnx`"
        )
    return input_name, outputs


def _check_convertible(model, opsets: dict[str, int], label: str) -> None:
    """Raise UnsupportedModelError naming every op onnx2torch cannot convert at this opset."""
    from onnx2torch.node_converters import get_converter

    missing: dict[str, str] = {}
    for node in model.graph.node:
        domain = node.domain or ""
        key = f"{node.op_type}-{opsets.get(domain, 0)}" + (f" (domain {domain})" if domain else "")
        if key in missing:
            continue
        try:
            get_converter(domain=domain, operation_type=node.op_type, version=opsets.get(domain, 0))
        except NotImplementedError:
            missing[key] = node.name or node.op_type
    if missing:
        listed = ", ".join(f"{op} (node {name})" for op, name in missing.items())
        raise UnsupportedModelError(
            f"{label}: opset {opsets.get('', '?')} ops that onnx2torch cannot convert: {listed}; {_REMEDY_OPSET}"
        )


def _export_dtype(model, input_name: str) -> str:
    """``"fp32"``, ``"fp16"`` or ``"bf16"``: the precision of the export's input and weights."""
    import onnx

    types = {_elem_type(model.graph.input, input_name)} | {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"


def _to_float32(model) -> None:
    """Rewrite a float16/bfloat16 export in place to float32 (exact upcast of every half-precision value)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    half_types = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    graph = model.graph

    def upcast(tensor) -> None:
        if tensor.data_type in half_types:
            arr = numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))

    for t in graph.initializer:
        upcast(t)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                upcast(attr.t)
            elif attr.name == "to" and attr.type == onnx.AttributeProto.INT and attr.i in half_types:
                attr.i = onnx.TensorProto.FLOAT
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.tensor_type.elem_type in half_types:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _module_node_map(model) -> dict[str, object]:
    """Map each module name onnx2torch will use to its ONNX node (same naming rule as onnx2torch)."""
    counters: dict[str, int] = {}
    names: dict[str, object] = {}
    for node in model.graph.node:
        base = (f"{node.domain}/" + (node.name.replace(".", "/") or node.op_type)).lstrip("/")
        count = counters.get(base, 0)
        counters[base] = count + 1
        names[base + (f"_{count}" if count else "")] = node
    return names


def _convert(model, label: str) -> fx.GraphModule:
    import onnx2torch

    try:
        return onnx2torch.convert(model)
    except NotImplementedError as exc:
        raise UnsupportedModelError(f"{label}: onnx2torch cannot convert it: {exc}; {_REMEDY_OPSET}") from exc
    except Exception as exc:
        raise ModelLoadError(f"{label}: converting the ONNX graph to PyTorch failed: {exc}") from exc


def _input_format(model, requested, label: str) -> tuple[InputFormat, str]:
    recorded = None
    for prop in model.metadata_props:
        if prop.key.lower() in ("input_format", "lc0_input_format", "inputformat"):
            recorded = prop.value.strip()
    if recorded is not None:
        try:
            fmt = InputFormat(int(recorded)) if recorded.isdigit() else InputFormat[recorded.upper()]
        except (ValueError, KeyError) as exc:
            raise UnsupportedModelError(
                f"{label}: metadata input_format={recorded!r} is not a known lc0 input format "
                f"({', '.join(f'{f.name}={f.value}' for f in InputFormat)})"
            ) from exc
        if requested is not None and InputFormat(requested) != fmt:
            return InputFormat(requested), "given (overriding the file's metadata)"
        return fmt, "file metadata"
    if requested is not None:
        return InputFormat(requested), "given"
    return InputFormat.CLASSICAL_112_PLANE, "default (not recorded in the ONNX file)"


# ----------------------------------------------------------------------------------------------- normalising


def _op_type(node: fx.Node, node_types: dict) -> str | None:
    if node.op != "call_module":
        return None
    onnx_node = node_types.get(node.target)
    return onnx_node.op_type if onnx_node is not None else None


def _attr(onnx_node, name: str, default=None):
    from onnx import helper

    for a in onnx_node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _normalise(
    gm: fx.GraphModule,
    node_types: dict,
    input_name: str,
    outputs: dict[str, str],
    label: str,
    *,
    drop_float_casts: bool = True,
) -> None:
    graph = gm.graph
    by_target = {n.target: n for n in graph.nodes if n.op == "call_module"}

    def fx_node_for(value_name: str) -> fx.Node:
        # lc0 names each node after its output tensor; find the node producing this output.
        for target, onnx_node in node_types.items():
            if value_name in onnx_node.output and target in by_target:
                return by_target[target]
        raise ModelLoadError(f"{label}: no node produces the output {value_name}")

    # ---- outputs: the contract dict, final softmax / tanh cut off
    result: dict[str, fx.Node] = {}
    out_node = next(n for n in graph.nodes if n.op == "output")
    for head, value_name in outputs.items():
        node = fx_node_for(value_name)
        op = _op_type(node, node_types)
        if head == "wdl":
            if op != "Softmax":
                raise UnsupportedModelError(
                    f"{label}: {value_name} is not produced by a Softmax ({op}); cannot recover the WDL logits"
                )
            result["wdl_logits"] = node.args[0]
        elif head == "value":
            if op != "Tanh":
                raise UnsupportedModelError(
                    f"{label}: {value_name} is not produced by a Tanh ({op}); cannot recover the value logit"
                )
            result["value_logit"] = node.args[0]
        else:
            result[head] = node
    with graph.inserting_before(out_node):
        for key in ("value_logit", "mlh"):
            if key in result:  # [N, 1] -> [N]
                result[key] = graph.call_function(torch.flatten, (result[key],))
    out_node.args = ({k: result[k] for k in ("policy", "wdl_logits", "value_logit", "mlh") if k in result},)
    _erase_dead(graph)

    # ---- which values depend on the position
    dependent: set[fx.Node] = set()
    for n in graph.nodes:
        if n.op == "placeholder":
            dependent.add(n)
        elif n.op in ("call_module", "call_function", "call_method") and _op_type(n, node_types) not in _SHAPE_OPS:
            if any(a in dependent for a in n.all_input_nodes):
                dependent.add(n)

    def dep_args(n: fx.Node) -> list[int]:
        return [i for i, a in enumerate(n.args) if isinstance(a, fx.Node) and a in dependent]

    done: set[fx.Node] = set()  # nodes already given a rule op (a fused Mul must not be seen again)

    def set_module(node: fx.Node, module: nn.Module, args: tuple) -> None:
        done.add(node)
        setattr(gm, node.target, module)
        node.args = args
        node.kwargs = {}

    def only_user(n: fx.Node) -> fx.Node | None:
        users = list(n.users)
        return users[0] if len(users) == 1 else None

    def is_op(n, op: str) -> bool:
        return isinstance(n, fx.Node) and _op_type(n, node_types) == op

    # ---- Casts to float32 of activations are no-ops once the network runs in float32 (fp16/bf16 exports cast
    # around ops they compute in float32): drop them, so .half() later cannot leave a float32 island.
    if drop_float_casts:
        import onnx

        for n in list(graph.nodes):
            if _op_type(n, node_types) == "Cast" and n.args and n.args[0] in dependent:
                if _attr(node_types[n.target], "to") == onnx.TensorProto.FLOAT:
                    n.replace_all_uses_with(n.args[0])
                    graph.erase_node(n)

    # ---- constant-operand shape ops as precomputed modules (onnx2torch's read their constants at every call)
    for n in list(graph.nodes):
        op = _op_type(n, node_types)
        if op == "Slice":
            _freeze_slice(gm, n)
        elif op == "Reshape":
            _freeze_reshape(gm, n, node_types[n.target])
        elif op == "Gather":
            _freeze_gather(gm, n, node_types[n.target])

    # ---- pattern fusion and rule ops, in graph order
    for n in list(graph.nodes):
        if n.op != "call_module" or getattr(n, "_erased", False) or n not in dependent or n in done:
            continue
        op = _op_type(n, node_types)
        if op is None:
            continue
        user = only_user(n)
        if op == "Softplus":
            x = n.args[0]
            mul = only_user(user) if user is not None and is_op(user, "Tanh") else None
            if mul is not None and is_op(mul, "Mul") and set(mul.args) == {user, x}:
                set_module(mul, ops.Activation("mish"), (x,))
                graph.erase_node(user)
                graph.erase_node(n)
        elif op == "Sigmoid":
            x = n.args[0]
            if user is not None and is_op(user, "Mul") and len(user.args) == 2 and n in user.args:
                other = user.args[1] if user.args[0] is n else user.args[0]
                if other is x:
                    set_module(user, ops.Activation("swish"), (x,))
                    graph.erase_node(n)
                    continue
                if other in dependent:
                    set_module(user, ops.Gate(), (x, other))
                    graph.erase_node(n)
                    continue
            set_module(n, ops.Activation("sigmoid"), (x,))
        elif op == "Relu":
            if user is not None and is_op(user, "Mul") and tuple(user.args) == (n, n):
                set_module(user, ops.Activation("relu2"), (n.args[0],))
                graph.erase_node(n)
            else:
                set_module(n, ops.Activation("relu"), (n.args[0],))
        elif op in ("Tanh", "Mish"):
            set_module(n, ops.Activation(_ELEMENTWISE[op]), (n.args[0],))
        elif op == "Selu":
            onnx_node = node_types[n.target]
            alpha = _attr(onnx_node, "alpha", 1.67326319217681884765625)
            gamma = _attr(onnx_node, "gamma", 1.05070102214813232421875)
            if abs(alpha - 1.6732632423543772) < 1e-6 and abs(gamma - 1.0507009873554805) < 1e-6:
                set_module(n, ops.Activation("selu"), (n.args[0],))
        elif op == "Softmax":
            module = gm.get_submodule(n.target)
            if isinstance(module, nn.Softmax):  # opset >= 13: a softmax over one axis
                set_module(n, ops.Softmax(int(module.dim)), (n.args[0],))
            elif getattr(module, "axis", None) == -1:  # opset < 13 flattens from `axis`: the same only for -1
                set_module(n, ops.Softmax(-1), (n.args[0],))
            # else: left as it is, marked not linear below (a lens refuses it, naming it)
        elif op == "LayerNormalization":
            _replace_layer_norm(gm, n, node_types[n.target], label)
        elif op == "Mul" and len(dep_args(n)) == 2:
            set_module(n, ops.Mul(), tuple(n.args[:2]))
        elif op == "MatMul" and len(dep_args(n)) == 2:
            operand = None
            for i, a in enumerate(n.args[:2]):
                if _comes_from_softmax(a, node_types):
                    operand = i
            set_module(n, ops.MatMul(operand), tuple(n.args[:2]))

    _erase_dead(graph)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()

    # ---- every other op: is it linear in its position-dependent operands?
    for n in graph.nodes:
        if n.op != "call_module":
            continue
        module = gm.get_submodule(n.target)
        if isinstance(module, ops.RULE_OPS):
            continue
        op = _op_type(n, node_types) or type(module).__name__
        linear = op in LINEAR_OP_TYPES
        if op in _CONSTANT_OPERANDS_REQUIRED:
            needs = _CONSTANT_OPERANDS_REQUIRED[op]
            deps = dep_args(n)
            linear = len(deps) <= 1 if needs is None else not any(i in needs for i in deps)
        module.lrp_linear = linear
        module.onnx_op_type = op


class StaticSlice(nn.Module):
    """ONNX ``Slice`` with constant starts/ends/axes/steps, as one precomputed basic index ``x[index]``.

    Replaces onnx2torch's slice module, which reads its constants back to numpy at every call (a device sync)
    and indexes with a list (deprecated by PyTorch). Linear: ``lrp_linear = True``.
    """

    def __init__(self, index: tuple) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.index]

    def extra_repr(self) -> str:
        return repr(self.index)


def _freeze_slice(gm: fx.GraphModule, n: fx.Node) -> None:
    """Swap a constant-operand Slice for :class:`StaticSlice` (left alone when anything is not constant)."""
    args = list(n.args) + [n.kwargs.get(k) for k in ("axes", "steps") if k in n.kwargs]
    if len(args) < 3 or not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in args[1:] if a is not None):
        return
    values = [None if a is None else gm.get_buffer(a.target).tolist() for a in args[1:]]
    starts, ends = values[0], values[1]
    axes = values[2] if len(values) > 2 and values[2] is not None else list(range(len(starts)))
    steps = values[3] if len(values) > 3 and values[3] is not None else [1] * len(starts)
    if any(step <= 0 for step in steps) or not (all(a >= 0 for a in axes) or all(a < 0 for a in axes)):
        return
    slices = {a: slice(int(b), int(e), int(st)) for a, b, e, st in zip(axes, starts, ends, steps, strict=True)}
    if all(a >= 0 for a in axes):
        index = tuple(slices.get(a, slice(None)) for a in range(max(axes) + 1))
    else:
        index = (Ellipsis,) + tuple(slices.get(a, slice(None)) for a in range(min(axes), 0))
    setattr(gm, n.target, StaticSlice(index))
    n.args, n.kwargs = (n.args[0],), {}


class StaticReshape(nn.Module):
    """ONNX ``Reshape`` with a constant shape (``0`` copies the input's size on that axis, ONNX's default)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self._copy = any(d == 0 for d in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._copy:
            return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])
        return x.reshape(self.shape)

    def extra_repr(self) -> str:
        return repr(self.shape)


class IndexGather(nn.Module):
    """ONNX ``Gather`` along ``axis`` by a constant 1-D index with no negative entries: ``index_select``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, self.axis, index)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


def _constant(gm: fx.GraphModule, arg) -> torch.Tensor | None:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return gm.get_buffer(arg.target)
    return None


def _freeze_reshape(gm: fx.GraphModule, n: fx.Node, onnx_node) -> None:
    shape = _constant(gm, n.args[1]) if len(n.args) == 2 and not n.kwargs else None
    if shape is None or shape.dim() != 1 or _attr(onnx_node, "allowzero", 0):
        return
    setattr(gm, n.target, StaticReshape(tuple(int(d) for d in shape.tolist())))
    n.args = (n.args[0],)


def _freeze_gather(gm: fx.GraphModule, n: fx.Node, onnx_node) -> None:
    index = _constant(gm, n.args[1]) if len(n.args) == 2 and not n.kwargs else None
    axis = int(_attr(onnx_node, "axis", 0))
    if index is None or index.dim() != 1 or bool((index < 0).any()) or axis < 0:
        return
    if index.dtype != torch.int64:
        gm.get_submodule("initializers").register_buffer(n.args[1].target.split(".")[-1], index.long())
    setattr(gm, n.target, IndexGather(axis))


def _comes_from_softmax(node, node_types: dict) -> bool:
    while isinstance(node, fx.Node):
        op = _op_type(node, node_types)
        if op == "Softmax":
            return True
        if op in _PASS_THROUGH or (node.op == "call_function" and node.target is operator.getitem):
            node = node.args[0]
            continue
        return False
    return False


def _replace_layer_norm(gm: fx.GraphModule, n: fx.Node, onnx_node, label: str) -> None:
    module = gm.get_submodule(n.target)
    axis = _attr(onnx_node, "axis", -1)
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            raise UnsupportedModelError(
                f"{label}: LayerNormalization {onnx_node.name} normalises over axis {axis} "
                f"(shape {tuple(module.normalized_shape)}), not only the last axis; lczerolens supports last-axis "
                "layer norms (what lc0 exports)"
            )
        new = ops.LayerNorm(module.normalized_shape[0], module.eps)
        with torch.no_grad():
            new.weight.copy_(module.weight)
            new.bias.copy_(module.bias)
        setattr(gm, n.target, new)
        n.args, n.kwargs = (n.args[0],), {}
        return
    # Scale/bias are not initializers (e.g. computed): keep the op but refuse it unless over the last axis.
    if axis != -1:
        raise UnsupportedModelError(
            f"{label}: LayerNormalization {onnx_node.name} with axis {axis} and non-constant scale is not supported"
        )
    raise UnsupportedModelError(
        f"{label}: LayerNormalization {onnx_node.name} takes its scale from the graph, not a constant; lc0 exports "
        "constant scales, re-export the network with `lc0 leela2onnx`"
    )


def _erase_dead(graph: fx.Graph) -> None:
    """Remove nodes whose values nothing uses (call_module included: the ops here are pure)."""
    changed = True
    while changed:
        changed = False
        for n in reversed(list(graph.nodes)):
            if n.op not in ("output", "placeholder") and not n.users:
                graph.erase_node(n)
                changed = True


# ----------------------------------------------------------------------------------------------- describing


def _describe(gm, label: str, opset: int, export_dtype: str, dtype: str) -> str:
    mods = gm._modules
    names = list(mods)
    kinds = sorted({m.kind for m in mods.values() if isinstance(m, ops.Activation)})
    blocks = {name.split("/")[0] for name in names if name.startswith("block") and "/" in name}
    encoders = {name.split("/")[0] for name in names if name.startswith("encoder") and "/" in name}
    if "inputconv" in mods and hasattr(mods["inputconv"], "out_channels"):
        body = f"residual {len(blocks)}x{mods['inputconv'].out_channels}"
        if any("/se/" in name for name in names):
            body += " SE"
    elif encoders:
        widths = [m.weight.shape[0] for name, m in mods.items() if name == "encoder0/ln1" and hasattr(m, "weight")]
        body = f"attention body {len(encoders)}x{widths[0] if widths else '?'}"
        if any("/smolgen/" in name for name in names):
            body += " smolgen"
    else:
        body = "unknown body"
    if any(name.startswith("policy/conv2") for name in names):
        policy = "conv policy"
    elif any(name.startswith(("policy/Q", "policy/K", "policy/matmul")) for name in names):
        policy = "attention policy"
    elif any(name.startswith("policy/dense") for name in names):
        policy = "classical policy"
    else:
        policy = "policy"
    heads = ", ".join(h for h in gm.heads if h != "policy")
    precision = f"{export_dtype} export, runs in {dtype}"
    return (
        f"lc0 network ({body}, {policy}, heads: {heads}; activations: {', '.join(kinds) or 'none'}) "
        f"from ONNX {Path(label).name} (opset {opset}, {precision})"
    )
