"""LczeroBoard without lc0: python-chess behaviour, move round trips, orientation helpers, errors.

The comparisons with lc0 itself are in ``test_board_lc0.py``.
"""

from __future__ import annotations

import random

import chess
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lczerolens.board import (
    FLIP_TRANSFORM,
    MIRROR_TRANSFORM,
    TRANSPOSE_TRANSFORM,
    InputFormat,
    LczeroBoard,
    canonical_transform,
    encode_boards,
)
from lczerolens.errors import InputFormatError, InputShapeError, InvalidBoardError, InvalidMoveError
from lczerolens.policy_index import POLICY_INDEX, POLICY_MOVES

FORMATS = list(InputFormat)

# Positions covering black/white to move, castling, en passant, promotions and every canonical transform.
POSITIONS = [
    (chess.STARTING_FEN, []),
    (chess.STARTING_FEN, ["e2e4", "e7e5", "g1f3", "b8c6", "f1c4", "g8f6"]),
    ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1", []),
    ("r3k2r/1P5p/8/8/8/8/1p5P/R3K2R b KQkq - 0 1", []),  # black promotions, castling
    ("4k3/1P6/8/8/8/8/6p1/4K3 w - - 0 60", []),
    ("rnbqkbnr/pppp1ppp/8/3Pp3/8/8/PPP1PPPP/RNBQKBNR w KQkq e6 0 3", []),
    ("8/8/8/8/8/2k5/8/K7 w - - 0 1", []),  # flip
    ("8/6k1/2R2n2/8/8/8/8/K7 w - - 0 1", []),  # flip + transpose
    ("8/8/2R2n2/8/8/8/1K6/7k b - - 0 1", []),  # mirror
    ("8/6K1/2R2n2/8/8/8/2k5/8 b - - 0 1", []),  # flip + mirror
    ("8/8/2R2n2/8/7K/8/1k6/8 w - - 0 1", []),  # transpose
    ("8/8/2R2n2/7K/8/8/1k6/8 w - - 0 1", []),  # mirror + transpose
    ("8/6K1/2R2n2/8/8/8/8/k7 b - - 0 1", []),  # all three
    ("8/8/8/4k3/8/8/2K5/6Q1 b - - 5 40", []),
]


def boards() -> list[LczeroBoard]:
    return [LczeroBoard.from_moves(moves, fen) for fen, moves in POSITIONS]


def state(board: chess.Board) -> tuple:
    return board.fen(), list(board.move_stack), board.to_input_tensor() if isinstance(board, LczeroBoard) else None


# --- python-chess behaviour -------------------------------------------------------------------------------------


def test_defaults_and_fen():
    board = LczeroBoard()
    assert isinstance(board, chess.Board)
    assert board.fen() == chess.STARTING_FEN
    assert LczeroBoard("8/8/8/4k3/8/8/2K5/6Q1 w - - 5 40").fen() == "8/8/8/4k3/8/8/2K5/6Q1 w - - 5 40"
    assert LczeroBoard(chess960=True).chess960
    assert LczeroBoard(None).occupied == 0


@pytest.mark.parametrize("fen", ["not a fen", "8/8/8/8/8/8/8/8/8 w - - 0 1", "rnbqkbnr/pppppppp w KQkq - 0 1", ""])
def test_invalid_fen_names_the_fen(fen):
    with pytest.raises(InvalidBoardError) as info:
        LczeroBoard(fen)
    assert repr(fen) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_repr():
    board = LczeroBoard()
    assert repr(board) == f"LczeroBoard({chess.STARTING_FEN!r})"
    board.push_uci("e2e4")
    assert repr(board).startswith("LczeroBoard('rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1'")
    assert "history=1 moves" in repr(board)


def test_push_pop_copy_keep_the_encoding_consistent():
    board = LczeroBoard.from_moves(["e2e4", "e7e5", "g1f3", "b8c6", "f3g1", "c6b8", "g1f3"])
    before = board.to_input_tensor()
    board.push_uci("b8c6")
    assert not torch.equal(board.to_input_tensor(), before)
    board.pop()
    assert torch.equal(board.to_input_tensor(), before)
    copy = board.copy()
    assert isinstance(copy, LczeroBoard)
    assert torch.equal(copy.to_input_tensor(), before)
    copy.push_san("Nc6")  # push_san goes through push
    assert torch.equal(board.to_input_tensor(), before)  # the original is untouched
    for f in FORMATS:
        fresh = LczeroBoard.from_moves([m.uci() for m in copy.move_stack])
        assert torch.equal(copy.to_input_tensor(f), fresh.to_input_tensor(f))


def test_copy_with_a_cut_stack_encodes_as_its_own_fen_history():
    game = LczeroBoard.from_moves(["e2e4", "g8f6", "g1f3", "f6g8", "f3g1", "g8f6", "e4e5", "d7d5", "g1f3"])
    cut = game.copy(stack=3)
    root = game.copy(stack=3).root()
    moves = [m.uci() for m in game.move_stack[-3:]]
    reference = LczeroBoard.from_moves(moves, root.fen(en_passant="fen"))
    for f in FORMATS:
        assert torch.equal(cut.to_input_tensor(f), reference.to_input_tensor(f)), f
    # ... and the full board still encodes with its full history afterwards.
    again = LczeroBoard.from_moves([m.uci() for m in game.move_stack])
    for f in FORMATS:
        assert torch.equal(game.to_input_tensor(f), again.to_input_tensor(f)), f


def test_states_pushed_behind_our_back_are_rebuilt():
    moves = ["e2e4", "g8f6", "g1f3", "f6g8", "f3g1", "g8f6", "e4e5", "d7d5"]
    board = LczeroBoard()
    for uci in moves:
        chess.Board.push(board, chess.Move.from_uci(uci))  # python-chess's push: no snapshot taken
    reference = LczeroBoard.from_moves(moves)
    for f in FORMATS:
        assert torch.equal(board.to_input_tensor(f), reference.to_input_tensor(f)), f


def test_from_board_and_plain_boards_in_a_batch():
    plain = chess.Board()
    for uci in ["d2d4", "d7d5", "c2c4", "e7e6", "b1c3"]:
        plain.push_uci(uci)
    ours = LczeroBoard.from_board(plain)
    assert ours.fen() == plain.fen() and ours.move_stack == plain.move_stack
    for f in FORMATS:
        assert torch.equal(encode_boards([plain], f)[0], ours.to_input_tensor(f))
        assert torch.equal(encode_boards(plain, f)[0], ours.to_input_tensor(f))


def test_batch_equals_single_boards():
    batch_boards = boards()
    for f in FORMATS:
        batch = encode_boards(batch_boards, f)
        assert batch.shape == (len(batch_boards), 112, 8, 8) and batch.dtype == torch.float32
        for board, planes in zip(batch_boards, batch, strict=True):
            assert torch.equal(board.to_input_tensor(f), planes)
    assert encode_boards([], 1).shape == (0, 112, 8, 8)
    assert torch.equal(encode_boards(iter(batch_boards), 3), encode_boards(batch_boards, 3))
    with pytest.raises(InvalidBoardError, match="'e2e4'"):
        encode_boards(["e2e4"])


def test_board_edits_without_push_are_seen():
    board = LczeroBoard()
    board.remove_piece_at(chess.E2)
    assert board.to_input_tensor()[0].sum() == 7
    board.set_fen("8/8/8/4k3/8/8/2K5/6Q1 w - - 5 40")
    planes = board.to_input_tensor()
    assert planes[4].flatten().nonzero().flatten().tolist() == [chess.G1]
    assert planes[109, 0, 0] == 5


def test_plane_layout_basics():
    planes = LczeroBoard.from_moves(["e2e4"]).to_input_tensor()
    # Black to move: black's pieces are "ours" and ranks are mirrored, so black's pawns sit on rank 2.
    assert planes[0].flatten().nonzero().flatten().tolist() == list(range(8, 16))
    assert planes[6].flatten().nonzero().flatten().tolist() == [36, 48, 49, 50, 51, 53, 54, 55]
    assert torch.equal(planes[13 + 6], planes[0].flip(0))  # previous position: white's pawns from black's view
    assert planes[108].eq(1).all() and planes[111].eq(1).all() and planes[109].eq(0).all()
    assert not planes[26:104].any()  # start position: no fill
    hecto = LczeroBoard("8/8/8/4k3/8/8/2K5/6Q1 w - - 57 40").to_input_tensor(InputFormat.CANONICALIZATION_HECTOPLIES)
    assert hecto[109, 3, 3].item() == pytest.approx(0.57)


def test_encoding_is_deterministic_whatever_was_encoded_before():
    moves = ["g1f3", "g8f6", "f3g1", "f6g8", "g1f3", "g8f6", "f3g1", "f6g8", "e2e4"]
    first = LczeroBoard.from_moves(moves)
    expected = {f: first.to_input_tensor(f) for f in FORMATS}
    second = LczeroBoard()
    for uci in moves:
        second.to_input_tensor(InputFormat.CANONICALIZATION_V2)
        second.push_uci(uci)
    for f in reversed(FORMATS):
        assert torch.equal(second.to_input_tensor(f), expected[f])


# --- moves ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", FORMATS)
def test_every_legal_move_round_trips(f):
    for board in boards():
        indices = board.legal_move_indices(f)
        assert indices.dtype == torch.int64
        moves = list(board.legal_moves)
        assert len(set(indices.tolist())) == len(moves)
        assert all(0 <= i < len(POLICY_MOVES) for i in indices.tolist())
        for move, index in zip(moves, indices.tolist(), strict=True):
            assert board.encode_move(move, f) == index
            assert board.encode_move(move.uci(), f) == index
            assert board.decode_move(index, f) == move


def test_known_indices():
    board = LczeroBoard()
    assert board.encode_move("e2e4") == POLICY_INDEX["e2e4"]
    board.push_uci("e2e4")
    assert board.encode_move("e7e5") == POLICY_INDEX["e2e4"]  # black's move, ranks mirrored
    castle = LczeroBoard("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1")
    assert castle.encode_move("e1g1") == castle.encode_move("e1h1") == POLICY_INDEX["e1h1"]
    assert castle.encode_move("e1c1") == POLICY_INDEX["e1a1"]
    promo = LczeroBoard("4k3/1P6/8/8/8/8/6p1/4K3 w - - 0 60")
    assert promo.encode_move("b7b8n") == POLICY_INDEX["b7b8"]  # knight promotion: the plain entry
    assert promo.encode_move("b7b8r") == POLICY_INDEX["b7b8r"]
    assert promo.decode_move(POLICY_INDEX["b7b8"]) == chess.Move.from_uci("b7b8n")
    promo.push_uci("e1d2")
    assert promo.encode_move("g2g1b") == POLICY_INDEX["g7g8b"]


def test_canonical_transforms():
    expected = [0, 0, 0, 0, 0, 0, 1, 5, 2, 3, 4, 6, 7, 4]
    for board, transform in zip(boards(), expected, strict=True):
        assert board.canonical_transform(InputFormat.CANONICALIZATION) == transform, board.fen()
        assert canonical_transform(chess.Board(board.fen()), InputFormat.CANONICALIZATION_V2) == transform
        assert board.canonical_transform(InputFormat.CLASSICAL_112_PLANE) == 0
        assert board.canonical_transform(InputFormat.CASTLING_PLANE) == 0
    assert (FLIP_TRANSFORM, MIRROR_TRANSFORM, TRANSPOSE_TRANSFORM) == (1, 2, 4)
    # A flipped position's moves are flipped too: from a1 the king's b2 step reads as h1-g2.
    flipped = LczeroBoard("8/8/8/8/8/2k5/8/K7 w - - 0 1")
    assert flipped.encode_move("a1b1", 3) == POLICY_INDEX["h1g1"]


@pytest.mark.parametrize("bad", ["e9e4", "hello", "", "e2", "e2e4qq", 42, None, chess.Move.null()])
def test_malformed_moves(bad):
    board = LczeroBoard()
    before = state(board)
    with pytest.raises(InvalidMoveError) as info:
        board.encode_move(bad)
    assert repr(bad if not isinstance(bad, chess.Move) else bad.uci()) in str(info.value) or str(bad) in str(
        info.value
    )
    assert state(board)[:2] == before[:2] and torch.equal(board.to_input_tensor(), before[2])


@pytest.mark.parametrize("bad", ["e7e4", "e8g8", "a2a1q", chess.Move.from_uci("e2e4")])
def test_illegal_moves_change_nothing(bad):
    board = LczeroBoard.from_moves(["g1f3"])
    before = state(board)
    with pytest.raises(InvalidMoveError, match="not a legal move"):
        board.encode_move(bad)
    with pytest.raises(InvalidMoveError):
        LczeroBoard.from_moves(["g1f3", bad if isinstance(bad, str) else bad.uci(), "e7e5"])
    after = state(board)
    assert after[:2] == before[:2] and torch.equal(after[2], before[2])


@pytest.mark.parametrize("bad", [-1, 1858, 10**9, 1.5, "322", True, None])
def test_bad_indices(bad):
    board = LczeroBoard()
    with pytest.raises(InvalidMoveError) as info:
        board.decode_move(bad)
    assert str(bad) in str(info.value)


def test_non_strict_encoding_of_moves_that_are_not_legal():
    board = LczeroBoard("4k3/8/8/8/8/8/8/4K3 b - - 0 1")
    # The same mapping as for legal moves: black's e7e5 reads as e2e4; a removed piece's move still has an index.
    assert board.encode_move("e7e5", strict=False) == POLICY_INDEX["e2e4"]
    assert board.encode_move(chess.Move.from_uci("a2a1q"), strict=False) == POLICY_INDEX["a7a8q"]
    assert board.encode_move("e8d8", strict=False) == board.encode_move("e8d8")
    for bad in ("e7e1q", "a1h2", "zz", chess.Move.null()):
        with pytest.raises(InvalidMoveError):
            board.encode_move(bad, strict=False)


def test_index_of_an_illegal_move():
    board = LczeroBoard()
    with pytest.raises(InvalidMoveError, match=str(POLICY_INDEX["e2e5"])):
        board.decode_move(POLICY_INDEX["e2e5"])
    assert board.decode_move(torch.tensor(POLICY_INDEX["e2e4"])) == chess.Move.from_uci("e2e4")


@pytest.mark.parametrize("bad", [0, 6, 134, "classical", None, 1.5])
def test_unknown_formats(bad):
    board = LczeroBoard()
    for call in (
        lambda: board.to_input_tensor(bad),
        lambda: encode_boards([board], bad),
        lambda: board.encode_move("e2e4", bad),
        lambda: board.legal_move_indices(bad),
        lambda: board.decode_move(322, bad),
        lambda: board.canonical_transform(bad),
        lambda: board.network_to_board(torch.zeros(8, 8), bad),
    ):
        with pytest.raises(InputFormatError) as info:
            call()
        assert repr(bad) in str(info.value)
    assert InputFormat(133) is InputFormat.CANONICALIZATION_V2_ARMAGEDDON
    assert torch.equal(board.to_input_tensor(1), board.to_input_tensor(InputFormat.CLASSICAL_112_PLANE))


# --- orientation and policy helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize("f", FORMATS)
def test_board_network_round_trip(f):
    g = torch.Generator().manual_seed(0)
    for board in boards():
        x = torch.randn(2, 3, 8, 8, generator=g)
        there = board.board_to_network(x, f)
        assert there.shape == x.shape
        assert torch.equal(board.network_to_board(there, f), x)
        assert torch.equal(board.board_to_network(board.network_to_board(x, f), f), x)


def test_network_to_board_puts_pieces_on_their_squares():
    for board in boards():
        for f in FORMATS:
            planes = board.network_to_board(board.to_input_tensor(f), f)
            us = board.turn
            for plane, piece_type in enumerate(chess.PIECE_TYPES):
                assert planes[plane].flatten().nonzero().flatten().tolist() == sorted(board.pieces(piece_type, us))
                theirs = sorted(board.pieces(piece_type, not us))
                assert planes[6 + plane].flatten().nonzero().flatten().tolist() == theirs


def test_orientation_shape_errors():
    board = LczeroBoard()
    for bad in (torch.zeros(8), torch.zeros(8, 7), torch.zeros(3, 64)):
        with pytest.raises(InputShapeError, match=str(tuple(bad.shape))):
            board.network_to_board(bad)
        with pytest.raises(InputShapeError):
            board.board_to_network(bad)


def test_policy_helpers():
    board = LczeroBoard.from_moves(["e2e4"])
    values = torch.arange(1858.0)
    moves = board.policy_to_moves(values)
    assert list(moves) == list(board.legal_moves)
    assert moves[chess.Move.from_uci("e7e5")] == POLICY_INDEX["e2e4"]
    assert board.policy_to_moves(values[None]) == moves
    batch = torch.stack([values, -values])
    picked = board.legal_policy(batch)
    assert picked.shape == (2, board.legal_moves.count())
    assert torch.equal(picked[1], -picked[0])
    for bad in (torch.zeros(1857), torch.zeros(2, 1858), torch.tensor(1.0)):
        with pytest.raises(InputShapeError):
            board.policy_to_moves(bad)


def test_render_heatmap_delegates_to_visual(monkeypatch):
    visual = pytest.importorskip("lczerolens.visual")
    seen = {}

    def fake(board, values, **options):
        seen.update(board=board, values=values, options=options)
        return "drawn"

    monkeypatch.setattr(visual, "render_heatmap", fake)
    board = LczeroBoard()
    values = torch.rand(8, 8)
    assert board.render_heatmap(values, title="x") == "drawn"
    assert seen["board"] is board and seen["values"] is values and seen["options"] == {"title": "x"}


# --- property-based ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), plies=st.integers(0, 120), fmt=st.sampled_from(FORMATS))
def test_random_games_round_trip(seed, plies, fmt):
    rng = random.Random(seed)
    board = LczeroBoard()
    for _ in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            break
        board.push(rng.choice(moves))
    indices = board.legal_move_indices(fmt).tolist()
    assert len(set(indices)) == len(indices)
    for move, index in zip(board.legal_moves, indices, strict=True):
        assert board.decode_move(index, fmt) == move
    x = torch.randn(112, 8, 8)
    assert torch.equal(board.network_to_board(board.board_to_network(x, fmt), fmt), x)
    planes = board.to_input_tensor(fmt)
    assert planes.shape == (112, 8, 8)
    assert ((planes == 0) | (planes == 1))[:109].all()
    assert torch.equal(encode_boards([board, board], fmt)[1], planes)


def test_docstring_examples():
    import doctest

    import lczerolens.board

    result = doctest.testmod(lczerolens.board, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 20 and result.failed == 0
