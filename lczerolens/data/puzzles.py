"""Lichess puzzles: a streaming reader of the Lichess puzzle database (CSV, plain, gzip or zstandard).

The file has one puzzle per row, with the header
``PuzzleId,FEN,Moves,Rating,RatingDeviation,Popularity,NbPlays,Themes,GameUrl,OpeningTags`` (a file without the
header is read with these columns in this order). ``FEN`` is the position *before* the opponent's move;
``Moves`` holds, in UCI, the opponent's move and then the solution. So a :class:`Puzzle`'s ``board`` is the
position after the opponent's move, with that move as its history (what lc0 is fed), and its ``solution`` the
moves from there.

A row that cannot be read (a bad FEN, an illegal move, a missing field, a rating that is not a number) is skipped
and recorded in the reader's ``skipped`` with its line number (as :func:`lczerolens.data.read_pgn` reports
games); it never stops the iteration.

Example
-------
>>> from lczerolens.data import read_puzzles
>>> for puzzle in read_puzzles("lichess_db_puzzle.csv.zst", min_rating=1500, themes=["fork"]):  # doctest: +SKIP
...     puzzle.id, puzzle.rating, puzzle.board.fen(), puzzle.solution
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chess

from lczerolens.data.readers import GameRecord, Position, PositionReader, Selection, _stream_errors, open_text
from lczerolens.errors import DataError

__all__ = ["Puzzle", "PuzzleReader", "read_puzzles", "PUZZLE_COLUMNS"]

#: The Lichess puzzle database's columns, in order.
PUZZLE_COLUMNS = (
    "PuzzleId",
    "FEN",
    "Moves",
    "Rating",
    "RatingDeviation",
    "Popularity",
    "NbPlays",
    "Themes",
    "GameUrl",
    "OpeningTags",
)
_REQUIRED = ("PuzzleId", "FEN", "Moves", "Rating")
#: A row longer than this is not a puzzle (the real ones are under 400 characters): bounds memory on garbage.
_MAX_ROW_CHARS = 20_000


@dataclass
class Puzzle:
    """One Lichess puzzle.

    Attributes
    ----------
    id : str
        The Lichess puzzle id (``PuzzleId``).
    board : LczeroBoard
        The position to solve: after the opponent's first move, which is the board's history.
    solution : list of str
        The solution's moves in UCI, from ``board`` (the solver's moves and the opponent's replies, alternating).
    rating : int
        The puzzle's Glicko rating.
    themes : list of str
        Lichess theme tags (``fork``, ``mateIn2``, ...).
    line : int
        The row's line number in the file (1 = the header).
    info : dict
        The other columns as text (``RatingDeviation``, ``Popularity``, ``NbPlays``, ``GameUrl``,
        ``OpeningTags``).
    """

    id: str
    board: Any
    solution: list[str]
    rating: int
    themes: list[str]
    line: int
    info: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Puzzle(id={self.id!r}, rating={self.rating}, themes={self.themes!r}, solution={self.solution!r}, "
            f"fen={self.board.fen()!r})"
        )

    @property
    def fen(self) -> str:
        """The position before the opponent's move (the file's ``FEN``)."""
        root = self.board.copy()
        root.pop()
        return str(root.fen())

    @property
    def position(self) -> Position:
        """This puzzle as a collection :class:`~lczerolens.data.Position` (``played`` = the first solution move)."""
        return Position(self.board, "", 0, 1, chess.Move.from_uci(self.solution[0]), {"PuzzleId": self.id})


class PuzzleReader(PositionReader):
    """The puzzles of a Lichess puzzle CSV file, filtered by rating and themes; iterate it for :class:`Puzzle`.

    It is also a collection source for :func:`lczerolens.run.explain_dataset` and ``lczerolens run``: its
    :meth:`games` are one record per puzzle, whose one position (ply 1) is the puzzle's board and whose
    ``played`` move the first solution move.

    Attributes
    ----------
    min_rating, max_rating : int or None
        Keep puzzles rated within these bounds (inclusive).
    themes : tuple of str
        Keep puzzles that have every one of these themes (empty: all).
    skipped, n_skipped
        The rows the last pass skipped (as :class:`~lczerolens.data.PositionReader`).
    """

    _record_ply = 1

    def __init__(
        self,
        path: str | Path,
        selection: Selection,
        *,
        min_rating: int | None = None,
        max_rating: int | None = None,
        themes: Iterable[str] | None = None,
    ) -> None:
        for name, value in (("min_rating", min_rating), ("max_rating", max_rating)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise DataError(f"{name}={value!r}: give a whole number (a Glicko rating) or None")
        if min_rating is not None and max_rating is not None and max_rating < min_rating:
            raise DataError(f"max_rating={max_rating} is below min_rating={min_rating}")
        if isinstance(themes, str):
            themes = [themes]
        theme_tuple = tuple(themes or ())
        if not all(isinstance(t, str) and t for t in theme_tuple):
            raise DataError(f"themes={themes!r}: give Lichess theme names, e.g. ['fork', 'mateIn2']")
        super().__init__(path, "puzzle", selection)
        self.min_rating = min_rating
        self.max_rating = max_rating
        self.themes = theme_tuple

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "min_rating": self.min_rating,
            "max_rating": self.max_rating,
            "themes": list(self.themes),
        }

    def __repr__(self) -> str:
        return (
            f"PuzzleReader({str(self.path)!r}, min_rating={self.min_rating!r}, max_rating={self.max_rating!r}, "
            f"themes={list(self.themes)!r}, {', '.join(f'{k}={v!r}' for k, v in self.selection.as_dict().items())})"
        )

    def __iter__(self) -> Iterator[Puzzle]:  # type: ignore[override]
        from lczerolens.board import LczeroBoard

        for record in self.games():
            board = LczeroBoard(record.fen)
            board.push(chess.Move.from_uci(record.moves[0]))
            info = dict(record.info)
            yield Puzzle(
                id=info.pop("PuzzleId"),
                board=board,
                solution=record.moves[1:],
                rating=int(info.pop("Rating")),
                themes=info.pop("Themes").split(),
                line=record.line,
                info=info,
            )

    def positions(self) -> Iterator[Position]:
        """The puzzles as collection positions (what ``explain_dataset`` reads)."""
        for record in self.games():
            yield from record.positions()

    def games(self) -> Iterator[GameRecord]:
        for record in super().games():
            # the base class cuts moves after the selected ply; a puzzle keeps its whole solution
            record.moves = record.info.pop("_moves").split()
            yield record

    def _raw_games(self) -> Iterator[tuple[GameRecord, int]]:
        self.skipped = []
        self.n_skipped = 0
        stream_errors = _stream_errors()
        with open_text(self.path) as handle:
            rows = csv.reader(handle)
            columns: tuple[str, ...] = PUZZLE_COLUMNS
            index = 0
            first = True
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except stream_errors as exc:
                    self._skip(rows.line_num + 1, None, f"the file ends or breaks here ({type(exc).__name__}: {exc})")
                    return
                except csv.Error as exc:
                    self._skip(rows.line_num, index, f"not a CSV row ({exc})")
                    index += 1
                    continue
                line = rows.line_num
                if first:
                    first = False
                    if row and row[0].strip() == "PuzzleId":
                        columns = tuple(c.strip() for c in row)
                        missing = [c for c in _REQUIRED if c not in columns]
                        if missing:
                            raise DataError(
                                f"{self.source}: the header lacks {', '.join(missing)}; a Lichess puzzle file has "
                                f"{','.join(PUZZLE_COLUMNS)}"
                            )
                        continue
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                game = index
                index += 1
                try:
                    record = self._record(row, columns, line, game)
                except ValueError as exc:
                    text = ",".join(row)
                    self._skip(line, game, f"not a puzzle ({exc}): {text[:60]!r}")
                    continue
                if record is not None:
                    yield record, 1

    def _record(self, row: list[str], columns: tuple[str, ...], line: int, game: int) -> GameRecord | None:
        if sum(len(c) for c in row) > _MAX_ROW_CHARS:
            raise ValueError(f"a row of over {_MAX_ROW_CHARS} characters")
        if len(row) < len(_REQUIRED):
            raise ValueError(f"{len(row)} fields, a puzzle row has {len(columns)}")
        values = dict(zip(columns, (c.strip() for c in row), strict=False))
        for name in _REQUIRED:
            if not values.get(name):
                raise ValueError(f"no {name}")
        try:
            rating = int(values["Rating"])
        except ValueError:
            raise ValueError(f"Rating {values['Rating']!r} is not a whole number") from None
        themes = values.get("Themes", "").split()
        # filters before the chess checks: a rating window over a 4-million-row file stays fast
        if self.min_rating is not None and rating < self.min_rating:
            return None
        if self.max_rating is not None and rating > self.max_rating:
            return None
        if self.themes and not set(self.themes) <= set(themes):
            return None
        try:
            board = chess.Board(values["FEN"])
        except ValueError as exc:
            raise ValueError(f"bad FEN {values['FEN']!r}: {exc}") from None
        if not board.is_valid():
            raise ValueError(f"impossible position {values['FEN']!r} ({board.status()!r})")
        moves = values["Moves"].split()
        if len(moves) < 2:
            raise ValueError("Moves needs the opponent's move and at least one solution move")
        for i, uci in enumerate(moves):
            try:
                move = chess.Move.from_uci(uci)
            except ValueError:
                raise ValueError(f"move {i + 1} {uci!r} is not UCI") from None
            if not board.is_legal(move):
                raise ValueError(f"move {i + 1} {uci!r} is illegal") from None
            board.push(move)
        info = {k: v for k, v in values.items() if k not in ("FEN", "Moves")}
        info["_moves"] = " ".join(moves)
        return GameRecord(self.source, game, line, values["FEN"], False, list(moves), [], info)


def read_puzzles(
    path: str | Path,
    *,
    min_rating: int | None = None,
    max_rating: int | None = None,
    themes: Iterable[str] | str | None = None,
    every: int = 1,
    sample: int | float | None = None,
    seed: int = 0,
) -> PuzzleReader:
    """The puzzles of a Lichess puzzle CSV file (``.csv``, ``.csv.gz``, ``.csv.zst``), read as a stream.

    Parameters
    ----------
    path
        The file (the Lichess database ``lichess_db_puzzle.csv.zst`` or a part of it).
    min_rating, max_rating
        Keep puzzles with ``min_rating <= Rating <= max_rating`` (each bound optional).
    themes
        Keep puzzles tagged with every one of these themes (``"fork"`` or ``["mateIn2", "short"]``).
    every, sample, seed
        Keep every k-th row, and a seeded sample of them (as :func:`lczerolens.data.read_epd`).

    Returns
    -------
    PuzzleReader
        Iterate it for :class:`Puzzle` objects (re-iterable; each pass reads the file again). Rows that cannot be
        read are in its ``skipped`` (with line numbers) and ``n_skipped``; ``report()`` lists them.

    Raises
    ------
    DataError
        The file is missing or unreadable, its header lacks a needed column, or a filter value is wrong.

    Example
    -------
    >>> puzzles = read_puzzles("assets/puzzles/sample.csv", max_rating=2000)  # doctest: +SKIP
    >>> [(p.id, p.solution[0]) for p in puzzles][:1]  # doctest: +SKIP
    """
    return PuzzleReader(
        path, Selection(every, 0, None, sample, seed), min_rating=min_rating, max_rating=max_rating, themes=themes
    )
