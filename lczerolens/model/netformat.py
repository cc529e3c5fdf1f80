"""What an lc0 weights file's network format means, filled in the way lc0 fills it in on loading.

Older files leave fields out (no network format at all, ``NETWORK_CLASSICAL`` / ``NETWORK_SE`` without head
formats, SE-format files with encoder layers); :func:`resolve_network_format` returns the format lc0 actually
runs. The builders (:mod:`lczerolens.model.native`, :mod:`lczerolens.model.attention`) both read it from here, so
neither imports the other.

Example
-------
>>> from lczerolens.model.netformat import is_attention_body
>>> from lczerolens.testing import random_net
>>> is_attention_body(random_net(blocks=1, filters=8, seed=0))
False
"""

from __future__ import annotations

from lczerolens.model.proto import Net, NetworkFormat

__all__ = ["resolve_network_format", "is_attention_body"]

_NS = NetworkFormat.NetworkStructure
_ATTENTION_STRUCTURES = (
    _NS.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT,
    _NS.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT,
    _NS.NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT,
)
_RESIDUAL_STRUCTURES = (
    _NS.NETWORK_CLASSICAL,
    _NS.NETWORK_SE,
    _NS.NETWORK_CLASSICAL_WITH_HEADFORMAT,
    _NS.NETWORK_SE_WITH_HEADFORMAT,
)


def resolve_network_format(net: Net) -> NetworkFormat:
    """The network format lc0 uses for ``net``: a copy, with what older files leave out filled in as lc0 does.

    Files without a network format are classical-input, classical-value, classical-policy residual nets;
    ``NETWORK_CLASSICAL`` / ``NETWORK_SE`` become their ``*_WITH_HEADFORMAT`` forms with classical heads; an
    SE-format file with encoder layers is an attention body (ReLU^2 FFN and Swish smolgen if it has smolgen);
    attention bodies with multi-head value and policy heads use the PE_DENSE embedding, others PE_MAP unless the
    file says otherwise.
    """
    nf = NetworkFormat.parse(net.format.network_format.serialize())
    weights = net.weights
    if not net.format.has("network_format"):
        nf.input = NetworkFormat.InputFormat.INPUT_CLASSICAL_112_PLANE
        nf.output = NetworkFormat.OutputFormat.OUTPUT_CLASSICAL
        nf.network = _NS.NETWORK_CLASSICAL_WITH_HEADFORMAT
        nf.value = NetworkFormat.ValueFormat.VALUE_CLASSICAL
        nf.policy = NetworkFormat.PolicyFormat.POLICY_CLASSICAL
    elif nf.network in (_NS.NETWORK_CLASSICAL, _NS.NETWORK_SE):
        nf.network = (
            _NS.NETWORK_CLASSICAL_WITH_HEADFORMAT if nf.network == _NS.NETWORK_CLASSICAL
            else _NS.NETWORK_SE_WITH_HEADFORMAT
        )
        nf.value = NetworkFormat.ValueFormat.VALUE_CLASSICAL
        nf.policy = NetworkFormat.PolicyFormat.POLICY_CLASSICAL
    elif nf.network == _NS.NETWORK_SE_WITH_HEADFORMAT and len(weights.encoder) > 0:
        nf.network = _NS.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT
        if weights.has("smolgen_w"):
            nf.ffn_activation = NetworkFormat.ActivationFunction.ACTIVATION_RELU_2
            nf.smolgen_activation = NetworkFormat.ActivationFunction.ACTIVATION_SWISH
    elif nf.network == _NS.NETWORK_AB_LEGACY_WITH_MULTIHEADFORMAT:
        nf.network = _NS.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT
    if nf.network == _NS.NETWORK_ATTENTIONBODY_WITH_HEADFORMAT:
        if weights.has("policy_heads") and weights.has("value_heads"):
            nf.network = _NS.NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT
            nf.input_embedding = NetworkFormat.InputEmbeddingFormat.INPUT_EMBEDDING_PE_DENSE
        if not nf.has("input_embedding"):
            nf.input_embedding = NetworkFormat.InputEmbeddingFormat.INPUT_EMBEDDING_PE_MAP
    return nf


def is_attention_body(net: Net) -> bool:
    """Whether ``net`` has an attention (transformer) body rather than a residual tower."""
    return resolve_network_format(net).network in _ATTENTION_STRUCTURES
