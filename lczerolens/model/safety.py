"""Limits and load-time checks shared by both loaders: a network file is untrusted input.

- :data:`DEFAULT_MAX_BYTES` bounds how much a loader reads or decompresses (2 GiB, overridable per call with
  ``max_bytes=`` or for a whole process with the environment variable ``LCZEROLENS_MAX_MODEL_BYTES``).
  2 GiB is protobuf's own limit for one serialized message (2**31 - 1 bytes), which both an lc0 weights file
  (one ``Net`` message) and an ONNX file without external data already have to respect; lc0's published nets
  are far smaller (maia-1900 is 1.7 MB decompressed).
- :func:`check_network` runs the start position through a freshly built network and refuses it
  (:class:`~lczerolens.errors.ModelLoadError`, naming the first module whose output is not finite) when the
  forward fails or any output or parameter is not finite, so that a bad file fails at load, never later.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lczerolens.errors import LczeroLensError, ModelLoadError

__all__ = ["DEFAULT_MAX_BYTES", "MAX_RATIO", "RATIO_FLOOR_BYTES", "max_bytes_limit", "check_network"]

#: Default cap on the bytes a loader reads or decompresses.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: A gzipped weights file may decompress to at most ``max(RATIO_FLOOR_BYTES, MAX_RATIO * compressed size)``:
#: lc0 weights are 16-bit quantised values that gzip shrinks by a few tens of percent (maia-1900: 1.26 MB ->
#: 1.74 MB, ratio 1.4), so a ratio of 16 only trips on a decompression bomb.
MAX_RATIO = 16
RATIO_FLOOR_BYTES = 64 * 1024**2
_ENV = "LCZEROLENS_MAX_MODEL_BYTES"


def max_bytes_limit(max_bytes: int | None = None) -> int:
    """The byte cap in force: ``max_bytes`` when given, else ``$LCZEROLENS_MAX_MODEL_BYTES``, else 2 GiB.

    >>> max_bytes_limit(1024)
    1024
    """
    if max_bytes is None:
        env = os.environ.get(_ENV)
        if env is None:
            return DEFAULT_MAX_BYTES
        try:
            max_bytes = int(env)
        except ValueError:
            raise ModelLoadError(f"{_ENV}={env!r} is not a number of bytes; set it to e.g. 4294967296") from None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ModelLoadError(f"max_bytes must be a positive number of bytes, not {max_bytes!r}")
    return max_bytes


def _all_finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def _first_bad_module(network: nn.Module, planes: torch.Tensor) -> str | None:
    """Name of the first module (in call order) whose output holds a non-finite value."""
    found: list[str] = []
    handles = []

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            if found:
                return
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            if any(isinstance(t, torch.Tensor) and not _all_finite(t) for t in tensors):
                found.append(name)

        return record

    for name, module in network.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            network(planes)
    except Exception:  # the caller already reported the forward; this is only for naming
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def check_network(network: nn.Module, source: str) -> None:
    """Refuse ``network`` unless its parameters are finite and the start position gives finite outputs.

    Runs one forward of the starting position (encoded in ``network.input_format``) under ``torch.no_grad``
    (never inference mode: a module caching a tensor on its first call must not keep an inference tensor).

    Raises
    ------
    ModelLoadError
        Naming the parameter or the first module whose output is not finite, or the forward's error.

    Examples
    --------
    >>> check_network(load_pb("assets/cache/maia-1900.pb.gz"), "maia")  # doctest: +SKIP
    """
    from lczerolens.board import InputFormat, LczeroBoard

    for kind, named in (("parameter", network.named_parameters()), ("buffer", network.named_buffers())):
        for name, tensor in named:
            if not _all_finite(tensor):
                raise ModelLoadError(
                    f"{source}: {kind} {name} holds NaN or infinite values; the file is corrupted. "
                    "Download or export the network again."
                )
    fmt = getattr(network, "input_format", InputFormat.CLASSICAL_112_PLANE)
    param = next(network.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    planes = LczeroBoard().to_input_tensor(fmt).unsqueeze(0).to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            out = network(planes)
    except LczeroLensError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{source}: the network fails on the starting position ({type(exc).__name__}: {exc}); the file is "
            "corrupted or not a working lc0 network."
        ) from exc
    if not isinstance(out, dict) or "policy" not in out:
        raise ModelLoadError(f"{source}: the network does not produce a policy; not an lc0 network.")
    for head, value in out.items():
        if not isinstance(value, torch.Tensor) or value.shape[0] != 1:
            raise ModelLoadError(f"{source}: output {head} has the wrong shape for one position; file corrupted.")
        if not _all_finite(value):
            where = _first_bad_module(network, planes)
            at = f" (first non-finite output: module {where})" if where else ""
            raise ModelLoadError(
                f"{source}: the network's {head} output for the starting position is NaN or infinite{at}; the "
                "file's weights are corrupted. Download or export the network again."
            )
