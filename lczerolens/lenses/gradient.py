"""Gradient lenses and occlusion: the comparison methods of attribution, on the same contract as LRP.

- :class:`GradientLens` ``("gradient")``: the raw gradient ``df/dx`` of the explained output on the input planes;
  its squares are ``sum_planes |df/dx|`` (a sensitivity map, unsigned).
- ``("gradient_x_input")``: ``x * df/dx``; squares sum it over the planes (signed).
- ``("integrated_gradients")``: ``(x - x0) * mean_k df/dx(x0 + a_k (x - x0))`` over ``steps`` midpoints
  ``a_k = (k + 1/2) / steps`` (all steps of a batch stacked into few forward/backward passes); the map sums to
  ``f(x) - f(x0)`` up to the quadrature error (completeness). The baseline ``x0`` is all-zero planes, planes
  of your own, or ``"kings"``: the input with every piece but the kings taken off (see :func:`kings_only`).
- ``("smoothgrad")``: the mean gradient at ``x + noise * e``, ``e ~ N(0, 1)`` over ``samples`` draws (seeded per
  board, so batching changes nothing); squares as for ``"gradient"``.
- :class:`OcclusionLens`: per square, ``f(position) - f(position without the piece on it)``.

Every lens returns a :class:`~lczerolens.lenses.relevance.Relevance`, so ``.squares``, ``.render()``, grids and
:mod:`lczerolens.metrics` work the same for every method. The user's model only runs plain forwards and
gradients: nothing is patched or hooked.

Example
-------
>>> from lczerolens.lenses import GradientLens
>>> GradientLens("integrated_gradients", steps=64)
GradientLens('integrated_gradients', steps=64, baseline='zeros')
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import chess
import torch
from torch import nn

from lczerolens.errors import InputShapeError, LensError
from lczerolens.lenses.base import (
    AttributionLens,
    BoardsLike,
    ModelLike,
    Target,
    TargetLike,
    TopLegalMoves,
    as_boards,
    param_like,
    select_output,
)
from lczerolens.lenses.inside import MAX_ROWS, explained_forward
from lczerolens.lenses.relevance import Relevance

if TYPE_CHECKING:
    from lczerolens.board import InputFormat, LczeroBoard

__all__ = ["GradientLens", "OcclusionLens", "GRADIENT_METHODS", "kings_only"]

#: The methods of :class:`GradientLens` and the caption name of each.
GRADIENT_METHODS = {
    "gradient": "gradient",
    "gradient_x_input": "gradient x input",
    "integrated_gradients": "integrated gradients",
    "smoothgrad": "SmoothGrad",
}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise LensError(f"{name}={value!r} must be a positive integer")
    return int(value)


class GradientLens(AttributionLens):
    """Attribution from input gradients: plain, times input, integrated, or smoothed.

    Parameters
    ----------
    method : str
        ``"gradient"``, ``"gradient_x_input"``, ``"integrated_gradients"`` or ``"smoothgrad"`` (see the module
        docstring for what each computes).
    steps : int
        Integrated gradients: the number of points on the path (midpoint rule).
    baseline : "zeros", "kings" or torch.Tensor
        Integrated gradients: the start of the path. ``"zeros"``: all-zero planes. ``"kings"``: each board's own
        planes with every piece but the kings taken off, in every history step, castling and en passant cleared
        (:func:`kings_only`; the position the piece-removal test ends at, so the map splits what all removals
        together change). Or planes ``[112, 8, 8]`` (one for every board) or ``[N, 112, 8, 8]`` (one per board,
        network orientation).
    samples : int
        SmoothGrad: the number of noisy copies per board.
    noise : float
        SmoothGrad: the standard deviation of the Gaussian noise added to every plane value.
    seed : int
        SmoothGrad: board ``i`` (of the whole call) draws its noise from a generator seeded with ``(seed, i)``.

    Example
    -------
    >>> rel = GradientLens("gradient_x_input").relevance(model, board, target="value")  # doctest: +SKIP
    >>> rel.render()  # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "gradient_x_input",
        *,
        steps: int = 32,
        baseline: str | torch.Tensor = "zeros",
        samples: int = 16,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        if method not in GRADIENT_METHODS:
            raise LensError(f"method={method!r} is not a gradient method; use one of {sorted(GRADIENT_METHODS)}")
        if isinstance(baseline, str):
            if baseline not in ("zeros", "kings"):
                raise LensError(f"baseline={baseline!r}: use 'zeros', 'kings' or a tensor of planes [112, 8, 8]")
        elif not isinstance(baseline, torch.Tensor) or tuple(baseline.shape[-3:]) != (112, 8, 8) or baseline.dim() > 4:
            shape = tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else type(baseline).__name__
            raise LensError(f"baseline must be 'zeros', 'kings' or planes [112, 8, 8] / [N, 112, 8, 8], not {shape}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise LensError(f"noise={noise!r} must be a number >= 0")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise LensError(f"seed={seed!r} must be an integer")
        self.method: str = method
        self.steps: int = _positive_int(steps, "steps")
        self.baseline: str | torch.Tensor = baseline
        self.samples: int = _positive_int(samples, "samples")
        self.noise: float = float(noise)
        self.seed: int = int(seed)
        self.method_name = GRADIENT_METHODS[method]

    def __repr__(self) -> str:
        text = f"GradientLens({self.method!r}"
        if self.method == "integrated_gradients":
            base = repr(self.baseline) if isinstance(self.baseline, str) else f"<planes {tuple(self.baseline.shape)}>"
            text += f", steps={self.steps}, baseline={base}"
        elif self.method == "smoothgrad":
            text += f", samples={self.samples}, noise={self.noise!r}, seed={self.seed}"
        return text + ")"

    def relevance(
        self,
        model: ModelLike,
        boards: BoardsLike,
        target: TargetLike = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> Relevance:
        """Explain one output per board (see :meth:`AttributionLens.relevance`; this lens takes no ``options``).

        Returns
        -------
        Relevance
            ``.planes`` ``[N, 112, 8, 8]`` (network orientation): the raw gradient (``"gradient"``,
            ``"smoothgrad"``) or the attribution (``"gradient_x_input"``, ``"integrated_gradients"``);
            ``.squares`` ``[N, 8, 8]`` (board orientation); ``.target`` ``[N]`` the explained output ``f(x)``.
        """
        board_list = as_boards(boards)
        if isinstance(self.baseline, torch.Tensor) and self.baseline.dim() == 4:
            if self.baseline.shape[0] != len(board_list):
                raise InputShapeError(
                    f"the baseline holds planes for {self.baseline.shape[0]} boards, not {len(board_list)}; pass one "
                    "[112, 8, 8] for all boards or one per board"
                )
        return super().relevance(model, board_list, target, batch_size=batch_size, progress=progress, **options)

    def _explain(
        self,
        network: nn.Module,
        input_format: InputFormat | int,
        boards: list[LczeroBoard],
        target: Target,
        *,
        rows: slice,
        **options: Any,
    ) -> Relevance:
        from lczerolens.board import encode_boards

        legal = TopLegalMoves(boards, input_format) if target.kind == "policy" and target.indices is None else None
        dtype, device = param_like(network)
        x = encode_boards(boards, input_format).to(dtype=dtype, device=device)
        with torch.inference_mode(False), torch.enable_grad():
            if self.method in ("gradient", "gradient_x_input"):
                grad, values, indices = _gradient(network, x, target.kind, target.indices, legal)
                planes = grad if self.method == "gradient" else x * grad
            else:
                with torch.no_grad():
                    outputs = explained_forward(network, x, target.kind)
                    _, _, values, indices = select_output(outputs, target.kind, target.indices, legal)
                if self.method == "integrated_gradients":
                    base = self._baseline(x, rows, input_format)
                    planes = (x - base) * self._path_gradient(network, x, base, target.kind, indices)
                else:
                    grad = self._smooth_gradient(network, x, target.kind, indices, rows)
                    planes = grad
        squares = None
        if self.method in ("gradient", "smoothgrad"):
            squares = _board_squares(planes.abs().sum(dim=1), boards, input_format)
        return Relevance(
            planes=planes,
            target=values,
            boards=boards,
            input_format=input_format,
            target_name=target.kind,
            policy_indices=indices if target.kind == "policy" else None,
            squares=squares,
            method=self.method_name,
        )

    def _baseline(self, x: torch.Tensor, rows: slice, input_format: InputFormat | int) -> torch.Tensor:
        if self.baseline == "kings":
            return kings_only(x, input_format)
        if isinstance(self.baseline, str):
            return torch.zeros_like(x)
        base = self.baseline.to(dtype=x.dtype, device=x.device)
        return base[rows] if base.dim() == 4 else base.expand_as(x)

    def _path_gradient(
        self, network: nn.Module, x: torch.Tensor, base: torch.Tensor, kind: str, indices: torch.Tensor | None
    ) -> torch.Tensor:
        """The mean gradient over the ``steps`` midpoints of the straight path from ``base`` to ``x``."""
        n = x.shape[0]
        alphas = (torch.arange(self.steps, dtype=torch.float64) + 0.5) / self.steps
        per_pass = max(1, MAX_ROWS // n)
        total = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, torch.float32))  # half models sum in fp32
        for start in range(0, self.steps, per_pass):
            a = alphas[start : start + per_pass].to(dtype=x.dtype, device=x.device)
            # Rows k * n + i: board i at alpha a[k].
            points = (base[None] + a[:, None, None, None, None] * (x - base)[None]).reshape(-1, *x.shape[1:])
            grad, _, _ = _gradient(network, points, kind, _repeat(indices, len(a)), None)
            total += grad.reshape(len(a), n, *x.shape[1:]).sum(0)
        return (total / self.steps).to(x.dtype)

    def _smooth_gradient(
        self, network: nn.Module, x: torch.Tensor, kind: str, indices: torch.Tensor | None, rows: slice
    ) -> torch.Tensor:
        """The mean gradient over ``samples`` noisy copies of each board (noise seeded per board of the call)."""
        n = x.shape[0]
        noise = torch.stack(
            [
                torch.randn(
                    (self.samples, *x.shape[1:]),
                    generator=torch.Generator().manual_seed(self.seed * 1_000_003 + rows.start + i),
                    dtype=torch.float32,
                )
                for i in range(n)
            ],
            dim=1,
        ).to(dtype=x.dtype, device=x.device)  # [samples, n, 112, 8, 8]
        per_pass = max(1, MAX_ROWS // n)
        total = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, torch.float32))  # half models sum in fp32
        for start in range(0, self.samples, per_pass):
            eps = noise[start : start + per_pass]
            points = (x[None] + self.noise * eps).reshape(-1, *x.shape[1:])
            grad, _, _ = _gradient(network, points, kind, _repeat(indices, len(eps)), None)
            total += grad.reshape(len(eps), n, *x.shape[1:]).sum(0)
        return (total / self.samples).to(x.dtype)


#: Per history step, the piece planes of every piece but the kings: ours P N B R Q, theirs P N B R Q.
_NON_KING_PLANES = (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)


def kings_only(planes: torch.Tensor, input_format: InputFormat | int) -> torch.Tensor:
    """``planes`` ``[N, 112, 8, 8]`` with every piece but the kings taken off: a new tensor.

    In each of the 8 history steps the ten planes of pawns, knights, bishops, rooks and queens (both sides) are
    zeroed; the castling planes (104-107) are zeroed, since no rook is left, and so is the en-passant plane of the
    canonical formats (108), since no pawn is left. Kings, repetition flags, side to move, the rule-50 counter
    and the constant planes are kept, and so is the orientation: a canonical input stays in its own transform.
    For a board encoded from its FEN alone (lc0's history fill) this equals the encoding of the board with
    every piece but the kings removed (:func:`lczerolens.board.remove_pieces`) in the non-canonical formats.

    Example
    -------
    >>> from lczerolens.board import LczeroBoard, encode_boards
    >>> x = encode_boards([LczeroBoard()], 1)
    >>> int(kings_only(x, 1)[0, :104].sum())  # two kings in each of 8 history steps
    16
    """
    from lczerolens.board import InputFormat as Format

    if planes.dim() != 4 or tuple(planes.shape[1:]) != (112, 8, 8):
        raise InputShapeError(f"kings_only takes planes [N, 112, 8, 8], not {tuple(planes.shape)}")
    out = planes.clone()
    rows = [13 * step + p for step in range(8) for p in _NON_KING_PLANES]
    out[:, rows] = 0
    out[:, 104:108] = 0
    if Format(input_format) >= Format.CANONICALIZATION:
        out[:, 108] = 0
    return out


def _repeat(indices: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if indices is None else indices.repeat(k)


def _gradient(
    network: nn.Module, x: torch.Tensor, kind: str, indices: torch.Tensor | None, legal: TopLegalMoves | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(df/dx, f(x), policy indices)`` for the explained output, one forward and one backward pass."""
    x = x.detach().clone().requires_grad_(True)
    output, seed, values, indices = select_output(explained_forward(network, x, kind), kind, indices, legal)
    (grad,) = torch.autograd.grad(output, x, seed)
    return grad, values, indices


def _board_squares(maps: torch.Tensor, boards: list[LczeroBoard], input_format: InputFormat | int) -> torch.Tensor:
    """``[N, 8, 8]`` network orientation -> board orientation, each board its own flip and transform."""
    groups: dict[tuple[bool, int], list[int]] = {}
    for i, board in enumerate(boards):
        groups.setdefault((board.turn, board.canonical_transform(input_format)), []).append(i)
    out = torch.empty_like(maps)
    for members in groups.values():
        index = torch.tensor(members, dtype=torch.long, device=maps.device)
        out[index] = boards[members[0]].network_to_board(maps[index], input_format)
    return out


class OcclusionLens(AttributionLens):
    """Per square, how much the explained output drops when the piece on it is taken off the board.

    ``squares[i]`` (board orientation) holds ``f(position) - f(position without that piece)``; empty squares and
    kings score 0. The changed position is encoded the way lc0 encodes such a position given as a FEN
    (:func:`lczerolens.board.remove_pieces`: castling rights cleared with their rook, an en-passant square
    dropped once no capture is left), and so is the position itself: both are encoded from their FEN alone
    (lc0's history fill), so a board's move history does not enter the comparison. A move target keeps its
    move: its policy index is fixed (in the canonical formats, where a removal may change the board transform,
    the same move is re-encoded in the changed position). All removals of a batch go through the network
    together, in passes of at most 512 boards. ``.planes`` is ``None``; ``.target`` is ``f(position)``.

    Example
    -------
    >>> rel = OcclusionLens().relevance(model, board, target="value")  # doctest: +SKIP
    >>> rel.squares.shape  # doctest: +SKIP
    torch.Size([1, 8, 8])
    """

    method_name = "occlusion"

    def __repr__(self) -> str:
        return "OcclusionLens()"

    def _explain(
        self,
        network: nn.Module,
        input_format: InputFormat | int,
        boards: list[LczeroBoard],
        target: Target,
        *,
        rows: slice,
        **options: Any,
    ) -> Relevance:
        from lczerolens.board import removable_squares, remove_pieces

        n = len(boards)
        legal = TopLegalMoves(boards, input_format) if target.kind == "policy" and target.indices is None else None
        # remove_pieces keeps the board's class: these are LczeroBoards.
        originals = [cast("LczeroBoard", remove_pieces(b, [])) for b in boards]
        changed, owner, where = [], [], []
        for i, board in enumerate(originals):
            for square in removable_squares(board):
                changed.append(remove_pieces(board, [square]))
                owner.append(i)
                where.append(square)
        dtype, device = param_like(network)
        # The positions, then all their removals, each in passes of at most MAX_ROWS boards.
        first = _forward_all(network, originals, input_format, dtype, device, target.kind)
        _, _, values, indices = select_output(first, target.kind, target.indices, legal)
        scores = torch.zeros(n, 64, dtype=torch.float64)
        if changed:
            owners = torch.tensor(owner, dtype=torch.long)
            index = None
            if target.kind == "policy" and indices is not None:  # select_output gives a policy target its indices
                index = _follow_move(originals, changed, owner, indices, input_format)
            rest = _forward_all(network, changed, input_format, dtype, device, target.kind)
            _, _, removed, _ = select_output(rest, target.kind, index, None)
            drop = values.to(torch.float64).cpu()[owners] - removed.to(torch.float64).cpu()
            scores[owners, torch.tensor(where, dtype=torch.long)] = drop
        return Relevance(
            planes=None,
            target=values,
            boards=boards,
            input_format=input_format,
            target_name=target.kind,
            policy_indices=indices if target.kind == "policy" else None,
            squares=scores.reshape(n, 8, 8),
            method=self.method_name,
        )


def _forward_all(
    network: nn.Module,
    boards: Sequence[chess.Board],
    input_format: InputFormat | int,
    dtype: torch.dtype,
    device: torch.device,
    kind: str,
) -> dict[str, torch.Tensor]:
    """The network's outputs on ``boards`` (at least the head a target ``kind`` reads), in passes of at most
    :data:`MAX_ROWS` boards, joined."""
    from lczerolens.board import encode_boards

    outputs: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for start in range(0, len(boards), MAX_ROWS):
            x = encode_boards(boards[start : start + MAX_ROWS], input_format).to(dtype=dtype, device=device)
            outputs.append(explained_forward(network, x, kind))
    if len(outputs) == 1:
        return outputs[0]
    return {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}


def _follow_move(
    originals: list[LczeroBoard],
    changed: Sequence[chess.Board],
    owner: list[int],
    indices: torch.Tensor,
    input_format: InputFormat | int,
) -> torch.Tensor:
    """The explained move's policy index in each changed board: fixed, or re-encoded in canonical formats."""
    owners = torch.tensor(owner, dtype=torch.long)
    if int(input_format) < 3:
        # Formats 1 and 2 only mirror for black, which no removal changes: the index stays.
        return indices.cpu()[owners]
    from lczerolens.board import move_indices

    moves = [originals[i].decode_move(int(indices[i]), input_format) for i in range(len(originals))]
    return move_indices(changed, [moves[i] for i in owner], input_format)
