"""Concept labels against plain python-chess loops, on random games (both sides to move) and hand-picked cases."""

from __future__ import annotations

import chess
import pytest
import torch

from lczerolens import LczeroBoard
from lczerolens.concepts import (
    AttackedBy,
    BestMove,
    Concept,
    HangingPiece,
    InCheck,
    LegalMoveFrom,
    MaterialBalance,
    PieceOnSquare,
)
from lczerolens.errors import InputShapeError, InvalidBoardError, LensError
from lczerolens.testing import random_boards

VALUES = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9, chess.KING: 0}

# Hand-picked: a pinned knight still defends (python-chess attackers ignore pins); the rook behind a rook does
# not x-ray; an en passant square; promotion-ready pawns; black in check.
SPECIAL_FENS = [
    "4k3/8/8/8/1b6/2N5/3K4/8 w - - 0 1",
    "4k3/8/8/8/8/8/R7/R3K3 b - - 0 1",
    "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",
    "8/1P4k1/8/8/8/8/6p1/4K3 w - - 0 1",
    "4k3/8/8/8/8/8/8/4R1K1 b - - 0 1",
    "rnb1kbnr/pppp1ppp/8/4p3/6Pq/5P2/PPPPP2P/RNBQKBNR w KQkq - 1 3",
]


@pytest.fixture(scope="module")
def boards() -> list[LczeroBoard]:
    out = random_boards(1000, seed=7, min_plies=0, max_plies=120)
    out += [LczeroBoard(fen) for fen in SPECIAL_FENS]
    return out


def test_positions_cover_both_sides_and_the_rare_cases(boards):
    turns = [b.turn for b in boards]
    assert len(boards) >= 1000
    assert turns.count(chess.BLACK) > 300 and turns.count(chess.WHITE) > 300
    assert sum(b.is_check() for b in boards) > 20
    assert sum(b.ep_square is not None for b in boards) > 0


def test_piece_on_square_matches_piece_at(boards):
    got = PieceOnSquare().labels(boards)
    got_abs = PieceOnSquare("absolute").labels(boards)
    for i, b in enumerate(boards):
        for sq in chess.SQUARES:
            piece = b.piece_at(sq)
            if piece is None:
                want = want_abs = 0
            else:
                want = piece.piece_type + (0 if piece.color == b.turn else 6)
                want_abs = piece.piece_type + (0 if piece.color == chess.WHITE else 6)
            assert got[i, sq] == want, (b.fen(), chess.square_name(sq))
            assert got_abs[i, sq] == want_abs, (b.fen(), chess.square_name(sq))
    assert PieceOnSquare().classes[got[0, chess.E1]] in ("our K", "their K") or got[0, chess.E1] == 0


def test_in_check_and_material_match(boards):
    check = InCheck().labels(boards)
    material = MaterialBalance().labels(boards)
    assert check.dtype == torch.long and material.dtype == torch.float32
    for i, b in enumerate(boards):
        assert check[i] == int(b.is_check()), b.fen()
        want = sum(VALUES[p.piece_type] * (1 if p.color == b.turn else -1) for p in b.piece_map().values())
        assert material[i] == want, b.fen()


@pytest.mark.parametrize("color", [chess.WHITE, chess.BLACK, "us", "them"])
def test_attacked_by_matches_attackers(boards, color):
    got = AttackedBy(color).labels(boards)
    for i, b in enumerate(boards):
        c = {"us": b.turn, "them": not b.turn}.get(color, color)
        for sq in chess.SQUARES:
            assert got[i, sq] == int(len(b.attackers(c, sq)) > 0), (b.fen(), chess.square_name(sq), color)


def test_hanging_piece_matches_attackers(boards):
    both = HangingPiece().labels(boards)
    ours = HangingPiece("us").labels(boards)
    total = 0
    for i, b in enumerate(boards):
        for sq in chess.SQUARES:
            piece = b.piece_at(sq)
            want = int(
                piece is not None
                and piece.piece_type != chess.KING
                and len(b.attackers(not piece.color, sq)) > 0
                and len(b.attackers(piece.color, sq)) == 0
            )
            total += want
            assert both[i, sq] == want, (b.fen(), chess.square_name(sq))
            assert ours[i, sq] == (want if piece is not None and piece.color == b.turn else 0)
    assert 0 < total < 0.1 * 64 * len(boards)


def test_hanging_piece_by_hand():
    # The c3 knight is attacked by the b4 bishop and defended by the d2 king: not hanging; nothing attacks b4.
    board = chess.Board(SPECIAL_FENS[0])
    assert HangingPiece().labels(board)[0].sum() == 0
    # The d5 queen and the e4 pawn attack each other and neither is defended: both hang.
    board = chess.Board("4k3/8/8/3q4/4P3/8/8/4K3 w - - 0 1")
    assert HangingPiece().labels(board)[0].nonzero().flatten().tolist() == [chess.E4, chess.D5]
    assert HangingPiece("them").labels(board)[0].nonzero().flatten().tolist() == [chess.D5]
    # A pinned piece still defends (python-chess attackers ignore pins): the e2 knight, pinned by the e8 rook,
    # defends the d4 pawn attacked by the c6 knight.
    board = chess.Board("4r1k1/8/2n5/8/3P4/8/4N3/4K3 b - - 0 1")
    assert board.is_pinned(chess.WHITE, chess.E2) and board.is_attacked_by(chess.BLACK, chess.D4)
    assert HangingPiece().labels(board)[0, chess.D4] == 0


def test_legal_move_from_matches_legal_moves(boards):
    got = LegalMoveFrom().labels(boards)
    for i, b in enumerate(boards):
        want = torch.zeros(64, dtype=torch.long)
        for move in b.legal_moves:
            want[move.from_square] = 1
        assert torch.equal(got[i], want), b.fen()


def test_combinators(boards):
    some = boards[:200]
    hanging, attacked_white = HangingPiece().labels(some), AttackedBy(chess.WHITE).labels(some)
    check = InCheck().labels(some)
    assert torch.equal((HangingPiece() & AttackedBy(chess.WHITE)).labels(some), hanging & attacked_white)
    assert torch.equal((HangingPiece() | AttackedBy(chess.WHITE)).labels(some), hanging | attacked_white)
    assert torch.equal((~InCheck()).labels(some), 1 - check)
    # A per-position concept is broadcast over the squares.
    assert torch.equal((InCheck() & HangingPiece()).labels(some), hanging * check[:, None])
    queen = PieceOnSquare().equals("our Q")
    assert queen.per_square and queen.kind == "binary"
    assert torch.equal(queen.labels(some), (PieceOnSquare().labels(some) == 5).long())
    with pytest.raises(LensError, match="binary"):
        PieceOnSquare() & InCheck()
    with pytest.raises(LensError, match="continuous"):
        MaterialBalance().equals(1)
    with pytest.raises(LensError, match="no class"):
        PieceOnSquare().equals("queen")


def test_user_concept_and_errors():
    class WhiteToMove(Concept):
        name = "white_to_move"

        def compute(self, boards):
            return torch.tensor([b.turn for b in boards], dtype=torch.long)

    boards = [LczeroBoard(), LczeroBoard.from_moves(["e2e4"])]
    assert WhiteToMove().labels(boards).tolist() == [1, 0]
    assert (WhiteToMove() & InCheck()).labels(boards).tolist() == [0, 0]

    class Wrong(Concept):
        per_square = True

        def compute(self, boards):
            return torch.zeros(len(boards))

    with pytest.raises(InputShapeError, match="shape"):
        Wrong().labels(boards)
    with pytest.raises(InputShapeError, match="empty"):
        InCheck().labels([])
    with pytest.raises(InvalidBoardError):
        InCheck().labels(["not a board"])
    with pytest.raises(LensError, match="color"):
        AttackedBy("red")


def test_best_move_is_the_networks_top_legal_move(maia_pb_path):
    from lczerolens import LczeroModel

    model = LczeroModel.from_path(maia_pb_path)
    boards = random_boards(40, seed=3, max_plies=60)
    concept = BestMove(model, batch_size=16)
    labels = concept.labels(boards)
    evaluations = model.evaluate(boards, top_k=1)
    for i, (b, ev) in enumerate(zip(boards, evaluations, strict=True)):
        move = ev.best_move
        assert labels[i, move.from_square] == 1 and labels[i, move.to_square] == 2, b.fen()
        assert int((labels[i] > 0).sum()) == 2


@pytest.mark.parametrize("name", ["base", "builtin", "probes", "channels", "activations"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"lczerolens.concepts.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
