"""Dataset examples: the positions of a collection where one unit of a network is most active, streamed.

:func:`top_positions` reads a collection (a PGN/EPD/puzzle file, boards or :class:`~lczerolens.data.Position`
objects) in batches, computes one module's activation on each, and keeps the ``k`` positions where the chosen unit
(a channel of a residual block, a feature of an attention body's token stream or of an FFN's hidden layer)
reaches its highest value on some square, in a heap of ``k``: memory stays one batch plus ``k`` positions,
whatever the size of the collection. :func:`render_top_positions` draws them as a grid of boards, each with the
unit's activation map as the heatmap.

Example
-------
>>> from lczerolens.concepts import top_positions, render_top_positions
>>> top = top_positions(model, "games.pgn", "block3/conv2/relu", 17, k=8)  # doctest: +SKIP
>>> score, square, position = top[0]  # doctest: +SKIP
>>> render_top_positions(model, top, "block3/conv2/relu", 17).save("channel17.svg")  # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import itertools
import numbers
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chess
import torch

from lczerolens.errors import DataError, InvalidOptionError, LensError

if TYPE_CHECKING:
    from lczerolens.lenses.base import ModelLike
    from lczerolens.visual import Heatmap

__all__ = ["top_positions", "render_top_positions", "unit_maps"]


def _one_module(model: ModelLike, module: str) -> str:
    from lczerolens.lenses.base import model_parts
    from lczerolens.lenses.inside import match_modules

    if not isinstance(module, str):
        raise LensError(f"module={module!r} must be one module name, e.g. 'block3/conv2/relu'")
    network, _ = model_parts(model)
    names = match_modules(network, [module])
    if len(names) != 1:
        raise LensError(f"{module!r} matches {len(names)} modules ({names[:4]}...); name one module")
    return names[0]


def unit_maps(model: ModelLike, boards: Sequence[chess.Board], module: str, unit: int) -> torch.Tensor:
    """``[N, 64]`` float32: unit ``unit`` of ``module``'s output on each board, per square in board orientation.

    ``module`` gives ``[N, C, 8, 8]`` (a channel per square) or ``[N, 64, E]`` (a feature per token, tokens being
    squares); other outputs (attention weights per head, dense layers) raise :class:`LensError`.
    """
    from lczerolens.concepts.activations import activation_maps
    from lczerolens.lenses import ActivationLens
    from lczerolens.lenses.base import model_parts

    name = _one_module(model, module)
    _, input_format = model_parts(model)
    act = ActivationLens([name]).activations(model, list(boards))[name].detach().to("cpu", torch.float32)
    per_square = (act.ndim == 4 and tuple(act.shape[2:]) == (8, 8)) or (act.ndim == 3 and act.shape[1] == 64)
    if not per_square:
        raise LensError(
            f"module {name!r} gives {tuple(act.shape)}: no activation per square to rank positions by; choose a "
            "module with channels per square [N, C, 8, 8] or tokens [N, 64, E] (a head's weights have none)"
        )
    maps = activation_maps(act, list(boards), input_format)  # [N, C, 64]
    units = maps.shape[1]
    if isinstance(unit, bool) or not isinstance(unit, numbers.Integral) or not 0 <= int(unit) < units:
        raise InvalidOptionError(f"unit={unit!r} is not a unit of {name!r}, which has {units} (0..{units - 1})")
    return maps[:, int(unit)]


def _items(source: Any) -> Iterator[Any]:
    """The items of a collection: a file path is read as a stream; a board is one item."""
    if isinstance(source, (str, Path)):
        from lczerolens.data import read_positions

        yield from read_positions(source)
        return
    if isinstance(source, chess.Board):
        yield source
        return
    if not isinstance(source, Iterable):
        raise DataError(f"source must be a file path, a board or an iterable of boards/positions, not {source!r:.60}")
    yield from source


def _board_of(item: Any) -> chess.Board:
    if isinstance(item, chess.Board):
        return item
    board = getattr(item, "board", None)
    if isinstance(board, chess.Board):
        return board
    raise DataError(f"{item!r:.80} is neither a board nor a position with a .board; pass boards or Positions")


def top_positions(
    model: ModelLike,
    source: Any,
    module: str,
    unit: int,
    *,
    k: int = 16,
    batch_size: int = 256,
    progress: bool = False,
) -> list[tuple[float, int, Any]]:
    """The ``k`` positions of ``source`` where unit ``unit`` of ``module`` is most active, highest first.

    Parameters
    ----------
    model : LczeroModel or network
    source : str, Path, reader, or iterable of boards or positions
        A PGN, EPD or Lichess puzzle file (read as a stream with :func:`lczerolens.data.read_positions`), a
        reader (``read_pgn(path, every=4)``), boards, or objects with a ``.board`` (``Position``, ``Puzzle``).
    module : str
        One module, named as :class:`~lczerolens.lenses.ActivationLens` names it (``"block3/conv2/relu"``,
        ``"encoder2/ln2"``), whose output has an activation per square.
    unit : int
        The channel (residual net) or the token feature (attention body, FFN hidden layer).
    k : int
        How many positions to keep.
    batch_size : int
        Positions per forward pass (memory: one batch's activations plus ``k`` kept positions).
    progress : bool
        A tqdm counter of the positions read.

    Returns
    -------
    list of (score, square, item)
        Highest ``score`` first; ``score`` = the unit's activation at ``square`` (a python-chess square, board
        orientation: the square where the unit is largest on that position, the lowest index on a tie), ``item``
        the source's own object (``Position``, ``Puzzle`` or board). One entry per position; between positions
        with equal scores, the earlier one in the source comes first.

    Example
    -------
    >>> top = top_positions(model, read_pgn("games.pgn", every=2), "block3/conv2/relu", 17, k=4)  # doctest: +SKIP
    >>> [(round(s, 2), chess.square_name(q), p.ply) for s, q, p in top]  # doctest: +SKIP
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise InvalidOptionError(f"k={k!r} must be a positive whole number")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InvalidOptionError(f"batch_size={batch_size!r} must be a positive whole number")
    name = _one_module(model, module)
    # A min-heap of (score, -index, square, item): its root is the weakest kept entry (the later of equal scores).
    heap: list[tuple[float, int, int, Any]] = []
    counter = itertools.count()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="top_positions", unit="pos")
    try:
        items = _items(source)
        while True:
            batch = list(itertools.islice(items, batch_size))
            if not batch:
                break
            boards = [_board_of(item) for item in batch]
            maps = unit_maps(model, boards, name, unit)  # [b, 64]
            best = maps.max(dim=1).values
            # The lowest square holding the maximum (argmax's choice on ties is not specified).
            squares = torch.where(maps == best[:, None], torch.arange(64), 64).amin(dim=1)
            for item, score, square in zip(batch, best.tolist(), squares.tolist(), strict=True):
                entry = (float(score), -next(counter), int(square), item)
                if len(heap) < k:
                    heapq.heappush(heap, entry)
                elif entry[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, entry)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    ordered = sorted(heap, key=lambda e: (-e[0], -e[1]))
    return [(score, square, item) for score, _, square, item in ordered]


def render_top_positions(
    model: ModelLike,
    top: Sequence[tuple[float, int, Any]],
    module: str,
    unit: int,
    **options: Any,
) -> Heatmap:
    """The positions of :func:`top_positions` as a grid of boards, each with the unit's activation map.

    Each picture is titled with its rank, score and square; the maps share one colour scale. ``options`` go to
    :func:`lczerolens.visual.render_grid` (``ncols``, ``cmap``, ``size``, ``caption``, ...).

    Example
    -------
    >>> render_top_positions(model, top, "block3/conv2/relu", 17, ncols=4).save("top.svg")  # doctest: +SKIP
    """
    from lczerolens.visual import render_grid

    if not top:
        raise LensError("no positions to draw: top_positions found none (an empty source?)")
    boards = [_board_of(item) for _, _, item in top]
    maps = unit_maps(model, boards, module, unit)
    titles = [f"#{i + 1}: {score:.3g} at {chess.square_name(square)}" for i, (score, square, _) in enumerate(top)]
    options.setdefault("caption", f"unit {unit} of {_one_module(model, module)}: its {len(top)} top positions")
    options.setdefault("label", "activation")
    return render_grid(boards, maps.numpy(), titles=titles, **options)
