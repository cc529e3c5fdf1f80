"""Layer-wise relevance propagation: the rules and the lens that applies them."""

from lczerolens.lenses.lrp.lens import LrpLens, make_composite

__all__ = ["LrpLens", "make_composite"]
