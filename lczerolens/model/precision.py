"""Full float32 arithmetic on GPUs while lczerolens computes.

PyTorch lets cuDNN run float32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``), which keeps
10 bits of mantissa, and matrix products may do the same (``torch.set_float32_matmul_precision``). On an H200,
with TF32 on, maia-1900's policy logits moved by 0.24% of their largest magnitude and ``LrpLens()``'s top-move
maps by up to 24% of theirs (the gamma rule divides by sums that TF32 perturbs); with it off, by 3e-6 and 7e-7
(``benchmarks/cuda_check.py``). Every number lczerolens reports is meant as the network's own, so the model's
forward pass and every lens run inside :func:`ieee_float32`, which turns TF32 off for the call and restores the
user's settings afterwards. The settings are process-wide, so overlapping calls from several threads share one
switch: the first to enter saves the settings, the last to leave restores them. Outside such calls the user's
settings hold. On a CPU the switch changes nothing.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["ieee_float32", "in_ieee_float32"]

_F = TypeVar("_F", bound=Callable[..., Any])

_lock = threading.Lock()
_depth = 0
_saved: tuple[bool, str] | None = None


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Within the block, float32 convolutions and matrix products on CUDA keep all 23 bits of mantissa.

    >>> import torch
    >>> with ieee_float32():
    ...     torch.backends.cudnn.allow_tf32
    False
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                torch.backends.cudnn.allow_tf32, precision = _saved
                torch.set_float32_matmul_precision(precision)
                _saved = None


def in_ieee_float32(fn: _F) -> _F:
    """Decorate ``fn`` to run inside :func:`ieee_float32`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with ieee_float32():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
