"""Layer rules with bias treatments, against plainly written float64 references, and conservation in the lens.

Convention (see ``epsilon.py``): the backward signal at ``t`` is ``g_t`` and ``R_t = t * g_t``. A layer
``z = M x + b`` (``M`` the dense matrix of a conv or linear layer) has contributions ``C[i, j] = x_i M[j, i]``
and output relevance ``R_z = z * g_z``. The references below build ``M`` by feeding the layer the unit vectors,
and apply each formula to ``C`` with explicit loops over outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lczerolens.board import LczeroBoard
from lczerolens.errors import LensError
from lczerolens.lenses import EPSILON, RESIDUAL_CONSERVING, LrpLens
from lczerolens.lenses.lrp.rules import epsilon as E

EPS = 1e-2  # large enough that the stabiliser visibly matters in the reference
TOL = 1e-9


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _stab(v: float, eps: float) -> float:
    return v + eps if v >= 0 else v - eps


def _dense_matrix(layer: nn.Module, in_shape: tuple[int, ...], ones: bool = False) -> np.ndarray:
    """``M[j, i]``: output ``j`` of the layer (no bias) for the unit vector ``e_i``; all-ones weights if ``ones``."""
    n_in = int(np.prod(in_shape))
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
    weight = torch.ones_like(layer.weight) if ones else layer.weight
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            out = torch.nn.functional.conv2d(basis, weight, None, layer.stride, layer.padding, layer.dilation)
        else:
            out = torch.nn.functional.linear(basis, weight)
    return out.reshape(n_in, -1).T.numpy()


def _reference(layer: nn.Module, x: torch.Tensor, g_z: torch.Tensor, rule: E.LayerRule, eps: float) -> np.ndarray:
    """R_x of one sample under ``rule``, with explicit loops over outputs j and inputs i."""
    in_shape = tuple(x.shape[1:])
    m = _dense_matrix(layer, in_shape)
    connected = _dense_matrix(layer, in_shape, ones=True) != 0
    xs = x[0].reshape(-1).numpy()
    n_out = m.shape[0]
    per_out = n_out // (layer.bias.numel() if layer.bias is not None else 1)
    bias = np.zeros(n_out) if layer.bias is None else np.repeat(layer.bias.detach().numpy(), per_out)
    g = g_z[0].reshape(-1).numpy()
    r_x = np.zeros_like(xs)
    for j in range(n_out):
        contrib = xs * m[j]
        z = contrib.sum() + bias[j]
        r_z = z * g[j]
        keep_bias = rule.bias != "ignore"
        if rule.rule == "alphabeta":
            pos = np.maximum(contrib, 0).sum() + (max(bias[j], 0.0) if keep_bias else 0.0)
            neg = np.minimum(contrib, 0).sum() + (min(bias[j], 0.0) if keep_bias else 0.0)
            r_x += (rule.alpha * np.maximum(contrib, 0) / _stab(pos, eps)
                    - rule.beta * np.minimum(contrib, 0) / _stab(neg, eps)) * r_z
            continue
        total = contrib.sum() + (bias[j] if keep_bias else 0.0)
        if rule.rule == "epsilon":
            numerator = contrib.copy()
        else:
            favoured = np.maximum(contrib, 0) if total >= 0 else np.minimum(contrib, 0)
            numerator = favoured if math.isinf(rule.gamma) else contrib + rule.gamma * favoured
        denominator = numerator.sum() + (bias[j] if keep_bias else 0.0)
        if rule.bias == "flat":
            active = (xs != 0) & connected[j]
            if active.any():
                numerator = numerator + np.where(active, bias[j] / active.sum(), 0.0)
        r_x += numerator * r_z / _stab(denominator, eps)
    return r_x.reshape(in_shape)


def _layer(kind: str, bias: bool) -> nn.Module:
    if kind == "conv":
        layer = nn.Conv2d(3, 4, 3, padding=1, bias=bias).double()
        shape = (4, 3, 3, 3)
    else:
        layer = nn.Linear(7, 5, bias=bias).double()
        shape = (5, 7)
    with torch.no_grad():
        layer.weight.copy_(_rand(*shape, seed=2))
        if bias:
            layer.bias.copy_(_rand(layer.bias.numel(), seed=3))
    return layer


def _input(kind: str, signed: bool) -> torch.Tensor:
    x = _rand(1, 3, 4, 4, seed=1) if kind == "conv" else _rand(1, 7, seed=1)
    if not signed:
        x = x.abs()
    x[..., 0] = 0.0  # some exact zeros: inputs that cannot hold relevance (the flat share skips them)
    return x


RULES = [
    E.LayerRule("epsilon", bias="absorb"),
    E.LayerRule("epsilon", bias="ignore"),
    E.LayerRule("epsilon", bias="flat"),
    E.LayerRule("gamma", bias="absorb", gamma=0.5),
    E.LayerRule("gamma", bias="ignore", gamma=0.25),
    E.LayerRule("gamma", bias="flat", gamma=1.0),
    E.LayerRule("gamma", bias="ignore", gamma=math.inf),
    E.LayerRule("gamma", bias="absorb", gamma=math.inf),
    E.LayerRule("alphabeta", bias="ignore", alpha=2.0, beta=1.0),
    E.LayerRule("alphabeta", bias="absorb", alpha=1.0, beta=0.0),
]


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("signed", [False, True])
def test_layer_rule_matches_reference(rule, kind, signed):
    layer = _layer(kind, bias=True)
    x = _input(kind, signed)
    module = E.Conv2dRule(layer, rule, EPS) if kind == "conv" else E.LinearRule(layer, rule, EPS)
    leaf = x.clone().requires_grad_(True)
    z = module(leaf)
    assert torch.equal(z, layer(x))
    g_z = _rand(*z.shape, seed=4)
    (grad,) = torch.autograd.grad(z, leaf, g_z)
    np.testing.assert_allclose((x * grad)[0].numpy(), _reference(layer, x, g_z, rule, EPS), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("rule", [r for r in RULES if r.rule == "gamma"], ids=repr)
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_gamma_rule_fast_path_for_rectified_outputs_matches_reference(rule, kind, monkeypatch):
    """Inputs >= 0 and no relevance where the favoured sign is negative (a layer feeding a ReLU): the one-sided
    path (``W + gamma W+`` only) gives the reference's relevance, and it is the path taken."""
    layer = _layer(kind, bias=True)
    x = _input(kind, signed=False)
    with torch.no_grad():
        layer.weight[:2].neg_()  # outputs of both signs
        z = layer(x)
        denominator = z if rule.bias == "absorb" else z - (
            layer.bias.reshape(1, -1, 1, 1) if kind == "conv" else layer.bias)
    g_z = torch.where(denominator >= 0, _rand(*z.shape, seed=4), 0.0)
    assert (g_z == 0).any() and (g_z != 0).any()
    taken = []
    check = E._relevance_only_at_nonnegative
    monkeypatch.setattr(E, "_relevance_only_at_nonnegative", lambda *a: taken.append(check(*a)) or taken[-1])
    module = E.Conv2dRule(layer, rule, EPS) if kind == "conv" else E.LinearRule(layer, rule, EPS)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(leaf), leaf, g_z)
    assert taken == [True]
    np.testing.assert_allclose((x * grad)[0].numpy(), _reference(layer, x, g_z, rule, EPS), rtol=TOL, atol=TOL)
    # One output with relevance at a negative denominator sends it down the general path.
    g_z = g_z.clone()
    g_z.view(-1)[int(torch.nonzero((denominator < 0).view(-1))[0])] = 1.5
    (grad,) = torch.autograd.grad(module(leaf), leaf, g_z)
    assert taken == [True, False]
    np.testing.assert_allclose((x * grad)[0].numpy(), _reference(layer, x, g_z, rule, EPS), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("rule", [r for r in RULES if r.bias != "absorb"], ids=repr)
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_ignore_and_flat_conserve(rule, kind):
    """Biases left out (or spread flat): the input relevance sums to the output's, up to a tiny stabiliser."""
    if rule.rule == "alphabeta" and rule.alpha - rule.beta != 1:
        pytest.skip("alpha - beta != 1 does not conserve by design")
    layer = _layer(kind, bias=True)
    x = _input(kind, signed=False) + 0.5  # no zero inputs, so the flat share always has somewhere to go
    module = E.Conv2dRule(layer, rule, 1e-12) if kind == "conv" else E.LinearRule(layer, rule, 1e-12)
    leaf = x.clone().requires_grad_(True)
    z = module(leaf)
    g_z = _rand(*z.shape, seed=5)
    (grad,) = torch.autograd.grad(z, leaf, g_z)
    np.testing.assert_allclose(float((x * grad).sum()), float((z * g_z).detach().sum()), rtol=1e-8)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_linear_rule_on_token_streams_matches_reference(rule):
    """``nn.Linear`` on ``[N, tokens, features]`` (an attention body's token stream): each token by the formula."""
    layer = _layer("linear", bias=True)
    x = _rand(2, 3, 7, seed=11).abs()
    x[..., 0] = 0.0
    module = E.LinearRule(layer, rule, EPS)
    leaf = x.clone().requires_grad_(True)
    z = module(leaf)
    g_z = _rand(*z.shape, seed=12)
    (grad,) = torch.autograd.grad(z, leaf, g_z)
    for n in range(2):
        for t in range(3):
            expected = _reference(layer, x[n, t][None], g_z[n, t][None], rule, EPS)
            np.testing.assert_allclose((x * grad)[n, t].numpy(), expected, rtol=TOL, atol=TOL)


def test_absorb_equals_the_plain_gradient():
    layer = _layer("conv", bias=True)
    x = _input("conv", signed=True).requires_grad_(True)
    g_z = _rand(1, 4, 4, 4, seed=6)
    z = layer(x)
    (plain,) = torch.autograd.grad(z, x, g_z)
    (ruled,) = torch.autograd.grad(E.Conv2dRule(layer, E.LayerRule(), 1e-12)(x), x, g_z)
    torch.testing.assert_close(ruled, plain, rtol=1e-9, atol=1e-12)


def test_layer_rule_rejects_bad_settings():
    with pytest.raises(ValueError, match="bias"):
        E.LayerRule(bias="spread")
    with pytest.raises(ValueError, match="rule"):
        E.LayerRule("zb")
    with pytest.raises(ValueError, match="gamma"):
        E.LayerRule("gamma", gamma=-1)
    with pytest.raises(ValueError, match="alpha-beta"):
        E.LayerRule("alphabeta", bias="flat")
    with pytest.raises(ValueError, match="padding_mode"):
        E.Conv2dRule(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), E.LayerRule())


def test_held_shift_keeps_the_shift_out_of_the_backward():
    """SE's second dense layer: gate logits then shifts; with the shift held, only the gate half passes a signal."""
    linear = nn.Linear(3, 4).double()
    x = _rand(2, 3, seed=7).requires_grad_(True)
    held = E.HeldShift(linear, 2)
    out = held(x)
    assert torch.equal(out, linear(x))
    g = _rand(2, 4, seed=8)
    (grad,) = torch.autograd.grad(out, x, g)
    g_kept = g.clone()
    g_kept[:, 2:] = 0.0
    (expected,) = torch.autograd.grad(linear(x), x, g_kept)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# In the lens


def test_lens_options_and_presets():
    assert repr(LrpLens()) == "LrpLens()"
    assert "bias='absorb'" in repr(LrpLens(**EPSILON))
    with pytest.raises(LensError, match="bias"):
        LrpLens(bias="spread")
    with pytest.raises(LensError, match="se_shift"):
        LrpLens(se_shift="drop")
    with pytest.raises(LensError, match="layer rule"):
        LrpLens(layer_rules=[("inputconv", {"rule": "box"})])
    with pytest.raises(LensError, match="either"):
        LrpLens(layer_rules=[], conv_rule="gamma")


@pytest.mark.parametrize("bad", ["uniform", 1.5, -0.5, True, {"moves": 0.5}, {}, {"value": "half"}])
def test_lens_rejects_bad_gate_treatments(bad):
    with pytest.raises(LensError, match="se_gate"):
        LrpLens(se_gate=bad)


def test_default_gate_rule_per_target_group(maia_pb_path):
    """The default holds the SE gate constant for moves and gives it half the product's relevance for the value
    head's targets; the two trees share every parameter, and each matches the lens asked for that gate alone."""
    from lczerolens.lenses import RESIDUAL_DEFAULT
    from lczerolens.model.native import load_pb
    from lczerolens.testing import random_boards

    network = load_pb(maia_pb_path).eval()
    lens = LrpLens()
    policy_tree, value_tree = lens.explaining_network(network), lens.explaining_network(network, "value")
    assert isinstance(policy_tree._modules["block0/conv2/se/mul"], E.GateRule)
    gate = value_tree._modules["block0/conv2/se/mul"]
    assert isinstance(gate, E.GateShareRule) and gate.share == 0.5
    assert lens.explaining_network(network, "loss") is value_tree  # every value-head target shares the tree
    assert lens.explaining_network(network, "policy") is policy_tree
    assert value_tree._modules["block1/conv1"]._weight is network._modules["block1/conv1"].weight
    boards = random_boards(3, seed=11)
    constant = LrpLens(**{**RESIDUAL_DEFAULT, "se_gate": "constant"})
    half = LrpLens(**{**RESIDUAL_DEFAULT, "se_gate": 0.5})
    assert torch.equal(lens.relevance(network, boards).planes, constant.relevance(network, boards).planes)
    for target in ("value", "win"):
        rel = lens.relevance(network, boards, target).planes
        assert torch.equal(rel, half.relevance(network, boards, target).planes)
        assert not torch.allclose(rel, constant.relevance(network, boards, target).planes)
    split = LrpLens(se_gate={"value": 0.25})
    assert split.options() == {"se_gate": {"value": 0.25}} and LrpLens(**split.options()).se_gate == {"value": 0.25}
    assert isinstance(split.explaining_network(network)._modules["block0/conv2/se/mul"], E.GateRule)
    assert split.explaining_network(network, "value")._modules["block0/conv2/se/mul"].share == 0.25


@pytest.mark.parametrize(
    "bad", [0, -2.0, float("nan"), True, "2", [2.0], [("block*", 0.0)], [("block*", 2.0, 1)], {"block*": 2.0}]
)
def test_lens_rejects_bad_relu_beta(bad):
    with pytest.raises(LensError, match="relu_beta"):
        LrpLens(relu_beta=bad)


def test_default_smooths_the_relus_that_do_not_follow_a_gamma_convolution(maia_pb_path):
    """The default passes the signal through ``sigmoid(2 x)`` at each block's output ReLU, its squeeze-excitation
    ReLU and the value head's, in both trees, and keeps the identity rule after the gamma convolutions (whose
    rule then stays on its fast path); the conserving preset and ``relu_beta=math.inf`` keep the identity rule
    everywhere; the option round-trips, chooses per ReLU by pattern, and changes the maps."""
    from lczerolens.lenses import RESIDUAL_DEFAULT
    from lczerolens.model.native import load_pb
    from lczerolens.testing import random_boards

    network = load_pb(maia_pb_path).eval()

    def betas(lens, target="policy"):
        return {n: m.relu_beta for n, m in lens.explaining_network(network, target).named_modules()
                if isinstance(m, E.IdentityRule) and m.kind == "relu"}

    for target in ("policy", "value"):
        default = betas(LrpLens(), target)
        smoothed = {n for n, b in default.items() if b == 2.0}
        assert smoothed == {n for n in default if n.endswith(("conv2/relu", "se/relu")) or n.startswith("value/")}
        assert len(smoothed) == 6 * 2 + 2
        assert all(math.isinf(b) for n, b in default.items() if n not in smoothed)
        assert "inputconv/relu" in default and "policy/conv1/relu" in default and "block0/conv1/relu" in default
    assert all(math.isinf(b) for b in betas(LrpLens(**RESIDUAL_CONSERVING)).values())
    assert all(math.isinf(b) for b in betas(LrpLens(**EPSILON)).values())
    assert set(betas(LrpLens(relu_beta=3)).values()) == {3.0}
    assert betas(LrpLens(**RESIDUAL_DEFAULT)) == betas(LrpLens())
    plain = LrpLens(relu_beta=math.inf)
    assert plain.options() == {"relu_beta": math.inf} and "relu_beta=inf" in repr(plain)
    assert all(math.isinf(b) for b in betas(plain).values())
    picked = LrpLens(relu_beta=[("block0/*", 1.5), ("value/dense1/relu", 4)])
    assert LrpLens(**picked.options()).relu_beta == (("block0/*", 1.5), ("value/dense1/relu", 4.0))
    chosen = {n: b for n, b in betas(picked, "value").items() if not math.isinf(b)}
    assert chosen == {"block0/conv1/relu": 1.5, "block0/conv2/se/relu": 1.5, "block0/conv2/relu": 1.5,
                      "value/dense1/relu": 4.0}
    with pytest.raises(LensError, match=r"relu_beta patterns \['block9/\*'\] match no ReLU"):
        LrpLens(relu_beta=[("block9/*", 2.0)]).check(network)
    boards = random_boards(3, seed=5)
    for target in ("value", None):
        smooth = LrpLens().relevance(network, boards, target).planes
        same = LrpLens(relu_beta=RESIDUAL_DEFAULT["relu_beta"]).relevance(network, boards, target).planes
        assert torch.equal(smooth, same)
        assert not torch.allclose(smooth, plain.relevance(network, boards, target).planes)


@pytest.mark.parametrize("spec", [{"activation": "mish"}, {"policy": "classical"}, {"se": False}])
def test_the_default_preset_given_explicitly_explains_other_residual_nets(tmp_path, spec):
    """``LrpLens(**RESIDUAL_DEFAULT)`` (e.g. the explorer's preset menu) works on residual nets without the maia
    layout: a Mish net has no ReLU to choose (the option is moot), a classical policy head's ReLU and a net
    without squeeze-excitation match the preset's patterns; each gives the same maps as ``LrpLens()``."""
    from lczerolens.lenses import RESIDUAL_DEFAULT
    from lczerolens.model.native import load_pb
    from lczerolens.testing import random_boards, write_random_net

    try:
        path = write_random_net(tmp_path / "net.pb.gz", blocks=2, filters=8, seed=3, **spec)
    except (TypeError, ValueError) as error:  # pragma: no cover - a spec key the generator does not take
        pytest.fail(f"write_random_net does not take {spec}: {error}")
    network = load_pb(path).eval()
    boards = random_boards(2, seed=4)
    for target in (None, "value"):
        given = LrpLens(**RESIDUAL_DEFAULT).relevance(network, boards, target).planes
        assert torch.equal(given, LrpLens().relevance(network, boards, target).planes)


def test_lens_pattern_matching_no_layer_is_refused(maia_pb_path):
    from lczerolens.model.native import load_pb

    network = load_pb(maia_pb_path).eval()
    with pytest.raises(LensError, match="block99"):
        LrpLens(layer_rules=[("block99/*", {"rule": "gamma"})]).check(network)


def test_lens_builds_the_rules_it_is_asked_for(maia_pb_path):
    from lczerolens.model.native import load_pb

    network = load_pb(maia_pb_path).eval()
    lens = LrpLens(bias="ignore", se_shift="absorb", layer_rules=[("inputconv", {"rule": "gamma", "gamma": 1.0})])
    tree = lens.explaining_network(network)
    first = tree._modules["inputconv"]
    assert isinstance(first, E.Conv2dRule) and first.rule == E.LayerRule("gamma", bias="ignore", gamma=1.0)
    assert tree._modules["block0/conv1"].rule == E.LayerRule("epsilon", bias="ignore")
    assert isinstance(tree._modules["value/dense2"], E.LinearRule)
    held = [n for n, m in tree._modules.items() if isinstance(m, E.HeldShift)]
    assert held and all(n.endswith("/se/matmul2") for n in held)
    assert type(network._modules["inputconv"]) is nn.Conv2d  # never patched
    plain = LrpLens(**EPSILON).explaining_network(network)
    assert type(plain._modules["inputconv"]) is nn.Conv2d and type(plain._modules["value/dense2"]) is nn.Linear


def test_maia_conserves_with_biases_left_out(maia_pb_path):
    """Done-when of issue 12: biases left out, softmax="cp", float32, default epsilon: median |share - 1| <= 1e-4.

    The composite is :data:`RESIDUAL_CONSERVING`: sign-aware rules on every convolution and dense layer, whose
    denominators never cancel (with plain epsilon rules, a bias left out makes relevance explode).
    """
    from lczerolens.model.native import load_pb

    network = load_pb(maia_pb_path).eval()
    fens = [
        "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
        "r2q1rk1/ppp2ppp/2np1n2/2b1p1B1/2B1P1b1/2NP1N2/PPP2PPP/R2Q1RK1 w - - 4 8",
        "8/5pk1/6p1/3P4/2r5/6P1/5PK1/4R3 b - - 0 40",
        "rnbqkb1r/pp2pppp/3p1n2/8/3NP3/8/PPP2PPP/RNBQKB1R w KQkq - 1 5",
        "6k1/5ppp/8/8/8/8/1q3PPP/3R2K1 w - - 0 30",
        "r3k2r/ppp2ppp/2n1bn2/2bqp3/8/2NP1NP1/PPP1PPBP/R1BQ1RK1 b kq - 3 9",
    ]
    boards = [LczeroBoard(f) for f in fens] + [LczeroBoard()]
    lens = LrpLens(**{**RESIDUAL_CONSERVING, "softmax": "cp"})
    assert lens.settings(network)["bias"] == "ignore" and lens.settings(network)["epsilon"] == 1e-6
    for target in (None, "value"):
        share = lens.relevance(network, boards, target).conservation
        assert float((share - 1).abs().median()) <= 1e-4, share


# --------------------------------------------------------------------------------------------------------------
# Where the explained number went


def test_accounting_adds_up_to_the_target(maia_pb_path):
    from lczerolens.model.native import load_pb

    network = load_pb(maia_pb_path).eval()
    boards = [LczeroBoard(), LczeroBoard("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 3 3")]
    rel = LrpLens(**EPSILON).relevance(network, boards, "value")
    acc = rel.accounting()
    parts = sum(acc[k] for k in acc.keys())
    torch.testing.assert_close(parts, rel.target.to(parts.dtype), rtol=1e-5, atol=1e-5)
    # Independent sums: the map on occupied squares, planes 0-103, and the constant plane 111.
    planes = rel.board_planes
    for i, board in enumerate(boards):
        occupied = torch.zeros(64, dtype=torch.bool)
        occupied[list(board.piece_map())] = True
        on_board = planes[i, :104].sum(0).flatten()
        torch.testing.assert_close(acc["pieces"][i], on_board[occupied].sum())
        torch.testing.assert_close(acc["empty"][i], on_board[~occupied].sum())
        torch.testing.assert_close(acc["constant"][i], planes[i, 111].sum())
        torch.testing.assert_close(acc["unexplained"][i], rel.target[i] - rel.planes[i].sum(), rtol=1e-5, atol=1e-5)
    text = rel.accounting_text(1)
    assert text.startswith("pieces ") and "not in the map (biases, stabilisers, rules that do not conserve)" in text
