"""The top legal move found from a few candidates equals the one found from every legal move.

``TopLegalMoves`` reads the highest policy entries and tests each for legality instead of listing every legal move
(python-chess's move generation was most of the top-move target's time on a GPU). These tests hold it to the full
route, ``top_legal(policy, legal_indices(...))``, on boards with castling (standard and Chess960), promotions, en
passant and canonical input formats, and on policies whose top entries are illegal or tied.
"""

from __future__ import annotations

import random

import pytest
import torch

from lczerolens import InputFormat, LczeroBoard
from lczerolens.errors import LensError
from lczerolens.lenses.base import TopLegalMoves, legal_indices, top_legal
from lczerolens.testing import random_boards

SPECIAL = [
    "r3k2r/pppq1ppp/2n2n2/3pp3/3PP3/2N2N2/PPPQ1PPP/R3K2R w KQkq - 0 9",  # castling both ways, both sides
    "r3k2r/pppq1ppp/2n2n2/3pp3/3PP3/2N2N2/PPPQ1PPP/R3K2R b KQkq - 0 9",
    "3qk3/1P6/8/8/8/8/6p1/4K2R w K - 0 40",  # promotions with and without capture; castling
    "4k3/8/8/8/8/8/1p4P1/R3K3 b Q - 0 40",  # black promotes, white castles long
    "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",  # en passant
    "8/8/8/2k5/2pP4/8/8/4K3 b - d3 0 50",  # en passant for black
    "7k/8/8/8/8/8/8/K7 w - - 0 60",  # bare kings: no castling, canonical transforms apply
    "8/2P5/8/8/3k4/8/5K2/8 w - - 0 70",
]
CHESS960 = [
    "bqnbrkrn/pppppppp/8/8/8/8/PPPPPPPP/BQNBRKRN w KQkq - 0 1",
    "qrknrbbn/pppppppp/8/8/8/8/PPPPPPPP/QRKNRBBN w KQkq - 0 1",
]


def _boards() -> list[LczeroBoard]:
    boards = [LczeroBoard(f) for f in SPECIAL]
    for fen in CHESS960:
        board = LczeroBoard(fen, chess960=True)
        rng = random.Random(fen)
        for _ in range(12):  # play towards castling
            moves = list(board.legal_moves)
            castles = [m for m in moves if board.is_castling(m)]
            if castles:
                boards.append(board.copy())
                board.push(castles[0])
                break
            board.push(rng.choice(moves))
        boards.append(board.copy())
    return boards + random_boards(24, seed=7, min_plies=2, max_plies=90)


@pytest.mark.parametrize("fmt", list(InputFormat))
def test_each_policy_index_is_legal_exactly_when_the_full_list_holds_it(fmt):
    for board in _boards():
        orientation = board._move_orientation(fmt)
        full = set(board.legal_move_indices(fmt).tolist())
        quick = {i for i in range(1858) if board._is_legal_index(i, orientation)}
        assert quick == full, board.fen()


@pytest.mark.parametrize("fmt", [InputFormat.CLASSICAL_112_PLANE, InputFormat.CANONICALIZATION_V2])
def test_the_chosen_move_equals_the_full_routes_on_any_policy(fmt):
    boards = _boards()
    legal = legal_indices(boards, fmt)
    gen = torch.Generator().manual_seed(0)
    n = len(boards)
    policies = {
        "gaussian": torch.randn(n, 1858, generator=gen),
        "all equal": torch.zeros(n, 1858),
        "few values (ties)": torch.randint(0, 3, (n, 1858), generator=gen).float(),
    }
    # The 20 highest entries illegal, the legal ones below: every row falls back to the full list.
    illegal_top = torch.randn(n, 1858, generator=gen)
    for row, ids in enumerate(legal):
        illegal_top[row, ids] -= 100.0
    policies["top entries illegal"] = illegal_top
    # A legal move tied with illegal entries at the head, and beyond the candidates.
    tied = torch.randn(n, 1858, generator=gen)
    for row, ids in enumerate(legal):
        tied[row, :12] = 50.0
        tied[row, ids[-1]] = 50.0
    policies["ties beyond the candidates"] = tied
    # Rows that miss first (the switch to listing every move), then rows whose top entry is legal.
    mixed = illegal_top.clone()
    for row, ids in enumerate(legal[20:], start=20):
        mixed[row, ids[0]] = 200.0
    policies["misses, then hits"] = mixed
    for name, policy in policies.items():
        expected = top_legal(policy, legal)
        got = TopLegalMoves(boards, fmt).choose(policy)
        assert torch.equal(got, expected), name


def test_rows_go_straight_to_the_full_list_once_the_candidates_keep_missing(monkeypatch):
    """A net that gives illegal moves its highest logits: after 16 rows without a legal candidate the rest are
    not tested one by one (each would cost 8 legality tests and then the full list anyway)."""
    boards = _boards()
    assert len(boards) > 30
    legal = legal_indices(boards, InputFormat.CLASSICAL_112_PLANE)
    policy = torch.randn(len(boards), 1858, generator=torch.Generator().manual_seed(1))
    for row, ids in enumerate(legal):
        policy[row, ids] -= 100.0
    calls = []
    original = LczeroBoard._is_legal_index
    monkeypatch.setattr(LczeroBoard, "_is_legal_index", lambda self, *a: calls.append(1) or original(self, *a))
    got = TopLegalMoves(boards, InputFormat.CLASSICAL_112_PLANE).choose(policy)
    assert torch.equal(got, top_legal(policy, legal))
    assert len(calls) == 16 * 8


def test_a_board_without_legal_moves_is_refused_before_anything_runs():
    mate = LczeroBoard("7k/6Q1/6K1/8/8/8/8/8 b - - 0 1")
    assert mate.is_checkmate()
    with pytest.raises(LensError, match="no legal move"):
        TopLegalMoves([LczeroBoard(), mate], InputFormat.CLASSICAL_112_PLANE)


def test_the_top_move_target_of_a_lens_is_the_networks_top_legal_move(tmp_path):
    """A random-weight net puts its highest logits on illegal moves; the lens still explains the top legal one."""
    from lczerolens.lenses import GradientLens
    from lczerolens.model import LczeroModel
    from lczerolens.testing import write_random_net

    model = LczeroModel.from_path(write_random_net(tmp_path / "net.pb.gz", seed=11))
    boards = random_boards(16, seed=12, min_plies=3)
    rel = GradientLens("gradient_x_input").relevance(model, boards)
    with torch.no_grad():
        policy = model(boards)["policy"]
    assert torch.equal(rel.policy_indices, top_legal(policy, legal_indices(boards, model.input_format)))
