"""The Ray engine (Ray Data, local Ray with 2 CPUs) gives the rows of the local engine and resumes the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'lczerolens[ray]'")
pytest.importorskip("ray.data")

from lczerolens.data import read_pgn  # noqa: E402
from lczerolens.errors import RunError  # noqa: E402
from lczerolens.run import explain_dataset, load_manifest, load_results  # noqa: E402
from tests.test_run import SMALL_PGN, _equal_tables  # noqa: E402


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole session (starting Ray takes seconds)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def test_ray_engine_gives_the_rows_of_the_local_engine(local_ray, maia_pb_path: Path, tmp_path: Path) -> None:
    pgn = tmp_path / "games.pgn"
    pgn.write_text(SMALL_PGN * 2)
    kwargs = {"targets": ("top", "played", "value"), "shard_size": 6, "progress": False}
    local = explain_dataset(maia_pb_path, read_pgn(pgn, every=2), tmp_path / "local", **kwargs)
    ray_out = tmp_path / "ray"
    explain_dataset(maia_pb_path, read_pgn(pgn, every=2), ray_out, engine="ray", workers=2, **kwargs)
    _equal_tables(load_results(ray_out), load_results(local))
    assert load_manifest(ray_out)["complete"]

    # Resume: drop two recorded shards (as if the run had been killed before recording them); the same call
    # redoes exactly those, and a different selection is refused.
    manifest = load_manifest(ray_out)
    shards = manifest["shards"]
    for key in ("0", "2"):
        del shards[key]
    manifest["complete"] = False
    (ray_out / "manifest.json").write_text(json.dumps(manifest))
    # One actor this time (the worker count is not part of a run's identity; starting actors is the slow part).
    explain_dataset(maia_pb_path, read_pgn(pgn, every=2), ray_out, engine="ray", workers=1, **kwargs)
    _equal_tables(load_results(ray_out), load_results(local))
    with pytest.raises(RunError, match="other settings"):
        explain_dataset(maia_pb_path, read_pgn(pgn, every=3), ray_out, engine="ray", workers=2, **kwargs)
