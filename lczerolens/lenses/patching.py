"""Activation patching: run a corrupted position with one module's output taken from the clean position.

For each chosen module, :meth:`PatchingLens.patch` runs the corrupted boards with that module's output replaced
by its output on the clean boards (all of it, or one square at a time) and reports how much the explained
output moves towards the clean run: ``f(patched) - f(corrupted)``. A module through which everything flows (a
residual block's output) recovers all of ``f(clean) - f(corrupted)``; a square of it that carries the
difference recovers much of it.

:func:`corrupt` builds the corrupted position the usual ways: a piece removed, or a piece moved to another
square.

Example
-------
>>> from lczerolens import LczeroBoard
>>> clean = LczeroBoard("6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1")
>>> corrupt(clean, remove="d1").fen()
'6k1/5ppp/8/8/8/8/5PPP/6K1 w - - 0 1'
>>> corrupt(clean, move=("d1", "e1")).fen()
'6k1/5ppp/8/8/8/8/5PPP/4R1K1 w - - 0 1'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias, cast

import chess
import torch
from tensordict import TensorDict
from torch import nn

from lczerolens.errors import InputShapeError, InvalidBoardError, LensError
from lczerolens.lenses.base import (
    BoardsLike,
    ModelLike,
    Target,
    TargetLike,
    TopLegalMoves,
    as_boards,
    check_batch_size,
    check_head,
    chunks,
    model_parts,
    param_like,
    parse_target,
    select_output,
)
from lczerolens.lenses.inside import MAX_ROWS, batch_first, match_modules, module_patterns, run_with
from lczerolens.model.precision import in_ieee_float32

if TYPE_CHECKING:
    from lczerolens.board import InputFormat, LczeroBoard

__all__ = ["PatchingLens", "corrupt"]

#: A square: a name such as ``"e4"`` or a python-chess index ``0..63``.
SquareLike: TypeAlias = str | int
#: Makes the patch mask of chosen units ``[k]`` for ``n`` boards of an output like ``like`` (boards first).
_Selector: TypeAlias = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def _square(value: object, what: str) -> int:
    if isinstance(value, str):
        try:
            return chess.parse_square(value.lower())
        except ValueError:
            raise InvalidBoardError(f"{what}={value!r} is not a square name such as 'e4'") from None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 64:
        return value
    raise InvalidBoardError(f"{what}={value!r} is not a square (a name such as 'e4' or an index 0..63)")


def corrupt(
    board: chess.Board,
    *,
    remove: SquareLike | Sequence[SquareLike] | None = None,
    move: tuple[SquareLike, SquareLike] | None = None,
) -> LczeroBoard:
    """A corrupted copy of ``board`` (FEN only, no history): pieces removed, or one piece moved elsewhere.

    Parameters
    ----------
    board : chess.Board
    remove : square or sequence of squares, optional
        Squares (``"d1"`` or indices) whose pieces are taken off; kings never.
    move : (square, square), optional
        Put the piece of the first square on the second (which must be empty), whether or not that is a legal
        move; the side to move stays.

    Notes
    -----
    Castling rights are cleared where their king or rook has left its square, and an en-passant square once no
    capture is left, as :func:`lczerolens.board.remove_pieces` does; compare with the clean position encoded
    from its FEN too (``corrupt(board)`` with neither argument), so that history does not differ between them.

    Example
    -------
    >>> from lczerolens import LczeroBoard
    >>> corrupt(LczeroBoard(), move=("g1", "f3")).fen()
    'rnbqkbnr/pppppppp/8/8/8/5N2/PPPPPPPP/RNBQKB1R w KQkq - 0 1'
    """
    from lczerolens.board import LczeroBoard, en_passant_holds, remove_pieces

    if not isinstance(board, LczeroBoard):
        board = LczeroBoard.from_board(board)
    if remove is not None and move is not None:
        raise LensError("corrupt() takes remove= or move=, not both; call it twice to do both")
    if remove is None:
        squares: list[int] = []
    elif isinstance(remove, (str, int)):
        squares = [_square(remove, "remove")]
    else:
        squares = [_square(s, "remove") for s in remove]
    out = cast("LczeroBoard", remove_pieces(board, squares))  # remove_pieces keeps the board's class
    if move is not None:
        if not isinstance(move, Sequence) or isinstance(move, str) or len(move) != 2:
            raise LensError(f"move={move!r} must be a pair of squares, e.g. ('d1', 'e1')")
        start, end = _square(move[0], "move"), _square(move[1], "move")
        piece = out.piece_at(start)
        if piece is None:
            raise InvalidBoardError(f"no piece on {chess.square_name(start)} to move in {out.fen()}")
        if out.piece_at(end) is not None:
            raise InvalidBoardError(
                f"{chess.square_name(end)} is not empty in {out.fen()}; remove that piece first or choose another"
            )
        out.remove_piece_at(start)
        out.set_piece_at(end, piece)
        out.castling_rights = out.clean_castling_rights()
        if out.ep_square is not None and not en_passant_holds(out):
            out.ep_square = None
    return out


class PatchingLens:
    """Activation patching between clean and corrupted positions, per module and optionally per square.

    Parameters
    ----------
    modules : str or sequence of str
        Module names or ``fnmatch`` patterns (as :class:`~lczerolens.lenses.ActivationLens`), e.g.
        ``"block*/conv2/relu"`` (each residual block's output) or ``"encoder*/ln2"``.

    Example
    -------
    >>> PatchingLens("block*/conv2/relu")
    PatchingLens(modules=('block*/conv2/relu',))
    """

    def __init__(self, modules: str | Sequence[str] = ("block*/conv2/relu",)) -> None:
        self.modules = module_patterns(modules)

    def __repr__(self) -> str:
        return f"PatchingLens(modules={self.modules!r})"

    @in_ieee_float32
    def patch(
        self,
        model: ModelLike,
        clean: BoardsLike,
        corrupted: BoardsLike,
        target: TargetLike = None,
        *,
        per_square: bool = False,
        per_head: bool = False,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> TensorDict:
        """``f(patched) - f(corrupted)`` for each chosen module: a TensorDict with batch size ``[N]``.

        Parameters
        ----------
        model : LczeroModel or network
        clean, corrupted : LczeroBoard or sequence of LczeroBoard
            ``N`` position pairs (see :func:`corrupt`).
        target : None, move(s) or head name
            What ``f`` reads (the lenses' target language), parsed on the clean boards: a move is read at the
            clean position's policy index in every run; ``None`` is the clean position's top legal move.
        per_square : bool
            ``False``: the module's whole output is patched, values ``[N]``. ``True``: one square's activation
            at a time (dimension ``8, 8`` of a convolution's output, the token of an attention body), values
            ``[N, 64]`` indexed by python-chess square (board orientation of the corrupted board); all 64
            patched runs of a module go through the network as one batch.
        per_head : bool
            For attention modules whose output is ``[N, heads, 64, ...]`` (the softmax weights
            ``"encoder*/mha/QK/softmax"``, the per-head values ``"encoder*/mha/QKV/matmul"``): one head at a time,
            values ``[N, heads]``, all heads of a module in one batch.
        batch_size : int, optional
            At most this many position pairs per pass (``64 * batch_size`` boards with ``per_square``).
        progress : bool
            A tqdm progress bar over the pairs.

        Returns
        -------
        TensorDict
            key = module name, value = ``f(patched) - f(corrupted)``, float64.

        Example
        -------
        >>> effect = PatchingLens("block*/conv2/relu").patch(model, clean, corrupted, per_square=True)  # doctest: +SKIP
        >>> effect["block3/conv2/relu"].shape  # doctest: +SKIP
        torch.Size([1, 64])
        """
        network, input_format = model_parts(model)
        clean_list, corrupted_list = as_boards(clean), as_boards(corrupted)
        n = len(clean_list)
        if len(corrupted_list) != n:
            raise InputShapeError(f"got {n} clean and {len(corrupted_list)} corrupted boards; pass them in pairs")
        parsed = parse_target(target, clean_list, input_format)
        check_head(parsed.kind, network)
        size = check_batch_size(batch_size)
        names = match_modules(network, self.modules)
        if per_square and per_head:
            raise LensError("choose per_square=True or per_head=True, not both")
        parts: list[dict[str, torch.Tensor]] = []
        for rows in chunks(n, size, progress, desc="PatchingLens"):
            parts.append(
                self._patch(network, input_format, clean_list[rows], corrupted_list[rows], parsed[rows], names,
                            per_square, per_head)
            )  # fmt: skip
        values = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return TensorDict(values, batch_size=[n])

    def patched_outputs(self, model: ModelLike, clean: BoardsLike, corrupted: BoardsLike) -> dict[str, torch.Tensor]:
        """The network's outputs on ``corrupted`` with every chosen module's output taken from ``clean`` at once.

        With no module chosen this is the corrupted run; with modules that cut the network, the clean run.

        Example
        -------
        >>> out = PatchingLens("block5/conv2/relu").patched_outputs(model, clean, corrupted)  # doctest: +SKIP
        """
        from lczerolens.board import encode_boards

        network, input_format = model_parts(model)
        clean_list, corrupted_list = as_boards(clean), as_boards(corrupted)
        if len(clean_list) != len(corrupted_list):
            raise InputShapeError(f"got {len(clean_list)} clean and {len(corrupted_list)} corrupted boards")
        names = match_modules(network, self.modules) if self.modules else []
        dtype, device = param_like(network)
        with torch.no_grad():
            _, store = run_with(network, encode_boards(clean_list, input_format).to(dtype=dtype, device=device), names)
            replace = {name: _constant(store[name]) for name in names if name in store}
            outputs, _ = run_with(
                network, encode_boards(corrupted_list, input_format).to(dtype=dtype, device=device), replace=replace
            )
        return outputs

    def _patch(
        self,
        network: nn.Module,
        input_format: InputFormat | int,
        clean: list[LczeroBoard],
        corrupted: list[LczeroBoard],
        target: Target,
        names: list[str],
        per_square: bool,
        per_head: bool,
    ) -> dict[str, torch.Tensor]:
        from lczerolens.board import encode_boards

        dtype, device = param_like(network)
        legal = TopLegalMoves(clean, input_format) if target.kind == "policy" and target.indices is None else None
        x_clean = encode_boards(clean, input_format).to(dtype=dtype, device=device)
        x_bad = encode_boards(corrupted, input_format).to(dtype=dtype, device=device)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            clean_out, store = run_with(network, x_clean, names)
            _, _, _, indices = select_output(clean_out, target.kind, target.indices, legal)
            bad_out, _ = run_with(network, x_bad)
            f_bad = _read(bad_out, target.kind, indices)
            for name in names:
                if name not in store:
                    raise LensError(f"module {name!r} did not run (or gave no tensor) on the clean boards")
                value = store[name]
                if not (per_square or per_head):
                    patched, _ = run_with(network, x_bad, replace={name: _same_as(value, name)})
                    out[name] = _read(patched, target.kind, indices) - f_bad
                    continue
                out[name] = self._sweep(network, input_format, x_bad, corrupted, value, name, target.kind,
                                        indices, f_bad, "square" if per_square else "head")  # fmt: skip
        return out

    def _sweep(
        self,
        network: nn.Module,
        input_format: InputFormat | int,
        x_bad: torch.Tensor,
        corrupted: list[LczeroBoard],
        value: torch.Tensor,
        name: str,
        kind: str,
        indices: torch.Tensor | None,
        f_bad: torch.Tensor,
        unit: str,
    ) -> torch.Tensor:
        """Patch one unit (square or head) at a time; all units of a module in passes of at most MAX_ROWS rows."""
        n = x_bad.shape[0]
        clean_bf = batch_first(value, n)
        select: _Selector
        if unit == "square":
            units, select = 64, _square_selector(clean_bf, name, corrupted, input_format)
        else:
            units, select = _head_count(clean_bf, name), _select_heads
        per_pass = max(1, MAX_ROWS // n)
        effect = torch.empty(n, units, dtype=torch.float64)
        for start in range(0, units, per_pass):
            chosen = torch.arange(start, min(start + per_pass, units))
            k = len(chosen)
            # Rows j * n + i: board i with unit chosen[j] patched.
            mask = select(chosen, n, clean_bf).to(value.device)

            def change(o: torch.Tensor, k: int = k, mask: torch.Tensor = mask) -> torch.Tensor:
                o_bf = batch_first(o, k * n)
                source = clean_bf.repeat(k, *([1] * (clean_bf.dim() - 1)))
                return torch.where(mask, source, o_bf).reshape(o.shape)

            patched, _ = run_with(network, x_bad.repeat(k, 1, 1, 1), replace={name: change})
            f = _read(patched, kind, None if indices is None else indices.repeat(k))
            effect[:, start : start + k] = (f.reshape(k, n) - f_bad[None]).T
        return effect


def _square_selector(
    clean_bf: torch.Tensor, name: str, corrupted: list[LczeroBoard], input_format: InputFormat | int
) -> _Selector:
    """The mask maker for one board square at a time, in a ``[N, ..., 8, 8]`` or ``[N, 64, E]`` output."""
    from lczerolens.lenses.attention import network_squares

    layout = _square_layout(clean_bf, name)
    # net_square[i, s]: where board square s of corrupted board i sits in the network's orientation.
    net_square = network_squares(corrupted, input_format)

    def select(squares: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
        k = len(squares)
        mask = torch.zeros(k, n, 64, dtype=torch.bool)
        mask[torch.arange(k)[:, None], torch.arange(n)[None, :], net_square[:, squares].T] = True
        if layout == "planes":
            return mask.reshape(k * n, *([1] * (like.dim() - 3)), 8, 8)
        return mask.reshape(k * n, 64, *([1] * (like.dim() - 2)))

    return select


def _head_count(clean_bf: torch.Tensor, name: str) -> int:
    """Heads of an attention module's ``[N, heads, 64, ...]`` output (weights or per-head values)."""
    if clean_bf.dim() != 4 or clean_bf.shape[2] != 64:
        raise LensError(
            f"module {name!r} gives {tuple(clean_bf.shape)} per batch, not [N, heads, 64, ...]: per_head=True "
            "needs an attention module such as 'encoder0/mha/QK/softmax' or 'encoder0/mha/QKV/matmul'"
        )
    return clean_bf.shape[1]


def _select_heads(heads: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    k = len(heads)
    mask = torch.zeros(k, n, like.shape[1], dtype=torch.bool)
    mask[torch.arange(k), :, heads] = True
    return mask.reshape(k * n, like.shape[1], 1, 1)


def _constant(value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A replacement that ignores the module's output and gives ``value``."""
    return lambda out: value


def _same_as(value: torch.Tensor, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A replacement that gives ``value`` in place of module ``name``'s output of the same shape."""
    return lambda out: _same(out, value, name)


def _same(out: torch.Tensor, value: torch.Tensor, name: str) -> torch.Tensor:
    if out.shape != value.shape:
        raise LensError(f"module {name!r} gives {tuple(out.shape)} on corrupted boards, {tuple(value.shape)} on clean")
    return value


def _square_layout(value: torch.Tensor, name: str) -> str:
    """Where a boards-first output keeps its squares: ``"planes"`` ``[N, ..., 8, 8]``, ``"tokens"`` ``[N, 64, E]``."""
    if value.dim() >= 3 and tuple(value.shape[-2:]) == (8, 8):
        return "planes"
    if value.dim() == 3 and value.shape[1] == 64:
        return "tokens"
    raise LensError(
        f"module {name!r} gives {tuple(value.shape)} per batch: no square dimension (8, 8) or 64 tokens to patch "
        "per square; use per_square=False or another module"
    )


def _read(outputs: dict[str, torch.Tensor], kind: str, indices: torch.Tensor | None) -> torch.Tensor:
    """The explained output of each row, float64 on the CPU (``indices`` fixed for a move target)."""
    _, _, values, _ = select_output(outputs, kind, indices, None)
    return values.to(torch.float64).cpu()
