"""lc0's policy maps: from a policy head's raw output layout to the 1858 policy logits, derived from geometry.

Two layouts exist:

- Convolution policy (residual nets, ``POLICY_CONVOLUTION``): 80 planes of 64 squares, flattened to 5120 as
  ``plane * 64 + from_square``. Planes 0-55 are queen-like moves, ``7 * direction + (distance - 1)`` with the
  directions N, NE, E, SE, S, SW, W, NW; planes 56-63 the knight jumps in clockwise order starting with
  (+1 file, +2 ranks); planes 64-72 the promotions, ``64 + 3 * (file_step + 1) + piece`` with piece 0, 1, 2 =
  rook, bishop, queen; planes 73-79 are unused. Knight promotions use the plain from-to entry.
- Attention policy (``POLICY_ATTENTION``): a ``[67, 64]`` block flattened to 4288: ``from * 64 + to`` for every
  move, then for promotions ``4096 + from_file * 24 + to_file * 3 + piece`` with piece 0, 1, 2 = queen, rook,
  bishop.

Each map is the index vector ``g`` of length 1858 such that ``logits = flat[..., g]`` (what lc0's ONNX export
gathers as ``/const/mapping_table``).

Example
-------
>>> conv_policy_map()[:3].tolist()  # a1b1, a1c1, a1d1: east, distances 1-3, from a1
[896, 960, 1024]
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lczerolens.policy_index import POLICY_MOVES

__all__ = ["conv_policy_map", "attention_policy_map", "CONV_POLICY_PLANES", "ATTENTION_POLICY_SIZE"]

CONV_POLICY_PLANES = 80
ATTENTION_POLICY_SIZE = 67 * 64

# (file step, rank step) unit vectors in plane order.
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
_KNIGHT_JUMPS = ((1, 2), (2, 1), (2, -1), (1, -2), (-1, -2), (-2, -1), (-2, 1), (-1, 2))
_CONV_PROMO_PIECE = {"r": 0, "b": 1, "q": 2}
_ATTN_PROMO_PIECE = {"q": 0, "r": 1, "b": 2}


def _square(name: str) -> tuple[int, int]:
    return ord(name[0]) - ord("a"), int(name[1]) - 1  # (file, rank)


def _conv_plane(uci: str) -> int:
    (f0, r0), (f1, r1) = _square(uci[:2]), _square(uci[2:4])
    df, dr = f1 - f0, r1 - r0
    if len(uci) == 5 and uci[4] != "n":
        return 64 + 3 * (df + 1) + _CONV_PROMO_PIECE[uci[4]]
    if (df, dr) in _KNIGHT_JUMPS:
        return 56 + _KNIGHT_JUMPS.index((df, dr))
    dist = max(abs(df), abs(dr))
    unit = (df // dist, dr // dist)
    if unit not in _DIRECTIONS or (df, dr) != (unit[0] * dist, unit[1] * dist):
        raise ValueError(f"{uci} is not a queen, knight or promotion move")
    return 7 * _DIRECTIONS.index(unit) + dist - 1


@lru_cache(maxsize=1)
def _conv_map() -> np.ndarray:
    out = np.empty(len(POLICY_MOVES), dtype=np.int64)
    for i, uci in enumerate(POLICY_MOVES):
        f0, r0 = _square(uci[:2])
        out[i] = _conv_plane(uci) * 64 + r0 * 8 + f0
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def _attention_map() -> np.ndarray:
    out = np.empty(len(POLICY_MOVES), dtype=np.int64)
    for i, uci in enumerate(POLICY_MOVES):
        (f0, r0), (f1, r1) = _square(uci[:2]), _square(uci[2:4])
        if len(uci) == 5 and uci[4] != "n":
            out[i] = 4096 + f0 * 24 + f1 * 3 + _ATTN_PROMO_PIECE[uci[4]]
        else:
            out[i] = (r0 * 8 + f0) * 64 + r1 * 8 + f1
    out.setflags(write=False)
    return out


def conv_policy_map() -> np.ndarray:
    """Gather indices ``[1858]`` into the flattened ``[80, 8, 8]`` convolution-policy output (read-only).

    Examples
    --------
    >>> m = conv_policy_map()
    >>> m.shape, int(m.max()) < 80 * 64
    ((1858,), True)
    """
    return _conv_map()


def attention_policy_map() -> np.ndarray:
    """Gather indices ``[1858]`` into the flattened ``[67, 64]`` attention-policy output (read-only).

    Examples
    --------
    >>> int(attention_policy_map()[0])  # a1b1: from a1 (0), to b1 (1)
    1
    """
    return _attention_map()
