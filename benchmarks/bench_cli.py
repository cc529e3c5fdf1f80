"""How long the command line takes from a cold start: ``lczerolens --help`` and one ``lczerolens explain``.

    python -m benchmarks.bench_cli [--quick]

Each command runs as a fresh process (``python -m lczerolens``, with this interpreter), ``runs`` times; the table
gives the median and the range of the wall times. Targets of the issue: ``--help`` under 0.5 s, ``explain`` on
maia-1900.pb.gz under 2.5 s on the 2-core machine. A machine busy with other work slows both (torch's import and
its thread pool are the bulk of ``explain``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAIA = ROOT / "assets" / "cache" / "maia-1900.pb.gz"


def cold_times(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``python -m lczerolens ARGS`` as ``runs`` separate processes."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lczerolens", *args], check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return times


def run(quick: bool = False) -> dict[str, Any]:
    runs = 2 if quick else 5
    result: dict[str, Any] = {"runs": runs}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"lczerolens --help": ["--help"]}
        if MAIA.exists():
            commands["lczerolens explain maia-1900.pb.gz startpos"] = [
                "explain", str(MAIA), "startpos", "--out", str(Path(tmp) / "heatmap.svg")
            ]
        for label, args in commands.items():
            times = cold_times(args, runs)
            result[f"{label}: median s"] = statistics.median(times)
            result[f"{label}: min s"] = min(times)
            result[f"{label}: max s"] = max(times)
    result["--help under 0.5 s"] = result["lczerolens --help: median s"] < 0.5
    key = "lczerolens explain maia-1900.pb.gz startpos: median s"
    if key in result:
        result["explain under 2.5 s"] = result[key] < 2.5
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for key, value in run(quick=args.quick).items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
