"""What every lens shares: boards in, targets parsed, batches, progress, device and dtype taken from the model.

A lens is a small object holding its settings. An *attribution* lens (:class:`AttributionLens`) answers
``lens.relevance(model, boards, target=None, *, batch_size=None, progress=False) -> Relevance`` and only has to
say how it explains one batch (:meth:`AttributionLens._explain`); this module does everything around that.

The target language, the same for every lens:

- ``None``: each board's legal move with the highest policy logit;
- a move: a ``chess.Move``, a UCI string (``"e2e4"``, castling as ``"e1g1"`` or king-takes-rook ``"e1h1"``), a SAN
  string (``"Nf3"``, ``"O-O"``) or a policy index (``int`` in ``[0, 1858)``); one per board for a batch (a list,
  tuple or 1-D tensor);
- a head: ``"value"``, ``"win"``, ``"draw"``, ``"loss"``, ``"mlh"``.

Example
-------
>>> from lczerolens import LczeroBoard
>>> parse_target("Nf3", [LczeroBoard()], 1)
Target(kind='policy', indices=tensor([159]))
>>> parse_target("value", [LczeroBoard()], 1).kind
'value'
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import chess
import torch
from torch import nn

from lczerolens.board import warn_if_invalid
from lczerolens.errors import InputShapeError, InvalidMoveError, LensError
from lczerolens.lenses.tree import network_of
from lczerolens.model.precision import in_ieee_float32

if TYPE_CHECKING:
    from lczerolens.board import InputFormat, LczeroBoard
    from lczerolens.lenses.relevance import Relevance

__all__ = [
    "HEAD_TARGETS",
    "Target",
    "TargetLike",
    "BoardsLike",
    "ModelLike",
    "AttributionLens",
    "as_boards",
    "parse_target",
    "model_parts",
    "param_like",
    "explain_dtype",
    "select_output",
    "chunks",
]

#: Targets that name a head output instead of a move.
HEAD_TARGETS = ("value", "win", "draw", "loss", "mlh")

#: One move, in any of the forms a target accepts.
MoveLike: TypeAlias = chess.Move | str | int
#: What ``target=`` accepts.
TargetLike: TypeAlias = MoveLike | Sequence[MoveLike] | torch.Tensor | None
#: What ``boards`` accepts: one board or a sequence of them (plain ``chess.Board`` keep their move stack).
BoardsLike: TypeAlias = chess.Board | Sequence[chess.Board]
#: What ``model`` accepts: an ``LczeroModel`` (an ``nn.Module``) or a network following the network contract.
ModelLike: TypeAlias = nn.Module


@dataclass(frozen=True)
class Target:
    """A parsed target: ``kind`` is ``"policy"`` or a head name; ``indices`` ``[N]`` policy indices or ``None``.

    ``indices=None`` with ``kind="policy"`` means each board's top legal move, chosen after the forward pass.
    """

    kind: str
    indices: torch.Tensor | None = None

    def __getitem__(self, rows: slice) -> Target:
        return Target(self.kind, None if self.indices is None else self.indices[rows])


def as_boards(boards: BoardsLike) -> list[LczeroBoard]:
    """``boards`` as a non-empty list of :class:`LczeroBoard` (plain ``chess.Board`` converted with history)."""
    from lczerolens.board import LczeroBoard

    if isinstance(boards, chess.Board):
        boards = [boards]
    if isinstance(boards, torch.Tensor):
        raise InputShapeError(
            "a lens needs the boards to decode moves and orientation; pass them as `boards` (and a tensor of "
            "planes as `planes=` where the lens takes one)"
        )
    if isinstance(boards, (str, bytes)):
        raise InputShapeError(
            f"boards must be an LczeroBoard or a sequence of them, not a {type(boards).__name__} ({boards!r:.60}); "
            "build boards with lczerolens.LczeroBoard(fen)"
        )
    if not isinstance(boards, Sequence):
        if isinstance(boards, Iterator) or hasattr(boards, "__iter__"):
            boards = list(boards)
        else:
            raise InputShapeError(f"boards must be an LczeroBoard or a sequence of them, not {type(boards).__name__}")
    given = list(boards)
    if not given:
        raise InputShapeError("boards is empty: pass at least one LczeroBoard")
    board_list: list[LczeroBoard] = []
    for i, board in enumerate(given):
        if isinstance(board, LczeroBoard):
            board_list.append(board)
            continue
        if isinstance(board, chess.Board):
            board_list.append(LczeroBoard.from_board(board))  # its move stack is its history
            continue
        raise InputShapeError(
            f"boards[{i}] is a {type(board).__name__} ({board!r:.60}), not an LczeroBoard; "
            "build boards with lczerolens.LczeroBoard(fen)"
        )
    return board_list


def model_parts(model: ModelLike) -> tuple[nn.Module, InputFormat]:
    """``(network, input_format)`` of an ``LczeroModel`` or of a network following the network contract."""
    network = network_of(model)
    if not isinstance(network, nn.Module):
        raise LensError(f"{type(model).__name__} is not a network: pass an LczeroModel (LczeroModel.from_path(...))")
    input_format = getattr(model, "input_format", None) or getattr(network, "input_format", None)
    if input_format is None:
        raise LensError(f"{type(model).__name__} has no input_format: pass an LczeroModel or a network")
    return network, input_format


def param_like(network: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The floating dtype and the device of ``network``'s first floating parameter (or buffer)."""
    for tensor in network.parameters():
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    for buffer in network.buffers():
        if buffer.is_floating_point():
            return buffer.dtype, buffer.device
    return torch.get_default_dtype(), torch.device("cpu")


def explain_dtype(network: nn.Module) -> torch.dtype | None:
    """The dtype a lens computes in for ``network``: float32 for half-precision nets, else ``None`` (its own)."""
    dtype, _ = param_like(network)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None


def _hint() -> str:
    return f" (a target is a legal move, one of {HEAD_TARGETS}, or None for the top move)"


def _head_suggestion(text: str) -> str | None:
    """The head name ``text`` most likely meant (``"Value"`` -> ``"value"``), or ``None``."""
    lowered = text.strip().lower()
    if lowered in HEAD_TARGETS:
        return lowered
    close = difflib.get_close_matches(lowered, HEAD_TARGETS, n=1, cutoff=0.6)
    return close[0] if close else None


def parse_move(move: object, board: LczeroBoard, input_format: InputFormat | int) -> int:
    """Policy index of ``move`` (``chess.Move``, UCI or SAN string, or index) in ``board``; raises if illegal."""
    if isinstance(move, torch.Tensor) and move.dim() == 0 and not move.is_floating_point():
        move = int(move)
    if isinstance(move, bool) or isinstance(move, (bytes, bytearray)):
        raise InvalidMoveError(f"target {move!r} is not a move{_hint()}")
    if isinstance(move, numbers.Integral):
        if not 0 <= int(move) < 1858:
            raise InvalidMoveError(f"policy index {move} is outside [0, 1858)")
        return int(move)
    if not isinstance(move, (str, chess.Move)):
        raise InvalidMoveError(
            f"target {move!r} is not a move: use a chess.Move, a UCI or SAN string, or a policy index{_hint()}"
        )
    try:
        return int(board.encode_move(move, input_format))
    except InvalidMoveError as error:
        if isinstance(move, str):
            suggestion = _head_suggestion(move)
            if suggestion is not None:
                raise InvalidMoveError(
                    f"target {move!r} is not a move nor a head; did you mean {suggestion!r}?"
                ) from None
        raise InvalidMoveError(f"target {move!r}: {error}{_hint()}") from None


def parse_target(target: TargetLike, boards: Sequence[LczeroBoard], input_format: InputFormat | int) -> Target:
    """Parse ``target`` (see the module docstring) for ``boards``; raises a package error naming what is wrong."""
    n = len(boards)
    if target is None:
        return Target("policy")
    if isinstance(target, str) and target in HEAD_TARGETS:
        return Target(target)
    if isinstance(target, (bytes, bytearray)):
        raise InvalidMoveError(f"target {target!r} is bytes; pass a str such as {target.decode(errors='replace')!r}")
    if isinstance(target, torch.Tensor) and target.dim() == 0:
        # An integer (or bool) tensor's item is an int; a float scalar stays a tensor and is refused below.
        target = cast(int, target.item()) if not target.is_floating_point() else target
    if isinstance(target, torch.Tensor):
        if target.dim() != 1 or target.is_floating_point():
            raise InputShapeError(
                f"a tensor target must hold one integer policy index per board, shape ({n},); got "
                f"{target.dtype} {tuple(target.shape)}"
            )
        target = target.tolist()
    if isinstance(target, (str, chess.Move, numbers.Integral)) and not isinstance(target, bool):
        if n != 1:
            raise InputShapeError(f"target {target!r} is one move for {n} boards; pass one move per board")
        return Target("policy", torch.tensor([parse_move(target, boards[0], input_format)], dtype=torch.long))
    if isinstance(target, Sequence) and not isinstance(target, str):
        moves = list(target)
        if len(moves) != n:
            raise InputShapeError(f"got {len(moves)} target moves for {n} boards; pass one move per board")
        for move in moves:
            if isinstance(move, str) and move in HEAD_TARGETS:
                raise LensError(f"target {move!r} names a head: pass it alone (target={move!r}), not in a list")
        indices = [parse_move(m, b, input_format) for m, b in zip(moves, boards, strict=True)]
        return Target("policy", torch.tensor(indices, dtype=torch.long))
    raise LensError(f"target {target!r} is not None, a move, a list of moves, nor one of {HEAD_TARGETS}")


def check_head(kind: str, network: nn.Module) -> None:
    """Raise :class:`LensError` if ``network`` declares its heads and lacks the one ``kind`` needs."""
    heads = tuple(getattr(network, "heads", ()) or ())
    if not heads:
        return  # undeclared: checked against the outputs
    need = {"policy": "policy", "win": "wdl", "draw": "wdl", "loss": "wdl", "mlh": "mlh"}.get(kind)
    if kind == "value" and not ({"wdl", "value"} & set(heads)):
        raise LensError(f"target 'value' needs a value or WDL head; this network has {heads}")
    if need is not None and need not in heads:
        raise LensError(f"target {kind!r} needs the {need!r} head; this network has {heads}")


def legal_indices(boards: Sequence[LczeroBoard], input_format: InputFormat | int) -> list[torch.Tensor]:
    """Each board's legal move indices; raises :class:`LensError` for a board without legal moves."""
    legal = [board.legal_move_indices(input_format) for board in boards]
    for board, moves in zip(boards, legal, strict=True):
        if not len(moves):
            raise _no_legal_move(board)
    return legal


def _no_legal_move(board: LczeroBoard) -> LensError:
    return LensError(f"board {board.fen()!r} has no legal move to explain; choose target='value'")


class TopLegalMoves:
    """Each board's top legal move in a policy, found without listing every legal move of every board.

    Made before the forward pass, it raises :class:`LensError` for a board without legal moves, as
    :func:`legal_indices` does. :meth:`choose` gives what ``top_legal(policy, legal_indices(boards, fmt))``
    gives: the legal move with the highest logit, the lowest index among equal logits. It reads each row's
    ``candidates`` highest entries in that order and keeps the first that is a legal move here; a row whose
    candidates hold none, or whose first legal one ties with the last candidate (an equal entry may lie beyond
    them), falls back to the full list. Once 16 rows, and more than half of the rows tried, have fallen back (a
    net that gives illegal moves its highest logits, as nets trained with them masked out can), the remaining rows
    go to the full list directly. Generating every legal move (python-chess) was most of the top-move target's
    time on a GPU (77 ms of 117 ms for 1024 positions on an H200).
    """

    def __init__(self, boards: Sequence[LczeroBoard], input_format: InputFormat | int, candidates: int = 8) -> None:
        for board in boards:
            if not any(board.generate_legal_moves()):
                raise _no_legal_move(board)
        self.boards, self.input_format, self.candidates = list(boards), input_format, candidates

    def choose(self, policy: torch.Tensor) -> torch.Tensor:
        """``[N]`` policy indices, one per board, on ``policy``'s device."""
        size = policy.shape[1]
        k = min(self.candidates, size)
        values, order = policy.detach().topk(k, dim=1)
        value_rows, index_rows = values.cpu().tolist(), order.cpu().tolist()
        chosen: list[int] = [0] * len(self.boards)
        full: list[int] = []  # rows whose top legal move needs every legal move listed
        tried = 0
        for row, board in enumerate(self.boards):
            # Nets trained with illegal moves masked out can give them the highest logits; where the candidates
            # keep missing, testing them is wasted work, so the remaining rows go straight to the full list.
            if len(full) >= _MISSES_BEFORE_LISTING and 2 * len(full) > tried:
                full.append(row)
                continue
            tried += 1
            orientation = board._move_orientation(self.input_format)
            pairs = sorted(zip(value_rows[row], index_rows[row], strict=True), key=lambda p: (-p[0], p[1]))
            found = next((p for p in pairs if board._is_legal_index(p[1], orientation)), None)
            if found is None or (k < size and found[0] == pairs[-1][0]):
                full.append(row)
            else:
                chosen[row] = found[1]
        if full:
            legal = legal_indices([self.boards[row] for row in full], self.input_format)
            for row, index in zip(full, top_legal(policy.detach()[full], legal).tolist(), strict=True):
                chosen[row] = index
        return torch.tensor(chosen, dtype=torch.long, device=policy.device)


#: :meth:`TopLegalMoves.choose` lists every legal move for the remaining rows once this many rows, and more than
#: half of those tried, had no legal move among their candidates.
_MISSES_BEFORE_LISTING = 16


def _output(outputs: Mapping[str, torch.Tensor], key: str, kind: str) -> torch.Tensor:
    if key not in outputs:
        raise LensError(f"target {kind!r} needs the network output {key!r}; it returns {sorted(outputs)}")
    return outputs[key]


#: The value target's weights on (win, draw, loss) logits, and those of the single WDL logits.
WDL_WEIGHTS = {"value": (1.0, 0.0, -1.0), "win": (1.0, 0.0, 0.0), "draw": (0.0, 1.0, 0.0), "loss": (0.0, 0.0, 1.0)}


def select_output(
    outputs: Mapping[str, torch.Tensor],
    kind: str,
    indices: torch.Tensor | None,
    legal: list[torch.Tensor] | TopLegalMoves | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The output tensor to explain, its gradient seed, the explained values ``[N]`` and the policy indices.

    ``value`` explains ``win_logit - loss_logit`` for WDL nets (the pre-tanh value logit otherwise); WDL targets
    the logit before the softmax; a move its raw policy logit; ``indices=None`` picks each board's top legal move.
    """
    if kind == "policy":
        policy = _output(outputs, "policy", kind)
        if indices is None:
            if legal is None:
                raise LensError("the top-move target needs the boards' legal moves")
            indices = legal.choose(policy) if isinstance(legal, TopLegalMoves) else top_legal(policy.detach(), legal)
        indices = indices.to(policy.device)
        seed = torch.zeros_like(policy)
        seed.scatter_(1, indices[:, None], 1.0)
        values = policy.detach().gather(1, indices[:, None])[:, 0]
        return policy, seed, values, indices.cpu()
    if kind == "mlh":
        mlh = _output(outputs, "mlh", kind)
        return mlh, torch.ones_like(mlh), mlh.detach().reshape(-1), None
    if kind == "value" and "wdl_logits" not in outputs:
        logit = _output(outputs, "value_logit", kind)
        return logit, torch.ones_like(logit), logit.detach().reshape(-1), None
    wdl = _output(outputs, "wdl_logits", kind)
    w = torch.tensor(WDL_WEIGHTS[kind], dtype=wdl.dtype, device=wdl.device)
    seed = w.expand_as(wdl).contiguous()
    return wdl, seed, wdl.detach() @ w, None


def top_legal(policy: torch.Tensor, legal: list[torch.Tensor]) -> torch.Tensor:
    """Each board's legal move index with the highest logit (one masked argmax for the batch)."""
    rows = torch.repeat_interleave(torch.arange(len(legal)), torch.tensor([len(i) for i in legal]))
    mask = torch.zeros(policy.shape, dtype=torch.bool, device=policy.device)
    mask[rows.to(policy.device), torch.cat(legal).to(policy.device)] = True
    return policy.masked_fill(~mask, float("-inf")).argmax(dim=1)


def check_batch_size(batch_size: object) -> int | None:
    """``batch_size`` as a positive int or ``None``; raises :class:`LensError` otherwise."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise LensError(f"batch_size={batch_size!r} must be a positive integer or None (one batch)")
    return int(batch_size)


def chunks(n: int, batch_size: int | None, progress: bool = False, desc: str = "") -> Iterator[slice]:
    """Row slices of at most ``batch_size`` rows covering ``range(n)``, with a tqdm bar when ``progress``."""
    size = n if batch_size is None else batch_size
    starts = range(0, n, max(size, 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc or None, unit="pos")
    try:
        for start in starts:
            stop = min(start + size, n)
            yield slice(start, stop)
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()


class AttributionLens:
    """Base of the lenses that give every input plane a score for one explained output per board.

    Subclasses implement :meth:`_explain` for one batch; :meth:`relevance` parses boards and targets once,
    splits the work into batches of ``batch_size`` (the result is the same as one call on everything) and joins
    the parts with :meth:`Relevance.cat`.
    """

    #: Name shown in captions ("LRP relevance of ...").
    method_name = "relevance"

    @in_ieee_float32
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
        """Explain one output per board (see the module docstring for ``target``).

        Parameters
        ----------
        model : LczeroModel or network
        boards : LczeroBoard or sequence of LczeroBoard
            The positions, with their move history (plain ``chess.Board`` objects are converted).
        target : None, move, sequence of moves, or head name
        batch_size : int, optional
            At most this many boards per forward/backward pass (bounds memory); ``None`` means one batch.
        progress : bool
            Show a tqdm progress bar over the boards.

        Returns
        -------
        Relevance
        """
        from lczerolens.lenses.relevance import Relevance

        network, input_format = model_parts(model)
        board_list = as_boards(boards)
        warn_if_invalid(board_list)
        parsed = parse_target(target, board_list, input_format)
        check_head(parsed.kind, network)
        size = check_batch_size(batch_size)
        self._check_options(network, options)
        parts = [
            self._explain(network, input_format, board_list[rows], parsed[rows], rows=rows, **options)
            for rows in chunks(len(board_list), size, progress, desc=type(self).__name__)
        ]
        return parts[0] if len(parts) == 1 else Relevance.cat(parts)

    def _check_options(self, network: nn.Module, options: Mapping[str, Any]) -> None:
        """Raise before any work if ``options`` cannot apply to ``network`` (subclasses extend)."""
        if options:
            raise LensError(f"{type(self).__name__}.relevance got unknown options {sorted(options)}")

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
        raise NotImplementedError
