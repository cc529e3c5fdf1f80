"""LrpLens: equals the explicit composition of the rules, conserves relevance, leaves the model untouched."""

from __future__ import annotations

import math
from pathlib import Path

import chess
import pytest
import torch
from torch import nn

from lczerolens.board import InputFormat, LczeroBoard
from lczerolens.errors import InputShapeError, InvalidMoveError, LczeroLensError, LensError
from lczerolens.lenses import EPSILON, LrpLens, Relevance
from lczerolens.lenses.lrp.rules import epsilon as E
from lczerolens.model import ops
from lczerolens.testing import random_boards

# --------------------------------------------------------------------------------------------------------------
# A small hand-built network using every rule op, following the network contract


class TinyNet(nn.Module):
    """Conv + SE gate + residual, then 64 tokens through one attention layer, a product and a layer norm."""

    input_format = InputFormat.CLASSICAL_112_PLANE
    heads = ("policy", "wdl", "mlh")
    description = "test net"

    def __init__(self, channels: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        c = channels
        self.add_module("inputconv", nn.Conv2d(112, c, 3, padding=1))
        self.add_module("inputconv/relu", ops.Activation("relu"))
        self.add_module("se/dense1", nn.Linear(c, 4))
        self.add_module("se/relu", ops.Activation("relu"))
        self.add_module("se/dense2", nn.Linear(4, 2 * c))
        self.add_module("se/gate", ops.Gate())
        self.add_module("block/mish", ops.Activation("mish"))
        self.add_module("q", nn.Linear(c, c))
        self.add_module("k", nn.Linear(c, c))
        self.add_module("v", nn.Linear(c, c))
        self.add_module("qk", ops.MatMul(None))
        self.add_module("softmax", ops.Softmax(-1))
        self.add_module("av", ops.MatMul(0))
        self.add_module("tanh", ops.Activation("tanh"))
        self.add_module("mul", ops.Mul())
        self.add_module("ln", ops.LayerNorm(c, 1e-3))
        self.add_module("policy", nn.Linear(64 * c, 1858))
        self.add_module("wdl", nn.Linear(64 * c, 3))
        self.add_module("mlh/dense", nn.Linear(64 * c, 1))
        self.add_module("mlh/relu", ops.Activation("relu"))
        with torch.no_grad():
            self._modules["ln"].weight.normal_(1.0, 0.3)
            self._modules["ln"].bias.normal_(0.0, 0.3)
            self._modules["mlh/dense"].bias.fill_(1.0)

    def forward(self, planes: torch.Tensor, rules: dict | None = None) -> dict[str, torch.Tensor]:
        m = self._modules
        r = rules or {}
        call = lambda name, *args: r[name](*args) if name in r else m[name](*args)  # noqa: E731
        n = planes.shape[0]
        x = call("inputconv/relu", m["inputconv"](planes))
        s = m["se/dense2"](call("se/relu", m["se/dense1"](x.mean(dim=(2, 3)))))
        s1, s2 = s.split(x.shape[1], dim=1)
        x = call("block/mish", call("se/gate", s1[:, :, None, None], x) + s2[:, :, None, None] + x)
        t = x.flatten(2).transpose(1, 2)  # [N, 64, C]
        logits = call("qk", m["q"](t), m["k"](t).transpose(1, 2)) / 3.0
        att = call("av", call("softmax", logits), m["v"](t))
        t = call("ln", call("mul", call("tanh", att), t) + t)
        flat = t.reshape(n, -1)
        return {
            "policy": m["policy"](flat),
            "wdl_logits": m["wdl"](flat),
            "mlh": call("mlh/relu", m["mlh/dense"](flat))[:, 0],
        }


def explicit_rules(net: TinyNet, epsilon: float, softmax: str) -> dict:
    """The same rules written out with the Functions directly (what the lens must reproduce)."""
    act = lambda kind: lambda z: E.IdentityRuleFunction.apply(z, lambda u: ops.apply_activation(kind, u), epsilon)  # noqa: E731
    ln = net._modules["ln"]
    rules = {
        "inputconv/relu": act("relu"),
        "se/relu": act("relu"),
        "block/mish": act("mish"),
        "tanh": act("tanh"),
        "mlh/relu": act("relu"),
        "se/gate": lambda g, x: torch.sigmoid(g).detach() * x,
        "qk": lambda a, b: E.BilinearMatMulEpsilonFunction.apply(a, b, epsilon),
        "softmax": lambda z: E.SoftmaxEpsilonFunction.apply(z, -1),
        "mul": lambda a, b: E.MulUniformFunction.apply(a, b),
        "ln": lambda z: E.LayerNormRuleFunction.apply(z, (z.shape[-1],), ln.weight, ln.bias, ln.eps),
    }
    if softmax == "cp":
        rules["av"] = lambda a, v: a.detach() @ v
    else:
        rules["av"] = lambda a, b: E.BilinearMatMulEpsilonFunction.apply(a, b, epsilon)
    return rules


@pytest.fixture(scope="module")
def tiny() -> TinyNet:
    return TinyNet().eval()


@pytest.fixture(scope="module")
def boards() -> list[LczeroBoard]:
    return random_boards(6, seed=1)


# --------------------------------------------------------------------------------------------------------------
# (b) the lens equals the explicit composition


@pytest.mark.parametrize("softmax", ["attnlrp", "cp"])
@pytest.mark.parametrize("target", [None, "value", "win", "mlh"])
def test_lens_equals_explicit_rules(tiny, boards, softmax, target):
    epsilon = 1e-4
    rel = LrpLens(**{**EPSILON, "epsilon": epsilon, "softmax": softmax}).relevance(tiny, boards, target)
    x = torch.stack([b.to_input_tensor() for b in boards]).requires_grad_(True)
    out = tiny(x, rules=explicit_rules(tiny, epsilon, softmax))
    if target is None:
        picked = out["policy"].gather(1, rel.policy_indices[:, None])[:, 0]
        best = [max(b.legal_moves, key=lambda m, i=i: out["policy"][i, b.encode_move(m)].item()) for i, b in
                enumerate(boards)]
        assert rel.moves == best
    elif target == "value":
        picked = out["wdl_logits"][:, 0] - out["wdl_logits"][:, 2]
    elif target == "win":
        picked = out["wdl_logits"][:, 0]
    else:
        picked = out["mlh"]
    (grad,) = torch.autograd.grad(picked.sum(), x)
    torch.testing.assert_close(rel.planes, x.detach() * grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rel.target, picked.detach(), rtol=0, atol=0)


def test_rules_differ_from_plain_gradient(tiny, boards):
    """The lens really swaps ops: relevance is not gradient x input of the unpatched net."""
    rel = LrpLens().relevance(tiny, boards, "value")
    x = torch.stack([b.to_input_tensor() for b in boards]).requires_grad_(True)
    out = tiny(x)["wdl_logits"]
    (grad,) = torch.autograd.grad((out[:, 0] - out[:, 2]).sum(), x)
    assert not torch.allclose(rel.planes, x.detach() * grad, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# (d) the model is unchanged


def _snapshot(net: nn.Module):
    return [
        (name, id(m), type(m), dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
        for name, m in net.named_modules()
    ], [(n, p.requires_grad, p.detach().clone()) for n, p in net.named_parameters()]


def _assert_same(before, after):
    (mods0, params0), (mods1, params1) = before, after
    assert mods0 == mods1
    for (n0, r0, p0), (n1, r1, p1) in zip(params0, params1, strict=True):
        assert n0 == n1 and r0 == r1 and torch.equal(p0, p1)
    for *_, fh, fph, bh in mods1:
        assert not fh and not fph and not bh


def test_model_unchanged_after_lens(tiny, boards):
    x = torch.stack([b.to_input_tensor() for b in boards])
    with torch.no_grad():
        ref = tiny(x)
    before = _snapshot(tiny)
    for softmax in ("attnlrp", "cp"):
        LrpLens(softmax=softmax).relevance(tiny, boards)
    _assert_same(before, _snapshot(tiny))
    with torch.no_grad():
        after = tiny(x)
    assert all(torch.equal(ref[k], after[k]) for k in ref)


def test_explaining_network_holds_the_rules_and_leaves_the_model_alone(tiny):
    lens = LrpLens()
    before = _snapshot(tiny)
    with pytest.raises(RuntimeError, match="boom"), lens.patched(tiny) as explained:
        assert isinstance(explained._modules["softmax"], E.SoftmaxEpsilon)
        assert isinstance(explained._modules["av"], E.MatrixMultiplicationEpsilon)
        assert isinstance(explained._modules["se/gate"], E.GateRule)
        assert type(tiny._modules["softmax"]) is ops.Softmax  # the model is never patched
        raise RuntimeError("boom")
    _assert_same(before, _snapshot(tiny))


def test_explaining_network_shares_parameters(tiny):
    explained = LrpLens().explaining_network(tiny)
    assert explained is not tiny
    ours = dict(explained.named_modules())
    for name, module in tiny.named_modules():
        if not getattr(ours[name], "lrp_rule", False):
            assert ours[name] is not module or not name  # a copy of each module
            for key, parameter in module._parameters.items():
                assert ours[name]._parameters[key] is parameter  # sharing the very same tensors


def test_explaining_network_is_cached_and_rebuilt_when_the_model_changes(tiny):
    lens = LrpLens()
    first = lens.explaining_network(tiny)
    assert lens.explaining_network(tiny) is first
    tiny._modules["block/mish"] = ops.Activation("tanh")
    second = lens.explaining_network(tiny)
    assert second is not first and second._modules["block/mish"].kind == "tanh"


def test_cp_mode_patches_attention_operand_only(tiny):
    with LrpLens(softmax="cp").patched(tiny) as explained:
        assert isinstance(explained._modules["av"], E.CPMatMul)
        assert isinstance(explained._modules["qk"], E.BilinearMatMulEpsilon)


def test_patched_outputs_bit_identical(tiny, boards):
    x = torch.stack([b.to_input_tensor() for b in boards])
    with torch.no_grad():
        ref = tiny(x)
        with LrpLens().patched(tiny) as explained:
            patched = explained(x)
    assert all(torch.equal(ref[k], patched[k]) for k in ref)


def test_exactly_one_forward_and_one_backward(tiny, boards, monkeypatch):
    calls = {"forward": 0, "grad": 0}

    class Counting(nn.Module):
        input_format = tiny.input_format
        heads = tiny.heads

        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny

        def forward(self, planes):
            calls["forward"] += 1
            return self.inner(planes)

    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    LrpLens().relevance(Counting(), boards, None)
    assert calls == {"forward": 1, "grad": 1}


# --------------------------------------------------------------------------------------------------------------
# Relevance: orientation, breakdowns, targets


def test_relevance_orientation_and_breakdown(tiny):
    black = LczeroBoard.from_moves(["e2e4"])  # black to move: the network sees the board mirrored
    rel = LrpLens().relevance(tiny, [LczeroBoard(), black], "value")
    assert isinstance(rel, Relevance) and len(rel) == 2
    assert rel.planes.shape == (2, 112, 8, 8) and rel.squares.shape == (2, 8, 8) and rel.target.shape == (2,)
    torch.testing.assert_close(rel.squares[1], black.network_to_board(rel.planes[1].sum(0)))
    torch.testing.assert_close(rel.squares[1], rel.planes[1].sum(0).flip(0))
    parts = rel.breakdown()
    assert parts.batch_size == torch.Size([2])
    groups = sum(parts[k] for k in ("ours", "theirs", "repetition", "castling", "other"))
    torch.testing.assert_close(groups, rel.squares)
    torch.testing.assert_close(parts["history"].sum(1) + parts["castling"] + parts["other"], rel.squares)
    torch.testing.assert_close(parts["pieces"].sum(1), parts["ours"] + parts["theirs"])
    assert parts["history"].shape == (2, 8, 8, 8) and parts["pieces"].shape == (2, 12, 8, 8)
    # Our king (black's, e8) is found through the board orientation.
    king = rel.board_planes[1, 5]
    nonzero = king.flatten().nonzero().flatten().tolist()
    assert set(nonzero) <= {chess.E8}
    one = rel[1]
    assert len(one) == 1 and torch.equal(one.squares[0], rel.squares[1])


@pytest.mark.parametrize("fmt", [InputFormat.CLASSICAL_112_PLANE, InputFormat.CANONICALIZATION,
                                 InputFormat.CANONICALIZATION_V2_ARMAGEDDON])
def test_board_orientation_batched_equals_board_by_board(fmt):
    """Boards are decoded in groups of equal orientation: the same as one ``network_to_board`` per board."""
    boards = random_boards(10, seed=8, max_plies=160)
    boards += [LczeroBoard("8/8/8/8/8/8/1k6/K7 w - - 0 1"), LczeroBoard("8/8/8/4k3/8/8/5PK1/8 b - - 0 1")]
    planes = torch.randn(len(boards), 112, 8, 8, generator=torch.Generator().manual_seed(0))
    rel = Relevance(planes, torch.zeros(len(boards)), boards, fmt, "value")
    expected = torch.stack([b.network_to_board(p.sum(0), fmt) for b, p in zip(boards, planes, strict=True)])
    assert torch.equal(rel.squares, expected)
    per_plane = torch.stack([b.network_to_board(p, fmt) for b, p in zip(boards, planes, strict=True)])
    assert torch.equal(rel.board_planes, per_plane)
    if fmt != InputFormat.CLASSICAL_112_PLANE:
        assert len({b.canonical_transform(fmt) for b in boards}) > 1  # the groups are really exercised


def test_move_targets_agree(tiny):
    board = LczeroBoard("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1")
    lens = LrpLens()
    by_uci = lens.relevance(tiny, board, "e1g1")
    by_rook = lens.relevance(tiny, board, "e1h1")  # castling as king takes rook
    by_move = lens.relevance(tiny, board, chess.Move.from_uci("e1g1"))
    by_index = lens.relevance(tiny, board, board.encode_move("e1g1"))
    for other in (by_rook, by_move, by_index):
        assert torch.equal(by_uci.planes, other.planes)
    assert by_uci.moves == [chess.Move.from_uci("e1g1")]
    assert int(by_uci.policy_indices[0]) == board.encode_move("e1g1")


def test_batch_of_moves_and_single_board_batch(tiny):
    b1, b2 = LczeroBoard(), LczeroBoard.from_moves(["d2d4"])
    lens = LrpLens()
    both = lens.relevance(tiny, [b1, b2], ["e2e4", "g8f6"])
    one = lens.relevance(tiny, b2, "g8f6")
    torch.testing.assert_close(both.planes[1:], one.planes, rtol=1e-5, atol=1e-6)
    assert both.moves[1] == chess.Move.from_uci("g8f6")


def test_value_target_for_value_logit_nets(tiny, boards):
    class ValueNet(nn.Module):
        input_format = InputFormat.CLASSICAL_112_PLANE
        heads = ("policy", "value")

        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny

        def forward(self, planes):
            out = self.inner(planes)
            return {"policy": out["policy"], "value_logit": out["wdl_logits"][:, 1]}

    rel = LrpLens().relevance(ValueNet(), boards, "value")
    draw = LrpLens().relevance(tiny, boards, "draw")
    torch.testing.assert_close(rel.planes, draw.planes)
    with pytest.raises(LensError, match="wdl"):
        LrpLens().relevance(ValueNet(), boards, "win")


def test_plain_chess_boards_are_accepted(tiny):
    plain = chess.Board()
    plain.push_uci("e2e4")
    rel = LrpLens().relevance(tiny, plain, "value")
    assert torch.equal(rel.planes, LrpLens().relevance(tiny, LczeroBoard.from_moves(["e2e4"]), "value").planes)


def test_works_under_no_grad_and_inference_mode(tiny, boards):
    ref = LrpLens().relevance(tiny, boards, "value").planes
    with torch.no_grad():
        assert torch.equal(LrpLens().relevance(tiny, boards, "value").planes, ref)
    with torch.inference_mode():
        planes = torch.stack([b.to_input_tensor() for b in boards])
        assert torch.equal(LrpLens().relevance(tiny, boards, "value", planes=planes).planes, ref)


def test_planes_override(tiny, boards):
    x = torch.stack([b.to_input_tensor() for b in boards])
    lens = LrpLens()
    assert torch.equal(lens.relevance(tiny, boards, "value", planes=x).planes,
                       lens.relevance(tiny, boards, "value").planes)
    x[:, 0] = 0
    assert not torch.equal(lens.relevance(tiny, boards, "value", planes=x).planes,
                           lens.relevance(tiny, boards, "value").planes)


def test_repr_and_render(tiny, boards):
    rel = LrpLens().relevance(tiny, boards[:2])
    assert "Relevance(N=2" in repr(rel) and rel.moves[0].uci() in repr(rel)
    svg = rel._repr_svg_()
    assert svg is not None and svg.lstrip().startswith("<") and svg.count('class="board"') == 2
    assert rel[0]._repr_svg_().count('class="board"') == 1
    assert rel.render_history(1).svg.count('class="board"') == 8
    assert rel.render(0).svg == rel.render(0).svg


# --------------------------------------------------------------------------------------------------------------
# (f) errors


@pytest.mark.parametrize(
    "target,error,match",
    [
        ("valu", InvalidMoveError, "valu"),
        ("e2e5", InvalidMoveError, "e2e5"),
        (chess.Move.from_uci("e7e5"), InvalidMoveError, "e7e5"),
        (1858, InvalidMoveError, "1858"),
        (3.5, LensError, "3.5"),
        (["value"], LensError, "value"),
        (["e2e4", "e2e4"], InputShapeError, "2 target moves for 1 boards"),
    ],
)
def test_bad_targets(tiny, target, error, match):
    with pytest.raises(error, match=match):
        LrpLens().relevance(tiny, LczeroBoard(), target)


def test_bad_inputs(tiny, boards):
    lens = LrpLens()
    with pytest.raises(InputShapeError, match="one move per board"):
        lens.relevance(tiny, boards, "e2e4")
    with pytest.raises(InputShapeError, match="planes="):
        lens.relevance(tiny, torch.zeros(1, 112, 8, 8), "value")
    with pytest.raises(InputShapeError, match=r"\(6, 112, 8, 8\)"):
        lens.relevance(tiny, boards, "value", planes=torch.zeros(5, 112, 8, 8))
    with pytest.raises(InputShapeError, match="str"):
        lens.relevance(tiny, ["rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1"], "value")
    with pytest.raises(InputShapeError, match="empty"):
        lens.relevance(tiny, [], "value")
    mated = LczeroBoard.from_moves(["f2f3", "e7e5", "g2g4", "d8h4"])
    with pytest.raises(LensError, match="no legal move"):
        lens.relevance(tiny, mated)
    assert torch.isfinite(lens.relevance(tiny, mated, "value").planes).all()
    for bad in (0.0, -1.0, "x", True):
        with pytest.raises(LensError, match="epsilon"):
            LrpLens(epsilon=bad)
    with pytest.raises(LensError, match="softmax"):
        LrpLens(softmax="rollout")
    assert issubclass(LensError, LczeroLensError)


def test_missing_head(tiny, boards):
    class NoMlh(nn.Module):
        input_format = InputFormat.CLASSICAL_112_PLANE
        heads = ("policy", "wdl")

        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny

        def forward(self, planes):
            out = self.inner(planes)
            return {"policy": out["policy"], "wdl_logits": out["wdl_logits"]}

    with pytest.raises(LensError, match="mlh"):
        LrpLens().relevance(NoMlh(), boards, "mlh")


class _Unknown(nn.Module):
    input_format = InputFormat.CLASSICAL_112_PLANE

    def __init__(self, leaf: nn.Module) -> None:
        super().__init__()
        self.add_module("body/conv", nn.Conv2d(112, 4, 1))
        self.add_module("body/act", leaf)

    def forward(self, planes):
        return {"policy": self._modules["body/act"](self._modules["body/conv"](planes)).flatten(1)[:, :1858]}


@pytest.mark.parametrize("leaf", [nn.ReLU(), nn.Sigmoid(), nn.Softmax(dim=1), nn.GELU()])
def test_unknown_module_is_refused_by_path(leaf):
    net = _Unknown(leaf)
    before = _snapshot(net)
    with pytest.raises(LensError, match=rf"'body/act'.*{type(leaf).__name__}"):
        LrpLens().relevance(net, LczeroBoard(), "e2e4")
    _assert_same(before, _snapshot(net))


def test_lrp_linear_flag_decides():
    flagged = nn.ReLU()
    flagged.lrp_linear = True  # e.g. what a loader says of an op it knows to be linear here
    LrpLens().check(_Unknown(flagged))
    refused = nn.Identity()
    refused.lrp_linear = False
    with pytest.raises(LensError, match="lrp_linear=False"):
        LrpLens().check(_Unknown(refused))


def test_fx_graph_with_inline_nonlinearity_is_refused():
    class Inline(nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    graph = torch.fx.symbolic_trace(Inline())
    with pytest.raises(LensError, match="relu"):
        LrpLens().check(graph)


# --------------------------------------------------------------------------------------------------------------
# Real networks: maia-1900 and a generated attention-body net


ASSETS = Path(__file__).resolve().parents[1] / "assets" / "cache"


def _zero_biases(network: nn.Module) -> nn.Module:
    """Zero every additive constant: biases (conv, dense, layer norm) and the additive input gate."""
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("bias") or name.endswith("add_gate"):
                p.zero_()
    return network


@pytest.fixture(scope="module")
def maia_network(maia_pb_path):
    from lczerolens.model.native import load_pb

    return load_pb(maia_pb_path).eval()


@pytest.fixture(scope="module")
def attention_path(tmp_path_factory):
    testing = pytest.importorskip("lczerolens.testing")
    return testing.write_attention_net(testing.AttentionNetSpec(seed=5), tmp_path_factory.mktemp("att") / "a.pb.gz")


@pytest.fixture(scope="module")
def attention_network(attention_path):
    from lczerolens.model.native import load_pb

    return load_pb(attention_path).eval()


def _conservation(network: nn.Module, boards, softmax: str, targets, zero: bool):
    net = network.double()
    if zero:
        _zero_biases(net)
    # The default's SE-gate rule for value targets holds the sigmoid's value at 0 as a bias of its own, and its
    # smoothed ReLU rule does not conserve: both are set to their conserving forms.
    lens = LrpLens(epsilon=1e-12, softmax=softmax, se_gate="constant" if zero else None,
                   relu_beta=math.inf if zero else None)
    report = {}
    for target in targets:
        rel = lens.relevance(net, boards, target)
        total = rel.planes.sum(dim=(1, 2, 3))
        assert torch.isfinite(rel.planes).all()
        report[target] = (total, rel.target)
    return report


@pytest.mark.parametrize("family", ["maia", "attention"])
def test_conservation_without_biases(family, request):
    from lczerolens.model.native import load_pb

    path = request.getfixturevalue("maia_pb_path" if family == "maia" else "attention_path")
    boards = random_boards(4, seed=2)
    targets = [None, "value", "loss"]
    report = _conservation(load_pb(path), boards, "cp", targets, zero=True)
    for target, (total, explained) in report.items():
        assert (explained != 0).all()  # a relative error needs a non-zero output
        rel_err = (total - explained).abs() / explained.abs()
        assert (rel_err < 1e-4).all(), (family, target, rel_err.max().item())


def test_bias_share_and_attnlrp_drift_are_reported(attention_path, maia_pb_path, capsys):
    """With biases (or AttnLRP's softmax) relevance does not sum to the output: record how far, assert nothing."""
    from lczerolens.model.native import load_pb

    boards = random_boards(4, seed=3)
    lines = []
    for family, path, zero, softmax in [
        ("maia", maia_pb_path, False, "cp"),
        ("attention", attention_path, False, "cp"),
        ("attention", attention_path, True, "attnlrp"),
    ]:
        report = _conservation(load_pb(path), boards, softmax, [None, "value"], zero=zero)
        for target, (total, explained) in report.items():
            share = ((explained - total).abs() / explained.abs()).median().item()
            lines.append(f"{family} biases={'no' if zero else 'yes'} {softmax} target={target}: "
                         f"median |output - sum R| / |output| = {share:.3f}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize("family,softmax", [("maia", "attnlrp"), ("attention", "attnlrp"), ("attention", "cp")])
def test_finite_on_many_positions(family, softmax, request):
    network = request.getfixturevalue(f"{family}_network")
    boards = random_boards(24, seed=4, max_plies=120)
    lens = LrpLens(softmax=softmax)
    for target in (None, "value"):
        rel = lens.relevance(network, boards, target)
        assert torch.isfinite(rel.planes).all() and torch.isfinite(rel.squares).all()
        assert rel.planes.abs().sum() > 0


def test_real_network_unchanged(maia_network, attention_network):
    boards = random_boards(4, seed=6)
    x = torch.stack([b.to_input_tensor() for b in boards])
    for network in (maia_network, attention_network):
        with torch.no_grad():
            ref = network(x)
        before = _snapshot(network)
        LrpLens().relevance(network, boards)
        LrpLens(softmax="cp").relevance(network, boards, "value")
        _assert_same(before, _snapshot(network))
        with torch.no_grad():
            after = network(x)
        assert all(torch.equal(ref[k], after[k]) for k in ref)


def test_onnx_and_native_maia_agree(maia_network, maia_onnx_path):
    from lczerolens.model import LczeroModel

    model = LczeroModel.from_path(maia_onnx_path)
    boards = random_boards(2, seed=7)
    lens = LrpLens()
    for target in (None, "value"):
        native = lens.relevance(maia_network, boards, target)
        onnx = lens.relevance(model, boards, target)
        assert native.moves == onnx.moves
        scale = native.planes.abs().max()
        torch.testing.assert_close(onnx.planes / scale, native.planes / scale, rtol=0, atol=1e-4)


def test_onnx_and_native_attention_agree(lc0_binary, tmp_path):
    """The same attention net through lc0's ONNX export and through the native loader explains the same."""
    import subprocess

    from lczerolens.model import LczeroModel

    testing = pytest.importorskip("lczerolens.testing")
    spec = testing.AttentionNetSpec(embedding="PE_MAP", ffn_activation="mish", seed=3)
    pb = testing.write_attention_net(spec, tmp_path / "att.pb.gz")
    onnx = tmp_path / "att.onnx"
    done = subprocess.run([str(lc0_binary), "leela2onnx", f"--input={pb}", f"--output={onnx}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    from_onnx, from_pb = LczeroModel.from_path(onnx), LczeroModel.from_path(pb)
    boards = random_boards(3, seed=9)
    for softmax in ("attnlrp", "cp"):
        a = LrpLens(softmax=softmax).relevance(from_onnx, boards, None)
        b = LrpLens(softmax=softmax).relevance(from_pb, boards, None)
        assert a.moves == b.moves
        scale = b.planes.abs().max()
        torch.testing.assert_close(a.planes / scale, b.planes / scale, rtol=0, atol=1e-4)


def test_patched_accepts_an_lczero_model(maia_pb_path):
    from lczerolens.model import LczeroModel

    model = LczeroModel.from_path(maia_pb_path)
    board = LczeroBoard()
    with torch.no_grad():
        ref = model(board)["policy"]
    with LrpLens().patched(model) as explained:
        assert any(isinstance(m, E.IdentityRule) for m in explained.modules())
        with torch.no_grad():
            assert torch.equal(model(board)["policy"], ref)
            assert torch.equal(explained(board.to_input_tensor()[None])["policy"], ref)
    assert not any(getattr(m, "lrp_rule", False) for m in model.modules())


def test_reused_rules_follow_changes_to_the_ops(boards):
    """A lens reuses its rule modules across calls, but never stale ones."""
    net = TinyNet(seed=3).eval()
    lens = LrpLens()
    lens.relevance(net, boards, "value")
    net._modules["ln"].weight = nn.Parameter(torch.linspace(0.5, 2.0, 8))
    net._modules["block/mish"].kind = "tanh"
    net._modules["softmax"].dim = -2
    again = lens.relevance(net, boards, "value")
    fresh = LrpLens().relevance(net, boards, "value")
    assert torch.equal(again.planes, fresh.planes)


def test_without_biases_the_only_leak_is_the_stabiliser(maia_pb_path):
    """Bias-free, the gap between output and summed relevance scales with epsilon: it is the stabiliser's."""
    from lczerolens.model.native import load_pb

    net = _zero_biases(load_pb(maia_pb_path).double())
    boards = random_boards(4, seed=12)
    leaks = []
    for epsilon in (1e-6, 1e-9):
        rel = LrpLens(epsilon=epsilon, softmax="cp", relu_beta=math.inf).relevance(net, boards, None)
        leaks.append((rel.target - rel.planes.sum(dim=(1, 2, 3))).abs())
    ratio = (leaks[0] / leaks[1]).median().item()
    assert 500 < ratio < 2000, ratio
