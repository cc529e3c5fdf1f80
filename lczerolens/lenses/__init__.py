"""Lenses: ways to look inside a network. :class:`LrpLens` explains an output with layer-wise relevance.

Example
-------
>>> from lczerolens.lenses import LrpLens
>>> LrpLens(softmax="cp")
LrpLens(softmax='cp')

Presets (dicts of lens options, ``LrpLens(**preset)``): :data:`EPSILON` (epsilon rules, biases absorb their
share: the lens of earlier releases), :data:`GAMMA_COMPOSITE`, :data:`RESIDUAL_DEFAULT` and
:data:`ATTENTION_DEFAULT` (what ``LrpLens()`` applies to a residual / attention-body network), and
:data:`RESIDUAL_CONSERVING` (the default's rules with every bias left out: maps that sum to the explained number).
"""

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
from lczerolens.lenses.relevance import Relevance

__all__ = [
    "LrpLens",
    "Relevance",
    "make_composite",
    "EPSILON",
    "GAMMA_COMPOSITE",
    "RESIDUAL_DEFAULT",
    "RESIDUAL_CONSERVING",
    "ATTENTION_DEFAULT",
    "PRESETS",
    "network_family",
]
