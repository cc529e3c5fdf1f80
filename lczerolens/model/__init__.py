"""lc0 networks as PyTorch modules: :class:`LczeroModel` and the loaders behind it.

``LczeroModel`` is imported lazily so that importing :mod:`lczerolens.model.ops` (which both loaders do) stays
light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LczeroModel", "Evaluation", "load_onnx"]


def __getattr__(name: str) -> Any:
    if name in ("LczeroModel", "Evaluation"):
        from lczerolens.model import model

        return getattr(model, name)
    if name == "load_onnx":
        from lczerolens.model.onnx_loader import load_onnx

        return load_onnx
    raise AttributeError(f"module 'lczerolens.model' has no attribute {name!r}")
