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
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import chess
import torch
from torch import nn

from lczerolens.errors import InputShapeError, InvalidMoveError, LensError
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

#: Targets that name a head output instead of a move.
HEAD_TARGETS = ("value", "win", "draw", "loss", "mlh")

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


def _signature(op: nn.Module, factory: Callable) -> tuple:
    """What a rule module depends on: the factory, the op's plain settings and its parameter objects."""
    settings = tuple((k, v) for k, v in op.__dict__.items() if type(v) in _PLAIN)
    return id(factory), settings, tuple(map(id, op._parameters.values()))


_PLAIN = frozenset((bool, int, float, str, type(None)))


def _network_of(model: nn.Module) -> nn.Module:
    """The network inside an ``LczeroModel`` (or the network itself)."""
    inner = getattr(model, "network", None)
    return inner if isinstance(inner, nn.Module) else model


def _param_like(network: nn.Module) -> tuple[torch.dtype, torch.device]:
    for tensor in network.parameters():
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    for tensor in network.buffers():
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


class LrpLens:
    """Layer-wise relevance propagation with epsilon rules (AttnLRP for attention, or CP-LRP).

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
        less (move +0.07, value +0.01).
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
        # One factory object per lens: the rule cache keys on it.
        self._gamma_factory = lambda op: GammaConv2d(op, self.gamma, self.epsilon)
        # Rule modules built for an op, reused while the op is unchanged (building them costs more than a
        # small batch's rules do).
        self._rules: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        default = make_composite(self.epsilon, softmax)
        self.composite: dict[type, Callable[[nn.Module], nn.Module]] = (
            default if composite is None else dict(composite)
        )

    def __repr__(self) -> str:
        text = f"LrpLens(epsilon={self.epsilon!r}, softmax={self.softmax!r}"
        if self.conv_rule != "epsilon":
            text += f", conv_rule={self.conv_rule!r}, gamma={self.gamma!r}, gamma_layers={self.gamma_layers!r}"
        return text + ")"

    # ----------------------------------------------------------------------------------------------------------
    # Patching

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
        self._plan(network)

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

    def _plan(self, network: nn.Module) -> list[tuple[nn.Module, str, nn.Module, Callable]]:
        """Check every module and list the swaps (parent, name, op, factory); raises before anything changes."""
        swaps = []
        gamma = self.conv_rule == "gamma"
        used: set[str] = set()
        for path, module in network.named_modules():
            self._check_module(path, module)
            for name, child in module._modules.items():
                if child is not None:
                    factory = self._factory(child)
                    if factory is None and gamma and isinstance(child, nn.Conv2d):
                        if self._gamma_selects(f"{path}.{name}" if path else name, used):
                            factory = self._gamma_factory
                    if factory is not None:
                        swaps.append((module, name, child, factory))
        if gamma and self.gamma_layers is not None:
            unused = [p for p in self.gamma_layers if p not in used]
            if unused:
                convs = [n for n, m in network.named_modules() if isinstance(m, nn.Conv2d)]
                raise LensError(
                    f"gamma_layers patterns {unused} match no nn.Conv2d of the network; its convolutions are "
                    f"{convs[:12]}{' ...' if len(convs) > 12 else ''}"
                )
        return swaps

    def _gamma_selects(self, name: str, used: set[str]) -> bool:
        """Whether the convolution ``name`` takes the gamma rule (recording the patterns that matched)."""
        if self.gamma_layers is None:
            return True
        hits = [p for p in self.gamma_layers if fnmatch.fnmatchcase(name, p)]
        used.update(hits)
        return bool(hits)

    def _rule(self, op: nn.Module, factory: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """The rule module for ``op``, reused across calls while ``op``'s settings and parameters stay the same."""
        signature = _signature(op, factory)
        hit = self._rules.get(op)
        if hit is not None and hit[0] == signature:
            return hit[1]
        rule = factory(op)
        rule.train(op.training)
        self._rules[op] = (signature, rule)
        return rule

    @contextmanager
    def patched(self, network: nn.Module) -> Iterator[nn.Module]:
        """Swap every rule-bearing op of ``network`` for its rule module for the length of the block.

        Everything is put back in ``finally``: the same module objects under the same names, so outputs are
        bit-identical afterwards. Raises :class:`LensError` (before touching anything) if a module is unknown.

        Example
        -------
        >>> lens = LrpLens()
        >>> with lens.patched(model.network):  # doctest: +SKIP
        ...     out = model.network(planes)
        """
        plan = self._plan(network)
        done: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for parent, name, op, factory in plan:
                parent._modules[name] = self._rule(op, factory)
                done.append((parent, name, op))
            yield network
        finally:
            for parent, name, op in reversed(done):
                parent._modules[name] = op

    # ----------------------------------------------------------------------------------------------------------
    # Relevance

    def relevance(
        self,
        model: nn.Module,
        boards: Any,
        target: Any = None,
        *,
        planes: torch.Tensor | None = None,
    ) -> Relevance:
        """Explain one output per board with LRP: one forward and one backward for the whole batch.

        Parameters
        ----------
        model : LczeroModel or network
            An ``LczeroModel`` or any network following the network contract (``network(planes)`` returns a
            dict of head outputs and ``network.input_format`` is set).
        boards : LczeroBoard or sequence of LczeroBoard
            The positions (with their move history).
        target : None, move, sequence of moves, or str
            ``None``: each board's legal move with the highest policy logit. A move (``chess.Move``, UCI string
            or policy index ``int``), or one per board for a batch. ``"value"`` (``win - loss`` logit for WDL
            nets, the pre-tanh value logit otherwise), ``"win"``, ``"draw"``, ``"loss"`` (WDL logits before the
            softmax), ``"mlh"`` (moves left).
        planes : torch.Tensor, optional
            ``[N, 112, 8, 8]`` input to explain instead of the boards' own encoding (e.g. a perturbed input);
            the boards still decode moves and orientation.

        Returns
        -------
        Relevance
            ``.planes`` ``[N, 112, 8, 8]`` (network orientation), ``.squares`` ``[N, 8, 8]`` (board orientation),
            ``.target`` ``[N]`` (the explained output's value).

        Example
        -------
        >>> rel = LrpLens().relevance(model, [board1, board2], target=["e2e4", "e7e5"])  # doctest: +SKIP
        """
        from lczerolens.board import LczeroBoard, encode_boards

        network = _network_of(model)
        input_format = getattr(model, "input_format", None) or getattr(network, "input_format", None)
        if input_format is None:
            raise LensError(f"{type(model).__name__} has no input_format: pass an LczeroModel or a network")
        board_list = _as_boards(boards, LczeroBoard)
        n = len(board_list)
        kind, indices = _parse_target(target, board_list, input_format)
        heads = tuple(getattr(network, "heads", ()) or ())
        _check_head(kind, heads)
        legal = None
        if kind == "policy" and indices is None:
            legal = [board.legal_move_indices(input_format) for board in board_list]
            for board, moves in zip(board_list, legal, strict=True):
                if not len(moves):
                    raise LensError(f"board {board.fen()!r} has no legal move to explain; choose target='value'")

        dtype, device = _param_like(network)
        if planes is None:
            x = encode_boards(board_list, input_format)
        else:
            if not isinstance(planes, torch.Tensor) or tuple(planes.shape) != (n, 112, 8, 8):
                shape = tuple(planes.shape) if isinstance(planes, torch.Tensor) else type(planes).__name__
                raise InputShapeError(f"planes must be a tensor of shape ({n}, 112, 8, 8) for {n} boards, not {shape}")
            x = planes.detach()
        # Gradients are needed even when the caller is under no_grad or inference_mode.
        with self.patched(network), torch.inference_mode(False), torch.enable_grad():
            x = x.to(dtype=dtype, device=device).clone().requires_grad_(True)
            outputs = network(x)
            output, grad_output, values, indices = _select(outputs, kind, indices, legal)
            (grad,) = torch.autograd.grad(output, x, grad_output)

        with torch.no_grad():
            relevance = x.detach() * grad
        return Relevance(
            planes=relevance,
            target=values,
            boards=board_list,
            input_format=input_format,
            target_name=kind,
            policy_indices=indices if kind == "policy" else None,
        )


# --------------------------------------------------------------------------------------------------------------
# Target handling


def _as_boards(boards: Any, board_cls: type) -> list:
    if isinstance(boards, chess.Board):
        boards = [boards]
    if isinstance(boards, torch.Tensor):
        raise InputShapeError(
            "relevance needs the boards to decode moves and orientation; pass them as `boards` and the tensor "
            "as `planes=`"
        )
    if not isinstance(boards, Sequence) or isinstance(boards, (str, bytes)):
        raise InputShapeError(f"boards must be an LczeroBoard or a sequence of them, not {type(boards).__name__}")
    board_list = list(boards)
    if not board_list:
        raise InputShapeError("boards is empty: pass at least one LczeroBoard")
    for i, board in enumerate(board_list):
        if isinstance(board, board_cls):
            continue
        if isinstance(board, chess.Board):
            board_list[i] = board_cls.from_board(board)  # its move stack is its history
            continue
        raise InputShapeError(
            f"boards[{i}] is a {type(board).__name__} ({board!r:.60}), not an LczeroBoard; "
            "build boards with lczerolens.LczeroBoard(fen)"
        )
    return board_list


def _parse_move(move: Any, board: chess.Board, input_format: Any) -> int:
    """Policy index of ``move`` (``chess.Move``, UCI string or index) in ``board``; raises if illegal."""
    if isinstance(move, bool):
        raise InvalidMoveError(f"target {move!r} is not a move")
    if isinstance(move, int):
        if not 0 <= move < 1858:
            raise InvalidMoveError(f"policy index {move} is outside [0, 1858)")
        return move
    if not isinstance(move, (str, chess.Move)):
        raise InvalidMoveError(f"target {move!r} is not a move: use a chess.Move, a UCI string or a policy index")
    # The board parses and checks legality (castling as king-takes-rook too); only the hint is the lens's own.
    try:
        return int(board.encode_move(move, input_format))
    except InvalidMoveError as error:
        hint = f" (a target is a legal move, one of {HEAD_TARGETS}, or None for the top move)"
        raise InvalidMoveError(f"target {move!r}: {error}{hint}") from None


def _parse_target(target: Any, boards: list, input_format: Any) -> tuple[str, torch.Tensor | None]:
    """``("policy", indices [N] or None for top move)`` or ``(head name, None)``."""
    n = len(boards)
    if target is None:
        return "policy", None
    if isinstance(target, str) and target in HEAD_TARGETS:
        return target, None
    if isinstance(target, (str, chess.Move, int)):
        if n != 1:
            raise InputShapeError(f"target {target!r} is one move for {n} boards; pass one move per board")
        return "policy", torch.tensor([_parse_move(target, boards[0], input_format)], dtype=torch.long)
    if isinstance(target, Sequence) or isinstance(target, torch.Tensor):
        moves = list(target.tolist() if isinstance(target, torch.Tensor) else target)
        if len(moves) != n:
            raise InputShapeError(f"got {len(moves)} target moves for {n} boards; pass one move per board")
        for move in moves:
            if isinstance(move, str) and move in HEAD_TARGETS:
                raise LensError(f"target {move!r} names a head: pass it alone (target={move!r}), not in a list")
        return "policy", torch.tensor(
            [_parse_move(m, b, input_format) for m, b in zip(moves, boards, strict=True)], dtype=torch.long
        )
    raise LensError(f"target {target!r} is not None, a move, a list of moves, nor one of {HEAD_TARGETS}")


def _check_head(kind: str, heads: tuple) -> None:
    if not heads:
        return  # undeclared: checked against the outputs
    need = {"policy": "policy", "win": "wdl", "draw": "wdl", "loss": "wdl", "mlh": "mlh"}.get(kind)
    if kind == "value" and not ({"wdl", "value"} & set(heads)):
        raise LensError(f"target 'value' needs a value or WDL head; this network has {heads}")
    if need is not None and need not in heads:
        raise LensError(f"target {kind!r} needs the {need!r} head; this network has {heads}")


def _output(outputs: Mapping[str, torch.Tensor], key: str, kind: str) -> torch.Tensor:
    if key not in outputs:
        raise LensError(f"target {kind!r} needs the network output {key!r}; it returns {sorted(outputs)}")
    return outputs[key]


def _select(
    outputs: Mapping[str, torch.Tensor],
    kind: str,
    indices: torch.Tensor | None,
    legal: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The output tensor to explain, its gradient seed, the explained values ``[N]`` and policy indices."""
    if kind == "policy":
        policy = _output(outputs, "policy", kind)
        if indices is None:
            indices = _top_legal(policy.detach(), legal)
        indices = indices.to(policy.device)
        seed = torch.zeros_like(policy)
        seed.scatter_(1, indices[:, None], 1.0)
        values = policy.detach().gather(1, indices[:, None])[:, 0]
        return policy, seed, values, indices.cpu()
    if kind == "mlh":
        mlh = _output(outputs, "mlh", kind)
        return mlh, torch.ones_like(mlh), mlh.detach().reshape(-1), None
    if kind == "value" and "wdl_logits" not in outputs:
        logit = _output(outputs, "value_logit", kind)
        return logit, torch.ones_like(logit), logit.detach().reshape(-1), None
    wdl = _output(outputs, "wdl_logits", kind)
    weights = {"value": (1.0, 0.0, -1.0), "win": (1.0, 0.0, 0.0), "draw": (0.0, 1.0, 0.0), "loss": (0.0, 0.0, 1.0)}
    w = torch.tensor(weights[kind], dtype=wdl.dtype, device=wdl.device)
    seed = w.expand_as(wdl).contiguous()
    return wdl, seed, wdl.detach() @ w, None


def _top_legal(policy: torch.Tensor, legal: list[torch.Tensor]) -> torch.Tensor:
    """Each board's legal move index with the highest logit (one masked argmax for the batch)."""
    rows = torch.repeat_interleave(torch.arange(len(legal)), torch.tensor([len(i) for i in legal]))
    mask = torch.zeros(policy.shape, dtype=torch.bool, device=policy.device)
    mask[rows.to(policy.device), torch.cat(legal).to(policy.device)] = True
    return policy.masked_fill(~mask, float("-inf")).argmax(dim=1)
