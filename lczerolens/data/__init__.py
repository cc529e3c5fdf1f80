"""Game collections: streaming readers of PGN files and EPD/FEN lists (see :mod:`lczerolens.data.readers`).

This folder also holds the package's data files (``policy_moves.txt``, lc0's policy index table).

Example
-------
>>> from lczerolens.data import read_pgn
>>> for position in read_pgn("games.pgn.gz", every=4):  # doctest: +SKIP
...     print(position.game, position.ply, position.board.fen(), position.played)
"""

from lczerolens.data.puzzles import Puzzle, PuzzleReader, read_puzzles
from lczerolens.data.readers import (
    GameRecord,
    Position,
    PositionReader,
    Selection,
    Skipped,
    open_text,
    read_epd,
    read_pgn,
    source_kind,
)
from lczerolens.data.sources import read_positions

__all__ = [
    "GameRecord",
    "Position",
    "PositionReader",
    "Puzzle",
    "PuzzleReader",
    "Selection",
    "Skipped",
    "open_text",
    "read_epd",
    "read_pgn",
    "read_positions",
    "read_puzzles",
    "source_kind",
]
