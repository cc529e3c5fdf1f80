"""Limits and load-time checks shared by both loaders: a network file is untrusted input.

- :data:`DEFAULT_MAX_BYTES` bounds how much a loader reads or decompresses (2 GiB, overridable per call with
  ``max_bytes=`` or for a whole process with the environment variable ``LCZEROLENS_MAX_MODEL_BYTES``).
  2 GiB is protobuf's own limit for one serialized message (2**31 - 1 bytes), which both an lc0 weights file
  (one ``Net`` message) and an ONNX file without external data already have to respect; lc0's published nets
  are far smaller (maia-1900 is 1.7 MB decompressed).
- :func:`check_network` runs a probe batch (the start position, all-ones planes and, below
  :data:`LARGE_NETWORK_PARAMETERS`, another position and random planes) through a freshly built network and refuses it
  (:class:`~lczerolens.errors.ModelLoadError`, naming the first module whose output is not finite or absurdly
  large) when the forward fails or any parameter is not finite, so that a bad file fails at load, never later.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from lczerolens.errors import LczeroLensError, ModelLoadError

if TYPE_CHECKING:  # torch is imported by the functions that need it: the weights reader stays light
    import torch
    from torch import nn

__all__ = [
    "ACTIVATION_LIMIT", "DEFAULT_MAX_BYTES", "LARGE_NETWORK_PARAMETERS", "MAX_RATIO", "RATIO_FLOOR_BYTES",
    "check_network", "max_bytes_limit", "probe_planes",
]

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


def _extremes(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty float tensor in one pass without a temporary (NaN when it holds one)."""
    lo, hi = t.detach().aminmax()
    return float(lo), float(hi)


def _all_finite(t: torch.Tensor) -> bool:
    # min and max propagate NaN and show an infinity: far cheaper than torch.isfinite(t).all() on a large net.
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = _extremes(t)
    return math.isfinite(lo) and math.isfinite(hi)


#: Largest activation magnitude accepted on the probe inputs. Real networks stay in the hundreds there
#: (maia-1900: 384, random test nets: under 60); float32 overflows only at 3.4e38, so a network reaching 1e12 on
#: ordinary inputs holds a corrupted weight that will turn some position's outputs into inf or NaN.
ACTIVATION_LIMIT = 1e12
#: Positions of the probe batch besides the start position (black to move, castling, a rule-50 count).
_PROBE_FENS = ("r3k2r/p1ppqpb1/bn2pnp1/3PN3/1p2P3/2N2Q1p/PPPBBPPP/R3K2R b KQkq - 10 20",)


#: Networks with more parameters than this are probed with two inputs, the start position and the all-ones
#: planes, instead of six: the probe forward is a large part of loading a BT4-sized net (160M parameters), and
#: every input weight still takes part (the all-ones planes) and a real position is still run.
LARGE_NETWORK_PARAMETERS = 20_000_000


def probe_planes(input_format, random_planes: int = 3, *, second_position: bool = True) -> torch.Tensor:
    """The sanity check's inputs ``[2 + second_position + random_planes, 112, 8, 8]``: the start position and
    (with ``second_position``) another real one, encoded in ``input_format``; all planes set to one (every input
    weight takes part); and ``random_planes`` seeded random binary planes."""
    import torch

    from lczerolens.board import LczeroBoard

    boards = [LczeroBoard()] + ([LczeroBoard(fen) for fen in _PROBE_FENS] if second_position else [])
    real = [b.to_input_tensor(input_format) for b in boards]
    gen = torch.Generator().manual_seed(0)
    noise = [torch.bernoulli(torch.full((112, 8, 8), 0.3), generator=gen) for _ in range(random_planes)]
    return torch.stack(real + [torch.ones(112, 8, 8)] + noise)


def _magnitude(t: torch.Tensor) -> float:
    """Largest |value| of a float tensor (inf when it holds NaN or inf)."""
    if not t.is_floating_point() or t.numel() == 0:
        return 0.0
    lo, hi = _extremes(t)
    m = max(-lo, hi)
    return m if lo == lo and hi == hi else float("inf")


def _run_probe(network: nn.Module, planes: torch.Tensor, limit: float):
    """Forward ``planes`` recording the first module whose output is not finite or over ``limit``."""
    import torch

    found: list[tuple[str, float]] = []
    handles = []

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            if found:
                return
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    m = _magnitude(t)
                    if m > limit:
                        found.append((name, m))
                        return

        return record

    for name, module in network.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            out = network(planes)
    finally:
        for h in handles:
            h.remove()
    return out, (found[0] if found else None)


def check_network(network: nn.Module, source: str, *, check_parameters: bool = True) -> None:
    """Refuse ``network`` unless its parameters are finite and it computes sane outputs on a probe batch.

    The probe (:func:`probe_planes`: the start position and all-ones planes and, for networks up to
    :data:`LARGE_NETWORK_PARAMETERS` parameters, another position and three seeded random planes) runs under
    ``torch.no_grad`` (never inference mode: a module caching a tensor on its first call must not keep an
    inference tensor). Every module's output must be finite and, in float32 or wider, below
    :data:`ACTIVATION_LIMIT` in magnitude; every head must have one row per input.

    ``check_parameters=False`` skips the parameters' finiteness check, for a loader that already checked every
    value it put into them (the native attention builder: its parameters are the decoded layers themselves).

    Raises
    ------
    ModelLoadError
        Naming the parameter or the first module whose output is not finite or too large, or the forward's
        error.

    Examples
    --------
    >>> check_network(load_pb("assets/cache/maia-1900.pb.gz"), "maia")  # doctest: +SKIP
    """
    import torch

    from lczerolens.board import InputFormat

    for kind, named in (("parameter", network.named_parameters()), ("buffer", network.named_buffers())):
        if kind == "parameter" and not check_parameters:
            continue
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
    size = sum(p.numel() for p in network.parameters())
    large = size > LARGE_NETWORK_PARAMETERS
    planes = probe_planes(fmt, 0 if large else 3, second_position=not large).to(device=device, dtype=dtype)
    limit = ACTIVATION_LIMIT if torch.finfo(dtype).bits >= 32 else float(torch.finfo(dtype).max)
    try:
        out, bad = _run_probe(network, planes, limit)
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
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != planes.shape[0]:
            raise ModelLoadError(f"{source}: output {head} does not have one row per position; file corrupted.")
    if bad is not None:
        name, magnitude = bad
        what = "NaN or infinite" if magnitude == float("inf") else f"{magnitude:.3g} in magnitude"
        raise ModelLoadError(
            f"{source}: module {name}'s output is {what} on the load-time probe (the starting position, another "
            "position, all-ones and random input planes); lc0 networks stay in the hundreds there, so the file's "
            "weights are corrupted. Download or export the network again."
        )
    for head, value in out.items():
        if _magnitude(value) > limit:
            raise ModelLoadError(
                f"{source}: the network's {head} output is NaN, infinite or over {limit:.0e} on the load-time "
                "probe; the file's weights are corrupted. Download or export the network again."
            )
