"""lczerolens: look inside Leela Chess Zero networks.

Load an lc0 network, feed it positions exactly as lc0 encodes them, evaluate them, and explain the network's
choices with layer-wise relevance propagation decoded onto the board.

Example
-------
>>> from lczerolens import LczeroBoard, LczeroModel
>>> from lczerolens.lenses import LrpLens
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> board = LczeroBoard()
>>> relevance = LrpLens().relevance(model, board)  # doctest: +SKIP
>>> relevance.render()  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lczerolens.errors import (
    InputFormatError,
    InputShapeError,
    InvalidBoardError,
    InvalidMoveError,
    LczeroLensError,
    LensError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

# Heavy names (torch, onnx2torch) load on first use, so `import lczerolens` stays quick.
_LAZY = {
    "InputFormat": "lczerolens.board",
    "LczeroBoard": "lczerolens.board",
    "LczeroModel": "lczerolens.model",
    "LrpLens": "lczerolens.lenses",
    "GradientLens": "lczerolens.lenses",
    "OcclusionLens": "lczerolens.lenses",
    "ActivationLens": "lczerolens.lenses",
    "PatchingLens": "lczerolens.lenses",
    "AttentionLens": "lczerolens.lenses",
    "LogitLens": "lczerolens.lenses",
    "TunedLens": "lczerolens.lenses",
    "render_depth": "lczerolens.visual_depth",
    "render_attention": "lczerolens.visual",
    "render_heatmap": "lczerolens.visual",
    "render_grid": "lczerolens.visual",
    "Heatmap": "lczerolens.visual",
    "Evaluation": "lczerolens.model",
    "encode_boards": "lczerolens.board",
    "explore": "lczerolens.explorer",
}

__all__ = [
    "ActivationLens",
    "AttentionLens",
    "GradientLens",
    "OcclusionLens",
    "PatchingLens",
    "render_attention",
    "LogitLens",
    "TunedLens",
    "render_depth",
    "Evaluation",
    "Heatmap",
    "encode_boards",
    "explore",
    "render_grid",
    "InputFormat",
    "InputFormatError",
    "InputShapeError",
    "InvalidBoardError",
    "InvalidMoveError",
    "LczeroBoard",
    "LczeroLensError",
    "LczeroModel",
    "LensError",
    "LrpLens",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "render_heatmap",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lczerolens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
