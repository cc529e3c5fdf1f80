"""Module outputs of a network on a batch of boards, and their squares put back in board orientation.

:func:`_activations` reads the outputs through :class:`~lczerolens.lenses.ActivationLens`, which runs its own
copy of the module tree, so the user's model is never touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import chess
import torch

from lczerolens.errors import InputShapeError, LensError

if TYPE_CHECKING:
    from lczerolens.board import InputFormat
    from lczerolens.lenses.base import ModelLike

__all__ = ["module_names", "resolve_modules", "square_features", "activation_maps", "board_square_index"]

#: Default probe sites: the input convolution and every block's output (residual nets), or the embedding and
#: every encoder layer's output (attention nets).
RESIDUAL_DEFAULT_MODULES = ("inputconv", "block*/conv2/relu")
ATTENTION_DEFAULT_MODULES = ("attn_body/ln2", "encoder*/ln2")


def _network(model: ModelLike) -> torch.nn.Module:
    return cast(torch.nn.Module, getattr(model, "network", model))


def _glob(pattern: str) -> re.Pattern[str]:
    """A module-name glob as a regex: ``*`` matches within one path segment (not ``/``), ``**`` across them,
    ``?`` one character other than ``/``."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts))


def module_names(model: ModelLike) -> list[str]:
    """The names of ``model``'s submodules (lc0's node names, e.g. ``"block3/conv2/relu"``), in forward order."""
    return [name for name, _ in _network(model).named_modules() if name]


def resolve_modules(model: ModelLike, modules: str | Sequence[str] | None) -> list[str]:
    """Expand module names and glob patterns (``"block*/conv2/relu"``; ``*`` stays within one ``/`` segment,
    ``**`` crosses them) against ``model``, keeping the network's order within a pattern; ``None`` gives the
    defaults of the network's family. A leading ``"network."`` (as in ``LczeroModel.named_modules()``) is
    accepted and dropped."""
    names = module_names(model)
    patterns: tuple[str, ...]
    if modules is None:
        patterns = RESIDUAL_DEFAULT_MODULES if "inputconv" in names else ATTENTION_DEFAULT_MODULES
    elif isinstance(modules, str):
        patterns = (modules,)
    else:
        patterns = tuple(modules)
    out: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise LensError(f"module names must be strings, got {pattern!r}")
        pattern = pattern.removeprefix("network.")
        regex = _glob(pattern)
        hits = [n for n in names if regex.fullmatch(n)]
        if not hits:
            sample = ", ".join(names[:12])
            raise LensError(f"no module of the network matches {pattern!r}; its modules start: {sample}, ...")
        out.extend(h for h in hits if h not in out)
    return out


def _activations(
    model: ModelLike, boards: Sequence[chess.Board], modules: Sequence[str], batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Outputs of ``modules`` (resolved names) on ``boards``: ``{name: float32 tensor [N, ...]}`` on the CPU.

    Read through :class:`~lczerolens.lenses.ActivationLens` (the model is never touched); token streams come
    back as ``[N, 64, E]``.
    """
    from lczerolens.lenses import ActivationLens

    found = ActivationLens(list(modules)).activations(model, list(boards), batch_size=batch_size)
    return {name: found[name].detach().to("cpu", torch.float32) for name in modules}


def board_square_index(boards: Sequence[chess.Board], input_format: InputFormat | int) -> torch.Tensor:
    """``[N, 64]`` long: entry ``[i, s]`` is the network-orientation square that board square ``s`` of board
    ``i`` is fed to (so ``net_features[i, :, index[i]]`` is in board orientation)."""
    from lczerolens.board import LczeroBoard

    grid = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    cache: dict[int, torch.Tensor] = {}
    rows = []
    for b in boards:
        lb = b if isinstance(b, LczeroBoard) else LczeroBoard.from_board(b)
        key = lb._orientation(input_format)
        if key not in cache:
            cache[key] = lb.network_to_board(grid, input_format).flatten().round().long()
        rows.append(cache[key])
    return torch.stack(rows)


def _per_square(activation: torch.Tensor) -> torch.Tensor:
    """``[N, C, 8, 8]`` or ``[N, 64, E]`` -> ``[N, C, 64]`` (network orientation)."""
    if activation.ndim == 4 and tuple(activation.shape[2:]) == (8, 8):
        return activation.reshape(activation.shape[0], activation.shape[1], 64)
    if activation.ndim == 3 and activation.shape[1] == 64:
        return activation.transpose(1, 2)
    raise InputShapeError(
        f"expected a per-square activation [N, C, 8, 8] or [N, 64, E], got shape {tuple(activation.shape)}"
    )


def activation_maps(
    activation: torch.Tensor, boards: Sequence[chess.Board], input_format: InputFormat | int
) -> torch.Tensor:
    """One activation ``[N, C, 8, 8]`` (residual) or ``[N, 64, E]`` (attention tokens) as per-channel maps in
    board orientation: ``[N, C, 64]``, ``maps[i, c, chess.E4]`` = channel ``c`` at e4."""
    per = _per_square(activation)
    if per.shape[0] != len(boards):
        raise InputShapeError(f"{per.shape[0]} activations for {len(boards)} boards")
    index = board_square_index(boards, input_format)
    return torch.gather(per, 2, index[:, None, :].expand(-1, per.shape[1], -1))


def square_features(
    activation: torch.Tensor, boards: Sequence[chess.Board], input_format: InputFormat | int
) -> torch.Tensor:
    """``[N, 64, C]``: each board square's activation vector (board orientation), for per-square probes."""
    return activation_maps(activation, boards, input_format).transpose(1, 2)


def _flat_features(activation: torch.Tensor) -> torch.Tensor:
    return activation.reshape(activation.shape[0], -1)


def _mean_features(activation: torch.Tensor) -> torch.Tensor:
    return _per_square(activation).mean(dim=2)


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise LensError(f"{what} has non-finite values")

