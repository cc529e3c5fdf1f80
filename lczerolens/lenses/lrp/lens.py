"""The LRP lens: patch a network's rule-bearing ops for one call and read relevance off input x gradient.

A composite is data: a mapping from the op classes of :mod:`lczerolens.model.ops` to factories that build the
rule module replacing one op instance. Everything else in a network is linear in each input and keeps its plain
gradient, which in the convention of :mod:`lczerolens.lenses.lrp.rules.epsilon` already is the LRP rule.

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
    as_boards,
    explain_dtype,
    legal_indices,
    param_like,
    select_output,
)
from lczerolens.lenses.lrp.rules.epsilon import (
    BilinearMatMulEpsilon,
    CPMatMul,
    ElementwiseMultiplyUniform,
    GammaConv2d,
    GateRule,
    IdentityRule,
    LayerNormRule,
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
]

#: A composite: op class -> factory building the rule module that replaces one instance of it.
Composite = Mapping[type, Callable[[nn.Module], nn.Module]]

#: Softmax modes: AttnLRP's softmax and bilinear rules, or CP-LRP (attention weights held constant).
SOFTMAX_MODES = ("attnlrp", "cp")

#: Rules for ``nn.Conv2d``: the plain gradient (epsilon rule, the default) or the gamma rule.
CONV_RULES = ("epsilon", "gamma")

#: The gamma composite for lc0's residual nets, as ``LrpLens(**GAMMA_COMPOSITE)``: the gamma rule on the
#: convolutions that feed a ReLU directly (the input conv and each block's first conv), epsilon rules elsewhere.
#: The most faithful setting measured on maia-1900 (see the README's benchmark); it needs those convolutions.
GAMMA_COMPOSITE: dict[str, Any] = {
    "conv_rule": "gamma",
    "gamma": 0.25,
    "gamma_layers": ("inputconv", "block*/conv1"),
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


def _identity_rule(epsilon: float) -> Callable[[nn.Module], nn.Module]:
    return lambda op: IdentityRule(op.kind, epsilon)


def _bilinear_rule(epsilon: float) -> Callable[[nn.Module], nn.Module]:
    return lambda op: MatrixMultiplicationEpsilon(epsilon)


def _cp_matmul_rule(epsilon: float) -> Callable[[nn.Module], nn.Module]:
    def build(op: nn.Module) -> nn.Module:
        if op.attention_operand is None:
            return BilinearMatMulEpsilon(epsilon)
        return CPMatMul(op.attention_operand)

    return build


def make_composite(epsilon: float = 1e-6, softmax: str = "attnlrp") -> dict[type, Callable[[nn.Module], nn.Module]]:
    """The default composite: a rule for each class of :data:`lczerolens.model.ops.RULE_OPS`.

    - ``Activation``: identity rule, stabilised by ``epsilon`` (the epsilon rule of the layer before it).
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
        ops.Activation: _identity_rule(epsilon),
        ops.Gate: lambda op: GateRule(),
        ops.Mul: lambda op: ElementwiseMultiplyUniform(),
        ops.MatMul: _bilinear_rule(epsilon) if softmax == "attnlrp" else _cp_matmul_rule(epsilon),
        ops.Softmax: lambda op: SoftmaxEpsilon(op.dim),
        ops.LayerNorm: lambda op: LayerNormRule(op.weight, op.bias, op.eps),
    }



#: What ``condition=`` accepts: ``{module name: channels}`` or a list of them (one map each).
ConditionLike = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class _Tap(nn.Module):
    """Wraps one module of an explaining tree for one call: its output goes into the call's store."""

    lrp_rule = True

    def __init__(self, inner: nn.Module, name: str, store: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.tap_name = name
        self.store = store

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise LensError(f"module {self.tap_name!r} returns {type(out).__name__}, not a tensor; choose another")
        self.store[self.tap_name] = out
        return out


class LrpLens(AttributionLens):
    """Layer-wise relevance propagation with epsilon rules (AttnLRP for attention, or CP-LRP).

    The lens explains on its own copy of the network's module tree, with the rule modules in place of the
    nonlinear ops; that copy shares every parameter with the model and is cached per model (rebuilt when the
    model's modules change). The user's model is never modified, so several lenses, plain forwards and plain
    gradients can run on one model at the same time, from several threads, and stay exact.

    Parameters
    ----------
    epsilon : float
        Stabiliser of every division by a pre-activation (see :func:`~lczerolens.lenses.lrp.rules.epsilon.stabilize`).
    softmax : str
        ``"attnlrp"`` (AttnLRP's softmax and bilinear rules; relevance also flows through attention weights) or
        ``"cp"`` (CP-LRP: attention weights held constant; conserves relevance when biases are zero).
    composite : mapping, optional
        Op class -> rule-module factory, replacing :func:`make_composite`'s default.
    conv_rule : str
        ``"epsilon"`` (default: convolutions keep their plain gradient, the epsilon rule) or ``"gamma"``: the
        gamma rule (:class:`~lczerolens.lenses.lrp.rules.epsilon.GammaConv2d`) on the ``nn.Conv2d`` modules
        that ``gamma_layers`` selects, favouring positive contributions (an LRP composite: gamma low, epsilon
        high). On maia-1900 (piece removal, 200 positions) ``gamma=0.25`` on the convolutions that feed a ReLU
        directly, ``gamma_layers=("inputconv", "block*/conv1")``, raised ABPC over plain epsilon-LRP by 0.09
        (top move) and 0.16 (value), both paired intervals above zero; every ``nn.Conv2d`` (the default) helps
        less (move +0.07, value +0.01). A network without convolutions raises :class:`LensError`.
    gamma : float
        The gamma rule's ``gamma >= 0`` (``W + gamma W+``); used with ``conv_rule="gamma"``.
    gamma_layers : sequence of str, optional
        ``fnmatch`` patterns on module names (e.g. ``("inputconv", "block0/*")``) choosing the convolutions
        under the gamma rule; ``None`` means every ``nn.Conv2d``. A pattern that matches no convolution raises
        :class:`~lczerolens.errors.LensError`.

    Example
    -------
    >>> lens = LrpLens(epsilon=1e-6, softmax="cp")
    >>> lens
    LrpLens(epsilon=1e-06, softmax='cp')
    >>> LrpLens(conv_rule="gamma", gamma=0.25, gamma_layers=["inputconv"])
    LrpLens(epsilon=1e-06, softmax='attnlrp', conv_rule='gamma', gamma=0.25, gamma_layers=('inputconv',))
    """

    method_name = "LRP relevance"

    def __init__(
        self,
        epsilon: float = 1e-6,
        softmax: str = "attnlrp",
        composite: Composite | None = None,
        *,
        conv_rule: str = "epsilon",
        gamma: float = 0.25,
        gamma_layers: Sequence[str] | None = None,
    ) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise LensError(f"epsilon={epsilon!r} must be a positive number (e.g. 1e-6)")
        if conv_rule not in CONV_RULES:
            raise LensError(f"conv_rule={conv_rule!r} is not a convolution rule; use one of {CONV_RULES}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise LensError(f"gamma={gamma!r} must be a number >= 0 (e.g. 0.25)")
        if gamma_layers is not None:
            if isinstance(gamma_layers, str) or not all(isinstance(p, str) for p in gamma_layers):
                raise LensError(
                    f"gamma_layers={gamma_layers!r} must be a sequence of module-name patterns, e.g. ['inputconv']"
                )
            gamma_layers = tuple(gamma_layers)
        self.epsilon = float(epsilon)
        self.softmax = softmax
        self.conv_rule = conv_rule
        self.gamma = float(gamma)
        self.gamma_layers = gamma_layers
        self._gamma_factory = lambda op: GammaConv2d(op, self.gamma, self.epsilon)
        default = make_composite(self.epsilon, softmax)
        self.composite: dict[type, Callable[[nn.Module], nn.Module]] = (
            default if composite is None else dict(composite)
        )
        # The explaining tree of each network this lens has seen (weakly keyed by the network).
        self._trees = ShadowCache(self._build_tree)

    def __repr__(self) -> str:
        text = f"LrpLens(epsilon={self.epsilon!r}, softmax={self.softmax!r}"
        if self.conv_rule != "epsilon":
            text += f", conv_rule={self.conv_rule!r}, gamma={self.gamma!r}, gamma_layers={self.gamma_layers!r}"
        return text + ")"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_trees", None)
        state.pop("_gamma_factory", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._gamma_factory = lambda op: GammaConv2d(op, self.gamma, self.epsilon)
        self._trees = ShadowCache(self._build_tree)

    # ----------------------------------------------------------------------------------------------------------
    # The explaining tree

    def _factory(self, module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
        for cls in type(module).__mro__:
            if cls in self.composite:
                return self.composite[cls]
        return None

    def check(self, network: nn.Module) -> None:
        """Raise :class:`LensError` if ``network`` holds a leaf module the lens cannot explain.

        Leaves pass when the composite has a rule for them, when they are standard linear torch modules
        (:data:`LINEAR_MODULES`), when they declare ``lrp_linear = True``, or when they are rule modules already.
        An fx graph (such as onnx2torch's) that calls a nonlinear function inline fails too.
        """
        self._plan(network_of(network))

    def _check_module(self, path: str, module: nn.Module) -> None:
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
        if self._factory(module) is not None or getattr(module, "lrp_rule", False) is True:
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

    def _plan(self, network: nn.Module) -> list[tuple[str, str, nn.Module, Callable]]:
        """Check every module and list the swaps (parent path, child name, op, factory)."""
        swaps = []
        gamma = self.conv_rule == "gamma"
        used: set[str] = set()
        convs = 0
        for path, module in network.named_modules():
            self._check_module(path, module)
            for name, child in module._modules.items():
                if child is None:
                    continue
                factory = self._factory(child)
                if factory is None and gamma and isinstance(child, nn.Conv2d):
                    convs += 1
                    if self._gamma_selects(f"{path}.{name}" if path else name, used):
                        factory = self._gamma_factory
                if factory is not None:
                    swaps.append((path, name, child, factory))
        if gamma and convs == 0:
            raise LensError(
                "conv_rule='gamma' needs convolutions (nn.Conv2d), and this network has none (an attention-body "
                "net?); use the default LrpLens() for it"
            )
        if gamma and self.gamma_layers is not None:
            unused = [p for p in self.gamma_layers if p not in used]
            if unused:
                names = [n for n, m in network.named_modules() if isinstance(m, nn.Conv2d)]
                raise LensError(
                    f"gamma_layers patterns {unused} match no nn.Conv2d of the network; its convolutions are "
                    f"{names[:12]}{' ...' if len(names) > 12 else ''}"
                )
        return swaps

    def _gamma_selects(self, name: str, used: set[str]) -> bool:
        """Whether the convolution ``name`` takes the gamma rule (recording the patterns that matched)."""
        if self.gamma_layers is None:
            return True
        hits = [p for p in self.gamma_layers if fnmatch.fnmatchcase(name, p)]
        used.update(hits)
        return bool(hits)

    def _build_tree(self, network: nn.Module) -> nn.Module:
        """A shadow of ``network`` with every rule-bearing op replaced by its rule module.

        Half-precision networks are explained in float32 (their relevance in float16 or bfloat16 is off by
        several percent of the map's scale): the tree then holds float32 copies of the weights.
        """
        plan = self._plan(network)
        dtype = explain_dtype(network)
        tree = shadow(network, dtype)
        for path, name, _, factory in plan:
            parent = tree.get_submodule(path) if path else tree
            op = parent._modules[name]  # the shadow's op: its parameters are the model's (or float32 copies)
            rule = factory(op)
            rule.train(op.training)
            parent._modules[name] = rule
        return tree

    def explaining_network(self, model: nn.Module) -> nn.Module:
        """The network the lens runs for ``model``: the rule modules in place, the parameters shared.

        Its forward gives the same outputs as the model's; its gradient, times the input, is the relevance.
        The model itself is never changed. Raises :class:`LensError` if a module cannot be explained.

        Example
        -------
        >>> tree = LrpLens().explaining_network(model)  # doctest: +SKIP
        >>> x = planes.requires_grad_(True)  # doctest: +SKIP
        >>> (x * torch.autograd.grad(tree(x)["value_logit"].sum(), x)[0]).sum()  # doctest: +SKIP
        """
        return self._trees.get(network_of(model))

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
        legal = legal_indices(boards, input_format) if target.kind == "policy" and target.indices is None else None
        tree = self.explaining_network(network)
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
                raise LensError(f"modules {missing} did not run in the forward pass; record another module")
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
