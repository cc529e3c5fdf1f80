"""Each LRP rule against a slow, plainly written float64 reference of its relevance formula.

Convention (see ``epsilon.py``): the backward signal at ``t`` is ``g_t`` and ``R_t = t * g_t``. Every test feeds a
random output signal ``g_z`` (so ``R_z = z * g_z``), computes ``R_in = in * grad`` through the rule, and compares
with the textbook formula written with explicit loops over indices.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lczerolens.lenses.lrp.rules import epsilon as E
from lczerolens.model import ops

TOL = 1e-6
EPS = 1e-2  # large enough that the stabiliser visibly matters in the references


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _stab(v: float, eps: float) -> float:
    return v + eps if v >= 0 else v - eps


def _broadcast_index(out_index: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index of a broadcast operand of ``shape`` that produced output element ``out_index``."""
    lead = len(out_index) - len(shape)
    return tuple(0 if n == 1 else i for i, n in zip(out_index[lead:], shape, strict=True))


def _relevances(fn, inputs: list[torch.Tensor], g_out: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, g_out, allow_unused=True)
    return [None if g is None else (t.detach() * g) for t, g in zip(leaves, grads, strict=True)]


def _assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------------------------------------------
# stabilize


def test_stabilize_is_sign_aware_and_never_zero():
    t = torch.tensor([-3.0, -1e-9, -0.0, 0.0, 1e-9, 2.0], dtype=torch.float64)
    s = E.stabilize(t, 1e-3)
    expected = [-3.001, -1e-9 - 1e-3, 1e-3, 1e-3, 1e-9 + 1e-3, 2.001]
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-12)
    assert (s.abs() >= 1e-3).all()
    assert s.dtype == t.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_stabilize_tiny_epsilon_never_divides_by_zero(dtype):
    zeros = torch.zeros(4, dtype=dtype)
    assert (E.stabilize(zeros, 1e-30) != 0).all()
    assert torch.isfinite(1.0 / E.stabilize(zeros, 1e-30)).all()


@pytest.mark.parametrize("bad", [0.0, -1e-6])
def test_stabilize_rejects_non_positive_epsilon(bad):
    with pytest.raises(ValueError, match="epsilon"):
        E.stabilize(torch.ones(2), bad)


# --------------------------------------------------------------------------------------------------------------
# AddEpsilon


@pytest.mark.parametrize("sx,sy", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((5,), (2, 5))])
def test_add_epsilon_matches_reference(sx, sy):
    x, y = _rand(*sx, seed=1), _rand(*sy, seed=2)
    z = (x + y).numpy()
    g = _rand(*z.shape, seed=3)
    r_z = z * g.numpy()
    rx_ref, ry_ref = np.zeros(sx), np.zeros(sy)
    for idx in np.ndindex(*z.shape):
        ix, iy = _broadcast_index(idx, sx), _broadcast_index(idx, sy)
        d = _stab(z[idx], EPS)
        rx_ref[ix] += x.numpy()[ix] * r_z[idx] / d
        ry_ref[iy] += y.numpy()[iy] * r_z[idx] / d
    rx, ry = _relevances(lambda a, b: E.AddEpsilon(EPS)(a, b), [x, y], g)
    _assert_close(rx, rx_ref)
    _assert_close(ry, ry_ref)
    assert torch.equal(E.AddEpsilon(EPS)(x, y), x + y)


# --------------------------------------------------------------------------------------------------------------
# MatMulEpsilon and the bilinear rule

MATMUL_SHAPES = [
    ((5,), (5, 3)),
    ((4, 5), (5,)),
    ((4, 5), (5, 3)),
    ((2, 3, 4, 5), (5, 6)),
    ((2, 4, 5), (2, 5, 3)),
    ((2, 1, 4, 5), (3, 5, 2)),
]


def _matmul_reference(a: np.ndarray, b: np.ndarray, r_z: np.ndarray, z: np.ndarray, share: float):
    """``R_a[..ij] = share * sum_k a_ij b_jk R_z[ik] / stab(z_ik)`` and likewise for ``b``, by loops."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    z2 = z.reshape(z.shape[:-1] + (1,) + z.shape[-1:]) if a.ndim == 1 else z
    z2 = z2[..., None] if b.ndim == 1 else z2
    r2 = r_z.reshape(z2.shape)
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    ra, rb = np.zeros(a2.shape), np.zeros(b2.shape)
    n_i, n_j, n_k = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    for bidx in np.ndindex(*batch) if batch else [()]:
        ia = _broadcast_index(bidx, a2.shape[:-2]) if a2.ndim > 2 else ()
        ib = _broadcast_index(bidx, b2.shape[:-2]) if b2.ndim > 2 else ()
        for i, j, k in itertools.product(range(n_i), range(n_j), range(n_k)):
            contribution = a2[ia + (i, j)] * b2[ib + (j, k)] * r2[bidx + (i, k)] / _stab(z2[bidx + (i, k)], EPS)
            ra[ia + (i, j)] += share * contribution
            rb[ib + (j, k)] += share * contribution
    return ra.reshape(a.shape), rb.reshape(b.shape)


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
@pytest.mark.parametrize("rule,share", [(E.MatMulEpsilon, 1.0), (E.BilinearMatMulEpsilon, 0.5)])
def test_matmul_rules_match_reference(sa, sb, rule, share):
    a, b = _rand(*sa, seed=4), _rand(*sb, seed=5)
    z = torch.matmul(a, b)
    g = _rand(*z.shape, seed=6)
    ra_ref, rb_ref = _matmul_reference(a.numpy(), b.numpy(), (z * g).numpy(), z.numpy(), share)
    ra, rb = _relevances(lambda x, y: rule(EPS)(x, y), [a, b], g)
    _assert_close(ra, ra_ref)
    _assert_close(rb, rb_ref)
    assert torch.equal(rule(EPS)(a, b), z)


def test_matmul_aliases_are_the_same_rules():
    assert issubclass(E.MatrixMultiplicationEpsilon, E.BilinearMatMulEpsilon)
    assert issubclass(E.ElementwiseMultiplyUniform, E.MulUniform)
    a, b = _rand(3, 4, seed=7), _rand(4, 2, seed=8)
    g = _rand(3, 2, seed=9)
    one = _relevances(lambda x, y: E.MatrixMultiplicationEpsilon(EPS)(x, y), [a, b], g)
    two = _relevances(lambda x, y: E.BilinearMatMulEpsilon(EPS)(x, y), [a, b], g)
    assert all(torch.equal(p, q) for p, q in zip(one, two, strict=True))


def test_matmul_function_apply_directly():
    a, b = _rand(2, 3, 4, seed=10), _rand(4, 5, seed=11)
    assert torch.equal(E.MatMulEpsilonFunction.apply(a, b, 1e-6), a @ b)
    assert torch.equal(E.BilinearMatMulEpsilonFunction.apply(a, b, 1e-6), a @ b)
    assert torch.equal(E.AddEpsilonFunction.apply(a, a, 1e-6), a + a)


def test_bilinear_conserves_with_small_epsilon():
    a, b = _rand(2, 6, 7, seed=12), _rand(2, 7, 6, seed=13)
    z = a @ b
    g = _rand(*z.shape, seed=14)
    ra, rb = _relevances(lambda x, y: E.BilinearMatMulEpsilon(1e-12)(x, y), [a, b], g)
    total = (z * g).sum()
    assert abs(float(ra.sum() + rb.sum() - total)) < 1e-9 * float(z.abs().max() * g.abs().max()) * z.numel()


# --------------------------------------------------------------------------------------------------------------
# Uniform product


@pytest.mark.parametrize("sx,sy", [((3, 4), (3, 4)), ((2, 3, 4), (3, 1)), ((4,), (2, 4))])
def test_mul_uniform_matches_reference(sx, sy):
    x, y = _rand(*sx, seed=15), _rand(*sy, seed=16)
    z = (x * y).numpy()
    g = _rand(*z.shape, seed=17)
    r_z = z * g.numpy()
    rx_ref, ry_ref = np.zeros(sx), np.zeros(sy)
    for idx in np.ndindex(*z.shape):
        rx_ref[_broadcast_index(idx, sx)] += 0.5 * r_z[idx]
        ry_ref[_broadcast_index(idx, sy)] += 0.5 * r_z[idx]
    rx, ry = _relevances(lambda a, b: E.MulUniform()(a, b), [x, y], g)
    _assert_close(rx, rx_ref)
    _assert_close(ry, ry_ref)
    assert torch.equal(E.MulUniform()(x, y), x * y)
    assert torch.equal(E.MulUniformFunction.apply(x, y), x * y)


# --------------------------------------------------------------------------------------------------------------
# Softmax


@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 6), -1), ((3, 6), 0), ((2, 4, 5), 1), ((2, 2, 3, 7), -1)])
def test_softmax_matches_attnlrp_formula(shape, dim):
    x = _rand(*shape, seed=18) * 2
    y = torch.softmax(x, dim=dim)
    g = _rand(*shape, seed=19)
    r_y = (y * g).numpy()
    xn, yn = x.numpy(), y.numpy()
    r_ref = np.zeros(shape)
    d = dim % len(shape)
    for idx in np.ndindex(*shape):
        # R_x[i] = x_i (R_y[i] - y_i sum_j R_y[j]), the sum along `dim`
        total = sum(r_y[idx[:d] + (j,) + idx[d + 1 :]] for j in range(shape[d]))
        r_ref[idx] = xn[idx] * (r_y[idx] - yn[idx] * total)
    (r,) = _relevances(lambda t: E.SoftmaxEpsilon(dim)(t), [x], g)
    _assert_close(r, r_ref)
    assert torch.equal(E.SoftmaxEpsilon(dim)(x), y)
    assert torch.equal(E.SoftmaxEpsilonFunction.apply(x, dim), y)


# --------------------------------------------------------------------------------------------------------------
# Identity rule, gate, layer norm, CP


@pytest.mark.parametrize("kind", ops.ACTIVATIONS)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 4)])
def test_identity_rule_matches_reference(kind, shape):
    x = _rand(*shape, seed=20)
    x.view(-1)[0] = 0.0  # an exact zero pre-activation must not divide by zero
    y = ops.apply_activation(kind, x)
    g = _rand(*shape, seed=21)
    r_y = (y * g).numpy()
    yn, xn = y.numpy(), x.numpy()
    f0 = float(ops.apply_activation(kind, torch.zeros((), dtype=torch.float64)))
    assert (f0 == 0.0) == (kind != "sigmoid")
    r_ref = np.zeros(shape)
    for idx in np.ndindex(*shape):
        # R_x = R_y x / stab(x); a non-zero f(0) is a bias keeping its share R_y f(0) / f(x), so that
        # R_x = R_y (f(x) - f(0)) / f(x) * x / stab(x), written with R_y / f(x) = g to avoid 0 / 0 at x = 0
        r_ref[idx] = (r_y[idx] if f0 == 0.0 else g.numpy()[idx] * (yn[idx] - f0)) * xn[idx] / _stab(xn[idx], EPS)
    (r,) = _relevances(lambda t: E.IdentityRule(kind, EPS)(t), [x], g)
    _assert_close(r, r_ref)
    assert torch.equal(E.IdentityRule(kind, EPS)(x), ops.Activation(kind)(x))


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_smoothed_relu_rule_matches_reference(beta):
    """``R_x = x sigmoid(beta x) g_y``: the signal through softplus's derivative, whatever the unit's side."""
    shape = (2, 3, 4, 4)
    x, g = _rand(*shape, seed=61), _rand(*shape, seed=62)
    x[0, 0, 0, 0] = 0.0
    r_ref = np.zeros(shape)
    xn, gn = x.numpy(), g.numpy()
    for idx in np.ndindex(*shape):
        r_ref[idx] = xn[idx] * gn[idx] / (1.0 + np.exp(-beta * xn[idx]))
    (r,) = _relevances(lambda t: E.IdentityRule("relu", EPS, relu_beta=beta)(t), [x], g)
    _assert_close(r, r_ref)
    assert torch.equal(E.IdentityRule("relu", EPS, relu_beta=beta)(x), torch.relu(x))
    # units below their threshold pass part of the signal, unlike the identity rule
    assert (r.numpy()[xn < 0] != 0).all()


def test_smoothed_relu_rule_tends_to_the_identity_rule():
    """``beta -> inf`` gives the identity rule's step (``inf`` is the identity rule itself); other activations
    ignore ``relu_beta``."""
    shape = (2, 3, 4, 4)
    x, g = _rand(*shape, seed=63), _rand(*shape, seed=64)
    (steep,) = _relevances(lambda t: E.IdentityRule("relu", EPS, relu_beta=1e9)(t), [x], g)
    (plain,) = _relevances(lambda t: E.IdentityRule("relu", 1e-12)(t), [x], g)
    _assert_close(steep, plain.numpy())
    (mish,) = _relevances(lambda t: E.IdentityRule("mish", EPS, relu_beta=2.0)(t), [x], g)
    (mish_plain,) = _relevances(lambda t: E.IdentityRule("mish", EPS)(t), [x], g)
    assert torch.equal(mish, mish_plain)
    for bad in (0.0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="relu_beta"):
            E.IdentityRule("relu", EPS, relu_beta=bad)


def test_gate_rule_gives_all_relevance_to_the_signal():
    s, x = _rand(2, 3, 1, 1, seed=22), _rand(2, 3, 4, 4, seed=23)
    g = _rand(2, 3, 4, 4, seed=24)
    y = torch.sigmoid(s) * x
    rs, rx = _relevances(lambda a, b: E.GateRule()(a, b), [s, x], g)
    assert rs is None  # the gate logits get nothing
    _assert_close(rx, (y * g).numpy())  # R_x = R_y elementwise
    assert torch.equal(E.GateRule()(s, x), ops.Gate()(s, x))


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_gate_share_rule_matches_reference(share):
    """R_x = (1 - a) R_y; the gate's part a R_y, summed over the squares it scales, goes through the sigmoid by
    the identity rule with its value at 0 (1/2) held as a bias: R_s = a sum(R_y) (sigmoid(s) - 1/2) / sigmoid(s)
    * s / stab(s)."""
    s, x = _rand(2, 3, 1, 1, seed=22), _rand(2, 3, 4, 4, seed=23)
    s.view(-1)[0] = 0.0  # an exact zero gate logit must not divide by zero
    g = _rand(2, 3, 4, 4, seed=24)
    y = torch.sigmoid(s) * x
    r_y = (y * g).numpy()
    sig = torch.sigmoid(s).numpy()
    rs_ref, rx_ref = np.zeros(s.shape), np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        gate = (idx[0], idx[1], 0, 0)
        rx_ref[idx] = (1.0 - share) * r_y[idx]
        sn = s.numpy()[gate]
        rs_ref[gate] += share * r_y[idx] * (sig[gate] - 0.5) / sig[gate] * sn / _stab(sn, EPS)
    rs, rx = _relevances(lambda a, b: E.GateShareRule(share, EPS)(a, b), [s, x], g)
    _assert_close(rx, rx_ref)
    _assert_close(rs, rs_ref)
    assert torch.equal(E.GateShareRule(share, EPS)(s, x), ops.Gate()(s, x))
    x2, y2, g2 = _rand(3, 4, seed=25), _rand(3, 4, seed=26), _rand(3, 4, seed=27)
    r2 = (x2 * y2 * g2).numpy()
    ra, rb = _relevances(lambda a, b: E.MulShareFunction.apply(a, b, share), [x2, y2], g2)
    _assert_close(ra, share * r2)
    _assert_close(rb, (1.0 - share) * r2)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "half"])
def test_gate_share_rule_rejects_bad_shares(bad):
    with pytest.raises(ValueError, match="share"):
        E.GateShareRule(bad)


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 8)])
def test_layer_norm_rule_matches_linear_reference(shape):
    x = _rand(*shape, seed=25)
    w, b = _rand(shape[-1], seed=26), _rand(shape[-1], seed=27)
    op = ops.LayerNorm(shape[-1], 1e-3).double()
    with torch.no_grad():
        op.weight.copy_(w)
        op.bias.copy_(b)
    g = _rand(*shape, seed=28)
    xn, wn, gn = x.numpy(), w.numpy(), g.numpy()
    n = shape[-1]
    r_ref = np.zeros(shape)
    for row in np.ndindex(*shape[:-1]):
        v = xn[row]
        inv_std = 1.0 / np.sqrt(v.var() + 1e-3)
        for i, j in itertools.product(range(n), range(n)):
            # y_j - b_j = sum_i x_i W_ij, W_ij = w_j (delta_ij - 1/n) / std (std a constant)
            w_ij = wn[j] * ((1.0 if i == j else 0.0) - 1.0 / n) * inv_std
            r_ref[row + (i,)] += v[i] * w_ij * gn[row + (j,)]  # = x_i W_ij R_y[j] / y_j
    rule = E.LayerNormRule(op.weight, op.bias, op.eps)
    (r,) = _relevances(rule, [x], g)
    _assert_close(r, r_ref)
    assert torch.equal(rule(x), op(x))
    # Without bias, relevance is conserved: sum R_x = sum R_y per row.
    rule0 = E.LayerNormRule(op.weight, torch.zeros_like(b), op.eps)
    (r0,) = _relevances(rule0, [x], g)
    np.testing.assert_allclose(r0.sum(-1).numpy(), (rule0(x) * g).sum(-1).detach().numpy(), rtol=1e-9)


def test_layer_norm_rule_float32_forward_bit_identical():
    op = ops.LayerNorm(64, 1e-6)
    torch.nn.init.normal_(op.weight)
    torch.nn.init.normal_(op.bias)
    x = torch.randn(128, 64)
    assert torch.equal(E.LayerNormRule(op.weight, op.bias, op.eps)(x), op(x))


@pytest.mark.parametrize("operand", [0, 1])
def test_cp_matmul_holds_attention_constant(operand):
    att = torch.softmax(_rand(2, 5, 5, seed=29), -1)
    v = _rand(2, 5, 3, seed=30)
    a, b = (att, v) if operand == 0 else (v.mT, att.mT)
    z = a @ b
    g = _rand(*z.shape, seed=31)
    ra, rb = _relevances(lambda p, q: E.CPMatMul(operand)(p, q), [a, b], g)
    r_att, r_v = (ra, rb) if operand == 0 else (rb, ra)
    assert r_att is None
    # R_v[jk] = sum_i A_ij v_jk R_z[ik] / z_ik, and the exact sum conserves
    an, vn = att.numpy(), v.numpy()
    gz = g.numpy() if operand == 0 else g.mT.numpy()
    ref = np.zeros(v.shape)
    for n, i, j, k in itertools.product(range(2), range(5), range(5), range(3)):
        ref[n, j, k] += an[n, i, j] * vn[n, j, k] * gz[n, i, k]
    _assert_close(r_v if operand == 0 else r_v.mT, ref)
    assert torch.equal(E.CPMatMul(operand)(a, b), z)


def test_rule_modules_reject_bad_epsilon():
    for rule in (E.AddEpsilon, E.MatMulEpsilon, E.BilinearMatMulEpsilon):
        with pytest.raises(ValueError, match="epsilon"):
            rule(0.0)
