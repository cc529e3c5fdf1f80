"""Chess positions as lc0 sees them: input planes, policy indices, and the way back to the board.

:class:`LczeroBoard` is a :class:`chess.Board` whose pushed moves are the history lc0 encodes. It produces the
112 input planes of lc0 0.32 for every input format (:class:`InputFormat`), plane for plane, and translates
between moves and lc0's 1858-entry policy vector. :func:`encode_boards` encodes a batch.

Orientation. python-chess squares are ``rank * 8 + file`` (a1 = 0). "Board orientation" is an ``[8, 8]`` tensor
indexed ``[rank, file]`` in absolute squares. "Network orientation" is lc0's: ranks mirrored when black is to
move, then, for the canonical formats (3 and up), the position's canonical transform (a bitmask: 1 = flip files,
2 = mirror ranks, 4 = transpose about the a8-h1 diagonal, applied in that order).
:meth:`LczeroBoard.board_to_network` and :meth:`LczeroBoard.network_to_board` convert between the two.

Policy indices (:meth:`LczeroBoard.encode_move`) mirror black's moves and, in the canonical formats, map the
squares as lc0 0.32.1 does: like the planes when the transform only flips files and/or mirrors ranks, but by a
180-degree rotation whenever the transform includes the transpose (measured against lc0's own search).

How it is fast: every position keeps a snapshot of its bitboards (python-chess integers), computed once when a
move is pushed and attached to python-chess's own saved board state, so encoding never replays the move stack.
Each snapshot packs its 13 planes once per point of view into bytes (black's view is the big-endian packing of
the same masks). :func:`encode_boards` joins the bytes of a whole batch into one ``uint64`` array, applies the
canonical transforms to whole groups of rows, and unpacks all bits in one numpy call.

Example
-------
>>> board = LczeroBoard()
>>> _ = board.push_uci("e2e4")
>>> board.to_input_tensor().shape
torch.Size([112, 8, 8])
>>> board.encode_move("e7e5")  # black to move: ranks are mirrored, so this is e2e4's entry
322
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import chess
import numpy as np
import torch

from lczerolens.errors import InputFormatError, InputShapeError, InvalidBoardError, InvalidMoveError, LensError
from lczerolens.input_format import InputFormat
from lczerolens.policy_index import POLICY_INDEX, POLICY_MOVES

__all__ = [
    "InputFormat",
    "LczeroBoard",
    "canonical_transform",
    "encode_boards",
    "FLIP_TRANSFORM",
    "MIRROR_TRANSFORM",
    "TRANSPOSE_TRANSFORM",
    "en_passant_holds",
    "move_indices",
    "policy_index",
    "removable_squares",
    "remove_pieces",
]


FLIP_TRANSFORM = 1
MIRROR_TRANSFORM = 2
TRANSPOSE_TRANSFORM = 4

_ALL = (1 << 64) - 1
_N_HISTORY = 8
_PLANES_PER_BOARD = 13
_AUX = 104
_POLICY_SIZE = len(POLICY_MOVES)
_V2_FORMATS = (InputFormat.CANONICALIZATION_V2, InputFormat.CANONICALIZATION_V2_ARMAGEDDON)
_ARMAGEDDON_FORMATS = (
    InputFormat.CANONICALIZATION_HECTOPLIES_ARMAGEDDON,
    InputFormat.CANONICALIZATION_V2_ARMAGEDDON,
)


#: lc0 parses the FEN's halfmove clock and fullmove number as C++ ``int`` (32-bit signed).
_LC0_INT_MAX = 2**31 - 1


def _as_format(input_format: Any) -> InputFormat:
    """``input_format`` as an :class:`InputFormat`, or :class:`InputFormatError` naming it."""
    try:
        return InputFormat(input_format)
    except (ValueError, TypeError):
        known = ", ".join(f"{f.value} ({f.name})" for f in InputFormat)
        raise InputFormatError(
            f"unknown lc0 input format {input_format!r}; lczerolens knows {known}"
        ) from None


def _is_canonical(fmt: InputFormat) -> bool:
    return fmt >= InputFormat.CANONICALIZATION


# --- canonical transforms ------------------------------------------------------------------------------------


def _square_transform(square: int, transform: int) -> int:
    """Where a square goes under a canonical transform (flip, then mirror, then transpose)."""
    if transform & FLIP_TRANSFORM:
        square ^= 7
    if transform & MIRROR_TRANSFORM:
        square ^= 56
    if transform & TRANSPOSE_TRANSFORM:
        rank, file = divmod(square, 8)
        square = (7 - file) * 8 + (7 - rank)
    return square


# _SQUARE_GOES[t][s]: where square s goes under transform t.
_SQUARE_GOES = np.array([[_square_transform(s, t) for s in range(64)] for t in range(8)], dtype=np.int64)


def _transform_int(mask: int, transform: int) -> int:
    """A Python-int bitboard under a canonical transform (square by square; only used for rare tie-breaks)."""
    goes = _SQUARE_GOES[transform]
    out = 0
    for square in chess.scan_forward(mask):
        out |= 1 << int(goes[square])
    return out


# _REVERSED_BITS[byte]: the byte with its bits in reverse order (a rank with its files mirrored).
_REVERSED_BITS = np.packbits(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1), axis=1, bitorder="little"
)[:, 0]


def _transform_array(masks: np.ndarray, transform: int) -> np.ndarray:
    """Every uint64 bitboard of ``masks`` under a canonical transform."""
    masks = masks.astype("<u8")
    if transform & FLIP_TRANSFORM:
        masks = _REVERSED_BITS[masks.view(np.uint8)].view("<u8")
    if transform & MIRROR_TRANSFORM:
        masks = masks.byteswap()
    if transform & TRANSPOSE_TRANSFORM:
        bits = np.unpackbits(masks.view(np.uint8).reshape(*masks.shape, 8), axis=-1, bitorder="little")
        moved = np.empty_like(bits)
        moved[..., _SQUARE_GOES[TRANSPOSE_TRANSFORM]] = bits
        masks = np.packbits(moved, axis=-1, bitorder="little").view("<u8").reshape(masks.shape)
    return masks


def _mirror_ranks_int(mask: int) -> int:
    """Mirror ranks (1 <-> 8) of a Python-int bitboard: its bytes in reverse order."""
    return int.from_bytes(mask.to_bytes(8, "little"), "big")


# _NET_SQUARE[black * 8 + transform][s]: the network-orientation square of board square s.
_NET_SQUARE = np.array(
    [[_square_transform(s ^ (56 if black else 0), t) for s in range(64)] for black in (0, 1) for t in range(8)],
    dtype=np.int64,
)
# _BOARD_SQUARE[k][n]: the board square shown at network square n (the inverse permutation).
_BOARD_SQUARE = np.argsort(_NET_SQUARE, axis=1)

# Policy lookup: _FROM_TO[from * 64 + to] is the plain entry (or -1); _PROMO[from_file, to_file, piece] the
# queen/rook/bishop promotion entries (from rank 7 to rank 8, side-to-move view).
_FROM_TO = np.full(64 * 64, -1, dtype=np.int64)
_PROMO = np.full((8, 8, 7), -1, dtype=np.int64)
# The inverse: entry i's from and to squares (network orientation) and promotion piece (0: none or a knight).
_ENTRY_FROM = np.empty(len(POLICY_MOVES), dtype=np.int64)
_ENTRY_TO = np.empty(len(POLICY_MOVES), dtype=np.int64)
_ENTRY_PROMO = np.zeros(len(POLICY_MOVES), dtype=np.int64)
for _i, _uci in enumerate(POLICY_MOVES):
    _f, _t = chess.parse_square(_uci[:2]), chess.parse_square(_uci[2:4])
    _ENTRY_FROM[_i], _ENTRY_TO[_i] = _f, _t
    if len(_uci) == 4:
        _FROM_TO[_f * 64 + _t] = _i
    else:
        _PROMO[_f % 8, _t % 8, chess.Piece.from_symbol(_uci[4]).piece_type] = _i
        _ENTRY_PROMO[_i] = chess.Piece.from_symbol(_uci[4]).piece_type
assert all(POLICY_INDEX[u] == i for i, u in enumerate(POLICY_MOVES))


# --- per-position snapshots ----------------------------------------------------------------------------------


class _Snapshot:
    """What lc0 needs to know about one position of the history (white's point of view).

    ``w``: the 12 piece bitboards, white's P N B R Q K then black's. ``ep``: the en-passant square lc0
    marks (``-1`` for none). ``reps``: lc0's repetition count, valid for the position's ``depth`` in the
    history (its index in python-chess's move stack). ``planes(black)``: the position's 13 planes as
    little-endian uint64 bytes, seen by white (``black=False``) or by black (ranks mirrored, black first).
    """

    __slots__ = ("w", "turn", "castling", "ep", "r50", "key", "depth", "reps", "_planes")

    def __init__(self, board: chess.Board, depth: int, ep: int) -> None:
        black, white = board.occupied_co  # indexed by colour: BLACK == 0
        p, n, b, r, q, k = board.pawns, board.knights, board.bishops, board.rooks, board.queens, board.kings
        self.w = (p & white, n & white, b & white, r & white, q & white, k & white,
                  p & black, n & black, b & black, r & black, q & black, k & black)  # fmt: skip
        self.turn = board.turn
        self.castling = board.clean_castling_rights() if board.castling_rights else 0
        self.ep = ep
        self.r50 = board.halfmove_clock
        self.key = (self.w, self.turn, self.castling, ep)
        self.depth = depth
        self.reps = 0
        self._planes: list[bytes | None] = [None, None]

    def planes(self, black: bool) -> bytes:
        cached = self._planes[black]
        if cached is None:
            w = self.w
            rep = _ALL if self.reps else 0
            # Big-endian packing of a mask gives the little-endian bytes of its rank mirror: black's view.
            if black:
                cached = _PACK13_MIRRORED(*w[6:], *w[:6], rep)
            else:
                cached = _PACK13(*w, rep)
            self._planes[black] = cached
        return cached


_PACK13 = struct.Struct("<13Q").pack
_PACK13_MIRRORED = struct.Struct(">13Q").pack
_PACK8 = struct.Struct("<8Q").pack
_PACK8_MIRRORED = struct.Struct(">8Q").pack
_EMPTY_SLOT = bytes(8 * _PLANES_PER_BOARD)


def _pushed_ep(board: chess.Board) -> int:
    """lc0's en-passant mark after a double pawn push: set when an enemy pawn stands beside the pawn."""
    ep = board.ep_square
    if ep is None:
        return -1
    us = board.turn
    capturers = board.pawns & board.occupied_co[us] & chess.BB_PAWN_ATTACKS[not us][ep]
    return ep if capturers else -1


def _fen_ep(board: chess.Board) -> int:
    """lc0's en-passant mark of a FEN position: the FEN's square, kept as given when it is consistent."""
    ep = board.ep_square
    if ep is None:
        return -1
    # The square must lie behind a pawn that has just made a double push (python-chess's own check).
    rank = 5 if board.turn == chess.WHITE else 2
    forward = 8 if board.turn == chess.WHITE else -8
    them = board.occupied_co[not board.turn]
    if (
        chess.square_rank(ep) != rank
        or board.occupied & (chess.BB_SQUARES[ep] | chess.BB_SQUARES[ep + forward])
        or not board.pawns & them & chess.BB_SQUARES[ep - forward]
    ):
        return -1
    return ep


_START_KEY = _Snapshot(chess.Board(), 0, -1).key


_CORNERS = chess.BB_A1 | chess.BB_H1 | chess.BB_A8 | chess.BB_H8
_QUEEN_CORNERS = chess.BB_A1 | chess.BB_A8
_KING_CORNERS = chess.BB_H1 | chess.BB_H8


def _fill_planes(snap: _Snapshot, black: bool) -> bytes:
    """A FEN fill copy with an en-passant square: the position before the double pawn push that made it."""
    pieces = list(snap.w)
    ep = snap.ep
    pusher_is_white = snap.turn == chess.BLACK
    plane = 0 if pusher_is_white else 6
    origin, landed = (ep - 8, ep + 8) if pusher_is_white else (ep + 8, ep - 8)
    pieces[plane] = (pieces[plane] | (1 << origin)) & ~(1 << landed)
    rep = _ALL if snap.reps else 0
    if black:
        return _PACK13_MIRRORED(*pieces[6:], *pieces[:6], rep)
    return _PACK13(*pieces, rep)


def _castling_masks(castling: int, w_king: int, b_king: int) -> tuple[int, int]:
    """Squares of the rooks with queen-side and king-side castling rights (both colours)."""
    queen_side = king_side = 0
    for rook in chess.scan_forward(castling):
        king = w_king if rook < 8 else b_king
        if king and chess.square_file(rook) < chess.square_file(chess.lsb(king)):
            queen_side |= 1 << rook
        else:
            king_side |= 1 << rook
    return queen_side, king_side


_FILES_A_TO_D = chess.BB_FILE_A | chess.BB_FILE_B | chess.BB_FILE_C | chess.BB_FILE_D
_RANKS_5_TO_8 = chess.BB_RANK_5 | chess.BB_RANK_6 | chess.BB_RANK_7 | chess.BB_RANK_8
# In the e1-h4 quadrant: squares beyond the a8-h1 diagonal (file + rank > 7) and on it (h1, g2, f3, e4).
_QUADRANT = [s for s in range(32) if chess.square_file(s) >= 4]
_BEYOND_DIAGONAL = sum(1 << s for s in _QUADRANT if chess.square_file(s) + chess.square_rank(s) > 7)
_ON_DIAGONAL = sum(1 << s for s in _QUADRANT if chess.square_file(s) + chess.square_rank(s) == 7)


def _choose_transform(cur: _Snapshot, black: bool) -> int:
    """lc0's canonical transform of the current position (only called when nobody can castle)."""
    w = cur.w
    king = _mirror_ranks_int(w[11]) if black else w[5]  # our king, side to move's view
    transform = 0
    if king & _FILES_A_TO_D:
        transform |= FLIP_TRANSFORM
    if w[0] | w[6]:
        return transform  # with pawns on the board only the file flip is allowed
    king = _transform_int(king, transform)
    if king & _RANKS_5_TO_8:
        transform |= MIRROR_TRANSFORM
        king = _mirror_ranks_int(king)
    # The king now stands in the e1-h4 quadrant: transpose when it is beyond the a8-h1 diagonal.
    if king & _BEYOND_DIAGONAL:
        return transform | TRANSPOSE_TRANSFORM
    if king & _ON_DIAGONAL:
        planes = tuple(_mirror_ranks_int(v) for v in w[6:] + w[:6]) if black else w
        # On the diagonal: compare bitboards with their transposes as integers, in lc0's order of tie-breakers
        # (all pieces, ours, kings, queens, rooks, knights, bishops); the smaller one wins.
        ours = planes[0] | planes[1] | planes[2] | planes[3] | planes[4] | planes[5]
        theirs = planes[6] | planes[7] | planes[8] | planes[9] | planes[10] | planes[11]
        for value in (
            ours | theirs,
            ours,
            planes[5] | planes[11],
            planes[4] | planes[10],
            planes[3] | planes[9],
            planes[1] | planes[7],
            planes[2] | planes[8],
        ):
            value = _transform_int(value, transform)
            alternative = _transform_int(value, TRANSPOSE_TRANSFORM)
            if value < alternative:
                return transform
            if value > alternative:
                return transform | TRANSPOSE_TRANSFORM
    return transform


# --- the board -----------------------------------------------------------------------------------------------


class LczeroBoard(chess.Board):
    """A :class:`chess.Board` that encodes itself the way lc0 0.32 does.

    Moves pushed onto the board are its history: lc0 feeds the network the current position and up to seven
    earlier ones. A board set up from a FEN has no history; lc0 (and this class) then fills the history slots
    with copies of the FEN position (with a double pawn push undone when the FEN has an en-passant square),
    except for the standard starting position.

    En-passant marks follow lc0: after a double pawn push the square counts (for the canonical formats' plane
    108, for repetitions and for where canonical history stops) only when an enemy pawn stands beside the
    pushed pawn, pinned or not; a FEN's en-passant square counts as given, unless it contradicts the position
    (no pawn that could just have made the push), in which case it is ignored. Repetitions are counted as lc0
    counts them (same pieces, side, castling rights and mark, within the rule-50 window).

    Parameters
    ----------
    fen : str or None
        The starting position (default: the standard one); ``None`` gives an empty board, as in python-chess.
    chess960 : bool
        Chess960 castling rules, as in python-chess.

    Raises
    ------
    InvalidBoardError
        When ``fen`` is not a string (or None) or cannot be parsed, or its halfmove clock or fullmove number
        does not fit a 32-bit signed integer: lc0 0.32.1 refuses those FENs ("bad rule 50 halfmoves" / "bad
        total moves") and accepts every clock up to 2**31 - 1, feeding it to the network unchanged.

    Examples
    --------
    >>> board = LczeroBoard("8/8/8/4k3/8/8/2K5/6Q1 w - - 5 40")
    >>> board.canonical_transform(InputFormat.CANONICALIZATION)  # our king on the c-file: flip files
    1
    >>> LczeroBoard("not a fen")
    Traceback (most recent call last):
    ...
    lczerolens.errors.InvalidBoardError: invalid FEN 'not a fen': ...
    """

    def __init__(self, fen: str | None = chess.STARTING_FEN, *, chess960: bool = False) -> None:
        if fen is not None and not isinstance(fen, str):
            raise InvalidBoardError(
                f"a FEN must be a string, not {type(fen).__name__} ({fen!r}). Pass a FEN such as "
                f"{chess.STARTING_FEN!r}, or None for an empty board."
            )
        if fen is not None and fen.strip() == "startpos":
            fen = chess.STARTING_FEN  # as in UCI's "position startpos"
        try:
            super().__init__(fen, chess960=chess960)
        except InvalidBoardError:
            raise
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise InvalidBoardError(
                f"invalid FEN {fen!r}: {exc}. Pass a FEN such as {chess.STARTING_FEN!r}."
            ) from None

    def set_fen(self, fen: str) -> None:
        """Set the position from ``fen`` as python-chess does, refusing what lc0 0.32.1 refuses.

        lc0 reads the halfmove clock and the fullmove number as 32-bit signed integers and rejects the FEN when
        either does not fit; python-chess would accept any size (a clock of 10**38 then encodes as a plane of
        1e38 and the network's outputs become NaN).

        >>> LczeroBoard().set_fen("8/8/8/4k3/8/8/2K5/6Q1 w - - 2147483648 40")
        Traceback (most recent call last):
        ...
        lczerolens.errors.InvalidBoardError: invalid FEN '...': the halfmove clock 2147483648 is out of lc0's range ...
        """
        if not isinstance(fen, str):
            raise InvalidBoardError(f"a FEN must be a string, not {type(fen).__name__} ({fen!r})")
        if fen.strip() == "startpos":
            fen = chess.STARTING_FEN
        parts = fen.split()
        for index, what in ((4, "halfmove clock"), (5, "fullmove number")):
            if len(parts) > index and parts[index].lstrip("+-").isdigit() and abs(int(parts[index])) > _LC0_INT_MAX:
                raise InvalidBoardError(
                    f"invalid FEN {fen!r}: the {what} {parts[index]} is out of lc0's range (at most {_LC0_INT_MAX}); "
                    "lc0 refuses this FEN. Use a smaller number."
                )
        try:
            super().set_fen(fen)
        except (ValueError, TypeError, IndexError) as exc:
            raise InvalidBoardError(f"invalid FEN {fen!r}: {exc}. Pass a FEN such as {chess.STARTING_FEN!r}.") from None

    # -- python-chess integration --------------------------------------------------------------------------

    @classmethod
    def from_board(cls, board: chess.Board) -> LczeroBoard:
        """An :class:`LczeroBoard` with the same position and move history as ``board``.

        >>> b = chess.Board(); _ = b.push_san("e4")
        >>> LczeroBoard.from_board(b).move_stack
        [Move.from_uci('e2e4')]
        """
        if isinstance(board, LczeroBoard):
            return board.copy()
        root = board.root()
        new = cls(root.fen(en_passant="fen"), chess960=board.chess960)
        for move in board.move_stack:
            new.push(move)
        return new

    @classmethod
    def from_moves(cls, moves: Iterable[str | chess.Move], fen: str = chess.STARTING_FEN, *,
                   chess960: bool = False) -> LczeroBoard:  # fmt: skip
        """The board reached from ``fen`` by ``moves`` (UCI strings or moves), with that history.

        >>> LczeroBoard.from_moves(["e2e4", "e7e5"]).fen()
        'rnbqkbnr/pppp1ppp/8/4p3/4P3/8/PPPP1PPP/RNBQKBNR w KQkq - 0 2'
        """
        board = cls(fen, chess960=chess960)
        for move in moves:
            board.push(board._parse_move(move))
        return board

    def __repr__(self) -> str:
        text = f"{type(self).__name__}({self.fen()!r}"
        if self.chess960:
            text += ", chess960=True"
        if self.move_stack:
            text += f", history={len(self.move_stack)} moves"
        return text + ")"

    def push(self, move: chess.Move) -> None:
        """Push ``move`` (as :meth:`chess.Board.push`), keeping a snapshot of the position it leaves."""
        snapshot = self._current_snapshot()
        super().push(move)
        # Cached on python-chess's own state object, so copies and pops keep it in step with the stack.
        self._stack[-1].__dict__["_lczero"] = snapshot

    # -- snapshots -------------------------------------------------------------------------------------------

    def _current_snapshot(self) -> _Snapshot:
        depth = len(self._stack)
        snap = _Snapshot(self, depth, _pushed_ep(self) if depth else _fen_ep(self))
        self._set_repetitions(snap)
        return snap

    def _snapshot_at(self, index: int) -> _Snapshot:
        """The snapshot of the position before ``self.move_stack[index]`` (cached on python-chess's state)."""
        state = self._stack[index]
        cached = state.__dict__.get("_lczero")
        if isinstance(cached, _Snapshot) and cached.depth == index:
            return cached
        # Not pushed through an LczeroBoard, or the stack was cut by copy(stack=n): rebuild from the state.
        scratch = chess.Board(None, chess960=self.chess960)
        state.restore(scratch)
        snap = _Snapshot(scratch, index, _pushed_ep(scratch) if index else _fen_ep(scratch))
        self._set_repetitions(snap)
        state.__dict__["_lczero"] = snap
        return snap

    def _set_repetitions(self, snap: _Snapshot) -> None:
        """lc0's count: the same position two, four, ... plies back, without a zeroing move in between."""
        if snap.r50 < 4:
            return
        for index in range(snap.depth - 2, -1, -2):
            earlier = self._snapshot_at(index)
            if earlier.key == snap.key:
                snap.reps = 1 + earlier.reps
                return
            if earlier.r50 < 2:
                return

    def _history(self, fmt: InputFormat, cur: _Snapshot) -> list[tuple[_Snapshot, bool]]:
        """The positions lc0 writes into history slots 0..7, each with whether it is a FEN fill copy."""
        slots = [(cur, False)]
        stack = self._stack
        index = cur.depth - 1
        if not _is_canonical(fmt):
            # Formats 1 and 2: the last eight positions, then copies of the FEN position (unless it is the
            # standard start position).
            while index >= 0 and len(slots) < _N_HISTORY:
                snap = stack[index].__dict__.get("_lczero")
                if snap is None or snap.depth != index:
                    snap = self._snapshot_at(index)
                slots.append((snap, False))
                index -= 1
            if len(slots) < _N_HISTORY:
                root = slots[-1][0]
                if root.key != _START_KEY:
                    slots.extend([(root, True)] * (_N_HISTORY - len(slots)))
            return slots
        v2 = fmt in _V2_FORMATS
        if cur.r50 == 0:
            return slots
        while len(slots) < _N_HISTORY:
            filled = index < 0
            snap = self._snapshot_at(0) if (filled and cur.depth) else (cur if filled else self._snapshot_at(index))
            # Canonical formats stop at a change of castling rights and at an earlier en-passant mark.
            if snap.castling != cur.castling or snap.ep >= 0:
                break
            if filled and snap.key == _START_KEY:
                break
            if v2 and snap.reps == 0:
                # V2 writes repetitions only. lc0 0.32.1 never stops once it walks past the start of a FEN
                # position's history (it hangs); no earlier position is known, so we stop there.
                if snap.r50 == 0 or filled:
                    break
                index -= 1
                continue
            slots.append((snap, filled))
            if snap.r50 == 0:  # nothing before a capture or pawn move can repeat
                break
            index -= 1
        return slots

    def _encoding_row(self, fmt: InputFormat) -> tuple[bytes, int, int]:
        """The 112 plane masks as little-endian uint64 bytes in the side to move's view (before the canonical
        transform), the rule-50 count and the canonical transform."""
        cur = self._current_snapshot()
        black = not cur.turn
        slots = self._history(fmt, cur)
        parts = []
        for snap, filled in slots:
            cached = snap._planes[black]
            if filled and snap.ep >= 0:
                cached = _fill_planes(snap, black)
            elif cached is None:
                cached = snap.planes(black)
            parts.append(cached)
        if len(slots) < _N_HISTORY:
            parts.append(_EMPTY_SLOT * (_N_HISTORY - len(slots)))

        # Auxiliary planes, first in white's view (packed mirrored for black).
        cr = cur.castling
        if fmt == InputFormat.CLASSICAL_112_PLANE:
            if cr & ~_CORNERS:  # Chess960 rooks: sides decided by the king's file
                queen_side, king_side = _castling_masks(cr, cur.w[5], cur.w[11])
            else:
                queen_side, king_side = cr & _QUEEN_CORNERS, cr & _KING_CORNERS
            ours, theirs = (chess.BB_RANK_8, chess.BB_RANK_1) if black else (chess.BB_RANK_1, chess.BB_RANK_8)
            aux0 = _ALL if queen_side & ours else 0
            aux1 = _ALL if king_side & ours else 0
            aux2 = _ALL if queen_side & theirs else 0
            aux3 = _ALL if king_side & theirs else 0
        else:
            aux0, aux1 = _castling_masks(cr, cur.w[5], cur.w[11]) if cr else (0, 0)
            aux2 = aux3 = 0
        if _is_canonical(fmt):
            # The en-passant mark sits on the rank-8 square (side to move's view) of the en-passant file.
            aux4 = 0 if cur.ep < 0 else 1 << ((cur.ep & 7) + (0 if black else 56))
        else:
            aux4 = _ALL if black else 0
        aux6 = _ALL if (black and fmt in _ARMAGEDDON_FORMATS) else 0
        # Plane 109 (rule 50) is written as all ones here and scaled by its value afterwards.
        parts.append((_PACK8_MIRRORED if black else _PACK8)(aux0, aux1, aux2, aux3, aux4, _ALL, aux6, _ALL))
        transform = _choose_transform(cur, black) if (cr == 0 and _is_canonical(fmt)) else 0
        return b"".join(parts), cur.r50, transform

    # -- encoding ----------------------------------------------------------------------------------------------

    def to_input_tensor(self, input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE) -> torch.Tensor:
        """The 112 input planes lc0 0.32 feeds a network of ``input_format`` for this position and history.

        Returns a float32 tensor ``[112, 8, 8]`` in network orientation: ``planes[p, r, c]`` is plane ``p`` at
        network square ``r * 8 + c``. Planes ``13 * h ... 13 * h + 12`` describe history position ``h``
        (0 = now): the side to move's P N B R Q K, the opponent's, and a repetition plane. Planes 104-111 hold
        castling, the side to move or en-passant mark, the rule-50 count (divided by 100 for the hectoplies
        formats), the armageddon side-to-move plane and an all-ones plane.

        Formats 5 and 133 (V2) write only history positions that are repetitions. For a FEN position whose
        history reaches back to the FEN without a rule-50 reset or a change of castling rights, lc0 0.32.1
        itself never returns (it hangs). lczerolens stops there instead: the FEN position and anything before
        it are never repetitions, so the remaining slots stay empty.

        Examples
        --------
        >>> board = LczeroBoard()
        >>> planes = board.to_input_tensor()
        >>> int(planes[0].sum()), float(planes[111].mean())  # eight pawns; the all-ones plane
        (8, 1.0)
        """
        return encode_boards([self], input_format)[0]

    def canonical_transform(self, input_format: InputFormat | int = InputFormat.CANONICALIZATION) -> int:
        """The transform lc0 applies to this position for ``input_format``: a bitmask, 0 for none.

        1 = flip files, 2 = mirror ranks, 4 = transpose about the a8-h1 diagonal (applied in that order, after
        the black-to-move rank mirror). Always 0 for formats 1 and 2 and whenever someone can castle.

        >>> LczeroBoard("8/8/8/8/8/8/1k6/K7 w - - 0 1").canonical_transform()  # our king a1: flip files
        1
        """
        fmt = _as_format(input_format)
        if not _is_canonical(fmt):
            return 0
        cur = _Snapshot(self, len(self._stack), -1)
        if cur.castling:
            return 0
        return _choose_transform(cur, cur.turn == chess.BLACK)

    def _orientation(self, input_format: InputFormat | int) -> int:
        return (8 if self.turn == chess.BLACK else 0) + self.canonical_transform(input_format)

    def _move_orientation(self, input_format: InputFormat | int) -> int:
        """The square mapping lc0 0.32.1 applies to moves: the plane transform, except that whenever the
        transform includes the transpose, lc0 maps moves by a 180-degree rotation (flip files and mirror
        ranks) instead. Measured against the priors lc0's search prints; see :meth:`encode_move`."""
        transform = self.canonical_transform(input_format)
        if transform & TRANSPOSE_TRANSFORM:
            transform = FLIP_TRANSFORM | MIRROR_TRANSFORM
        return (8 if self.turn == chess.BLACK else 0) + transform

    def board_to_network(
        self, tensor: torch.Tensor, input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE
    ) -> torch.Tensor:
        """Move squares from board orientation to network orientation (``[..., 8, 8]``, any leading dims).

        >>> board = LczeroBoard("4k3/8/8/8/8/8/8/4K3 b - - 0 1")
        >>> x = torch.zeros(8, 8); x[0, 4] = 1.0  # e1
        >>> board.board_to_network(x)[7, 4].item()  # black to move: e1 is the network's rank 8
        1.0
        """
        return _permute_squares(tensor, _BOARD_SQUARE[self._orientation(input_format)])

    def network_to_board(
        self, tensor: torch.Tensor, input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE
    ) -> torch.Tensor:
        """Move squares from network orientation back to board orientation (undo the flip and transform).

        Works on any ``[..., 8, 8]`` tensor, e.g. relevance ``[112, 8, 8]`` stays per plane.

        >>> board = LczeroBoard("4k3/8/8/8/8/8/8/4K3 b - - 0 1")
        >>> planes = board.to_input_tensor()
        >>> board.network_to_board(planes)[5].flatten().nonzero().item() == chess.E8  # our (black) king
        True
        """
        return _permute_squares(tensor, _NET_SQUARE[self._orientation(input_format)])

    # -- moves -------------------------------------------------------------------------------------------------

    def _parse_move(self, move: str | chess.Move) -> chess.Move:
        """A legal move of this position from a UCI or SAN string or a :class:`chess.Move` (king-takes-rook too)."""
        if isinstance(move, str):
            try:
                parsed = chess.Move.from_uci(move.strip())
            except ValueError:
                try:
                    return self.parse_san(move.strip())
                except chess.IllegalMoveError:
                    raise InvalidMoveError(
                        f"{move!r} is not a legal move in {self.fen()!r}; legal moves: "
                        f"{' '.join(self.san(m) for m in self.legal_moves) or 'none'}"
                    ) from None
                except ValueError:
                    raise InvalidMoveError(
                        f"malformed move {move!r}; write UCI like 'e2e4' or 'e7e8q', or SAN like 'Nf3' or 'O-O'"
                    ) from None
        elif isinstance(move, chess.Move):
            parsed = move
        else:
            raise InvalidMoveError(f"{move!r} is not a move; pass a chess.Move or a UCI string like 'e2e4'")
        if parsed:
            normal = self._from_chess960(
                self.chess960, parsed.from_square, parsed.to_square, parsed.promotion, parsed.drop
            )
            if self.is_legal(normal):
                return normal
        raise InvalidMoveError(
            f"{move if isinstance(move, str) else move.uci()!r} is not a legal move in {self.fen()!r}; "
            f"legal moves: {' '.join(m.uci() for m in self.legal_moves) or 'none'}"
        )

    def _move_indices(self, moves: Sequence[chess.Move], orientation: int) -> np.ndarray:
        net = _NET_SQUARE[orientation]
        to_rook = self._to_chess960
        out = np.empty(len(moves), dtype=np.int64)
        for i, move in enumerate(moves):
            move = to_rook(move)  # castling as king takes rook
            f, t = net[move.from_square], net[move.to_square]
            if move.promotion in (chess.QUEEN, chess.ROOK, chess.BISHOP):
                on_ranks = f >> 3 == 6 and t >> 3 == 7 and abs((f & 7) - (t & 7)) <= 1
                out[i] = _PROMO[f & 7, t & 7, move.promotion] if on_ranks else -1
            else:
                out[i] = _FROM_TO[f * 64 + t]
        return out

    def encode_move(
        self,
        move: str | chess.Move,
        input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE,
        *,
        strict: bool = True,
    ) -> int:
        """The index of ``move`` in lc0's policy vector for ``input_format``.

        Castling may be written either way (``e1g1`` or king-takes-rook ``e1h1``); a knight promotion uses
        the plain from-to entry. Black's moves are mirrored first; canonical formats then map both squares the
        way lc0 0.32.1 does. That is the position's canonical transform when it only flips files and/or mirrors
        ranks; when it includes the transpose, lc0 0.32.1 (checked against the priors its search prints) maps
        moves by a 180-degree rotation instead, although the input planes are transposed. We follow lc0 here, so
        indices mean what lc0's search reads from the policy head.

        With ``strict=False`` a move that is not legal here (e.g. after a piece was removed) still gets the
        index the same mapping gives, as long as lc0's policy has an entry for it.

        >>> LczeroBoard().encode_move("e2e4")
        322
        >>> LczeroBoard().encode_move("e2e5", strict=False)  # not legal, but the policy has an entry
        326
        """
        orientation = self._move_orientation(input_format)
        if strict:
            return int(self._move_indices([self._parse_move(move)], orientation)[0])
        parsed: chess.Move | None
        try:
            parsed = self._parse_move(move)
        except InvalidMoveError:
            parsed = move if isinstance(move, chess.Move) else None
            if isinstance(move, str):
                try:
                    parsed = chess.Move.from_uci(move.strip())
                except ValueError:
                    pass
            if parsed is None or not parsed or parsed.drop:
                raise
        index = int(self._move_indices([parsed], orientation)[0])
        if index < 0:
            raise InvalidMoveError(f"{parsed.uci()!r} has no entry in lc0's policy vector (seen from {self.fen()!r})")
        return index

    def _is_legal_index(self, index: int, orientation: int) -> bool:
        """Whether policy ``index`` is the index of a legal move here (``orientation`` from
        :meth:`_move_orientation`): the same answer as ``index in legal_move_indices()``, without generating every
        legal move. The entry is read back as a move (a plain entry of a pawn reaching the last rank is a knight
        promotion; king-takes-rook is castling), which must be legal and encode to ``index`` again."""
        board_square = _BOARD_SQUARE[orientation]
        f, t = int(board_square[_ENTRY_FROM[index]]), int(board_square[_ENTRY_TO[index]])
        promotion = int(_ENTRY_PROMO[index]) or None
        if promotion is None and self.pawns & chess.BB_SQUARES[f] and chess.square_rank(t) in (0, 7):
            promotion = chess.KNIGHT
        move = self._from_chess960(self.chess960, f, t, promotion)
        return self.is_legal(move) and int(self._move_indices([move], orientation)[0]) == index

    def legal_move_indices(self, input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE) -> torch.Tensor:
        """Policy indices of all legal moves, in ``self.legal_moves`` order (a ``torch.LongTensor``).

        >>> LczeroBoard().legal_move_indices().shape
        torch.Size([20])
        """
        orientation = self._move_orientation(input_format)
        return torch.from_numpy(self._move_indices(list(self.legal_moves), orientation))

    def decode_move(self, index: int, input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE) -> chess.Move:
        """The legal move of this position at policy ``index`` (the inverse of :meth:`encode_move`).

        >>> LczeroBoard().decode_move(322)
        Move.from_uci('e2e4')
        """
        if isinstance(index, torch.Tensor) and index.numel() == 1:
            index = index.item()
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise InvalidMoveError(f"policy index {index!r} is not an integer in [0, {_POLICY_SIZE})")
        if not 0 <= index < _POLICY_SIZE:
            raise InvalidMoveError(f"policy index {index!r} is outside [0, {_POLICY_SIZE})")
        orientation = self._move_orientation(input_format)
        moves = list(self.legal_moves)
        hits = np.flatnonzero(self._move_indices(moves, orientation) == index)
        if not len(hits):
            raise InvalidMoveError(
                f"policy index {index} ({POLICY_MOVES[index]} from the side to move's view) is not a legal move "
                f"in {self.fen()!r} for input format {int(input_format)}"
            )
        return moves[int(hits[0])]

    def legal_policy(self, values: torch.Tensor,
                     input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE) -> torch.Tensor:  # fmt: skip
        """The entries of a policy-shaped tensor ``[..., 1858]`` at the legal moves: ``[..., n_legal]``.

        The last axis follows ``self.legal_moves`` order.

        >>> board = LczeroBoard()
        >>> board.legal_policy(torch.arange(1858.0)).shape
        torch.Size([20])
        """
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values)
        if values.ndim == 0 or values.shape[-1] != _POLICY_SIZE:
            raise InputShapeError(
                f"expected a policy tensor [..., {_POLICY_SIZE}], got shape {tuple(values.shape)}"
            )
        return values[..., self.legal_move_indices(input_format).to(values.device)]

    def policy_to_moves(
        self, values: torch.Tensor, input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE
    ) -> dict[chess.Move, float]:
        """A policy vector ``[1858]`` (logits, probabilities, relevance, ...) as ``{legal move: value}``.

        >>> board = LczeroBoard()
        >>> board.policy_to_moves(torch.arange(1858.0))[chess.Move.from_uci("e2e4")]
        322.0
        """
        if isinstance(values, torch.Tensor) and values.ndim == 2 and values.shape[0] == 1:
            values = values[0]
        picked = self.legal_policy(values, input_format)
        if picked.ndim != 1:
            raise InputShapeError(
                f"policy_to_moves takes one policy vector [{_POLICY_SIZE}], got shape {tuple(values.shape)}; "
                "use legal_policy for batches"
            )
        return dict(zip(self.legal_moves, picked.detach().cpu().tolist(), strict=True))

    # -- display -----------------------------------------------------------------------------------------------

    def render_heatmap(self, values: Any, **options: Any) -> Any:
        """Draw ``values`` (``[8, 8]`` board orientation or ``[64]``) on this board; see
        :func:`lczerolens.visual.render_heatmap`."""
        from lczerolens.visual import render_heatmap

        return render_heatmap(self, values, **options)


def _permute_squares(tensor: torch.Tensor, perm: np.ndarray) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if tensor.ndim < 2 or tuple(tensor.shape[-2:]) != (8, 8):
        raise InputShapeError(f"expected a tensor [..., 8, 8], got shape {tuple(tensor.shape)}")
    flat = tensor.reshape(*tensor.shape[:-2], 64)
    index = torch.from_numpy(perm).to(tensor.device)
    return flat[..., index].reshape(tensor.shape)


#: What python-chess's status flags mean, for the invalid-position warning.
_STATUS_TEXT = {
    chess.STATUS_NO_WHITE_KING: "no white king",
    chess.STATUS_NO_BLACK_KING: "no black king",
    chess.STATUS_TOO_MANY_KINGS: "more than one king of a colour",
    chess.STATUS_TOO_MANY_WHITE_PAWNS: "more than 8 white pawns",
    chess.STATUS_TOO_MANY_BLACK_PAWNS: "more than 8 black pawns",
    chess.STATUS_PAWNS_ON_BACKRANK: "pawns on the first or last rank",
    chess.STATUS_TOO_MANY_WHITE_PIECES: "more than 16 white pieces",
    chess.STATUS_TOO_MANY_BLACK_PIECES: "more than 16 black pieces",
    chess.STATUS_BAD_CASTLING_RIGHTS: "castling rights without king and rook on their squares",
    chess.STATUS_INVALID_EP_SQUARE: "an en-passant square no double push explains",
    chess.STATUS_OPPOSITE_CHECK: "the side not to move is in check (kings adjacent, or a capturable king)",
    chess.STATUS_EMPTY: "an empty board",
    chess.STATUS_TOO_MANY_CHECKERS: "more checkers than a legal position can have",
    chess.STATUS_IMPOSSIBLE_CHECK: "a check no last move can give",
}


def position_problems(board: chess.Board) -> list[str]:
    """Why ``board`` is not a position of a legal game (python-chess's ``status()``, in words); ``[]`` if valid.

    >>> position_problems(LczeroBoard("8/8/8/8/8/8/8/Kk6 w - - 0 1"))
    ['the side not to move is in check (kings adjacent, or a capturable king)']
    """
    status = board.status()
    return [text for flag, text in _STATUS_TEXT.items() if status & flag]


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package (the user's call)."""
    import sys

    package = Path(__file__).resolve().parent
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(package):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_invalid(boards: Sequence[chess.Board]) -> None:
    """Warn (:class:`~lczerolens.errors.InvalidPositionWarning`) once for a batch holding invalid positions."""
    import warnings

    from lczerolens.errors import InvalidPositionWarning

    for i, board in enumerate(boards):
        problems = position_problems(board)
        if problems:
            bad = sum(1 for b in boards[i:] if not b.is_valid())
            warnings.warn(
                f"{bad} of {len(boards)} positions are not positions of a legal game, e.g. {board.fen()!r}: "
                f"{'; '.join(problems)}. The network evaluates them anyway, but it never saw such inputs in training",
                InvalidPositionWarning,
                stacklevel=_caller_stacklevel(),
            )
            return


def canonical_transform(board: chess.Board, input_format: InputFormat | int) -> int:
    """The canonical transform bitmask of ``board`` for ``input_format`` (see
    :meth:`LczeroBoard.canonical_transform`)."""
    if not isinstance(board, LczeroBoard):
        board = LczeroBoard.from_board(board)
    return board.canonical_transform(input_format)


def encode_boards(boards: Sequence[chess.Board] | chess.Board,
                  input_format: InputFormat | int = InputFormat.CLASSICAL_112_PLANE) -> torch.Tensor:  # fmt: skip
    """Encode a batch of boards: a float32 tensor ``[N, 112, 8, 8]`` (see :meth:`LczeroBoard.to_input_tensor`).

    Plain :class:`chess.Board` objects are accepted (their move stack is their history) but are converted
    first; :class:`LczeroBoard` is faster.

    >>> b1 = LczeroBoard(); b2 = LczeroBoard.from_moves(["d2d4"])
    >>> encode_boards([b1, b2]).shape
    torch.Size([2, 112, 8, 8])
    """
    fmt = _as_format(input_format)
    if isinstance(boards, chess.Board):
        boards = [boards]
    elif not isinstance(boards, Sequence):
        boards = list(boards)
    n = len(boards)
    rows: list[bytes] = []
    r50 = np.empty(n, dtype=np.float32)
    transforms: dict[int, list[int]] = {}
    for i, board in enumerate(boards):
        if not isinstance(board, LczeroBoard):
            if not isinstance(board, chess.Board):
                raise InvalidBoardError(f"encode_boards takes chess boards, got {type(board).__name__}: {board!r}")
            board = LczeroBoard.from_board(board)
        row, r50[i], transform = board._encoding_row(fmt)
        rows.append(row)
        if transform:
            transforms.setdefault(transform, []).append(i)
    masks = np.frombuffer(b"".join(rows), dtype="<u8").reshape(n, 112)
    if transforms:
        masks = masks.copy()
        for transform, index in transforms.items():
            # lc0 transforms planes 0..108 (all-zero and all-one planes are unchanged by any transform anyway).
            masks[index, :109] = _transform_array(masks[index, :109], transform)
    bits = np.unpackbits(masks.view(np.uint8), bitorder="little")  # bit s of a mask = square s
    planes = bits.astype(np.float32).reshape(n, 112, 64)
    if fmt >= InputFormat.CANONICALIZATION_HECTOPLIES:
        r50 /= np.float32(100.0)  # float32 division, as lc0 does
    planes[:, 109] = r50[:, None]
    return torch.from_numpy(planes).reshape(n, 112, 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# Removing pieces and naming moves: the board edits of the occlusion and patching lenses and of the faithfulness
# metrics (lczerolens.metrics re-exports these names, where they lived first).


def removable_squares(board: chess.Board) -> list[int]:
    """Squares holding a piece other than a king, ascending."""
    return list(chess.SquareSet(board.occupied & ~board.kings))


def remove_pieces(board: chess.Board, squares: Sequence[int]) -> chess.Board:
    """A copy of ``board`` (same class, no move history) with the pieces on ``squares`` removed.

    Castling rights whose rook is gone are cleared, and so is the en-passant square once it no longer holds
    (:func:`en_passant_holds`). Side to move, rule-50 counter and move number are kept. Kings are never removed.

    Example
    -------
    >>> b = remove_pieces(chess.Board(), [chess.H1])
    >>> b.castling_xfen()
    'Qkq'
    """
    out = board.copy(stack=False)
    out.clear_stack()
    for square in squares:
        piece = out.piece_type_at(square)
        if piece is None:
            raise LensError(f"no piece to remove on {chess.square_name(square)} in {board.fen()}")
        if piece == chess.KING:
            raise LensError(f"the king on {chess.square_name(square)} is never removed ({board.fen()})")
        out.remove_piece_at(square)
    out.castling_rights = out.clean_castling_rights()
    if out.ep_square is not None and not en_passant_holds(out):
        out.ep_square = None
    return out


def en_passant_holds(board: chess.Board) -> bool:
    """Whether ``board.ep_square`` still stands: the double-pushed pawn is there and a pawn can take it."""
    if board.ep_square is None:
        return False
    pushed = board.ep_square - 8 if board.turn == chess.WHITE else board.ep_square + 8
    pawn = board.piece_at(pushed)
    if pawn is None or pawn.piece_type != chess.PAWN or pawn.color == board.turn:
        return False
    return board.has_pseudo_legal_en_passant()


def policy_index(board: chess.Board, move: chess.Move, fmt: InputFormat | int) -> int:
    """The index of ``move`` in lc0's policy vector as the network sees ``board``; ``move`` need not be legal.

    A legal move goes through ``LczeroBoard.encode_move`` (black's mirror, and lc0 0.32.1's own square mapping
    of moves in canonical formats). A move made illegal by a removal (its piece gone) gets the index the same
    mapping gives, without the legality check.
    """
    lb = board if isinstance(board, LczeroBoard) else LczeroBoard.from_board(board)
    return int(lb.encode_move(move, fmt, strict=False))


def _lc0_move(board: chess.Board, move: chess.Move) -> chess.Move:
    """lc0 writes castling as king-takes-rook."""
    if board.is_castling(move) and not board.chess960:
        rook_file = 7 if chess.square_file(move.to_square) == 6 else 0
        return chess.Move(move.from_square, chess.square(rook_file, chess.square_rank(move.from_square)))
    return move


def move_indices(boards: Sequence[chess.Board], moves: Sequence[chess.Move], fmt: InputFormat | int) -> torch.Tensor:
    """Policy index of ``moves[i]`` as the network sees ``boards[i]``, ``[N]`` long."""
    return torch.tensor(
        [policy_index(b, _lc0_move(b, m), fmt) for b, m in zip(boards, moves, strict=True)], dtype=torch.long
    )
