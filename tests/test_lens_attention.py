"""AttentionLens against onnxruntime's softmax outputs in lc0's export, mapped to board squares by the pieces."""

from __future__ import annotations

import chess
import pytest
import torch

from lczerolens.board import LczeroBoard, encode_boards
from lczerolens.errors import LensError
from lczerolens.lenses import AttentionLens
from lczerolens.model import LczeroModel
from lczerolens.testing import random_boards
from lczerolens.visual import render_attention

pytest.importorskip("onnxruntime")
from lens_oracles import export, ort_nodes  # noqa: E402

BOARDS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 3 3",  # black to move
    "8/8/6K1/8/3n4/8/2p5/k6R w - - 0 60",  # king on the g-file: canonical formats flip files
    "8/2k5/8/8/3Q4/8/5K2/3r4 b - - 0 50",  # no pawns, no castling: canonical formats may transpose
    "r1bq1rk1/ppp2ppp/2np1n2/2b1p3/2B1P3/2NP1N2/PPP2PPP/R1BQ1RK1 w - - 0 8",
]


def net_square_by_pieces(board: chess.Board, planes: torch.Tensor) -> dict[int, int]:
    """For each occupied board square, the network square where its piece shows in the current-position planes."""
    out = {}
    for square, piece in board.piece_map().items():
        plane = piece.piece_type - 1 + (0 if piece.color == board.turn else 6)
        out[square] = planes[plane].reshape(64).nonzero().flatten().tolist()
    # A piece alone of its kind is placed at once; the others by elimination would be ambiguous: keep the unique.
    fixed: dict[int, int] = {}
    for square, hits in out.items():
        if len(hits) == 1:
            fixed[square] = hits[0]
    return fixed


@pytest.fixture(scope="module", params=[1, 3], ids=["classical", "canonical"])
def attention_net(request, generated_dir, lc0_binary):
    attention = pytest.importorskip("lczerolens.testing")
    fmt = request.param
    spec = attention.AttentionNetSpec(
        embedding="PE_MAP", embedding_size=32, encoder_layers=2, heads=4, input_format=fmt, seed=12
    )
    pb = attention.write_attention_net(spec, generated_dir / f"lens-att-{fmt}.pb.gz")
    onnx_path = export(lc0_binary, pb, generated_dir / f"lens-att-{fmt}.onnx")
    return fmt, pb, onnx_path


def test_weights_equal_onnxruntime_on_board_squares(attention_net):
    fmt, pb, onnx_path = attention_net
    boards = [LczeroBoard(f) for f in BOARDS]
    planes = encode_boards(boards, fmt)
    names = [f"/encoder{i}/mha/QK/softmax" for i in range(2)]
    ref = ort_nodes(onnx_path, planes, names)
    if fmt >= 3:  # the chosen boards do exercise the transforms
        assert {b.canonical_transform(fmt) for b in boards} - {0}
    for model in (LczeroModel.from_path(pb), LczeroModel.from_path(onnx_path, input_format=fmt)):
        assert int(model.input_format) == fmt
        att = AttentionLens().attention(model, boards, batch_size=3)
        assert list(att.keys()) == ["encoder0", "encoder1"]
        for layer, name in zip(att.keys(), names, strict=True):
            weights = att[layer]
            assert weights.shape == (4, 4, 64, 64)
            torch.testing.assert_close(weights.sum(-1), torch.ones(4, 4, 64), atol=1e-5, rtol=0)
            expected = torch.from_numpy(ref[name])
            for i, board in enumerate(boards):
                where = net_square_by_pieces(board, planes[i])
                squares = sorted(where)
                q = torch.tensor(squares)
                t = torch.tensor([where[s] for s in squares])
                got = weights[i][:, q][:, :, q]
                want = expected[i][:, t][:, :, t]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{layer} board {i}")


def test_residual_nets_get_one_clear_error(maia_pb_path):
    with pytest.raises(LensError, match="no attention layers"):
        AttentionLens().attention(LczeroModel.from_path(maia_pb_path), LczeroBoard())


def test_render_attention_one_head_and_a_grid(attention_net):
    fmt, pb, _ = attention_net
    board = random_boards(1, seed=3, min_plies=6)[0]
    att = AttentionLens().attention(LczeroModel.from_path(pb), board)["encoder1"][0]
    one = render_attention(board, att[2], "e4")
    assert one.svg.count('class="query"') == 1 and 'data-square="e4"' in one.svg
    grid = render_attention(board, att, chess.D5, ncols=2, contrast="max")
    assert grid.svg.count('class="board"') == 4 and grid.svg.count('class="query"') == 4
    assert grid.vmin == 0.0 and grid.vmax == pytest.approx(float(att[:, chess.D5].max()), rel=1e-6)
