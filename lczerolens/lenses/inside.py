"""Seeing inside a network without touching it: module selection by name, recording and replacing outputs.

Every lens here runs a *shadow* of the user's network (:func:`lczerolens.lenses.tree.shadow`: new module objects,
the very same parameters), cached per network, and adds its per-call wrappers with
:func:`~lczerolens.lenses.tree.overlay`. No hook is registered on the user's modules and none of them is swapped,
so plain forwards, other lenses and other threads running the same model stay exact.

Example
-------
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
>>> match_modules(net, ["1"])
['1']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lczerolens.errors import LensError
from lczerolens.lenses.tree import ShadowCache, overlay, shadow

__all__ = [
    "match_modules",
    "module_patterns",
    "batch_first",
    "run_with",
    "outputs_dict",
    "Record",
    "Replace",
    "SHADOWS",
]

#: The plain shadow of each network a lens has looked into (rebuilt when the network's modules change).
SHADOWS = ShadowCache(shadow)

#: Rows per forward pass when a lens multiplies the batch (steps, samples, removals, squares).
MAX_ROWS = 512


_HOLDERS = (nn.Module, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def module_patterns(modules: str | Sequence[str], what: str = "modules") -> tuple[str, ...]:
    """``modules`` (one name or pattern, or a sequence of them) as a non-empty tuple of strings."""
    if isinstance(modules, str):
        modules = (modules,)
    if not isinstance(modules, Sequence) or not all(isinstance(m, str) for m in modules):
        raise LensError(f"{what}={modules!r} must be a module name pattern or a sequence of them, e.g. 'block*/conv2'")
    return tuple(modules)


def match_modules(network: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The module names of ``network`` (as in ``named_modules()``) that match any ``fnmatch`` pattern, in order.

    A pattern that matches no module raises :class:`LensError` listing (some of) the names.
    """
    # Holders of constants or submodules (an ONNX graph's "initializers", a ModuleList) are never called.
    names = [name for name, module in network.named_modules() if name and type(module) not in _HOLDERS]
    chosen: dict[str, None] = {}
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            import difflib

            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            shown = close or names[:12]
            more = "" if close or len(names) <= 12 else f" (and {len(names) - 12} more)"
            raise LensError(
                f"no module matches {pattern!r}; {'close names' if close else 'modules'} are {shown}{more}. "
                "Names are those of model.network.named_modules(); patterns use fnmatch (*, ?, [..])"
            )
        chosen.update(dict.fromkeys(hits))
    order = {name: i for i, name in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


def batch_first(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``tensor`` with the boards in dimension 0: ``[N, ...]`` stays, a stacked ``[N*k, ...]`` becomes ``[N, k, ...]``.

    The attention body of lc0's ONNX export runs its tokens as ``[N*64, E]``; this gives them as ``[N, 64, E]``.
    """
    if tensor.dim() == 0 or tensor.shape[0] % n:
        raise LensError(f"an output of shape {tuple(tensor.shape)} does not hold {n} boards in its first dimension")
    if tensor.shape[0] == n:
        return tensor
    return tensor.reshape(n, tensor.shape[0] // n, *tensor.shape[1:])


class Record(nn.Module):
    """Wraps a module of a shadow for one call: its tensor output goes into ``store[name]``."""

    def __init__(self, inner: nn.Module, name: str, store: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.tap_name = name
        self.store = store

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.store[self.tap_name] = out
        return out


class Replace(nn.Module):
    """Wraps a module of a shadow for one call: its output goes through ``change`` before the rest sees it."""

    def __init__(self, inner: nn.Module, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.tap_name = name
        self.change = change

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise LensError(f"module {self.tap_name!r} returns {type(out).__name__}, not a tensor; choose another")
        return self.change(out)


def outputs_dict(outputs: object) -> dict[str, torch.Tensor]:
    """A network's outputs as a plain dict."""
    if isinstance(outputs, Mapping):
        return dict(outputs)
    if hasattr(outputs, "items"):
        return dict(outputs.items())
    raise LensError(f"the network returned {type(outputs).__name__}, not a dict of head outputs")


def head_of(kind: str) -> str:
    """The head whose output a target ``kind`` reads: ``"policy"``, ``"mlh"``, or ``"value"`` (value, win, draw,
    loss)."""
    return kind if kind in ("policy", "mlh") else "value"


def explained_forward(network: nn.Module, x: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """``network(x)`` as a dict, with at least the output that a target ``kind`` reads.

    lczerolens's own networks (and their shadows, which are copies of the same class) compute only that head
    (``heads=``, :mod:`lczerolens.model.heads`): explaining maia-1900's value skips its policy head, two of its
    sixteen convolutions. Other networks (ONNX imports, user modules) compute every head.
    """
    from lczerolens.model.attention import AttentionNetwork
    from lczerolens.model.residual import ResidualNetwork

    if isinstance(network, (ResidualNetwork, AttentionNetwork)):
        return outputs_dict(network(x, heads=head_of(kind)))
    return outputs_dict(network(x))


def run_with(
    network: nn.Module,
    x: torch.Tensor,
    record: Sequence[str] = (),
    replace: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``x`` through the shadow of ``network``, recording the outputs of ``record`` and changing those of
    ``replace``; returns ``(network outputs, recorded outputs)``. Recording sees a module's output after any
    replacement of the same module."""
    store: dict[str, torch.Tensor] = {}
    wrappers: dict[str, Callable[[nn.Module], nn.Module]] = {}
    for name, change in (replace or {}).items():
        wrappers[name] = _tap(name, change, store if name in record else None)
    for name in record:
        wrappers.setdefault(name, _tap(name, None, store))
    tree = overlay(SHADOWS.get(network), wrappers)
    outputs = outputs_dict(tree(x))
    return outputs, store


def _tap(
    name: str, change: Callable[[torch.Tensor], torch.Tensor] | None, store: dict[str, torch.Tensor] | None
) -> Callable[[nn.Module], nn.Module]:
    """The wrapper builder for module ``name``: its output changed by ``change``, then recorded into ``store``."""

    def build(module: nn.Module) -> nn.Module:
        if change is not None:
            module = Replace(module, name, change)
        if store is not None:
            module = Record(module, name, store)
        return module

    return build
