"""The optional gamma rule for convolutions: against a plainly written float64 reference, and in the lens.

Convention (see ``epsilon.py``): the backward signal at ``t`` is ``g_t`` and ``R_t = t * g_t``. For
``z = conv(x, W) + b`` the gamma rule is ``R_x[i] = x_i sum_j Wg_ij R_z[j] / stab(zg_j)`` with
``Wg = W + gamma W+`` for outputs ``z_j >= 0`` (``W + gamma W-`` for ``z_j < 0``) and ``zg = conv(x, Wg) + b``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lczerolens.board import InputFormat, LczeroBoard
from lczerolens.errors import LensError
from lczerolens.lenses import EPSILON, LrpLens
from lczerolens.lenses.lrp.rules import epsilon as E
from lczerolens.model import ops

TOL = 1e-6
EPS = 1e-2  # large enough that the stabiliser visibly matters in the reference


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _stab(v: float, eps: float) -> float:
    return v + eps if v >= 0 else v - eps


def _reference(x, w, b, g_z, gamma, eps, stride, padding, dilation):
    """R_x of the gamma rule with explicit loops over every (output, kernel offset, input channel) triple."""
    x, w, g_z = x.numpy(), w.numpy(), g_z.numpy()
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    _, _, oh, ow = g_z.shape
    wg_pos = w + gamma * np.maximum(w, 0.0)  # outputs z >= 0 favour positive contributions
    wg_neg = w + gamma * np.minimum(w, 0.0)  # outputs z < 0 favour negative ones
    bias = np.zeros(c_out) if b is None else b.numpy()

    def taps(i, j):  # (input row, input col, kernel row, kernel col) feeding output (i, j), inside the board
        for ki, kj in itertools.product(range(kh), range(kw)):
            p, q = i * stride - padding + ki * dilation, j * stride - padding + kj * dilation
            if 0 <= p < h and 0 <= q < wd:
                yield p, q, ki, kj

    r_x = np.zeros_like(x)
    for s, o, i, j in itertools.product(range(n), range(c_out), range(oh), range(ow)):
        z = bias[o] + sum(w[o, c, ki, kj] * x[s, c, p, q] for p, q, ki, kj in taps(i, j) for c in range(c_in))
        wg = wg_pos if z >= 0 else wg_neg
        zg = bias[o] + sum(wg[o, c, ki, kj] * x[s, c, p, q] for p, q, ki, kj in taps(i, j) for c in range(c_in))
        r_z = z * g_z[s, o, i, j]
        for p, q, ki, kj in taps(i, j):
            for c in range(c_in):
                r_x[s, c, p, q] += x[s, c, p, q] * wg[o, c, ki, kj] * r_z / _stab(zg, eps)
    return r_x


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0])
@pytest.mark.parametrize(
    "stride, padding, dilation, bias, signed",
    [(1, 1, 1, True, False), (2, 0, 1, False, True), (1, 2, 2, True, True)],
)
def test_gamma_conv_matches_reference(gamma, stride, padding, dilation, bias, signed):
    x = _rand(2, 3, 5, 5, seed=1)
    if not signed:
        x = x.abs()  # the classic case: inputs >= 0 (input planes, after a ReLU)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(_rand(4, 3, 3, 3, seed=2))
        if bias:
            conv.bias.copy_(_rand(4, seed=3))
    rule = E.GammaConv2d(conv, gamma=gamma, epsilon=EPS)
    leaf = x.clone().requires_grad_(True)
    z = rule(leaf)
    g_z = _rand(*z.shape, seed=4)
    (grad,) = torch.autograd.grad(z, leaf, g_z)
    expected = _reference(x, conv.weight.detach(), conv.bias.detach() if bias else None, g_z, gamma, EPS,
                          stride, padding, dilation)
    np.testing.assert_allclose((x * grad).numpy(), expected, rtol=TOL, atol=TOL)
    assert torch.equal(z, conv(x))


def test_gamma_conv_forward_bit_identical_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(112, 64, 3, padding=1)
    x = (torch.rand(16, 112, 8, 8) > 0.7).float()
    assert torch.equal(E.GammaConv2d(conv, 0.25)(x), conv(x))


def test_gamma_conv_conserves_without_bias():
    x = _rand(2, 3, 6, 6, seed=5).abs()
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
    leaf = x.clone().requires_grad_(True)
    z = E.GammaConv2d(conv, gamma=0.5, epsilon=1e-12)(leaf)
    g_z = _rand(*z.shape, seed=6)
    (grad,) = torch.autograd.grad(z, leaf, g_z)
    np.testing.assert_allclose((x * grad).sum((1, 2, 3)).numpy(), (z * g_z).sum((1, 2, 3)).detach().numpy(),
                               rtol=1e-9)


def test_gamma_conv_rejects_bad_settings():
    conv = nn.Conv2d(2, 2, 3)
    with pytest.raises(ValueError, match="gamma"):
        E.GammaConv2d(conv, gamma=-1.0)
    with pytest.raises(ValueError, match="padding_mode"):
        E.GammaConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


# --------------------------------------------------------------------------------------------------------------
# In the lens


class ConvNet(nn.Module):
    """Input conv + one residual block (two convs) + a dense value head: the residual family in small."""

    input_format = InputFormat.CLASSICAL_112_PLANE
    heads = ("policy", "wdl")
    description = "conv test net"

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.add_module("inputconv", nn.Conv2d(112, c, 3, padding=1))
        self.add_module("inputconv/relu", ops.Activation("relu"))
        self.add_module("block0/conv1", nn.Conv2d(c, c, 3, padding=1))
        self.add_module("block0/conv1/relu", ops.Activation("relu"))
        self.add_module("block0/conv2", nn.Conv2d(c, c, 3, padding=1))
        self.add_module("block0/conv2/relu", ops.Activation("relu"))
        self.add_module("policy", nn.Linear(64 * c, 1858))
        self.add_module("wdl", nn.Linear(64 * c, 3))

    def forward(self, planes: torch.Tensor, rules: dict | None = None) -> dict[str, torch.Tensor]:
        m, r = self._modules, rules or {}
        call = lambda name, *args: r[name](*args) if name in r else m[name](*args)  # noqa: E731
        x = call("inputconv/relu", call("inputconv", planes))
        y = call("block0/conv1/relu", call("block0/conv1", x))
        x = call("block0/conv2/relu", call("block0/conv2", y) + x)
        flat = x.flatten(1)
        return {"policy": m["policy"](flat), "wdl_logits": m["wdl"](flat)}


@pytest.fixture(scope="module")
def net() -> ConvNet:
    return ConvNet().double().eval()


@pytest.fixture(scope="module")
def boards() -> list[LczeroBoard]:
    out = [LczeroBoard()]
    for uci in ("e2e4", "c7c5", "g1f3"):
        nxt = out[-1].copy()
        nxt.push_uci(uci)
        out.append(nxt)
    return out


def _explicit(net: ConvNet, boards, gamma_convs: tuple[str, ...], gamma: float, epsilon: float) -> torch.Tensor:
    """Value relevance with the rules written out: gamma Functions on ``gamma_convs``, the identity rule on ReLUs."""
    from lczerolens.board import encode_boards

    relu = lambda z: E.IdentityRuleFunction.apply(z, torch.relu, epsilon)  # noqa: E731
    rules = {name: relu for name in ("inputconv/relu", "block0/conv1/relu", "block0/conv2/relu")}
    for name in gamma_convs:
        c = net._modules[name]
        rules[name] = lambda z, c=c: E.GammaConvFunction.apply(
            z, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups, gamma, epsilon
        )
    x = encode_boards(boards, InputFormat.CLASSICAL_112_PLANE).double().requires_grad_(True)
    wdl = net(x, rules)["wdl_logits"]
    (grad,) = torch.autograd.grad(wdl[:, 0] - wdl[:, 2], x, torch.ones(len(boards), dtype=x.dtype))
    return x.detach() * grad


@pytest.mark.parametrize(
    "layers, convs",
    [
        (None, ("inputconv", "block0/conv1", "block0/conv2")),
        (["inputconv"], ("inputconv",)),
        (["block0/*"], ("block0/conv1", "block0/conv2")),
    ],
)
def test_lens_gamma_equals_explicit_rules(net, boards, layers, convs):
    lens = LrpLens(epsilon=1e-4, conv_rule="gamma", gamma=0.5, gamma_layers=layers)
    rel = lens.relevance(net, boards, target="value")
    expected = _explicit(net, boards, convs, 0.5, 1e-4)
    torch.testing.assert_close(rel.planes, expected, rtol=1e-10, atol=1e-12)
    # The rule changes the explanation, and gamma = 0 gives back the default (up to the stabiliser).
    default = LrpLens(**{**EPSILON, "epsilon": 1e-4}).relevance(net, boards, target="value").planes
    assert not torch.allclose(rel.planes, default, rtol=1e-3)
    zero = LrpLens(epsilon=1e-12, conv_rule="gamma", gamma=0.0, gamma_layers=layers).relevance(net, boards, "value")
    plain = LrpLens(**{**EPSILON, "epsilon": 1e-12})
    torch.testing.assert_close(zero.planes, plain.relevance(net, boards, "value").planes,
                               rtol=1e-6, atol=1e-9)


def test_lens_default_leaves_convolutions_alone(net):
    lens = LrpLens(**EPSILON)
    assert repr(lens) == (
        "LrpLens(epsilon=1e-06, softmax='attnlrp', bias='absorb', se_shift='propagate', se_gate='constant', "
        "relu_beta=inf, layer_rules=())"
    )
    with lens.patched(net) as explained:
        assert type(explained._modules["inputconv"]) is nn.Conv2d
    gamma = LrpLens(conv_rule="gamma", gamma_layers=["inputconv"])
    with gamma.patched(net) as explained:
        assert isinstance(explained._modules["inputconv"], E.GammaConv2d)
        assert type(explained._modules["block0/conv1"]) is nn.Conv2d
    assert type(net._modules["inputconv"]) is nn.Conv2d  # never patched


def test_lens_gamma_forward_bit_identical_and_restored(net, boards):
    from lczerolens.board import encode_boards

    x = encode_boards(boards, InputFormat.CLASSICAL_112_PLANE).double()
    before = net(x)
    with LrpLens(conv_rule="gamma").patched(net) as explained:
        during = explained(x)
    after = net(x)
    for key in before:
        assert torch.equal(before[key], during[key]) and torch.equal(before[key], after[key])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conv_rule": "zplus"}, "conv_rule"),
        ({"conv_rule": "gamma", "gamma": -0.5}, "gamma"),
        ({"conv_rule": "gamma", "gamma_layers": "inputconv"}, "gamma_layers"),
    ],
)
def test_lens_rejects_bad_gamma_settings(kwargs, match):
    with pytest.raises(LensError, match=match):
        LrpLens(**kwargs)


def test_lens_rejects_a_pattern_matching_no_convolution(net, boards):
    lens = LrpLens(conv_rule="gamma", gamma_layers=["inputconv", "block9/*"])
    with pytest.raises(LensError, match="block9"):
        lens.relevance(net, boards, target="value")
    assert type(net._modules["inputconv"]) is nn.Conv2d


def test_maia_gamma_lens_is_finite_and_forward_unchanged(maia_pb_path):
    from lczerolens.model.native import load_pb

    network = load_pb(maia_pb_path).eval()
    boards = [LczeroBoard(), LczeroBoard("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3")]
    x = torch.stack([b.to_input_tensor() for b in boards])
    before = network(x)
    lens = LrpLens(conv_rule="gamma", gamma=0.25, gamma_layers=["inputconv", "block[01]/*"])
    with lens.patched(network) as explained:
        during = explained(x)
        assert isinstance(explained._modules["block1/conv2"], E.GammaConv2d)
        assert type(explained._modules["block2/conv1"]) is nn.Conv2d
    for key in before:
        assert torch.equal(before[key], during[key])
    for target in (None, "value"):
        rel = lens.relevance(network, boards, target=target)
        assert torch.isfinite(rel.planes).all()
