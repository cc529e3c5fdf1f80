"""Probes, activations, channel relevance and reference positions."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import chess
import numpy as np
import pytest
import torch

from lczerolens import LczeroBoard, LczeroModel, encode_boards
from lczerolens.concepts import (
    InCheck,
    MaterialBalance,
    PieceOnSquare,
    ReferencePositions,
    activation_maps,
    activation_maps_of,
    channel_relevance,
    control_model,
    fit_probe,
    plot_probe_layers,
    probe_layers,
    reference_positions,
    relevance_maps_of,
    resolve_modules,
    split_groups,
    square_features,
)
from lczerolens.concepts.activations import _activations
from lczerolens.errors import InputShapeError, LensError, UnsupportedModelError
from lczerolens.testing import random_boards


@pytest.fixture(scope="module")
def maia(maia_pb_path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture(scope="module")
def boards() -> list[LczeroBoard]:
    return random_boards(120, seed=11, min_plies=1, max_plies=70)


# -- fit_probe ---------------------------------------------------------------------------------------------------


def test_split_groups_keeps_each_group_on_one_side():
    groups = np.repeat(np.arange(50), 7)
    test = split_groups(groups, 0.2, seed=3)
    assert set(groups[test]).isdisjoint(groups[~test])
    assert len(set(groups[test])) == 10
    assert np.array_equal(test, split_groups(groups, 0.2, seed=3))
    assert not np.array_equal(test, split_groups(groups, 0.2, seed=4))
    with pytest.raises(LensError, match="2 distinct"):
        split_groups(np.zeros(5), 0.2)


def test_logistic_probe_learns_a_multiclass_rule_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 6, generator=g) * 3 + 1
    y = torch.argmax(x[:, :4] * torch.tensor([1.0, 2.0, -1.0, 0.5]), dim=1)
    groups = np.arange(3000) // 10
    r = fit_probe(x, y, groups=groups, l2=1e-6)
    assert r.metric == "accuracy" and r.score > 0.97 and r.train_score > 0.97
    assert r.weight.shape == (4, 6) and r.bias.shape == (4,)
    assert r.n_train + r.n_test == 3000 and r.n_test == 600
    test = np.isin(groups, r.test_groups)
    assert (r.predict(x[test]) == y[test]).float().mean().item() == pytest.approx(r.score)
    assert r.baseline == pytest.approx((y[test] == torch.bincount(y[~test]).argmax()).float().mean().item())
    again = fit_probe(x, y, groups=groups, l2=1e-6)
    assert torch.equal(again.weight, r.weight) and again.score == r.score
    # Noise features: held-out accuracy near chance.
    noise = fit_probe(torch.randn(2000, 6, generator=g), torch.randint(0, 2, (2000,), generator=g),
                      groups=np.arange(2000) // 4)  # fmt: skip
    assert 0.4 < noise.score < 0.6


def test_balanced_probe_finds_a_rare_class():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4000, 3, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(4000, generator=g) > 2.2).long()  # about 3% positives, noisy
    plain = fit_probe(x, y, groups=np.arange(4000), l2=1e-4)
    balanced = fit_probe(x, y, groups=np.arange(4000), l2=1e-4, balanced=True)
    assert plain.score >= plain.baseline - 0.01
    assert balanced.balanced_accuracy > plain.balanced_accuracy + 0.1
    assert balanced.balanced_accuracy > 0.75


def test_linear_probe_recovers_weights():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0]) + 3
    w = torch.tensor([2.0, -0.5, 4.0, 0.0, 1.0])
    y = x @ w + 7 + 0.01 * torch.randn(1000, generator=g)
    r = fit_probe(x, y, groups=np.arange(1000), kind="linear", l2=0.0)
    assert r.metric == "r2" and r.score > 0.999
    assert torch.allclose(r.weight[0], w, atol=1e-2) and r.bias.item() == pytest.approx(7, abs=0.1)
    assert torch.allclose(r.predict(x[:3]), y[:3], atol=0.1)


def test_fit_probe_errors():
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(LensError, match="kind"):
        fit_probe(x, y, groups=np.arange(10), kind="svm")
    with pytest.raises(InputShapeError, match="one row per sample"):
        fit_probe(x, y[:5], groups=np.arange(10))
    with pytest.raises(InputShapeError, match="square_features"):
        fit_probe(torch.randn(4, 3, 8, 8), torch.zeros(4, 64, dtype=torch.long), groups=np.arange(4))
    with pytest.raises(LensError, match="non-finite"):
        fit_probe(x * float("nan"), y, groups=np.arange(10))


# -- activations and orientation ----------------------------------------------------------------------------------


def test_square_features_put_network_squares_back_on_the_board(boards):
    # The input planes are the most direct "activation": planes 0-5 are the side to move's pieces, 6-11 the
    # opponent's, in network orientation (flipped for black). Mapped back they must match PieceOnSquare.
    assert any(b.turn == chess.BLACK for b in boards)
    planes = encode_boards(boards)
    feats = square_features(planes, boards, 1)  # [N, 64, 112]
    labels = PieceOnSquare().labels(boards)
    one_hot = torch.nn.functional.one_hot(labels, 13)[..., 1:].float()
    assert torch.equal(feats[..., :12], one_hot)
    # Tokens [N, 64, E] are read the same way.
    tokens = planes.reshape(len(boards), 112, 64).transpose(1, 2)
    assert torch.equal(activation_maps(tokens, boards, 1), activation_maps(planes, boards, 1))


def test_activations_capture_module_outputs_and_remove_hooks(maia, boards):
    names = resolve_modules(maia, ["inputconv", "network.block0/conv2/relu", "block5/*/relu"])
    assert names == ["inputconv", "block0/conv2/relu", "block5/conv1/relu", "block5/conv2/relu"]
    assert resolve_modules(maia, "block5/**/relu") == ["block5/conv1/relu", "block5/conv2/se/relu",
                                                       "block5/conv2/relu"]  # fmt: skip
    assert resolve_modules(maia, None) == ["inputconv"] + [f"block{i}/conv2/relu" for i in range(6)]
    acts = _activations(maia, boards[:20], ["inputconv", "block0/conv2/relu"], batch_size=7)
    net = maia.network
    with torch.no_grad():
        want = net.get_submodule("inputconv")(encode_boards(boards[:20]))
    assert torch.allclose(acts["inputconv"], want, atol=1e-5)
    assert acts["block0/conv2/relu"].shape == (20, 64, 8, 8)
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(LensError, match="no module"):
        resolve_modules(maia, ["block9/conv"])
    # A failing forward pass still removes the hooks.
    with pytest.raises(InputShapeError):
        _activations(maia, ["not a board"], ["inputconv"])
    assert all(not m._forward_hooks for m in net.modules())


# -- probing a network ------------------------------------------------------------------------------------------


def test_piece_on_square_is_read_off_the_input_conv(maia, boards):
    """Sanity check of the probe code: the input convolution sees the pieces directly."""
    rows = probe_layers(maia, PieceOnSquare(), boards, modules=["inputconv"], control=None)
    assert rows[0]["metric"] == "accuracy"
    assert rows[0]["score"] >= 0.99, rows.format()
    assert rows[0]["baseline"] < 0.8


def test_control_model_has_the_architecture_and_other_weights(maia):
    control = control_model(maia, seed=0)
    shapes = {n: tuple(p.shape) for n, p in maia.network.named_parameters()}
    assert shapes == {n: tuple(p.shape) for n, p in control.network.named_parameters()}
    assert control.input_format == maia.input_format and control.heads == maia.heads
    first = next(iter(shapes))
    assert not torch.equal(maia.network.get_parameter(first), control.network.get_parameter(first))
    with pytest.raises(UnsupportedModelError, match="control="):
        control_model(torch.nn.Linear(2, 2))


def test_control_spec_is_read_the_same_from_weights_and_onnx(maia, maia_onnx_path):
    from lczerolens.concepts.probes import _residual_spec

    spec = _residual_spec(maia)
    assert spec == _residual_spec(LczeroModel.from_path(maia_onnx_path))
    assert (spec["blocks"], spec["filters"], spec["se_channels"], spec["policy"]) == (6, 64, 8, "conv")


def test_probe_layers_rows_with_control_and_selectivity(maia, boards):
    groups = np.arange(len(boards)) // 3
    rows = probe_layers(maia, MaterialBalance(), boards, modules=["inputconv", "block1/conv2/relu"],
                        groups=groups, features="mean", l2=1e-2)  # fmt: skip
    assert [r["module"] for r in rows] == ["inputconv", "block1/conv2/relu"]
    for r in rows:
        assert r["metric"] == "r2"
        assert r["selectivity"] == pytest.approx(r["score"] - r["control"])
        test_boards = np.isin(groups, r["result"].test_groups)
        assert r["n_test"] == test_boards.sum() and 0 < r["n_test"] < len(boards)
        assert r["n_train"] + r["n_test"] == len(boards)
    text = rows.format()
    assert "selectivity" in text and "block1/conv2/relu" in text
    svg = rows.plot(title="material").svg
    root = ET.fromstring(svg)
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    both = plot_probe_layers({"a": rows, "b": rows}).svg
    assert both.count("<polyline") == 4
    binary = probe_layers(maia, InCheck(), boards[:60], modules=["inputconv"], control=None)
    assert binary[0]["metric"] == "accuracy" and "control" not in binary[0]
    weighted = probe_layers(maia, InCheck(), boards[:60], modules=["inputconv"], control=maia, balanced=True)
    row = weighted[0]
    assert row["metric"] == "balanced_accuracy" and row["score"] == row["balanced"] == row["control"]
    assert row["baseline"] == 0.5 and row["selectivity"] == 0.0


def test_attention_net_tokens_are_probed_as_squares(generated_dir):
    from lczerolens.testing import write_random_net

    net = LczeroModel.from_path(write_random_net(generated_dir / "concepts-attention.pb.gz", "attention", seed=1))
    names = resolve_modules(net, None)
    assert names[0] == "attn_body/ln2" and all(n.endswith("/ln2") and "smolgen" not in n for n in names)
    boards = random_boards(30, seed=5)
    rows = probe_layers(net, PieceOnSquare(), boards, modules=names[:2], control=net)
    for r in rows:
        assert r["n_train"] + r["n_test"] == 64 * len(boards)
        assert r["selectivity"] == 0.0  # the same net as its own control: the same probe, deterministically
    with pytest.raises(UnsupportedModelError):
        control_model(net)


# -- channel relevance -------------------------------------------------------------------------------------------


class _FakeRelevance(SimpleNamespace):
    def __len__(self) -> int:
        return self.n


def test_channel_relevance_sums_over_squares_or_tokens():
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(3, 16, 8, 8, generator=g)
    tokens = torch.randn(3, 64, 12, generator=g)
    rel = _FakeRelevance(n=3, layers={"conv": conv, "flat": tokens.reshape(3 * 64, 12), "tok": tokens})
    assert torch.allclose(channel_relevance(rel, "conv"), conv.sum(dim=(2, 3)))
    assert torch.allclose(channel_relevance(rel, "tok"), tokens.sum(1))
    assert torch.allclose(channel_relevance(rel, "flat"), tokens.sum(1))
    assert channel_relevance(rel, "conv")[1, 5].item() == pytest.approx(conv[1, 5].sum().item(), rel=1e-5)
    with pytest.raises(LensError, match="recorded"):
        channel_relevance(rel, "missing")
    with pytest.raises(LensError, match="record="):
        channel_relevance(SimpleNamespace(), "conv")


# -- reference positions -----------------------------------------------------------------------------------------


def test_reference_positions_from_a_tensor_and_from_a_callable(maia, boards, tmp_path):
    maps_of = activation_maps_of(maia, "block2/conv2/relu", batch_size=50)
    maps = maps_of(boards)  # [N, 64, 64] board orientation
    assert maps.shape == (len(boards), 64, 64)
    k = 5
    refs = reference_positions(boards, maps, k=k, channels=[0, 7, 63])
    streamed = reference_positions(boards, maps_of, k=k, channels=[0, 7, 63], batch_size=33)
    assert np.array_equal(refs.indices, streamed.indices) and np.allclose(refs.scores, streamed.scores)
    assert streamed.meta["module"] == "block2/conv2/relu"
    for row, c in enumerate([0, 7, 63]):
        per_position = maps[:, c].amax(1)
        want = torch.sort(per_position, descending=True, stable=True)
        assert refs.indices[row].tolist() == want.indices[:k].tolist()
        assert np.allclose(refs.scores[row], want.values[:k].numpy())
        for j, i in enumerate(refs.indices[row]):
            assert refs.squares[row, j] == int(maps[i, c].argmax())
            assert np.allclose(refs.maps[row, j], maps[i, c].numpy())
    # The peak square is where the channel's network-orientation map peaks, moved to the board.
    i, c = int(refs.indices[1, 0]), 7
    act = _activations(maia, [boards[i]], ["block2/conv2/relu"])["block2/conv2/relu"][0, c]
    assert act.max().item() == pytest.approx(refs.scores[1, 0], rel=1e-6)
    on_board = boards[i].network_to_board(act)
    assert on_board.flatten().argmax().item() == refs.squares[1, 0]

    path = refs.save(tmp_path / "refs")
    assert path.suffix == ".npz" and path.with_suffix(".json").exists()
    back = ReferencePositions.load(path)
    assert np.array_equal(back.indices, refs.indices) and np.array_equal(back.maps, refs.maps)
    restored = back.boards()
    for row in range(3):
        for pos, idx in zip(back.positions[row], back.indices[row], strict=True):
            assert restored[pos].fen() == boards[idx].fen()
            assert restored[pos].move_stack == boards[idx].move_stack
    picture = back.render(7)
    assert picture.svg.count('class="board"') == k
    with pytest.raises(LensError):
        back.render(8)
    with pytest.raises(InputShapeError):
        reference_positions(boards, maps[:10], k=3)


def test_reference_positions_by_relevance_through_a_lens(maia, boards):
    # A stand-in lens whose "relevance" is the activation itself, in the recorded layer's network orientation:
    # the result must equal the activation-based one.
    class EchoLens:
        calls = 0

        def relevance(self, model, boards, target=None, record=()):
            EchoLens.calls += 1
            assert target is None and record == ("block3/conv2/relu",)
            layers = _activations(model, boards, list(record))
            return _FakeRelevance(n=len(boards), layers=layers)

    by_relevance = reference_positions(boards, relevance_maps_of(EchoLens(), maia, "block3/conv2/relu"), k=3,
                                       batch_size=40)  # fmt: skip
    by_activation = reference_positions(boards, activation_maps_of(maia, "block3/conv2/relu"), k=3)
    assert EchoLens.calls == 3
    assert np.array_equal(by_relevance.indices, by_activation.indices)
    assert np.array_equal(by_relevance.squares, by_activation.squares)
    assert by_relevance.meta["module"] == "block3/conv2/relu"
    with pytest.raises(LensError, match="one target"):
        relevance_maps_of(EchoLens(), maia, "block3/conv2/relu", target=["e2e4"])


def test_channel_relevance_of_a_real_lrp_record_is_each_channels_conditional_total(maia_pb_path, boards):
    """Where the rules conserve (no biases, CP, float64), a channel's relevance at a block's output is the total
    of the input map conditioned on that channel."""
    from lczerolens.lenses import LrpLens
    from lczerolens.model.native import load_pb

    net = load_pb(maia_pb_path).double()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    layer = "block3/conv2/relu"
    lens = LrpLens(epsilon=1e-12, softmax="cp", relu_beta=math.inf)  # the identity rule conserves at ReLUs
    rel = lens.relevance(net, boards[:2], None, record=layer)
    per_channel = channel_relevance(rel, layer)
    assert per_channel.shape == (2, 64)
    torch.testing.assert_close(per_channel.sum(1), rel.layers[layer].sum(dim=(1, 2, 3)))
    cond = lens.relevance(net, boards[:2], rel.policy_indices.tolist(), condition=[{layer: [c]} for c in range(64)])
    totals = cond.planes.flatten(1).sum(1).unflatten(0, (2, 64))
    torch.testing.assert_close(totals, per_channel, rtol=1e-7, atol=1e-9)


def test_reference_positions_by_real_lrp_relevance(maia, boards):
    from lczerolens.lenses import LrpLens

    layer = "block2/conv2/relu"
    refs = reference_positions(boards[:40], relevance_maps_of(LrpLens(), maia, layer), k=3, channels=[5], batch_size=16)
    rel = LrpLens().relevance(maia, boards[:40], None, record=layer)
    maps = torch.stack([b.network_to_board(m) for b, m in zip(boards[:40], rel.layers[layer], strict=True)])
    best = maps[:, 5].flatten(1).amax(1).topk(3).indices.tolist()
    assert refs.indices[0].tolist() == best
