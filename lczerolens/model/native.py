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
from lczerolens.model.netformat import (
    _ATTENTION_STRUCTURES,
    _NS,
    _RESIDUAL_STRUCTURES,
    is_attention_body,
    resolve_network_format,
)
from lczerolens.model.proto import Net, parse_net, read_net

__all__ = ["load_pb", "build_network", "resolve_network_format", "is_attention_body"]

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
