"""lc0 networks with an attention body ("BT" / transformer nets) built as PyTorch modules from native weights.

:func:`build_attention_network` turns a parsed lc0 ``Net`` (:mod:`lczerolens.model.proto`) whose
``network_format.network`` is ``NETWORK_ATTENTIONBODY_WITH_HEADFORMAT`` or ``..._WITH_MULTIHEADFORMAT`` into
"the network" of the package contract: ``network(planes)`` with planes ``[N, 112, 8, 8]`` returns a dict with
``policy`` ``[N, 1858]``, ``wdl_logits`` ``[N, 3]`` (or ``value_logit`` ``[N]``) and ``mlh`` ``[N]``.

It follows what the weights mean, as lc0's eigen backend and the training code compute them (for PE_DENSE nets
that is not what lc0 0.32.1's ``leela2onnx`` exports: the converter applies the default activation inside the
embedding FFN, where the net's FFN activation belongs). The computation, per position:

- 64 tokens, token ``s`` = square ``s`` (rank * 8 + file) in the network's orientation, each holding its 112
  plane values;
- input embedding: PE_MAP concatenates lc0's constant 64x64 position map (-1 on the square itself, 1 on the
  squares a queen or knight reaches from it, else 0); PE_DENSE sends planes 0-11 of the whole board
  (768 values, square-major) through one dense layer to one vector per square and concatenates that; a net
  whose embedding is NONE runs as PE_MAP, as in lc0's backends;
- a dense layer, the default activation, and (PE_DENSE) a LayerNorm with epsilon 1e-3;
- input gates ``x * mult + add`` (both ``[64, E]``);
- PE_DENSE: an embedding FFN with the FFN activation, ``LN(alpha * ffn(x) + x)``;
- encoder layers: ``x = LN1(alpha * MHA(x) + x)``, ``x = LN2(alpha * FFN(x) + x)`` with
  ``alpha = (2 * encoders) ** -0.25``; attention logits ``Q K^T / sqrt(depth)`` plus smolgen's logits, softmax
  over keys; LayerNorm epsilon 1e-3 for PE_DENSE nets, 1e-6 otherwise (smolgen's own LayerNorms: 1e-3);
- attention policy: dense + default activation, ``Q K^T / sqrt(d)`` gives 64x64 from/to logits; promotions add
  a per-piece offset computed from the rank-8 keys; the 4288 logits are gathered into lc0's 1858;
- value and moves-left heads: a per-square dense + activation, flatten, dense + activation, dense.

Every nonlinear op is one of :mod:`lczerolens.model.ops`, registered flat on the network under lc0's ONNX node
name without the leading slash (``encoder0/mha/QK/softmax``, ``policy/matmul``, ...); dense layers are plain
``nn.Linear`` modules named after the ONNX MatMul node they replace (bias included).

Example
-------
>>> from lczerolens.model.proto import read_net
>>> network = build_attention_network(read_net("bt.pb.gz"))  # doctest: +SKIP
>>> out = network(torch.zeros(1, 112, 8, 8))  # doctest: +SKIP
>>> out["policy"].shape  # doctest: +SKIP
torch.Size([1, 1858])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from lczerolens.board import InputFormat
from lczerolens.errors import ModelLoadError, UnsupportedModelError
from lczerolens.model import ops
from lczerolens.model.heads import wanted_heads
from lczerolens.model.netformat import resolve_network_format
from lczerolens.model.policy_map import attention_policy_map
from lczerolens.model.save import Binding, bind, keep_net
from lczerolens.model.weights import decode_layer

__all__ = ["AttentionNetwork", "build_attention_network", "position_encoding_map"]

# lc0's NetworkFormat numbers (net.proto).
_NETWORK_ATTENTIONBODY = 6
_NETWORK_ATTENTIONBODY_MULTIHEAD = 7
_POLICY_ATTENTION = 3
_VALUE_CLASSICAL, _VALUE_WDL = 1, 2
_MOVES_LEFT_V1 = 1
_EMBEDDING_NAMES = {0: "NONE", 1: "PE_MAP", 2: "PE_DENSE"}
_LINEAR16 = 1

#: lc0's ActivationFunction numbers -> our activation kinds (None: identity).
_ACTIVATIONS: dict[int, str | None] = {
    1: "mish",
    2: "relu",
    3: None,
    4: "tanh",
    5: "sigmoid",
    6: "selu",
    7: "swish",
    8: "relu2",
}
#: The last part of lc0's ONNX node name for each activation (a subgraph's final node, as the ONNX loader names it).
_ACTIVATION_NODE = {
    "mish": "mish",
    "relu": "relu",
    "relu2": "sqrrelu/sqr",
    "swish": "swish",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "selu": "selu",
}


@lru_cache(maxsize=1)
def position_encoding_map() -> torch.Tensor:
    """lc0's constant PE_MAP position encoding, ``[64, 64]`` float32.

    Row ``s`` is square ``s``'s encoding: -1 at ``s`` itself, 1 at every square a queen or a knight reaches from
    ``s`` on an empty board, 0 elsewhere (checked against the constant lc0's ``leela2onnx`` exports).

    Examples
    --------
    >>> pe = position_encoding_map()
    >>> pe[0, 0].item(), pe[0, 63].item(), pe[0, 10].item(), pe[0, 11].item()
    (-1.0, 1.0, 1.0, 0.0)
    """
    files = torch.arange(64) % 8
    ranks = torch.arange(64) // 8
    df = (files[:, None] - files[None, :]).abs()
    dr = (ranks[:, None] - ranks[None, :]).abs()
    queen = (df == 0) | (dr == 0) | (df == dr)
    knight = ((df == 1) & (dr == 2)) | ((df == 2) & (dr == 1))
    pe = (queen | knight).float()
    pe.fill_diagonal_(-1.0)
    return pe


# ---------------------------------------------------------------------------------------------------------------
# Reading weights
# ---------------------------------------------------------------------------------------------------------------
class _Weights:
    """Decodes layers of one net, checking presence and sizes, with messages that name the layer."""

    def __init__(self, net: Any) -> None:
        self.encoding = int(net.format.weights_encoding) or _LINEAR16
        # What each weight layer became, for LczeroModel.save (see lczerolens.model.save).
        self.bindings: list[Binding] = []

    def get(self, layer: Any, name: str) -> np.ndarray:
        """The layer's values (empty when absent)."""
        return decode_layer(layer, name=name, default_encoding=self.encoding)

    def need(self, layer: Any, name: str, size: int | None = None) -> np.ndarray:
        values = self.get(layer, name)
        if values.size == 0:
            raise ModelLoadError(f"weights layer {name} is missing; the file is incomplete or not this architecture.")
        if size is not None and values.size != size:
            raise ModelLoadError(
                f"weights layer {name} has {values.size} values where {size} are expected; "
                "the file is corrupted or its layers do not fit together."
            )
        return values

    def linear(
        self,
        w_layer: Any,
        b_layer: Any | None,
        name: str,
        in_size: int | None = None,
        out_size: int | None = None,
        w_name: str | None = None,
    ) -> nn.Linear:
        """An ``nn.Linear`` from lc0's row-major ``[out, in]`` weight ``<name>_w`` and ``[out]`` bias ``<name>_b``."""
        if b_layer is not None:
            b = self.need(b_layer, f"{name}_b", out_size)
            out_size = b.size
        if out_size is None:
            raise ValueError("out_size is needed for a dense layer without bias")
        w_name = w_name or f"{name}_w"
        w = self.need(w_layer, w_name)
        if in_size is None:
            if w.size % out_size:
                raise ModelLoadError(
                    f"weights layer {w_name} has {w.size} values, not a multiple of its {out_size} outputs; "
                    "the file is corrupted or its layers do not fit together."
                )
            in_size = w.size // out_size
        elif w.size != in_size * out_size:
            raise ModelLoadError(
                f"weights layer {w_name} has {w.size} values where {out_size} x {in_size} = "
                f"{in_size * out_size} are expected; the file is corrupted or its layers do not fit together."
            )
        # Built on the meta device (no random init, no allocation), then handed the decoded arrays themselves:
        # a 1024-wide net loads without initialising and copying every weight once more.
        linear = nn.Linear(in_size, out_size, bias=b_layer is not None, device="meta")
        linear.weight = nn.Parameter(torch.from_numpy(w.reshape(out_size, in_size)))
        if b_layer is not None:
            linear.bias = nn.Parameter(torch.from_numpy(b))
        bind(self.bindings, w_layer, linear, "weight", w_name)
        if b_layer is not None:
            bind(self.bindings, b_layer, linear, "bias", f"{name}_b")
        return linear

    def layer_norm(self, gammas: Any, betas: Any, name: str, size: int, eps: float) -> ops.LayerNorm:
        ln = ops.LayerNorm(size, eps)
        with torch.no_grad():
            ln.weight.copy_(torch.from_numpy(self.need(gammas, f"{name}_gammas", size)))
            ln.bias.copy_(torch.from_numpy(self.need(betas, f"{name}_betas", size)))
        bind(self.bindings, gammas, ln, "weight", f"{name}_gammas")
        bind(self.bindings, betas, ln, "bias", f"{name}_betas")
        return ln


def _activation(code: int, default: str, what: str) -> str | None:
    """Our activation kind for lc0's ActivationFunction ``code`` (0: the default activation)."""
    code = int(code)
    if code == 0:
        return default
    if code not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"the {what} activation {code} (lc0 ActivationFunction) is not supported; supported: "
            "MISH, RELU, NONE, TANH, SIGMOID, SELU, SWISH, RELU_2."
        )
    return _ACTIVATIONS[code]


# ---------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------
class AttentionNetwork(nn.Module):
    """An lc0 attention-body network; build it with :func:`build_attention_network`.

    ``forward(planes)`` takes ``[N, 112, 8, 8]`` and returns ``{"policy", "wdl_logits" | "value_logit"[, "mlh"]}``.
    Submodules are registered flat under lc0's ONNX node names (``network._modules["encoder0/mha/QK/softmax"]``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_format: InputFormat = InputFormat.CLASSICAL_112_PLANE
        self.heads: tuple[str, ...] = ()
        self.description = ""
        # Architecture, filled by the builder.
        self.embedding = "PE_MAP"
        self.embedding_size = 0
        self.num_encoders = 0
        self.num_heads = 1
        self.alpha = 1.0
        self.smolgen = False
        self.gates = (False, False)
        self.wdl = True
        self.mlh = False
        self.policy_encoders = 0
        self.policy_num_heads = 1
        self.activations: dict[str, str | None] = {}

    def _act(self, prefix: str, kind: str | None, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation ``kind`` registered under ``prefix`` (identity when the net's activation is NONE)."""
        if kind is None:
            return x
        return self._modules[f"{prefix}/{_ACTIVATION_NODE[kind]}"](x)

    def _encoder(self, x: torch.Tensor, prefix: str, heads: int, alpha: float, ffn_act: str | None) -> torch.Tensor:
        m = self._modules
        n, t, _ = x.shape
        q = m[prefix + "/mha/Q/w"](x)
        k = m[prefix + "/mha/K/w"](x)
        v = m[prefix + "/mha/V/w"](x)
        depth = q.shape[-1] // heads
        q = q.view(n, t, heads, depth).transpose(1, 2)  # [N, H, 64, d]
        k = k.view(n, t, heads, depth).permute(0, 2, 3, 1)  # [N, H, d, 64]
        v = v.view(n, t, heads, depth).transpose(1, 2)  # [N, H, 64, d]
        logits = m[prefix + "/mha/QK/matmul"](q, k) * (1.0 / math.sqrt(depth))
        if prefix + "/smolgen/compress" in m:
            logits = logits + self._smolgen(x, prefix, heads)
        attn = m[prefix + "/mha/QK/softmax"](logits)
        out = m[prefix + "/mha/QKV/matmul"](attn, v)  # [N, H, 64, d]
        out = out.transpose(1, 2).reshape(n, t, heads * depth)
        out = m[prefix + "/mha/out/dense/w"](out)
        x = m[prefix + "/ln1"](alpha * out + x)
        hidden = self._act(f"{prefix}/ffn/dense1", ffn_act, m[prefix + "/ffn/dense1/w"](x))
        x = m[prefix + "/ln2"](alpha * m[prefix + "/ffn/dense2/w"](hidden) + x)
        return x

    def _smolgen(self, x: torch.Tensor, prefix: str, heads: int) -> torch.Tensor:
        m = self._modules
        p = prefix + "/smolgen"
        n = x.shape[0]
        act = self.activations["smolgen"]
        c = m[p + "/compress"](x).reshape(n, -1)  # [N, 64 * channels], square-major
        c = m[p + "/ln1"](self._act(f"{p}/dense1", act, m[p + "/dense1/w"](c)))
        c = m[p + "/ln2"](self._act(f"{p}/dense2", act, m[p + "/dense2/w"](c)))
        gen = m[p + "/smol_weight_gen"](c.view(n, heads, -1))  # [N, H, 4096]
        return gen.view(n, heads, 64, 64)

    def forward(self, planes: torch.Tensor, heads: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The outputs for input planes ``[N, 112, 8, 8]``; ``heads`` names the heads to compute (default all, see
        :mod:`lczerolens.model.heads`)."""
        want = wanted_heads(heads, self.mlh)
        m = self._modules
        acts = self.activations
        n = planes.shape[0]
        tokens = planes.reshape(n, 112, 64).transpose(1, 2)  # [N, 64, 112]
        if self.embedding == "PE_DENSE":
            pieces = tokens[:, :, :12].reshape(n, 64 * 12)
            pos = m["attn_body/embedding/preprocess/matmul"](pieces).view(n, 64, -1)
            x = torch.cat([tokens, pos], dim=2)
        else:
            pe = self.pos_encoding.to(planes.dtype).expand(n, 64, 64)
            x = torch.cat([tokens, pe], dim=2)
        x = self._act("attn_body", acts["default"], m["attn_body/matmul"](x))
        if self.embedding == "PE_DENSE":
            x = m["attn_body/ln"](x)
        if self.gates[0]:
            x = x * self.ip_mul_gate
        if self.gates[1]:
            x = x + self.ip_add_gate
        if self.embedding == "PE_DENSE":
            hidden = self._act("attn_body/ffn/dense1", acts["ffn"], m["attn_body/ffn/dense1/w"](x))
            x = m["attn_body/ln2"](self.alpha * m["attn_body/ffn/dense2/w"](hidden) + x)
        for i in range(self.num_encoders):
            x = self._encoder(x, f"encoder{i}", self.num_heads, self.alpha, acts["ffn"])
        return self.forward_heads(x, want)

    def forward_heads(self, x: torch.Tensor, heads: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The heads alone on the tokens ``x`` ``[N, 64, E]`` (what :meth:`forward` does after the last encoder
        layer; the logit lens applies it to earlier layers' outputs); ``heads`` as in :meth:`forward`."""
        want = wanted_heads(heads, self.mlh)
        out: dict[str, torch.Tensor] = {}
        if "policy" in want:
            out["policy"] = self._policy(x)
        if "value" in want:
            self._value(x, out)
        if "mlh" in want:
            self._moves_left(x, out)
        return out

    def _policy(self, x: torch.Tensor) -> torch.Tensor:
        m = self._modules
        acts = self.activations
        n = x.shape[0]  # the heads' batch is the body's (a lens may hand the heads more rows than the input had)
        p = self._act("policy/dense1", acts["policy"], m["policy/dense1/matmul"](x))
        for i in range(self.policy_encoders):
            p = self._encoder(p, f"policy/enc_layer_{i}", self.policy_num_heads, 1.0, acts["policy_ffn"])
        q = m["policy/Q/matmul"](p)
        k = m["policy/K/matmul"](p)
        logits = m["policy/matmul"](q, k.transpose(1, 2)) * (1.0 / math.sqrt(q.shape[-1]))  # [N, 64, 64]
        promo = m["policy/promotion/matmul"](k[:, 56:64, :])  # [N, 8 to-files, 4]
        promo = promo[:, :, :3] + promo[:, :, 3:4]  # queen, rook, bishop; the 4th offset is shared
        promo = logits[:, 48:56, 56:64].unsqueeze(3) + promo.unsqueeze(1)  # [N, 8 from, 8 to, 3]
        flat = torch.cat([logits.reshape(n, 4096), promo.reshape(n, 192)], dim=1)
        return flat.index_select(1, self.policy_gather)

    def _value(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        m = self._modules
        acts = self.activations
        n = x.shape[0]
        v = self._act("value/embed", acts["default"], m["value/embed/matmul"](x)).reshape(n, -1)
        v = self._act("value/dense1", acts["default"], m["value/dense1/matmul"](v))
        v = m["value/dense2/matmul"](v)
        if self.wdl:
            out["wdl_logits"] = v
        else:
            out["value_logit"] = v[:, 0]

    def _moves_left(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        m = self._modules
        acts = self.activations
        n = x.shape[0]
        ml = self._act("mlh/embed", acts["default"], m["mlh/embed/matmul"](x)).reshape(n, -1)
        ml = self._act("mlh/dense1", acts["default"], m["mlh/dense1/matmul"](ml))
        out["mlh"] = m["output/mlh"](m["mlh/dense2/matmul"](ml))[:, 0]


# ---------------------------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------------------------
def _add_scalar_head(
    network: nn.Module, rd: Any, src: Any, name: str, tag: str, embedding: int, act: str, outputs: int
) -> None:
    """A value or moves-left head on the tokens: embed dense, activation, dense on the 64 tokens, activation,
    dense (lc0's node names). ``src`` holds the layers ``ip_{tag}_w`` ... ``ip2_{tag}_b`` (``tag``: val, mov)."""

    def layer(i: str, in_size: int, out_size: int | None = None) -> nn.Linear:
        weight, bias = getattr(src, f"ip{i}_{tag}_w"), getattr(src, f"ip{i}_{tag}_b")
        return rd.linear(weight, bias, f"ip{i}_{tag}", in_size, out_size)

    embed = layer("", embedding)
    network.add_module(f"{name}/embed/matmul", embed)
    _add_activation(network, f"{name}/embed", act)
    dense1 = layer("1", 64 * embed.out_features)
    network.add_module(f"{name}/dense1/matmul", dense1)
    _add_activation(network, f"{name}/dense1", act)
    network.add_module(f"{name}/dense2/matmul", layer("2", dense1.out_features, outputs))


def _add_activation(network: AttentionNetwork, prefix: str, kind: str | None) -> None:
    if kind is not None:
        network.add_module(f"{prefix}/{_ACTIVATION_NODE[kind]}", ops.Activation(kind))


def _build_encoder(
    network: AttentionNetwork,
    rd: _Weights,
    layer: Any,
    prefix: str,
    where: str,
    embedding: int,
    heads: int,
    eps: float,
    ffn_act: str | None,
    smolgen_act: str | None,
    smolgen_gen: nn.Linear | None,
) -> None:
    mha = layer.mha
    add = network.add_module
    q = rd.linear(mha.q_w, mha.q_b, f"{where}.mha.q", in_size=embedding)
    d_model = q.out_features
    if d_model % heads:
        raise ModelLoadError(
            f"{where}.mha.q_b has {d_model} values, not a multiple of the {heads} attention heads; "
            "the file is corrupted or its headcount is wrong."
        )
    add(f"{prefix}/mha/Q/w", q)
    add(f"{prefix}/mha/K/w", rd.linear(mha.k_w, mha.k_b, f"{where}.mha.k", in_size=embedding, out_size=d_model))
    add(f"{prefix}/mha/V/w", rd.linear(mha.v_w, mha.v_b, f"{where}.mha.v", in_size=embedding, out_size=d_model))
    add(f"{prefix}/mha/QK/matmul", ops.MatMul(attention_operand=None))
    if mha.has("smolgen"):
        if smolgen_gen is None:
            raise ModelLoadError(
                f"{where}.mha has smolgen weights but the net has no global smolgen_w layer; the file is incomplete."
            )
        sg = mha.smolgen
        s = f"{where}.mha.smolgen"
        compress = rd.need(sg.compress, f"{s}.compress")
        if compress.size % embedding:
            raise ModelLoadError(
                f"weights layer {s}.compress has {compress.size} values, not a multiple of {embedding}."
            )
        channels = compress.size // embedding
        add(f"{prefix}/smolgen/compress", rd.linear(sg.compress, None, s, embedding, channels, f"{s}.compress"))
        dense1 = rd.linear(sg.dense1_w, sg.dense1_b, f"{s}.dense1", in_size=64 * channels)
        add(f"{prefix}/smolgen/dense1/w", dense1)
        _add_activation(network, f"{prefix}/smolgen/dense1", smolgen_act)
        add(f"{prefix}/smolgen/ln1", rd.layer_norm(sg.ln1_gammas, sg.ln1_betas, f"{s}.ln1", dense1.out_features, 1e-3))
        dense2 = rd.linear(sg.dense2_w, sg.dense2_b, f"{s}.dense2", in_size=dense1.out_features)
        if dense2.out_features != heads * smolgen_gen.in_features:
            raise ModelLoadError(
                f"{s}.dense2_b has {dense2.out_features} values where {heads} heads x "
                f"{smolgen_gen.in_features} (smolgen_w's inputs) are expected."
            )
        add(f"{prefix}/smolgen/dense2/w", dense2)
        _add_activation(network, f"{prefix}/smolgen/dense2", smolgen_act)
        add(f"{prefix}/smolgen/ln2", rd.layer_norm(sg.ln2_gammas, sg.ln2_betas, f"{s}.ln2", dense2.out_features, 1e-3))
        # One global generator shared by every layer (the same module object under each layer's node name).
        add(f"{prefix}/smolgen/smol_weight_gen", smolgen_gen)
    add(f"{prefix}/mha/QK/softmax", ops.Softmax(-1))
    add(f"{prefix}/mha/QKV/matmul", ops.MatMul(attention_operand=0))
    add(f"{prefix}/mha/out/dense/w", rd.linear(mha.dense_w, mha.dense_b, f"{where}.mha.dense", d_model, embedding))
    add(f"{prefix}/ln1", rd.layer_norm(layer.ln1_gammas, layer.ln1_betas, f"{where}.ln1", embedding, eps))
    ffn = layer.ffn
    dense1 = rd.linear(ffn.dense1_w, ffn.dense1_b, f"{where}.ffn.dense1", in_size=embedding)
    add(f"{prefix}/ffn/dense1/w", dense1)
    _add_activation(network, f"{prefix}/ffn/dense1", ffn_act)
    add(
        f"{prefix}/ffn/dense2/w",
        rd.linear(ffn.dense2_w, ffn.dense2_b, f"{where}.ffn.dense2", dense1.out_features, embedding),
    )
    add(f"{prefix}/ln2", rd.layer_norm(layer.ln2_gammas, layer.ln2_betas, f"{where}.ln2", embedding, eps))


def _heads(net: Any) -> tuple[Any, Any, Any, str]:
    """(policy head, its embedding weight owner, value head, where) following lc0's head resolution."""
    w = net.weights
    if w.has("policy_heads"):
        ph = w.policy_heads
        if not ph.has("vanilla"):
            raise UnsupportedModelError("the net's policy_heads has no 'vanilla' head; only vanilla is supported.")
        pol = ph.vanilla
        # The embedding dense may live in the head, in policy_heads, or at the top level.
        emb = pol if pol.has("ip_pol_w") else (ph if ph.has("ip_pol_w") else w)
        pol_where = "policy_heads.vanilla"
    else:
        pol, emb, pol_where = w, w, "weights"
    if w.has("value_heads"):
        if not w.value_heads.has("winner"):
            raise UnsupportedModelError("the net's value_heads has no 'winner' head; only winner is supported.")
        val = w.value_heads.winner
    else:
        val = w
    return pol, emb, val, pol_where


def build_attention_network(net: Any) -> AttentionNetwork:
    """Build the PyTorch network of an lc0 attention-body net.

    Parameters
    ----------
    net : lczerolens.model.proto.Net
        A parsed lc0 weights file whose ``format.network_format.network`` is 6
        (``NETWORK_ATTENTIONBODY_WITH_HEADFORMAT``) or 7 (``..._WITH_MULTIHEADFORMAT``).

    Returns
    -------
    AttentionNetwork
        The network of the package contract (eval mode, float32, gradients enabled on its parameters).

    Raises
    ------
    UnsupportedModelError
        A variant lczerolens cannot run: no encoder layers, a residual tower below the attention body, an
        unknown input embedding, a non-attention policy head, an unknown activation, ...
    ModelLoadError
        A missing layer or one whose size does not fit (the message names the layer).

    Examples
    --------
    >>> from lczerolens.model.proto import read_net
    >>> network = build_attention_network(read_net("bt.pb.gz"))  # doctest: +SKIP
    >>> network.heads  # doctest: +SKIP
    ('policy', 'wdl', 'mlh')
    """
    # What lc0 makes of the file's format (older files leave fields out; lc0 fills them in on loading).
    nf = resolve_network_format(net)
    structure = int(nf.network)
    if structure not in (_NETWORK_ATTENTIONBODY, _NETWORK_ATTENTIONBODY_MULTIHEAD):
        raise UnsupportedModelError(
            f"network structure {structure} is not an attention body (expected 6 or 7, "
            "NETWORK_ATTENTIONBODY_WITH_HEADFORMAT / ..._WITH_MULTIHEADFORMAT)."
        )
    w = net.weights
    if len(w.residual) > 0 or w.has("input"):
        raise UnsupportedModelError(
            f"this net has a residual tower ({len(w.residual)} blocks) below its attention body; "
            "lczerolens supports attention bodies that start from the input planes only."
        )
    num_encoders = len(w.encoder)
    if num_encoders == 0:
        raise UnsupportedModelError("this attention-body net has no encoder layers; lczerolens needs at least one.")
    embedding_kind = _EMBEDDING_NAMES.get(int(nf.input_embedding))
    if embedding_kind is None:
        raise UnsupportedModelError(
            f"input embedding {int(nf.input_embedding)} is unknown; supported: PE_MAP (1), PE_DENSE (2), and NONE (0),"
            " which lc0's backends run as PE_MAP."
        )
    if embedding_kind == "NONE":
        # lc0's backends (eigen included) treat anything but PE_DENSE as the PE_MAP embedding; only leela2onnx
        # refuses such a file.
        embedding_kind = "PE_MAP"
    if int(nf.policy) != _POLICY_ATTENTION:
        raise UnsupportedModelError(
            f"policy format {int(nf.policy)} with an attention body is not supported; only POLICY_ATTENTION (3)."
        )
    value_format = int(nf.value)
    if value_format not in (_VALUE_CLASSICAL, _VALUE_WDL):
        raise UnsupportedModelError(
            f"value format {value_format} is not supported; supported: VALUE_CLASSICAL (1), VALUE_WDL (2)."
        )
    try:
        input_format = InputFormat(int(nf.input) or 1)
    except ValueError:
        raise UnsupportedModelError(f"input format {int(nf.input)} is not one lczerolens knows.") from None
    # A global smolgen bias (smolgen_b) is ignored, as lc0's backends and its ONNX converter ignore it (the
    # training code's generator has no bias).

    default = "mish" if int(nf.default_activation) == 1 else "relu"
    ffn_act = _activation(nf.ffn_activation, default, "FFN")
    smolgen_act = _activation(nf.smolgen_activation, default, "smolgen")
    eps = 1e-3 if embedding_kind == "PE_DENSE" else 1e-6

    rd = _Weights(net)
    network = AttentionNetwork()
    add = network.add_module
    network.input_format = input_format
    network.embedding = embedding_kind
    network.num_encoders = num_encoders
    network.alpha = float(np.float32((2.0 * num_encoders) ** -0.25))
    network.wdl = value_format == _VALUE_WDL
    network.mlh = int(nf.moves_left) == _MOVES_LEFT_V1
    network.activations = {
        "default": default,
        "ffn": ffn_act,
        "smolgen": smolgen_act,
        "policy": default,
        "policy_ffn": ffn_act,
    }

    # Input embedding.
    emb_b = rd.need(w.ip_emb_b, "ip_emb_b")
    embedding = emb_b.size
    network.embedding_size = embedding
    if embedding_kind == "PE_DENSE":
        pre = rd.linear(w.ip_emb_preproc_w, w.ip_emb_preproc_b, "ip_emb_preproc", in_size=64 * 12)
        if pre.out_features % 64:
            raise ModelLoadError(
                f"weights layer ip_emb_preproc_b has {pre.out_features} values, not a multiple of 64 squares."
            )
        add("attn_body/embedding/preprocess/matmul", pre)
        in_size = 112 + pre.out_features // 64
    else:
        network.register_buffer("pos_encoding", position_encoding_map().clone())
        in_size = 112 + 64
    add("attn_body/matmul", rd.linear(w.ip_emb_w, w.ip_emb_b, "ip_emb", in_size=in_size))
    _add_activation(network, "attn_body", default)
    if embedding_kind == "PE_DENSE":
        add("attn_body/ln", rd.layer_norm(w.ip_emb_ln_gammas, w.ip_emb_ln_betas, "ip_emb_ln", embedding, 1e-3))
    # Input gates, stored [E, 64]; applied per square and channel.
    mult = rd.get(w.ip_mult_gate, "ip_mult_gate")
    addg = rd.get(w.ip_add_gate, "ip_add_gate")
    for values, name in ((mult, "ip_mult_gate"), (addg, "ip_add_gate")):
        if values.size not in (0, 64 * embedding):
            raise ModelLoadError(f"weights layer {name} has {values.size} values where 64 x {embedding} are expected.")
    # lc0 0.32.1's eigen backend applies the gates only when both are present; its converter and the training
    # code apply whichever is present, which is what we do (real nets have both or none).
    network.gates = (mult.size > 0, addg.size > 0)
    if mult.size:
        network.ip_mul_gate = nn.Parameter(torch.from_numpy(mult.reshape(embedding, 64).T.copy()))
        bind(rd.bindings, w.ip_mult_gate, network, "ip_mul_gate", "ip_mult_gate", transpose=True)
    if addg.size:
        network.ip_add_gate = nn.Parameter(torch.from_numpy(addg.reshape(embedding, 64).T.copy()))
        bind(rd.bindings, w.ip_add_gate, network, "ip_add_gate", "ip_add_gate", transpose=True)
    if embedding_kind == "PE_DENSE":
        ffn = w.ip_emb_ffn
        dense1 = rd.linear(ffn.dense1_w, ffn.dense1_b, "ip_emb_ffn.dense1", in_size=embedding)
        add("attn_body/ffn/dense1/w", dense1)
        _add_activation(network, "attn_body/ffn/dense1", ffn_act)
        add(
            "attn_body/ffn/dense2/w",
            rd.linear(ffn.dense2_w, ffn.dense2_b, "ip_emb_ffn.dense2", dense1.out_features, embedding),
        )
        add(
            "attn_body/ln2",
            rd.layer_norm(w.ip_emb_ffn_ln_gammas, w.ip_emb_ffn_ln_betas, "ip_emb_ffn_ln", embedding, 1e-3),
        )

    # Encoders.
    heads = int(w.headcount)
    if heads < 1:
        raise ModelLoadError("the net's headcount is 0; an attention body needs at least one head.")
    network.num_heads = heads
    smolgen_gen = None
    if w.has("smolgen_w"):
        gen = rd.need(w.smolgen_w, "smolgen_w")
        if gen.size % 4096:
            raise ModelLoadError(f"weights layer smolgen_w has {gen.size} values, not a multiple of 64 x 64.")
        smolgen_gen = rd.linear(w.smolgen_w, None, "smolgen", gen.size // 4096, 4096)
    for i, layer in enumerate(w.encoder):
        _build_encoder(
            network, rd, layer, f"encoder{i}", f"encoder[{i}]", embedding, heads, eps, ffn_act, smolgen_act, smolgen_gen
        )
    network.smolgen = any(layer.mha.has("smolgen") for layer in w.encoder)

    # Heads.
    pol, emb, val, pol_where = _heads(net)
    pol_emb = rd.linear(emb.ip_pol_w, emb.ip_pol_b, "ip_pol", in_size=embedding)
    add("policy/dense1/matmul", pol_emb)
    _add_activation(network, "policy/dense1", default)
    p_size = pol_emb.out_features
    network.policy_encoders = len(pol.pol_encoder)
    if network.policy_encoders:
        network.policy_num_heads = int(pol.pol_headcount)
        if network.policy_num_heads < 1:
            raise ModelLoadError(f"{pol_where}.pol_headcount is 0 but the head has policy encoder layers.")
        for i, layer in enumerate(pol.pol_encoder):
            _build_encoder(
                network,
                rd,
                layer,
                f"policy/enc_layer_{i}",
                f"{pol_where}.pol_encoder[{i}]",
                p_size,
                network.policy_num_heads,
                1e-6,
                ffn_act,
                smolgen_act,
                smolgen_gen,
            )
    q = rd.linear(pol.ip2_pol_w, pol.ip2_pol_b, f"{pol_where}.ip2_pol", in_size=p_size)
    add("policy/Q/matmul", q)
    add("policy/K/matmul", rd.linear(pol.ip3_pol_w, pol.ip3_pol_b, f"{pol_where}.ip3_pol", p_size, q.out_features))
    add("policy/matmul", ops.MatMul(attention_operand=None))
    add(
        "policy/promotion/matmul",
        rd.linear(pol.ip4_pol_w, None, f"{pol_where}.ip4_pol", q.out_features, 4, f"{pol_where}.ip4_pol_w"),
    )
    network.register_buffer("policy_gather", torch.from_numpy(attention_policy_map().astype(np.int64)))

    _add_scalar_head(network, rd, val, "value", "val", embedding, default, 3 if network.wdl else 1)
    if network.mlh:
        _add_scalar_head(network, rd, w, "mlh", "mov", embedding, default, 1)
        add("output/mlh", ops.Activation("relu"))

    network.heads = ("policy", "wdl" if network.wdl else "value") + (("mlh",) if network.mlh else ())
    parts = [
        f"lc0 attention body ({embedding_kind}): {num_encoders} encoder layers x {embedding} wide, {heads} heads, "
        f"FFN {rd.get(w.encoder[0].ffn.dense1_b, 'x').size} {ffn_act or 'linear'}",
        f"smolgen {smolgen_act}" if network.smolgen else "no smolgen",
        "input gates" if any(network.gates) else "no input gates",
        f"default activation {default}",
        "attention policy" + (f" with {network.policy_encoders} encoder layers" if network.policy_encoders else ""),
        "WDL value" if network.wdl else "scalar value",
    ]
    if network.mlh:
        parts.append("moves left")
    network.description = ", ".join(parts) + "; native lc0 weights"
    keep_net(network, net, rd.bindings)
    network.eval()
    return network
