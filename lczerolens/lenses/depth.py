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

import json
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
from lczerolens.model.precision import in_ieee_float32

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


def _streams(
    network: nn.Module, layout: _Layout, planes: torch.Tensor
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
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

    @in_ieee_float32
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


# ---------------------------------------------------------------------------------------------------------------
# The tuned lens
# ---------------------------------------------------------------------------------------------------------------
def _affine(stream: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """``h + W h + b`` on the channels of every square (``W = 0, b = 0`` gives ``h`` itself, exactly)."""
    weight = weight.to(stream.dtype)
    bias = bias.to(stream.dtype)
    if channel_dim == 1:  # [N, F, 8, 8]
        return stream + torch.einsum("nchw,dc->ndhw", stream, weight) + bias[None, :, None, None]
    return stream + stream @ weight.T + bias


#: The ``format`` entry of a saved tuned lens's metadata, and the largest file :meth:`TunedLens.load` reads.
_TUNED_FORMAT = "lczerolens.TunedLens/1"
_TUNED_MAX_BYTES = 1 << 30


class TunedLens(LogitLens):
    """The logit lens through one affine map per layer, fitted so that the heads' reading matches the output.

    Each layer but the last has a map ``h -> h + W h + b`` acting on the channels of every square (the same map
    on each square; ``W`` is ``[F, F]``, ``b`` ``[F]``); ``W = 0, b = 0`` is the logit lens itself. Build one
    with :meth:`fit`. The last layer's entry is the network's own output, as for :class:`LogitLens`.

    Attributes
    ----------
    layers : tuple of str
        The layer names of the network it was fitted on.
    translators : dict
        ``layer -> (W, b)`` (float32 tensors) for every layer but the last.
    channel_dim : int
        The stream's channel dimension (1 for residual nets, -1 for attention bodies).
    losses : list of float
        The training loss (summed over layers) at every step of :meth:`fit`.

    Example
    -------
    >>> lens = TunedLens.fit(model, "assets/cache/positions-maia-1900-seed1.txt", steps=200)  # doctest: +SKIP
    >>> depth_kl(lens, model, held_out)  # doctest: +SKIP
    """

    def __init__(
        self,
        layers: Sequence[str],
        translators: dict[str, tuple[torch.Tensor, torch.Tensor]],
        channel_dim: int,
        losses: Sequence[float] = (),
    ) -> None:
        self.layers_fitted = tuple(layers)
        missing = [name for name in self.layers_fitted[:-1] if name not in translators]
        if missing:
            raise LensError(f"translators lack the layers {missing}; give one (W, b) per layer but the last")
        self.translators = {name: (w.detach(), b.detach()) for name, (w, b) in translators.items()}
        self.channel_dim = channel_dim
        self.losses = list(losses)

    def __repr__(self) -> str:
        width = next(iter(self.translators.values()))[1].numel() if self.translators else 0
        return f"TunedLens(layers={len(self.layers_fitted)}, width={width}, steps={len(self.losses)})"

    @classmethod
    def identity(cls, model: ModelLike) -> TunedLens:
        """The tuned lens before fitting (every map the identity): it reads exactly as :class:`LogitLens`."""
        network, input_format = model_parts(model)
        layout = _layout(network)
        width = _width(network, layout, input_format)
        return cls(layout.names, _zero_translators(layout, width), layout.channel_dim)

    def save(self, path: str | Path) -> Path:
        """Write the fitted maps to ``path``: a safetensors file (``{layer}.weight``, ``{layer}.bias``) whose
        metadata holds the layer order, the channel axis and the fitting losses as JSON text.

        Example
        -------
        >>> TunedLens.load(lens.save("maia-tuned.safetensors")).outputs(model, boards)  # doctest: +SKIP
        """
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        for name, (w, b) in self.translators.items():
            tensors[f"{name}.weight"] = w.detach().to("cpu", torch.float32).contiguous()
            tensors[f"{name}.bias"] = b.detach().to("cpu", torch.float32).contiguous()
        metadata = {
            "format": _TUNED_FORMAT,
            "layers": json.dumps(list(self.layers_fitted)),
            "channel_dim": str(self.channel_dim),
            "losses": json.dumps([float(x) for x in self.losses]),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """A tuned lens written by :meth:`save` (safetensors: tensors and JSON text only, nothing is unpickled).

        Raises
        ------
        LensError
            Not a tuned lens file, too large, incomplete, or maps of the wrong shape or not finite.
        """
        from safetensors import safe_open

        file = Path(path)
        if not file.is_file():
            raise LensError(f"no tuned lens at {str(path)!r}")
        if file.stat().st_size > _TUNED_MAX_BYTES:
            raise LensError(f"{str(path)!r} is larger than {_TUNED_MAX_BYTES} bytes; not a tuned lens")
        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != _TUNED_FORMAT:
                    raise LensError(f"{str(path)!r} is not a tuned lens written by TunedLens.save")
                layers = [str(name) for name in json.loads(metadata["layers"])]
                channel_dim = int(metadata["channel_dim"])
                losses = [float(x) for x in json.loads(metadata.get("losses", "[]"))]
                keys = set(handle.keys())
                translators = {
                    name: (handle.get_tensor(f"{name}.weight").float(), handle.get_tensor(f"{name}.bias").float())
                    for name in layers
                    if f"{name}.weight" in keys  # the last layer is the network's output: no map
                }
        except LensError:
            raise
        except Exception as exc:  # safetensors' and json's errors on a foreign or truncated file
            raise LensError(f"cannot read a tuned lens from {str(path)!r}: {exc}") from None
        for name, (w, b) in translators.items():
            if w.dim() != 2 or w.shape[0] != w.shape[1] or tuple(b.shape) != (w.shape[0],):
                raise LensError(f"{str(path)!r}: the map of {name!r} has shapes {tuple(w.shape)}, {tuple(b.shape)}")
            if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
                raise LensError(f"{str(path)!r}: the map of {name!r} holds NaN or infinite values")
        return cls(layers, translators, channel_dim, losses)

    def _translate(self, name: str, stream: torch.Tensor, channel_dim: int) -> torch.Tensor:
        weight, bias = self.translators[name]
        if stream.shape[channel_dim] != bias.numel():
            raise LensError(
                f"layer {name!r} has {stream.shape[channel_dim]} channels but this tuned lens maps {bias.numel()}; "
                "it was fitted on another network: fit one on this model with TunedLens.fit"
            )
        return _affine(stream, weight.to(stream.device), bias.to(stream.device), channel_dim)

    def outputs(
        self,
        model: ModelLike,
        boards: BoardsLike,
        *,
        batch_size: int | None = 256,
        planes: torch.Tensor | None = None,
    ) -> TensorDict:
        """As :meth:`LogitLens.outputs`, each layer's stream first sent through its fitted map."""
        network, _ = model_parts(model)
        layout = _layout(network)
        if layout.names != self.layers_fitted:
            raise LensError(
                f"this tuned lens was fitted on a network with layers {list(self.layers_fitted)}, not "
                f"{list(layout.names)}; fit one on this model with TunedLens.fit"
            )
        return super().outputs(model, boards, batch_size=batch_size, planes=planes)

    @classmethod
    @in_ieee_float32
    def fit(
        cls,
        model: ModelLike,
        source: Any,
        *,
        steps: int = 300,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
        max_positions: int = 2048,
        wdl_weight: float = 1.0,
        progress: bool = False,
    ) -> TunedLens:
        """Fit one affine map per layer so that the heads' reading of it matches the network's final output.

        The loss, summed over layers and averaged over a batch, is the KL divergence from the final policy to
        the layer's policy over the legal moves, plus ``wdl_weight`` times the KL divergence of the WDL
        probabilities (the squared error of the value for nets without a WDL head). Adam, ``steps`` steps of
        ``batch_size`` positions drawn (seeded by ``seed``) from the first ``max_positions`` positions of
        ``source``; the network runs without gradients on its own weights and is never changed.

        Parameters
        ----------
        model : LczeroModel or network
        source : path, boards, positions or FEN strings
            A PGN / EPD / puzzle file (see :func:`lczerolens.data.read_positions`), or an iterable of
            ``LczeroBoard`` / ``chess.Board``, of objects with a ``.board`` (``Position``, ``Puzzle``) or of FENs.
            Positions without a legal move are left out.
        steps, batch_size, lr, seed
            Adam's schedule; the same seed and data give the same maps.
        max_positions
            At most this many positions are read and kept (as input planes, ``28 KiB`` each): memory stays bounded.
        wdl_weight
            Weight of the value term (0: fit the policy only).
        progress
            A tqdm bar over the steps.

        Returns
        -------
        TunedLens

        Example
        -------
        >>> lens = TunedLens.fit(model, boards, steps=100, batch_size=32)  # doctest: +SKIP
        """
        counts = (("steps", steps, 0), ("batch_size", batch_size, 1), ("max_positions", max_positions, 2))
        for name, value, low in counts:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise LensError(f"{name}={value!r} must be an integer >= {low}")
        for name, number in (("lr", lr), ("wdl_weight", wdl_weight)):
            real = isinstance(number, numbers.Real) and not isinstance(number, bool)
            if not real or not math.isfinite(number) or number < 0:
                raise LensError(f"{name}={number!r} must be a finite number >= 0")
        from lczerolens.board import encode_boards

        network, input_format = model_parts(model)
        layout = _layout(network)
        heads = _heads_function(network, layout)
        boards = _collect(source, int(max_positions), input_format)
        if len(boards) < 2:
            raise LensError(f"the source gives {len(boards)} position(s) with legal moves; fitting needs at least 2")
        dtype, device = param_like(network)
        planes = torch.cat([encode_boards(boards[r], input_format) for r in chunks(len(boards), 256)])
        legal = _legal_mask(boards, input_format)
        width = _width(network, layout, input_format)
        translators = {name: (w.to(device), b.to(device)) for name, (w, b) in _zero_translators(layout, width).items()}
        params = [t for pair in translators.values() for t in pair]
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(params, lr=float(lr))
        generator = torch.Generator().manual_seed(int(seed))
        losses: list[float] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(steps), desc="TunedLens.fit", unit="step")
        size = min(int(batch_size), len(boards))
        try:
            for _ in range(int(steps)):
                rows = torch.randperm(len(boards), generator=generator)[:size]
                x = planes[rows].to(dtype=dtype, device=device)
                mask = legal[rows].to(device)
                streams, raw = _streams(network, layout, x)
                final = {k: v.float() for k, v in _summary(raw).items()}
                target = _legal_log_softmax(final["policy"], mask)
                loss = torch.zeros((), device=device)
                for name, stream in zip(layout.names[:-1], streams[:-1], strict=True):
                    w, b = translators[name]
                    read = _summary(dict(heads(_affine(stream, w, b, layout.channel_dim)).items()))
                    loss = loss + _policy_kl(target, read["policy"].float(), mask).mean()
                    if wdl_weight:
                        loss = loss + float(wdl_weight) * _value_loss(final, read).mean()
                # Gradients for the maps only: nothing is accumulated on the network's own parameters.
                grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                optimiser.step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        fitted = {name: (w.detach().cpu(), b.detach().cpu()) for name, (w, b) in translators.items()}
        return cls(layout.names, fitted, layout.channel_dim, losses)


def _zero_translators(layout: _Layout, width: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (torch.zeros(width, width), torch.zeros(width)) for name in layout.names[:-1]}


def _width(network: nn.Module, layout: _Layout, input_format: Any) -> int:
    """The residual stream's channel count (one forward pass on the starting position)."""
    from lczerolens.board import LczeroBoard, encode_boards

    dtype, device = param_like(network)
    streams, _ = _streams(network, layout, encode_boards([LczeroBoard()], input_format).to(dtype=dtype, device=device))
    return int(streams[0].shape[layout.channel_dim])


def _collect(source: Any, limit: int, input_format: Any) -> list[Any]:
    """Up to ``limit`` boards with legal moves from ``source`` (see :meth:`TunedLens.fit`), read lazily."""
    from lczerolens.board import LczeroBoard

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise LensError(f"source {str(source)!r} is not a file; pass a PGN/EPD/puzzle file or boards")
        from lczerolens.data import read_positions

        items: Iterable[Any] = read_positions(path)
    elif isinstance(source, chess.Board):
        items = [source]
    elif isinstance(source, Iterable):
        items = source
    else:
        raise LensError(f"source must be a file, boards, positions or FENs, not {type(source).__name__}")
    boards: list[Any] = []
    for i, item in enumerate(items):
        if len(boards) >= limit:
            break
        board = getattr(item, "board", item)
        if isinstance(board, str):
            try:
                board = LczeroBoard(board)
            except ValueError as exc:
                raise LensError(f"source item {i} ({board!r:.80}) is not a FEN: {exc}") from None
        if not isinstance(board, chess.Board):
            raise LensError(
                f"source item {i} is a {type(item).__name__}, not a board, a position (with .board) or a FEN"
            )
        if not isinstance(board, LczeroBoard):
            board = LczeroBoard.from_board(board)
        if not any(board.legal_moves):
            continue
        boards.append(board)
    return boards


def _legal_mask(boards: Sequence[Any], input_format: Any) -> torch.Tensor:
    mask = torch.zeros(len(boards), 1858, dtype=torch.bool)
    for i, board in enumerate(boards):
        mask[i, torch.as_tensor(board.legal_move_indices(input_format), dtype=torch.long)] = True
    return mask


def _legal_log_softmax(policy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(policy.masked_fill(~mask, float("-inf")), dim=-1)


def _policy_kl(target: torch.Tensor, policy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(final || layer)`` over the legal moves, per board; ``target`` is the final legal log-softmax."""
    log_q = _legal_log_softmax(policy, mask)
    terms = target.exp() * (target - log_q)
    return terms.masked_fill(~mask, 0.0).sum(dim=-1)


def _value_loss(final: dict[str, torch.Tensor], read: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per board: KL of the WDL probabilities (WDL nets) or the squared value error."""
    if "wdl" in final and "wdl" in read:
        p = final["wdl"]
        return (p * (torch.log(p.clamp_min(1e-12)) - torch.log(read["wdl"].float().clamp_min(1e-12)))).sum(-1)
    return (final["value"] - read["value"].float()) ** 2


@in_ieee_float32
def depth_kl(
    lens: LogitLens,
    model: ModelLike,
    boards: BoardsLike,
    *,
    head: str = "policy",
    batch_size: int | None = 256,
) -> dict[str, float]:
    """How far each layer's reading is from the network's output: mean KL divergence, in nats, per layer.

    Parameters
    ----------
    lens : LogitLens or TunedLens
    model : LczeroModel or network
    boards : LczeroBoard or sequence of LczeroBoard
        Held-out positions (those without a legal move are left out).
    head : str
        ``"policy"``: ``KL(final || layer)`` of the policies over each board's legal moves; ``"wdl"``: of the
        WDL probabilities.

    Returns
    -------
    dict
        layer name -> mean KL over the boards (0 for the last layer, the output itself).

    Example
    -------
    >>> depth_kl(LogitLens(), model, boards)  # doctest: +SKIP
    {'inputconv': 2.1, 'block0': 1.7, ..., 'block5': 0.0}
    """
    if head not in ("policy", "wdl"):
        raise LensError(f"head={head!r}: use 'policy' or 'wdl'")
    if not isinstance(lens, LogitLens):
        raise LensError(f"lens must be a LogitLens or TunedLens, not {type(lens).__name__}")
    network, input_format = model_parts(model)
    board_list = [b for b in as_boards(boards) if any(b.legal_moves)]
    if not board_list:
        raise LensError("none of the boards has a legal move; depth_kl needs positions to compare policies")
    if head == "wdl" and "wdl" not in tuple(getattr(network, "heads", ()) or ("wdl",)):
        raise LensError(f"head='wdl' needs a WDL net; this one has heads {getattr(network, 'heads', ())}")
    out = lens.outputs(model, board_list, batch_size=batch_size)
    names = [str(k) for k in out.keys()]
    final = out[names[-1]]
    if head == "policy":
        mask = _legal_mask(board_list, input_format).to(final["policy"].device)
        target = _legal_log_softmax(final["policy"].float(), mask)
        return {name: float(_policy_kl(target, out[name]["policy"].float(), mask).mean()) for name in names}
    p = final["wdl"].float()
    return {
        name: float((p * (p.clamp_min(1e-12).log() - out[name]["wdl"].float().clamp_min(1e-12).log())).sum(-1).mean())
        for name in names
    }
