"""How faithful is an explanation? The piece-removal perturbation test for chess networks.

An attribution gives every square a score (board orientation, ``[8, 8]`` or ``[64]``, python-chess square
indices). The test takes the pieces off the board one at a time, kings never, in the order the scores give:
most relevant first (MoRF, descending signed score) and least relevant first (LeRF, ascending), and records the
explained output ``f_k`` after each of the ``n`` removals. A faithful attribution makes the output fall fast under
MoRF and slowly under LeRF:

- ``AOPC = mean_k (f_0 - f_MoRF_k)``, the area over the MoRF curve;
- ``ABPC = mean_k (f_LeRF_k - f_MoRF_k)``, the area between the LeRF and MoRF curves.

For the move target (the policy logit of the network's top legal move in the original position, its policy index
held fixed while pieces go; in canonical formats, whose board transform may change when the last pawn or castling
right goes, the index follows the same move) both are divided by ``|f_0|``; the value target
(``win_logit - loss_logit`` before lc0's final softmax, or the value logit before tanh for non-WDL nets) is
reported unnormalised, because its ``f_0`` is often near zero. This follows ``FAITHFULNESS.md`` exactly.

Details of a removal:

- after each removal, castling rights whose king or rook is gone are cleared (python-chess's
  ``clean_castling_rights``), and so is an en-passant square that no longer holds: when the double-pushed pawn
  is gone, or every pawn that could take it (:func:`en_passant_holds`);
- the rule-50 counter and the move number are kept;
- the position is evaluated even when it is illegal (the side not to move in check);
- positions are encoded from their FEN alone (lc0's FEN-only history fill), as the published anchors are;
- ties between equal scores are broken by square index (MoRF: lower square first), and the LeRF order is the
  exact reverse of the MoRF order.

Evaluation is batched: every removal step of every position goes through the network in large batches, not one
forward per step, and a board already evaluated (by another method, or for the other target) is not evaluated
again (:func:`cached_outputs`).

Attribution methods share one signature, ``method(model, task) -> Tensor [N, 64]`` (board orientation; see
:data:`METHODS` and :class:`Task`): :func:`random_attribution` (one seed; :func:`evaluate_method` averages the
metrics over 5 seeds), :func:`abs_gradient_attribution`, :func:`gradient_x_input_attribution`,
:func:`occlusion_attribution` (one extra forward per piece), :func:`integrated_gradients_attribution`,
:func:`smoothgrad_attribution` and :func:`lrp_attribution` (the LRP lens, either softmax rule); every method but
``random`` is a lens of :mod:`lczerolens.lenses`.

Example
-------
>>> from lczerolens import LczeroModel, metrics
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> fens = ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"]
>>> task = metrics.prepare(model, fens, target="move")  # doctest: +SKIP
>>> result = metrics.evaluate_method(model, task, "gradient_x_input")  # doctest: +SKIP
>>> print(metrics.bootstrap_mean(result.abpc))  # doctest: +SKIP
1.013 [0.934, 1.160]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import chess
import numpy as np
import torch
from torch import nn

# The piece-removal and move helpers live with the board (lenses use them too); metrics keeps their old names.
from lczerolens.board import (  # noqa: F401
    _lc0_move,
    en_passant_holds,
    move_indices,
    policy_index,
    removable_squares,
    remove_pieces,
)
from lczerolens.errors import InputShapeError, LensError
from lczerolens.lenses.lrp.lens import EPSILON, GAMMA_COMPOSITE

TARGETS = ("move", "value")
#: Seeds of the random baseline; its metrics are the mean over these orders.
RANDOM_SEEDS = (0, 1, 2, 3, 4)
#: Boards per forward pass when evaluating removal steps.
DEFAULT_BATCH_SIZE = 512

# ---------------------------------------------------------------------------------------------------------------
# The network behind a model


def network_of(model: Any) -> nn.Module:
    """The network (the dict-returning module of the network contract) behind ``model``.

    ``model`` is an :class:`lczerolens.LczeroModel` (its ``.network``) or a network itself.
    """
    network = getattr(model, "network", None)
    if isinstance(network, nn.Module):
        return network
    if isinstance(model, nn.Module):
        return model
    raise LensError(f"expected an LczeroModel or an lc0 network (nn.Module), got {type(model).__name__}")


def input_format_of(model: Any):
    """The :class:`lczerolens.InputFormat` the model's network reads."""
    from lczerolens.board import InputFormat

    network = network_of(model)
    fmt = getattr(model, "input_format", None) or getattr(network, "input_format", None)
    if fmt is None:
        raise LensError("the network has no `input_format` attribute (see the network contract)")
    return InputFormat(int(fmt))


def _is_canonical(fmt) -> bool:
    # Formats 3 and up may transform the board; 1 and 2 only mirror for black.
    return int(fmt) >= 3


def encode(boards: Sequence[chess.Board], fmt) -> torch.Tensor:
    """Encode boards as lc0 does (``lczerolens.board.encode_boards``), ``[N, 112, 8, 8]`` float32."""
    from lczerolens.board import encode_boards

    return encode_boards(list(boards), fmt)


def to_board_orientation(boards: Sequence[chess.Board], squares: torch.Tensor, fmt) -> torch.Tensor:
    """Map per-square values ``[N, 8, 8]`` from network orientation to board orientation, ``[N, 64]``.

    Each board undoes its own flip and canonical transform (``LczeroBoard.network_to_board``).
    """
    from lczerolens.board import LczeroBoard

    if squares.dim() != 3 or squares.shape[1:] != (8, 8) or squares.shape[0] != len(boards):
        raise InputShapeError(f"expected [{len(boards)}, 8, 8] per-square values, got {tuple(squares.shape)}")
    lczero_boards = [b if isinstance(b, LczeroBoard) else LczeroBoard.from_board(b) for b in boards]
    rows = [b.network_to_board(squares[i], fmt) for i, b in enumerate(lczero_boards)]
    return torch.stack(rows).reshape(len(boards), 64)


# ---------------------------------------------------------------------------------------------------------------
# Removing pieces


def removal_order(board: chess.Board, scores: torch.Tensor | np.ndarray | Sequence[float]) -> list[int]:
    """The removable squares of ``board`` by descending score (MoRF); reverse it for LeRF.

    ``scores`` holds one value per square in board orientation, ``[8, 8]`` (``[rank, file]``) or ``[64]``.
    Ties go to the lower square index first.

    Example
    -------
    >>> s = torch.zeros(64); s[chess.D1] = 2.0; s[chess.A1] = -1.0
    >>> [chess.square_name(q) for q in removal_order(chess.Board("4k3/8/8/8/8/8/8/R2QK3 w - - 0 1"), s)]
    ['d1', 'a1']
    """
    values = torch.as_tensor(np.asarray(scores, dtype=np.float64) if not torch.is_tensor(scores) else scores)
    values = values.detach().to(torch.float64).reshape(-1)
    if values.numel() != 64:
        raise InputShapeError(f"expected 64 square scores ([8, 8] or [64]), got shape {tuple(np.shape(scores))}")
    if not torch.isfinite(values).all():
        raise LensError("square scores contain NaN or infinity")
    squares = removable_squares(board)
    return sorted(squares, key=lambda s: (-float(values[s]), s))


def removal_path(board: chess.Board, order: Sequence[int]) -> list[chess.Board]:
    """The boards after removing ``order[:k]`` for ``k = 1 .. len(order)``."""
    out = []
    current = board
    for square in order:
        current = remove_pieces(current, [square])
        out.append(current)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The explained output


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise LensError(f"unknown target {target!r}; expected one of {TARGETS}")


def _value_of(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if "wdl_logits" in outputs:
        logits = outputs["wdl_logits"]
        return logits[:, 0] - logits[:, 2]
    if "value_logit" in outputs:
        return outputs["value_logit"].reshape(-1)
    raise LensError(f"the network has no value head (outputs: {sorted(outputs)})")


def _explained(outputs: dict[str, torch.Tensor], target: str, indices: torch.Tensor | None) -> torch.Tensor:
    if target == "value":
        return _value_of(outputs)
    if "policy" not in outputs:
        raise LensError(f"the network has no policy head (outputs: {sorted(outputs)})")
    return outputs["policy"].gather(1, indices.view(-1, 1)).squeeze(1)


def _forward(network: nn.Module, planes: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs = network(planes)
    if not isinstance(outputs, dict) and hasattr(outputs, "items"):
        outputs = dict(outputs.items())
    return outputs


def top_moves(model: Any, boards: Sequence[chess.Board], batch_size: int = DEFAULT_BATCH_SIZE) -> list[chess.Move]:
    """Each board's legal move with the highest policy logit (what the network would play)."""
    from lczerolens.board import LczeroBoard

    network, fmt = network_of(model), input_format_of(model)
    boards = [b if isinstance(b, LczeroBoard) else LczeroBoard.from_board(b) for b in boards]
    moves: list[chess.Move] = []
    with torch.no_grad():
        for start in range(0, len(boards), batch_size):
            chunk = boards[start : start + batch_size]
            policy = _forward(network, encode(chunk, fmt))["policy"]
            for row, board in zip(policy, chunk, strict=True):
                legal = list(board.legal_moves)
                if not legal:
                    raise LensError(f"no legal move to explain in {board.fen()}")
                idx = board.legal_move_indices(fmt)
                moves.append(legal[int(row[idx].argmax())])
    return moves


def explained_outputs(
    model: Any,
    boards: Sequence[chess.Board],
    target: str,
    indices: torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """The explained output of each board, float64 ``[N]``: a policy logit or the value logit.

    For ``target="move"``, ``indices[i]`` is the policy index read on board ``i`` (see :func:`move_indices`).
    """
    _check_target(target)
    if target == "move" and (indices is None or len(indices) != len(boards)):
        raise InputShapeError("the move target needs one policy index per board")
    move, value = _evaluate(model, boards, indices if target == "move" else None, target == "value", batch_size)
    return move if target == "move" else value


def _evaluate(
    model: Any, boards: Sequence[chess.Board], indices: torch.Tensor | None, need_value: bool, batch_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Policy logits at ``indices`` (when given) and the value logit (when the net has one, or raise if needed)."""
    network, fmt = network_of(model), input_format_of(model)
    moves, values = [], []
    with torch.no_grad():
        for start in range(0, len(boards), batch_size):
            outputs = _forward(network, encode(boards[start : start + batch_size], fmt))
            if indices is not None:
                idx = indices[start : start + batch_size]
                moves.append(_explained(outputs, "move", idx).to(torch.float64))
            if need_value or "wdl_logits" in outputs or "value_logit" in outputs:
                values.append(_value_of(outputs).to(torch.float64))
    empty = torch.zeros(0, dtype=torch.float64)
    move = (torch.cat(moves) if moves else empty) if indices is not None else None
    value = (torch.cat(values) if values else empty) if values or not boards else None
    return move, value


# ---------------------------------------------------------------------------------------------------------------
# A set of positions to explain


@dataclass
class Task:
    """Positions with what is explained on each: built by :func:`prepare`.

    Attributes
    ----------
    boards : FEN-only :class:`lczerolens.LczeroBoard` copies of the positions.
    target : ``"move"`` or ``"value"``.
    moves : the network's top legal move per board (``target="move"``), else ``None``.
    indices : the policy index of that move in each original position, ``[N]`` (``target="move"``).
    f0 : the explained output on the original positions, float64 ``[N]``.
    cache : explained outputs already computed, by (FEN, policy index): methods that remove the same pieces
        (the bare-kings end of every path, equal orders) share them instead of evaluating them again.
    """

    boards: list[chess.Board]
    target: str
    moves: list[chess.Move] | None
    indices: torch.Tensor | None
    f0: torch.Tensor
    cache: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.boards)

    def subset(self, rows: slice) -> Task:
        """The task restricted to ``rows`` of its positions (sharing the cache)."""
        return Task(
            self.boards[rows],
            self.target,
            None if self.moves is None else self.moves[rows],
            None if self.indices is None else self.indices[rows],
            self.f0[rows],
            self.cache,
        )


def fen_only(boards: Sequence[chess.Board | str]) -> list[chess.Board]:
    """FEN-only :class:`lczerolens.LczeroBoard` copies (no move history) of boards or FEN strings."""
    from lczerolens.board import LczeroBoard

    out = []
    for b in boards:
        fen = b if isinstance(b, str) else b.fen(en_passant="fen")
        board = LczeroBoard(fen)
        if board.ep_square is not None and not en_passant_holds(board):
            board.ep_square = None
        out.append(board)
    return out


def prepare(
    model: Any,
    boards: Sequence[chess.Board | str],
    target: str = "move",
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache: dict[tuple[str, int], float] | None = None,
) -> Task:
    """Fix what is explained on each position: the top legal move's logit, or the value logit.

    Every position must have at least one piece besides the kings (and a legal move, for the move target).
    ``cache`` may be shared by the tasks of one model (see :func:`cached_outputs`); never across models.
    """
    _check_target(target)
    fen_boards = fen_only(boards)
    for b in fen_boards:
        if not removable_squares(b):
            raise LensError(f"nothing to remove besides the kings in {b.fen()}")
    fmt = input_format_of(model)
    moves = indices = None
    if target == "move":
        moves = top_moves(model, fen_boards, batch_size)
        indices = move_indices(fen_boards, moves, fmt)
    f0 = explained_outputs(model, fen_boards, target, indices, batch_size)
    return Task(fen_boards, target, moves, indices, f0, {} if cache is None else cache)


def cached_outputs(
    model: Any,
    task: Task,
    boards: Sequence[chess.Board],
    indices: torch.Tensor | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """:func:`explained_outputs` of ``boards``, evaluating only those not yet in ``task.cache``.

    The cache is keyed by (FEN, policy index), ``-1`` standing for the value; each forward pass stores the value
    too, so a value task sharing the cache of a move task (same model, same positions) reuses those boards.
    """
    keys = [(b.fen(en_passant="fen"), -1 if indices is None else int(indices[i])) for i, b in enumerate(boards)]
    todo: dict[tuple[str, int], int] = {}
    for i, key in enumerate(keys):
        if key not in task.cache and key not in todo:
            todo[key] = i
    if todo:
        rows = list(todo.values())
        idx = None if indices is None else indices[rows]
        move, value = _evaluate(model, [boards[i] for i in rows], idx, indices is None, batch_size)
        if move is not None:
            task.cache.update(zip(todo, move.tolist(), strict=True))
        if value is not None:
            task.cache.update(((key[0], -1), v) for key, v in zip(todo, value.tolist(), strict=True))
    return torch.tensor([task.cache[k] for k in keys], dtype=torch.float64)


def _indices_for(task: Task, i: int, boards: Sequence[chess.Board], fmt) -> torch.Tensor | None:
    if task.target != "move":
        return None
    if not _is_canonical(fmt):
        # The index depends on the side to move only, which no removal changes: it stays fixed.
        return task.indices[i].repeat(len(boards))
    # A canonical transform may change when castling rights go: follow the same move through it.
    return move_indices(boards, [task.moves[i]] * len(boards), fmt)


# ---------------------------------------------------------------------------------------------------------------
# Curves and their areas


@dataclass
class Curves:
    """Explained output along the removal paths of ``N`` positions (float64).

    ``morf[i, k - 1]`` and ``lerf[i, k - 1]`` hold ``f_k`` for ``k = 1 .. n[i]``; later entries are NaN.
    """

    target: str
    f0: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    n: torch.Tensor

    def _scale(self) -> torch.Tensor:
        return self.f0.abs() if self.target == "move" else torch.ones_like(self.f0)

    def aopc(self) -> torch.Tensor:
        """Per position: mean over k of ``f_0 - f_MoRF_k`` (divided by ``|f_0|`` for the move target)."""
        drop = (self.f0[:, None] - self.morf).nan_to_num(0.0).sum(1) / self.n
        return drop / self._scale()

    def abpc(self) -> torch.Tensor:
        """Per position: mean over k of ``f_LeRF_k - f_MoRF_k`` (divided by ``|f_0|`` for the move target)."""
        gap = (self.lerf - self.morf).nan_to_num(0.0).sum(1) / self.n
        return gap / self._scale()


def perturbation_curves(model: Any, task: Task, scores: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> Curves:
    """MoRF and LeRF curves of every position of ``task`` under the square ``scores`` ``[N, 64]`` or ``[N, 8, 8]``.

    All removal steps of all positions are evaluated together, ``batch_size`` boards per forward pass.
    """
    n_pos = len(task)
    scores = torch.as_tensor(scores)
    if scores.shape[0] != n_pos or scores[0].numel() != 64:
        raise InputShapeError(f"expected scores [{n_pos}, 64] or [{n_pos}, 8, 8], got {tuple(scores.shape)}")
    scores = scores.reshape(n_pos, 64)
    fmt = input_format_of(model)
    all_boards: list[chess.Board] = []
    all_indices: list[torch.Tensor] = []
    lengths = []
    for i, board in enumerate(task.boards):
        order = removal_order(board, scores[i])
        morf = removal_path(board, order)
        lerf = removal_path(board, order[::-1])
        path = morf + lerf
        all_boards.extend(path)
        if task.target == "move":
            all_indices.append(_indices_for(task, i, path, fmt))
        lengths.append(len(order))
    indices = torch.cat(all_indices) if all_indices else None
    values = cached_outputs(model, task, all_boards, indices, batch_size)
    width = max(lengths)
    morf_t = torch.full((n_pos, width), float("nan"), dtype=torch.float64)
    lerf_t = morf_t.clone()
    at = 0
    for i, n in enumerate(lengths):
        morf_t[i, :n] = values[at : at + n]
        lerf_t[i, :n] = values[at + n : at + 2 * n]
        at += 2 * n
    return Curves(task.target, task.f0.clone(), morf_t, lerf_t, torch.tensor(lengths, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# Attribution methods: (model, task) -> [N, 64] square scores in board orientation


def random_attribution(model: Any, task: Task, seed: int = 0) -> torch.Tensor:
    """Uniform random square scores (a random removal order), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(len(task), 64, generator=gen, dtype=torch.float64)


def _lens_model(model: Any) -> Any:
    from lczerolens.model import LczeroModel

    return model if isinstance(model, LczeroModel) else LczeroModel(network_of(model))


def _lens_target(task: Task) -> Any:
    """The task's explained outputs in the lenses' target language: the fixed policy indices, or ``"value"``."""
    return task.indices if task.target == "move" else "value"


def _lens_scores(lens: Any, model: Any, task: Task, batch_size: int | None) -> torch.Tensor:
    """``lens``'s square scores for ``task``, ``[N, 64]`` float64, board orientation."""
    relevance = lens.relevance(_lens_model(model), task.boards, target=_lens_target(task), batch_size=batch_size)
    return relevance.squares.detach().reshape(len(task), 64).to(torch.float64)


def abs_gradient_attribution(model: Any, task: Task, batch_size: int = 256) -> torch.Tensor:
    """Per square, the sum over the 112 input planes of the gradient's magnitude ``|df/dx|``
    (:class:`lczerolens.lenses.GradientLens` ``("gradient")``)."""
    from lczerolens.lenses import GradientLens

    return _lens_scores(GradientLens("gradient"), model, task, batch_size)


def gradient_x_input_attribution(model: Any, task: Task, batch_size: int = 256) -> torch.Tensor:
    """Per square, the sum over the 112 input planes of gradient times input, ``x * df/dx``
    (:class:`lczerolens.lenses.GradientLens` ``("gradient_x_input")``)."""
    from lczerolens.lenses import GradientLens

    return _lens_scores(GradientLens("gradient_x_input"), model, task, batch_size)


def integrated_gradients_attribution(model: Any, task: Task, steps: int = 32, batch_size: int = 16) -> torch.Tensor:
    """Per square, integrated gradients from the all-zero input summed over the planes
    (:class:`lczerolens.lenses.GradientLens` ``("integrated_gradients", steps=steps)``)."""
    from lczerolens.lenses import GradientLens

    return _lens_scores(GradientLens("integrated_gradients", steps=steps), model, task, batch_size)


def smoothgrad_attribution(
    model: Any, task: Task, samples: int = 16, noise: float = 0.1, batch_size: int = 32
) -> torch.Tensor:
    """Per square, the magnitude of the gradient averaged over noisy copies, summed over the planes
    (:class:`lczerolens.lenses.GradientLens` ``("smoothgrad")``, seed 0)."""
    from lczerolens.lenses import GradientLens

    return _lens_scores(GradientLens("smoothgrad", samples=samples, noise=noise), model, task, batch_size)


def occlusion_attribution(model: Any, task: Task, batch_size: int | None = None) -> torch.Tensor:
    """Per piece, the drop of the explained output when that piece alone is removed, ``f_0 - f(x without it)``
    (:class:`lczerolens.lenses.OcclusionLens`).

    Costs one forward pass per piece plus one per position (batched across pieces and positions). Kings and
    empty squares score 0. Not through the task's cache: the time measured is the method's own cost.
    """
    from lczerolens.lenses import OcclusionLens

    return _lens_scores(OcclusionLens(), model, task, batch_size)


def lrp_attribution(
    model: Any,
    task: Task,
    softmax: str | None = "attnlrp",
    epsilon: float | None = 1e-6,
    batch_size: int = 64,
    **lens_options: Any,
) -> torch.Tensor:
    """Relevance per square from :class:`lczerolens.lenses.LrpLens` (summed over planes, board orientation).

    ``lens_options`` go to the lens (e.g. ``**EPSILON`` or ``conv_rule="gamma", gamma=0.25, ...``); options
    left out take the network family's default composite (``LrpLens()``).
    """
    from lczerolens.lenses import LrpLens

    return _lens_scores(LrpLens(epsilon=epsilon, softmax=softmax, **lens_options), model, task, batch_size)


#: The lens options of the ``lrp_gamma`` method (the lens's residual-net gamma composite).
GAMMA_LENS_OPTIONS: dict[str, Any] = GAMMA_COMPOSITE

#: The methods of the benchmark by name. ``random`` is evaluated over :data:`RANDOM_SEEDS`.
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "random": random_attribution,
    "abs_gradient": abs_gradient_attribution,
    "gradient_x_input": gradient_x_input_attribution,
    "occlusion": occlusion_attribution,
    "integrated_gradients": integrated_gradients_attribution,
    "smoothgrad": smoothgrad_attribution,
    # Epsilon-LRP in either softmax mode (the EPSILON preset); "lrp_default" is what LrpLens() applies.
    "lrp_attnlrp": lambda model, task: lrp_attribution(model, task, **{**EPSILON, "softmax": "attnlrp"}),
    "lrp_cp": lambda model, task: lrp_attribution(model, task, **{**EPSILON, "softmax": "cp"}),
    "lrp_default": lambda model, task: lrp_attribution(model, task, epsilon=None, softmax=None),
    # Gamma rule on the convolutions that feed a ReLU directly (residual nets; elsewhere plain epsilon-LRP).
    "lrp_gamma": lambda model, task: lrp_attribution(model, task, **GAMMA_LENS_OPTIONS),
}


@dataclass
class MethodResult:
    """Per-position AOPC and ABPC of one method, and the time it took to compute its attributions."""

    name: str
    target: str
    aopc: torch.Tensor
    abpc: torch.Tensor
    seconds_per_position: float


def evaluate_method(
    model: Any,
    task: Task,
    method: str | Callable[..., torch.Tensor],
    name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    warmup: bool = True,
) -> MethodResult:
    """AOPC and ABPC per position of one attribution ``method`` (a name in :data:`METHODS` or a callable).

    ``"random"`` is the mean of the per-position metrics over the orders of :data:`RANDOM_SEEDS`. The time
    recorded is that of the attribution alone (per position), not of the perturbation evaluation; with
    ``warmup`` the method first runs once on one position, untimed (first-call costs are not per position).
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise LensError(f"unknown attribution method {method!r}; expected one of {sorted(METHODS)}")
        name = name or method
        fn = METHODS[method]
    else:
        fn, name = method, name or getattr(method, "__name__", "method")
    if name == "random" and fn is random_attribution:
        aopc, abpc, secs = [], [], 0.0
        for seed in RANDOM_SEEDS:
            t0 = time.perf_counter()
            scores = random_attribution(model, task, seed)
            secs += time.perf_counter() - t0
            curves = perturbation_curves(model, task, scores, batch_size)
            aopc.append(curves.aopc())
            abpc.append(curves.abpc())
        per_position = secs / len(RANDOM_SEEDS) / len(task)
        return MethodResult(name, task.target, torch.stack(aopc).mean(0), torch.stack(abpc).mean(0), per_position)
    if warmup:
        fn(model, task.subset(slice(0, 1)))
    t0 = time.perf_counter()
    scores = fn(model, task)
    secs = time.perf_counter() - t0
    curves = perturbation_curves(model, task, scores, batch_size)
    return MethodResult(name, task.target, curves.aopc(), curves.abpc(), secs / len(task))


# ---------------------------------------------------------------------------------------------------------------
# Averages with bootstrap intervals


class Estimate(NamedTuple):
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_mean(
    values: torch.Tensor | np.ndarray | Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval (``confidence``, fixed ``seed``).

    Example
    -------
    >>> est = bootstrap_mean([1.0, 2.0, 3.0, 4.0])
    >>> est.mean
    2.5
    >>> 1.0 <= est.low <= 2.5 <= est.high <= 4.0
    True
    """
    x = np.asarray(values.detach().cpu().numpy() if torch.is_tensor(values) else values, dtype=np.float64)
    x = x.reshape(-1)
    if x.size == 0:
        raise InputShapeError("cannot average an empty set of values")
    if not np.isfinite(x).all():
        raise LensError("values contain NaN or infinity")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(float(x.mean()), float(low), float(high))


def paired_difference(
    a: torch.Tensor | np.ndarray | Sequence[float],
    b: torch.Tensor | np.ndarray | Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of the per-position differences ``a - b`` with a bootstrap interval (same positions in both).

    An interval that excludes 0 says one method beats the other on these positions.
    """
    x = np.asarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a, dtype=np.float64).reshape(-1)
    y = np.asarray(b.detach().cpu().numpy() if torch.is_tensor(b) else b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise InputShapeError(f"paired values need the same positions: {x.shape} vs {y.shape}")
    return bootstrap_mean(x - y, n_resamples, confidence, seed)
