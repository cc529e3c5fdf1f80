"""Decoding and encoding of lc0 weight tensors (``Weights.Layer``) to and from float32 numpy arrays.

A layer's ``params`` bytes hold its values in one of lc0's encodings:

- ``LINEAR16`` (the default, also when the layer says ``UNKNOWN_ENCODING``): little-endian uint16 ``q``,
  value ``= q / 65535 * (max_val - min_val) + min_val``, computed in float32 as lc0 does;
- ``FLOAT16`` (IEEE half), ``BFLOAT16`` (the top 16 bits of a float32), ``FLOAT32``; all little-endian.

Example
-------
>>> import numpy as np
>>> layer = encode_layer(np.array([-1.0, 0.0, 2.0]), "FLOAT32")
>>> decode_layer(layer).tolist()
[-1.0, 0.0, 2.0]
"""

from __future__ import annotations

import numpy as np
import torch

from lczerolens.errors import ModelLoadError
from lczerolens.model.proto import Layer

__all__ = ["ENCODINGS", "decode_layer", "encode_layer", "layer_size"]

Encoding = Layer.Encoding
#: Encoding names accepted by :func:`encode_layer`.
ENCODINGS = ("LINEAR16", "FLOAT16", "BFLOAT16", "FLOAT32")
_BYTES_PER_VALUE = {Encoding.LINEAR16: 2, Encoding.FLOAT16: 2, Encoding.BFLOAT16: 2, Encoding.FLOAT32: 4}


def _encoding_of(layer: Layer, default: int = Encoding.LINEAR16) -> Encoding:
    enc = int(layer.encoding) or int(default) or int(Encoding.LINEAR16)
    try:
        return Encoding(enc)
    except ValueError:
        raise ModelLoadError(f"unknown weight encoding {enc} (lc0 knows {', '.join(ENCODINGS)})") from None


def layer_size(layer: Layer, default_encoding: int = Encoding.LINEAR16) -> int:
    """Number of values stored in ``layer`` (0 for an absent layer)."""
    if not layer.params:
        return 0
    return len(layer.params) // _BYTES_PER_VALUE[_encoding_of(layer, default_encoding)]


def decode_layer(layer: Layer, name: str = "layer", default_encoding: int = Encoding.LINEAR16) -> np.ndarray:
    """The values of ``layer`` as a flat float32 array (empty when the layer is absent).

    Parameters
    ----------
    layer : Layer
        A ``Weights.Layer`` message.
    name : str
        Named in error messages (e.g. ``"residual[3].conv1.weights"``).
    default_encoding : int
        Used when the layer does not state its encoding (``Format.weights_encoding``; LINEAR16 in lc0 files).

    Raises
    ------
    ModelLoadError
        Unknown encoding, a byte count that is not a whole number of values, non-finite ``min_val`` /
        ``max_val`` (LINEAR16), or a NaN or infinite value.

    Examples
    --------
    >>> decode_layer(encode_layer(np.arange(3.0), "LINEAR16")).round(4).tolist()
    [0.0, 1.0, 2.0]
    """
    params = layer.params
    if not params:
        return np.zeros(0, dtype=np.float32)
    try:
        enc = _encoding_of(layer, default_encoding)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{name}: {exc}") from None
    width = _BYTES_PER_VALUE[enc]
    if len(params) % width:
        raise ModelLoadError(
            f"{name}: {len(params)} bytes is not a whole number of {enc.name} values ({width} bytes each); "
            "the file is corrupted."
        )
    # The output is a torch tensor's memory seen as a numpy array, filled in place: numpy would ask the kernel for
    # huge pages on an array this large, and where memory is fragmented the kernel then compacts it on every page
    # fault (seen here: 1.5-2.5 s of CPU time for BT4's 640 MB instead of 0.35 s).
    values = torch.empty(len(params) // width, dtype=torch.float32).numpy()
    if enc == Encoding.LINEAR16:
        lo = np.float32(layer.min_val)
        with np.errstate(over="ignore", invalid="ignore"):
            span = np.float32(np.float32(layer.max_val) - lo)
            top = np.float32(span + lo)  # the value of q = 65535, the largest in magnitude with lo
        if not (np.isfinite(lo) and np.isfinite(span) and np.isfinite(top)):
            raise ModelLoadError(
                f"{name}: LINEAR16 range min_val={layer.min_val!r}, max_val={layer.max_val!r} is not finite; the "
                "file is corrupted."
            )
        values[...] = np.frombuffer(params, dtype="<u2")
        # Same float32 operation order as lc0: q / 65535 * range + min (in place: one array, not three). Each
        # step is monotone in q, so every value lies between lo (q = 0) and top (q = 65535): all finite.
        values /= np.float32(65535.0)
        values *= span
        values += lo
        return values
    if enc == Encoding.FLOAT16:
        values[...] = np.frombuffer(params, dtype="<f2")
    elif enc == Encoding.BFLOAT16:
        bits = values.view(np.uint32)
        bits[...] = np.frombuffer(params, dtype="<u2")
        bits <<= np.uint32(16)
    else:
        values[...] = np.frombuffer(params, dtype="<f4")
    # max and min propagate NaN: two passes without a temporary array; the slow search only on failure.
    if values.size and not (np.isfinite(values.max()) and np.isfinite(values.min())):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ModelLoadError(
            f"{name}: value {bad} is {values[bad]} ({enc.name}); weights must be finite, the file is corrupted."
        )
    return values


def encode_layer(values: np.ndarray, encoding: str | int = "LINEAR16", dims: bool = False) -> Layer:
    """A ``Weights.Layer`` holding ``values`` (any shape; stored flat, row-major) in ``encoding``.

    LINEAR16 quantises to 65536 levels between the array's min and max (exact for min and max); FLOAT16 and
    BFLOAT16 round to nearest. The layer states its encoding explicitly, except LINEAR16, which lc0 files leave
    implicit. ``dims=True`` also records the array's shape in ``dims``.

    Examples
    --------
    >>> layer = encode_layer(np.array([0.5, -0.25]), "BFLOAT16")
    >>> decode_layer(layer).tolist()
    [0.5, -0.25]
    """
    enc = Encoding[encoding] if isinstance(encoding, str) else Encoding(encoding)
    arr = np.asarray(values, dtype=np.float64)
    flat = arr.reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ValueError("cannot encode non-finite weights")
    layer = Layer()
    if enc in (Encoding.LINEAR16, Encoding.UNKNOWN_ENCODING):
        lo = float(np.float32(flat.min())) if flat.size else 0.0
        hi = float(np.float32(flat.max())) if flat.size else 0.0
        span = hi - lo
        if span > 0:
            q = np.rint((flat - lo) / span * 65535.0)
        else:
            q = np.zeros_like(flat)
        layer.min_val = lo
        layer.max_val = hi
        layer.params = np.clip(q, 0, 65535).astype("<u2").tobytes()
    elif enc == Encoding.FLOAT16:
        layer.params = flat.astype("<f2").tobytes()
        layer.encoding = enc
    elif enc == Encoding.BFLOAT16:
        bits = flat.astype(np.float32).view(np.uint32).astype(np.uint64)
        # Round to nearest even on the 16 dropped bits.
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        layer.params = rounded.astype("<u2").tobytes()
        layer.encoding = enc
    else:
        layer.params = flat.astype("<f4").tobytes()
        layer.encoding = enc
    if dims:
        layer.dims = list(arr.shape)
    return layer
