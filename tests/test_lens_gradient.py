"""GradientLens and OcclusionLens against plain autograd and hand-made forwards."""

from __future__ import annotations

import chess
import pytest
import torch

from lczerolens.board import LczeroBoard, encode_boards, removable_squares, remove_pieces
from lczerolens.errors import InputShapeError, InvalidMoveError, LensError
from lczerolens.lenses import GradientLens, OcclusionLens
from lczerolens.lenses.gradient import kings_only
from lczerolens.model import LczeroModel
from lczerolens.testing import random_boards, write_random_net

FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "r1bq1rk1/ppp2ppp/2np1n2/2b1p3/2B1P3/2NP1N2/PPP2PPP/R1BQ1RK1 b - - 0 7",
    "2r3k1/5ppp/8/8/8/8/5PPP/2R3K1 b - - 10 30",
]


@pytest.fixture(scope="module")
def maia(maia_pb_path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


def value_of(outputs: dict) -> torch.Tensor:
    wdl = outputs["wdl_logits"]
    return wdl[:, 0] - wdl[:, 2]


def explained_change(on_x: dict, on_base: dict, target: str | None, indices: torch.Tensor) -> torch.Tensor:
    """``f(x) - f(x0)`` of the explained output: the value, or the policy logit at ``indices`` (one per row)."""
    if target == "value":
        return value_of(on_x) - value_of(on_base)
    rows = torch.arange(len(indices))
    return on_x["policy"][rows, indices] - on_base["policy"][rows, indices]


def by_hand_gradient(model, boards, read):
    x = encode_boards(boards, model.input_format).requires_grad_(True)
    out = read(model.network(x), boards)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return x.detach(), grad, out.detach()


def to_board(boards, maps, fmt):
    return torch.stack([b.network_to_board(m, fmt) for b, m in zip(boards, maps, strict=True)])


def test_gradient_x_input_is_x_times_the_autograd_gradient(maia):
    boards = [LczeroBoard(f) for f in FENS] + random_boards(2, seed=1, min_plies=10)
    x, grad, value = by_hand_gradient(maia, boards, lambda out, b: value_of(out))
    rel = GradientLens("gradient_x_input").relevance(maia, boards, target="value")
    torch.testing.assert_close(rel.planes, x * grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rel.target, value, atol=1e-6, rtol=0)
    torch.testing.assert_close(rel.squares, to_board(boards, (x * grad).sum(1), 1), atol=1e-5, rtol=1e-5)
    # A move target: "Nf6"-style SAN for the first board, each board's own move otherwise.
    moves = [next(iter(b.legal_moves)) for b in boards]
    idx = torch.tensor([b.encode_move(m, 1) for b, m in zip(boards, moves, strict=True)])
    x, grad, logit = by_hand_gradient(maia, boards, lambda out, b: out["policy"][torch.arange(len(b)), idx])
    rel = GradientLens("gradient_x_input").relevance(maia, boards, target=moves, batch_size=2)
    torch.testing.assert_close(rel.planes, x * grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rel.target, logit, atol=1e-5, rtol=0)
    assert rel.policy_indices.tolist() == idx.tolist()


def test_gradient_is_raw_and_its_squares_sum_magnitudes(maia):
    boards = [LczeroBoard(f) for f in FENS]
    x, grad, _ = by_hand_gradient(maia, boards, lambda out, b: value_of(out))
    rel = GradientLens("gradient").relevance(maia, boards, target="value")
    torch.testing.assert_close(rel.planes, grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rel.squares, to_board(boards, grad.abs().sum(1), 1), atol=1e-5, rtol=1e-5)
    # A sensitivity map shares out nothing: its caption says what it explains, not a share of it.
    assert rel.caption(0).startswith("gradient of value (win - loss logit)") and "map sums" not in rel.caption(0)


def directional_derivatives(model, x, alphas, read):
    """d/da f(a x) at each alpha, by plain autograd (the integrand of integrated gradients from zeros)."""
    points = (alphas[:, None, None, None].to(x.dtype) * x[None]).requires_grad_(True)
    (grad,) = torch.autograd.grad(read(model.network(points)).sum(), points)
    return (grad * x[None]).sum((1, 2, 3)).double()


def test_integrated_gradients_is_the_midpoint_rule_by_hand(maia):
    boards = [LczeroBoard(f) for f in FENS]
    rel = GradientLens("integrated_gradients", steps=64).relevance(maia, boards, target="value")
    x = encode_boards(boards, 1)
    alphas = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
    for i in range(len(boards)):
        by_hand = directional_derivatives(maia, x[i], alphas, value_of).mean()
        assert float(rel.planes[i].sum()) == pytest.approx(float(by_hand), rel=1e-4, abs=1e-4)
    # Batching changes nothing; a planes baseline equal to zeros gives the same map.
    split = GradientLens("integrated_gradients", steps=64, baseline=torch.zeros(112, 8, 8))
    torch.testing.assert_close(split.relevance(maia, boards, target="value", batch_size=2).planes, rel.planes,
                               atol=1e-5, rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("target", ["value", None])
def test_integrated_gradients_completeness(maia, target):
    """The map sums to f(x) - f(0). On maia-1900 the integrand (from the all-zero input, whose rule-50 and
    all-ones planes start at 0) is rough: 64 midpoints leave a median 2.7% (value) and 1.1% (top move) gap over
    24 random positions; 512 steps bring these positions within 1%."""
    boards = [LczeroBoard(f) for f in FENS[:2]]
    rel = GradientLens("integrated_gradients", steps=512).relevance(maia, boards, target=target)
    with torch.no_grad():
        x = encode_boards(boards, 1)
        on_x, on_zero = maia.network(x), maia.network(torch.zeros_like(x))
    delta = explained_change(on_x, on_zero, target, rel.policy_indices)
    total = rel.planes.sum((1, 2, 3))
    assert ((total - delta).abs() <= 0.01 * delta.abs()).all(), (total, delta)


def test_kings_only_is_the_encoding_of_the_board_without_its_pieces():
    """For FEN-only boards, kings_only(planes) equals encoding the board with every piece but the kings removed;
    canonical formats keep the input's own transform (compared where the stripped board keeps it too)."""
    fens = FENS + ["rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3", "8/8/3k4/8/2N5/5K2/8/8 b - - 3 60"]
    for fmt in (1, 2, 3, 4, 5):
        boards = [LczeroBoard(f) for f in fens]
        stripped = [remove_pieces(b, removable_squares(b)) for b in boards]
        got = kings_only(encode_boards(boards, fmt), fmt)
        want = encode_boards(stripped, fmt)
        for i, board in enumerate(boards):
            if board.canonical_transform(fmt) != stripped[i].canonical_transform(fmt):
                continue  # the stripped board alone would be turned; the baseline keeps the input's orientation
            torch.testing.assert_close(got[i], want[i], atol=0, rtol=0, msg=f"{fens[i]} format {fmt}")
    # The input is not changed, and bad shapes are refused.
    x = encode_boards([LczeroBoard()], 1)
    before = x.clone()
    kings_only(x, 1)
    assert torch.equal(x, before)
    with pytest.raises(InputShapeError, match="kings_only takes planes"):
        kings_only(x[0], 1)


@pytest.mark.parametrize("target", ["value", None])
def test_integrated_gradients_from_the_kings_only_board(maia, target):
    """With ``baseline="kings"`` the map sums to f(x) - f(kings only) and equals the same path from the planes
    of the stripped boards passed by hand."""
    boards = [LczeroBoard(f) for f in FENS]
    lens = GradientLens("integrated_gradients", steps=256, baseline="kings")
    assert repr(lens) == "GradientLens('integrated_gradients', steps=256, baseline='kings')"
    rel = lens.relevance(maia, boards, target=target)
    stripped = encode_boards([remove_pieces(b, removable_squares(b)) for b in boards], 1)
    by_hand = GradientLens("integrated_gradients", steps=256, baseline=stripped).relevance(maia, boards, target=target)
    torch.testing.assert_close(rel.planes, by_hand.planes, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        on_x, on_base = maia.network(encode_boards(boards, 1)), maia.network(stripped)
    delta = explained_change(on_x, on_base, target, rel.policy_indices)
    total = rel.planes.sum((1, 2, 3))
    assert ((total - delta).abs() <= 0.01 * delta.abs() + 1e-3).all(), (total, delta)
    # Nothing outside the removed pieces' planes moves: kings, side to move, rule 50 and ones get no relevance.
    assert rel.planes[:, [5, 11, 108, 109, 110, 111]].abs().max() == 0


def test_smoothgrad_is_the_mean_gradient_of_the_noisy_copies(maia):
    boards = [LczeroBoard(f) for f in FENS[:2]]
    lens = GradientLens("smoothgrad", samples=5, noise=0.2, seed=3)
    rel = lens.relevance(maia, boards, target="value")
    x = encode_boards(boards, 1)
    expected = []
    for i in range(len(boards)):
        noise = torch.randn((5, 112, 8, 8), generator=torch.Generator().manual_seed(3 * 1_000_003 + i))
        points = (x[i][None] + 0.2 * noise).requires_grad_(True)
        (grad,) = torch.autograd.grad(value_of(maia.network(points)).sum(), points)
        expected.append(grad.mean(0))
    torch.testing.assert_close(rel.planes, torch.stack(expected), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(lens.relevance(maia, boards, target="value", batch_size=1).planes, rel.planes,
                               atol=1e-6, rtol=1e-4)  # fmt: skip
    no_noise = GradientLens("smoothgrad", samples=2, noise=0.0).relevance(maia, boards, target="value")
    plain = GradientLens("gradient").relevance(maia, boards, target="value")
    torch.testing.assert_close(no_noise.planes, plain.planes, atol=1e-6, rtol=1e-5)


def remove_by_hand(board: chess.Board, square: int) -> chess.Board:
    out = chess.Board(board.fen())
    out.remove_piece_at(square)
    out.castling_rights = out.clean_castling_rights()
    return out


@pytest.mark.parametrize("target", ["value", "top"])
def test_occlusion_equals_one_forward_per_removed_piece(maia, target):
    boards = [LczeroBoard(f) for f in FENS]
    rel = OcclusionLens().relevance(maia, boards, target=None if target == "top" else "value", batch_size=2)
    assert rel.planes is None and rel.squares.shape == (3, 8, 8)
    for i, board in enumerate(boards):
        with torch.no_grad():
            out0 = maia.network(encode_boards([board], 1))
        if target == "value":
            read = value_of
        else:
            legal = board.legal_move_indices(1)
            index = int(legal[out0["policy"][0, legal].argmax()])
            assert int(rel.policy_indices[i]) == index
            read = lambda out, index=index: out["policy"][:, index]  # noqa: E731
        f0 = float(read(out0)[0])
        expected = torch.zeros(64, dtype=torch.float64)
        for square, piece in board.piece_map().items():
            if piece.piece_type == chess.KING:
                continue
            changed = LczeroBoard(remove_by_hand(board, square).fen())
            with torch.no_grad():
                expected[square] = f0 - float(read(maia.network(encode_boards([changed], 1)))[0])
        torch.testing.assert_close(rel.squares[i].reshape(64), expected, atol=1e-4, rtol=0)
    assert float(rel.squares[0].reshape(64)[chess.E1]) == 0.0  # kings score 0
    assert rel.render(0).svg.startswith("<svg")


def test_occlusion_in_a_canonical_format_keeps_the_move(generated_dir):
    path = write_random_net(generated_dir / "lens-canonical.pb.gz", blocks=1, filters=8, input_format=3, seed=2)
    model = LczeroModel.from_path(path)
    board = LczeroBoard("8/8/6K1/8/3n4/8/2p5/k6R w - - 0 60")
    move = chess.Move.from_uci("h1h8")
    rel = OcclusionLens().relevance(model, board, target="h1h8")
    for square in (chess.C2, chess.D4):
        changed = LczeroBoard(remove_by_hand(board, square).fen())
        index = changed.encode_move(move, 3)
        with torch.no_grad():
            f0 = model.network(encode_boards([board], 3))["policy"][0, board.encode_move(move, 3)]
            f = model.network(encode_boards([changed], 3))["policy"][0, index]
        assert float(rel.squares[0].reshape(64)[square]) == pytest.approx(float(f0 - f), abs=1e-5)


def test_both_loading_paths_and_attention_nets(maia, maia_onnx_path, generated_dir, lc0_binary):
    from lens_oracles import export

    boards = [LczeroBoard(f) for f in FENS[:2]]
    onnx_model = LczeroModel.from_path(maia_onnx_path)
    for method in ("gradient_x_input", "integrated_gradients"):
        lens = GradientLens(method, steps=8)
        a, b = lens.relevance(maia, boards), lens.relevance(onnx_model, boards)
        torch.testing.assert_close(a.planes, b.planes, atol=1e-4, rtol=1e-3)
    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding="PE_MAP", embedding_size=16, encoder_layers=1, heads=2, seed=8)
    pb = attention.write_attention_net(spec, generated_dir / "lens-grad-attn.pb.gz")
    onnx_path = export(lc0_binary, pb, generated_dir / "lens-grad-attn.onnx")
    nets = [LczeroModel.from_path(pb), LczeroModel.from_path(onnx_path)]
    maps = [GradientLens("gradient").relevance(m, boards, target="value").planes for m in nets]
    torch.testing.assert_close(maps[0], maps[1], atol=1e-4, rtol=1e-3)
    occ = [OcclusionLens().relevance(m, boards, target="value").squares for m in nets]
    torch.testing.assert_close(occ[0], occ[1], atol=1e-4, rtol=0)


def test_bad_settings_raise_one_clear_error(maia):
    with pytest.raises(LensError, match="not a gradient method"):
        GradientLens("saliency")
    with pytest.raises(LensError, match="steps=0"):
        GradientLens("integrated_gradients", steps=0)
    with pytest.raises(LensError, match="baseline"):
        GradientLens("integrated_gradients", baseline="mean")
    with pytest.raises(InputShapeError, match="baseline holds planes for 2 boards"):
        GradientLens("integrated_gradients", baseline=torch.zeros(2, 112, 8, 8)).relevance(maia, LczeroBoard())
    with pytest.raises(InvalidMoveError, match="did you mean .value."):
        GradientLens().relevance(maia, LczeroBoard(), target="Valeu")
