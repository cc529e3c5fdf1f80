"""lc0's policy maps, derived from move geometry, against the constant tables of real ``leela2onnx`` exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from lczerolens.model.policy_map import ATTENTION_POLICY_SIZE, CONV_POLICY_PLANES, attention_policy_map, conv_policy_map
from lczerolens.policy_index import POLICY_INDEX


def _mapping_table(onnx_path: Path) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    tables = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "/const/mapping_table"]
    assert len(tables) == 1
    return tables[0]


def test_conv_map_equals_lc0_export(maia_onnx_path: Path) -> None:
    np.testing.assert_array_equal(conv_policy_map(), _mapping_table(maia_onnx_path))


def test_attention_map_equals_lc0_export(lc0_binary: Path, tmp_path: Path) -> None:
    attention = pytest.importorskip("lczerolens.testing")
    spec = attention.AttentionNetSpec(embedding="PE_MAP", encoder_layers=1, embedding_size=16, heads=2,
                                      ffn_size=16, smolgen=False, mlh=False)
    path = attention.write_attention_net(spec, tmp_path / "attn.pb.gz")
    out = tmp_path / "attn.onnx"
    result = subprocess.run([str(lc0_binary), "leela2onnx", f"--input={path}", f"--output={out}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_array_equal(attention_policy_map(), _mapping_table(out))


def test_maps_are_injective_and_in_range() -> None:
    conv, attn = conv_policy_map(), attention_policy_map()
    assert conv.shape == attn.shape == (1858,)
    assert len(set(conv.tolist())) == 1858 and conv.min() >= 0 and conv.max() < CONV_POLICY_PLANES * 64
    assert len(set(attn.tolist())) == 1858 and attn.min() >= 0 and attn.max() < ATTENTION_POLICY_SIZE
    assert not conv.flags.writeable and not attn.flags.writeable
    # Planes 73-79 of the convolution head are never read.
    assert (conv // 64).max() == 72


@pytest.mark.parametrize(
    ("uci", "plane", "square"),
    [
        ("e2e4", 1, 12),  # north, distance 2
        ("g1f3", 63, 6),  # knight (-1, +2)
        ("b1c3", 56, 1),  # knight (+1, +2)
        ("h8a1", 5 * 7 + 6, 63),  # south-west, distance 7
        ("e1h1", 14 + 2, 4),  # castling is king-takes-rook: east, distance 3
        ("a7a8q", 69, 48),  # promotions: 64 + 3 * (file step + 1) + (rook, bishop, queen)
        ("b7a8r", 64, 49),
        ("g7h8b", 71, 54),
        ("a7a8", 0, 48),  # a knight promotion uses the plain from-to entry
    ],
)
def test_conv_map_geometry(uci: str, plane: int, square: int) -> None:
    assert conv_policy_map()[POLICY_INDEX[uci]] == plane * 64 + square


def test_attention_map_geometry() -> None:
    m = attention_policy_map()
    assert m[POLICY_INDEX["e2e4"]] == 12 * 64 + 28
    assert m[POLICY_INDEX["a7a8"]] == 48 * 64 + 56
    assert m[POLICY_INDEX["a7a8q"]] == 4096 + 0
    assert m[POLICY_INDEX["a7b8r"]] == 4096 + 3 + 1
    assert m[POLICY_INDEX["h7g8b"]] == 4096 + 7 * 24 + 6 * 3 + 2
