"""Small random-weight lc0 networks, written in lc0's own weights format, for tests and experiments.

Every generator is imported from here (``from lczerolens.testing import ...``); the two modules behind it are
:mod:`lczerolens.testing.residual` (SE-ResNets like maia or lc0's T-series, the :func:`random_net` dispatch,
plausible input planes and boards) and :mod:`lczerolens.testing.attention` (attention-body "BT" nets).

Example
-------
>>> from lczerolens.testing import random_net
>>> len(random_net(blocks=1, filters=8, seed=3).weights.residual)
1
"""

from __future__ import annotations

from lczerolens.testing.attention import (
    REALISTIC_ATTENTION_SPEC,
    AttentionNetSpec,
    make_attention_net,
    write_attention_net,
)
from lczerolens.testing.residual import (
    INPUT_FORMATS,
    RESIDUAL_DEFAULTS,
    calibration_planes,
    lc0_input_planes,
    random_boards,
    random_net,
    reencode_net,
    write_random_net,
)

__all__ = [
    "INPUT_FORMATS",
    "REALISTIC_ATTENTION_SPEC",
    "RESIDUAL_DEFAULTS",
    "AttentionNetSpec",
    "calibration_planes",
    "lc0_input_planes",
    "make_attention_net",
    "random_boards",
    "random_net",
    "reencode_net",
    "write_attention_net",
    "write_random_net",
]
