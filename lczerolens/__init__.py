"""lczerolens: look inside Leela Chess Zero networks."""

from lczerolens.errors import LczeroLensError

__all__ = ["LczeroLensError"]
