"""Built-in concepts, computed exactly from python-chess's bitboards, a batch at a time.

Per-square labels are ``[N, 64]`` in board orientation (python-chess square index: ``labels[i, chess.E4]``).
Each board's 64-bit masks (python ints) are gathered into a ``uint64`` array and unpacked with numpy in one call
per batch, so no Python loop runs over squares.

Attack semantics are python-chess's (:meth:`chess.Board.attackers`, :meth:`chess.Board.is_attacked_by`): a
piece attacks the squares it could capture on if an enemy piece stood there, stopping at the first piece of
either colour on a line (no x-ray: a rook behind a rook does not attack through it), pinned pieces still attack
(pins are ignored, as in python-chess), pawns attack diagonally forward, and a piece "defends" a square held by
its own side exactly when it attacks it in that sense. En passant is not an attack on the pawn's square.

Example
-------
>>> import chess
>>> from lczerolens.concepts import PieceOnSquare, HangingPiece
>>> board = chess.Board("4k3/8/8/3q4/4P3/8/8/4K3 w - - 0 1")
>>> HangingPiece().labels([board])[0, chess.D5].item()  # attacked by the e4 pawn, not defended
1
>>> PieceOnSquare().classes[PieceOnSquare().labels([board])[0, chess.E4].item()]
'our P'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import chess
import numpy as np
import torch

from lczerolens.concepts.base import Concept
from lczerolens.errors import LensError

if TYPE_CHECKING:
    from lczerolens.model.model import LczeroModel

#: A side: chess.WHITE / chess.BLACK, or "white", "black", "us" (the side to move), "them" (any case).
ColorLike: TypeAlias = chess.Color | str

__all__ = [
    "PIECE_VALUES",
    "PieceOnSquare",
    "InCheck",
    "MaterialBalance",
    "AttackedBy",
    "HangingPiece",
    "LegalMoveFrom",
    "BestMove",
    "attack_masks",
]

#: Material values used by :class:`MaterialBalance` (kings count 0).
PIECE_VALUES = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9, chess.KING: 0}

_PIECE_LETTERS = "PNBRQK"


def _unpack(masks: np.ndarray) -> np.ndarray:
    """``uint64`` masks ``[...]`` -> bool ``[..., 64]``, bit ``s`` = square ``s``."""
    masks = np.ascontiguousarray(masks, dtype="<u8")
    bits = np.unpackbits(masks.view(np.uint8).reshape(*masks.shape, 8), axis=-1, bitorder="little")
    return bits.astype(bool)


def _masks(values: Sequence[int] | Sequence[Sequence[int]]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def _attacked(board: chess.Board, color: chess.Color) -> int:
    """The union of the squares attacked by ``color``'s pieces (python-chess attack semantics)."""
    union = 0
    for square in chess.scan_reversed(board.occupied_co[color]):
        union |= board.attacks_mask(square)
    return union


def attack_masks(boards: Sequence[chess.Board]) -> np.ndarray:
    """``uint64`` ``[N, 2]``: the squares attacked by white (column 0) and by black (column 1) in each board."""
    return _masks([[_attacked(b, chess.WHITE), _attacked(b, chess.BLACK)] for b in boards]).reshape(len(boards), 2)


def _resolve_color(color: object) -> str | bool:
    if isinstance(color, str):
        key = color.lower()
        if key in ("white", "black"):
            return key == "white"
        if key in ("us", "them"):
            return key
    elif isinstance(color, (bool, np.bool_)):
        return bool(color)
    raise LensError(
        f"color must be chess.WHITE, chess.BLACK, 'white', 'black', 'us' (side to move) or 'them', not {color!r}"
    )


def _color_of(board: chess.Board, color: str | bool) -> bool:
    if color == "us":
        return board.turn
    if color == "them":
        return not board.turn
    return bool(color)


class PieceOnSquare(Concept):
    """Which piece stands on each square: 13 classes per square.

    Parameters
    ----------
    perspective : {"side_to_move", "absolute"}
        ``"side_to_move"`` (default, as lc0's input planes see it): class 0 is an empty square, 1-6 the side to
        move's pawn, knight, bishop, rook, queen, king, 7-12 the opponent's in the same order. ``"absolute"``:
        1-6 white's, 7-12 black's. :attr:`classes` names them (``"our P"`` ... ``"their K"``, or ``"P"`` ...
        ``"K"`` / ``"p"`` ... ``"k"``).

    Example
    -------
    >>> c = PieceOnSquare()
    >>> board = chess.Board("4k3/8/8/8/8/8/8/4K2R b K - 0 1")
    >>> [c.classes[i] for i in c.labels(board)[0, [chess.E1, chess.E8, chess.A1]].tolist()]
    ['their K', 'our K', 'empty']
    """

    per_square = True
    kind = "multiclass"
    n_classes = 13

    def __init__(self, perspective: str = "side_to_move") -> None:
        if perspective not in ("side_to_move", "absolute"):
            raise LensError(f"perspective must be 'side_to_move' or 'absolute', not {perspective!r}")
        self.perspective = perspective
        if perspective == "side_to_move":
            self.name = "piece_on_square"
            self.classes = ("empty",) + tuple(f"our {p}" for p in _PIECE_LETTERS) + tuple(
                f"their {p}" for p in _PIECE_LETTERS
            )
        else:
            self.name = "piece_on_square_abs"
            self.classes = ("empty",) + tuple(_PIECE_LETTERS) + tuple(_PIECE_LETTERS.lower())

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        rows = []
        for b in boards:
            first = b.turn if self.perspective == "side_to_move" else chess.WHITE
            rows.append([b.pieces_mask(pt, first) for pt in chess.PIECE_TYPES]
                        + [b.pieces_mask(pt, not first) for pt in chess.PIECE_TYPES])  # fmt: skip
        bits = _unpack(_masks(rows))  # [N, 12, 64]; each square has at most one bit set over the 12 planes
        classes = np.arange(1, 13, dtype=np.int64)[None, :, None]
        return torch.from_numpy((bits * classes).sum(axis=1))


class InCheck(Concept):
    """1 when the side to move is in check (its king is attacked), else 0. ``[N]``."""

    name = "in_check"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        out = np.zeros(len(boards), dtype=np.int64)
        for i, b in enumerate(boards):
            king = b.king(b.turn)
            out[i] = king is not None and bool(_attacked(b, not b.turn) >> king & 1)
        return torch.from_numpy(out)


class MaterialBalance(Concept):
    """The side to move's material minus the opponent's (pawn 1, knight 3, bishop 3, rook 5, queen 9). ``[N]``
    float.

    >>> MaterialBalance().labels(chess.Board("4k3/8/8/8/8/8/8/R3K3 b - - 0 1")).tolist()
    [-5.0]
    """

    name = "material_balance"
    kind = "continuous"
    n_classes = None

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        out = np.zeros(len(boards), dtype=np.float32)
        for i, b in enumerate(boards):
            total = 0
            for pt, value in PIECE_VALUES.items():
                if value:
                    total += value * (chess.popcount(b.pieces_mask(pt, b.turn))
                                      - chess.popcount(b.pieces_mask(pt, not b.turn)))  # fmt: skip
            out[i] = total
        return torch.from_numpy(out)


class AttackedBy(Concept):
    """Per square: 1 when a piece of ``color`` attacks it (python-chess attack semantics, see the module doc).

    Parameters
    ----------
    color : chess.WHITE, chess.BLACK, "white", "black", "us" (the side to move) or "them" (the opponent)
    """

    per_square = True

    def __init__(self, color: ColorLike) -> None:
        self.color = _resolve_color(color)
        label = self.color if isinstance(self.color, str) else chess.COLOR_NAMES[self.color]
        self.name = f"attacked_by_{label}"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        masks = _masks([_attacked(b, _color_of(b, self.color)) for b in boards])
        return torch.from_numpy(_unpack(masks).astype(np.int64))


class HangingPiece(Concept):
    """Per square: 1 when a piece stands there that is attacked by the opponent of its owner and not defended
    by its owner.

    "Attacked" and "defended" follow python-chess's :meth:`chess.Board.attackers` (see the module doc): pinned
    pieces count as attackers and defenders, x-rays do not, and the exchange is not evaluated (a queen attacked
    by a pawn but defended is not hanging). Kings are never hanging (an attacked king is :class:`InCheck`).

    Parameters
    ----------
    color : None (pieces of both sides, default), or whose pieces: chess.WHITE, chess.BLACK, "white", "black",
        "us" (the side to move) or "them".
    """

    per_square = True

    def __init__(self, color: ColorLike | None = None) -> None:
        self.color = None if color is None else _resolve_color(color)
        if self.color is None:
            self.name = "hanging_piece"
        else:
            label = self.color if isinstance(self.color, str) else chess.COLOR_NAMES[self.color]
            self.name = f"hanging_piece_{label}"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        masks = []
        for b in boards:
            attacked = {chess.WHITE: _attacked(b, chess.WHITE), chess.BLACK: _attacked(b, chess.BLACK)}
            hanging = 0
            owners = chess.COLORS if self.color is None else (_color_of(b, self.color),)
            for owner in owners:
                pieces = b.occupied_co[owner] & ~b.kings
                hanging |= pieces & attacked[not owner] & ~attacked[owner]
            masks.append(hanging)
        return torch.from_numpy(_unpack(_masks(masks)).astype(np.int64))


class LegalMoveFrom(Concept):
    """Per square: 1 when the side to move has a legal move starting on it."""

    name = "legal_move_from"
    per_square = True

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        masks = []
        for b in boards:
            mask = 0
            for move in b.generate_legal_moves():
                mask |= chess.BB_SQUARES[move.from_square]
            masks.append(mask)
        return torch.from_numpy(_unpack(_masks(masks)).astype(np.int64))


class BestMove(Concept):
    """Per square, the network's top legal move: class 1 on its from-square, 2 on its to-square, 0 elsewhere.

    The top move is the legal move with the largest policy logit (the first in ``board.legal_moves`` order on a
    tie); the squares are those of python-chess's move (castling in standard chess is the king's move, e1g1).
    Boards without a legal move get all zeros. Runs the network without gradients, ``batch_size`` boards at a
    time.

    Parameters
    ----------
    model : lczerolens.LczeroModel
    batch_size : int

    Example
    -------
    >>> concept = BestMove(model)  # doctest: +SKIP
    >>> concept.moves([LczeroBoard()])  # doctest: +SKIP
    [Move.from_uci('e2e4')]
    """

    name = "best_move"
    per_square = True
    kind = "multiclass"
    n_classes = 3
    classes = ("none", "from", "to")

    def __init__(self, model: LczeroModel, batch_size: int = 256) -> None:
        self.model = model
        self.batch_size = int(batch_size)

    def moves(self, boards: Sequence[chess.Board]) -> list[chess.Move | None]:
        """The network's top legal move of each board (``None`` where there is none)."""
        from lczerolens.board import LczeroBoard

        board_list = [b if isinstance(b, LczeroBoard) else LczeroBoard.from_board(b) for b in boards]
        fmt = self.model.input_format
        out: list[chess.Move | None] = []
        with torch.inference_mode():
            for start in range(0, len(board_list), self.batch_size):
                chunk = board_list[start : start + self.batch_size]
                policy = self.model(chunk)["policy"].float().cpu()
                for row, board in zip(policy, chunk, strict=True):
                    legal = list(board.legal_moves)
                    if not legal:
                        out.append(None)
                        continue
                    out.append(legal[int(torch.argmax(row[board.legal_move_indices(fmt)]))])
        return out

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        out = torch.zeros(len(boards), 64, dtype=torch.long)
        for i, move in enumerate(self.moves(boards)):
            if move is not None:
                out[i, move.from_square] = 1
                out[i, move.to_square] = 2
        return out
