"""The typed surface: the marker ships, the type-check list names real files, and the None paths that typing
made explicit raise package errors."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest
from torch import nn

import lczerolens
from lczerolens.errors import LensError
from lczerolens.lenses import GradientLens
from lczerolens.lenses.tree import overlay

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_py_typed_marker_is_shipped_as_package_data() -> None:
    assert (Path(lczerolens.__file__).parent / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["lczerolens"]


def test_mypy_checks_existing_files_strictly() -> None:
    config = _pyproject()["tool"]["mypy"]
    assert config["strict"] is True
    missing = [path for path in config["files"] if not (ROOT / path).exists()]
    assert not missing, f"[tool.mypy] files lists paths that do not exist: {missing}"


def test_overlay_through_an_empty_submodule_slot_raises_a_lens_error() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    net.register_module("gap", None)
    with pytest.raises(LensError, match="'gap'.*empty"):
        overlay(net, {"gap.inner": lambda module: module})
    with pytest.raises(LensError, match="'gap'.*empty"):
        overlay(net, {"gap": lambda module: module})


def test_gradient_lens_refuses_unknown_options_with_a_lens_error() -> None:
    net = nn.Linear(2, 2)
    net.input_format = 1  # the network contract: a network says how its input is encoded
    with pytest.raises(LensError, match="unknown options.*'rule'"):
        GradientLens().relevance(net, chess.Board(), rule="epsilon")
