"""How long loading maia-1900 takes: from lc0's ONNX export and from its ``.pb.gz`` weights.

    python -m benchmarks.bench_loading [--quick]

All in one process: the one-time cost of importing the loaders (torch, onnx, onnx2torch, ...) is measured once
and reported separately; each load after that is timed ``repeats`` times and the median reported. A format whose
loader is missing or fails is reported as such.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"


def _median_load(path: Path, repeats: int) -> tuple[float, float]:
    """(median, first) seconds of ``LczeroModel.from_path(path)``."""
    from lczerolens.model import LczeroModel

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        LczeroModel.from_path(path)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times[0]


def run(quick: bool = False) -> dict[str, Any]:
    """Median load times of maia-1900 in seconds (``.onnx``, ``-fp16.onnx``, ``.pb.gz``) and the import cost.

    Returns
    -------
    dict
        ``import s`` (first import of the model module and its loaders), then per file ``<name> median s`` and
        ``<name> first load s`` (or ``<name> error``), and ``repeats``.

    Examples
    --------
    >>> run(quick=True)["maia-1900.onnx median s"]  # doctest: +SKIP
    0.35
    """
    repeats = 3 if quick else 9
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    import onnx  # noqa: F401
    import onnx2torch  # noqa: F401
    import torch  # noqa: F401

    from lczerolens.model import (
        LczeroModel,  # noqa: F401
        onnx_loader,  # noqa: F401
    )

    try:
        from lczerolens.model import native  # noqa: F401
    except ImportError:
        pass
    out["import s"] = time.perf_counter() - t0
    for name in ("maia-1900.onnx", "maia-1900-fp16.onnx", "maia-1900.pb.gz"):
        path = CACHE / name
        if not path.exists():
            out[f"{name} error"] = f"{path} missing: run `make assets`"
            continue
        try:
            median, first = _median_load(path, repeats)
        except Exception as exc:  # report and go on: one broken loader must not hide the others
            out[f"{name} error"] = f"{type(exc).__name__}: {exc}"
            continue
        out[f"{name} median s"] = median
        out[f"{name} first load s"] = first
    out["repeats"] = repeats
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 9")
    args = parser.parse_args(argv)
    for key, value in run(quick=args.quick).items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
