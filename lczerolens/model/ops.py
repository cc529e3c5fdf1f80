"""The ops of an lc0 network whose relevance rule differs from the plain gradient.

Both loading paths (an ONNX export converted by onnx2torch, and a native ``.pb.gz`` built directly) express
these ops as the modules below, under lc0's node names, and leave every op that is linear in each input (conv,
dense, add, multiply by a constant, reshape, gather, mean, ...) as a plain torch op. A lens then needs to know
only these classes: it swaps each one for its rule module for the length of one call and puts it back after.

Forward of each module is the plain op.

- :class:`Activation` -- an elementwise nonlinearity ``y = f(x)`` with ``f(0) = 0`` (ReLU, squared ReLU, Mish,
  Swish, tanh, SELU). lc0's ONNX exports write some of them as small subgraphs (Mish as Softplus, Tanh, Mul;
  Swish as Sigmoid, Mul; squared ReLU as Relu, Mul); the ONNX loader fuses each such pattern into one
  ``Activation``.
- :class:`Gate` -- ``sigmoid(gate_logits) * x``: a gate times a signal (squeeze-excitation).
- :class:`Mul` -- the elementwise product of two activations.
- :class:`MatMul` -- the matrix product of two activations (``Q @ K^T``, ``A @ V``); ``attention_operand`` says
  which operand, if any, is a softmax's attention weights.
- :class:`Softmax` -- a softmax over ``dim`` whose input depends on the position (attention).
- :class:`LayerNorm` -- layer normalisation over the last axis.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = ("relu", "relu2", "mish", "swish", "tanh", "selu", "sigmoid")


def apply_activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """``f(x)`` for one of :data:`ACTIVATIONS`, as lc0 computes it (squared ReLU is ``relu(x) ** 2``)."""
    if kind == "relu":
        return torch.relu(x)
    if kind == "relu2":
        r = torch.relu(x)
        return r * r
    if kind == "mish":
        return F.mish(x)
    if kind == "swish":
        return x * torch.sigmoid(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "selu":
        return F.selu(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


class Activation(nn.Module):
    """Elementwise nonlinearity ``f(x)``; ``kind`` is one of :data:`ACTIVATIONS`."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(self.kind, x)

    def extra_repr(self) -> str:
        return self.kind


class Gate(nn.Module):
    """``sigmoid(gate_logits) * x``: the squeeze-excitation gate scaling a signal."""

    def forward(self, gate_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate_logits) * x


class Mul(nn.Module):
    """``x * y`` for two activations (both depend on the position)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * y


class MatMul(nn.Module):
    """``a @ b`` for two activations; ``attention_operand`` (0, 1 or None) marks softmax attention weights."""

    def __init__(self, attention_operand: int | None = None) -> None:
        super().__init__()
        if attention_operand not in (None, 0, 1):
            raise ValueError(f"attention_operand must be None, 0 or 1, not {attention_operand!r}")
        self.attention_operand = attention_operand

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)

    def extra_repr(self) -> str:
        return f"attention_operand={self.attention_operand}"


class Softmax(nn.Module):
    """Softmax over ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LayerNorm(nn.Module):
    """Layer normalisation over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


#: Every class above; a lens must have a rule for each.
RULE_OPS = (Activation, Gate, Mul, MatMul, Softmax, LayerNorm)
