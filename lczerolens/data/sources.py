"""Any collection file by its name: PGN games, an EPD/FEN list or a Lichess puzzle file.

Kept apart from :mod:`lczerolens.data.readers` and :mod:`lczerolens.data.puzzles` (which builds on the readers) so
that neither imports the other in a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lczerolens.data.puzzles import read_puzzles
from lczerolens.data.readers import PositionReader, read_epd, read_pgn, source_kind
from lczerolens.errors import DataError

__all__ = ["read_positions"]


def read_positions(path: str | Path, **selection: Any) -> PositionReader:
    """:func:`read_pgn`, :func:`read_epd` or :func:`read_puzzles`, chosen by the file name's suffix."""
    kind = source_kind(path)
    if kind == "pgn":
        return read_pgn(path, **selection)
    if kind == "puzzle":
        return read_puzzles(path, **selection)
    unknown = set(selection) - {"every", "sample", "seed"}
    if unknown:
        raise DataError(f"{', '.join(sorted(unknown))} apply to PGN games only, not to the EPD file {path}")
    return read_epd(path, **selection)
