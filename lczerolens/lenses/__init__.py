"""Lenses: ways to look inside a network. :class:`LrpLens` explains an output with layer-wise relevance.

Example
-------
>>> from lczerolens.lenses import LrpLens
>>> LrpLens(softmax="cp")
LrpLens(epsilon=1e-06, softmax='cp')
"""

from lczerolens.lenses.lrp import LrpLens, make_composite
from lczerolens.lenses.relevance import Relevance

__all__ = ["LrpLens", "Relevance", "make_composite"]
