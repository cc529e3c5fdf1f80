"""Layer-wise relevance propagation: the rules and the lens that applies them."""

from lczerolens.lenses.lrp.lens import (
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

__all__ = [
    "LrpLens",
    "make_composite",
    "EPSILON",
    "GAMMA_COMPOSITE",
    "RESIDUAL_DEFAULT",
    "RESIDUAL_CONSERVING",
    "ATTENTION_DEFAULT",
    "PRESETS",
    "network_family",
]
