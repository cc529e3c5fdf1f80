"""Piece-removal metrics on a hand-built toy network whose right answer is known.

The toy network's every output is a weighted sum of piece presence per square (current-position planes 0-11,
network orientation) plus a bias, so each piece contributes a fixed amount and the faithful attribution of a
position is exactly those contributions.
"""

from __future__ import annotations

import chess
import pytest
import torch
from torch import nn

from lczerolens import metrics
from lczerolens.errors import InputShapeError, LensError
from lczerolens.policy_index import POLICY_INDEX

FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "r1bq1rk1/ppp2ppp/2np1n2/2b1p3/2B1P3/2NP1N2/PPP2PPP/R1BQ1RK1 b - - 0 7",
    "8/5pk1/6p1/3R4/8/6P1/5PKP/3r4 w - - 4 41",
    "2r3k1/5ppp/8/8/8/8/5PPP/2R3K1 b - - 10 30",
    "rnbqkb1r/ppp2ppp/4pn2/3p4/2PP4/2N5/PP2PPPP/R1BQKBNR w KQkq - 2 4",
    "4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 2",
    "r3k2r/pppq1ppp/2n2n2/3pp3/3PP3/2N2N2/PPPQ1PPP/R3K2R b KQkq - 3 8",
    "6k1/5p2/4p1p1/8/1P6/P4N2/5PPP/6K1 b - - 0 28",
]


class ToyNet(nn.Module):
    """Every head is ``bias + sum(weights * planes[:, :12])``; one policy index gets an extra offset."""

    def __init__(self, weights: torch.Tensor, bias: float = 0.0, offsets: torch.Tensor | None = None) -> None:
        super().__init__()
        from lczerolens.board import InputFormat

        self.weights = nn.Parameter(weights.reshape(12, 8, 8).clone(), requires_grad=False)
        self.bias = bias
        self.offsets = torch.zeros(1858) if offsets is None else offsets
        self.input_format = InputFormat.CLASSICAL_112_PLANE
        self.heads = ("policy", "wdl")
        self.description = "toy: weighted piece count"
        self.lrp_linear = True  # linear in the planes: the LRP lens may treat it as such

    def forward(self, planes: torch.Tensor) -> dict[str, torch.Tensor]:
        s = (planes[:, :12] * self.weights).sum((1, 2, 3)) + self.bias
        zero = torch.zeros_like(s)
        return {
            "policy": s[:, None] + self.offsets[None, :],
            "wdl_logits": torch.stack([s, zero, zero], 1),
        }


def true_scores(net: ToyNet, board: chess.Board) -> torch.Tensor:
    """Each piece's contribution to the toy net's output, board orientation ``[64]``."""
    out = torch.zeros(64, dtype=torch.float64)
    w = net.weights.reshape(12, 64)
    for square, piece in board.piece_map().items():
        plane = piece.piece_type - 1 + (0 if piece.color == board.turn else 6)
        net_square = square if board.turn else chess.square_mirror(square)
        out[square] = float(w[plane, net_square])
    return out


def random_toy(seed: int = 0) -> ToyNet:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randn(1858, generator=gen) * 0.5
    return ToyNet(torch.randn(12, 64, generator=gen), bias=3.0, offsets=offsets)


# ---------------------------------------------------------------------------------------------------------------
# Removing pieces


def test_removal_clears_castling_rights_of_removed_rooks() -> None:
    board = chess.Board("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 7 20")
    assert metrics.remove_pieces(board, [chess.H1]).castling_xfen() == "Qkq"
    assert metrics.remove_pieces(board, [chess.A8]).castling_xfen() == "KQk"
    both = metrics.remove_pieces(board, [chess.A1, chess.H1])
    assert both.castling_xfen() == "kq"
    # Rule-50 counter and move number stay.
    assert both.halfmove_clock == 7 and both.fullmove_number == 20
    # The original is untouched.
    assert board.castling_xfen() == "KQkq"


def test_removal_clears_en_passant_that_no_longer_holds() -> None:
    board = chess.Board("4k3/8/8/3pP3/8/8/7N/4K3 w - d6 0 2")
    assert board.ep_square == chess.D6
    assert metrics.remove_pieces(board, [chess.H2]).ep_square == chess.D6
    # The double-pushed pawn is gone, or the only pawn that could take it.
    assert metrics.remove_pieces(board, [chess.D5]).ep_square is None
    assert metrics.remove_pieces(board, [chess.E5]).ep_square is None


def test_kings_are_never_removed() -> None:
    board = chess.Board(FENS[0])
    squares = metrics.removable_squares(board)
    assert chess.E1 not in squares and chess.E8 not in squares
    assert len(squares) == 30
    scores = torch.zeros(64)
    scores[chess.E1] = scores[chess.E8] = 100.0  # even when they score highest
    order = metrics.removal_order(board, scores)
    assert sorted(order) == squares
    last = metrics.removal_path(board, order)[-1]
    assert last.piece_map() == {chess.E1: chess.Piece(chess.KING, chess.WHITE), chess.E8: chess.Piece.from_symbol("k")}
    assert last.castling_rights == 0
    with pytest.raises(LensError, match="king"):
        metrics.remove_pieces(board, [chess.E1])
    with pytest.raises(LensError, match="e4"):
        metrics.remove_pieces(chess.Board(), [chess.E4])


def test_removal_order_descending_with_ties_by_square() -> None:
    board = chess.Board("1n2k3/8/8/8/8/8/8/R2QK3 w Q - 0 1")
    scores = torch.zeros(8, 8)  # [rank, file]
    scores[0, 3] = 3.0  # d1
    order = metrics.removal_order(board, scores)
    assert order == [chess.D1, chess.A1, chess.B8]
    with pytest.raises(InputShapeError):
        metrics.removal_order(board, torch.zeros(63))
    with pytest.raises(LensError):
        metrics.removal_order(board, torch.full((64,), float("nan")))


# ---------------------------------------------------------------------------------------------------------------
# Exact numbers on a small example


def hand_net() -> ToyNet:
    """White to move: our queen on d1 is worth 3, our rook on a1 1, their knight on b8 -2; bias 5."""
    w = torch.zeros(12, 64)
    w[4, chess.D1] = 3.0  # our queen
    w[3, chess.A1] = 1.0  # our rook
    w[7, chess.B8] = -2.0  # their knight
    offsets = torch.zeros(1858)
    offsets[POLICY_INDEX["d1d8"]] = 1.0  # the top move
    return ToyNet(w, bias=5.0, offsets=offsets)


HAND_FEN = "1n2k3/8/8/8/8/8/8/R2QK3 w Q - 0 1"


def test_hand_computed_value_target() -> None:
    net = hand_net()
    task = metrics.prepare(net, [HAND_FEN], target="value")
    assert task.f0.tolist() == [7.0]
    scores = true_scores(net, task.boards[0])
    curves = metrics.perturbation_curves(net, task, scores[None])
    # MoRF d1, a1, b8: 4, 3, 5. LeRF b8, a1, d1: 9, 8, 5.
    assert curves.morf[0].tolist() == [4.0, 3.0, 5.0]
    assert curves.lerf[0].tolist() == [9.0, 8.0, 5.0]
    # AOPC = mean(3, 4, 2) = 3; ABPC = mean(5, 5, 0) = 10/3 (unnormalised for the value).
    assert curves.aopc().tolist() == pytest.approx([3.0])
    assert curves.abpc().tolist() == pytest.approx([10.0 / 3.0])


def test_hand_computed_move_target() -> None:
    net = hand_net()
    task = metrics.prepare(net, [HAND_FEN], target="move")
    assert task.moves == [chess.Move.from_uci("d1d8")]
    assert task.indices.tolist() == [POLICY_INDEX["d1d8"]]
    assert task.f0.tolist() == [8.0]
    curves = metrics.perturbation_curves(net, task, true_scores(net, task.boards[0])[None])
    # The index stays fixed after the queen is gone: 5, 4, 6 and 10, 9, 6; divided by |f_0| = 8.
    assert curves.morf[0].tolist() == [5.0, 4.0, 6.0]
    assert curves.aopc().tolist() == pytest.approx([3.0 / 8.0])
    assert curves.abpc().tolist() == pytest.approx([(10.0 / 3.0) / 8.0])


def test_hand_example_black_to_move_is_mirrored() -> None:
    # The same position seen from black: black's queen on d8 is "our queen on d1" in network orientation.
    net = hand_net()
    fen = "r2qk3/8/8/8/8/8/8/1N2K3 b q - 0 1"
    task = metrics.prepare(net, [fen], target="value")
    assert task.f0.tolist() == [7.0]
    expected = torch.zeros(64, dtype=torch.float64)
    expected[chess.D8], expected[chess.A8], expected[chess.B1] = 3.0, 1.0, -2.0
    assert torch.equal(true_scores(net, task.boards[0]), expected)
    for method in (metrics.gradient_x_input_attribution, metrics.occlusion_attribution):
        assert torch.allclose(method(net, task), expected[None], atol=1e-5), method.__name__
    result = metrics.evaluate_method(net, task, "occlusion")
    assert result.aopc.tolist() == pytest.approx([3.0])
    assert result.abpc.tolist() == pytest.approx([10.0 / 3.0])


# ---------------------------------------------------------------------------------------------------------------
# The right order wins


@pytest.mark.parametrize("target", ["value", "move"])
def test_true_attribution_beats_random_beats_reversed(target: str) -> None:
    net = random_toy(1)
    task = metrics.prepare(net, FENS, target=target)
    truth = torch.stack([true_scores(net, b) for b in task.boards])
    best = metrics.evaluate_method(net, task, lambda m, t: truth, name="truth")
    worst = metrics.evaluate_method(net, task, lambda m, t: -truth, name="reversed")
    rand = metrics.evaluate_method(net, task, "random")
    for metric in ("aopc", "abpc"):
        b, r, w = (getattr(x, metric) for x in (best, rand, worst))
        # Per position: no order beats the true one, none is worse than its reverse.
        assert (b >= r - 1e-9).all() and (r >= w - 1e-9).all(), metric
        assert b.mean() > r.mean() > w.mean(), metric
    # Reversing MoRF swaps the curves: ABPC changes sign.
    assert torch.allclose(worst.abpc, -best.abpc)
    diff = metrics.paired_difference(best.abpc, rand.abpc)
    assert diff.low > 0


def test_linear_net_methods_recover_the_truth() -> None:
    net = random_toy(2)
    task = metrics.prepare(net, FENS, target="value")
    truth = torch.stack([true_scores(net, b) for b in task.boards])
    assert torch.allclose(metrics.gradient_x_input_attribution(net, task), truth, atol=1e-5)
    # Occlusion never removes a king: those squares score 0.
    kings = torch.stack([torch.tensor([b.piece_type_at(s) == chess.KING for s in range(64)]) for b in task.boards])
    assert torch.allclose(metrics.occlusion_attribution(net, task), truth.masked_fill(kings, 0.0), atol=1e-5)
    # |gradient| sums |w| over the 12 piece planes of the square, occupied or not.
    grad = metrics.abs_gradient_attribution(net, task)
    w = net.weights.reshape(12, 64).abs().sum(0).double()
    for i, board in enumerate(task.boards):
        expected = w if board.turn else w.reshape(8, 8).flip(0).reshape(64)
        assert torch.allclose(grad[i], expected, atol=1e-5)


def test_batched_curves_match_one_position_at_a_time() -> None:
    net = random_toy(3)
    task = metrics.prepare(net, FENS, target="move")
    scores = metrics.random_attribution(net, task, seed=7)
    together = metrics.perturbation_curves(net, task, scores, batch_size=37)
    for i in range(len(FENS)):
        alone_task = metrics.prepare(net, [FENS[i]], target="move")
        assert alone_task.moves == [task.moves[i]]
        alone = metrics.perturbation_curves(net, alone_task, scores[i : i + 1])
        n = int(alone.n[0])
        assert int(together.n[i]) == n
        assert torch.allclose(together.morf[i, :n], alone.morf[0, :n])
        assert torch.allclose(together.lerf[i, :n], alone.lerf[0, :n])
        assert together.aopc()[i] == pytest.approx(float(alone.aopc()[0]))
    # The last step of both paths is the bare kings.
    last = together.n.long() - 1
    rows = torch.arange(len(FENS))
    assert torch.equal(together.morf[rows, last], together.lerf[rows, last])


def test_random_is_the_mean_of_five_seeds() -> None:
    net = random_toy(4)
    task = metrics.prepare(net, FENS[:3], target="value")
    result = metrics.evaluate_method(net, task, "random")
    per_seed = [
        metrics.perturbation_curves(net, task, metrics.random_attribution(net, task, s)).abpc()
        for s in metrics.RANDOM_SEEDS
    ]
    assert torch.allclose(result.abpc, torch.stack(per_seed).mean(0))
    assert len(metrics.RANDOM_SEEDS) == 5


def test_prepare_rejects_bare_kings_and_bad_targets() -> None:
    net = random_toy(0)
    with pytest.raises(LensError, match="kings"):
        metrics.prepare(net, ["4k3/8/8/8/8/8/8/4K3 w - - 0 1"])
    with pytest.raises(LensError, match="target"):
        metrics.prepare(net, FENS[:1], target="mlh")


# ---------------------------------------------------------------------------------------------------------------
# Averages


def test_bootstrap_interval() -> None:
    values = torch.arange(100, dtype=torch.float64)
    est = metrics.bootstrap_mean(values)
    assert est.mean == pytest.approx(49.5)
    assert 40 < est.low < 49.5 < est.high < 59
    assert metrics.bootstrap_mean(values) == est  # fixed seed
    same = metrics.paired_difference(values, values)
    assert same == (0.0, 0.0, 0.0)
    shifted = metrics.paired_difference(values + 1.0, values)
    assert shifted.mean == pytest.approx(1.0) and shifted.low == pytest.approx(1.0)
    with pytest.raises(InputShapeError):
        metrics.paired_difference(values, values[:-1])
    with pytest.raises(LensError):
        metrics.bootstrap_mean([1.0, float("nan")])


# ---------------------------------------------------------------------------------------------------------------
# The explained move through orientation changes


@pytest.mark.parametrize("fmt", [1, 3, 5])
def test_move_index_follows_the_board_orientation(fmt: int) -> None:
    from lczerolens.board import LczeroBoard

    # Castling rights, then none; pawns, then none: the canonical transform changes along the way.
    board = LczeroBoard("r3k2r/pppq1ppp/2n2n2/3pp3/3PP3/2N2N2/PPPQ1PPP/R3K2R b KQkq - 3 8")
    move = chess.Move.from_uci("d7g4")
    order = [chess.A8, chess.H8, chess.A1, chess.H1, chess.C6, chess.F6]
    for b in [board, *metrics.removal_path(board, order)]:
        assert b.is_legal(move)
        assert metrics.policy_index(b, move, fmt) == b.encode_move(move, fmt)
    board = LczeroBoard("8/8/6K1/8/3n4/8/2p5/k6R w - - 0 60")
    move = chess.Move.from_uci("h1h8")
    seen = set()
    for b in [board, *metrics.removal_path(board, [chess.C2, chess.D4])]:
        assert metrics.policy_index(b, move, fmt) == b.encode_move(move, fmt)
        seen.add(b.canonical_transform(fmt))
    assert len(seen) == (2 if fmt >= 3 else 1)
    # Once the rook is gone the move is illegal; its index is the one the same orientation gives.
    with_rook, without_rook = metrics.removal_path(board, [chess.C2, chess.H1])
    assert without_rook.canonical_transform(fmt) == with_rook.canonical_transform(fmt)
    assert not without_rook.is_legal(move)
    assert metrics.policy_index(without_rook, move, fmt) == with_rook.encode_move(move, fmt)
    # Castling is written king-takes-rook.
    board = LczeroBoard("r3k2r/pppq1ppp/2n2n2/3pp3/3PP3/2N2N2/PPPQ1PPP/R3K2R b KQkq - 3 8")
    castle = chess.Move.from_uci("e8g8")
    assert metrics.policy_index(board, metrics._lc0_move(board, castle), fmt) == board.encode_move(castle, fmt)


def test_canonical_format_keeps_explaining_the_same_move() -> None:
    from lczerolens.board import InputFormat

    fmt = InputFormat.CANONICALIZATION
    offsets = torch.zeros(1858)
    offsets[POLICY_INDEX["h1h8"]] = 5.0  # whichever legal move lands on this index is the top move
    net = ToyNet(torch.zeros(12, 64), bias=1.0, offsets=offsets)
    net.input_format = fmt
    fen = "8/8/6K1/8/3n4/8/2p5/k6R w - - 0 60"
    task = metrics.prepare(net, [fen], target="move")
    transform = task.boards[0].canonical_transform(fmt)
    assert task.indices.tolist() == [task.boards[0].encode_move("h1h8", fmt)]
    # Without the last pawn the board is transformed differently, and the index follows the move.
    path = metrics.removal_path(task.boards[0], [chess.C2])
    assert path[0].canonical_transform(fmt) != transform
    idx = metrics._indices_for(task, 0, path, fmt)
    assert int(idx[0]) == path[0].encode_move(task.moves[0], fmt) != int(task.indices[0])


def test_shared_cache_gives_the_same_figures() -> None:
    net = random_toy(8)
    shared: dict = {}
    for target in ("move", "value"):
        cached = metrics.prepare(net, FENS[:4], target, cache=shared)
        fresh = metrics.prepare(net, FENS[:4], target)
        for method in ("random", "occlusion", "gradient_x_input"):
            a = metrics.evaluate_method(net, cached, method)
            b = metrics.evaluate_method(net, fresh, method)
            assert torch.allclose(a.aopc, b.aopc) and torch.allclose(a.abpc, b.abpc), (target, method)
    # The value entries were filled by the move task's forward passes too.
    assert any(key[1] == -1 for key in shared) and any(key[1] >= 0 for key in shared)


@pytest.mark.parametrize("softmax", ["attnlrp", "cp"])
def test_lrp_on_the_linear_net_recovers_the_truth(softmax: str) -> None:
    # A network with no rule-bearing op: every LRP rule reduces to gradient x input, i.e. the contributions.
    pytest.importorskip("lczerolens.lenses")
    net = random_toy(9)
    for target in ("move", "value"):
        task = metrics.prepare(net, FENS[:4], target)
        truth = torch.stack([true_scores(net, b) for b in task.boards])
        lrp = metrics.lrp_attribution(net, task, softmax=softmax)
        # The bias is no square's: LRP leaves it out, as the truth does.
        assert torch.allclose(lrp, truth, atol=1e-4), target
