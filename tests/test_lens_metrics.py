"""lczerolens.metrics runs its baseline methods through the lenses: same figures as the formulas written out."""

from __future__ import annotations

import chess
import pytest
import torch

from lczerolens import metrics
from lczerolens.board import LczeroBoard, encode_boards
from lczerolens.model import LczeroModel

FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "r1bq1rk1/ppp2ppp/2np1n2/2b1p3/2B1P3/2NP1N2/PPP2PPP/R1BQ1RK1 b - - 0 7",
    "4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 2",
]


def explained(outputs, task):
    if task.target == "value":
        return outputs["wdl_logits"][:, 0] - outputs["wdl_logits"][:, 2]
    return outputs["policy"].gather(1, task.indices[:, None])[:, 0]


@pytest.mark.parametrize("target", ["move", "value"])
def test_baseline_methods_equal_their_formulas(maia_pb_path, target):
    model = LczeroModel.from_path(maia_pb_path)
    task = metrics.prepare(model, FENS, target=target)
    x = encode_boards(task.boards, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(explained(model.network(x), task).sum(), x)
    board_of = lambda maps: torch.stack(  # noqa: E731
        [b.network_to_board(m, 1).reshape(64) for b, m in zip(task.boards, maps, strict=True)]
    ).double()
    torch.testing.assert_close(metrics.abs_gradient_attribution(model, task), board_of(grad.abs().sum(1)),
                               atol=1e-6, rtol=1e-6)  # fmt: skip
    torch.testing.assert_close(metrics.gradient_x_input_attribution(model, task), board_of((grad * x).sum(1)),
                               atol=1e-6, rtol=1e-6)  # fmt: skip
    occlusion = metrics.occlusion_attribution(model, task)
    for i, board in enumerate(task.boards):
        for square in range(64):
            piece = board.piece_at(square)
            if piece is None or piece.piece_type == chess.KING:
                assert occlusion[i, square] == 0.0
                continue
            changed = metrics.remove_pieces(board, [square])
            with torch.no_grad():
                f = explained(model.network(encode_boards([changed], 1)), task.subset(slice(i, i + 1)))
            assert float(occlusion[i, square]) == pytest.approx(float(task.f0[i] - f[0]), abs=1e-5)
    # The en-passant position loses its mark with the capturing pawn (the lens re-encodes as lc0 would).
    assert metrics.remove_pieces(LczeroBoard(FENS[2]), [chess.E5]).ep_square is None


def test_integrated_gradients_and_smoothgrad_on_a_linear_net():
    """A linear net has one gradient everywhere: IG from zeros is gradient x input, SmoothGrad the gradient."""
    from test_metrics import FENS as TOY_FENS
    from test_metrics import random_toy

    net = random_toy(5)
    for target in ("value", "move"):
        task = metrics.prepare(net, TOY_FENS[:4], target=target)
        torch.testing.assert_close(metrics.METHODS["integrated_gradients"](net, task),
                                   metrics.gradient_x_input_attribution(net, task), atol=1e-5, rtol=1e-5)  # fmt: skip
        torch.testing.assert_close(metrics.METHODS["smoothgrad"](net, task),
                                   metrics.abs_gradient_attribution(net, task), atol=1e-5, rtol=1e-5)  # fmt: skip
