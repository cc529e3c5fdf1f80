"""Build a PyTorch network directly from lc0 weights (``.pb.gz`` / ``.pb``), without ONNX.

:func:`load_pb` reads the file with lczerolens' own protobuf reader (:mod:`lczerolens.model.proto`), works out
what the weights mean the way lc0 does (older files without a network format are upgraded to lc0's defaults),
and builds the network contract's ``nn.Module``:

- residual (SE-)ResNets (``NETWORK_CLASSICAL*`` / ``NETWORK_SE*``): :mod:`lczerolens.model.residual`;
- attention-body nets: ``lczerolens.model.attention.build_attention_network(net)``.

Example
-------
>>> from lczerolens.model.native import load_pb
>>> network = load_pb("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> out = network(torch.zeros(1, 112, 8, 8))  # doctest: +SKIP
>>> sorted(out)  # doctest: +SKIP
['policy', 'wdl_logits']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lczerolens.errors import LczeroLensError, ModelLoadError, UnsupportedModelError
from lczerolens.model.proto import Net, NetworkFormat, parse_net, read_net

__all__ = ["load_pb", "build_network", "resolve_network_format", "is_attention_body"]

_NS = NetworkFormat.NetworkStructure
_ATTENTION_STRUCTURES = (
    _NS.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT,
    _NS.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT,
    _NS.NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT,
)
_RESIDUAL_STRUCTURES = (
    _NS.NETWORK_CLASSICAL,
    _NS.NETWORK_SE,
    _NS.NETWORK_CLASSICAL_WITH_HEADFORMAT,
    _NS.NETWORK_SE_WITH_HEADFORMAT,
)


def resolve_network_format(net: Net) -> NetworkFormat:
    """The network format lc0 uses for ``net``: a copy, with what older files leave out filled in as lc0 does.

    Files without a network format are classical-input, classical-value, classical-policy residual nets;
    ``NETWORK_CLASSICAL`` / ``NETWORK_SE`` become their ``*_WITH_HEADFORMAT`` forms with classical heads; an
    SE-format file with encoder layers is an attention body (ReLU^2 FFN and Swish smolgen if it has smolgen);
    attention bodies with multi-head value and policy heads use the PE_DENSE embedding, others PE_MAP unless the
    file says otherwise.
    """
    nf = NetworkFormat.parse(net.format.network_format.serialize())
    weights = net.weights
    if not net.format.has("network_format"):
        nf.input = NetworkFormat.InputFormat.INPUT_CLASSICAL_112_PLANE
        nf.output = NetworkFormat.OutputFormat.OUTPUT_CLASSICAL
        nf.network = _NS.NETWORK_CLASSICAL_WITH_HEADFORMAT
        nf.value = NetworkFormat.ValueFormat.VALUE_CLASSICAL
        nf.policy = NetworkFormat.PolicyFormat.POLICY_CLASSICAL
    elif nf.network in (_NS.NETWORK_CLASSICAL, _NS.NETWORK_SE):
        nf.network = (
            _NS.NETWORK_CLASSICAL_WITH_HEADFORMAT if nf.network == _NS.NETWORK_CLASSICAL
            else _NS.NETWORK_SE_WITH_HEADFORMAT
        )
        nf.value = NetworkFormat.ValueFormat.VALUE_CLASSICAL
        nf.policy = NetworkFormat.PolicyFormat.POLICY_CLASSICAL
    elif nf.network == _NS.NETWORK_SE_WITH_HEADFORMAT and len(weights.encoder) > 0:
        nf.network = _NS.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT
        if weights.has("smolgen_w"):
            nf.ffn_activation = NetworkFormat.ActivationFunction.ACTIVATION_RELU_2
            nf.smolgen_activation = NetworkFormat.ActivationFunction.ACTIVATION_SWISH
    elif nf.network == _NS.NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT:
        nf.network = _NS.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT
    if nf.network == _NS.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT:
        if weights.has("policy_heads") and weights.has("value_heads"):
            nf.network = _NS.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT
            nf.input_embedding = NetworkFormat.InputEmbeddingFormat.INPUT_EMBEDDING_PE_DENSE
        if not nf.has("input_embedding"):
            nf.input_embedding = NetworkFormat.InputEmbeddingFormat.INPUT_EMBEDDING_PE_MAP
    return nf


def is_attention_body(net: Net) -> bool:
    """Whether ``net`` has an attention (transformer) body rather than a residual tower."""
    return resolve_network_format(net).network in _ATTENTION_STRUCTURES


def build_network(net: Net, source: str = "lc0 weights") -> nn.Module:
    """Build the network contract's module for a parsed :class:`~lczerolens.model.proto.Net`.

    ``source`` names the file in messages and in ``network.description``.
    """
    if not net.has("weights"):
        if net.has("onnx_model"):
            raise UnsupportedModelError(
                f"{source} holds an embedded ONNX model instead of lc0 weights; extract it and load the .onnx "
                "file, or load the original lc0 weights."
            )
        raise ModelLoadError(f"{source} has no weights (the Net message's field 10 is missing).")
    nf = resolve_network_format(net)
    if nf.network in _ATTENTION_STRUCTURES:
        return _build_attention(net, source)
    if nf.network not in _RESIDUAL_STRUCTURES:
        raise UnsupportedModelError(
            f"{source}: network structure {_name(nf.network, _NS)} is not supported; lczerolens runs residual "
            "(SE-)ResNets and attention-body networks."
        )
    from lczerolens.model.residual import build_residual_network

    return build_residual_network(net, nf, source)


def _build_attention(net: Net, source: str) -> nn.Module:
    try:
        from lczerolens.model.attention import build_attention_network
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing not in (None, "lczerolens.model.attention") and "build_attention_network" not in str(exc):
            raise
        raise UnsupportedModelError(
            f"{source} is an attention-body network, which this installation of lczerolens cannot build yet "
            "(lczerolens.model.attention.build_attention_network is missing). Convert it with "
            "`lc0 leela2onnx` and load the .onnx file instead."
        ) from exc
    return build_attention_network(net)


def _name(value: int, enum: Any) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(int(value))


def load_pb(path_or_bytes: str | Path | bytes | bytearray | memoryview, *, max_bytes: int | None = None) -> nn.Module:
    """Load lc0 weights (``.pb.gz``, ``.pb``, or their bytes) as a network following the network contract.

    Parameters
    ----------
    path_or_bytes : str, Path or bytes
        A weights file, or its content (gzipped or raw protobuf).
    max_bytes : int, optional
        Cap on the file's size and its decompressed size (default 2 GiB, see :mod:`lczerolens.model.safety`).

    Returns
    -------
    torch.nn.Module
        ``network(planes [N, 112, 8, 8]) -> dict`` with ``policy`` ``[N, 1858]`` logits, ``wdl_logits``
        ``[N, 3]`` or ``value_logit`` ``[N]``, and ``mlh`` ``[N]`` when the net has a moves-left head; attributes
        ``input_format``, ``heads``, ``description``; submodules named after lc0's ONNX nodes.

    Raises
    ------
    ModelNotFoundError
        The path does not exist.
    ModelLoadError
        Corrupted, truncated, oversized or non-lc0 data; weights that are missing, not finite or whose sizes do
        not fit the declared architecture; a network whose start-position outputs are not finite.
    UnsupportedModelError
        A valid lc0 network that lczerolens cannot build.

    Examples
    --------
    >>> network = load_pb("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
    >>> network.heads  # doctest: +SKIP
    ('policy', 'wdl')
    """
    from lczerolens.model.safety import check_network

    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        net = parse_net(path_or_bytes, max_bytes=max_bytes)
        source = "the given lc0 weights"
    else:
        path = Path(path_or_bytes)
        net = read_net(path, max_bytes=max_bytes)
        source = f"'{path}'"
    # Parameters are built outside inference mode so that a network loaded inside `torch.inference_mode()` can
    # still be explained.
    with torch.inference_mode(False):
        try:
            network = build_network(net, source)
        except LczeroLensError:
            raise
        except Exception as exc:  # a corrupted file must give a package error, whatever the builder tripped on
            raise ModelLoadError(
                f"{source}: the weights cannot be built into a network ({type(exc).__name__}: {exc}); the file is "
                "corrupted"
            ) from exc
        # An attention net's parameters are the decoded layers themselves, each checked finite by decode_layer;
        # a residual net's convolutions were computed (batch norm folded in), so they are checked again.
        check_network(network, source, check_parameters=not is_attention_body(net))
    return network
