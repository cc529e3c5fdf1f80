"""Through the depth of a network: the logit lens and the tuned lens.

The residual stream of an lc0 network is the tensor each layer reads and writes: ``[N, F, 8, 8]`` between the
blocks of a residual net, the tokens ``[N, 64, E]`` between the encoder layers of an attention body. The
*logit lens* (nostalgebraist 2020) applies the network's own heads (policy, value) to the stream after each
layer, as if the remaining layers were skipped: where the final move and evaluation appear, and how they change
on the way. The *tuned lens* (Belrose et al. 2023) first sends each layer's stream through an affine map fitted
so that the heads' reading matches the network's final output.

Layers are named after lc0's node-name prefixes: the stream after the input embedding (``inputconv`` for a
residual net, ``attn_body`` for an attention body), then after each block (``block0``, ``block1``, ...) or encoder
layer (``encoder0``, ...). The last layer's entry is the network's own output.

Both native weights (``.pb.gz``) and lc0's ONNX exports work: the heads of an ONNX graph are its nodes that
depend on the last layer's output, cut out as a graph of their own.

Example
-------
>>> from lczerolens import LczeroBoard, LczeroModel
>>> from lczerolens.lenses import LogitLens
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> out = LogitLens().outputs(model, [LczeroBoard()])  # doctest: +SKIP
>>> list(out.keys())  # doctest: +SKIP
['inputconv', 'block0', 'block1', 'block2', 'block3', 'block4', 'block5']
>>> out["block2"]["wdl"].shape  # doctest: +SKIP
torch.Size([1, 3])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chess
import torch
from tensordict import TensorDict
from torch import fx, nn

from lczerolens.errors import InputShapeError, LensError, UnsupportedModelError
from lczerolens.lenses.base import BoardsLike, ModelLike, as_boards, check_batch_size, chunks, model_parts, param_like
from lczerolens.lenses.inside import SHADOWS
from lczerolens.lenses.tree import overlay

__all__ = ["LogitLens", "TunedLens", "depth_kl", "depth_layers"]


# ---------------------------------------------------------------------------------------------------------------
# Where the layers are
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """The layers of one network: ``names[i]`` is the stream that enters module ``entries[i]``.

    ``entries`` are the first module of each body layer and, last, the first module of the value head (which
    reads the last layer's output); ``channel_dim`` is the stream's channel dimension (1 for ``[N, F, 8, 8]``, -1
    for tokens).
    """

    names: tuple[str, ...]
    entries: tuple[str, ...]
    channel_dim: int


def _layout(network: nn.Module) -> _Layout:
    modules = dict(network.named_modules())
    if "block0/conv1" in modules and "value/conv" in modules:
        count = _count(modules, "block{}/conv1")
        names = ("inputconv", *(f"block{i}" for i in range(count)))
        entries = (*(f"block{i}/conv1" for i in range(count)), "value/conv")
        return _Layout(names, entries, 1)
    if "encoder0/mha/Q/w" in modules and "value/embed/matmul" in modules:
        count = _count(modules, "encoder{}/mha/Q/w")
        names = ("attn_body", *(f"encoder{i}" for i in range(count)))
        entries = (*(f"encoder{i}/mha/Q/w" for i in range(count)), "value/embed/matmul")
        return _Layout(names, entries, -1)
    raise UnsupportedModelError(
        f"{type(network).__name__} is not an lc0 residual net (modules block0/conv1 ... value/conv) nor an "
        "attention body (encoder0/mha/Q/w ... value/embed/matmul); the logit lens needs lc0's layer names. Load "
        "the network with LczeroModel.from_path from lc0 weights (.pb.gz) or an `lc0 leela2onnx` export"
    )


def _count(modules: dict[str, nn.Module], pattern: str) -> int:
    count = 0
    while pattern.format(count) in modules:
        count += 1
    return count


def depth_layers(model: ModelLike) -> list[str]:
    """The layer names the depth lenses use for ``model``, in order (the last one is the network's output).

    Example
    -------
    >>> depth_layers(model)  # doctest: +SKIP
    ['inputconv', 'block0', 'block1', 'block2', 'block3', 'block4', 'block5']
    """
    network, _ = model_parts(model)
    return list(_layout(network).names)


class _RecordInput(nn.Module):
    """Wraps a module of a shadow for one call: its first input goes into ``store[name]``."""

    def __init__(self, inner: nn.Module, name: str, store: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.tap_name = name
        self.store = store

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], torch.Tensor):
            self.store[self.tap_name] = args[0]
        return self.inner(*args, **kwargs)


def _streams(network: nn.Module, layout: _Layout, planes: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """Every layer's residual stream and the network's own raw outputs, from one forward pass (no gradients)."""
    store: dict[str, torch.Tensor] = {}

    def tap(name: str) -> Callable[[nn.Module], nn.Module]:
        return lambda module: _RecordInput(module, name, store)

    tree = overlay(SHADOWS.get(network), {entry: tap(entry) for entry in layout.entries})
    with torch.no_grad():
        raw = tree(planes)
    missing = [entry for entry in layout.entries if entry not in store]
    if missing:
        raise UnsupportedModelError(f"modules {missing} did not run in the forward pass; the logit lens cannot read it")
    return [store[entry] for entry in layout.entries], dict(raw.items())


def _heads_function(network: nn.Module, layout: _Layout) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``stream -> raw head outputs`` for the last layer's stream, without running any body layer."""
    native = getattr(network, "forward_heads", None)
    if callable(native):
        return native  # type: ignore[no-any-return]
    if isinstance(network, fx.GraphModule):
        return _graph_heads(network, layout.entries[-1])
    raise UnsupportedModelError(
        f"{type(network).__name__} has no forward_heads and is not a graph: its heads cannot be run alone. Load "
        "the network with LczeroModel.from_path (lc0 weights or an `lc0 leela2onnx` export)"
    )


def _graph_heads(gm: fx.GraphModule, entry: str) -> fx.GraphModule:
    """The nodes of ``gm`` computed from the input of module ``entry`` (the heads), as a graph of their own.

    Nodes that do not depend on the network's input (weights, constants) are copied along; a head node that
    depends on the input through another path than the last layer's output makes the split impossible.
    """
    nodes = list(gm.graph.nodes)
    entry_node = next((n for n in nodes if n.op == "call_module" and n.target == entry), None)
    if entry_node is None or not entry_node.args or not isinstance(entry_node.args[0], fx.Node):
        raise UnsupportedModelError(f"the graph has no node for module {entry!r} with a tensor input")
    stream = entry_node.args[0]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    from_input: set[fx.Node] = set(placeholders)
    heads: set[fx.Node] = {stream}
    seen_stream = False
    for node in nodes:
        if node is stream:
            seen_stream = True
            continue
        inputs = node.all_input_nodes
        if seen_stream and any(i in heads for i in inputs):
            heads.add(node)
        elif any(i in from_input for i in inputs):
            from_input.add(node)
    from_input.discard(stream)
    output = next(n for n in nodes if n.op == "output")
    # The nodes the outputs need, found backwards from the output and stopping at the stream.
    needed: set[fx.Node] = set()
    todo = [output]
    while todo:
        node = todo.pop()
        if node in needed or node is stream:
            continue
        needed.add(node)
        todo.extend(node.all_input_nodes)
    bad = sorted(n.name for n in needed if n in from_input or n.op == "placeholder")
    if bad:
        raise UnsupportedModelError(
            f"the heads read {bad[:5]}, computed from the input planes by another path than the last layer's "
            "output; the logit lens cannot split this graph into body and heads. Load the lc0 weights (.pb.gz) "
            "instead"
        )
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {stream: graph.placeholder("stream")}
    for node in nodes:
        if node in needed:
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(gm, graph)


def _summary(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``policy``, ``wdl``, ``value`` from raw head outputs, as ``LczeroModel.forward`` computes them."""
    if "policy" not in raw:
        raise UnsupportedModelError(f"the network's heads give {sorted(raw)}, no 'policy'")
    data = {"policy": raw["policy"]}
    if "wdl_logits" in raw:
        wdl = torch.softmax(raw["wdl_logits"], dim=-1)
        data["wdl"] = wdl
        data["value"] = wdl[:, 0] - wdl[:, 2]
    elif "value_logit" in raw:
        data["value"] = torch.tanh(raw["value_logit"])
    return data


# ---------------------------------------------------------------------------------------------------------------
# The lenses
# ---------------------------------------------------------------------------------------------------------------
class LogitLens:
    """The network's heads applied to the residual stream after each layer.

    Each entry of :meth:`outputs` is what the network would say if its remaining layers were skipped: the
    policy and value heads run on that layer's output (no other module runs on it). The last entry is the
    network's own output, exactly.

    Example
    -------
    >>> LogitLens()
    LogitLens()
    """

    def __repr__(self) -> str:
        return "LogitLens()"

    def _translate(self, name: str, stream: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The stream the heads read for layer ``name`` (the logit lens reads it as it is)."""
        return stream

    def layers(self, model: ModelLike) -> list[str]:
        """The keys of :meth:`outputs` for ``model``, in order (see :func:`depth_layers`)."""
        return depth_layers(model)

    def outputs(
        self,
        model: ModelLike,
        boards: BoardsLike,
        *,
        batch_size: int | None = 256,
        planes: torch.Tensor | None = None,
    ) -> TensorDict:
        """The heads' reading of every layer on ``boards``.

        Parameters
        ----------
        model : LczeroModel or network
            A residual or attention-body lc0 network (native weights or an ONNX export).
        boards : LczeroBoard or sequence of LczeroBoard
            The positions, with their history.
        batch_size : int or None
            At most this many boards per forward pass (``None``: one pass).
        planes : torch.Tensor, optional
            ``[N, 112, 8, 8]`` input to run instead of the boards' encoding.

        Returns
        -------
        TensorDict
            Batch size ``[N]``; key = layer name in order (see :func:`depth_layers`), value = a TensorDict with
            ``policy`` ``[N, 1858]`` (raw logits), ``wdl`` ``[N, 3]`` (win, draw, loss probabilities for the side
            to move; WDL nets) and ``value`` ``[N]`` (W - L, or tanh of the value logit), as ``model(boards)``
            gives them. The last key's entry equals ``model(boards)`` for these keys.

        Example
        -------
        >>> out = LogitLens().outputs(model, boards)  # doctest: +SKIP
        >>> out["block3"]["value"]  # value read after block 3  # doctest: +SKIP
        """
        network, input_format = model_parts(model)
        layout = _layout(network)
        board_list = as_boards(boards)
        n = len(board_list)
        size = check_batch_size(batch_size)
        if planes is not None and (not isinstance(planes, torch.Tensor) or tuple(planes.shape) != (n, 112, 8, 8)):
            shape = tuple(planes.shape) if isinstance(planes, torch.Tensor) else type(planes).__name__
            raise InputShapeError(f"planes must be a tensor of shape ({n}, 112, 8, 8) for {n} boards, not {shape}")
        heads = _heads_function(network, layout)
        dtype, device = param_like(network)
        from lczerolens.board import encode_boards

        parts: list[dict[str, dict[str, torch.Tensor]]] = []
        for rows in chunks(n, size):
            x = encode_boards(board_list[rows], input_format) if planes is None else planes[rows]
            streams, raw = _streams(network, layout, x.to(dtype=dtype, device=device))
            parts.append(self._read(layout, heads, streams, raw))
        return _join(parts, layout.names, n)

    def _read(
        self,
        layout: _Layout,
        heads: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        streams: list[torch.Tensor],
        raw: dict[str, torch.Tensor],
    ) -> dict[str, dict[str, torch.Tensor]]:
        out: dict[str, dict[str, torch.Tensor]] = {}
        with torch.no_grad():
            for name, stream in zip(layout.names[:-1], streams[:-1], strict=True):
                out[name] = _summary(dict(heads(self._translate(name, stream, layout.channel_dim)).items()))
        out[layout.names[-1]] = _summary(raw)
        return out


def _join(parts: list[dict[str, dict[str, torch.Tensor]]], names: Sequence[str], n: int) -> TensorDict:
    values: dict[str, TensorDict] = {}
    for name in names:
        keys = parts[0][name].keys()
        data = {k: torch.cat([p[name][k] for p in parts]) if len(parts) > 1 else parts[0][name][k] for k in keys}
        values[name] = TensorDict(data, batch_size=[n])
    return TensorDict(values, batch_size=[n])
