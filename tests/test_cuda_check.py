"""The GPU check script runs on the CPU too (device against itself), so it keeps up with the API between the
sessions that are lent a GPU. Its comparisons there are 0; against float64 they are the float32 error."""

from __future__ import annotations

import json
import math

from benchmarks import cuda_check


def test_the_cuda_check_runs_every_comparison_on_the_cpu(maia_pb_path, tmp_path):
    cuda_check.main(["--device", "cpu", "--positions", "16", "--no-timing", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "cuda_check.json").read_text())
    rows = results["compare"]
    assert {row["net"] for row in rows} == {"maia-1900", "bt-distilled"}
    assert not [row for row in rows if "error" in row]
    same = [row for row in rows if "fp32" in row]
    assert len(same) >= 25 and all(row["fp32"] == 0.0 for row in same)
    exact = [row for row in rows if "cpu vs float64" in row]
    assert len(exact) == 8
    assert all(row["cpu vs float64"] == row["device vs float64"] < 1e-3 for row in exact)
    assert all(math.isfinite(row["cpu vs float64"]) for row in exact)
