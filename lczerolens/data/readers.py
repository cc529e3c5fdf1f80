"""Streaming readers of game collections: PGN (plain, gzip, zstandard) and EPD/FEN lists.

A reader is a re-iterable object: each ``for`` over it opens the file again and yields :class:`Position`
objects one by one, so memory stays flat whatever the file's size (one game is held at a time). A game or line
that cannot be read (an illegal or garbled move, a bad FEN, a chess variant lc0 does not play, a truncated
compressed stream) is skipped and recorded in :attr:`PositionReader.skipped` with its line number; it never
stops the iteration.

Selection (PGN): a position at ``ply`` (plies played before it; 0 is the game's start) is *eligible* when
``min_ply <= ply``, ``ply <= max_ply`` (when given) and ``ply % every == 0``. ``sample`` then keeps a seeded
random subset of the eligible positions:

- a float in ``(0, 1)``: each position is kept with that probability;
- an int ``n >= 1``: exactly ``min(n, eligible)`` positions (a uniform sample without replacement).

Both are *hash based*: a position's draw is a 64-bit hash of ``(seed, file name, game index, ply)``, and a
sample of ``n`` keeps the ``n`` smallest hashes (bottom-k sampling: one extra streaming pass finds the n-th
smallest hash with an ``n``-element heap, then the positions are yielded in file order). Chosen over reservoir
sampling because a position's fate depends only on where it is, not on what was read before it or on how the
stream is cut: every worker and every resumed run sees the same selection without sharing state, and the
output keeps the file's order (reservoir sampling would need to hold the sample and emit it only at the end).

Example
-------
>>> from lczerolens.data import read_pgn
>>> reader = read_pgn("games.pgn.zst", every=2, min_ply=10, sample=1000, seed=1)  # doctest: +SKIP
>>> for position in reader:  # doctest: +SKIP
...     position.board, position.played
>>> print(reader.report())  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import chess
import chess.pgn

from lczerolens.errors import DataError

__all__ = [
    "Position",
    "Skipped",
    "Selection",
    "GameRecord",
    "PositionReader",
    "read_pgn",
    "read_epd",
    "open_text",
    "source_kind",
]

#: Skipped games kept with their details (the count goes on past it): a file of garbage stays small in memory.
MAX_SKIPPED_KEPT = 1000

_PGN_SUFFIXES = (".pgn",)
_EPD_SUFFIXES = (".epd", ".fen", ".txt")


@dataclass
class Position:
    """One position of a collection.

    Attributes
    ----------
    board : LczeroBoard
        The position, with the game's moves up to it as history (what lc0 would be fed).
    source : str
        The file name.
    game : int
        0-based index of the game (PGN) or record (EPD) in the file, counting skipped ones.
    ply : int
        Plies played before this position (0 = the game's start; always 0 for EPD).
    played : chess.Move or None
        The move the game played next (``None`` at the game's end and for EPD).
    info : dict
        PGN headers, or EPD opcodes (values as text).
    """

    board: Any
    source: str
    game: int
    ply: int
    played: chess.Move | None
    info: dict[str, str]

    def __repr__(self) -> str:
        played = self.played.uci() if self.played is not None else None
        return (
            f"Position(source={self.source!r}, game={self.game}, ply={self.ply}, played={played!r}, "
            f"fen={self.board.fen()!r})"
        )


@dataclass(frozen=True)
class Skipped:
    """A game (PGN) or line (EPD) that was not read, and why."""

    source: str
    line: int
    game: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}"
        what = f" (game {self.game})" if self.game is not None else ""
        return f"{where}{what}: {self.reason}"


@dataclass(frozen=True)
class Selection:
    """Which positions of a collection to keep (see the module docstring for the exact rule)."""

    every: int = 1
    min_ply: int = 0
    max_ply: int | None = None
    sample: int | float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise DataError(f"every={self.every!r}: give a whole number >= 1")
        if isinstance(self.min_ply, bool) or not isinstance(self.min_ply, int) or self.min_ply < 0:
            raise DataError(f"min_ply={self.min_ply!r}: give a whole number >= 0")
        if self.max_ply is not None and (
            isinstance(self.max_ply, bool) or not isinstance(self.max_ply, int) or self.max_ply < self.min_ply
        ):
            raise DataError(f"max_ply={self.max_ply!r}: give a whole number >= min_ply ({self.min_ply}) or None")
        s = self.sample
        if s is not None:
            ok = (isinstance(s, int) and not isinstance(s, bool) and s >= 1) or (
                isinstance(s, float) and 0.0 < s < 1.0
            )
            if not ok:
                raise DataError(
                    f"sample={s!r}: give a number of positions (int >= 1) or a fraction of them (float in (0, 1))"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"seed={self.seed!r}: give a whole number")

    def eligible(self, ply: int) -> bool:
        if ply < self.min_ply or (self.max_ply is not None and ply > self.max_ply):
            return False
        return ply % self.every == 0

    def draw(self, source: str, game: int, ply: int) -> int:
        """The position's 64-bit random draw: a hash of (seed, file name, game, ply)."""
        key = f"{self.seed}\x00{source}\x00{game}\x00{ply}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")

    def as_dict(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "min_ply": self.min_ply,
            "max_ply": self.max_ply,
            "sample": self.sample,
            "seed": self.seed,
        }


@dataclass
class GameRecord:
    """A game as plain data (picklable, JSON-able): what a worker needs to rebuild its positions.

    ``moves`` holds the mainline in UCI up to the last selected ply (and the move played from it, if any);
    ``plies`` the selected plies, increasing.
    """

    source: str
    game: int
    line: int
    fen: str | None
    chess960: bool
    moves: list[str]
    plies: list[int]
    info: dict[str, str] = field(default_factory=dict)

    def positions(self) -> Iterator[Position]:
        """The selected positions, each a board with the game's history up to it."""
        from lczerolens.board import LczeroBoard

        board = LczeroBoard(self.fen, chess960=self.chess960) if self.fen else LczeroBoard(chess960=self.chess960)
        wanted = iter(self.plies)
        target = next(wanted, None)
        ply = 0
        while target is not None:
            if ply == target:
                played = chess.Move.from_uci(self.moves[ply]) if ply < len(self.moves) else None
                yield Position(board.copy(), self.source, self.game, ply, played, self.info)
                target = next(wanted, None)
                if target is None:
                    break
            board.push(chess.Move.from_uci(self.moves[ply]))
            ply += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "game": self.game,
            "line": self.line,
            "fen": self.fen,
            "chess960": self.chess960,
            "moves": " ".join(self.moves),
            "plies": self.plies,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GameRecord:
        return cls(
            source=data["source"],
            game=int(data["game"]),
            line=int(data["line"]),
            fen=data["fen"],
            chess960=bool(data["chess960"]),
            moves=data["moves"].split(),
            plies=[int(p) for p in data["plies"]],
            info=dict(data["info"]),
        )


# ----------------------------------------------------------------------------------------------------------------
# Files


def source_kind(path: str | Path) -> str:
    """``"pgn"``, ``"epd"`` or ``"puzzle"`` from the file name (``.pgn``; ``.epd``, ``.fen``, ``.txt``; ``.csv``: a
    Lichess puzzle file), each optionally ``.gz`` or ``.zst``."""
    name = Path(path).name.lower()
    for compressed in (".gz", ".zst"):
        if name.endswith(compressed):
            name = name[: -len(compressed)]
    if name.endswith(_PGN_SUFFIXES):
        return "pgn"
    if name.endswith(_EPD_SUFFIXES):
        return "epd"
    if name.endswith(".csv"):
        return "puzzle"
    raise DataError(
        f"cannot tell the format of {str(path)!r}: name a PGN file .pgn, .pgn.gz or .pgn.zst, or an EPD/FEN "
        "list .epd, .fen or .txt, or a Lichess puzzle file .csv (optionally .gz or .zst)"
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"no such file: {str(path)!r}; check the path")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder; pass a PGN or EPD file")
    if not os.access(path, os.R_OK):
        raise DataError(f"cannot read {str(path)!r} (permission denied); check its permissions")


_MAGIC = {b"\x1f\x8b": ("gzip", ".gz"), b"\x28\xb5\x2f\xfd": ("zstandard", ".zst")}


def _check_text(path: Path, kind: str) -> None:
    """Refuse, naming the file, a source that is empty or not text (e.g. a network file given as the games)."""
    what = "PGN games" if kind == "pgn" else "EPD/FEN positions"
    try:
        with open(path, "rb") as raw:
            head = raw.read(4)
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
    for magic, (name, suffix) in _MAGIC.items():
        if head.startswith(magic) and not path.name.lower().endswith(suffix):
            raise DataError(
                f"{str(path)!r} is {name}-compressed data, not {what} as text (is it a network file?); give a "
                f"{kind.upper()} file, or name a compressed one with {suffix} at the end"
            )
    text = ""
    try:
        with open_text(path) as handle:
            # The first non-blank line (and at most 4 KiB more) tells text from binary; a stream that breaks later
            # is the readers' business (the rest is skipped and reported).
            while not text.strip():
                line = handle.readline(1 << 12)
                if not line:
                    break
                text += line
    except _stream_errors() as exc:
        if not text.strip():
            raise DataError(f"cannot read {str(path)!r} ({type(exc).__name__}: {exc}); the file is damaged") from exc
    if "\x00" in text:
        raise DataError(f"{str(path)!r} is binary data, not {what} as text; check the file")
    if not text.strip():
        raise DataError(f"{str(path)!r} is empty: it holds no {what}")


def open_text(path: str | Path) -> TextIO:
    """Open a text file for streaming, decompressing ``.gz`` and ``.zst`` on the fly.

    Text is decoded as UTF-8 (a byte-order mark is dropped); undecodable bytes become U+FFFD rather than errors,
    since PGN files in the wild mix encodings in their headers.
    """
    path = Path(path)
    _check_readable(path)
    name = path.name.lower()
    try:
        raw: Any
        if name.endswith(".gz"):
            raw = gzip.open(path, "rb")
        elif name.endswith(".zst"):
            try:
                import zstandard
            except ImportError as exc:  # a dependency, but say what to do if it is missing
                raise DataError(f"reading {path.name} needs the zstandard package: pip install zstandard") from exc
            raw = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
        else:
            raw = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open {str(path)!r}: {exc}") from exc
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline=None)


class _LineCounter:
    """A text handle that counts the lines read through it (python-chess reads PGN with ``readline`` only)."""

    def __init__(self, handle: TextIO) -> None:
        self._handle = handle
        self.line = 0

    def readline(self) -> str:
        text = self._handle.readline()
        if text:
            self.line += 1
        return text


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, gzip.BadGzipFile]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


class _MainlineVisitor(chess.pgn.BaseVisitor["_MainlineVisitor"]):
    """Collects a game's headers and mainline moves, skipping variations (python-chess parses the SAN)."""

    def __init__(self, counter: _LineCounter) -> None:
        self.counter = counter
        self.line = 0
        self.headers: dict[str, str] = {}
        self.root: chess.Board | None = None
        self.moves: list[str] = []
        self.error: str | None = None
        self.termination: str | None = None

    def begin_game(self) -> None:
        self.line = self.counter.line

    def visit_header(self, tagname: str, tagvalue: str) -> None:
        self.headers[tagname] = tagvalue

    def visit_board(self, board: chess.Board) -> None:
        if self.root is None:
            self.root = board.copy(stack=False)

    def begin_variation(self) -> chess.pgn.SkipType:
        return chess.pgn.SKIP

    def visit_move(self, board: chess.Board, move: chess.Move) -> None:
        if self.error is None:
            self.moves.append(move.uci())

    def visit_result(self, result: str) -> None:
        self.termination = result

    def handle_error(self, error: Exception) -> None:
        if self.error is None:
            self.error = f"{error} (after {len(self.moves)} plies)" if self.moves else str(error)

    def result(self) -> _MainlineVisitor:
        return self

    def itself(self) -> _MainlineVisitor:
        """This visitor, as the factory ``chess.pgn.read_game`` asks for (one visitor per game)."""
        return self


# ----------------------------------------------------------------------------------------------------------------
# Readers


class PositionReader:
    """Positions of one PGN or EPD file, selected by a :class:`Selection`; iterate it (as many times as needed).

    Attributes
    ----------
    path : Path
    kind : str
        ``"pgn"`` or ``"epd"``.
    selection : Selection
    skipped : list of Skipped
        What the last complete or partial pass skipped (the first :data:`MAX_SKIPPED_KEPT`).
    n_skipped : int
        How many games or lines the last pass skipped.
    """

    def __init__(self, path: str | Path, kind: str, selection: Selection) -> None:
        self.path = Path(path)
        if kind not in ("pgn", "epd", "puzzle"):
            raise DataError(f"kind={kind!r}: use 'pgn', 'epd' or 'puzzle'")
        self.kind = kind
        self.selection = selection
        _check_readable(self.path)
        _check_text(self.path, kind)
        self.skipped: list[Skipped] = []
        self.n_skipped = 0
        self._threshold: int | None = None

    #: The ply of a record's one position for EPD (0) and puzzles (1: after the opponent's move).
    _record_ply = 0

    @property
    def source(self) -> str:
        return self.path.name

    def spec(self) -> dict[str, Any]:
        """What identifies this reader's output: format, file name and selection."""
        return {"kind": self.kind, "source": self.source, **self.selection.as_dict()}

    def __repr__(self) -> str:
        sel = ", ".join(f"{k}={v!r}" for k, v in self.selection.as_dict().items())
        return f"PositionReader({str(self.path)!r}, kind={self.kind!r}, {sel})"

    def __iter__(self) -> Iterator[Position]:
        for record in self.games():
            yield from record.positions()

    def count(self) -> int:
        """How many positions an iteration yields (one parsing pass, no boards built)."""
        return sum(len(record.plies) for record in self.games())

    def report(self) -> str:
        """The skipped games or lines of the last pass, one per line (empty when nothing was skipped)."""
        if not self.n_skipped:
            return ""
        what = {"pgn": "games", "epd": "lines", "puzzle": "rows"}[self.kind]
        lines = [f"skipped {self.n_skipped} {what} of {self.source}:"]
        lines += [f"  {s}" for s in self.skipped]
        if self.n_skipped > len(self.skipped):
            lines.append(f"  ... and {self.n_skipped - len(self.skipped)} more")
        return "\n".join(lines)

    # -- passes ------------------------------------------------------------------------------------------------

    def _skip(self, line: int, game: int | None, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < MAX_SKIPPED_KEPT:
            self.skipped.append(Skipped(self.source, line, game, reason))

    def games(self) -> Iterator[GameRecord]:
        """Games (PGN) or records (EPD) with at least one selected position, as :class:`GameRecord`."""
        sel = self.selection
        threshold: int | None = None
        if isinstance(sel.sample, int):
            threshold = self._bottom_k_threshold()
        elif isinstance(sel.sample, float):
            threshold = int(sel.sample * 2**64)
        for record, n_plies in self._raw_games():
            plies = [p for p in range(n_plies + 1) if sel.eligible(p if self.kind == "pgn" else record.game)]
            if self.kind != "pgn":
                # one position per record: an EPD line's, or a puzzle's after the opponent's move (ply 1)
                plies = [self._record_ply] if plies else []
            if threshold is not None:
                if isinstance(sel.sample, int):
                    plies = [p for p in plies if sel.draw(record.source, record.game, p) <= threshold]
                else:
                    plies = [p for p in plies if sel.draw(record.source, record.game, p) < threshold]
            if plies:
                record.plies = plies
                del record.moves[plies[-1] + 1 :]
                yield record

    def _bottom_k_threshold(self) -> int:
        """The ``sample``-th smallest draw among eligible positions (all of them when there are fewer)."""
        if self._threshold is not None:
            return self._threshold
        k = int(self.selection.sample)  # type: ignore[arg-type]
        heap: list[int] = []  # negated draws: a max-heap of the k smallest
        sel = self.selection
        for record, n_plies in self._raw_games():
            for p in range(n_plies + 1) if self.kind == "pgn" else [self._record_ply]:
                if not sel.eligible(p if self.kind == "pgn" else record.game):
                    continue
                d = sel.draw(record.source, record.game, p)
                if len(heap) < k:
                    heapq.heappush(heap, -d)
                elif d < -heap[0]:
                    heapq.heapreplace(heap, -d)
        self._threshold = -heap[0] if len(heap) == k else 2**64
        return self._threshold

    def _raw_games(self) -> Iterator[tuple[GameRecord, int]]:
        self.skipped = []
        self.n_skipped = 0
        if self.kind == "pgn":
            yield from self._pgn_games()
        else:
            yield from self._epd_records()

    def _pgn_games(self) -> Iterator[tuple[GameRecord, int]]:
        stream_errors = _stream_errors()
        with open_text(self.path) as handle:
            counter = _LineCounter(handle)
            index = 0
            while True:
                visitor = _MainlineVisitor(counter)
                try:
                    # python-chess only calls readline(): the counting wrapper stands in for a text handle.
                    game = chess.pgn.read_game(cast(TextIO, counter), Visitor=visitor.itself)
                except stream_errors as exc:
                    self._skip(counter.line, index, f"the file ends or breaks here ({type(exc).__name__}: {exc}); "
                               "the rest of the file is not read")
                    return
                if game is None:
                    return
                record = self._pgn_record(visitor, index)
                index += 1
                if record is not None:
                    yield record, len(record.moves)

    def _pgn_record(self, visitor: _MainlineVisitor, index: int) -> GameRecord | None:
        if visitor.error is not None:
            self._skip(visitor.line, index, visitor.error)
            return None
        root = visitor.root
        if root is None:
            self._skip(visitor.line, index, "no game found")
            return None
        if not visitor.headers and not visitor.moves:
            self._skip(visitor.line, index, "not a PGN game (no headers, no moves)")
            return None
        if visitor.termination is None:
            # PGN ends every movetext with 1-0, 0-1, 1/2-1/2 or *: a game without it was cut off.
            self._skip(visitor.line, index, f"no result marker after {len(visitor.moves)} plies: the game is cut off")
            return None
        if type(root) is not chess.Board:
            self._skip(visitor.line, index, f"variant {visitor.headers.get('Variant', '?')!r}: lc0 plays only chess")
            return None
        if root.chess960:
            # python-chess reads [Variant "chess960"] / "fischerandom" as chess with Chess960 castling; the readers
            # skip it like every other variant (not checked against lc0's own Chess960 encoding).
            self._skip(visitor.line, index, f"variant {visitor.headers.get('Variant', 'chess960')!r} (Chess960): "
                       "lczerolens explains standard chess only")
            return None
        fen = None if root.fen() == chess.STARTING_FEN and not root.chess960 else root.fen(en_passant="fen")
        return GameRecord(self.source, index, visitor.line, fen, root.chess960, visitor.moves, [], visitor.headers)

    def _epd_records(self) -> Iterator[tuple[GameRecord, int]]:
        stream_errors = _stream_errors()
        with open_text(self.path) as handle:
            index = 0
            line_no = 0
            while True:
                try:
                    text = handle.readline()
                except stream_errors as exc:
                    self._skip(line_no + 1, None, f"the file ends or breaks here ({type(exc).__name__}: {exc})")
                    return
                if not text:
                    return
                line_no += 1
                text = text.strip()
                if not text or text.startswith(("#", "%", ";")):
                    continue
                game = index
                index += 1
                try:
                    fen, info = _parse_epd_line(text)
                except ValueError as exc:
                    self._skip(line_no, game, f"not an EPD or FEN line ({exc}): {text[:60]!r}")
                    continue
                yield GameRecord(self.source, game, line_no, fen, False, [], [], info), 0


def _parse_epd_line(text: str) -> tuple[str, dict[str, str]]:
    """A line as (full FEN, opcodes): an EPD record, or a plain FEN (with or without move counters)."""
    fields = text.split()
    if len(fields) == 6 and fields[4].isdigit() and fields[5].isdigit():
        board = chess.Board(text)
        info: dict[str, str] = {}
    else:
        board = chess.Board()
        ops = board.set_epd(text)
        info = {k: _op_text(board, v) for k, v in ops.items()}
    if not board.is_valid():
        raise ValueError(f"impossible position ({board.status()!r})")
    return board.fen(en_passant="fen"), info


def _op_text(board: chess.Board, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, chess.Move):
        return value.uci()
    if isinstance(value, list):
        return " ".join(v.uci() if isinstance(v, chess.Move) else str(v) for v in value)
    return str(value)


def read_pgn(
    path: str | Path,
    *,
    every: int = 1,
    min_ply: int = 0,
    max_ply: int | None = None,
    sample: int | float | None = None,
    seed: int = 0,
) -> PositionReader:
    """The positions of a PGN file (``.pgn``, ``.pgn.gz``, ``.pgn.zst``), read as a stream.

    Only mainlines are read (variations are skipped); each position's board holds the game's moves up to it.
    A malformed game is skipped and listed in the reader's ``skipped``; see the module docstring for the
    selection.

    Parameters
    ----------
    path
        The file.
    every, min_ply, max_ply
        Keep plies ``min_ply <= ply <= max_ply`` with ``ply % every == 0`` (ply 0 = the game's start).
    sample, seed
        A seeded sample of those: a fraction (float in (0, 1)) or a number of positions (int).

    Returns
    -------
    PositionReader
        Iterate it for :class:`Position` objects.

    Raises
    ------
    DataError
        The file is missing or unreadable, or a selection value is out of range.

    Example
    -------
    >>> reader = read_pgn("assets/cache/chess-data/pgn/kasparov-deep-blue-1997.pgn", every=10)  # doctest: +SKIP
    >>> [(p.game, p.ply, p.played) for p in reader][:2]  # doctest: +SKIP
    [(0, 0, Move.from_uci('g1f3')), (0, 10, Move.from_uci('e1g1'))]
    """
    return PositionReader(path, "pgn", Selection(every, min_ply, max_ply, sample, seed))


def read_epd(
    path: str | Path, *, every: int = 1, sample: int | float | None = None, seed: int = 0
) -> PositionReader:
    """The positions of an EPD file or FEN list (one per line; ``#`` starts a comment line), read as a stream.

    Each position has ``ply == 0`` and no history (an EPD has none) and ``played = None``; ``info`` holds the
    EPD opcodes as text. ``every`` keeps every k-th record; ``sample``/``seed`` as in :func:`read_pgn`.
    A line that is neither a legal EPD nor a FEN is skipped and listed in the reader's ``skipped``.

    Example
    -------
    >>> positions = list(read_epd("assets/cache/chess-data/endgame.epd"))  # doctest: +SKIP
    """
    return PositionReader(path, "epd", Selection(every, 0, None, sample, seed))
