"""Channels of a layer: relevance per channel, and the reference positions where a channel responds most.

:func:`channel_relevance` sums a layer's latent relevance (``rel.layers[name]`` from
``LrpLens.relevance(..., record=...)``) over squares or tokens. :func:`reference_positions` finds, over a list of
boards, the top-k positions per channel by a per-channel map (activation, or relevance: anything ``[N, C, 64]``
in board orientation) with the square where the map peaks, in the spirit of zennit-crp's reference samples; the
result saves as ``.npz`` + ``.json`` (no pickle) and draws as a grid of boards.

Example
-------
>>> refs = reference_positions(boards, activation_maps_of(model, "block3/conv2/relu"), k=4)  # doctest: +SKIP
>>> refs.render(17)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import chess
import numpy as np
import torch

from lczerolens.concepts.activations import _activations, activation_maps, resolve_modules
from lczerolens.concepts.base import as_board_list
from lczerolens.errors import InputShapeError, LensError

if TYPE_CHECKING:
    from lczerolens.lenses.base import AttributionLens, ModelLike, TargetLike
    from lczerolens.lenses.relevance import Relevance
    from lczerolens.visual import Heatmap

__all__ = ["channel_relevance", "activation_maps_of", "relevance_maps_of", "reference_positions", "ReferencePositions"]

_FORMAT = "lczerolens.reference_positions/1"


class ChannelMaps(Protocol):
    """What :func:`activation_maps_of` and :func:`relevance_maps_of` return: ``boards -> [N, C, 64]``, and the
    module it reads as ``.module`` (recorded by :func:`reference_positions`)."""

    module: str

    def __call__(self, boards: list[chess.Board]) -> torch.Tensor: ...


def channel_relevance(rel: Relevance, name: str) -> torch.Tensor:
    """Relevance per channel of module ``name``: ``[N, C]``, summed over squares (residual nets) or tokens
    (attention nets).

    Reads ``rel.layers[name]`` (recorded with ``LrpLens.relevance(..., record=(name, ...))``), whose shape is the
    module's activation: ``[N, C, 8, 8]``, ``[N, 64, E]`` or ``[N * 64, E]`` (tokens flattened over the batch),
    or already ``[N, C]``; ``N = len(rel)``.

    Example
    -------
    >>> rel = lens.relevance(model, board, record=("block3/conv2/relu",))  # doctest: +SKIP
    >>> channel_relevance(rel, "block3/conv2/relu").shape  # doctest: +SKIP
    torch.Size([1, 64])
    """
    layers = getattr(rel, "layers", None)
    if layers is None:
        raise LensError("this relevance has no recorded layers; pass record=(name, ...) to LrpLens.relevance")
    if name not in layers:
        raise LensError(f"no recorded relevance for {name!r}; recorded: {sorted(layers)}")
    t: torch.Tensor = layers[name]
    n = len(rel)
    if t.ndim == 2 and t.shape[0] == n * 64 and n * 64 != n:
        t = t.reshape(n, 64, t.shape[1])
    if t.shape[0] != n:
        raise InputShapeError(f"relevance of {name!r} has shape {tuple(t.shape)}, not [{n}, ...] for {n} positions")
    if t.ndim == 4:
        return t.sum(dim=(2, 3))
    if t.ndim == 3:
        return t.sum(dim=1)
    if t.ndim == 2:
        return t
    raise InputShapeError(f"cannot read channels from relevance of shape {tuple(t.shape)} at {name!r}")


def activation_maps_of(model: ModelLike, module: str, batch_size: int = 256) -> ChannelMaps:
    """A callable ``boards -> [N, C, 64]``: ``module``'s output per channel, in board orientation (for
    :func:`reference_positions`)."""
    names = resolve_modules(model, [module])
    if len(names) != 1:
        raise LensError(f"{module!r} matches {len(names)} modules ({names[:4]}...); name one module")
    name = names[0]
    fmt = getattr(model, "input_format", 1)

    def maps(boards: list[chess.Board]) -> torch.Tensor:
        act = _activations(model, boards, [name], batch_size)[name]
        return activation_maps(act, boards, fmt)

    tagged = cast(ChannelMaps, maps)
    tagged.module = name
    return tagged


def relevance_maps_of(
    lens: AttributionLens, model: ModelLike, module: str, target: TargetLike = None, **options: Any
) -> ChannelMaps:
    """A callable ``boards -> [N, C, 64]``: the latent relevance of ``module``'s output per channel, in board
    orientation (for :func:`reference_positions` by relevance).

    Calls ``lens.relevance(model, boards, target=target, record=(module,), **options)`` and reads
    ``rel.layers[module]`` (network orientation, the module's activation shape), moving squares to the board as
    :func:`~lczerolens.concepts.activation_maps` does. ``target`` is one target for every board, as the lens
    reads it (``None``: each board's top legal move; ``"value"``, ``"win"``, ...).

    Example
    -------
    >>> maps = relevance_maps_of(LrpLens(), model, "block3/conv2/relu")  # doctest: +SKIP
    >>> refs = reference_positions(boards, maps, k=6, reduce="sum")  # doctest: +SKIP
    """
    names = resolve_modules(model, [module])
    if len(names) != 1:
        raise LensError(f"{module!r} matches {len(names)} modules ({names[:4]}...); name one module")
    name = names[0]
    fmt = getattr(model, "input_format", 1)
    if isinstance(target, (list, tuple)):
        raise LensError("relevance_maps_of takes one target for all boards (None, 'value', ...), not a list")

    def maps(boards: list[chess.Board]) -> torch.Tensor:
        rel = lens.relevance(model, boards, target=target, record=(name,), **options)
        layer = rel.layers[name]
        if layer.ndim == 2 and layer.shape[0] == len(boards) * 64:
            layer = layer.reshape(len(boards), 64, layer.shape[1])
        return activation_maps(layer.detach().to("cpu", torch.float32), boards, fmt)

    tagged = cast(ChannelMaps, maps)
    tagged.module = name
    return tagged


@dataclass
class ReferencePositions:
    """Top-k positions per channel.

    Attributes
    ----------
    fens : list of str
        The FEN of each board that appears in the result (``boards`` of :func:`reference_positions` index into
        the caller's list; ``positions`` here index into ``fens``).
    moves : list of list of str
        Each board's move history (UCI, from its root position ``roots[i]``), so boards come back with history.
    roots : list of str
        Each board's root FEN (where the move history starts).
    channels : ``[C]`` int: which channel each row is.
    positions : ``[C, k]`` int: index into ``fens`` (best first).
    indices : ``[C, k]`` int: index into the caller's board list.
    scores : ``[C, k]`` float: the position's score for the channel (see ``reduce``).
    squares : ``[C, k]`` int: the python-chess square where the channel's map peaks.
    maps : ``[C, k, 64]`` float: the channel's map on that position (board orientation).
    meta : dict (JSON-able): what the maps are (``source``, ``module``, ``reduce``, ...).
    """

    fens: list[str]
    moves: list[list[str]]
    roots: list[str]
    channels: np.ndarray
    positions: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    squares: np.ndarray
    maps: np.ndarray = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def boards(self) -> list[chess.Board]:
        """The stored boards as :class:`~lczerolens.LczeroBoard` objects, with their move history."""
        from lczerolens.board import LczeroBoard

        out: list[chess.Board] = []
        for root, moves in zip(self.roots, self.moves, strict=True):
            out.append(LczeroBoard.from_moves(moves, fen=root))
        return out

    def _row(self, channel: int) -> int:
        hits = np.flatnonzero(self.channels == channel)
        if not len(hits):
            raise LensError(f"channel {channel} is not in these reference positions ({len(self.channels)} channels)")
        return int(hits[0])

    def render(self, channel: int, **options: Any) -> Heatmap:
        """The channel's top-k positions as a grid of boards with its map (:func:`lczerolens.visual.render_grid`),
        each titled with the score and the peak square."""
        from lczerolens.visual import render_grid

        row = self._row(channel)
        all_boards = self.boards()
        boards = [all_boards[p] for p in self.positions[row]]
        titles = [f"#{i} {s:.3g} @ {chess.square_name(int(q))}"
                  for i, s, q in zip(self.indices[row], self.scores[row], self.squares[row], strict=True)]  # fmt: skip
        module = self.meta.get("module")
        options.setdefault("caption", f"channel {channel}" + (f" of {module}" if module else ""))
        return render_grid(boards, self.maps[row], titles=titles, **options)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npz``: the arrays) and ``path`` with ``.json`` (boards and meta); no pickle."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        np.savez_compressed(path, channels=self.channels, positions=self.positions, indices=self.indices,
                            scores=self.scores, squares=self.squares, maps=self.maps)  # fmt: skip
        doc = {"format": _FORMAT, "fens": self.fens, "roots": self.roots, "moves": self.moves, "meta": self.meta}
        path.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferencePositions:
        """Read what :meth:`save` wrote."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        doc = json.loads(path.with_suffix(".json").read_text())
        if doc.get("format") != _FORMAT:
            raise LensError(f"{path.with_suffix('.json')} is not a reference-positions file ({doc.get('format')!r})")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("channels", "positions", "indices", "scores", "squares", "maps")}
        return cls(fens=list(doc["fens"]), roots=list(doc["roots"]), moves=[list(m) for m in doc["moves"]],
                   meta=dict(doc["meta"]), **arrays)  # fmt: skip


def reference_positions(
    boards: Sequence[chess.Board],
    maps: torch.Tensor | Callable[[list[chess.Board]], torch.Tensor],
    *,
    k: int = 8,
    channels: Sequence[int] | None = None,
    reduce: str = "max",
    batch_size: int = 512,
    meta: dict[str, Any] | None = None,
) -> ReferencePositions:
    """The top-``k`` positions of each channel by its per-channel map, with the square where the map peaks.

    Parameters
    ----------
    boards : the positions searched.
    maps : ``[N, C, 64]`` (or ``[N, C, 8, 8]``) per-channel maps in board orientation, or a callable
        ``boards -> [n, C, 64]`` called on batches of ``batch_size`` boards (e.g. :func:`activation_maps_of`, or a
        function returning latent relevance per channel), so memory stays bounded by one batch plus the top k.
    k : positions kept per channel (fewer if there are fewer boards).
    channels : which channels (default: all).
    reduce : how a position is scored from a channel's map: ``"max"`` (largest value, default), ``"sum"``
        (total, e.g. a channel's relevance) or ``"absmax"`` (largest magnitude). The peak square is always the
        argmax of the map (of ``|map|`` for ``"absmax"``).
    meta : recorded with the result (e.g. ``{"module": ..., "source": "activation"}``).

    Returns
    -------
    ReferencePositions
    """
    board_list = as_board_list(boards)
    if reduce not in ("max", "sum", "absmax"):
        raise LensError(f"reduce must be 'max', 'sum' or 'absmax', not {reduce!r}")
    if k < 1:
        raise LensError(f"k must be at least 1, got {k}")
    n = len(board_list)
    k = min(k, n)

    def batches() -> Iterator[tuple[int, torch.Tensor]]:
        if callable(maps):
            for start in range(0, n, batch_size):
                yield start, torch.as_tensor(maps(board_list[start : start + batch_size]))
        else:
            yield 0, torch.as_tensor(maps)

    best_scores: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    best_maps: torch.Tensor | None = None
    chan: torch.Tensor | None = None
    seen = 0
    for start, m in batches():
        m = m.detach().to("cpu", torch.float32)
        if m.ndim == 4 and tuple(m.shape[2:]) == (8, 8):
            m = m.reshape(m.shape[0], m.shape[1], 64)
        if m.ndim != 3 or m.shape[2] != 64:
            raise InputShapeError(f"per-channel maps must be [N, C, 64] or [N, C, 8, 8], got {tuple(m.shape)}")
        if chan is None:
            chan = torch.arange(m.shape[1]) if channels is None else torch.as_tensor(list(channels), dtype=torch.long)
            if len(chan) == 0 or chan.min() < 0 or chan.max() >= m.shape[1]:
                raise LensError(f"channels must lie in [0, {m.shape[1]}), got {chan.tolist()}")
        m = m[:, chan]  # [b, C', 64]
        score = {"max": lambda t: t.amax(2), "sum": lambda t: t.sum(2), "absmax": lambda t: t.abs().amax(2)}[reduce](m)
        index = torch.arange(start, start + m.shape[0])[:, None].expand_as(score)
        if best_scores is None or best_index is None or best_maps is None:  # all three are set together
            cat_s, cat_i, cat_m = score, index, m
        else:
            cat_s = torch.cat([best_scores, score])
            cat_i = torch.cat([best_index, index])
            cat_m = torch.cat([best_maps, m])
        kk = min(k, cat_s.shape[0])
        # On ties the earlier position wins: the kept rows come first, already in that order, and the stable
        # sort keeps it.
        top = torch.sort(cat_s, dim=0, descending=True, stable=True).indices[:kk]
        best_scores = cat_s.gather(0, top)
        best_index = cat_i.gather(0, top)
        best_maps = cat_m.gather(0, top[:, :, None].expand(-1, -1, 64))
        seen += m.shape[0]
    if seen != n:
        raise InputShapeError(f"the maps cover {seen} positions but {n} boards were given")
    assert best_scores is not None and best_index is not None and best_maps is not None and chan is not None
    scores = best_scores.T.numpy()  # [C', k]
    indices = best_index.T.numpy()
    top_maps = best_maps.permute(1, 0, 2).numpy()  # [C', k, 64]
    peak_of = np.abs(top_maps) if reduce == "absmax" else top_maps
    squares = peak_of.argmax(axis=2)
    used = sorted(set(indices.flatten().tolist()))
    where = {b: i for i, b in enumerate(used)}
    roots, moves, fens = [], [], []
    for b in used:
        board = board_list[b]
        root = board.root()
        roots.append(root.fen())
        moves.append([mv.uci() for mv in board.move_stack])
        fens.append(board.fen())
    info = dict(meta or {})
    info.setdefault("reduce", reduce)
    module = getattr(maps, "module", None)
    if module is not None:
        info.setdefault("module", module)
    return ReferencePositions(fens=fens, moves=moves, roots=roots, channels=chan.numpy(),
                              positions=np.vectorize(where.__getitem__, otypes=[np.int64])(indices),
                              indices=indices.astype(np.int64), scores=scores, squares=squares.astype(np.int64),
                              maps=top_maps, meta=info)  # fmt: skip
