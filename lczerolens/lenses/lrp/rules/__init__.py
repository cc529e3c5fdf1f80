"""LRP rules (autograd Functions and modules); see :mod:`lczerolens.lenses.lrp.rules.epsilon`."""

from lczerolens.lenses.lrp.rules.epsilon import *  # noqa: F403
from lczerolens.lenses.lrp.rules.epsilon import __all__  # noqa: F401
