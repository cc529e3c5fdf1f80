"""The explorer's core: positions, lenses and targets in, plain JSON-able views out.

One :class:`ExplorerSession` serves the notebook widget, the local web page and the HTML report: the front end
(``static/explorer.js``) only draws what :meth:`ExplorerSession.view` returns.

A shown position is ``(index, moves)``: the source's position number ``index`` followed by ``moves`` (legal
moves in UCI played from there in the explorer). Its ply (the page's ``data-ply``) is ``index + len(moves)``.
"""

from __future__ import annotations

import atexit
import functools
import io
import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import chess
import chess.pgn
import chess.svg

from lczerolens.errors import InvalidBoardError, InvalidMoveError, InvalidOptionError

#: Head targets offered besides the moves (the ``select[name="target"]`` options before the legal moves).
HEAD_TARGETS = ("top", "value", "win", "draw", "loss")
#: Attribution lenses other than the LRP presets, by the name the explorer shows.
OTHER_LENSES = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion")
#: The default lens's name: ``LrpLens()``.
DEFAULT_LENS = "lrp"

# Sessions whose prefetch thread may be running: stopped at interpreter exit (a daemon thread killed inside a
# torch call aborts the process).
_LIVE: weakref.WeakSet[ExplorerSession] = weakref.WeakSet()


def _close_all() -> None:
    for session in list(_LIVE):
        session.close()


atexit.register(_close_all)


def _round(x: float) -> float:
    """Seven significant digits (float32 holds about as many): views stay small and JSON stays exact enough."""
    if not math.isfinite(x):
        return x
    return float(f"{x:.7g}")


def load_source(source: Any = None, *, game: int = 0) -> tuple[list[Any], list[str], str]:
    """The positions of ``source``, the moves joining them (UCI, ``""`` where none does) and a title.

    ``source``: ``None`` (the starting position), a ``chess.Board``, a FEN, a PGN file path or PGN text (game
    number ``game``, 0-based; one position per ply, each with the game's moves as history), or a sequence of
    boards or FENs.
    """
    from lczerolens.board import LczeroBoard

    def board_of(item: Any) -> LczeroBoard:
        if isinstance(item, LczeroBoard):
            return item.copy()
        if isinstance(item, chess.Board):
            return LczeroBoard.from_board(item)
        if isinstance(item, str):
            try:
                return LczeroBoard(item.strip())
            except ValueError as exc:
                raise InvalidBoardError(f"not a FEN: {item!r} ({exc})") from exc
        raise InvalidBoardError(f"cannot show {type(item).__name__}; pass a board, a FEN, a PGN or a list of boards")

    if source is None:
        return [LczeroBoard()], [], "starting position"
    if isinstance(source, (chess.Board, chess.BaseBoard)) and not isinstance(source, chess.Board):
        source = chess.Board(source.board_fen())
    if isinstance(source, chess.Board):
        return [board_of(source)], [], source.fen()
    if isinstance(source, (str, Path)):
        text = str(source)
        is_path = isinstance(source, Path) or (
            "\n" not in text and len(text) < 4096 and text.lower().endswith((".pgn",)) and Path(text).exists()
        )
        if is_path:
            return _load_pgn(Path(text).read_text(encoding="utf-8", errors="replace"), game, Path(text).name)
        if "[" in text or "1." in text:
            return _load_pgn(text, game, "PGN")
        return [board_of(text)], [], text.strip()
    if isinstance(source, Sequence):
        boards = [board_of(item) for item in source]
        if not boards:
            raise InvalidBoardError("got an empty list of positions; pass at least one")
        return boards, [""] * (len(boards) - 1), f"{len(boards)} positions"
    raise InvalidBoardError(f"cannot show {type(source).__name__}; pass a board, a FEN, a PGN or a list of boards")


def _load_pgn(text: str, game: int, name: str) -> tuple[list[Any], list[str], str]:
    from lczerolens.board import LczeroBoard

    stream = io.StringIO(text)
    parsed = None
    for _ in range(game + 1):
        parsed = chess.pgn.read_game(stream)
        if parsed is None:
            raise InvalidOptionError(f"{name} has no game number {game} (0-based); pick a smaller one")
    assert parsed is not None
    board = LczeroBoard.from_board(parsed.board())
    boards = [board.copy()]
    moves = []
    for move in parsed.mainline_moves():
        board.push(move)
        boards.append(board.copy())
        moves.append(move.uci())
    headers = parsed.headers
    title = f"{headers.get('White', '?')} - {headers.get('Black', '?')}"
    if headers.get("Event", "?") not in ("?", ""):
        title += f", {headers['Event']}"
    return boards, moves, title


class ExplorerSession:
    """Computes what the explorer shows: one position's map, colours, evaluation and moves, as a dict.

    Parameters
    ----------
    model : LczeroModel
        The network. Lenses never change it.
    source : optional
        What to explore (see :func:`load_source`).
    lens : str or lens, optional
        The lens shown first: a name from :meth:`lens_names` or an attribution lens object (then named
        ``"custom"``). Default ``"lrp"`` (``LrpLens()``).
    target : str, optional
        The target shown first: ``"top"`` (default), ``"value"``, ``"win"``, ``"draw"``, ``"loss"`` or a move.
    game : int
        For a PGN source, which game (0-based).
    cache_size : int
        How many views to keep.
    prefetch : bool
        Compute the first view in a background thread from the start, and after answering a view the
        neighbouring plies (and the other of top/value), so stepping through a game finds them ready.
        ``False``: compute only what is asked.

    Example
    -------
    >>> session = ExplorerSession(model, "startpos")  # doctest: +SKIP
    >>> view = session.view(0, (), "top", "lrp")  # doctest: +SKIP
    >>> len(view["values"]), view["target"]["move"]  # doctest: +SKIP
    (64, 'e2e4')
    """

    def __init__(
        self,
        model: Any,
        source: Any = None,
        *,
        lens: Any = None,
        target: str | None = None,
        game: int = 0,
        cache_size: int = 512,
        prefetch: bool = True,
    ) -> None:
        self.model = model
        self.boards, self.line, self.title = load_source(source, game=game)
        self._custom = None if lens is None or isinstance(lens, str) else lens
        self.default_lens = "custom" if self._custom is not None else (lens or DEFAULT_LENS)
        self.default_target = target or "top"
        self._lenses: dict[str, Any] = {}
        self._cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        # One computation at a time: concurrent requests (the web server's threads) get the same answers as
        # sequential ones, and a lens's cached rule tree is never used by two threads at once.
        self._lock = threading.RLock()
        self._evals: list[dict[str, Any]] | None = None
        self._extras: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._attention: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._prefetch = prefetch
        self._wanted: list[Callable[[], Any]] | None = None
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._busy = False
        self.lens(self.default_lens)  # a bad name fails here, not in the browser
        if self.default_target not in HEAD_TARGETS:
            self.position(0, ()).parse_uci(self.default_target)  # raises for a move not legal at the start
        if prefetch:
            # The first view (and the lens's first use, which builds its rule tree) starts while the page loads.
            self._queue([functools.partial(self._fill, (0, ()), self.default_target, self.default_lens)])

    # ---- lenses ------------------------------------------------------------------------------------------
    def lens_names(self) -> list[str]:
        """The lenses offered: ``"lrp"`` (``LrpLens()``), the LRP presets that fit the network, the others."""
        from lczerolens.lenses import PRESETS, network_family

        family = network_family(self.model)
        presets = [
            name
            for name in PRESETS
            if not (family == "residual" and name.startswith("attention"))
            and not (family == "attention" and name.startswith("residual"))
        ]
        names = ([DEFAULT_LENS] if self._custom is None else ["custom", DEFAULT_LENS]) + presets + list(OTHER_LENSES)
        return names

    def lens(self, name: str) -> Any:
        """The lens object behind ``name`` (built once)."""
        if name in self._lenses:
            return self._lenses[name]
        from lczerolens.lenses import PRESETS, GradientLens, LrpLens, OcclusionLens

        if name == "custom" and self._custom is not None:
            lens = self._custom
        elif name == DEFAULT_LENS:
            lens = LrpLens()
        elif name in PRESETS:
            lens = LrpLens(**PRESETS[name])
        elif name == "occlusion":
            lens = OcclusionLens()
        elif name in OTHER_LENSES:
            lens = GradientLens(name)
        else:
            raise InvalidOptionError(f"unknown lens {name!r}; use one of {', '.join(self.lens_names())}")
        self._lenses[name] = lens
        return lens

    # ---- positions ---------------------------------------------------------------------------------------
    def position(self, index: int, moves: Sequence[str] = ()) -> Any:
        """The board at source position ``index`` after ``moves`` (UCI), with its history.

        Raises ``InvalidBoardError`` for an index out of range and ``InvalidMoveError`` for an illegal move.
        """
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.boards):
            raise InvalidBoardError(f"position {index!r} does not exist; the source has 0..{len(self.boards) - 1}")
        board = self.boards[index].copy()
        for uci in moves:
            try:
                move = chess.Move.from_uci(str(uci))
            except ValueError as exc:
                raise InvalidMoveError(f"{uci!r} is not a move in UCI notation (e.g. e2e4, e7e8q)") from exc
            if move not in board.legal_moves:
                raise InvalidMoveError(f"{uci} is not legal in {board.fen()}")
            board.push(move)
        return board

    def meta(self) -> dict[str, Any]:
        """What does not change with the shown position: title, the source's moves, the lenses, values per ply."""

        sans = []
        for i, uci in enumerate(self.line):
            sans.append(self.boards[i].san(chess.Move.from_uci(uci)) if uci else "")
        return {
            "title": self.title,
            "count": len(self.boards),
            "line": [{"uci": u, "san": s} for u, s in zip(self.line, sans, strict=True)],
            "fens": [b.fen() for b in self.boards],
            "lenses": self.lens_names(),
            "layers": self.layer_names(),
            "attention_layers": self.attention_layers(),
            "targets": list(HEAD_TARGETS),
            "lens": self.default_lens,
            "target": self.default_target,
            "values": [e["value"] for e in self.evaluations()],
            "pieces": {p: chess.svg.piece(chess.Piece.from_symbol(p), size=45) for p in "PNBRQKpnbrqk"},
        }

    def evaluations(self) -> list[dict[str, Any]]:
        """The network's evaluation of every source position (one batched pass, computed once)."""
        with self._lock:
            if self._evals is None:
                evals = self.model.evaluate(self.boards, top_k=5)
                self._evals = [self._evaluation(b, e) for b, e in zip(self.boards, evals, strict=True)]
            return self._evals

    @staticmethod
    def _evaluation(board: Any, ev: Any) -> dict[str, Any]:
        return {
            "value": _round(ev.value),
            "wdl": None if ev.wdl is None else [_round(p) for p in ev.wdl],
            "mlh": None if ev.mlh is None else _round(ev.mlh),
            "top": [
                {"uci": m.move.uci(), "san": board.san(m.move), "p": _round(m.probability)} for m in ev.moves
            ],
        }

    # ---- views -------------------------------------------------------------------------------------------
    def _check(self, target: str, lens: str) -> None:
        if lens not in self.lens_names():
            raise InvalidOptionError(f"unknown lens {lens!r}; use one of {', '.join(self.lens_names())}")
        if not isinstance(target, str) or not target:
            raise InvalidOptionError("target must be top, value, win, draw, loss or a legal move in UCI")

    def view(
        self,
        index: int,
        moves: Sequence[str] = (),
        target: str = "top",
        lens: str = DEFAULT_LENS,
        *,
        layer: str | None = None,
        channel: int | None = None,
        attention: str | None = None,
        query: str | None = None,
    ) -> dict[str, Any]:
        """Everything the explorer shows for one position, target and lens, as a JSON-able dict.

        Keys: ``index``, ``moves``, ``ply``, ``fen``, ``turn``, ``lastmove``, ``legal`` (``[{uci, san}]``),
        ``target`` (``{name, move, label, value}``: the explained output's value), ``lens``, ``method``,
        ``values`` (64 floats by python-chess square, board orientation: the lens's ``squares``), ``colors``
        (64 ``#rrggbb``, as :func:`~lczerolens.visual.render_heatmap` colours them), ``vmin``, ``vmax``,
        ``stops`` (the colour bar), ``conservation``, ``evaluation`` (``{value, wdl, mlh, top}``).
        With ``layer`` also ``layer`` (:meth:`layer_view`), with ``attention`` also ``attention``
        (:meth:`attention_view`).
        """
        out = self.views([(index, tuple(moves))], target, lens)[0]
        if layer:
            from lczerolens.lenses import LrpLens

            if layer not in self.layer_names():
                names = ", ".join(self.layer_names()) or "none"
                raise InvalidOptionError(f"unknown layer {layer!r}; use one of {names}")
            if isinstance(self.lens(lens), LrpLens):
                out["layer"] = self.layer_view(index, moves, target, lens, layer, channel)
            else:  # the rest of the view stands; the layer panel says why it is empty
                error = f"the layer view needs an LRP lens (lrp or a preset), not {lens}"
                out["layer"] = {"layer": layer, "error": error}
        if attention:
            out["attention"] = self.attention_view(index, moves, attention, query)
        self.prefetch(index, moves, target, lens, layer=layer, channel=channel)
        return out

    def views(self, states: Sequence[tuple[int, Sequence[str]]], target: str, lens: str) -> list[dict[str, Any]]:
        """:meth:`view` for several positions with one target and lens: the missing ones in one batched call."""
        self._check(target, lens)
        for i, m in states:
            self.position(i, tuple(m))  # a bad position or move fails before any work
        keys = [(i, tuple(m), target, lens) for i, m in states]
        with self._lock:
            missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
            if missing:
                todo = [self.position(k[0], k[1]) for k in missing]
                computed = self._compute(todo, [k[0] if not k[1] else -1 for k in missing], target, lens)
                for key, out in zip(missing, computed, strict=True):
                    out["index"], out["moves"] = key[0], list(key[1])
                    out["ply"] = key[0] + len(key[1])
                    self._cache[key] = out
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            for key in keys:
                self._cache.move_to_end(key)
            return [dict(self._cache[k]) for k in keys]

    def cached(self, index: int, moves: Sequence[str] = (), target: str = "top", lens: str = DEFAULT_LENS) -> bool:
        """Whether :meth:`view` would answer from the cache (no computation)."""
        return (index, tuple(moves), target, lens) in self._cache

    # ---- prefetching ---------------------------------------------------------------------------------------
    def prefetch(
        self,
        index: int,
        moves: Sequence[str] = (),
        target: str = "top",
        lens: str = DEFAULT_LENS,
        *,
        layer: str | None = None,
        channel: int | None = None,
    ) -> None:
        """Queue, for a background thread, the views a user is likely to ask for after this one.

        Those are the next plies and the previous one along the source (or the position before the last played
        move) with the same target and lens, with ``layer`` the layer view of the next and the previous one,
        then this position with the other of ``top`` and ``value``; one position per call (so every view
        equals a batch-1 call). A newer call replaces what is still queued. Does nothing when the session was
        made with ``prefetch=False``.
        """
        if not self._prefetch:
            return
        moves = tuple(moves)
        if moves:
            near = [(index, moves[:-1])]
        else:
            near = [(i, ()) for i in (index + 1, index + 2, index - 1, index + 3) if 0 <= i < len(self.boards)]
        tasks: list[Callable[[], Any]] = []
        if target in HEAD_TARGETS:  # a move target need not be legal in the neighbours
            tasks += [functools.partial(self._fill, state, target, lens) for state in near]
            if layer:
                steps = [s for s in near if s == (index + 1, ()) or s == (index - 1, ()) or bool(moves)]
                tasks += [functools.partial(self.layer_view, i, m, target, lens, layer, channel) for i, m in steps]
        other = {"top": "value", "value": "top"}.get(target)
        if other is not None:
            tasks.append(functools.partial(self._fill, (index, moves), other, lens))
        self._queue(tasks)

    def _fill(self, state: tuple[int, tuple[str, ...]], target: str, lens: str) -> None:
        if (state[0], state[1], target, lens) not in self._cache:
            self.views([state], target, lens)

    def _queue(self, tasks: list[Callable[[], Any]]) -> None:
        with self._wake:
            if self._closed:
                return
            self._wanted = tasks
            _LIVE.add(self)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._prefetch_loop, name="lczerolens-prefetch", daemon=True)
                self._worker.start()
            self._wake.notify_all()

    def _prefetch_loop(self) -> None:
        while True:
            with self._wake:
                while not self._wanted:
                    if self._closed or not self._wake.wait(timeout=30):
                        self._worker = None  # idle: the thread ends; the next prefetch starts another
                        return
                # One position per task: a view's numbers are those of a batch-1 call whatever was asked before
                # (batched float32 sums can differ in the last digits), and a request waits for one position at
                # most. A newer prefetch replaces the list, so its tasks come next.
                task = self._wanted.pop(0)
                self._busy = True
            try:
                task()
            except Exception:  # noqa: BLE001 (a guess that fails costs nothing; the asked view reports errors)
                pass
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def close(self) -> None:
        """Stop prefetching (waits for a computation in flight); views are still computed when asked."""
        with self._wake:
            self._closed = True
            self._wanted = None
            worker = self._worker
            self._wake.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=60)

    def wait_prefetch(self, timeout: float = 60.0) -> None:
        """Block until the background thread has nothing queued and no computation in flight (tests, benches)."""
        with self._wake:
            self._wake.wait_for(lambda: not self._wanted and not self._busy, timeout=timeout)

    def _targets(self, boards: Sequence[Any], target: str) -> Any:
        if target == "top":
            return None
        if target in HEAD_TARGETS:
            return target
        moves = []
        for board in boards:
            try:
                move = chess.Move.from_uci(target)
            except ValueError as exc:
                raise InvalidMoveError(f"{target!r} is neither a head target nor a move in UCI") from exc
            if move not in board.legal_moves:
                raise InvalidMoveError(f"{target} is not legal in {board.fen()}; pick a legal move or top")
            moves.append(move)
        return moves

    def _evaluations_of(self, boards: list[Any], indices: list[int]) -> list[dict[str, Any]]:
        """Evaluations: the source's from the cache of :meth:`evaluations`, the others in one batched pass."""
        out: list[dict[str, Any] | None] = [None] * len(boards)
        if any(i >= 0 for i in indices):
            source = self.evaluations()
            for k, i in enumerate(indices):
                if i >= 0:
                    out[k] = source[i]
        rest = [k for k, i in enumerate(indices) if i < 0]
        if rest:
            evals = self.model.evaluate([boards[k] for k in rest], top_k=5)
            for k, ev in zip(rest, evals, strict=True):
                out[k] = self._evaluation(boards[k], ev)
        return [e for e in out if e is not None]

    def _compute(self, boards: list[Any], indices: list[int], target: str, lens: str) -> list[dict[str, Any]]:
        from lczerolens.visual import square_colors

        rel = self.lens(lens).relevance(self.model, boards, self._targets(boards, target))
        evals = self._evaluations_of(boards, indices)
        conservation = rel.conservation
        squares = rel.squares.detach().float().reshape(len(boards), 64).tolist()
        out = []
        for i, board in enumerate(boards):
            values = [float(v) for v in squares[i]]
            colors = square_colors(values)
            move = None
            if rel.policy_indices is not None:
                move = board.decode_move(int(rel.policy_indices[i]), self.model.input_format)
            label = f"{board.san(move)} ({move.uci()})" if move is not None else target
            if target == "top" and move is not None:
                label = f"top move {label}"
            out.append(
                {
                    "fen": board.fen(),
                    "turn": "white" if board.turn == chess.WHITE else "black",
                    "lastmove": board.peek().uci() if board.move_stack else None,
                    "check": board.king(board.turn) if board.is_check() else None,
                    "legal": [{"uci": m.uci(), "san": board.san(m)} for m in board.legal_moves],
                    "target": {
                        "name": target,
                        "move": None if move is None else move.uci(),
                        "label": label,
                        "value": _round(float(rel.target[i])),
                    },
                    "lens": lens,
                    "method": rel.method,
                    "values": [_round(v) for v in values],
                    "colors": colors["colors"],
                    "vmin": _round(colors["vmin"]),
                    "vmax": _round(colors["vmax"]),
                    "stops": colors["stops"],
                    "conservation": None
                    if not math.isfinite(float(conservation[i]))
                    else _round(float(conservation[i])),
                    "evaluation": evals[i],
                }
            )
        return out

    # ---- layers: latent relevance and CRP ------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """The layers the layer view offers: each residual block's output (and the input convolution's), or each
        encoder layer's output on attention-body nets. Empty when the network has neither."""
        network = getattr(self.model, "network", self.model)
        names = [name for name, _ in network.named_modules()] if hasattr(network, "named_modules") else []
        residual = [n for n in names if n == "inputconv/relu" or re.fullmatch(r"block\d+/conv2/relu", n)]
        if residual:
            return residual
        return [n for n in names if re.fullmatch(r"encoder\d+/ln2", n)]

    def _lrp_lens(self, lens: str) -> Any:
        from lczerolens.lenses import LrpLens

        obj = self.lens(lens)
        if not isinstance(obj, LrpLens):
            raise InvalidOptionError(
                f"the layer view needs an LRP lens (lrp or a preset), not {lens!r}; pick one in the lens menu"
            )
        return obj

    def _square_map(self, board: Any, tensor: Any) -> list[float]:
        """A module's per-square map (``[C, 8, 8]``, ``[64, E]`` or ``[64 * 1, E]``), summed over channels, in
        board orientation, by python-chess square."""
        import torch

        t = tensor.detach().float()
        if t.ndim == 3 and tuple(t.shape[1:]) == (8, 8):
            grid = t.sum(dim=0)
        else:
            grid = t.reshape(64, -1).sum(dim=1).reshape(8, 8)
        grid = board.network_to_board(grid.to(torch.float64), self.model.input_format)
        return [float(v) for v in grid.reshape(64).tolist()]

    def layer_view(
        self,
        index: int,
        moves: Sequence[str],
        target: str,
        lens: str,
        layer: str,
        channel: int | None = None,
        *,
        top_k: int = 8,
    ) -> dict[str, Any]:
        """The layer view: latent relevance of module ``layer`` and CRP for one of its channels.

        Returns ``{layer, latent, channels, channel, crp}``: ``latent`` is ``rel.layers[layer]`` summed over
        channels per square (board orientation; ``{values, colors, vmin, vmax, stops, sum}``); ``channels`` the
        ``top_k`` channels by :func:`~lczerolens.concepts.channel_relevance` (``[{channel, relevance}]``, highest
        first); ``crp`` the input map of ``LrpLens.relevance(..., condition={layer: [channel]})`` for ``channel``
        (default: the top one), same keys as ``latent`` plus ``target`` (the explained value).
        """
        from lczerolens.concepts import channel_relevance

        self._check(target, lens)
        if layer not in self.layer_names():
            raise InvalidOptionError(f"unknown layer {layer!r}; use one of {', '.join(self.layer_names()) or 'none'}")
        obj = self._lrp_lens(lens)
        board = self.position(index, tuple(moves))
        key = (index, tuple(moves), target, lens, layer)
        with self._lock:
            base = self._extras.get(key)
            if base is None:
                rel = obj.relevance(self.model, [board], self._targets([board], target), record=(layer,))
                per_channel = channel_relevance(rel, layer)[0].detach().float()
                order = per_channel.argsort(descending=True).tolist()
                base = {
                    "layer": layer,
                    "latent": _map_dict(self._square_map(board, _per_board(rel.layers[layer], 1)[0])),
                    "all_channels": [_round(float(v)) for v in per_channel.tolist()],
                    "order": order,
                }
                self._remember(self._extras, key, base)
            count = len(base["all_channels"])
            if channel is None:
                channel = base["order"][0]
            if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < count:
                raise InvalidOptionError(f"channel {channel!r} does not exist at {layer}; pick 0..{count - 1}")
            ckey = key + (channel,)
            crp = self._extras.get(ckey)
            if crp is None:
                rel = obj.relevance(
                    self.model, [board], self._targets([board], target), condition={layer: [channel]}
                )
                crp = _map_dict([float(v) for v in rel.squares[0].detach().double().reshape(64).tolist()])
                crp["target"] = _round(float(rel.target[0]))
                self._remember(self._extras, ckey, crp)
        return {
            "layer": layer,
            "latent": base["latent"],
            "channels": [{"channel": c, "relevance": base["all_channels"][c]} for c in base["order"][:top_k]],
            "count": count,
            "channel": channel,
            "crp": crp,
        }

    def layer_summaries(
        self, indices: Sequence[int], target: str, lens: str, layer: str, *, channels: int = 3
    ) -> list[dict[str, Any]]:
        """The layer view of source positions ``indices`` with the CRP maps of each one's ``channels`` top channels.

        One lens call with ``record`` for all positions, then one CRP call per distinct channel among the picks
        (on the positions that picked it). Each dict is :meth:`layer_view`'s without ``channel``/``crp``, plus ``crps``
        (channel -> map, the ``channels`` highest) and ``order`` (those channels, highest first). For the report.
        """
        from lczerolens.concepts import channel_relevance

        self._check(target, lens)
        if layer not in self.layer_names():
            raise InvalidOptionError(f"unknown layer {layer!r}; use one of {', '.join(self.layer_names()) or 'none'}")
        obj = self._lrp_lens(lens)
        boards = [self.position(i) for i in indices]
        with self._lock:
            rel = obj.relevance(self.model, boards, self._targets(boards, target), record=(layer,))
            per_channel = channel_relevance(rel, layer).detach().float()
            picks = [per_channel[i].argsort(descending=True)[: max(channels, 1)].tolist() for i in range(len(boards))]
            # CRP conditions apply to every board of a call, and the top channels repeat from ply to ply: one call
            # per channel on the boards that need it costs less than one call per board.
            wanted: dict[int, list[int]] = {}
            for i, picked in enumerate(picks):
                for c in picked:
                    wanted.setdefault(c, []).append(i)
            crps: list[dict[str, Any]] = [{} for _ in boards]
            for c, rows in wanted.items():
                part = [boards[i] for i in rows]
                crp = obj.relevance(self.model, part, self._targets(part, target), condition={layer: [c]})
                maps = crp.squares.detach().double().reshape(len(rows), 64).tolist()
                for k, i in enumerate(rows):
                    crps[i][str(c)] = _map_dict([float(v) for v in maps[k]])
                    crps[i][str(c)]["target"] = _round(float(crp.target[k]))
            out = []
            for i, board in enumerate(boards):
                out.append(
                    {
                        "layer": layer,
                        "latent": _map_dict(self._square_map(board, _per_board(rel.layers[layer], len(boards))[i])),
                        "channels": [{"channel": c, "relevance": _round(float(per_channel[i, c]))} for c in picks[i]],
                        "count": int(per_channel.shape[1]),
                        "order": picks[i],
                        "crps": crps[i],
                    }
                )
        return out

    def _remember(self, store: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
        store[key] = value
        while len(store) > self._cache_size:
            store.popitem(last=False)

    # ---- attention -----------------------------------------------------------------------------------------
    def attention_layers(self) -> list[str]:
        """The encoder layers :class:`~lczerolens.lenses.AttentionLens` reads; empty on residual nets."""
        from lczerolens.errors import LensError
        from lczerolens.lenses.attention import attention_modules

        network = getattr(self.model, "network", self.model)
        try:
            return list(attention_modules(network))
        except LensError:
            return []

    def attention_view(
        self, index: int, moves: Sequence[str], layer: str, query: str | None = None
    ) -> dict[str, Any]:
        """Per-head attention maps of encoder ``layer`` for one query square (default: the top move's square).

        Returns ``{layer, query, heads}``; ``heads`` holds one ``{values, colors, vmin, vmax, stops, sum}`` per
        head: ``values[k]`` is how much the query square's token attends to square ``k`` (board orientation,
        :class:`~lczerolens.lenses.AttentionLens`), so each head's values sum to 1.
        """
        from lczerolens.lenses import AttentionLens

        layers = self.attention_layers()
        if layer not in layers:
            raise InvalidOptionError(
                f"unknown attention layer {layer!r}; use one of {', '.join(layers)}"
                if layers
                else "this network has no attention layers (the attention view needs an attention-body net)"
            )
        board = self.position(index, tuple(moves))
        if query is None or query == "":
            top = self._evaluations_of([board], [index if not moves else -1])[0]["top"]
            query = top[0]["uci"][:2] if top else "e4"
        try:
            square = chess.parse_square(str(query))
        except ValueError as exc:
            raise InvalidOptionError(f"query {query!r} is not a square name such as e4") from exc
        key = (index, tuple(moves))
        with self._lock:
            weights = self._attention.get(key)
            if weights is None:
                weights = AttentionLens().attention(self.model, [board])
                self._remember(self._attention, key, weights)
        rows = weights[layer][0, :, square, :].detach().double()
        return {
            "layer": layer,
            "query": chess.square_name(square),
            "heads": [_map_dict([float(v) for v in row.tolist()]) for row in rows],
        }


def _per_board(t: Any, n: int) -> Any:
    """A recorded layer with one row per board: a token stream flattened over the batch (``[N * 64, E]``)
    becomes ``[N, 64, E]``."""
    if t.ndim == 2 and t.shape[0] == n * 64:
        return t.reshape(n, 64, t.shape[1])
    return t


def _map_dict(values: list[float]) -> dict[str, Any]:
    """One small map for the front end: rounded values, their colours and colour bar, and their sum."""
    from lczerolens.visual import square_colors

    colors = square_colors(values)
    return {
        "values": [_round(v) for v in values],
        "colors": colors["colors"],
        "vmin": _round(colors["vmin"]),
        "vmax": _round(colors["vmax"]),
        "stops": colors["stops"],
        "sum": _round(math.fsum(values)),
    }
