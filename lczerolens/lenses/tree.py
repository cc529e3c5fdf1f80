"""Explaining networks that share the user's parameters but never touch the user's module tree.

A lens that needs other rules than the plain forward (LRP) or must see inside (activations, patching) works on a
*shadow* of the network: a tree of new module objects, one per module of the original, whose ``_modules`` dicts
are its own but whose parameters and buffers are the very same tensors. Swapping a module in the shadow, or
wrapping one to record its output, changes nothing that another thread running the original (or another lens's
shadow) can see, and a change to a weight in place is seen by both at once. Building one costs a walk over the
modules (a few hundred microseconds for maia-1900); :class:`ShadowCache` keeps one per network and rebuilds it
when the network's structure changes.

Example
-------
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> copy = shadow(net)
>>> copy._modules["1"] = nn.Tanh()  # the original keeps its ReLU
>>> type(net[1]).__name__, copy[0].weight is net[0].weight
('ReLU', True)
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TypeAlias, cast

import torch
from torch import nn

from lczerolens.errors import LensError

__all__ = ["shadow", "overlay", "structure_key", "ShadowCache", "network_of"]

_PLAIN = (bool, int, float, str, type(None))

#: One module's entry in a :func:`structure_key`: name, object id, plain settings, (id, version) of its
#: parameters and of its buffers.
ModuleKey: TypeAlias = tuple[
    str, int, tuple[tuple[str, object], ...], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]
]
#: What :func:`structure_key` returns.
StructureKey: TypeAlias = tuple[ModuleKey, ...]


def network_of(model: nn.Module) -> nn.Module:
    """The network inside an ``LczeroModel`` (its ``.network``), or ``model`` itself when it is a network."""
    inner = getattr(model, "network", None)
    return inner if isinstance(inner, nn.Module) else model


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes; its module, parameter, buffer and hook dicts are copies."""
    clone = copy.copy(module)
    for key in ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
        table = module.__dict__.get(key)
        if table is not None:
            clone.__dict__[key] = type(table)(table)
    return clone


def shadow(network: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``network``'s module tree that shares every parameter and buffer (no tensor is copied).

    Shared submodules stay shared in the copy (one clone per original module object). With ``dtype``, floating
    parameters and buffers of another dtype are the exception: the copy holds converted copies of them (e.g.
    float32 copies of a half-precision model's weights), and the original keeps its own.
    """
    clones: dict[int, nn.Module] = {}
    converted: dict[int, torch.Tensor] = {}

    def convert(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None or dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
            return tensor
        if id(tensor) not in converted:
            data = tensor.detach().to(dtype)
            converted[id(tensor)] = (
                nn.Parameter(data, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else data
            )
        return converted[id(tensor)]

    def visit(module: nn.Module) -> nn.Module:
        found = clones.get(id(module))
        if found is not None:
            return found
        clone = _shallow(module)
        clones[id(module)] = clone
        if dtype is not None:
            # convert() keeps a Parameter a Parameter, so the parameter table still holds only parameters.
            tables = cast("tuple[dict[str, torch.Tensor | None], ...]", (clone._parameters, clone._buffers))
            for table in tables:
                for key, tensor in table.items():
                    table[key] = convert(tensor)
        for name, child in module._modules.items():
            if child is not None:
                clone._modules[name] = visit(child)
        return clone

    return visit(network)


def overlay(root: nn.Module, replace: Mapping[str, Callable[[nn.Module], nn.Module]]) -> nn.Module:
    """A new root in which the module at each dotted path of ``replace`` is ``replace[path](module)``.

    Only the modules on the way from the root to a replaced module are new objects; everything else is shared
    with ``root``, which is left as it was. This is how one call of a lens adds its own taps to a cached shadow
    that other calls (and threads) share.
    """
    if not replace:
        return root
    new_root = _shallow(root)
    for path, build in replace.items():
        parts = path.split(".")
        parent = new_root
        for part in parts[:-1]:
            child = _slot(parent, part, path)
            if not getattr(child, "_lczerolens_overlay", False):
                child = _shallow(child)
                # torch types Module.__setattr__ for tensors and modules only; a plain flag is an ordinary attribute.
                child._lczerolens_overlay = True  # type: ignore[assignment]
                parent._modules[part] = child
            parent = child
        parent._modules[parts[-1]] = build(_slot(parent, parts[-1], path))
    return new_root


def _slot(parent: nn.Module, name: str, path: str) -> nn.Module:
    """The submodule ``name`` of ``parent`` on the way to ``path``; raises for an empty (``None``) slot."""
    child = parent._modules[name]
    if child is None:
        raise LensError(f"module path {path!r} goes through {name!r}, an empty (None) submodule; choose another module")
    return child


def structure_key(network: nn.Module) -> StructureKey:
    """What a shadow of ``network`` depends on: every module object, its mode and plain settings, every tensor.

    Equal keys mean a shadow built earlier is still right. Values changed in place need no rebuild where the
    shadow shares the tensors; the tensors' version counters are part of the key for shadows holding converted
    copies (half-precision models explained in float32).
    """
    key: list[ModuleKey] = []
    for name, module in network.named_modules(remove_duplicate=False):
        settings = tuple((k, v) for k, v in module.__dict__.items() if type(v) in _PLAIN)
        key.append(
            (
                name,
                id(module),
                settings,
                tuple((id(t), t._version if t is not None else 0) for t in module._parameters.values()),
                tuple((id(t), t._version if t is not None else 0) for t in module._buffers.values()),
            )
        )
    return tuple(key)


class ShadowCache:
    """Per network, the last explaining tree built from it, rebuilt when :func:`structure_key` changes.

    Entries die with their network (weak keys). Safe to use from several threads: building is idempotent and
    a tree, once returned, is never changed.
    """

    def __init__(self, build: Callable[[nn.Module], nn.Module]) -> None:
        self._build = build
        self._entries: weakref.WeakKeyDictionary[nn.Module, tuple[StructureKey, nn.Module]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, network: nn.Module) -> nn.Module:
        key = structure_key(network)
        with self._lock:
            entry = self._entries.get(network)
        if entry is not None and entry[0] == key:
            return entry[1]
        tree = self._build(network)
        with self._lock:
            self._entries[network] = (key, tree)
        return tree

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
