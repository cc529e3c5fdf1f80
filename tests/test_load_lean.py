"""The native loader's lean paths: chunked gunzip (linear time, bounded), in-place LINEAR16 decoding."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from lczerolens.errors import ModelLoadError
from lczerolens.model.proto import Layer, _gunzip
from lczerolens.model.weights import decode_layer


def _members(sizes: list[int]) -> tuple[bytes, bytes]:
    """Concatenated gzip members of random (incompressible) bytes and their plain concatenation."""
    rng = np.random.default_rng(0)
    plain = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    return b"".join(gzip.compress(p, compresslevel=1, mtime=0) for p in plain), b"".join(plain)


@pytest.mark.parametrize("sizes", [[3 << 20], [(1 << 20) - 40, 5000, 2 << 20], [1, 0, 17]])
def test_gunzip_members_across_input_slices(sizes):
    # Members ending just before, at and after the 1 MiB input slices the reader feeds zlib.
    data, plain = _members(sizes)
    assert bytes(_gunzip(data, "x", 1 << 31)) == plain == gzip.decompress(data)


def test_gunzip_truncated_and_padded():
    data, plain = _members([(1 << 20) + 123])
    for cut in (10, len(data) // 2, (1 << 20) + 1, len(data) - 4):
        with pytest.raises(ModelLoadError, match="corrupted or truncated"):
            _gunzip(data[:cut], "x", 1 << 31)
    assert bytes(_gunzip(data + b"\0" * 7, "x", 1 << 31)) == plain  # zero padding after the last member


def test_gunzip_refuses_a_bomb_within_the_limit():
    bomb = gzip.compress(b"\0" * (80 << 20), compresslevel=9)
    with pytest.raises(ModelLoadError, match="refusing"):
        _gunzip(bomb, "bomb", 1 << 31)
    with pytest.raises(ModelLoadError, match="limit"):
        _gunzip(gzip.compress(os.urandom(1 << 16)), "small cap", 1000)


def test_linear16_in_place_decoding_is_lc0s_formula_bit_for_bit():
    q = np.arange(65536, dtype="<u2")
    for lo, hi in ((-1.5, 2.25), (0.0, 1e-7), (-3e5, 7.0), (123.0, 123.0)):
        layer = Layer(params=q.tobytes(), min_val=lo, max_val=hi)
        span = np.float32(np.float32(hi) - np.float32(lo))
        expected = q.astype(np.float32) / np.float32(65535.0) * span + np.float32(lo)
        assert decode_layer(layer).tobytes() == expected.astype(np.float32).tobytes()


def test_non_finite_values_are_named():
    values = np.array([0.0, 1.0, np.nan, 2.0], dtype="<f4")
    with pytest.raises(ModelLoadError, match="value 2 is nan"):
        decode_layer(Layer(params=values.tobytes(), encoding=Layer.Encoding.FLOAT32), "w")
    values[2] = -np.inf
    with pytest.raises(ModelLoadError, match="value 2 is -inf"):
        decode_layer(Layer(params=values.tobytes(), encoding=Layer.Encoding.FLOAT32), "w")


def test_large_networks_are_probed_without_the_random_planes(monkeypatch):
    from lczerolens.model import safety
    from lczerolens.model.native import load_pb
    from lczerolens.model.proto import serialize_net
    from lczerolens.testing import random_net

    data = serialize_net(random_net("attention", encoder_layers=1))
    seen: list[int] = []
    original = safety.probe_planes

    def spy(fmt, random_planes=3, **options):
        planes = original(fmt, random_planes, **options)
        seen.append(planes.shape[0])
        return planes

    monkeypatch.setattr(safety, "probe_planes", spy)
    load_pb(data)
    monkeypatch.setattr(safety, "LARGE_NETWORK_PARAMETERS", 1000)
    load_pb(data)
    assert seen == [6, 2]
