"""Epsilon-LRP rules as autograd Functions, in LXT's "efficient" (gradient x input) convention.

Convention
----------
What flows backward at a tensor ``t`` is a signal ``g_t``, and the relevance of ``t`` is ``R_t = t * g_t``
(relevance = input x modified gradient). At the explained output the signal is the one-hot (or weight) vector,
so the output's relevance is its own value. Under this convention:

- Ops linear in each input (conv, dense, add, multiply by a constant, mean, reshape, gather, concat) need no rule:
  their plain gradient already is the LRP rule, i.e. ``R_x[i] = sum_j x[i] W[i, j] R_z[j] / z[j]`` for
  ``z = x @ W``. The epsilon rule's stabilised division by the pre-activation ``z`` is applied once, by the
  elementwise nonlinearity that consumes ``z`` (:class:`IdentityRuleFunction`), which reproduces textbook
  epsilon-LRP for every linear -> nonlinearity chain.
- Each rule below is written as the relevance formula it implements and the signal that results from it:

  ============================  ==========================================  =====================================
  rule                          relevance form                              signal form
  ============================  ==========================================  =====================================
  epsilon, ``z = x + y``        ``R_x = x R_z / stab(z)``                   ``g_x = g_z z / stab(z)``
  epsilon, ``z = x @ W``        ``R_x[i] = sum_j x_i W_ij R_z[j]/stab(z_j)``  ``g_x = (g_z z / stab(z)) @ W^T``
  bilinear ``z = A @ B``        half of the epsilon rule of the products    ``g_A = 0.5 (g_z z/stab(z)) @ B^T``
  (AttnLRP, uniform)            ``A_ij B_jk`` to each factor                ``g_B = 0.5 A^T @ (g_z z/stab(z))``
  uniform ``z = x * y``         ``R_x = R_y = R_z / 2``                     ``g_x = 0.5 g_z y``
  softmax (AttnLRP)             ``R_x = x (R_y - y sum(R_y))``              ``g_x = y (g_y - sum(y g_y))``
  identity ``y = f(x)``         ``R_x = R_y`` (stabilised)                  ``g_x = g_y f(x) / stab(x)``
  (``f(0) = c != 0``)           ``R_x = R_y (f(x) - c) / f(x)``             ``g_x = g_y (f(x) - c) / stab(x)``
  smoothed ReLU, ``beta``       ``R_x = x sigmoid(beta x) g_y``             ``g_x = g_y sigmoid(beta x)``
  gate ``y = sigmoid(s) * x``   ``R_x = R_y``, ``R_s = 0``                  ``g_x = sigmoid(s) g_y``
  gate, share ``a``             ``R_x = (1 - a) R_y``, ``R_gate = a R_y``,  ``g_x = (1 - a) sigmoid(s) g_y``,
                                then identity rule through the sigmoid     ``g_s = a x g_y (sigmoid(s) - 1/2)
                                (its value at 0 held as a bias)            / stab(s)``
  share ``z = x * y``           ``R_x = a R_z``, ``R_y = (1 - a) R_z``      ``g_x = a g_z y``
  LayerNorm, std constant       linear rule of ``w (x - mean) / std + b``   ``g_x = (g_y w - mean(g_y w)) / std``
  CP-LRP ``z = A @ V``          ``A`` held constant, ``V`` takes all        ``g_V = A^T g_z``
  gamma, conv ``z = W*x + b``   ``R_x = x W_g^T (R_z / stab(z_g))``         ``g_x = W_g^T (g_z z / stab(z_g))``
  (optional, lower layers)      ``W_g = W + gamma W+`` where ``z >= 0``,    ``z_g = W_g*x + b``
                                ``W + gamma W-`` where ``z < 0``
  ============================  ==========================================  =====================================

  ``stab(z) = z + epsilon * sign(z)`` with ``sign(0) = +1`` (:func:`stabilize`), so no rule ever divides by zero.
  The gamma rule is optional (the default lens gives convolutions their plain gradient, i.e. the epsilon rule):
  :class:`GammaConv2d` replaces an ``nn.Conv2d`` where a lens asks for it. Each output favours the
  contributions of its own sign; with ``x >= 0`` (the input planes, anything after a ReLU) and ``z >= 0`` it is
  the classic gamma rule. Its stabiliser divides by ``z_g``; the ``R_z / stab(z)`` of the consuming activation
  stays as it is.
  The softmax signal equals the softmax's gradient (AttnLRP's rule is its Taylor decomposition), but it is written
  out explicitly here so the rule does not depend on torch's softmax backward.

The forward of every Function is the plain op, bit for bit; only the backward differs. Parameters (weights)
receive the matching signal where they are an operand of a rule (their relevance is ``W * grad``); LayerNorm's
affine parameters and a gate's logits receive none.

Example
-------
>>> import torch
>>> x = torch.randn(2, 5, requires_grad=True)
>>> w = torch.randn(5, 3)
>>> z = MatMulEpsilon(epsilon=1e-6)(x, w)
>>> (g,) = torch.autograd.grad(z, x, torch.ones_like(z))
>>> relevance = x * g  # R_x[i] = sum_j x_i w_ij z_j / stab(z_j)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from lczerolens.model.ops import apply_activation

__all__ = [
    "stabilize",
    "AddEpsilonFunction",
    "MatMulEpsilonFunction",
    "BilinearMatMulEpsilonFunction",
    "MulUniformFunction",
    "MulShareFunction",
    "SoftmaxEpsilonFunction",
    "IdentityRuleFunction",
    "SmoothReluFunction",
    "LayerNormRuleFunction",
    "AddEpsilon",
    "MatMulEpsilon",
    "BilinearMatMulEpsilon",
    "MatrixMultiplicationEpsilon",
    "MulUniform",
    "ElementwiseMultiplyUniform",
    "SoftmaxEpsilon",
    "IdentityRule",
    "GateRule",
    "GateShareRule",
    "LayerNormRule",
    "CPMatMul",
    "GammaConvFunction",
    "GammaConv2d",
    "BIAS_MODES",
    "LAYER_RULES",
    "LayerRule",
    "layer_rule_signal",
    "LayerRuleFunction",
    "Conv2dRule",
    "LinearRule",
    "HeldShift",
]


# --------------------------------------------------------------------------------------------------------------
# Small named pieces


def stabilize(tensor: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """``tensor + epsilon * sign(tensor)`` with ``sign(0) = +1``: a denominator that is never zero.

    Parameters
    ----------
    tensor : torch.Tensor
        The pre-activations to divide by.
    epsilon : float
        The stabiliser, strictly positive.

    Returns
    -------
    torch.Tensor
        Same shape and dtype; every entry has magnitude at least ``epsilon``.

    Example
    -------
    >>> stabilize(torch.tensor([-2.0, 0.0, 3.0]), 0.5)
    tensor([-2.5000,  0.5000,  3.5000])
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 so that no rule divides by zero, not {epsilon!r}")
    epsilon = _at_least_tiny(epsilon, tensor.dtype)
    return torch.where(tensor >= 0, tensor + epsilon, tensor - epsilon)


_TINY: dict[torch.dtype, float] = {}


def _at_least_tiny(epsilon: float, dtype: torch.dtype) -> float:
    """``epsilon``, raised to the dtype's smallest normal number if it would round to zero (1e-12 in float16)."""
    tiny = _TINY.get(dtype)
    if tiny is None:
        tiny = _TINY[dtype] = torch.finfo(dtype).tiny if dtype.is_floating_point else 0.0
    return epsilon if epsilon >= tiny else tiny


def _stabilized_ratio(numerator: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``numerator / stab(z)`` in three kernels: ``stab(z) = copysign(|z| + epsilon, z)``.

    The same denominator as :func:`stabilize` except at ``z = -0.0``, where it is ``-epsilon`` (still of
    magnitude ``epsilon``, so never zero).
    """
    epsilon = _at_least_tiny(epsilon, z.dtype)
    denominator = z.abs().add_(epsilon).copysign_(z)
    return torch.div(numerator, denominator, out=denominator)


def _relu_ratio(y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``relu(x) / stab(x)`` from ``y = relu(x)`` alone, in two kernels: ``y / (y + epsilon)``.

    Where ``x > 0`` this is ``x / (x + epsilon)``; elsewhere ``y = 0`` and so is the ratio.
    """
    epsilon = _at_least_tiny(epsilon, y.dtype)
    denominator = y + epsilon
    return torch.div(y, denominator, out=denominator)


def _epsilon_ratio(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z / stab(z)``: turns the plain signal at ``z`` into the epsilon rule's ``R_z / stab(z)``."""
    return _stabilized_ratio(z, z, epsilon)


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: sum ``grad`` down to ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.dim() - len(shape)
    if lead > 0:
        grad = grad.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad


def _matmul_signals(
    signal: torch.Tensor, a: torch.Tensor, b: torch.Tensor, need_a: bool, need_b: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Push ``signal`` (shaped like ``a @ b``) back through ``a @ b`` with ``torch.matmul``'s broadcasting."""
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    s2 = signal
    if a.dim() == 1:
        s2 = s2.unsqueeze(-2)
    if b.dim() == 1:
        s2 = s2.unsqueeze(-1)
    ga = gb = None
    if need_a:
        ga = _sum_to(torch.matmul(s2, b2.mT), a2.shape).reshape(a.shape)
    if need_b:
        gb = _sum_to(torch.matmul(a2.mT, s2), b2.shape).reshape(b.shape)
    return ga, gb


# --------------------------------------------------------------------------------------------------------------
# Autograd Functions (forward: the plain op; backward: the rule's signal)


class AddEpsilonFunction(Function):
    """``z = x + y`` (broadcasting); epsilon rule ``R_x = x R_z / stab(z)``, ``R_y = y R_z / stab(z)``.

    ``AddEpsilonFunction.apply(x, y, epsilon)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
        z = x + y
        ctx.save_for_backward(_epsilon_ratio(z, epsilon))
        ctx.shapes = (x.shape, y.shape)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        signal = grad * ratio
        gx = _sum_to(signal, ctx.shapes[0]) if ctx.needs_input_grad[0] else None
        gy = _sum_to(signal, ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return gx, gy, None


class MatMulEpsilonFunction(Function):
    """``z = x @ w`` (activation times parameter, any batch dims); epsilon rule on each output.

    ``R_x[..., i] = sum_j x_i w_ij R_z[j] / stab(z_j)``. ``MatMulEpsilonFunction.apply(x, w, epsilon)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
        z = torch.matmul(x, w)
        ctx.save_for_backward(x, w, _epsilon_ratio(z, epsilon))
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w, ratio = ctx.saved_tensors
        gx, gw = _matmul_signals(grad * ratio, x, w, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gw, None


class BilinearMatMulEpsilonFunction(Function):
    """``z = a @ b`` for two activations (any batch dims): AttnLRP's rule for a matrix product.

    Each output ``z_ik = sum_j a_ij b_jk`` is explained by the epsilon rule over its products, and each product
    ``a_ij b_jk`` by the uniform rule (half to each factor):
    ``R_a[ij] = 0.5 sum_k a_ij b_jk R_z[ik] / stab(z_ik)``, ``R_b[jk] = 0.5 sum_i a_ij b_jk R_z[ik] / stab(z_ik)``.
    ``BilinearMatMulEpsilonFunction.apply(a, b, epsilon)``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
        z = torch.matmul(a, b)
        ctx.save_for_backward(a, b, _epsilon_ratio(z, epsilon))
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, ratio = ctx.saved_tensors
        return (*_matmul_signals(0.5 * grad * ratio, a, b, *ctx.needs_input_grad[:2]), None)


class MulUniformFunction(Function):
    """``z = x * y`` for two activations: the uniform rule, ``R_x = R_y = R_z / 2``.

    ``MulUniformFunction.apply(x, y)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y = ctx.saved_tensors
        half = 0.5 * grad
        gx = _sum_to(half * y, x.shape) if ctx.needs_input_grad[0] else None
        gy = _sum_to(half * x, y.shape) if ctx.needs_input_grad[1] else None
        return gx, gy


class MulShareFunction(Function):
    """``z = x * y`` for two activations: ``R_x = share R_z``, ``R_y = (1 - share) R_z`` (``share = 1/2``: the
    uniform rule of :class:`MulUniformFunction`).

    ``MulShareFunction.apply(x, y, share)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, share: float = 0.5) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        ctx.share = share
        return x * y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y = ctx.saved_tensors
        share = ctx.share
        # The shares scale the smaller operand or the summed product (a gate is [N, C, 1, 1]): one full-size
        # multiply per input instead of two.
        gx = _sum_to(grad * y, x.shape).mul_(share) if ctx.needs_input_grad[0] else None
        gy = _sum_to(grad * (x * (1.0 - share)), y.shape) if ctx.needs_input_grad[1] else None
        return gx, gy, None


class SoftmaxEpsilonFunction(Function):
    """``y = softmax(x, dim)``: AttnLRP's softmax rule ``R_x = x (R_y - y sum(R_y))``.

    In this convention no division is left (``g_x = y (g_y - sum(y g_y))``), so there is no epsilon to apply:
    the name follows the family. ``SoftmaxEpsilonFunction.apply(x, dim)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        y = torch.softmax(x, dim=dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        relevance_sum = (y * grad).sum(dim=ctx.dim, keepdim=True)  # sum_j R_y[j]
        return y * (grad - relevance_sum), None


class IdentityRuleFunction(Function):
    """``y = f(x)`` elementwise with ``f(0) = 0``: the identity rule ``R_x = R_y``, stabilised.

    ``g_x = g_y f(x) / stab(x)``: the epsilon division of the linear layer that produced ``x``.
    ``IdentityRuleFunction.apply(x, f, epsilon, offset=0.0)`` where ``f`` is a callable (the plain op).

    For ``f(0) = offset != 0`` (a bare sigmoid: ``f(x) / x`` explodes near 0) the constant ``offset`` is
    treated as a bias that keeps its share, and the identity rule applies to ``f(x) - offset``:
    ``g_x = g_y (f(x) - offset) / stab(x)``.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], epsilon: float = 1e-6, offset: float = 0.0
    ):
        y = fn(x)
        numerator = y if offset == 0.0 else y - offset
        ctx.save_for_backward(_stabilized_ratio(numerator, x, epsilon))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None, None, None


class _ReluIdentityFunction(Function):
    """:class:`IdentityRuleFunction` for ReLU, with the ratio computed from the output alone (fewer kernels).

    The forward keeps only its output, which the network keeps anyway; the ratio is formed in the backward, so
    the forward allocates nothing beyond the plain op (and a ReLU off the explained path costs nothing more).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
        y = torch.relu(x)
        ctx.save_for_backward(y)
        ctx.epsilon = epsilon
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        return grad * _relu_ratio(y, ctx.epsilon), None


class SmoothReluFunction(Function):
    """``y = relu(x)`` whose backward is softplus's derivative ``g_x = g_y sigmoid(beta x)`` (beta-smoothing).

    The identity rule passes the signal only where ``x > 0``: a unit that a piece holds below its threshold sends
    nothing back, so the piece gets no relevance for keeping it off. With the mask smoothed to
    ``sigmoid(beta x)``, units near their threshold pass part of the signal whichever side they are on, and
    units far above it pass almost all. ``beta -> inf`` is the identity rule's step. Relevance is not conserved
    here (``R_x = x sigmoid(beta x) g_y`` against ``R_y = relu(x) g_y``). The forward keeps ``x``.
    ``SmoothReluFunction.apply(x, beta)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x * ctx.beta), None


class LayerNormRuleFunction(Function):
    """Layer norm over the last ``len(normalized_shape)`` axes with the standard deviation held constant.

    ``y = w (x - mean(x)) / std + b`` is then linear in ``x``: ``g_x = (g_y w - mean(g_y w)) / std``.
    The affine parameters get no signal. ``LayerNormRuleFunction.apply(x, normalized_shape, weight, bias, eps)``.
    """

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps: float):
        y, _, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.save_for_backward(rstd, weight)
        ctx.dims = tuple(range(-len(normalized_shape), 0))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rstd, weight = ctx.saved_tensors
        gw = grad if weight is None else grad * weight
        return (gw - gw.mean(dim=ctx.dims, keepdim=True)) * rstd, None, None, None, None


class GammaConvFunction(Function):
    """``z = conv2d(x, w, b)`` (zero padding); gamma rule ``R_x = x W_g^T (R_z / stab(z_g))``, sign-aware.

    Each output favours the contributions of its own sign: where ``z >= 0``, ``W_g = w + gamma * w+`` (the classic
    gamma rule for ``x >= 0``); where ``z < 0``, ``W_g = w + gamma * w-``. With ``z_g = conv2d(x, W_g, b)``
    the signal is ``g_x = W+g^T (g_z z / stab(z+g))[z >= 0] + W-g^T (g_z z / stab(z-g))[z < 0]``. For ``x >= 0``,
    ``z+g >= z >= 0`` and ``z-g <= z < 0``, so the denominator never crosses zero (with ``w + gamma w+`` alone
    it does on negative outputs, and relevance explodes there). Where a ReLU follows, negative outputs carry no
    relevance and only the classic part acts. Forward is ``F.conv2d``, bit for bit; the ``z_g`` are computed in
    the backward. Weight and bias get no signal.
    ``GammaConvFunction.apply(x, w, b, stride, padding, dilation, groups, gamma, epsilon)``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, gamma: float, epsilon: float = 1e-6):
        z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, bias, z)
        ctx.settings = (stride, padding, dilation, groups, gamma, epsilon)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, bias, z = ctx.saved_tensors
        stride, padding, dilation, groups, gamma, epsilon = ctx.settings
        gx = None
        if ctx.needs_input_grad[0]:
            weight, z, grad = weight.detach(), z.detach(), grad.detach()
            b = None if bias is None else bias.detach()
            positive = z >= 0
            weights, signals = [], []
            for keep, w_gamma in (
                (positive, weight + gamma * weight.clamp(min=0)),
                (~positive, weight + gamma * weight.clamp(max=0)),
            ):
                if keep.any():
                    weights.append(w_gamma)
                    signals.append(keep)
            # The transposed convolutions through autograd: they handle every padding the forward accepts.
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                outs = [F.conv2d(leaf, w, b, stride, padding, dilation, groups) for w in weights]
            signals = [
                torch.where(keep, grad * _stabilized_ratio(z, out.detach(), epsilon), 0.0)
                for keep, out in zip(signals, outs, strict=True)
            ]
            (gx,) = torch.autograd.grad(outs, leaf, signals)
        return gx, None, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------------------
# Modules


class _Rule(nn.Module):
    """Base of the rule modules: marks them so that a lens recognises an already patched network."""

    lrp_rule = True


class _EpsilonRule(_Rule):
    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__()
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, not {epsilon!r}")
        self.epsilon = float(epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


class AddEpsilon(_EpsilonRule):
    """``x + y`` whose backward is the epsilon rule (:class:`AddEpsilonFunction`)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return AddEpsilonFunction.apply(x, y, self.epsilon)


class MatMulEpsilon(_EpsilonRule):
    """``x @ w`` (activation times parameter) whose backward is the epsilon rule (:class:`MatMulEpsilonFunction`)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return MatMulEpsilonFunction.apply(x, y, self.epsilon)


class BilinearMatMulEpsilon(_EpsilonRule):
    """``a @ b`` of two activations: AttnLRP's bilinear rule (:class:`BilinearMatMulEpsilonFunction`)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return BilinearMatMulEpsilonFunction.apply(x, y, self.epsilon)


class MatrixMultiplicationEpsilon(BilinearMatMulEpsilon):
    """The same rule as :class:`BilinearMatMulEpsilon`: a product of two activations, split half/half.

    Used by the lens for :class:`lczerolens.model.ops.MatMul` (``Q @ K^T``, and ``A @ V`` in AttnLRP mode).
    """


class MulUniform(_Rule):
    """``x * y`` of two activations: the uniform rule (:class:`MulUniformFunction`)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return MulUniformFunction.apply(x, y)


class ElementwiseMultiplyUniform(MulUniform):
    """The same rule as :class:`MulUniform`, for :class:`lczerolens.model.ops.Mul` (two signals, half each)."""


class SoftmaxEpsilon(_Rule):
    """``softmax(x, dim)`` with AttnLRP's softmax rule (:class:`SoftmaxEpsilonFunction`)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SoftmaxEpsilonFunction.apply(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class IdentityRule(_EpsilonRule):
    """An elementwise activation of :data:`lczerolens.model.ops.ACTIVATIONS` under the identity rule.

    The identity rule proper for ``f(0) = 0`` (ReLU, squared ReLU, Mish, Swish, tanh, SELU). A bare sigmoid
    (``f(0) = 1/2``, e.g. an FFN activation) keeps ``1/2`` as a bias and explains ``sigmoid(x) - 1/2``; a
    sigmoid *gate* is a :class:`GateRule` instead. With a finite ``relu_beta`` a ReLU takes the smoothed rule
    of :class:`SmoothReluFunction` instead (other activations ignore it).
    """

    def __init__(self, kind: str, epsilon: float = 1e-6, relu_beta: float = math.inf) -> None:
        super().__init__(epsilon)
        if isinstance(relu_beta, bool) or not isinstance(relu_beta, (int, float)) or not relu_beta > 0:
            raise ValueError(f"relu_beta={relu_beta!r} must be a number > 0 (math.inf: the identity rule)")
        self.kind = kind
        self.relu_beta = float(relu_beta)
        self.offset = float(apply_activation(kind, torch.zeros((), dtype=torch.float64)))

    def _fn(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(self.kind, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            if math.isinf(self.relu_beta):
                return _ReluIdentityFunction.apply(x, self.epsilon)
            return SmoothReluFunction.apply(x, self.relu_beta)
        return IdentityRuleFunction.apply(x, self._fn, self.epsilon, self.offset)

    def extra_repr(self) -> str:
        smooth = "" if self.kind != "relu" or math.isinf(self.relu_beta) else f", relu_beta={self.relu_beta}"
        return f"{self.kind}, epsilon={self.epsilon}{smooth}"


class GateRule(_Rule):
    """``sigmoid(gate_logits) * x``, signal-take-all: the gate is a constant, ``x`` keeps all relevance."""

    def forward(self, gate_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate_logits).detach() * x


class GateShareRule(_EpsilonRule):
    """``sigmoid(gate_logits) * x`` with the gate's share of relevance passed on to the gate logits.

    The product's relevance is split: ``share`` to the gate, ``1 - share`` to ``x`` (:class:`MulShareFunction`);
    the gate's part goes on through the sigmoid by the identity rule, its value at 0 (``1/2``) held as a bias
    (:class:`IdentityRuleFunction` with ``offset=0.5``), and from there through the squeeze-excitation layers to
    the block's pooled features. ``share = 0`` is :class:`GateRule`. The forward is the plain op, bit for bit.

    Example
    -------
    >>> rule = GateShareRule(0.5)
    >>> s, x = torch.randn(2, 3, 1, 1), torch.rand(2, 3, 4, 4)
    >>> torch.equal(rule(s, x), torch.sigmoid(s) * x)
    True
    """

    def __init__(self, share: float = 0.5, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"share={share!r} must be a number from 0 to 1 (0.5 splits the gate's product evenly)")
        self.share = float(share)

    def forward(self, gate_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = IdentityRuleFunction.apply(gate_logits, torch.sigmoid, self.epsilon, 0.5)
        return MulShareFunction.apply(gate, x, self.share)

    def extra_repr(self) -> str:
        return f"share={self.share}, epsilon={self.epsilon}"


class LayerNormRule(_Rule):
    """Layer norm with the standard deviation held constant (:class:`LayerNormRuleFunction`).

    Shares ``weight`` and ``bias`` with the module it replaces (no copy).
    """

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> None:
        super().__init__()
        # Plain attributes, not registered parameters: the original module keeps owning them.
        self._weight = weight
        self._bias = bias
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[-1],) if self._weight is None else tuple(self._weight.shape)
        return LayerNormRuleFunction.apply(x, shape, self._weight, self._bias, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class CPMatMul(_Rule):
    """``a @ b`` where operand ``attention_operand`` (0 or 1) holds attention weights: CP-LRP.

    The attention weights are held constant, so the other operand (the values) takes all relevance and none
    flows into the softmax.
    """

    def __init__(self, attention_operand: int) -> None:
        super().__init__()
        if attention_operand not in (0, 1):
            raise ValueError(f"attention_operand must be 0 or 1, not {attention_operand!r}")
        self.attention_operand = attention_operand

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.attention_operand == 0:
            return torch.matmul(a.detach(), b)
        return torch.matmul(a, b.detach())

    def extra_repr(self) -> str:
        return f"attention_operand={self.attention_operand}"


class GammaConv2d(_EpsilonRule):
    """An ``nn.Conv2d`` under the gamma rule (:class:`GammaConvFunction`), sharing its weight and bias.

    Forward is the convolution's own, bit for bit. Only zero padding (``padding_mode="zeros"``) is supported.

    Example
    -------
    >>> conv = nn.Conv2d(3, 4, 3, padding=1)
    >>> rule = GammaConv2d(conv, gamma=0.25)
    >>> x = torch.rand(1, 3, 8, 8)
    >>> torch.equal(rule(x), conv(x))
    True
    """

    def __init__(self, conv: nn.Conv2d, gamma: float = 0.25, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"gamma must be a number >= 0, not {gamma!r}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"the gamma rule supports zero padding only, not padding_mode={conv.padding_mode!r}")
        self.gamma = float(gamma)
        # Plain attributes, not registered parameters: the convolution keeps owning them.
        self._weight = conv.weight
        self._bias = conv.bias
        self._settings = (conv.stride, conv.padding, conv.dilation, conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GammaConvFunction.apply(x, self._weight, self._bias, *self._settings, self.gamma, self.epsilon)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, epsilon={self.epsilon}"


# --------------------------------------------------------------------------------------------------------------
# Layers with parameters (nn.Conv2d, nn.Linear): bias treatments and contribution-favouring rules
#
# For ``z = W x + b`` each output's relevance ``R_z = z * g_z`` is split over the contributions ``x_i W_ij``.
# What happens to the bias's share is the *bias treatment*:
#
# - ``"absorb"``: the bias is one more contribution and keeps its share (``R_z b / z`` leaves the map);
# - ``"ignore"``: the bias is left out, the denominator is ``z - b``, so ``sum_i R_x[i] = R_z`` (conservation);
# - ``"flat"``: the bias's share ``R_z b / z`` is spread evenly over the inputs of that output that are not zero
#   (Bach et al. 2015 spread it over all inputs; here a zero input cannot hold relevance, ``R = x * g``).
#
# The contributions themselves are weighted by the *rule*: ``"epsilon"`` (as they are), ``"gamma"`` (each output
# favours the contributions of its own sign, ``x_i W_ij + gamma (x_i W_ij)^{sign z_j}``, the generalized gamma
# rule for inputs of both signs; ``gamma=inf`` is the z+ rule, favoured contributions alone) or ``"alphabeta"``
# (``alpha`` times the positive contributions over their sum minus ``beta`` times the negative ones over theirs).

#: Bias treatments of :class:`LayerRule`.
BIAS_MODES = ("absorb", "ignore", "flat")
#: Rules of :class:`LayerRule`.
LAYER_RULES = ("epsilon", "gamma", "alphabeta")


class _ConvOp:
    """``conv2d`` with fixed stride, padding, dilation and groups: forward and transposed (input-gradient) map."""

    def __init__(self, stride, padding, dilation, groups) -> None:
        self.settings = (stride, padding, dilation, groups)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(x, w, b, *self.settings)

    def transpose(self, cotangent: torch.Tensor, w: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(x_shape, w, cotangent, *self.settings)

    #: The output's channel axis (where stacked cotangents are concatenated).
    channel_dim = 1

    @staticmethod
    def bias_view(bias: torch.Tensor) -> torch.Tensor:
        """The bias shaped to broadcast against the output ``[N, C, H, W]``."""
        return bias.reshape(1, -1, 1, 1)


class _DenseOp:
    """``x @ W^T + b`` (``nn.Linear``'s layout) and its transposed map."""

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, w, b)

    def transpose(self, cotangent: torch.Tensor, w: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        return torch.matmul(cotangent, w)

    #: The output's feature axis (where stacked cotangents are concatenated).
    channel_dim = -1

    @staticmethod
    def bias_view(bias: torch.Tensor) -> torch.Tensor:
        """The bias as it broadcasts against the output ``[..., out]`` (features last)."""
        return bias


class LayerRule:
    """How one layer with parameters redistributes relevance: a rule and a bias treatment (immutable data).

    Parameters
    ----------
    rule : str
        ``"epsilon"``, ``"gamma"`` or ``"alphabeta"`` (see the section comment above).
    bias : str
        ``"absorb"``, ``"ignore"`` or ``"flat"`` (:data:`BIAS_MODES`).
    gamma : float
        ``>= 0`` or ``inf`` (the z+ rule), for ``rule="gamma"``.
    alpha, beta : float
        For ``rule="alphabeta"``; ``alpha - beta = 1`` conserves (with ``bias="ignore"``).

    Example
    -------
    >>> LayerRule("gamma", bias="ignore", gamma=0.25)
    LayerRule('gamma', bias='ignore', gamma=0.25)
    """

    __slots__ = ("rule", "bias", "gamma", "alpha", "beta")

    def __init__(
        self, rule: str = "epsilon", bias: str = "absorb", gamma: float = 0.25, alpha: float = 1.0, beta: float = 0.0
    ) -> None:
        if rule not in LAYER_RULES:
            raise ValueError(f"rule={rule!r} is not a layer rule; use one of {LAYER_RULES}")
        if bias not in BIAS_MODES:
            raise ValueError(f"bias={bias!r} is not a bias treatment; use one of {BIAS_MODES}")
        for name, value in (("gamma", gamma), ("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if rule == "alphabeta" and bias == "flat":
            raise ValueError("the alpha-beta rule splits the bias by sign; use bias='absorb' or 'ignore' with it")
        self.rule, self.bias = rule, bias
        self.gamma, self.alpha, self.beta = float(gamma), float(alpha), float(beta)

    def _key(self) -> tuple:
        return (self.rule, self.bias, self.gamma, self.alpha, self.beta)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def is_plain(self) -> bool:
        """True where the rule is the layer's plain gradient (epsilon rule, bias absorbed): no module needed."""
        return self.rule == "epsilon" and self.bias == "absorb"

    def __repr__(self) -> str:
        text = f"LayerRule({self.rule!r}, bias={self.bias!r}"
        if self.rule == "gamma":
            text += f", gamma={self.gamma!r}"
        elif self.rule == "alphabeta":
            text += f", alpha={self.alpha!r}, beta={self.beta!r}"
        return text + ")"


def _ratio(numerator: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``numerator / stab(z)`` like :func:`_stabilized_ratio`, without ``out=`` (so it runs under ``vmap``, as in
    the batched backward of concept-conditional relevance)."""
    epsilon = _at_least_tiny(epsilon, z.dtype)
    return numerator / (z.abs() + epsilon).copysign(z)


def _split_contributions(op, x, weight):
    """``(P, N)``: the sums of the positive and of the negative contributions ``x_i W_ij`` of each output."""
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    positive = op(x_pos, w_pos)
    negative = op(x_pos, w_neg)
    if (x < 0).any():
        positive = positive + op(x_neg, w_neg)
        negative = negative + op(x_neg, w_pos)
    return positive, negative


def _signed_transpose(op, x, weight, c_pos, c_neg):
    """``g[i] = sum_j (x_i W_ij)^+ / x_i * c_pos[j] + (x_i W_ij)^- / x_i * c_neg[j]`` (the favoured parts' map)."""
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    shape = x.shape
    g = torch.where(x > 0, op.transpose(c_pos, w_pos, shape) + op.transpose(c_neg, w_neg, shape), 0.0)
    if (x < 0).any():
        g = g + torch.where(x < 0, op.transpose(c_pos, w_neg, shape) + op.transpose(c_neg, w_pos, shape), 0.0)
    return g


def _flat_signal(op, x, weight, share):
    """Signal that gives each nonzero input of output ``j`` the relevance ``share[j] / n_j`` (``n_j`` such inputs)."""
    active = (x != 0).to(x.dtype)
    ones = torch.ones_like(weight)
    count = op(active, ones)
    per_input = torch.where(count > 0, share / count.clamp(min=1.0), 0.0)
    spread = op.transpose(per_input, ones, x.shape)
    safe = torch.where(active > 0, x, 1.0)
    return torch.where(active > 0, spread / safe, 0.0)


def _gamma_weights(
    weight: torch.Tensor, scale: float, plain: float, cache: dict | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W+, [plain W + scale W+ ; (plain + scale) W - scale W+])`` for the gamma rule on inputs >= 0.

    The stacked weight maps the cotangents of the outputs of the favoured sign >= 0 and of those below 0 (stacked
    along the output axis) back in one op. Kept in ``cache`` (the rule module's own dict) while the weight is
    unchanged (same tensor, same version), so a lens computes them once per network, never touching the model.
    """
    key = (weight.data_ptr(), tuple(weight.shape), weight._version, weight.dtype, weight.device, scale, plain)
    if cache is not None and cache.get("key") == key:
        return cache["weights"]
    with torch.no_grad():
        w = weight.detach()
        w_pos = w.clamp(min=0)
        stacked = torch.cat([plain * w + scale * w_pos, (plain + scale) * w - scale * w_pos], dim=0)
    if cache is not None:
        cache["key"], cache["weights"] = key, (w_pos, stacked)
    return w_pos, stacked


def layer_rule_signal(
    op, x, weight, bias, z, grad, rule: LayerRule, epsilon: float, cache: dict | None = None
) -> torch.Tensor:
    """The input signal ``g_x`` of ``z = op(x, weight) + bias`` under ``rule``, given the output signal ``grad``.

    Works in relevance form: ``R_z = z * grad`` is split over the contributions (see :class:`LayerRule`), and
    the result is returned as a signal (``R_x = x * g_x``). ``cache`` (a dict owned by the caller) keeps
    weights derived from ``weight`` between calls.
    """
    r_z = z * grad
    b = None if bias is None else op.bias_view(bias)
    absorbed = rule.bias != "ignore" and b is not None
    # ``z - b``; not formed where the bias is absorbed and the gamma rule's fast path below needs only ``z``.
    contributions = z if b is None else None if absorbed and rule.rule == "gamma" else z - b
    shape = x.shape
    if rule.rule == "alphabeta":
        positive, negative = _split_contributions(op, x, weight)
        if absorbed:
            positive = positive + b.clamp(min=0)
            negative = negative + b.clamp(max=0)
        c_pos = rule.alpha * _ratio(r_z, positive, epsilon)
        c_neg = -rule.beta * _ratio(r_z, negative, epsilon)
        return _signed_transpose(op, x, weight, c_pos, c_neg)
    denominator = z if absorbed else contributions
    if rule.rule == "epsilon":
        c = _ratio(r_z, denominator, epsilon)
        signal = op.transpose(c, weight, shape)
    elif not bool(x.amin() < 0):
        # Inputs >= 0 (after a ReLU, or lc0's planes): the positive contributions are op(x, W+) and the negative
        # ones the rest, so each output's favoured part costs one extra forward op, and the two weightings
        # (``W + gamma W+`` for outputs of the favoured sign >= 0, ``W + gamma W-`` below) are one transposed op
        # of stacked, precomputed weights: 2 ops instead of 2 + 3. The signal differs from the general form's
        # only at inputs that are exactly 0, whose relevance x * g is 0 in both.
        plain = 0.0 if math.isinf(rule.gamma) else 1.0
        scale = 1.0 if math.isinf(rule.gamma) else rule.gamma
        w_pos, stacked = _gamma_weights(weight, scale, plain, cache)
        positive = op(x, w_pos)
        if _relevance_only_at_nonnegative(r_z, denominator, z, grad):
            # No relevance where the favoured sign is negative (a convolution feeding a ReLU, or a bias left out
            # whose outputs all rectify): every output that matters favours its positive part, so the rule is
            # ``W + gamma W+`` alone, half the stacked transposed op and a third of the elementwise work. There
            # ``z_g >= 0``, so ``|z_g| + epsilon`` is the stabilised denominator; elsewhere ``R_z = 0`` and so
            # is the quotient, whatever the denominator.
            if plain:
                z_g = torch.add(denominator, positive, alpha=scale)
            else:
                z_g = positive.add_(b) if absorbed else positive
            stabilised = z_g.abs_().add_(_at_least_tiny(epsilon, z_g.dtype))
            c = torch.div(r_z, stabilised, out=stabilised)
            return _with_flat_bias(op.transpose(c, stacked.narrow(0, 0, weight.shape[0]), shape), op, x, weight,
                                   rule, b, c)
        if contributions is None:
            contributions = z - b
        negative = contributions - positive
        # 1.0 where the favoured sign is >= 0, else 0.0: float masks, because boolean kernels (comparisons,
        # where) cost several times a float op on the CPU backend.
        own = denominator.sign().add_(1.0).clamp_(max=1.0)
        favoured = torch.addcmul(negative, own, positive.sub_(negative))
        if plain:
            # base + gamma * favoured, base = z (bias absorbed) or z - b (bias left out): the denominator itself.
            z_g = torch.add(denominator, favoured, alpha=scale)
        else:
            z_g = favoured if b is None or not absorbed else favoured.add_(b)
        c = _ratio(r_z, z_g, epsilon)
        c_own = c * own
        signal = op.transpose(torch.cat([c_own, c - c_own], dim=op.channel_dim), stacked, shape)
    else:
        # Each output favours the contributions of the sign of its contributions' sum (``z`` when absorbing).
        if contributions is None:
            contributions = z - b
        positive, negative = _split_contributions(op, x, weight)
        own = (denominator >= 0)
        favoured = torch.where(own, positive, negative)
        plain = 0.0 if math.isinf(rule.gamma) else 1.0
        scale = 1.0 if math.isinf(rule.gamma) else rule.gamma
        base = (b if absorbed else 0.0) + (plain * contributions if plain else 0.0)
        c = _ratio(r_z, base + scale * favoured, epsilon)
        signal = scale * _signed_transpose(op, x, weight, torch.where(own, c, 0.0), torch.where(own, 0.0, c))
        if plain:
            signal = signal + op.transpose(c, weight, shape)
    return _with_flat_bias(signal, op, x, weight, rule, b, c)


def _with_flat_bias(signal, op, x, weight, rule: LayerRule, b, c) -> torch.Tensor:
    """``signal``, plus the bias's share ``c * b`` spread evenly over the nonzero inputs under ``bias="flat"``."""
    if rule.bias == "flat" and b is not None:
        signal = signal + _flat_signal(op, x, weight, c * b)
    return signal


def _relevance_only_at_nonnegative(r_z: torch.Tensor, denominator: torch.Tensor, z: torch.Tensor,
                                   grad: torch.Tensor) -> bool:
    """True where ``r_z = z * grad`` is exactly 0 at every output whose ``denominator`` is below 0. Exact: where
    the denominator is ``z`` the check forms the very products ``z * grad`` there, else it multiplies ``r_z`` by
    -1 or 0, so nothing underflows. Inside ``vmap`` no value may steer the code: False."""
    if torch._C._functorch.is_functorch_wrapped_tensor(r_z):
        return False
    try:
        if denominator is z:
            below = z.clamp(max=0.0).mul_(grad)  # r_z where z < 0, else 0
        else:
            below = denominator.sign().clamp_(max=0.0).mul_(r_z)  # -r_z where the denominator is below 0, else 0
        return int(torch.count_nonzero(below)) == 0
    except RuntimeError:  # a batched tensor under another wrapper
        return False


class LayerRuleFunction(Function):
    """``z = op(x, weight) + bias`` whose backward is :func:`layer_rule_signal` (forward: the plain op).

    ``LayerRuleFunction.apply(x, weight, bias, op, rule, epsilon, cache=None)``; weight and bias get no signal.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, op, rule: LayerRule, epsilon: float = 1e-6, cache: dict | None = None):
        z = op(x, weight, bias)
        ctx.save_for_backward(x, weight, bias, z)
        ctx.settings = (op, rule, epsilon, cache)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, bias, z = ctx.saved_tensors
        op, rule, epsilon, cache = ctx.settings
        gx = None
        if ctx.needs_input_grad[0]:
            b = None if bias is None else bias.detach()
            gx = layer_rule_signal(op, x.detach(), weight.detach(), b, z.detach(), grad, rule, epsilon, cache)
        return gx, None, None, None, None, None, None


class _LayerRuleModule(_EpsilonRule):
    """Base of :class:`Conv2dRule` and :class:`LinearRule`: shares the layer's weight and bias (no copy)."""

    def __init__(self, layer: nn.Module, rule: LayerRule, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon)
        if not isinstance(rule, LayerRule):
            raise ValueError(f"rule must be a LayerRule, not {type(rule).__name__}")
        self.rule = rule
        # Plain attributes, not registered parameters: the layer keeps owning them.
        self._weight = layer.weight
        self._bias = layer.bias
        # Weights derived from the layer's (the gamma rule's stacked weights), rebuilt when the weight changes.
        self._cache: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LayerRuleFunction.apply(x, self._weight, self._bias, self._op, self.rule, self.epsilon, self._cache)

    def extra_repr(self) -> str:
        return f"{self.rule!r}, epsilon={self.epsilon}"


class Conv2dRule(_LayerRuleModule):
    """An ``nn.Conv2d`` (zero padding) under a :class:`LayerRule`; forward is the convolution's own, bit for bit.

    Example
    -------
    >>> conv = nn.Conv2d(3, 4, 3, padding=1)
    >>> rule = Conv2dRule(conv, LayerRule("epsilon", bias="ignore"))
    >>> x = torch.rand(1, 3, 8, 8)
    >>> torch.equal(rule(x), conv(x))
    True
    """

    def __init__(self, conv: nn.Conv2d, rule: LayerRule, epsilon: float = 1e-6) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"layer rules support zero padding only, not padding_mode={conv.padding_mode!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"layer rules need numeric padding, not padding={conv.padding!r}")
        super().__init__(conv, rule, epsilon)
        self._op = _ConvOp(conv.stride, conv.padding, conv.dilation, conv.groups)


class LinearRule(_LayerRuleModule):
    """An ``nn.Linear`` under a :class:`LayerRule`; forward is ``F.linear``, bit for bit."""

    def __init__(self, linear: nn.Linear, rule: LayerRule, epsilon: float = 1e-6) -> None:
        super().__init__(linear, rule, epsilon)
        self._op = _DenseOp()


class HeldShift(_Rule):
    """A layer whose outputs ``[start:]`` along the last axis are additive shifts held constant.

    Wraps the squeeze-excitation block's second dense layer (``se/matmul2``, whose outputs are the gate logits
    ``s1`` and the shift ``s2`` of ``sigmoid(s1) * x + s2``): with the shift held constant it keeps its share of
    relevance as a bias does and passes nothing back into the block's pooled features.
    """

    def __init__(self, inner: nn.Module, start: int) -> None:
        super().__init__()
        self.inner = inner
        self.start = int(start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return torch.cat([out[..., : self.start], out[..., self.start :].detach()], dim=-1)

    def extra_repr(self) -> str:
        return f"held from output {self.start}"
