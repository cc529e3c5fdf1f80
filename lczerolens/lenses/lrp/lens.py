"""The LRP lens: patch a network's rule-bearing ops for one call and read relevance off input x gradient.

A composite is data: a mapping from the op classes of :mod:`lczerolens.model.ops` to factories that build the
rule module replacing one op instance. Convolutions and dense layers take per-layer rules and a bias treatment
(``layer_rules``, ``bias``: :class:`~lczerolens.lenses.lrp.rules.epsilon.LayerRule`); everything else in a
network is linear in each input and keeps its plain gradient, which in the convention of
:mod:`lczerolens.lenses.lrp.rules.epsilon` already is the LRP rule. Presets (:data:`EPSILON`,
:data:`GAMMA_COMPOSITE`, :data:`RESIDUAL_DEFAULT`, :data:`RESIDUAL_CONSERVING`, :data:`ATTENTION_DEFAULT`) are
dicts of lens options: ``LrpLens(**RESIDUAL_CONSERVING)``.

Example
-------
>>> from lczerolens import LczeroBoard, LczeroModel
>>> from lczerolens.lenses import LrpLens
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> rel = LrpLens().relevance(model, LczeroBoard(), target="value")  # doctest: +SKIP
>>> rel.squares.shape  # doctest: +SKIP
torch.Size([1, 8, 8])
"""

from __future__ import annotations

import fnmatch
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lczerolens.errors import InputShapeError, LensError
from lczerolens.lenses.base import (
    HEAD_TARGETS,
    AttributionLens,
    BoardsLike,
    Target,
    TargetLike,
    TopLegalMoves,
    as_boards,
    explain_dtype,
    param_like,
    select_output,
)
from lczerolens.lenses.inside import Record
from lczerolens.lenses.lrp.rules.epsilon import (
    BIAS_MODES,
    BilinearMatMulEpsilon,
    Conv2dRule,
    CPMatMul,
    ElementwiseMultiplyUniform,
    GammaConv2d,
    GateRule,
    GateShareRule,
    HeldShift,
    IdentityRule,
    LayerNormRule,
    LayerRule,
    LinearRule,
    MatrixMultiplicationEpsilon,
    SoftmaxEpsilon,
)
from lczerolens.lenses.relevance import Relevance
from lczerolens.lenses.tree import ShadowCache, network_of, overlay, shadow
from lczerolens.model import ops

__all__ = [
    "LrpLens",
    "Composite",
    "make_composite",
    "LINEAR_MODULES",
    "HEAD_TARGETS",
    "SOFTMAX_MODES",
    "CONV_RULES",
    "GAMMA_COMPOSITE",
    "EPSILON",
    "RESIDUAL_DEFAULT",
    "RESIDUAL_CONSERVING",
    "ATTENTION_DEFAULT",
    "PRESETS",
    "BIAS_MODES",
    "SE_SHIFT_MODES",
    "FAMILIES",
    "network_family",
]

#: A composite: op class -> factory building the rule module that replaces one instance of it.
Composite = Mapping[type, Callable[[nn.Module], nn.Module]]

#: Softmax modes: AttnLRP's softmax and bilinear rules, or CP-LRP (attention weights held constant).
SOFTMAX_MODES = ("attnlrp", "cp")

#: Rules for ``nn.Conv2d``: the plain gradient (epsilon rule, the default) or the gamma rule.
CONV_RULES = ("epsilon", "gamma")

#: Treatments of the squeeze-excitation block's additive term (``LrpLens(se_shift=...)``).
SE_SHIFT_MODES = ("propagate", "absorb")

#: Treatments of the squeeze-excitation gate ``sigmoid(s1) * x``: ``"constant"`` (the gate is held constant and
#: ``x`` takes all the relevance), or a number from 0 to 1, the gate's share of the product's relevance, passed
#: on through the sigmoid to the block's pooled features (:class:`GateShareRule`).
SE_GATE_CONSTANT = "constant"

#: The two groups of targets that ``se_gate`` can treat apart: ``"policy"`` (moves) and ``"value"`` (every target
#: of the value and moves-left heads: ``value``, ``win``, ``draw``, ``loss``, ``mlh``).
TARGET_GROUPS = ("policy", "value")

#: Module names of the squeeze-excitation blocks' second dense layers (gate logits, then the shift).
SE_SHIFT_LAYERS = "*/se/matmul2"

#: The lens of earlier releases, as ``LrpLens(**EPSILON)``: epsilon rules everywhere (linear layers keep their
#: plain gradient), every bias keeps its share of relevance, AttnLRP's softmax rule. On maia-1900 its maps sum
#: to a median of about a quarter of the explained logit: the biases absorb the rest.
EPSILON: dict[str, Any] = {
    "epsilon": 1e-6,
    "softmax": "attnlrp",
    "bias": "absorb",
    "se_shift": "propagate",
    "se_gate": SE_GATE_CONSTANT,
    "relu_beta": math.inf,
    "layer_rules": (),
}

#: The gamma composite for lc0's residual nets, as ``LrpLens(**GAMMA_COMPOSITE)``: the gamma rule on the
#: convolutions that feed a ReLU directly (the input conv and each block's first conv), epsilon rules elsewhere,
#: biases absorbing their share (the setting of earlier releases' benchmark); it needs those convolutions.
GAMMA_COMPOSITE: dict[str, Any] = {
    "conv_rule": "gamma",
    "gamma": 0.25,
    "gamma_layers": ("inputconv", "block*/conv1"),
    "bias": "absorb",
    "se_shift": "propagate",
}

#: Torch leaf modules that are linear in their input (their plain gradient is the LRP rule), or hold no
#: computation at all (containers, constant holders).
LINEAR_MODULES: tuple[type, ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.ZeroPad2d,
    nn.ModuleList,
    nn.ModuleDict,
    nn.ParameterList,
    nn.ParameterDict,
    nn.Sequential,
)

# Functions that, called inline by an fx graph (onnx2torch's GraphModule), would be nonlinear ops no lens sees.
_NONLINEAR_CALLS = frozenset(
    "relu relu_ relu6 sigmoid sigmoid_ tanh tanh_ softmax log_softmax exp log gelu silu mish softplus elu selu "
    "celu leaky_relu hardtanh hardswish hardsigmoid sqrt rsqrt reciprocal erf abs clamp clip layer_norm "
    "batch_norm group_norm instance_norm normalize".split()
)


def _identity_rule(epsilon: float, relu_beta: float = math.inf) -> Callable[[nn.Module], nn.Module]:
    return lambda op: IdentityRule(op.kind, epsilon, relu_beta)


def _bilinear_rule(epsilon: float) -> Callable[[nn.Module], nn.Module]:
    return lambda op: MatrixMultiplicationEpsilon(epsilon)


def _cp_matmul_rule(epsilon: float) -> Callable[[nn.Module], nn.Module]:
    def build(op: nn.Module) -> nn.Module:
        if op.attention_operand is None:
            return BilinearMatMulEpsilon(epsilon)
        return CPMatMul(op.attention_operand)

    return build


def make_composite(
    epsilon: float = 1e-6, softmax: str = "attnlrp", relu_beta: float = math.inf
) -> dict[type, Callable[[nn.Module], nn.Module]]:
    """The default composite: a rule for each class of :data:`lczerolens.model.ops.RULE_OPS`.

    - ``Activation``: identity rule, stabilised by ``epsilon`` (the epsilon rule of the layer before it); with a
      finite ``relu_beta``, a ReLU passes the signal through ``sigmoid(relu_beta * x)`` instead
      (:class:`~lczerolens.lenses.lrp.rules.epsilon.SmoothReluFunction`).
    - ``Gate``: signal-take-all (the gate is a constant).
    - ``Mul``: uniform rule (half to each signal).
    - ``MatMul``: AttnLRP's bilinear epsilon rule; with ``softmax="cp"`` a product with attention weights holds
      them constant (CP-LRP) instead.
    - ``Softmax``: AttnLRP's softmax rule.
    - ``LayerNorm``: standard deviation held constant.

    Example
    -------
    >>> composite = make_composite(1e-6, "cp")
    >>> sorted(cls.__name__ for cls in composite)
    ['Activation', 'Gate', 'LayerNorm', 'MatMul', 'Mul', 'Softmax']
    """
    if softmax not in SOFTMAX_MODES:
        raise LensError(f"softmax={softmax!r} is not a softmax mode; use one of {SOFTMAX_MODES}")
    return {
        ops.Activation: _identity_rule(epsilon, relu_beta),
        ops.Gate: lambda op: GateRule(),
        ops.Mul: lambda op: ElementwiseMultiplyUniform(),
        ops.MatMul: _bilinear_rule(epsilon) if softmax == "attnlrp" else _cp_matmul_rule(epsilon),
        ops.Softmax: lambda op: SoftmaxEpsilon(op.dim),
        ops.LayerNorm: lambda op: LayerNormRule(op.weight, op.bias, op.eps),
    }



#: What ``condition=`` accepts: ``{module name: channels}`` or a list of them (one map each).
ConditionLike = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class _Tap(Record):
    """:class:`~lczerolens.lenses.inside.Record`, marked so that the lens's checks pass over it."""

    lrp_rule = True


#: Families of networks, each with its own default composite: residual (convolutions) or attention bodies.
FAMILIES = ("residual", "attention")


class _TreeSet:
    """The explaining trees of one network for one lens, one per treatment of the SE gate, each built on first
    use. Holds the network weakly (the lens's cache is keyed by it); groups with the same gate share a tree."""

    def __init__(self, lens: LrpLens, network: nn.Module, gates: Mapping[str, Any]) -> None:
        self._lens, self._network, self._gates = lens, weakref.ref(network), dict(gates)
        self._trees: dict[Any, nn.Module] = {}
        self._lock = threading.Lock()

    def tree(self, group: str) -> nn.Module:
        gate = self._gates.get(group, SE_GATE_CONSTANT)
        tree = self._trees.get(gate)
        if tree is None:
            network = self._network()
            if network is None:  # pragma: no cover - the cache drops an entry with its network
                raise LensError("the network of this explaining tree no longer exists")
            with self._lock:
                tree = self._trees.get(gate)
                if tree is None:
                    tree = self._trees[gate] = self._lens._build_tree(network, group)
        return tree


def target_group(kind: str) -> str:
    """``"policy"`` for move targets, ``"value"`` for every target of the value and moves-left heads."""
    if not isinstance(kind, str):
        raise LensError(f"target kind must be a string such as 'policy' or 'value', not {kind!r}")
    return "policy" if kind == "policy" else "value"


def _parse_se_gate(value: Any) -> dict[str, Any]:
    """``se_gate`` as ``{"policy": treatment, "value": treatment}``; raises :class:`LensError` when malformed."""

    def one(v: Any, where: str) -> Any:
        if isinstance(v, str) and v == SE_GATE_CONSTANT:
            return SE_GATE_CONSTANT
        if not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0:
            return float(v)
        raise LensError(
            f"se_gate{where}={v!r} must be {SE_GATE_CONSTANT!r} or the gate's share of relevance, a number from "
            f"0 to 1 (e.g. 0.5)"
        )

    if isinstance(value, Mapping):
        unknown = set(value) - set(TARGET_GROUPS)
        if unknown or not value:
            raise LensError(
                f"se_gate={dict(value)!r} must map target groups {TARGET_GROUPS} to a treatment, e.g. "
                f"{{'policy': 'constant', 'value': 0.5}}"
            )
        return {g: one(value.get(g, SE_GATE_CONSTANT), f"[{g!r}]") for g in TARGET_GROUPS}
    treatment = one(value, "")
    return {g: treatment for g in TARGET_GROUPS}


#: What ``relu_beta`` accepts: one ``beta`` for every ReLU, or ``(pattern, beta)`` pairs on activation names.
ReluBetaLike = float | Sequence[tuple[str, float]]


def _parse_relu_beta(value: Any) -> float | tuple[tuple[str, float], ...]:
    """``relu_beta`` as one number or a tuple of ``(pattern, beta)``; raises :class:`LensError` when malformed."""

    def beta(v: Any, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise LensError(
                f"relu_beta{where}={v!r} must be a number > 0 (e.g. 2.0), or math.inf for the identity rule"
            )
        return float(v)

    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        return beta(value, "")
    pairs = []
    for i, item in enumerate(value):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise LensError(
                f"relu_beta[{i}]={item!r} must be a (pattern, beta) pair, e.g. ('block*/conv2/relu', 2.0)"
            )
        pairs.append((item[0], beta(item[1], f"[{i}]")))
    return tuple(pairs)


def _relu_beta_of(name: str, relu_beta: float | tuple[tuple[str, float], ...], used: set[str]) -> float:
    """The ``beta`` of the activation ``name``: the first pattern matching its full path or its last dotted part
    (``math.inf``, the identity rule, where none matches)."""
    if not isinstance(relu_beta, tuple):
        return relu_beta
    local = name.rsplit(".", 1)[-1]
    for pattern, beta in relu_beta:
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(local, pattern):
            used.add(pattern)
            return beta
    return math.inf


def network_family(network: nn.Module) -> str:
    """``"residual"`` if ``network`` has an ``nn.Conv2d`` (lc0's residual nets), else ``"attention"``."""
    return "residual" if any(isinstance(m, nn.Conv2d) for m in network_of(network).modules()) else "attention"


class LrpLens(AttributionLens):
    """Layer-wise relevance propagation: one forward and one backward pass per batch, rules chosen per layer.

    On lc0's residual nets the default (:data:`RESIDUAL_DEFAULT`) is the composite chosen on maia-1900 by piece
    removal; on held-out positions it is below occlusion on the move and level with it on the value, and its
    maps do not sum to the explained number (``Relevance.conservation``); :data:`RESIDUAL_CONSERVING` accounts
    for the whole number at a cost in faithfulness (the README's benchmark section has the figures). Its rules
    for value-head targets differ from those for moves in one place, the squeeze-excitation gate (``se_gate``).
    Attention bodies get AttnLRP's rules (:data:`ATTENTION_DEFAULT`), or CP-LRP with ``softmax="cp"``.

    The lens explains on its own copy of the network's module tree, with the rule modules in place of the
    nonlinear ops; that copy shares every parameter with the model and is cached per model (rebuilt when the
    model's modules change). The user's model is never modified, so several lenses, plain forwards and plain
    gradients can run on one model at the same time, from several threads, and stay exact.

    Every option left at ``None`` takes the value of the network family's preset, decided when a network is
    explained: :data:`RESIDUAL_DEFAULT` for a network with convolutions (lc0's residual nets),
    :data:`ATTENTION_DEFAULT` otherwise. ``LrpLens(**EPSILON)`` is the lens of earlier releases (epsilon rules,
    biases absorbing their share), whatever the network.

    Parameters
    ----------
    epsilon : float, optional
        Stabiliser of every division by a pre-activation (see :func:`~lczerolens.lenses.lrp.rules.epsilon.stabilize`).
        Both presets use ``1e-6``.
    softmax : str, optional
        ``"attnlrp"`` (AttnLRP's softmax and bilinear rules; relevance also flows through attention weights) or
        ``"cp"`` (CP-LRP: attention weights held constant; with ``bias="ignore"`` the map then sums to the
        explained number up to the stabiliser).
    composite : mapping, optional
        Op class -> rule-module factory, replacing :func:`make_composite`'s default.
    bias : str, optional
        What happens to the share of relevance of the biases of ``nn.Conv2d`` and ``nn.Linear`` layers (value
        head and squeeze-excitation layers included): ``"absorb"`` (the bias keeps it; the map sums to less than
        the explained number), ``"ignore"`` (the bias is left out of the propagation: relevance is conserved),
        ``"flat"`` (its share is spread evenly over the layer's nonzero inputs). See
        :class:`~lczerolens.lenses.lrp.rules.epsilon.LayerRule`. LayerNorm's affine bias and standalone bias
        additions of an ONNX graph keep their share in every mode.
    se_shift : str, optional
        The squeeze-excitation block's additive term ``s2`` of ``sigmoid(s1) * x + s2``: ``"propagate"`` (its
        relevance flows back through the block's dense layers to the pooled features) or ``"absorb"`` (held
        constant: it keeps its share, as a bias does).
    se_gate : str, float or mapping, optional
        The squeeze-excitation gate ``sigmoid(s1) * x``: ``"constant"`` (the gate is held constant, ``x`` takes
        all the relevance) or the gate's share of the product's relevance, a number from 0 to 1 (``0.5`` is the
        uniform rule), which goes on through the sigmoid and the block's dense layers to its pooled features
        (:class:`~lczerolens.lenses.lrp.rules.epsilon.GateShareRule`). A mapping
        ``{"policy": ..., "value": ...}`` treats move targets and value-head targets apart (a group left out
        is ``"constant"``); :data:`RESIDUAL_DEFAULT` gives the value-head targets ``0.5``. Ignored with a custom
        ``composite``.
    relu_beta : float or sequence of (pattern, float), optional
        How the signal passes a ReLU: ``math.inf`` is the identity rule (only units above their threshold pass
        it, relevance conserved); a finite ``beta > 0`` passes ``sigmoid(beta * x)`` of it, the derivative of
        softplus with that sharpness (:class:`~lczerolens.lenses.lrp.rules.epsilon.SmoothReluFunction`), so
        that inputs holding a unit just below its threshold get relevance too. One number applies to every
        ReLU; ``(pattern, beta)`` pairs choose per ReLU (``fnmatch`` patterns on module names such as
        ``"block0/conv2/relu"``, the first match wins, unmatched ReLUs take ``math.inf``; a pattern that matches
        no ReLU of a network that has ReLUs raises :class:`LensError`). :data:`RESIDUAL_DEFAULT` gives ``2.0``
        to every ReLU that does not follow a gamma convolution; every other preset uses ``math.inf``. Other
        activations (Mish, ...) ignore it. Ignored with a custom ``composite``.
    layer_rules : sequence of (pattern, LayerRule or dict), optional
        Per-layer rules for ``nn.Conv2d`` and ``nn.Linear`` modules: ``fnmatch`` patterns on module names, the
        first match wins; a dict holds :class:`~lczerolens.lenses.lrp.rules.epsilon.LayerRule`'s arguments
        (``bias`` defaults to the lens's ``bias``). Unmatched layers take the epsilon rule with ``bias``.
        A pattern of the caller's that matches no such layer raises :class:`LensError`.
    conv_rule : str, optional
        ``"epsilon"`` or ``"gamma"`` (kept from earlier releases; ``layer_rules`` is the general form): the
        gamma rule (:class:`~lczerolens.lenses.lrp.rules.epsilon.GammaConv2d`) on the ``nn.Conv2d`` modules
        that ``gamma_layers`` selects. A network without convolutions raises :class:`LensError`. When it is
        given, the options left at ``None`` take :data:`EPSILON`'s values (as in earlier releases).
    gamma : float, optional
        The gamma rule's ``gamma >= 0`` (``W + gamma W+``); used with ``conv_rule="gamma"`` (default 0.25).
    gamma_layers : sequence of str, optional
        ``fnmatch`` patterns on module names (e.g. ``("inputconv", "block0/*")``) choosing the convolutions
        under the gamma rule; ``None`` means every ``nn.Conv2d``. A pattern that matches no convolution raises
        :class:`~lczerolens.errors.LensError`.

    Example
    -------
    >>> LrpLens()
    LrpLens()
    >>> LrpLens(epsilon=1e-6, softmax="cp")
    LrpLens(epsilon=1e-06, softmax='cp')
    >>> LrpLens(**EPSILON)  # doctest: +NORMALIZE_WHITESPACE
    LrpLens(epsilon=1e-06, softmax='attnlrp', bias='absorb', se_shift='propagate', se_gate='constant',
            relu_beta=inf, layer_rules=())
    """

    method_name = "LRP relevance"

    def __init__(
        self,
        epsilon: float | None = None,
        softmax: str | None = None,
        composite: Composite | None = None,
        *,
        bias: str | None = None,
        se_shift: str | None = None,
        se_gate: str | float | Mapping[str, str | float] | None = None,
        relu_beta: ReluBetaLike | None = None,
        layer_rules: Sequence[tuple[str, Any]] | None = None,
        conv_rule: str | None = None,
        gamma: float | None = None,
        gamma_layers: Sequence[str] | None = None,
    ) -> None:
        # The options as given (rebuilding the lens elsewhere, e.g. in a worker process, starts from these).
        given = {"epsilon": epsilon, "softmax": softmax, "bias": bias, "se_shift": se_shift, "se_gate": se_gate,
                 "relu_beta": relu_beta, "layer_rules": layer_rules, "conv_rule": conv_rule, "gamma": gamma,
                 "gamma_layers": gamma_layers}
        self._given = {k: v for k, v in given.items() if v is not None}
        self._custom_composite = composite is not None
        bad_epsilon = isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0
        if epsilon is not None and bad_epsilon:
            raise LensError(f"epsilon={epsilon!r} must be a positive number (e.g. 1e-6)")
        if softmax is not None and softmax not in SOFTMAX_MODES:
            raise LensError(f"softmax={softmax!r} is not a softmax mode; use one of {SOFTMAX_MODES}")
        if conv_rule is not None and conv_rule not in CONV_RULES:
            raise LensError(f"conv_rule={conv_rule!r} is not a convolution rule; use one of {CONV_RULES}")
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0):
            raise LensError(f"gamma={gamma!r} must be a number >= 0 (e.g. 0.25)")
        if bias is not None and bias not in BIAS_MODES:
            raise LensError(f"bias={bias!r} is not a bias treatment; use one of {BIAS_MODES}")
        if se_shift is not None and se_shift not in SE_SHIFT_MODES:
            raise LensError(f"se_shift={se_shift!r} is not a treatment of the SE shift; use one of {SE_SHIFT_MODES}")
        if se_gate is not None:
            _parse_se_gate(se_gate)  # validates; the lens keeps the form given (its repr shows it)
            se_gate = dict(se_gate) if isinstance(se_gate, Mapping) else se_gate
        if relu_beta is not None:
            relu_beta = _parse_relu_beta(relu_beta)
        if gamma_layers is not None:
            if isinstance(gamma_layers, str) or not all(isinstance(p, str) for p in gamma_layers):
                raise LensError(
                    f"gamma_layers={gamma_layers!r} must be a sequence of module-name patterns, e.g. ['inputconv']"
                )
            gamma_layers = tuple(gamma_layers)
        if layer_rules is not None:
            if conv_rule == "gamma":
                raise LensError("give either layer_rules or conv_rule='gamma', not both")
            layer_rules = _parse_layer_rules(layer_rules)
        self.epsilon = None if epsilon is None else float(epsilon)
        self.softmax = softmax
        self.bias = bias
        self.se_shift = se_shift
        self.se_gate = se_gate
        self.relu_beta = relu_beta
        self.layer_rules = layer_rules
        self.conv_rule = conv_rule
        self.gamma = None if gamma is None else float(gamma)
        self.gamma_layers = gamma_layers
        self.composite = None if composite is None else dict(composite)
        # The explaining trees of each network this lens has seen (weak keys; rebuilt when the network changes).
        self._trees = ShadowCache(self._tree_set)

    _OPTIONS = (
        "epsilon", "softmax", "bias", "se_shift", "se_gate", "relu_beta", "layer_rules", "conv_rule", "gamma",
        "gamma_layers",
    )

    def options(self) -> dict[str, Any]:
        """The constructor options this lens was given (``LrpLens(**lens.options())`` is the same lens).

        Raises :class:`LensError` for a lens built with a custom ``composite`` (functions, not options).
        """
        if self._custom_composite:
            raise LensError("this LrpLens has a custom composite: it cannot be rebuilt from its options")
        return dict(self._given)

    def __repr__(self) -> str:
        shown = [(k, getattr(self, k)) for k in self._OPTIONS if getattr(self, k) is not None]
        if self.layer_rules is not None:
            shown = [(k, _layer_rules_repr(v) if k == "layer_rules" else v) for k, v in shown]
        return "LrpLens(" + ", ".join(f"{k}={v!r}" if k != "layer_rules" else f"{k}={v}" for k, v in shown) + ")"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_trees", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._trees = ShadowCache(self._tree_set)

    # ----------------------------------------------------------------------------------------------------------
    # Options resolved for one network

    def settings(self, network: nn.Module) -> dict[str, Any]:
        """The options this lens applies to ``network``: its own, and its family preset's where it left ``None``.

        Example
        -------
        >>> LrpLens(bias="absorb").settings(model)["bias"]  # doctest: +SKIP
        'absorb'
        """
        family = network_family(network)
        preset = RESIDUAL_DEFAULT if family == "residual" else ATTENTION_DEFAULT
        out: dict[str, Any] = {"family": family}
        if self.conv_rule is not None:
            preset = {**preset, **EPSILON}  # the options of earlier releases keep their meaning: biases absorb
        for key in ("epsilon", "softmax", "bias", "se_shift"):
            value = getattr(self, key)
            out[key] = preset[key] if value is None else value
        out["se_gate"] = _parse_se_gate(preset["se_gate"] if self.se_gate is None else self.se_gate)
        if self.relu_beta is None:
            out["relu_beta"], out["relu_strict"] = _parse_relu_beta(preset.get("relu_beta", math.inf)), False
        else:
            out["relu_beta"], out["relu_strict"] = self.relu_beta, True
        if self.layer_rules is not None:
            out["layer_rules"], out["strict"] = self.layer_rules, True
        elif self.conv_rule is not None:
            gamma = 0.25 if self.gamma is None else self.gamma
            rules = () if self.conv_rule == "epsilon" else tuple(
                (p, LayerRule("gamma", bias=out["bias"], gamma=gamma)) for p in (self.gamma_layers or ("*",))
            )
            out["layer_rules"], out["strict"] = rules, self.gamma_layers is not None
            out["conv_gamma"] = self.conv_rule == "gamma"
        else:
            out["layer_rules"], out["strict"] = _parse_layer_rules(preset["layer_rules"]), False
        out["layer_rules"] = tuple(
            (p, LayerRule(r.rule, bias=out["bias"] if r.bias is None else r.bias, gamma=r.gamma, alpha=r.alpha,
                          beta=r.beta) if isinstance(r, _PartialRule) else r)
            for p, r in out["layer_rules"]
        )
        return out

    # ----------------------------------------------------------------------------------------------------------
    # The explaining tree

    @staticmethod
    def _factory(composite: Mapping[type, Callable], module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
        for cls in type(module).__mro__:
            if cls in composite:
                return composite[cls]
        return None

    def check(self, network: nn.Module) -> None:
        """Raise :class:`LensError` if ``network`` holds a leaf module the lens cannot explain.

        Leaves pass when the composite has a rule for them, when they are standard linear torch modules
        (:data:`LINEAR_MODULES`), when they declare ``lrp_linear = True``, or when they are rule modules already.
        An fx graph (such as onnx2torch's) that calls a nonlinear function inline fails too.
        """
        self._plan(network_of(network))

    def _check_module(self, path: str, module: nn.Module, composite: Mapping[type, Callable]) -> None:
        where = path or "<root>"
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                if node.op in ("call_function", "call_method"):
                    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
                    if name in _NONLINEAR_CALLS:
                        raise LensError(
                            f"module {where!r} calls the nonlinear function {name!r} inline (fx node "
                            f"{node.name!r}); a loader must express it as an lczerolens.model.ops module"
                        )
        if self._factory(composite, module) is not None or getattr(module, "lrp_rule", False) is True:
            return
        if next(iter(module.children()), None) is not None:
            return  # a container: its leaves are checked
        flag = getattr(module, "lrp_linear", None)
        if flag is True:
            return
        if flag is None and type(module) is nn.Module:
            return  # a bare holder of constants has no forward
        if flag is None and isinstance(module, LINEAR_MODULES):
            return
        if flag is None and isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training:
            return  # eval-mode batch norm is affine
        reason = "it is marked lrp_linear=False" if flag is False else "no rule covers it"
        raise LensError(
            f"cannot explain module {where!r} of type {type(module).__module__}.{type(module).__qualname__}: "
            f"{reason}. Express nonlinear ops as lczerolens.model.ops modules, or add a rule for this type "
            f"to the lens's composite"
        )

    def _plan(self, network: nn.Module, group: str = "policy") -> list[tuple[str, str, nn.Module, Callable]]:
        """Check every module and list the swaps (parent path, child name, op, factory) for one target group."""
        settings = self.settings(network)
        epsilon = settings["epsilon"]
        if self.composite is not None:
            composite = self.composite
        else:
            composite = make_composite(epsilon, settings["softmax"])
            gate = settings["se_gate"][group]
            if gate != SE_GATE_CONSTANT:
                composite[ops.Gate] = lambda op, share=gate: GateShareRule(share, epsilon)
        rules, strict = settings["layer_rules"], settings["strict"]
        conv_gamma = settings.get("conv_gamma", False)
        relu_beta = settings["relu_beta"] if self.composite is None else math.inf
        swaps = []
        used: set[str] = set()
        relu_used: set[str] = set()
        layers = convs = 0
        for path, module in network.named_modules():
            self._check_module(path, module, composite)
            for name, child in module._modules.items():
                if child is None:
                    continue
                factory = self._factory(composite, child)
                full = f"{path}.{name}" if path else name
                if relu_beta != math.inf and isinstance(child, ops.Activation) and child.kind == "relu":
                    beta = _relu_beta_of(full, relu_beta, relu_used)
                    factory = lambda op, b=beta: IdentityRule(op.kind, epsilon, b)  # noqa: E731
                if factory is None and isinstance(child, (nn.Conv2d, nn.Linear)):
                    convs += isinstance(child, nn.Conv2d)
                    layers += 1
                    factory = self._layer_factory(full, child, settings, used, conv_gamma)
                if factory is not None:
                    swaps.append((path, name, child, factory))
        if conv_gamma and convs == 0:
            raise LensError(
                "conv_rule='gamma' needs convolutions (nn.Conv2d), and this network has none (an attention-body "
                "net?); use the default LrpLens() for it"
            )
        if isinstance(relu_beta, tuple) and settings["relu_strict"]:
            unused = [p for p, _ in relu_beta if p not in relu_used]
            names = [n for n, m in network.named_modules() if isinstance(m, ops.Activation) and m.kind == "relu"]
            if unused and names:  # a network without ReLUs (Mish) has nothing to choose: the option is moot
                raise LensError(
                    f"relu_beta patterns {unused} match no ReLU of the network; its ReLUs are "
                    f"{names[:12]}{' ...' if len(names) > 12 else ''}"
                )
        if strict:
            unused = [p for p, _ in rules if p not in used]
            if unused:
                kinds = (nn.Conv2d,) if conv_gamma else (nn.Conv2d, nn.Linear)
                names = [n for n, m in network.named_modules() if isinstance(m, kinds)]
                what = "nn.Conv2d" if conv_gamma else "nn.Conv2d or nn.Linear"
                label = "gamma_layers" if conv_gamma else "layer_rules"
                raise LensError(
                    f"{label} patterns {unused} match no {what} of the network; its layers are "
                    f"{names[:12]}{' ...' if len(names) > 12 else ''}"
                )
        return swaps

    def _layer_factory(
        self, name: str, layer: nn.Module, settings: Mapping[str, Any], used: set[str], conv_gamma: bool
    ) -> Callable[[nn.Module], nn.Module] | None:
        """The factory of the rule module for one ``nn.Conv2d`` / ``nn.Linear``, or ``None`` for its plain gradient."""
        epsilon = settings["epsilon"]
        rule = None
        # A pattern matches the full path or the last dotted part (lc0's node name in a wrapped network).
        local = name.rsplit(".", 1)[-1]
        for pattern, candidate in settings["layer_rules"]:
            if conv_gamma and not isinstance(layer, nn.Conv2d):
                break
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(local, pattern):
                used.add(pattern)
                if rule is None:
                    rule = candidate
        if rule is None:
            rule = LayerRule("epsilon", bias=settings["bias"])
        held = (
            settings["se_shift"] == "absorb"
            and isinstance(layer, nn.Linear)
            and fnmatch.fnmatchcase(local, SE_SHIFT_LAYERS)
            and layer.out_features % 2 == 0
        )
        if rule.is_plain and not held:
            return None
        if conv_gamma and rule.rule == "gamma" and rule.bias == "absorb" and isinstance(layer, nn.Conv2d):
            inner = lambda op, g=rule.gamma: GammaConv2d(op, g, epsilon)  # noqa: E731 - the rule of earlier releases
        elif rule.is_plain:
            inner = lambda op: op  # noqa: E731
        elif isinstance(layer, nn.Conv2d):
            inner = lambda op, r=rule: Conv2dRule(op, r, epsilon)  # noqa: E731
        else:
            inner = lambda op, r=rule: LinearRule(op, r, epsilon)  # noqa: E731
        if held:
            return lambda op: HeldShift(inner(op), op.out_features // 2)
        return inner

    def _build_tree(self, network: nn.Module, group: str = "policy") -> nn.Module:
        """A shadow of ``network`` with every rule-bearing op replaced by its rule module (for one target group).

        Half-precision networks are explained in float32 (their relevance in float16 or bfloat16 is off by
        several percent of the map's scale): the tree then holds float32 copies of the weights.
        """
        plan = self._plan(network, group)
        dtype = explain_dtype(network)
        tree = shadow(network, dtype)
        for path, name, _, factory in plan:
            parent = tree.get_submodule(path) if path else tree
            op = parent._modules[name]  # the shadow's op: its parameters are the model's (or float32 copies)
            rule = factory(op)
            rule.train(op.training)
            parent._modules[name] = rule
        return tree

    def _tree_set(self, network: nn.Module) -> _TreeSet:
        gates = self.settings(network)["se_gate"] if self.composite is None else {}
        return _TreeSet(self, network, gates)

    def explaining_network(self, model: nn.Module, target: str = "policy") -> nn.Module:
        """The network the lens runs for ``model``: the rule modules in place, the parameters shared.

        Its forward gives the same outputs as the model's; its gradient, times the input, is the relevance of
        the output it is seeded at. The model itself is never changed. Raises :class:`LensError` if a module
        cannot be explained.

        Parameters
        ----------
        model : LczeroModel or network
            The model to explain.
        target : str
            The kind of output the tree will explain: ``"policy"`` (moves) or a value-head target (``"value"``,
            ``"win"``, ``"draw"``, ``"loss"``, ``"mlh"``). The rules can differ between the two groups
            (``se_gate``); seeding a tree at the other group's output gives that other group's rules.

        Example
        -------
        >>> tree = LrpLens().explaining_network(model, "value")  # doctest: +SKIP
        >>> x = planes.requires_grad_(True)  # doctest: +SKIP
        >>> out = tree(x)["wdl_logits"]  # doctest: +SKIP
        >>> seed = torch.tensor([1.0, 0.0, -1.0]).expand_as(out)  # doctest: +SKIP
        >>> relevance = x * torch.autograd.grad(out, x, seed)[0]  # doctest: +SKIP
        """
        return self._trees.get(network_of(model)).tree(target_group(target))

    @contextmanager
    def patched(self, network: nn.Module) -> Iterator[nn.Module]:
        """The explaining network of ``network`` for the length of a ``with`` block (``network`` is untouched).

        Kept for code written when the lens swapped ops in place; :meth:`explaining_network` is the same without
        the block.

        Example
        -------
        >>> with LrpLens().patched(model) as explained:  # doctest: +SKIP
        ...     out = explained(planes)
        """
        yield self.explaining_network(network)

    # ----------------------------------------------------------------------------------------------------------
    # Relevance

    def relevance(
        self,
        model: Any,
        boards: BoardsLike,
        target: TargetLike = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        planes: torch.Tensor | None = None,
        record: Sequence[str] | str | None = None,
        condition: ConditionLike | None = None,
    ) -> Relevance:
        """Explain one output per board with LRP: one forward and one backward pass per batch.

        Parameters
        ----------
        model : LczeroModel or network
            An ``LczeroModel`` or any network following the network contract (``network(planes)`` returns a
            dict of head outputs and ``network.input_format`` is set).
        boards : LczeroBoard or sequence of LczeroBoard
            The positions (with their move history).
        target : None, move, sequence of moves, or str
            ``None``: each board's legal move with the highest policy logit. A move (``chess.Move``, UCI or SAN
            string, or policy index ``int``), or one per board for a batch. ``"value"`` (``win - loss`` logit for
            WDL nets, the pre-tanh value logit otherwise), ``"win"``, ``"draw"``, ``"loss"`` (WDL logits before
            the softmax), ``"mlh"`` (moves left).
        batch_size : int, optional
            At most this many boards per pass; the result equals one call on everything.
        progress : bool
            A tqdm progress bar over the boards.
        planes : torch.Tensor, optional
            ``[N, 112, 8, 8]`` input to explain instead of the boards' own encoding (e.g. a perturbed input);
            the boards still decode moves and orientation.
        record : str or sequence of str, optional
            Module names (as in ``model.named_modules()``); ``rel.layers[name]`` is then the relevance of that
            module's output (its activation times the modified gradient there), shape of the activation.
        condition : mapping or sequence of mappings, optional
            Concept-conditional relevance (CRP): ``{name: channels}`` keeps only the relevance that passes
            through those channels of that module's output (dimension 1 of a ``[N, C, ...]`` output, the last
            dimension of the attention body's ``[N, 64, E]`` or ``[N*64, E]`` token stream; ``{name: {"channels": [...],
            "tokens": [...]}}`` selects tokens, i.e. squares in network orientation, too). A list of ``K`` such
            mappings, all on one module, gives ``K`` maps per board in one backward pass: row ``i * K + k`` is
            board ``i`` under condition ``k``. Where every path from the input to the output goes through that
            module (a block's output), the maps of all its channels sum to the unconditional map.

        Returns
        -------
        Relevance
            ``.planes`` ``[N, 112, 8, 8]`` (network orientation), ``.squares`` ``[N, 8, 8]`` (board orientation),
            ``.target`` ``[N]`` (the explained output's value), ``.layers`` (recorded latent relevance).

        Example
        -------
        >>> rel = LrpLens().relevance(model, [board1, board2], target=["e2e4", "Nf6"])  # doctest: +SKIP
        >>> rel = LrpLens().relevance(model, board, record="block5/conv2/relu")  # doctest: +SKIP
        >>> rel.layers["block5/conv2/relu"].shape  # doctest: +SKIP
        torch.Size([1, 64, 8, 8])
        """
        options: dict[str, Any] = {}
        if planes is not None:
            boards = as_boards(boards)
            n = len(boards)
            if not isinstance(planes, torch.Tensor) or tuple(planes.shape) != (n, 112, 8, 8):
                shape = tuple(planes.shape) if isinstance(planes, torch.Tensor) else type(planes).__name__
                raise InputShapeError(f"planes must be a tensor of shape ({n}, 112, 8, 8) for {n} boards, not {shape}")
            options["planes"] = planes
        if record is not None:
            options["record"] = record
        if condition is not None:
            options["condition"] = condition
        return super().relevance(model, boards, target, batch_size=batch_size, progress=progress, **options)

    def _check_options(self, network: nn.Module, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"planes", "record", "condition"}
        if unknown:
            raise LensError(f"LrpLens.relevance got unknown options {sorted(unknown)}")
        names = dict(network.named_modules())
        for name in _record_names(options.get("record")):
            _check_name(name, names)
        if "condition" in options:
            _parse_condition(options["condition"], names)

    def _explain(
        self,
        network: nn.Module,
        input_format: Any,
        boards: list,
        target: Target,
        *,
        rows: slice,
        planes: torch.Tensor | None = None,
        record: Sequence[str] | str | None = None,
        condition: ConditionLike | None = None,
    ) -> Relevance:
        from lczerolens.board import encode_boards

        n = len(boards)
        legal = TopLegalMoves(boards, input_format) if target.kind == "policy" and target.indices is None else None
        tree = self.explaining_network(network, target.kind)
        dtype, device = param_like(tree)
        if planes is None:
            x = encode_boards(boards, input_format)
        else:
            x = planes[rows].detach()
        names = dict(network.named_modules())
        recorded = list(dict.fromkeys(_record_names(record)))
        layer, parsed, conditions = None, [], None
        if condition is not None:
            layer, parsed, conditions = _parse_condition(condition, names)
        taps = list(dict.fromkeys(recorded + ([layer] if layer else [])))
        store: dict[str, torch.Tensor] = {}
        tree = overlay(tree, {t: (lambda m, t=t: _Tap(m, t, store)) for t in taps})

        # Gradients are needed even when the caller is under no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.to(dtype=dtype, device=device).clone().requires_grad_(True)
            outputs = tree(x)
            output, seed, values, indices = select_output(outputs, target.kind, target.indices, legal)
            missing = [t for t in taps if t not in store]
            if missing:
                raise LensError(
                    f"modules {missing} gave no tensor output in the forward pass; record or condition on another"
                )
            if layer is None:
                grads = torch.autograd.grad(output, [x] + [store[t] for t in recorded], seed)
                layer_rel: dict[str, torch.Tensor] = {
                    t: (store[t].detach() * g) for t, g in zip(recorded, grads[1:], strict=True)
                }
                with torch.no_grad():
                    relevance = x.detach() * grads[0]
            else:
                y = store[layer]
                outs = [x, y] + [store[t] for t in recorded if t != layer]
                grads = torch.autograd.grad(output, outs, seed, retain_graph=True)
                grad_y = grads[1]
                layer_rel = {layer: y.detach() * grad_y} if layer in recorded else {}
                for t, g in zip([t for t in recorded if t != layer], grads[2:], strict=True):
                    layer_rel[t] = store[t].detach() * g
                seeds = _condition_seeds(grad_y, parsed, n)
                (gx,) = torch.autograd.grad(y, x, seeds, is_grads_batched=True)
                k = len(parsed)
                with torch.no_grad():
                    # [K, N, ...] -> [N, K, ...] -> [N*K, ...]: board-major rows.
                    relevance = (x.detach()[None] * gx).transpose(0, 1).reshape(n * k, *x.shape[1:])
                layer_rel = {t: v.repeat_interleave(k, 0) for t, v in layer_rel.items()}
                boards = [b for b in boards for _ in range(k)]
                values = values.repeat_interleave(k, 0)
                indices = None if indices is None else indices.repeat_interleave(k, 0)
        return Relevance(
            planes=relevance,
            target=values,
            boards=boards,
            input_format=input_format,
            target_name=target.kind,
            policy_indices=indices if target.kind == "policy" else None,
            layers=layer_rel,
            conditions=conditions,
            method=self.method_name,
            outputs=_rows_of(outputs, n, max(len(parsed), 1)),
        )


# --------------------------------------------------------------------------------------------------------------
# Recording and conditions


def _rows_of(outputs: Mapping[str, Any], n: int, k: int) -> dict[str, torch.Tensor]:
    """The network's per-board outputs, detached (each repeated ``k`` times for ``k`` conditions)."""
    rows = {}
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            value = value.detach()
            rows[name] = value.repeat_interleave(k, 0) if k > 1 else value
    return rows


def _record_names(record: Any) -> list[str]:
    if record is None:
        return []
    if isinstance(record, str):
        return [record]
    if not isinstance(record, Sequence) or not all(isinstance(r, str) for r in record):
        raise LensError(f"record={record!r} must be a module name or a sequence of them")
    return list(record)


def _check_name(name: str, names: Mapping[str, nn.Module]) -> None:
    if name in names and name:
        return
    import difflib

    close = difflib.get_close_matches(name, [n for n in names if n], n=3, cutoff=0.6)
    hint = f"; did you mean {close}?" if close else f"; modules include {[n for n in names if n][:8]}"
    raise LensError(f"no module named {name!r} in the network{hint}")


def _parse_condition(condition: Any, names: Mapping[str, nn.Module]) -> tuple[str, list, list[dict]]:
    """``(module name, [(channels or None, tokens or None)] per condition, conditions)`` of ``condition``."""
    sets = [condition] if isinstance(condition, Mapping) else condition
    if not isinstance(sets, Sequence) or isinstance(sets, str) or not sets:
        raise LensError(f"condition={condition!r} must be {{module: channels}} or a non-empty list of them")
    layers = set()
    for cond in sets:
        if not isinstance(cond, Mapping) or len(cond) != 1:
            raise LensError(
                f"each condition must map exactly one module name to its channels, e.g. {{'block3/conv2/relu': "
                f"[17, 40]}}; got {cond!r}"
            )
        layers.update(cond)
    if len(layers) != 1:
        raise LensError(f"the conditions of one call must all name one module; got {sorted(layers)}")
    (layer,) = layers
    if not isinstance(layer, str):
        raise LensError(f"condition key {layer!r} must be a module name")
    _check_name(layer, names)
    parsed = []
    for cond in sets:
        spec = cond[layer]
        if isinstance(spec, Mapping):
            extra = set(spec) - {"channels", "tokens"}
            if extra:
                raise LensError(f"condition on {layer!r} has unknown keys {sorted(extra)}; use 'channels', 'tokens'")
            channels, tokens = spec.get("channels"), spec.get("tokens")
        else:
            channels, tokens = spec, None
        parsed.append((_index_list(channels, layer, "channel"), _index_list(tokens, layer, "token", 64)))
    return layer, parsed, [dict(c) for c in sets]


def _index_list(values: Any, layer: str, what: str, bound: int | None = None) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if not isinstance(values, Sequence) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise LensError(f"{what}s of the condition on {layer!r} must be integers, not {values!r}")
    if not values:
        raise LensError(f"the condition on {layer!r} selects no {what}")
    if bound is not None and not all(0 <= v < bound for v in values):
        raise LensError(f"{what}s of the condition on {layer!r} must lie in [0, {bound}), not {values!r}")
    return list(values)


def _condition_seeds(grad_y: torch.Tensor, parsed: list[tuple[list[int] | None, ...]], n: int) -> torch.Tensor:
    """``[K, *grad_y.shape]``: the gradient at the conditioned layer, kept only where each condition selects.

    Layouts: a token stream (the attention body's ``[N*64, E]`` or ``[N, 64, E]``) has its channels last and its
    tokens (squares, network orientation) in the 64 rows of each board; anything else (``[N, C, 8, 8]``,
    attention weights ``[N, heads, 64, 64]``) has its channels in dimension 1 and its tokens in the rest.
    """
    shape = grad_y.shape
    if grad_y.dim() < 2:
        raise LensError(f"cannot condition on an output of shape {tuple(shape)}: it has no channel dimension")
    tokens_first = (grad_y.dim() == 2 and shape[0] == n * 64) or (grad_y.dim() == 3 and shape[1] == 64)
    channels = shape[-1] if tokens_first else shape[1]
    spatial = 64 if tokens_first else int(torch.Size(shape[2:]).numel())
    masks = []
    for chans, tokens in parsed:
        if chans is not None and not all(0 <= c < channels for c in chans):
            raise LensError(f"channels {chans} of the condition are outside [0, {channels}) for shape {tuple(shape)}")
        if tokens is not None and spatial != 64:
            raise LensError(f"tokens need 64 squares per channel; the output has shape {tuple(shape)}")
        keep_c = torch.zeros(channels, dtype=grad_y.dtype, device=grad_y.device)
        keep_c[slice(None) if chans is None else chans] = 1.0
        keep_t = torch.zeros(spatial, dtype=grad_y.dtype, device=grad_y.device)
        keep_t[slice(None) if tokens is None else tokens] = 1.0
        if tokens_first:
            masks.append((keep_t[:, None] * keep_c[None, :]).expand(n, 64, channels).reshape(shape))
        else:
            masks.append((keep_c[:, None] * keep_t[None, :]).reshape(shape[1:]).expand(shape))
    return torch.stack(masks) * grad_y[None]


# --------------------------------------------------------------------------------------------------------------
# Per-layer rules as data


class _PartialRule:
    """A layer rule given as a dict without ``bias``: the lens's ``bias`` fills it in."""

    __slots__ = ("rule", "bias", "gamma", "alpha", "beta")

    def __init__(self, rule: str = "epsilon", gamma: float = 0.25, alpha: float = 1.0, beta: float = 0.0) -> None:
        LayerRule(rule, "absorb" if rule != "alphabeta" else "ignore", gamma, alpha, beta)  # validates
        self.rule, self.bias, self.gamma, self.alpha, self.beta = rule, None, float(gamma), float(alpha), float(beta)

    def __repr__(self) -> str:
        text = f"{{'rule': {self.rule!r}"
        if self.rule == "gamma":
            text += f", 'gamma': {self.gamma!r}"
        elif self.rule == "alphabeta":
            text += f", 'alpha': {self.alpha!r}, 'beta': {self.beta!r}"
        return text + "}"


def _parse_layer_rules(layer_rules: Any) -> tuple[tuple[str, Any], ...]:
    """``((pattern, LayerRule or _PartialRule), ...)`` from the ``layer_rules`` option, checked."""
    if isinstance(layer_rules, (str, Mapping)) or not isinstance(layer_rules, Sequence):
        raise LensError(f"layer_rules={layer_rules!r} must be a sequence of (pattern, rule) pairs")
    out = []
    for item in layer_rules:
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2 or not isinstance(item[0], str):
            raise LensError(f"each layer rule must be a (pattern, rule) pair, e.g. ('inputconv', {{'rule': 'gamma'}}); "
                            f"got {item!r}")
        pattern, rule = item
        try:
            if isinstance(rule, LayerRule):
                parsed = rule
            elif isinstance(rule, Mapping):
                extra = set(rule) - {"rule", "bias", "gamma", "alpha", "beta"}
                if extra:
                    raise ValueError(f"unknown keys {sorted(extra)}")
                parsed = LayerRule(**rule) if "bias" in rule else _PartialRule(**rule)
            else:
                raise ValueError(f"a rule must be a LayerRule or a dict, not {type(rule).__name__}")
        except (TypeError, ValueError) as error:
            raise LensError(f"layer rule for {pattern!r}: {error}") from None
        out.append((pattern, parsed))
    return tuple(out)


def _layer_rules_repr(rules: tuple[tuple[str, Any], ...]) -> str:
    return "(" + "".join(f"({p!r}, {r!r}), " for p, r in rules).rstrip(", ") + ("," if len(rules) == 1 else "") + ")"


# --------------------------------------------------------------------------------------------------------------
# Presets chosen by the search (benchmarks/search_composites.py; the README's benchmark section has the figures)

#: The default for residual nets (networks with convolutions). Chosen by piece removal on maia-1900 in two
#: searches on self-play positions of seed 1 (``benchmarks/search_composites.py``, 71 settings; then
#: ``benchmarks/faithfulness_ideas.py`` for issue 23) and confirmed on seeds never used for a choice (the
#: README's benchmark section and ``docs/faithfulness.md`` have the figures):
#:
#: - ``inputconv`` and each residual block's ``conv1`` (the convolutions that feed a ReLU): generalized gamma,
#:   ``gamma=1`` and ``gamma=0.1``;
#: - the policy head's convolutions: generalized gamma, ``gamma=0.1``;
#: - everything else (each block's ``conv2``, the value head): the epsilon rule (the plain gradient); every bias
#:   keeps its share; the squeeze-excitation shift propagates; ``epsilon=1e-6``;
#: - the squeeze-excitation gate: held constant for moves; for the value-head targets it takes half of the
#:   gated product's relevance on to the block's pooled features (``se_gate``), which made the value's maps more
#:   faithful and the moves' less;
#: - every ReLU that does not follow a gamma convolution (each block's output and its squeeze-excitation ReLU,
#:   the value head's; the policy head's ``conv1`` ReLU matches ``*/conv1/relu``) passes the signal through
#:   ``sigmoid(2 x)`` instead of the identity rule's step (``relu_beta``), which made the maps of both targets
#:   more faithful on every held-out set. Smoothing the ReLUs after the gamma convolutions as well added nothing
#:   measurable and would take the gamma rule off its fast
#:   path (their outputs below zero would then carry relevance).
#:
#: The gamma rule on ``conv2`` (the default before issue 23) cost a stacked 128-channel transposed convolution
#: per block for no measurable gain on held-out positions. The composite does not conserve: its maps sum to a
#: fraction of the explained number, because leaving the biases out made the value's maps far less faithful in
#: the search. :data:`RESIDUAL_CONSERVING` conserves instead.
RESIDUAL_DEFAULT: dict[str, Any] = {
    "epsilon": 1e-6,
    "softmax": "attnlrp",
    "bias": "absorb",
    "se_shift": "propagate",
    "se_gate": {"policy": SE_GATE_CONSTANT, "value": 0.5},
    # the ReLUs after the gamma convolutions keep the identity rule (the patterns are tried in order)
    "relu_beta": (("inputconv/relu", math.inf), ("*/conv1/relu", math.inf), ("*", 2.0)),
    "layer_rules": (
        ("inputconv", {"rule": "gamma", "gamma": 1.0}),
        ("block*/conv1", {"rule": "gamma", "gamma": 0.1}),
        ("policy/conv*", {"rule": "gamma", "gamma": 0.1}),
    ),
}

#: The conserving counterpart of :data:`RESIDUAL_DEFAULT`: the same layer rules (the gate held constant), a
#: sign-aware rule (generalized gamma, ``gamma=0.1``) on every other convolution and dense layer (each block's
#: ``conv2``, the value head), and every bias left out of the propagation, so that each map sums to the explained
#: number up to the stabiliser (on 200 maia-1900 self-play positions, float32, ``epsilon=1e-6``: median relative
#: error 4e-6 for the top move, 3e-5 for the value, worst 1e-4 and 1e-2). Biases that an ONNX graph adds as
#: separate ops (not ``nn.Linear``) keep their share. With plain epsilon rules a bias left out divides by
#: ``z - b``, which nears zero where contributions cancel, and relevance explodes; the sign-aware rules keep the
#: denominators away from zero. Less faithful than the default on the value (see the README).
RESIDUAL_CONSERVING: dict[str, Any] = {
    **RESIDUAL_DEFAULT,
    "bias": "ignore",
    "se_gate": SE_GATE_CONSTANT,  # a gate's share would leave the sigmoid's value at 0 holding relevance
    "relu_beta": math.inf,  # the smoothed ReLU rule does not conserve
    "layer_rules": tuple(RESIDUAL_DEFAULT["layer_rules"]) + (("*", {"rule": "gamma", "gamma": 0.1}),),
}

#: The default for attention-body nets (no convolutions): AttnLRP with epsilon rules, biases absorbing their
#: share. Measured on the trained attention net ``assets/nets/bt-distilled.pb.gz`` (``benchmarks/
#: search_attention.py``, 60 held-out maia-1900 self-play positions, paired 95% bootstrap intervals): piece-removal
#: ABPC level with occlusion's (move -0.51 [-1.27, +0.17], value +0.02 [-0.03, +0.10]) and above gradient x input
#: on both targets (+2.25 [0.93, 4.24], +0.29 [0.20, 0.38]). Of 28 settings the gamma rule (0.25) on the FFN
#: dense layers scored best (move -0.14, value +0.04 vs occlusion), but lc0's ONNX exports hold those layers as
#: MatMul and Add nodes that layer rules do not reach, so it would make the two loaders' maps differ; it is not
#: the default. Leaving the biases out ruins this net's maps.
ATTENTION_DEFAULT: dict[str, Any] = {
    "epsilon": 1e-6,
    "softmax": "attnlrp",
    "bias": "absorb",
    "se_shift": "propagate",
    "se_gate": SE_GATE_CONSTANT,
    "relu_beta": math.inf,
    "layer_rules": (),
}

#: Every named preset: ``LrpLens(**PRESETS[name])``.
PRESETS: dict[str, dict[str, Any]] = {
    "epsilon": EPSILON,
    "gamma": GAMMA_COMPOSITE,
    "residual_default": RESIDUAL_DEFAULT,
    "residual_conserving": RESIDUAL_CONSERVING,
    "attention_default": ATTENTION_DEFAULT,
}
