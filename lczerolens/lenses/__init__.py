"""Lenses: ways to look inside a network.

- Attribution (one call, ``lens.relevance(model, boards, target) -> Relevance``): :class:`LrpLens` (layer-wise
  relevance), :class:`GradientLens` (gradient, gradient x input, integrated gradients, SmoothGrad),
  :class:`OcclusionLens` (piece removal).
- Inside the network: :class:`ActivationLens` (named activations), :class:`PatchingLens` (activation patching
  between clean and corrupted positions, with :func:`corrupt`), :class:`AttentionLens` (attention weights of
  attention-body nets on board squares).

Example
-------
>>> from lczerolens.lenses import LrpLens, GradientLens
>>> LrpLens(softmax="cp")
LrpLens(epsilon=1e-06, softmax='cp')
>>> GradientLens("smoothgrad", samples=8)
GradientLens('smoothgrad', samples=8, noise=0.1, seed=0)
"""

from lczerolens.lenses.activation import ActivationLens
from lczerolens.lenses.attention import AttentionLens
from lczerolens.lenses.gradient import GRADIENT_METHODS, GradientLens, OcclusionLens
from lczerolens.lenses.lrp import LrpLens, make_composite
from lczerolens.lenses.patching import PatchingLens, corrupt
from lczerolens.lenses.relevance import Relevance

__all__ = [
    "ActivationLens",
    "AttentionLens",
    "GRADIENT_METHODS",
    "GradientLens",
    "LrpLens",
    "OcclusionLens",
    "PatchingLens",
    "Relevance",
    "corrupt",
    "make_composite",
]
