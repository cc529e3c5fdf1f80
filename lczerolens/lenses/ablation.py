"""Ablation: how far an output moves when one unit of a module is knocked out, for every unit at once.

For each chosen module and each of its units, :meth:`AblationLens.effects` runs the positions with that unit's
output replaced and returns ``f(unit ablated) - f(clean)``. The *units* of a module follow its output (boards
first, as :class:`~lczerolens.lenses.ActivationLens` gives it):

- ``[N, C, 8, 8]`` (a convolution of a residual net, e.g. ``"block3/conv2/relu"``): the ``C`` channels, each one
  a whole ``8 x 8`` map;
- ``[N, H, 64, X]`` (an attention layer's per-head tensors: ``"encoder0/mha/QKV/matmul"``, the heads' outputs
  before the output projection, or the softmax weights ``"encoder0/mha/QK/softmax"``): the ``H`` heads;
- ``[N, 64, E]`` (an attention body's token stream, ``"encoder0/ln2"``, or an FFN's hidden layer,
  ``"encoder0/ffn/dense1/sqrrelu/sqr"``): the ``E`` features (neurons), each over all 64 tokens;
- ``[N, D]`` (a dense layer of a head): the ``D`` neurons.

Modes (what replaces the unit):

- ``"zero"``: zeros;
- ``"mean"``: the unit's mean over the reference positions (``reference=``, or the boards of the call), square by
  square (token by token): a channel takes its mean ``8 x 8`` map, a head its mean ``[64, X]`` tensor;
- ``"resample"``: the unit's activation on another position: board ``i`` takes every ablated unit from one
  *donor* position, drawn with ``seed`` from ``reference=`` or from the other boards of the call
  (:meth:`AblationLens.donors` says which).

Speed: all the units of a module go through the network in large batches (rows ``j * n + i``: board ``i`` with
unit ``j`` ablated). Where the network allows it, the module's clean output is *fanned out* (one copy per unit, one
unit knocked out in each) and only the part of the network after the module runs on the many rows: once a pass
has shown that nothing before the module meets anything after it, the part before runs on one board only. Where
the network mixes the module's output with an earlier tensor (a module inside a residual block or an encoder
layer, before its skip connection), the previous block's (encoder layer's) output is fanned out instead and the
module ablated in each copy; only where neither holds (the first block) is the whole input repeated. The heads
the target does not read are skipped in the ablated passes (lc0's heads are separate branches). On maia-1900, all
64 channels of ``block3/conv2/relu`` on 256 positions (top-move target) took the CPU time of about 18 forward
passes over the 256 boards instead of 64 (``benchmarks/bench_ablation.py``).
The user's model is never changed: every pass runs through the lenses' private shadow of the module tree.

Example
-------
>>> from lczerolens import LczeroBoard, LczeroModel
>>> from lczerolens.lenses import AblationLens
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> effects = AblationLens("block3/conv2/relu").effects(model, [LczeroBoard()], target="value")  # doctest: +SKIP
>>> effects["block3/conv2/relu"].shape  # doctest: +SKIP
torch.Size([1, 64])
"""

from __future__ import annotations

import hashlib
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chess
import torch
from torch import nn

from lczerolens.errors import InvalidOptionError, LensError
from lczerolens.lenses.base import (
    BoardsLike,
    ModelLike,
    TargetLike,
    TopLegalMoves,
    as_boards,
    check_batch_size,
    check_head,
    model_parts,
    param_like,
    parse_target,
    select_output,
)
from lczerolens.lenses.inside import (
    SHADOWS,
    Replace,
    batch_first,
    match_modules,
    module_patterns,
    outputs_dict,
    run_with,
)
from lczerolens.lenses.tree import overlay
from lczerolens.model.precision import in_ieee_float32

if TYPE_CHECKING:
    from tensordict import TensorDict

    from lczerolens.board import LczeroBoard

__all__ = ["AblationLens", "Ablation", "MODES", "unit_axis", "rank_units"]

#: The ways a unit can be knocked out.
MODES = ("zero", "mean", "resample")
#: Boards per chunk when ``batch_size`` is not given.
_CHUNK = 256
#: Bytes of the ablated module's output per pass, when ``max_rows`` is not given (bounds memory).
_PASS_BYTES = 32 << 20
_MAX_AUTO_ROWS = 2048
#: The module-name prefixes of each head (lc0's node names, native and ONNX): an ablated pass skips the heads its
#: target does not read (their modules give zeros), since lc0's heads are separate branches off the body.
_HEADS = {
    "policy": ("policy/", "output/policy"),
    "value": ("value/", "output/value", "output/wdl"),
    "mlh": ("mlh/", "output/mlh"),
}


def unit_axis(value: torch.Tensor, name: str) -> tuple[int, str]:
    """The axis of a boards-first output ``[N, ...]`` that holds its units, and what they are.

    ``[N, C, 8, 8]`` -> ``(1, "channel")``, ``[N, H, 64, X]`` -> ``(1, "head")``, ``[N, 64, E]`` ->
    ``(2, "neuron")``, ``[N, D]`` -> ``(1, "neuron")``; anything else raises :class:`LensError`.
    """
    shape = tuple(value.shape)
    if len(shape) == 4 and shape[2:] == (8, 8):
        return 1, "channel"
    if len(shape) == 4 and shape[2] == 64:
        return 1, "head"
    if len(shape) == 3 and shape[1] == 64:
        return 2, "neuron"
    if len(shape) == 2:
        return 1, "neuron"
    raise LensError(
        f"module {name!r} gives {shape} per batch: no units to ablate (expected channels [N, C, 8, 8], heads "
        "[N, H, 64, X], tokens [N, 64, E] or neurons [N, D]); choose another module"
    )


@dataclass
class Ablation:
    """What :meth:`AblationLens.ablate` returns.

    Attributes
    ----------
    effects : TensorDict
        Batch size ``[N]``; key = module name, value ``[N, units]`` float32 = ``f(unit ablated) - f(clean)``.
    target : torch.Tensor
        ``[N]`` float32: ``f(clean)``, the explained output on the clean positions.
    kind : str
        ``"policy"`` for a move target, else the head (``"value"``, ``"win"``, ...).
    moves : list of chess.Move or None
        The explained move of each board (``None`` for head targets).
    outputs : dict
        The network's raw outputs on the clean positions (``policy``, ``wdl_logits`` or ``value_logit``,
        ``mlh``), float32 on the CPU.
    unit_kinds : dict
        Module name -> ``"channel"``, ``"head"`` or ``"neuron"``.
    """

    effects: TensorDict
    target: torch.Tensor
    kind: str
    moves: list[chess.Move] | None
    outputs: dict[str, torch.Tensor]
    unit_kinds: dict[str, str]


class AblationLens:
    """Knock out the units of modules one at a time and measure the change of an output.

    Parameters
    ----------
    modules : str or sequence of str
        Module names or ``fnmatch`` patterns, as :class:`~lczerolens.lenses.ActivationLens` names them
        (``"block3/conv2/relu"``, ``"block*/conv2/relu"``, ``"encoder*/mha/QKV/matmul"``).
    mode : {"zero", "mean", "resample"}
        What replaces an ablated unit (see the module docstring).
    reference : LczeroBoard or sequence of LczeroBoard, optional
        ``"mean"``: the positions the mean is taken over; ``"resample"``: the positions donors are drawn from.
        Without it, the boards of each call (so a mean over a batch: pass a reference for results that do not
        depend on how a collection is cut into batches).
    seed : int
        Seed of the donors of ``"resample"``.
    max_rows : int, optional
        At most this many rows (boards times units) per forward pass; default: what keeps the ablated module's
        output of one pass near 32 MiB, at most 2048 rows.

    Example
    -------
    >>> AblationLens("block*/conv2/relu", mode="mean")
    AblationLens(modules=('block*/conv2/relu',), mode='mean')
    """

    def __init__(
        self,
        modules: str | Sequence[str] = ("block*/conv2/relu",),
        mode: str = "zero",
        *,
        reference: BoardsLike | None = None,
        seed: int = 0,
        max_rows: int | None = None,
    ) -> None:
        self.modules = module_patterns(modules)
        if not isinstance(mode, str) or mode not in MODES:
            raise InvalidOptionError(f"mode={mode!r} is not an ablation mode; use one of {', '.join(MODES)}")
        self.mode = mode
        if reference is not None and mode == "zero":
            raise InvalidOptionError("reference= is for mode='mean' or mode='resample'; mode='zero' uses none")
        self.reference: list[LczeroBoard] | None = None if reference is None else as_boards(reference)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise InvalidOptionError(f"seed={seed!r} must be an integer")
        self.seed: int = int(seed)
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, numbers.Integral)
                                     or max_rows < 1):  # fmt: skip
            raise InvalidOptionError(f"max_rows={max_rows!r} must be a positive integer or None (automatic)")
        self.max_rows: int | None = None if max_rows is None else int(max_rows)

    def __repr__(self) -> str:
        parts = [f"modules={self.modules!r}", f"mode={self.mode!r}"]
        if self.reference is not None:
            parts.append(f"reference=<{len(self.reference)} boards {_digest(self.reference)}>")
        if self.mode == "resample":
            parts.append(f"seed={self.seed}")
        if self.max_rows is not None:
            parts.append(f"max_rows={self.max_rows}")
        return f"AblationLens({', '.join(parts)})"

    def collection_table(
        self, model: ModelLike, targets: Sequence[str], positions: Sequence[Any], batch_size: int,
        metadata: dict[str, str] | None = None,
    ) -> tuple[Any, dict[str, int]]:  # fmt: skip
        """The Parquet rows :func:`lczerolens.run.explain_dataset` writes with this lens (:func:`ablation_table`)."""
        return ablation_table(model, self, targets, positions, batch_size, metadata)

    def names(self, model: ModelLike) -> list[str]:
        """The module names of ``model`` this lens ablates, in the network's order (raises if a pattern misses)."""
        network, _ = model_parts(model)
        return match_modules(network, self.modules)

    def donors(self, n: int) -> torch.Tensor:
        """``[n]`` long: the donor of each of ``n`` boards in ``"resample"`` mode.

        An index into ``reference`` when the lens has one, else into the boards of the call (never the board
        itself). Drawn from ``torch.Generator().manual_seed(seed)``: the same for the same ``n``.

        Example
        -------
        >>> AblationLens("block0/conv2/relu", mode="resample", seed=1).donors(4).tolist()
        [2, 3, 0, 2]
        """
        generator = torch.Generator().manual_seed(self.seed)
        if self.reference is not None:
            return torch.randint(len(self.reference), (n,), generator=generator)
        if n < 2:
            raise LensError(
                "mode='resample' takes each unit from another position: pass at least 2 boards, or reference="
            )
        draw = torch.randint(n - 1, (n,), generator=generator)
        return draw + (draw >= torch.arange(n)).long()  # skip the board itself

    @in_ieee_float32
    def effects(
        self,
        model: ModelLike,
        boards: BoardsLike,
        target: TargetLike = None,
        *,
        units: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> TensorDict:
        """``f(unit ablated) - f(clean)`` for every unit of every chosen module.

        Parameters
        ----------
        model : LczeroModel or network
        boards : LczeroBoard or sequence of LczeroBoard
            The positions, with their history.
        target : None, move(s) or head name
            What ``f`` reads, in the lenses' target language: ``None`` (each board's top legal move),
            a move (``chess.Move``, UCI, SAN or policy index; one per board for a batch), or ``"value"``,
            ``"win"``, ``"draw"``, ``"loss"``, ``"mlh"``. A move is read at the clean position's policy index in
            every ablated run (the top move is chosen on the clean run). ``"value"`` reads ``win - loss`` logits
            (WDL nets), a WDL target its logit, as the other lenses.
        units : sequence of int, optional
            Only these units of each module (columns in this order); default: all.
        batch_size : int, optional
            Boards per chunk (default 256); a chunk's units go through in passes of at most ``max_rows`` rows.
        progress : bool
            A tqdm progress bar over the boards.

        Returns
        -------
        TensorDict
            Batch size ``[N]``; key = module name, value ``[N, units]`` float32.

        Example
        -------
        >>> effects = AblationLens("block3/conv2/relu").effects(model, boards, target="value")  # doctest: +SKIP
        >>> effects["block3/conv2/relu"].abs().mean(0).topk(5)  # the channels that matter most  # doctest: +SKIP
        """
        return self.ablate(model, boards, target, units=units, batch_size=batch_size, progress=progress).effects

    def ablate(
        self,
        model: ModelLike,
        boards: BoardsLike,
        target: TargetLike = None,
        *,
        units: Sequence[int] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        planes: torch.Tensor | None = None,
    ) -> Ablation:
        """As :meth:`effects`, with the clean target values, moves and outputs (:class:`Ablation`).

        ``planes`` (``[N, 112, 8, 8]``) is run instead of the boards' encoding (the boards still give the moves).
        """
        from tensordict import TensorDict

        from lczerolens.board import encode_boards

        network, input_format = model_parts(model)
        board_list = as_boards(boards)
        n = len(board_list)
        parsed = parse_target(target, board_list, input_format)
        check_head(parsed.kind, network)
        size = check_batch_size(batch_size) or _CHUNK
        names = match_modules(network, self.modules)
        chosen_units = _check_units(units)
        if planes is not None and (not isinstance(planes, torch.Tensor) or tuple(planes.shape) != (n, 112, 8, 8)):
            shape = tuple(planes.shape) if isinstance(planes, torch.Tensor) else type(planes).__name__
            raise LensError(f"planes must be a tensor of shape ({n}, 112, 8, 8) for {n} boards, not {shape}")
        dtype, device = param_like(network)

        def encoded(rows: slice | torch.Tensor, pool: list[LczeroBoard], own: bool) -> torch.Tensor:
            if own and planes is not None:
                x = planes[rows]
            else:
                picked = pool[rows] if isinstance(rows, slice) else [pool[int(i)] for i in rows]
                x = encode_boards(picked, input_format)
            return x.to(dtype=dtype, device=device)

        means: dict[str, torch.Tensor] = {}
        donors: torch.Tensor | None = None
        if self.mode == "mean":
            pool, own = (board_list, True) if self.reference is None else (self.reference, False)
            means = _means(network, names, len(pool), size, lambda rows: encoded(rows, pool, own))
        elif self.mode == "resample":
            donors = self.donors(n)

        effects: dict[str, torch.Tensor] = {}
        kinds: dict[str, str] = {}
        clean_values = torch.empty(n, dtype=torch.float32)
        move_indices: list[torch.Tensor] = []
        kept: dict[str, list[torch.Tensor]] = {}
        # Per module: "verified" (fan-out checked), "repeat" (no fan-out), "cut verified" (copies from the previous
        # block's output, checked) or "plain" (the whole input repeated).
        fanout: dict[str, str] = {}
        cuts = {name: _cut_before(network, name) for name in names}
        bar = _bar(progress, n)
        try:
            with torch.no_grad():
                for start in range(0, n, size):
                    rows = slice(start, min(start + size, n))
                    m = rows.stop - rows.start
                    x = encoded(rows, board_list, True)
                    target_rows = parsed[rows]
                    heads = _unread_heads(network, target_rows.kind, names)
                    extra = [c for c in dict.fromkeys(cuts.values()) if c is not None and c not in names]
                    clean_out, store = run_with(network, x, record=names + heads + extra)
                    skip = _skip_shapes(store, heads, m)
                    legal = (
                        TopLegalMoves(board_list[rows], input_format)
                        if target_rows.kind == "policy" and target_rows.indices is None
                        else None
                    )
                    _, _, values, indices = select_output(clean_out, target_rows.kind, target_rows.indices, legal)
                    f_clean = values.to(torch.float64).cpu()
                    clean_values[rows] = f_clean.float()
                    if indices is not None:
                        move_indices.append(indices)
                    for key in ("policy", "wdl_logits", "value_logit", "mlh"):
                        if key in clean_out:
                            kept.setdefault(key, []).append(clean_out[key].detach().float().cpu())
                    donor_store: dict[str, torch.Tensor] = {}
                    if donors is not None:
                        pool, own = (board_list, True) if self.reference is None else (self.reference, False)
                        _, donor_store = run_with(network, encoded(donors[rows], pool, own), record=names)
                    for name in names:
                        if name not in store:
                            raise LensError(f"module {name!r} did not run (or gave no tensor) on these boards")
                        clean_bf = batch_first(store[name].detach(), m)
                        axis, kind = unit_axis(clean_bf, name)
                        kinds[name] = kind
                        count = clean_bf.shape[axis]
                        which = torch.arange(count) if chosen_units is None else _within(chosen_units, count, name)
                        if self.mode == "zero":
                            replacement: torch.Tensor | None = None
                        elif self.mode == "mean":
                            replacement = means[name].to(clean_bf.dtype)[None, None]  # [1, 1, ...]
                        else:
                            replacement = batch_first(donor_store[name].detach(), m)[None]  # [1, m, ...]
                        row_bytes = clean_bf[0].numel() * clean_bf.element_size()
                        limit = self.max_rows or max(1, min(_MAX_AUTO_ROWS, _PASS_BYTES // max(row_bytes, 1)))
                        per_pass = max(1, limit // m)
                        out = effects.setdefault(name, torch.empty(n, len(which), dtype=torch.float32))
                        for first in range(0, len(which), per_pass):
                            group = which[first : first + per_pass]
                            cut_name = cuts[name]
                            cut = None if cut_name is None or cut_name not in store else (cut_name, store[cut_name])
                            f = self._pass(network, x, name, store[name], clean_bf, axis, group, replacement,
                                           target_rows.kind, indices, fanout, skip, cut)  # fmt: skip
                            change = f.reshape(len(group), m).T - f_clean[:, None]
                            out[rows, first : first + len(group)] = change.float()
                    if bar is not None:
                        bar.update(m)
        finally:
            if bar is not None:
                bar.close()
        moves: list[chess.Move] | None = None
        if parsed.kind == "policy":
            flat = torch.cat(move_indices).tolist()
            moves = [b.decode_move(int(i), input_format) for b, i in zip(board_list, flat, strict=True)]
        outputs = {k: torch.cat(v) for k, v in kept.items()}
        return Ablation(
            effects=TensorDict(effects, batch_size=[n]),
            target=clean_values,
            kind=parsed.kind,
            moves=moves,
            outputs=outputs,
            unit_kinds=kinds,
        )

    def _pass(
        self,
        network: nn.Module,
        x: torch.Tensor,
        name: str,
        clean_raw: torch.Tensor,
        clean_bf: torch.Tensor,
        axis: int,
        group: torch.Tensor,
        replacement: torch.Tensor | None,
        kind: str,
        indices: torch.Tensor | None,
        fanout: dict[str, str],
        skip: dict[str, tuple[torch.Size, torch.dtype, torch.device]],
        cut: tuple[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The explained output of rows ``j * m + i`` (board ``i``, unit ``group[j]`` ablated): ``[k * m]`` float64."""
        m, k = clean_bf.shape[0], len(group)
        shape = [1] * (clean_bf.dim() + 1)
        shape[0], shape[axis + 1] = k, clean_bf.shape[axis]
        mask = torch.zeros(k, clean_bf.shape[axis], dtype=torch.bool)
        mask[torch.arange(k), group] = True
        mask = mask.reshape(shape).to(clean_bf.device)
        fill = replacement if replacement is not None else torch.zeros((), dtype=clean_bf.dtype, device=clean_bf.device)

        def knock_out(copies: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, fill, copies)  # [k, m, ...]

        read_indices = None if indices is None else indices.repeat(k)
        state = fanout.get(name)
        if state in (None, "verified"):
            # The module's clean output is copied k times, one unit out in each, and only what follows the module
            # runs on the k * m rows. Once a pass of m > 1 boards and k > 1 copies went through with every output
            # holding k * m rows, nothing before the module meets anything after it (a tensor of m rows would not
            # combine with one of k * m), so later passes feed one board to the part before the module.
            raw = clean_raw.shape

            def fan(o: torch.Tensor) -> torch.Tensor:
                new = knock_out(clean_bf.unsqueeze(0).expand(k, *clean_bf.shape)).reshape(k * raw[0], *raw[1:])
                # Convolutions of maia-sized blocks run 10-15% faster on CPU in channels-last layout.
                return new.contiguous(memory_format=torch.channels_last) if new.dim() == 4 else new

            try:
                outputs = _run(network, x[:1] if state == "verified" else x, {name: fan}, skip, k)
                fits = all(t.shape[0] == k * m for t in outputs.values() if isinstance(t, torch.Tensor) and t.dim())
            except (RuntimeError, LensError):
                fits = False  # the network mixes this output with an earlier tensor of m rows
            if fits:
                if state is None and k > 1 and m > 1:
                    fanout[name] = "verified"
                return _read(outputs, kind, read_indices)
            fanout[name] = state = "repeat"

        def repeated(o: torch.Tensor) -> torch.Tensor:
            bf = batch_first(o, k * m)
            new = knock_out(bf.reshape(k, m, *bf.shape[1:]))
            return new.reshape(o.shape)

        if cut is not None and state in ("repeat", "cut verified"):
            # The module mixes with an earlier tensor, but the previous block's (encoder layer's) output may be a
            # cut: its clean output, copied k times, feeds what follows, and the module is ablated in each copy.
            # Checked as the fan-out is; then the part before the cut runs on one board.
            cut_name, cut_raw = cut

            def copies(o: torch.Tensor) -> torch.Tensor:
                new = cut_raw.unsqueeze(0).expand(k, *cut_raw.shape).reshape(k * cut_raw.shape[0], *cut_raw.shape[1:])
                return new.contiguous(memory_format=torch.channels_last) if new.dim() == 4 else new

            try:
                feed = x[:1] if state == "cut verified" else x
                outputs = _run(network, feed, {cut_name: copies, name: repeated}, skip, k)
                fits = all(t.shape[0] == k * m for t in outputs.values() if isinstance(t, torch.Tensor) and t.dim())
            except (RuntimeError, LensError):
                fits = False
            if fits:
                if state == "repeat" and k > 1 and m > 1:
                    fanout[name] = "cut verified"
                return _read(outputs, kind, read_indices)
            fanout[name] = "plain"

        outputs = _run(network, x.repeat(k, *([1] * (x.dim() - 1))), {name: repeated}, skip, k)
        return _read(outputs, kind, read_indices)


def _cut_before(network: nn.Module, name: str) -> str | None:
    """The output of the residual block (encoder layer) before the one ``name`` lies in, if the network has it:
    ``"block3/conv1/relu"`` -> ``"block2/conv2/relu"``, ``"encoder1/mha/QKV/matmul"`` -> ``"encoder0/ln2"``."""
    found = re.match(r"(block|encoder)(\d+)/", name)
    if found is None or int(found.group(2)) == 0:
        return None
    index = int(found.group(2)) - 1
    if found.group(1) == "encoder":
        pattern = re.compile(rf"encoder{index}/ln2")
    else:
        pattern = re.compile(rf"block{index}/conv2/(?!se$)[a-z]+")  # the block's output activation
    return next((n for n, _ in network.named_modules() if pattern.fullmatch(n)), None)


class _Zeros(nn.Module):
    """Stands in for a module of a head the target does not read: zeros of the shape it would give."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.shape, self.dtype, self.device = shape, dtype, device

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)


def _unread_heads(network: nn.Module, kind: str, ablated: list[str]) -> list[str]:
    """The leaf modules of the heads that target ``kind`` does not read (not those being ablated)."""
    keep = kind if kind in ("policy", "mlh") else "value"
    prefixes = tuple(p for head, ps in _HEADS.items() if head != keep for p in ps)
    return [
        name
        for name, module in network.named_modules()
        if name and name.startswith(prefixes) and name not in ablated and next(module.children(), None) is None
    ]


def _skip_shapes(
    store: dict[str, torch.Tensor], heads: list[str], m: int
) -> dict[str, tuple[torch.Size, torch.dtype, torch.device]]:
    """Shapes of the unread heads' outputs on ``m`` boards, for those that give a floating tensor per board."""
    out = {}
    for name in heads:
        value = store.pop(name, None)
        if value is not None and value.is_floating_point() and value.dim() and value.shape[0] % m == 0:
            out[name] = (value.shape, value.dtype, value.device)
    return out


def _run(
    network: nn.Module,
    x: torch.Tensor,
    replace: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    skip: dict[str, tuple[torch.Size, torch.dtype, torch.device]],
    k: int,
) -> dict[str, torch.Tensor]:
    """Run ``x`` (``k`` copies of the boards' rows) with ``replace`` applied and the unread heads skipped."""
    wrappers: dict[str, Callable[[nn.Module], nn.Module]] = {}
    for name, (shape, dtype, device) in skip.items():
        wrappers[name] = _zeros_builder((k * shape[0], *shape[1:]), dtype, device)
    for name, change in replace.items():
        wrappers[name] = _replace_builder(name, change)
    return outputs_dict(overlay(SHADOWS.get(network), wrappers)(x))


def _zeros_builder(size: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Callable[[nn.Module], nn.Module]:
    return lambda module: _Zeros(size, dtype, device)


def _replace_builder(name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[nn.Module], nn.Module]:
    return lambda module: Replace(module, name, change)


def _read(outputs: Mapping[str, torch.Tensor], kind: str, indices: torch.Tensor | None) -> torch.Tensor:
    _, _, values, _ = select_output(outputs, kind, indices, None)
    return values.to(torch.float64).cpu()


def _means(
    network: nn.Module, names: list[str], n: int, size: int, encode: Callable[[slice], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Each module's mean output over ``n`` positions (boards first, the board axis averaged away), in float64."""
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, n, size):
            rows = slice(start, min(start + size, n))
            _, store = run_with(network, encode(rows), record=names)
            for name in names:
                if name not in store:
                    raise LensError(f"module {name!r} did not run (or gave no tensor) on the reference positions")
                part = batch_first(store[name].detach(), rows.stop - rows.start).to(torch.float64).sum(0)
                sums[name] = sums[name] + part if name in sums else part
    return {name: total / n for name, total in sums.items()}


def _check_units(units: Sequence[int] | None) -> list[int] | None:
    if units is None:
        return None
    if isinstance(units, (str, bytes)) or not isinstance(units, (Sequence, torch.Tensor)):
        raise InvalidOptionError(f"units={units!r} must be a sequence of unit indices, e.g. [3, 17]")
    if isinstance(units, torch.Tensor):
        if units.dim() != 1 or units.is_floating_point():
            raise InvalidOptionError(f"units must be a 1-D integer tensor, not {units.dtype} {tuple(units.shape)}")
        units = units.tolist()
    out = [int(u) for u in units if isinstance(u, numbers.Integral) and not isinstance(u, bool)]
    if len(out) != len(units) or not out:
        raise InvalidOptionError(f"units={list(units)!r} must be a non-empty sequence of whole numbers")
    return out


def _within(units: list[int], count: int, name: str) -> torch.Tensor:
    bad = [u for u in units if not 0 <= u < count]
    if bad:
        raise InvalidOptionError(f"units {bad} are out of range for module {name!r}, which has {count} units")
    return torch.tensor(units, dtype=torch.long)


def _digest(boards: Sequence[chess.Board]) -> str:
    """A short fingerprint of positions with their history (goes into the lens's repr, so runs tell them apart)."""
    digest = hashlib.sha256()
    for board in boards:
        digest.update(board.root().fen().encode())
        digest.update(" ".join(m.uci() for m in board.move_stack).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:12]


def _bar(progress: bool, n: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, desc="AblationLens", unit="pos")


def rank_units(results: Any, *, by: str = "mean_abs") -> Any:
    """Rank units by their mean ``|effect|``: a ``pyarrow.Table``, one row per (target, module, unit).

    Parameters
    ----------
    results : str, Path, pyarrow.Table or mapping
        A run folder written by ``explain_dataset(..., lens=AblationLens(...))`` (read shard by shard), its
        table (:func:`lczerolens.run.load_results`), the TensorDict of :meth:`AblationLens.effects` (target
        ``null``), or a mapping of target names to such TensorDicts (``{"value": effects}``).
    by : {"mean_abs", "mean"}
        The column that orders the units (``"mean"``: most negative first, the units whose loss hurts most).

    Returns
    -------
    pyarrow.Table
        Columns ``target`` (string), ``module`` (string), ``unit`` (int64), ``mean_abs`` (mean ``|effect|``),
        ``mean`` (mean effect), ``max_abs``, ``rows`` (positions averaged over), ``rank`` (1 = most important
        within its target and module), float64 statistics; ordered by target, module, then rank.

    Example
    -------
    >>> top = rank_units("runs/ablation")  # doctest: +SKIP
    >>> top.filter(pc.equal(top["rank"], 1)).to_pandas()  # doctest: +SKIP
    """
    import numpy as np
    import pyarrow as pa

    if by not in ("mean_abs", "mean"):
        raise InvalidOptionError(f"by={by!r}: use 'mean_abs' or 'mean'")
    acc: dict[tuple[str | None, str], dict[str, Any]] = {}

    def add(target: str | None, module: str, block: Any) -> None:
        block = np.asarray(block, dtype=np.float64)
        entry = acc.get((target, module))
        if entry is None:
            entry = acc[(target, module)] = {"sum": np.zeros(block.shape[1]), "abs": np.zeros(block.shape[1]),
                                             "max": np.zeros(block.shape[1]), "rows": 0}  # fmt: skip
        if entry["sum"].shape[0] != block.shape[1]:
            raise LensError(f"module {module!r} has rows with {entry['sum'].shape[0]} and {block.shape[1]} units")
        entry["sum"] += block.sum(0)
        entry["abs"] += np.abs(block).sum(0)
        entry["max"] = np.maximum(entry["max"], np.abs(block).max(0, initial=0.0))
        entry["rows"] += block.shape[0]

    def add_table(table: Any) -> None:
        if "effects" not in table.column_names or "module" not in table.column_names:
            raise LensError("these rows hold no ablation effects (no 'module' and 'effects' columns); rank the "
                            "output of explain_dataset(..., lens=AblationLens(...))")  # fmt: skip
        targets = table.column("target").to_pylist()
        modules = table.column("module").to_pylist()
        effects = table.column("effects").to_pylist()
        groups: dict[tuple[str | None, str], list[Any]] = {}
        for t, mod, e in zip(targets, modules, effects, strict=True):
            groups.setdefault((t, mod), []).append(e)
        for (t, mod), rows in groups.items():
            add(t, mod, np.asarray(rows, dtype=np.float64))

    if isinstance(results, (str, Path)):
        import pyarrow.parquet as pq

        from lczerolens.run import load_manifest

        manifest = load_manifest(results)
        for key in sorted(manifest["shards"], key=int):
            path = Path(results) / manifest["shards"][key]["file"]
            add_table(pq.read_table(path, columns=["target", "module", "effects"]))
    elif isinstance(results, pa.Table):
        add_table(results)
    elif hasattr(results, "items"):

        def block_of(module: str, value: Any) -> Any:
            block = torch.as_tensor(value).detach().cpu()
            if block.dim() != 2:
                raise LensError(f"effects of {module!r} must be [positions, units], got shape {tuple(block.shape)}")
            return block.numpy()

        for key, value in results.items():
            if hasattr(value, "items"):  # {target: effects}: one TensorDict of effects per target
                for module, block in value.items():
                    add(str(key), str(module), block_of(str(module), block))
            else:
                add(None, str(key), block_of(str(key), value))
    else:
        raise LensError(f"rank_units takes a run folder, a pyarrow Table or effects, not {type(results).__name__}")

    columns: dict[str, list[Any]] = {k: [] for k in ("target", "module", "unit", "mean_abs", "mean", "max_abs",
                                                      "rows", "rank")}  # fmt: skip
    for (target, module), entry in acc.items():
        rows = max(entry["rows"], 1)
        mean_abs, mean = entry["abs"] / rows, entry["sum"] / rows
        order = np.argsort(-mean_abs if by == "mean_abs" else mean, kind="stable")
        for rank, unit in enumerate(order, start=1):
            columns["target"].append(target)
            columns["module"].append(module)
            columns["unit"].append(int(unit))
            columns["mean_abs"].append(float(mean_abs[unit]))
            columns["mean"].append(float(mean[unit]))
            columns["max_abs"].append(float(entry["max"][unit]))
            columns["rows"].append(int(entry["rows"]))
            columns["rank"].append(rank)
    schema = pa.schema([("target", pa.string()), ("module", pa.string()), ("unit", pa.int64()),
                        ("mean_abs", pa.float64()), ("mean", pa.float64()), ("max_abs", pa.float64()),
                        ("rows", pa.int64()), ("rank", pa.int64())])  # fmt: skip
    return pa.Table.from_pydict(columns, schema=schema)


# ----------------------------------------------------------------------------------------------------------------
# Collections: the rows that explain_dataset(..., lens=AblationLens(...)) writes


def ablation_schema(metadata: dict[str, str] | None = None) -> Any:
    """The Parquet schema of an ablation run: one row per position, target and module.

    The columns of :func:`lczerolens.run.result_schema` that do not concern a map (``source``, ``game``, ``ply``,
    ``fen``, ``played``, ``target``, ``move``, ``target_value`` = ``f(clean)``, ``value``, ``wdl``, ``mlh``),
    then ``module`` (string, the ablated module) and ``effects`` (``list<float32>``, one ``f(unit ablated) -
    f(clean)`` per unit of the module) in place of ``relevance`` and ``conservation``.
    """
    import pyarrow as pa

    from lczerolens.run import _schema_fields

    fields = [pa.field(n, t) for n, t in _schema_fields() if n not in ("relevance", "conservation")]
    fields += [pa.field("module", pa.string()), pa.field("effects", pa.list_(pa.float32()))]
    schema = pa.schema(fields)
    return schema.with_metadata(metadata) if metadata else schema


def ablation_table(
    model: Any,
    lens: AblationLens,
    targets: Sequence[str],
    positions: Sequence[Any],
    batch_size: int,
    metadata: dict[str, str] | None = None,
) -> tuple[Any, dict[str, int]]:
    """The rows of ``positions`` (:class:`lczerolens.data.Position`) for an ablation run, and the positions that
    gave no row per target (``top``: no legal move; ``played``: a game's last position)."""
    import numpy as np
    import pyarrow as pa

    from lczerolens.board import encode_boards
    from lczerolens.run import _evaluation, _fixed_list

    network, input_format = model_parts(model)
    dtype, device = param_like(network)
    columns: dict[str, list[Any]] = {f.name: [] for f in ablation_schema()}
    no_row: dict[str, int] = {}
    order_key: list[tuple[int, int]] = []
    for start in range(0, len(positions), batch_size):
        batch = positions[start : start + batch_size]
        boards = [p.board for p in batch]
        planes = encode_boards(boards, input_format)
        with torch.no_grad():
            raw = network(planes.to(dtype=dtype, device=device))
        evals = _evaluation({k: v.detach().float().cpu() for k, v in raw.items() if k != "policy"}, len(batch))
        for t_index, target in enumerate(targets):
            if target == "top":
                rows = [i for i, b in enumerate(boards) if any(True for _ in b.legal_moves)]
                arg: Any = None
            elif target == "played":
                rows = [i for i, p in enumerate(batch) if p.played is not None]
                arg = [batch[i].played for i in rows]
            else:
                rows, arg = list(range(len(batch))), target
            if len(rows) < len(batch):
                no_row[target] = no_row.get(target, 0) + len(batch) - len(rows)
            if not rows:
                continue
            result = lens.ablate(model, [boards[i] for i in rows], arg, planes=planes[rows])
            effects: dict[str, Any] = {name: tensor.numpy() for name, tensor in result.effects.items()}
            for j, i in enumerate(rows):
                p = batch[i]
                for name, per_unit in effects.items():
                    order_key.append((start + i, t_index))
                    columns["source"].append(p.source)
                    columns["game"].append(p.game)
                    columns["ply"].append(p.ply)
                    columns["fen"].append(boards[i].fen())
                    columns["played"].append(p.played.uci() if p.played is not None else None)
                    columns["target"].append(target)
                    columns["move"].append(result.moves[j].uci() if result.moves is not None else None)
                    columns["target_value"].append(float(result.target[j]))
                    columns["value"].append(evals["value"][i])
                    columns["wdl"].append(evals["wdl"][i])
                    columns["mlh"].append(evals["mlh"][i])
                    columns["module"].append(name)
                    columns["effects"].append(np.asarray(per_unit[j], dtype=np.float32))
    # By position, then target (modules stay in the network's order): as a relevance run orders its rows.
    order = sorted(range(len(order_key)), key=order_key.__getitem__)
    schema = ablation_schema(metadata)
    arrays = []
    for field in schema:
        values = [columns[field.name][r] for r in order]
        arrays.append(_fixed_list(values, 3) if field.name == "wdl" else pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema), no_row
