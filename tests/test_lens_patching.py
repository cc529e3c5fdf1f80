"""PatchingLens: exact recovery, per-square patches against hooks on a private copy, batched sweeps; corrupt()."""

from __future__ import annotations

import copy

import chess
import pytest
import torch
from torch import nn

from lczerolens.board import LczeroBoard, encode_boards
from lczerolens.errors import InputShapeError, InvalidBoardError, LensError
from lczerolens.lenses import PatchingLens, corrupt
from lczerolens.model import LczeroModel

CLEAN = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 3 3"


@pytest.fixture(scope="module")
def maia(maia_pb_path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


def value_of(outputs) -> torch.Tensor:
    return outputs["wdl_logits"][:, 0] - outputs["wdl_logits"][:, 2]


def pair():
    clean = LczeroBoard(CLEAN)
    return corrupt(clean), corrupt(clean, remove="f3")


def test_corrupt_removes_and_moves_as_lc0_would_encode():
    board = LczeroBoard("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1")
    assert corrupt(board, remove="h1").castling_xfen() == "Qkq"
    moved = corrupt(board, move=("a1", "b1"))
    assert moved.piece_at(chess.B1) == chess.Piece(chess.ROOK, chess.WHITE) and moved.castling_xfen() == "Kkq"
    assert corrupt(LczeroBoard("4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 2"), remove=chess.E5).ep_square is None
    assert not corrupt(LczeroBoard.from_moves(["e2e4"])).move_stack  # FEN only
    with pytest.raises(InvalidBoardError, match="no piece on e4"):
        corrupt(LczeroBoard(), move=("e4", "e5"))
    with pytest.raises(InvalidBoardError, match="not empty"):
        corrupt(LczeroBoard(), move=("a1", "a2"))
    with pytest.raises(LensError, match="king"):
        corrupt(LczeroBoard(), remove="e1")


def test_patching_everything_gives_clean_and_nothing_gives_corrupted(maia, maia_onnx_path):
    clean, bad = pair()
    for model in (maia, LczeroModel.from_path(maia_onnx_path)):
        with torch.no_grad():
            want_clean = model.network(encode_boards([clean], 1))
            want_bad = model.network(encode_boards([bad], 1))
        every = PatchingLens("*").patched_outputs(model, clean, bad)
        nothing = PatchingLens(()).patched_outputs(model, clean, bad)
        for key in want_clean:
            assert torch.equal(every[key], want_clean[key]), key
            assert torch.equal(nothing[key], want_bad[key]), key
        # A residual block's output carries everything: patching it alone recovers f(clean) - f(corrupted).
        effect = PatchingLens("block*/conv2/relu").patch(model, clean, bad, target="value")
        full = value_of(want_clean) - value_of(want_bad)
        for name in effect.keys():
            assert float(effect[name][0]) == pytest.approx(float(full[0]), abs=1e-5), name
        # Clean == corrupted: no effect anywhere, also square by square (64 boards per pass).
        same = PatchingLens("block2/conv?").patch(model, clean, clean, per_square=True)
        for name in same.keys():
            assert same[name].abs().max() < 1e-5, name


def hooked_patch(model, clean, bad, name, square, read, index=None):
    """One square of ``name``'s output patched by a forward hook on a private deep copy of the network."""
    net = copy.deepcopy(model.network)
    module = dict(net.named_modules())[name]
    stored = {}
    handle = module.register_forward_hook(lambda m, i, o: stored.__setitem__("v", o))
    with torch.no_grad():
        net(encode_boards([clean], 1))
    handle.remove()
    flat = torch.arange(64.0).reshape(8, 8)
    net_square = int(bad.board_to_network(flat, 1).reshape(64).tolist().index(float(square)))

    def replace(m, i, o):
        o = o.clone()
        if o.dim() == 4:
            o.view(o.shape[0], o.shape[1], 64)[:, :, net_square] = stored["v"].view(o.shape[0], o.shape[1], 64)[
                :, :, net_square
            ]
        else:
            o.view(-1, 64, o.shape[-1])[:, net_square] = stored["v"].view(-1, 64, o.shape[-1])[:, net_square]
        return o

    module.register_forward_hook(replace)
    with torch.no_grad():
        return float(read(net(encode_boards([bad], 1)))[0])


def test_per_square_equals_a_hooked_copy(maia):
    clean, bad = pair()  # black to move: the network sees the board mirrored
    effect = PatchingLens("block3/conv2/relu").patch(maia, clean, bad, target="value", per_square=True)
    assert effect["block3/conv2/relu"].shape == (1, 64)
    with torch.no_grad():
        f_bad = float(value_of(maia.network(encode_boards([bad], 1)))[0])
    for square in (chess.F3, chess.E5, chess.A8, chess.H1):
        by_hand = hooked_patch(maia, clean, bad, "block3/conv2/relu", square, value_of) - f_bad
        assert float(effect["block3/conv2/relu"][0, square]) == pytest.approx(by_hand, abs=1e-5)
    # The target move is read at the clean position's index in both runs.
    move_effect = PatchingLens("block5/conv2/relu").patch(maia, clean, bad, target="Nf6")
    index = clean.encode_move("g8f6", 1)
    with torch.no_grad():
        full = maia.network(encode_boards([clean, bad], 1))["policy"][:, index]
    assert float(move_effect["block5/conv2/relu"][0]) == pytest.approx(float(full[0] - full[1]), abs=1e-5)


def test_attention_tokens_per_square(generated_dir, lc0_binary):
    from lens_oracles import export

    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding="PE_MAP", embedding_size=16, encoder_layers=2, heads=2, seed=9)
    pb = attention.write_attention_net(spec, generated_dir / "lens-patch-attn.pb.gz")
    onnx_path = export(lc0_binary, pb, generated_dir / "lens-patch-attn.onnx")
    clean, bad = pair()
    results = []
    for model in (LczeroModel.from_path(pb), LczeroModel.from_path(onnx_path)):
        effect = PatchingLens("encoder0/ln2").patch(model, clean, bad, target="value", per_square=True)
        with torch.no_grad():
            f_bad = float(value_of(model.network(encode_boards([bad], 1)))[0])
        by_hand = hooked_patch(model, clean, bad, "encoder0/ln2", chess.F3, value_of) - f_bad
        assert float(effect["encoder0/ln2"][0, chess.F3]) == pytest.approx(by_hand, abs=1e-5)
        results.append(effect["encoder0/ln2"])
        # Per head: the softmax weights of one head taken from the clean run.
        heads = PatchingLens("encoder1/mha/QK/softmax").patch(model, clean, bad, target="value", per_head=True)
        assert heads["encoder1/mha/QK/softmax"].shape == (1, 2)
        for head in range(2):
            by_hand = hooked_head(model, clean, bad, "encoder1/mha/QK/softmax", head, value_of) - f_bad
            assert float(heads["encoder1/mha/QK/softmax"][0, head]) == pytest.approx(by_hand, abs=1e-5)
        with pytest.raises(LensError, match="per_head=True needs an attention module"):
            PatchingLens("encoder0/ln2").patch(model, clean, bad, per_head=True)
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=0)


def hooked_head(model, clean, bad, name, head, read):
    """One head of ``name``'s ``[N, heads, 64, 64]`` output patched by a hook on a private deep copy."""
    net = copy.deepcopy(model.network)
    module = dict(net.named_modules())[name]
    stored = {}
    handle = module.register_forward_hook(lambda m, i, o: stored.__setitem__("v", o))
    with torch.no_grad():
        net(encode_boards([clean], 1))
    handle.remove()

    def replace(m, i, o):
        o = o.clone()
        o[:, head] = stored["v"][:, head]
        return o

    module.register_forward_hook(replace)
    with torch.no_grad():
        return float(read(net(encode_boards([bad], 1)))[0])


class Counting(nn.Module):
    """A network that counts its forward passes (the count lives on the class: shadows copy instances)."""

    calls: list[int] = []

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.input_format = inner.input_format

    def forward(self, x):
        Counting.calls.append(x.shape[0])
        return self.inner(x)


def test_sweep_is_one_batched_forward_per_module(maia):
    clean, bad = pair()
    net = Counting(maia.network)
    Counting.calls.clear()
    effect = PatchingLens("inner.block*/conv2/relu").patch(net, [clean, clean], [bad, bad], per_square=True)
    assert len(effect.keys()) == 6 and effect.batch_size == torch.Size([2])
    # The clean run, the corrupted run, then one pass of 64 squares x 2 pairs per block.
    assert Counting.calls == [2, 2] + [128] * 6
    with pytest.raises(InputShapeError, match="pairs"):
        PatchingLens("inner.block0/conv2/relu").patch(net, [clean], [bad, bad])
    with pytest.raises(LensError, match="no square dimension"):
        PatchingLens("inner.value/dense1").patch(net, clean, bad, per_square=True)
