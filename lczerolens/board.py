"""Chess positions as lc0 sees them: input planes, policy indices, and the way back to the board."""

from __future__ import annotations

from enum import IntEnum


class InputFormat(IntEnum):
    """lc0's ``NetworkFormat.InputFormat`` numbers."""

    CLASSICAL_112_PLANE = 1
    CASTLING_PLANE = 2
    CANONICALIZATION = 3
    CANONICALIZATION_HECTOPLIES = 4
    CANONICALIZATION_V2 = 5
    CANONICALIZATION_HECTOPLIES_ARMAGEDDON = 132
    CANONICALIZATION_V2_ARMAGEDDON = 133
