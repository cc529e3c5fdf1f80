"""lc0's input formats, importable without torch (the command line lists them in its help)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["InputFormat"]


class InputFormat(IntEnum):
    """lc0's ``NetworkFormat.InputFormat`` numbers."""

    CLASSICAL_112_PLANE = 1
    CASTLING_PLANE = 2
    CANONICALIZATION = 3
    CANONICALIZATION_HECTOPLIES = 4
    CANONICALIZATION_V2 = 5
    CANONICALIZATION_HECTOPLIES_ARMAGEDDON = 132
    CANONICALIZATION_V2_ARMAGEDDON = 133
