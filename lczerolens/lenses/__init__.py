"""Lenses: ways to look inside a network.

- Attribution (one call, ``lens.relevance(model, boards, target) -> Relevance``): :class:`LrpLens` (layer-wise
  relevance), :class:`GradientLens` (gradient, gradient x input, integrated gradients, SmoothGrad),
  :class:`OcclusionLens` (piece removal).
- Inside the network: :class:`ActivationLens` (named activations), :class:`PatchingLens` (activation patching
  between clean and corrupted positions, with :func:`corrupt`), :class:`AttentionLens` (attention weights of
  attention-body nets on board squares), :func:`head_move_shares` (which heads attend along lines, diagonals,
  knight jumps), :class:`AblationLens` (each channel, head or neuron knocked out in turn, with
  :func:`rank_units`).
- Through depth: :class:`LogitLens` (the heads read after every layer), :class:`TunedLens` (the same through
  one fitted affine map per layer), :func:`depth_kl` (how far each layer's reading is from the final policy).

LRP presets (dicts of lens options, ``LrpLens(**preset)``): :data:`EPSILON` (epsilon rules, biases absorb their
share: the lens of earlier releases), :data:`GAMMA_COMPOSITE`, :data:`RESIDUAL_DEFAULT` and
:data:`ATTENTION_DEFAULT` (what ``LrpLens()`` applies to a residual / attention-body network), and
:data:`RESIDUAL_CONSERVING` (the default's layer rules, every bias left out, the gate held constant: maps that sum
to the explained number).

Example
-------
>>> from lczerolens.lenses import LrpLens, GradientLens
>>> LrpLens(softmax="cp")
LrpLens(softmax='cp')
>>> GradientLens("smoothgrad", samples=8)
GradientLens('smoothgrad', samples=8, noise=0.1, seed=0)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lczerolens.lenses.ablation import AblationLens, rank_units
    from lczerolens.lenses.activation import ActivationLens
    from lczerolens.lenses.attention import AttentionLens
    from lczerolens.lenses.attention_stats import HeadShares, head_move_shares
    from lczerolens.lenses.depth import LogitLens, TunedLens, depth_kl, depth_layers
    from lczerolens.lenses.gradient import GRADIENT_METHODS, GradientLens, OcclusionLens
    from lczerolens.lenses.lrp import (
        ATTENTION_DEFAULT,
        EPSILON,
        GAMMA_COMPOSITE,
        PRESETS,
        RESIDUAL_CONSERVING,
        RESIDUAL_DEFAULT,
        LrpLens,
        make_composite,
        network_family,
    )
    from lczerolens.lenses.patching import PatchingLens, corrupt
    from lczerolens.lenses.relevance import Relevance

# Each lens loads on first use: `lczerolens explain` needs only the LRP lens, and the lenses that return a
# TensorDict would import tensordict (about a second) for nothing.
_LRP = "lczerolens.lenses.lrp"
_LAZY = {
    "AblationLens": "lczerolens.lenses.ablation",
    "rank_units": "lczerolens.lenses.ablation",
    "ActivationLens": "lczerolens.lenses.activation",
    "AttentionLens": "lczerolens.lenses.attention",
    "HeadShares": "lczerolens.lenses.attention_stats",
    "head_move_shares": "lczerolens.lenses.attention_stats",
    "GRADIENT_METHODS": "lczerolens.lenses.gradient",
    "GradientLens": "lczerolens.lenses.gradient",
    "OcclusionLens": "lczerolens.lenses.gradient",
    "LrpLens": _LRP,
    "make_composite": _LRP,
    "EPSILON": _LRP,
    "GAMMA_COMPOSITE": _LRP,
    "RESIDUAL_DEFAULT": _LRP,
    "RESIDUAL_CONSERVING": _LRP,
    "ATTENTION_DEFAULT": _LRP,
    "PRESETS": _LRP,
    "network_family": _LRP,
    "PatchingLens": "lczerolens.lenses.patching",
    "corrupt": "lczerolens.lenses.patching",
    "Relevance": "lczerolens.lenses.relevance",
    "LogitLens": "lczerolens.lenses.depth",
    "TunedLens": "lczerolens.lenses.depth",
    "depth_kl": "lczerolens.lenses.depth",
    "depth_layers": "lczerolens.lenses.depth",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lczerolens.lenses' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AblationLens",
    "rank_units",
    "ActivationLens",
    "AttentionLens",
    "GRADIENT_METHODS",
    "GradientLens",
    "HeadShares",
    "LrpLens",
    "OcclusionLens",
    "PatchingLens",
    "Relevance",
    "corrupt",
    "head_move_shares",
    "make_composite",
    "EPSILON",
    "GAMMA_COMPOSITE",
    "RESIDUAL_DEFAULT",
    "RESIDUAL_CONSERVING",
    "ATTENTION_DEFAULT",
    "PRESETS",
    "network_family",
    "LogitLens",
    "TunedLens",
    "depth_kl",
    "depth_layers",
]
