"""The notebooks run end to end, and the committed copies carry their outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "notebooks" / "tutorial.ipynb"
INSIDE = ROOT / "notebooks" / "inside.ipynb"
COLLECTIONS = ROOT / "notebooks" / "collections.ipynb"


def _run(path: Path, timeout: int) -> None:
    """Execute the notebook at ``path`` from the repository root and fail on any error output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    # From the repository root (nbmake runs it from notebooks/): the notebooks find their assets either way.
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def _committed(path: Path, every_cell_has_output: bool = True) -> tuple[str, list[str], str, int]:
    """Check a committed notebook: every code cell executed (with outputs, unless ``every_cell_has_output`` is
    False), no error output, no local paths.

    Returns its stream text, the ``figures/*.png`` files its markdown outputs show (each checked to exist), the
    notebook's whole JSON text, and the number of inline SVG outputs.
    """
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code"
    assert all(c.execution_count is not None and (c.outputs or not every_cell_has_output) for c in code), (
        "execute the notebook before committing"
    )
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    markdown = [o.get("data", {}).get("text/markdown", "") for c in code for o in c.outputs]
    pictures = [m for md in markdown for m in re.findall(r"figures/[\w.-]+\.png", md)]
    assert all((path.parent / p).exists() for p in pictures)
    svgs = sum("image/svg+xml" in o.get("data", {}) for c in code for o in c.outputs)
    whole = nbformat.writes(nb)
    assert "/work/" not in whole and "/tmp/" not in whole and "/home/" not in whole
    return text, pictures, whole, svgs


def test_committed_tutorial_has_its_outputs() -> None:
    # It shows heatmaps: inline SVG, or (to keep the notebook small) PNG files under notebooks/figures/ shown
    # by markdown outputs; at least five pictures, each file present.
    _, pictures, _, svgs = _committed(TUTORIAL)
    assert svgs + len(pictures) >= 5


@pytest.mark.slow
def test_tutorial_runs_from_the_repository_root(maia_pb_path) -> None:
    _run(TUTORIAL, timeout=120)


def test_committed_inside_notebook_has_its_outputs() -> None:
    text, _, _, _ = _committed(INSIDE)
    assert "64 conditional maps summed" in text and "selectivity" in text


@pytest.mark.slow
def test_inside_notebook_runs_from_the_repository_root(maia_pb_path) -> None:
    _run(INSIDE, timeout=600)


def test_committed_collections_notebook_has_its_outputs() -> None:
    # The aggregate maps: inline SVG, or PNG files under notebooks/figures/ (scripts/run_notebook.py).
    _, pictures, _, svgs = _committed(COLLECTIONS, every_cell_has_output=False)
    assert svgs + len(pictures) >= 2


@pytest.mark.slow
def test_collections_notebook_runs_from_the_repository_root(maia_pb_path) -> None:
    pytest.importorskip("pandas")
    if not (ROOT / "assets" / "cache" / "chess-data" / "pgn" / "kasparov-deep-blue-1997.pgn").exists():
        pytest.skip("python-chess's PGN files are missing: run `make assets`")
    _run(COLLECTIONS, timeout=300)


ATTENTION = ROOT / "notebooks" / "attention.ipynb"


def test_committed_attention_notebook_has_its_outputs() -> None:
    text, pictures, _, _ = _committed(ATTENTION)
    assert "| uniform |" in text and "largest |PatchingLens - hook|" in text
    assert len(pictures) >= 4  # PNG files under notebooks/figures/ (keeps the notebook small)


@pytest.mark.slow
def test_attention_notebook_runs_from_the_repository_root(maia_pb_path) -> None:
    pytest.importorskip("pandas")
    if not (ROOT / "assets" / "cache" / "chess-data" / "pgn" / "kasparov-deep-blue-1997.pgn").exists():
        pytest.skip("python-chess's PGN files are missing: run `make assets`")
    _run(ATTENTION, timeout=600)


FEATURES = ROOT / "notebooks" / "features.ipynb"


def test_committed_features_notebook_has_its_outputs() -> None:
    text, pictures, _, _ = _committed(FEATURES)
    assert text.count("max |features + error - LRP| / max |LRP|") == 2  # maia and the attention net
    assert len(pictures) >= 3


@pytest.mark.slow
def test_features_notebook_runs_from_the_repository_root(maia_pb_path) -> None:
    if not (ROOT / "assets" / "saes" / "maia-1900-block3").exists():
        pytest.skip("no shipped SAE")
    _run(FEATURES, timeout=600)


EXPLORE = ROOT / "notebooks" / "explore.ipynb"


def test_committed_explore_notebook_has_its_outputs() -> None:
    text, _, whole, _ = _committed(EXPLORE)
    assert "same as LrpLens: True" in text and "same as AttentionLens: True" in text and "top channels" in text
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.reads(whole, as_version=4)
    pictures = re.findall(r"\.\./docs/figures/[\w.-]+\.png", "".join(c.source for c in nb.cells))
    assert pictures and all((EXPLORE.parent / p).exists() for p in pictures)


@pytest.mark.slow
def test_explore_notebook_runs_from_the_repository_root(maia_pb_path) -> None:
    pytest.importorskip("anywidget")
    _run(EXPLORE, timeout=600)


DEPTH = ROOT / "notebooks" / "depth.ipynb"


def test_committed_depth_notebook_has_its_outputs() -> None:
    text, pictures, _, _ = _committed(DEPTH)
    assert "KL logit  KL tuned" in text and "search solves" in text and "mean_abs" in text
    assert len(pictures) >= 2


@pytest.mark.slow
def test_depth_notebook_runs_from_the_repository_root(maia_pb_path, lc0_binary) -> None:
    if not (ROOT / "assets" / "cache" / "puzzles-selfplay.csv").exists():
        pytest.skip("the self-play puzzles are missing: run `make assets`")
    _run(DEPTH, timeout=900)
