"""Writing a network back as lc0 weights (``LczeroModel.save``).

The native builders (:mod:`lczerolens.model.residual`, :mod:`lczerolens.model.attention`) record, for every
weight layer they read, which tensor of which module it became (a :class:`Binding`). The parsed ``Net`` is kept
with the network, its bound layers emptied (their values live in the modules now; keeping both would double the
memory of a large net). Saving writes each bound layer from the module's *current* tensor, so edits made in
place (a zeroed head, an ablated channel, training) are saved, and copies every other field of the file (format,
metadata, unbound layers) as it was.

Batch norm: lc0 folds it into the convolution when it loads a file, and so do we; a saved convolution is written
folded, with an identity batch norm (means 0, gammas 1, betas 0, and variances ``v = float32(1 - 1e-5)``, for
which ``float32(v + 1e-5)`` is exactly 1): folding it again changes no bit, in lc0 or here. (lc0 0.32 does not
read a convolution without batch-norm layers as one without batch norm, so they cannot simply be left out.)

Encodings: ``FLOAT32`` is lossless (load -> save -> load gives the same tensors bit for bit) but lc0 0.32 cannot
read it (it arrived in lc0 0.33, so such files declare 0.33 as their minimum version); ``LINEAR16`` is what lc0
0.32 reads, quantising each layer to 65536 levels between its min and max (error at most half a level:
``(max - min) / 131070``); ``FLOAT16`` and ``BFLOAT16`` round to nearest.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lczerolens.errors import InvalidOptionError, SaveError, UnsupportedModelError
from lczerolens.model.proto import Layer, Net
from lczerolens.model.weights import ENCODINGS, encode_layer

__all__ = ["Binding", "SaveError", "bind", "keep_net", "save_network"]


@dataclass(frozen=True)
class Binding:
    """One lc0 weight layer and the tensor it became.

    ``values()`` gives that tensor's current values flat, in lc0's layout for the layer.
    """

    layer: Layer
    values: Callable[[], torch.Tensor]
    name: str


def bind(bindings: list[Binding] | None, layer: Layer, module: nn.Module, attr: str, name: str,
         transpose: bool = False) -> None:  # fmt: skip
    """Record that ``layer`` became ``module.<attr>`` (``transpose``: stored ``[a, b]``, held as ``[b, a]``)."""
    if bindings is None:
        return

    def values() -> torch.Tensor:
        t = getattr(module, attr).detach()
        return (t.t() if transpose else t).reshape(-1)

    bindings.append(Binding(layer, values, name))


#: The variance whose batch norm is the identity in float32: float32(v + 1e-5) == 1 exactly.
_IDENTITY_VARIANCE = np.float32(1.0 - 1e-5)
assert np.float32(_IDENTITY_VARIANCE + np.float32(1e-5)) == np.float32(1.0)


def _identity_bn(channels: int, encoding: str) -> dict[str, Layer]:
    return {
        "bn_means": encode_layer(np.zeros(channels, np.float32), encoding),
        "bn_stddivs": encode_layer(np.full(channels, _IDENTITY_VARIANCE, np.float32), encoding),
        "bn_gammas": encode_layer(np.ones(channels, np.float32), encoding),
        "bn_betas": encode_layer(np.zeros(channels, np.float32), encoding),
    }


def keep_net(network: nn.Module, net: Net, bindings: list[Binding], folded: tuple[tuple[Any, int], ...] = ()) -> None:
    """Attach ``net`` and its bindings to ``network`` for :func:`save_network`, emptying the bound layers.

    ``folded``: ``(ConvBlock message, its output channels)`` for each convolution whose batch norm was folded in.
    """
    seen: set[int] = set()
    unique = []
    for b in bindings:
        if id(b.layer) not in seen:  # a layer shared by several modules (smolgen's generator) is written once
            seen.add(id(b.layer))
            unique.append(b)
    for b in unique:
        b.layer.params = b""
    # Plain attributes (not buffers): they hold no tensors and must not travel with state_dict().
    network.__dict__["_lc0_net"] = net
    network.__dict__["_lc0_bindings"] = tuple(unique)
    network.__dict__["_lc0_folded_convs"] = tuple(folded)


_lock = threading.Lock()


def _encoding_number(encoding: str) -> int:
    return int(Layer.Encoding[encoding])


def serialize_network(network: nn.Module, encoding: str = "LINEAR16") -> bytes:
    """The protobuf bytes of ``network`` as lc0 weights (see :func:`save_network`)."""
    net: Net | None = network.__dict__.get("_lc0_net")
    if net is None:
        raise UnsupportedModelError(
            f"this {type(network).__name__} was not built from lc0 weights (an .onnx export, or a module of your "
            "own), so there are no lc0 weights to write; load the network's .pb.gz to edit and save it"
        )
    if not isinstance(encoding, str) or encoding.upper() not in ENCODINGS:
        raise InvalidOptionError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    encoding = encoding.upper()
    bindings: tuple[Binding, ...] = network.__dict__["_lc0_bindings"]
    encoded: list[tuple[Layer, Layer]] = []
    for b in bindings:
        values = b.values().to(device="cpu", dtype=torch.float32).numpy().astype(np.float32)
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InvalidOptionError(
                f"{b.name} holds a non-finite value ({values[bad]} at index {bad}); lc0 weights must be finite, "
                "fix the parameter before saving"
            )
        if encoding in ("FLOAT16", "BFLOAT16"):
            limit = 65504.0 if encoding == "FLOAT16" else 3.3e38
            if np.abs(values).max(initial=0.0) > limit:
                raise InvalidOptionError(
                    f"{b.name} holds values beyond {encoding}'s range (|x| up to {np.abs(values).max():.3g}); "
                    "save with encoding='FLOAT32' or 'LINEAR16'"
                )
        encoded.append((b.layer, encode_layer(values, encoding)))
    with _lock:
        # The kept Net is shared: fill its emptied layers, serialise, and empty them again.
        saved_versions = (net.min_version.major, net.min_version.minor, net.min_version.patch)
        saved_encoding = net.format.weights_encoding
        convs = network.__dict__.get("_lc0_folded_convs", ())
        cleared: list[tuple[Any, str, Layer | None]] = []
        try:
            for layer, new in encoded:
                layer.params = new.params
                layer.min_val = new.min_val
                layer.max_val = new.max_val
                layer.encoding = new.encoding
            for block, channels in convs:
                for field, layer in _identity_bn(channels, encoding).items():
                    cleared.append((block, field, getattr(block, field) if block.has(field) else None))
                    setattr(block, field, layer)
            if encoding != "LINEAR16":
                # lc0 0.32 misreads other encodings: ask for 0.33, so that 0.32 refuses the file.
                if (net.min_version.major, net.min_version.minor) < (0, 33):
                    net.min_version.major, net.min_version.minor, net.min_version.patch = 0, 33, 0
            net.format.weights_encoding = _encoding_number("LINEAR16")
            data = net.serialize()
        finally:
            for layer, _ in encoded:
                layer.params = b""
            for block, field, value in cleared:
                if value is None:
                    block.clear(field)
                else:
                    setattr(block, field, value)
            net.min_version.major, net.min_version.minor, net.min_version.patch = saved_versions
            net.format.weights_encoding = saved_encoding
    return data


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_network(network: nn.Module, path: str | Path, encoding: str = "LINEAR16") -> Path:
    """Write ``network`` as lc0 weights to ``path`` (gzipped unless it ends in ``.pb``); atomic."""
    path = Path(path)
    data = serialize_network(network, encoding)
    if path.suffix != ".pb":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SaveError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise SaveError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SaveError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from exc
    return path
