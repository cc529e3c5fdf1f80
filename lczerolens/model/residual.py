"""The residual (SE-)ResNet family of lc0 networks, built natively from the weights.

Architecture (what lc0's backends and ``leela2onnx`` compute):

- ``inputconv``: 3x3 convolution 112 -> F with batch norm, activation;
- blocks ``blockN``: ``conv1`` (3x3, batch norm, activation), ``conv2`` (3x3, batch norm); with
  squeeze-excitation, the board mean of ``conv2``'s output goes through two dense layers (``se/matmul1`` F -> S,
  activation, ``se/matmul2`` S -> 2F) split into gate logits ``s1`` and shifts ``s2``; output
  ``sigmoid(s1) * x + s2``; then the skip add and the activation;
- policy: convolution head (``policy/conv1`` 3x3 F -> F with activation, ``policy/conv2`` 3x3 F -> 80, the 5120
  values gathered into the 1858 logits), classical head (``policy/conv`` 1x1 with activation, ``policy/dense``),
  or attention head as in lc0's T79/T80 nets (each square's F channels through ``policy/dense1`` and SELU, queries
  ``policy/Q`` and keys ``policy/K``, from/to logits ``Q.K^T / sqrt(d)`` by the :class:`~lczerolens.model.ops.MatMul`
  ``policy/matmul``, promotion offsets ``policy/promotion/matmul`` from the keys of rank 8 added to the rank 7 ->
  rank 8 logits, the ``[67, 64]`` block gathered into the 1858 logits);
- value: ``value/conv`` 1x1 with activation, ``value/dense1`` with activation, ``value/dense2`` giving 3 WDL
  logits or one value logit;
- moves left: ``mlh/conv`` 1x1 with activation, ``mlh/dense1`` with activation, ``mlh/dense2``, ReLU
  (``output/mlh``).

Batch norm is folded into the convolutions as lc0 folds it, in float32: ``s = gamma / sqrt(var + 1e-5)``,
``w' = s * w``, ``b' = beta - s * (mean - b)`` (``bn_stddivs`` holds variances; missing gammas/betas mean 1/0;
missing biases mean 0; no means means no batch norm). Dense weights are stored ``[out, in]`` as in
``nn.Linear``.

Module names are lc0's ONNX node names without the leading slash. Every activation is an
:class:`~lczerolens.model.ops.Activation` (``.../relu`` or ``.../mish``), the squeeze-excitation gate an
:class:`~lczerolens.model.ops.Gate` (``blockN/conv2/se/mul``, called as ``gate(s1, x)``); convolutions and dense
layers (``nn.Conv2d``, ``nn.Linear`` carrying both the ONNX MatMul and its bias Add) and the reshapes, mean and
gather in ``forward`` are linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from lczerolens.board import InputFormat
from lczerolens.errors import InputShapeError, ModelLoadError, UnsupportedModelError
from lczerolens.model import ops
from lczerolens.model.heads import wanted_heads
from lczerolens.model.policy_map import CONV_POLICY_PLANES, attention_policy_map, conv_policy_map
from lczerolens.model.proto import ConvBlock, Layer, Net, NetworkFormat
from lczerolens.model.save import Binding, bind, keep_net
from lczerolens.model.weights import decode_layer

__all__ = ["ResidualNetwork", "build_residual_network"]

_BN_EPS = np.float32(1e-5)
_NF = NetworkFormat


class _Decoder:
    """Decodes layers of one file, checking each against the size the architecture needs."""

    def __init__(self, source: str) -> None:
        self.source = source
        # What each weight layer became, for LczeroModel.save (see lczerolens.model.save).
        self.bindings: list[Binding] = []
        self.folded: list[tuple[ConvBlock, int]] = []

    def conv_module(self, block: ConvBlock, path: str, out_ch: int, in_ch: int, k: int) -> nn.Conv2d:
        """The folded convolution of ``block``, bound to its layers."""
        m = _conv(*self.conv(block, path, out_ch, in_ch, k))
        bind(self.bindings, block.weights, m, "weight", f"{path}.weights")
        bind(self.bindings, block.biases, m, "bias", f"{path}.biases")
        self.folded.append((block, out_ch))
        return m

    def dense_module(self, w: Layer, b: Layer, path_w: str, path_b: str, out: int, inp: int) -> nn.Linear:
        """A dense layer from ``w`` ``[out, inp]`` and ``b`` ``[out]``, bound to them."""
        m = _linear(*self.dense(w, b, path_w, path_b, out, inp))
        bind(self.bindings, w, m, "weight", path_w)
        bind(self.bindings, b, m, "bias", path_b)
        return m

    def layer(self, layer: Layer, path: str, size: int | None = None, required: bool = True) -> np.ndarray:
        values = decode_layer(layer, f"{self.source}: {path}")
        if values.size == 0:
            if required:
                raise ModelLoadError(f"{self.source}: layer {path} is missing or empty; the file is incomplete.")
            return values
        if size is not None and values.size != size:
            raise ModelLoadError(
                f"{self.source}: layer {path} has {values.size} values but the architecture needs {size}; "
                "the weights do not fit the declared network."
            )
        return values

    def conv(self, block: ConvBlock, path: str, out_ch: int, in_ch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Folded ``(weight [out, in, k, k], bias [out])`` of a convolution block, as lc0 folds it."""
        w = self.layer(block.weights, f"{path}.weights", out_ch * in_ch * k * k)
        biases = self.layer(block.biases, f"{path}.biases", out_ch, required=False)
        means = self.layer(block.bn_means, f"{path}.bn_means", out_ch, required=False)
        w = w.reshape(out_ch, in_ch, k, k).copy()
        if biases.size == 0:
            biases = np.zeros(out_ch, dtype=np.float32)
        if means.size == 0:
            return w, biases
        var = self.layer(block.bn_stddivs, f"{path}.bn_stddivs", out_ch)
        if not (var + _BN_EPS > 0).all():
            bad = int(np.flatnonzero(~(var + _BN_EPS > 0))[0])
            raise ModelLoadError(
                f"{self.source}: layer {path}.bn_stddivs holds the variance {var[bad]} for channel {bad}; batch-norm "
                "variances cannot be negative, the file is corrupted."
            )
        gammas = self.layer(block.bn_gammas, f"{path}.bn_gammas", out_ch, required=False)
        betas = self.layer(block.bn_betas, f"{path}.bn_betas", out_ch, required=False)
        if betas.size == 0:
            betas = np.zeros(out_ch, dtype=np.float32)
        if gammas.size == 0:
            gammas = np.ones(out_ch, dtype=np.float32)
        # float32 throughout, in lc0's order of operations.
        scale = gammas * (np.float32(1.0) / np.sqrt(var + _BN_EPS))
        centred = means - biases
        w *= scale[:, None, None, None]
        bias = -scale * centred + betas
        return w.astype(np.float32), bias.astype(np.float32)

    def dense(self, w: Layer, b: Layer, path_w: str, path_b: str, out: int, inp: int) -> tuple[np.ndarray, np.ndarray]:
        weight = self.layer(w, path_w, out * inp).reshape(out, inp)
        bias = self.layer(b, path_b, out)
        return weight, bias


def _conv(weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    out_ch, in_ch, k, _ = weight.shape
    # Built on the meta device so no throw-away random initialisation is computed.
    m = nn.Conv2d(in_ch, out_ch, k, padding=k // 2, device="meta")
    m.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
    m.bias = nn.Parameter(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))
    m.lrp_linear = True
    return m


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    out, inp = weight.shape
    m = nn.Linear(inp, out, bias=bias is not None, device="meta")
    m.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
    if bias is not None:
        m.bias = nn.Parameter(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))
    m.lrp_linear = True
    return m


class ResidualNetwork(nn.Module):
    """An lc0 residual (SE-)ResNet following the network contract (see the module docstring).

    Built by :func:`build_residual_network`; submodules are registered flat under lc0's ONNX node names.
    """

    def __init__(
        self,
        *,
        input_format: InputFormat,
        activation: str,
        blocks: list[bool],
        policy: str,
        wdl: bool,
        mlh: bool,
        description: str,
    ) -> None:
        super().__init__()
        self.input_format = input_format
        self.activation = activation
        self.policy_kind = policy
        self.wdl = wdl
        self.has_mlh = mlh
        self.description = description
        self.heads = ("policy",) + (("wdl",) if wdl else ("value",)) + (("mlh",) if mlh else ())
        # Names used by forward, per block: (conv1, act1, conv2, SE prefix or "" without SE, act2).
        self._block_names: list[tuple[str, ...]] = []
        for i, has_se in enumerate(blocks):
            p = f"block{i}"
            self._block_names.append((f"{p}/conv1", f"{p}/conv1/{activation}", f"{p}/conv2",
                                      f"{p}/conv2/se" if has_se else "", f"{p}/conv2/{activation}"))
        if policy in ("conv", "attention"):
            table = conv_policy_map() if policy == "conv" else attention_policy_map()
            self.register_buffer("policy_mapping", torch.from_numpy(table.copy()), persistent=False)

    def forward(self, planes: torch.Tensor, heads: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The outputs for input planes ``[N, 112, 8, 8]``; ``heads`` names the heads to compute (default all, see
        :mod:`lczerolens.model.heads`)."""
        want = wanted_heads(heads, self.has_mlh)
        if planes.dim() != 4 or tuple(planes.shape[1:]) != (112, 8, 8):
            raise InputShapeError(
                f"expected input planes of shape [N, 112, 8, 8], got {list(planes.shape)}; encode boards with "
                "lczerolens.board.encode_boards or LczeroBoard.to_input_tensor (and add the batch dimension)."
            )
        m = self._modules
        act = self.activation
        x = m[f"inputconv/{act}"](m["inputconv"](planes))
        for conv1, act1, conv2, se, act2 in self._block_names:
            y = m[act1](m[conv1](x))
            y = m[conv2](y)
            if se:
                pooled = y.mean(dim=(2, 3))
                s = m[f"{se}/matmul2"](m[f"{se}/{act}"](m[f"{se}/matmul1"](pooled)))
                channels = y.shape[1]
                gate_logits = s[:, :channels, None, None]
                shift = s[:, channels:, None, None]
                y = m[f"{se}/mul"](gate_logits, y) + shift
            x = m[act2](y + x)
        return self.forward_heads(x, want)

    def forward_heads(self, x: torch.Tensor, heads: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The heads alone on a residual stream ``x`` ``[N, F, 8, 8]`` (what :meth:`forward` does after the last
        block; the logit lens applies it to earlier blocks' outputs); ``heads`` as in :meth:`forward`."""
        m = self._modules
        act = self.activation
        want = wanted_heads(heads, self.has_mlh)
        out: dict[str, torch.Tensor] = {}
        if "policy" in want:
            out["policy"] = self._policy(x)
        if "value" in want:
            v = m[f"value/conv/{act}"](m["value/conv"](x)).flatten(1)
            v = m[f"value/dense1/{act}"](m["value/dense1"](v))
            v = m["value/dense2"](v)
            if self.wdl:
                out["wdl_logits"] = v
            else:
                out["value_logit"] = v[:, 0]

        if "mlh" in want:
            h = m[f"mlh/conv/{act}"](m["mlh/conv"](x)).flatten(1)
            h = m[f"mlh/dense1/{act}"](m["mlh/dense1"](h))
            out["mlh"] = m["output/mlh"](m["mlh/dense2"](h))[:, 0]
        return out

    def _policy(self, x: torch.Tensor) -> torch.Tensor:
        m = self._modules
        act = self.activation
        if self.policy_kind == "conv":
            p = m[f"policy/conv1/{act}"](m["policy/conv1"](x))
            return m["policy/conv2"](p).flatten(1)[:, self.policy_mapping]
        if self.policy_kind == "classical":
            p = m[f"policy/conv/{act}"](m["policy/conv"](x)).flatten(1)
            return m["policy/dense"](p)
        return self._attention_policy(x)

    def _attention_policy(self, x: torch.Tensor) -> torch.Tensor:
        m = self._modules
        n = x.shape[0]
        tokens = x.permute(0, 2, 3, 1).reshape(n, 64, x.shape[1])  # token = square = rank * 8 + file
        e = m["policy/dense1/selu"](m["policy/dense1"](tokens))
        q, k = m["policy/Q"](e), m["policy/K"](e)
        logits = m["policy/matmul"](q, k.transpose(1, 2)) * self.policy_scale  # [n, 64 from, 64 to]
        # Promotions: 4 offsets per rank-8 square from its key; the knight offset is added to the other three.
        offsets = m["policy/promotion/matmul"](k[:, 56:64, :])  # [n, 8 to-file, 4]
        offsets = (offsets[:, :, :3] + offsets[:, :, 3:4]).reshape(n, 1, 24)
        plain = logits[:, 48:56, 56:64].unsqueeze(-1).expand(n, 8, 8, 3).reshape(n, 8, 24)
        promotions = (plain + offsets).reshape(n, 3, 64)
        flat = torch.cat([logits, promotions], dim=1).reshape(n, 67 * 64)
        return flat[:, self.policy_mapping]

    def extra_repr(self) -> str:
        return self.description


def _activation_name(nf: NetworkFormat, source: str) -> str:
    act = int(nf.default_activation)
    if act == _NF.DefaultActivation.DEFAULT_ACTIVATION_RELU:
        return "relu"
    if act == _NF.DefaultActivation.DEFAULT_ACTIVATION_MISH:
        return "mish"
    raise UnsupportedModelError(f"{source}: default activation {act} is not one lc0 defines (ReLU or Mish).")


def build_residual_network(net: Net, nf: NetworkFormat, source: str = "lc0 weights") -> ResidualNetwork:
    """Build :class:`ResidualNetwork` from a parsed net and its resolved network format.

    Raises :class:`~lczerolens.errors.ModelLoadError` naming the layer when a weight's size does not fit, and
    :class:`~lczerolens.errors.UnsupportedModelError` for formats lc0 defines but this family does not have.
    """
    w = net.weights
    dec = _Decoder(source)
    try:
        input_format = InputFormat(int(nf.input))
    except ValueError:
        raise UnsupportedModelError(
            f"{source}: input format {int(nf.input)} is unknown; lczerolens knows "
            f"{', '.join(f'{f.name} ({f.value})' for f in InputFormat)}."
        ) from None
    act = _activation_name(nf, source)

    n_in = w.input.weights
    in_values = dec.layer(n_in, "weights.input.weights")
    if in_values.size % (112 * 9):
        raise ModelLoadError(
            f"{source}: layer weights.input.weights has {in_values.size} values, not a multiple of 112 x 3 x 3; "
            "the weights do not fit a residual network."
        )
    filters = in_values.size // (112 * 9)

    policy_format = int(nf.policy)
    if policy_format == _NF.PolicyFormat.POLICY_CONVOLUTION:
        policy = "conv"
    elif policy_format == _NF.PolicyFormat.POLICY_CLASSICAL:
        policy = "classical"
    elif policy_format == _NF.PolicyFormat.POLICY_ATTENTION:
        policy = "attention"
        if len(w.pol_encoder) > 0:
            raise UnsupportedModelError(
                f"{source}: the attention policy head has {len(w.pol_encoder)} encoder layers, which lczerolens "
                "does not build on a residual body; convert the net with `lc0 leela2onnx` and load the .onnx file."
            )
    else:
        raise UnsupportedModelError(
            f"{source}: policy format {_enum_name(policy_format, _NF.PolicyFormat)} on a residual body is not "
            "supported natively; convert the net with `lc0 leela2onnx` and load the .onnx file."
        )
    value_format = int(nf.value)
    if value_format not in (_NF.ValueFormat.VALUE_CLASSICAL, _NF.ValueFormat.VALUE_WDL):
        raise UnsupportedModelError(
            f"{source}: value format {_enum_name(value_format, _NF.ValueFormat)} is not supported."
        )
    wdl = value_format == _NF.ValueFormat.VALUE_WDL
    mlh = int(nf.moves_left) == _NF.MovesLeftFormat.MOVES_LEFT_V1

    blocks = [res.has("se") for res in w.residual]
    se_desc = "SE-ResNet" if any(blocks) else "ResNet"
    description = (
        f"lc0 {se_desc} {len(blocks)}x{filters} ({act}), {policy} policy, "
        f"{'WDL' if wdl else 'scalar'} value{', moves-left' if mlh else ''}; "
        f"input {input_format.name}; native from {source}"
    )
    network = ResidualNetwork(
        input_format=input_format, activation=act, blocks=blocks, policy=policy, wdl=wdl, mlh=mlh,
        description=description,
    )
    add = network.add_module

    add("inputconv", dec.conv_module(w.input, "weights.input", filters, 112, 3))
    add(f"inputconv/{act}", ops.Activation(act))
    for i, res in enumerate(w.residual):
        p, path = f"block{i}", f"weights.residual[{i}]"
        add(f"{p}/conv1", dec.conv_module(res.conv1, f"{path}.conv1", filters, filters, 3))
        add(f"{p}/conv1/{act}", ops.Activation(act))
        add(f"{p}/conv2", dec.conv_module(res.conv2, f"{path}.conv2", filters, filters, 3))
        if res.has("se"):
            b1 = dec.layer(res.se.b1, f"{path}.se.b1")
            se_ch = b1.size
            add(f"{p}/conv2/se/matmul1", dec.dense_module(res.se.w1, res.se.b1, f"{path}.se.w1",
                                                             f"{path}.se.b1", se_ch, filters))
            add(f"{p}/conv2/se/{act}", ops.Activation(act))
            add(f"{p}/conv2/se/matmul2", dec.dense_module(res.se.w2, res.se.b2, f"{path}.se.w2",
                                                             f"{path}.se.b2", 2 * filters, se_ch))
            add(f"{p}/conv2/se/mul", ops.Gate())
        add(f"{p}/conv2/{act}", ops.Activation(act))

    if policy == "conv":
        add("policy/conv1", dec.conv_module(w.policy1, "weights.policy1", filters, filters, 3))
        add(f"policy/conv1/{act}", ops.Activation(act))
        add("policy/conv2", dec.conv_module(w.policy, "weights.policy", CONV_POLICY_PLANES, filters, 3))
    elif policy == "attention":
        emb = dec.layer(w.ip_pol_b, "weights.ip_pol_b").size
        d_model = dec.layer(w.ip2_pol_b, "weights.ip2_pol_b").size
        add("policy/dense1", dec.dense_module(w.ip_pol_w, w.ip_pol_b, "weights.ip_pol_w", "weights.ip_pol_b",
                                                emb, filters))
        # lc0 uses SELU here for every residual-body net (the default activation only for attention bodies).
        add("policy/dense1/selu", ops.Activation("selu"))
        add("policy/Q", dec.dense_module(w.ip2_pol_w, w.ip2_pol_b, "weights.ip2_pol_w", "weights.ip2_pol_b",
                                           d_model, emb))
        add("policy/K", dec.dense_module(w.ip3_pol_w, w.ip3_pol_b, "weights.ip3_pol_w", "weights.ip3_pol_b",
                                           d_model, emb))
        add("policy/matmul", ops.MatMul())
        promo = dec.layer(w.ip4_pol_w, "weights.ip4_pol_w", 4 * d_model).reshape(4, d_model)
        promotion = _linear(promo, None)
        bind(dec.bindings, w.ip4_pol_w, promotion, "weight", "weights.ip4_pol_w")
        add("policy/promotion/matmul", promotion)
        network.policy_scale = float(np.float32(1.0) / np.sqrt(np.float32(d_model)))
    else:
        pol_ch = _channels(dec, w.policy, "weights.policy", filters)
        add("policy/conv", dec.conv_module(w.policy, "weights.policy", pol_ch, filters, 1))
        add(f"policy/conv/{act}", ops.Activation(act))
        add("policy/dense", dec.dense_module(w.ip_pol_w, w.ip_pol_b, "weights.ip_pol_w", "weights.ip_pol_b",
                                               1858, pol_ch * 64))

    _add_scalar_head(add, dec, w, act, filters, "value", "value", "val", 3 if wdl else 1)
    if mlh:
        _add_scalar_head(add, dec, w, act, filters, "mlh", "moves_left", "mov", 1)
        add("output/mlh", ops.Activation("relu"))
    keep_net(network, net, dec.bindings, tuple(dec.folded))
    network.eval()
    return network


def _add_scalar_head(
    add: Callable[[str, nn.Module], None],
    dec: _Decoder,
    w: Any,
    act: str,
    filters: int,
    name: str,
    conv_field: str,
    dense_tag: str,
    outputs: int,
) -> None:
    """A value or moves-left head: 1x1 conv, activation, dense, activation, dense (lc0's node names).

    ``conv_field`` is the head's convolution in the Weights message (``value`` / ``moves_left``) and
    ``dense_tag`` its dense layers' infix (``ip1_val_w``, ``ip2_mov_b``, ...).
    """
    channels = _channels(dec, getattr(w, conv_field), f"weights.{conv_field}", filters)
    add(f"{name}/conv", dec.conv_module(getattr(w, conv_field), f"weights.{conv_field}", channels, filters, 1))
    add(f"{name}/conv/{act}", ops.Activation(act))
    w1, b1, w2, b2 = (f"ip{i}_{dense_tag}_{k}" for i in (1, 2) for k in ("w", "b"))
    hidden = dec.layer(getattr(w, b1), f"weights.{b1}").size
    add(f"{name}/dense1", dec.dense_module(getattr(w, w1), getattr(w, b1), f"weights.{w1}", f"weights.{b1}",
                                             hidden, channels * 64))
    add(f"{name}/dense1/{act}", ops.Activation(act))
    add(f"{name}/dense2", dec.dense_module(getattr(w, w2), getattr(w, b2), f"weights.{w2}", f"weights.{b2}",
                                             outputs, hidden))


def _channels(dec: _Decoder, block: ConvBlock, path: str, filters: int) -> int:
    """Output channels of a 1x1 head convolution, from its weight count."""
    n = dec.layer(block.weights, f"{path}.weights").size
    if n % filters:
        raise ModelLoadError(
            f"{dec.source}: layer {path}.weights has {n} values, not a multiple of the {filters} filters of the "
            "body; the weights do not fit the declared network."
        )
    return n // filters


def _enum_name(value: int, enum: type) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)
