"""Run the whole benchmark suite in one process and write one markdown file: ``make bench``.

    python -m benchmarks.run --out bench-results/results.md [--positions N] [--attention-positions M] [--quick]

Sections: faithfulness by piece removal and cost per method (:mod:`benchmarks.bench_faithfulness`), encoding
throughput (``bench_encoding``), loading times (``bench_loading``), cold start of the command line
(``bench_cli``), relevance cost ratios and maps/s (``bench_relevance``), the activation, integrated-gradients
and patching lenses (``bench_lenses``), every channel of a maia block ablated (``bench_ablation``), collections
end to end (``bench_collections``), the explorer's response times and report (``bench_explorer``), and
onnxruntime's forward pass on maia-1900's ONNX export at batch 64 as the yardstick for our own forward pass.
Timings are medians over repeats in this one process. A section whose module is missing or fails is reported
as such and the rest still runs.

Defaults: 200 maia-1900 positions and 24 for the attention net. On 2 cores the whole run took 194 s with 100/12
positions on an idle machine and 602 s with 200/24 on one shared with other jobs; a first run also plays the
self-play games of the position set (seconds when idle, minutes under load) and caches them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"
YARDSTICK_BATCH = 64
YARDSTICK_LIMIT = 1.5


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def onnx_yardstick(batch: int = YARDSTICK_BATCH, repeats: int = 20) -> dict[str, Any]:
    """onnxruntime vs our forward pass on maia-1900 at ``batch`` real positions, same thread count.

    The three runners take turns within each repeat (so a change of machine load hits them alike), and
    onnxruntime's threads do not spin between runs (they would steal the CPU from the next runner).
    """
    import onnxruntime as ort

    from lczerolens.board import LczeroBoard, encode_boards
    from lczerolens.model import LczeroModel
    from lczerolens.positions import load_positions

    onnx_path, pb_path = CACHE / "maia-1900.onnx", CACHE / "maia-1900.pb.gz"
    threads = torch.get_num_threads()
    boards = [LczeroBoard(f) for f in load_positions(batch)]
    planes = encode_boards(boards, 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: planes.numpy()}
    names = [o.name for o in session.get_outputs()]
    ref = dict(zip(names, session.run(None, feed), strict=True))
    ref_policy = torch.from_numpy(next(v for k, v in ref.items() if "policy" in k))
    runners: dict[str, Callable[[], Any]] = {"onnxruntime": lambda: session.run(None, feed)}
    out: dict[str, Any] = {"batch": batch, "threads": threads}
    for label, path in (("ours, from .pb.gz", pb_path), ("ours, from .onnx", onnx_path)):
        try:
            network = LczeroModel.from_path(path).network.eval()
        except Exception as exc:
            out[f"{label}: error"] = f"{type(exc).__name__}: {exc}"
            continue

        def forward(network=network) -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                return network(planes)

        out[f"{label} max |policy - onnxruntime|"] = float((forward()["policy"] - ref_policy).abs().max())
        runners[label] = forward
    times: dict[str, list[float]] = {label: [] for label in runners}
    for rep in range(repeats + 2):
        for label, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            if rep >= 2:  # two warm-up rounds
                times[label].append(time.perf_counter() - t0)
    ort_s = statistics.median(times["onnxruntime"])
    out["onnxruntime ms"] = 1e3 * ort_s
    for label in runners:
        if label == "onnxruntime":
            continue
        ours_s = statistics.median(times[label])
        out[f"{label} ms"] = 1e3 * ours_s
        out[f"{label} / onnxruntime"] = ours_s / ort_s
        out[f"{label} within {YARDSTICK_LIMIT}x"] = "yes" if ours_s / ort_s <= YARDSTICK_LIMIT else "NO"
    return out


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix} / {k}" if prefix else str(k), v, rows)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{prefix} [{i}]", v, rows)
    elif isinstance(value, float):
        rows.append((prefix, f"{value:.4g}"))
    else:
        rows.append((prefix, str(value)))


def dict_table(result: dict[str, Any]) -> str:
    """A two-column markdown table of a (nested) result dict; a ``"markdown"`` entry is used as it is."""
    if isinstance(result.get("markdown"), str):
        return result["markdown"]
    rows: list[tuple[str, str]] = []
    _flatten("", result, rows)
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {k.replace('|', chr(92) + '|')} | {v.replace('|', chr(92) + '|')} |" for k, v in rows]
    return "\n".join(lines)


def _section(title: str, fn: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], str]) -> str:
    print(f"== {title}", flush=True)
    t0 = time.perf_counter()
    try:
        body = render(fn())
    except Exception as exc:
        traceback.print_exc()
        body = f"Not measured: {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    print(f"   ({seconds:.0f} s)", flush=True)
    return f"## {title}\n\n{body}\n\n_(section took {seconds:.0f} s)_\n"


def _module_run(name: str, **kwargs: Any) -> Callable[[], dict[str, Any]]:
    """``benchmarks.<name>.run`` with those of ``kwargs`` it accepts."""

    def call() -> dict[str, Any]:
        run = importlib.import_module(f"benchmarks.{name}").run
        accepted = inspect.signature(run).parameters
        return run(**{k: v for k, v in kwargs.items() if k in accepted})

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/results.md"), help="markdown file to write")
    parser.add_argument("--positions", type=int, default=None, help="positions for maia-1900 (default 200)")
    parser.add_argument(
        "--attention-positions", type=int, default=None, help="positions for the attention net (default 24)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run for smoke testing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = {"quick": True} if args.quick else {}
    threads = {"threads": args.threads} if args.threads else {}

    from benchmarks import bench_faithfulness

    t0 = time.perf_counter()
    header = (
        f"# lczerolens benchmarks\n\n{'Quick smoke run. ' if args.quick else ''}"
        f"Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; timings are medians over repeats in one process.\n"
    )
    sections = [
        _section(
            "Faithfulness (piece removal) and cost per method",
            lambda: bench_faithfulness.run(args.positions, args.attention_positions, quick=args.quick),
            bench_faithfulness.to_markdown,
        ),
        _section("Encoding throughput", _module_run("bench_encoding", **quick), dict_table),
        _section("Loading times", _module_run("bench_loading", **quick), dict_table),
        _section("Command-line start (cold processes)", _module_run("bench_cli", **quick), dict_table),
        _section("Relevance cost", _module_run("bench_relevance", **quick, **threads), dict_table),
        _section(
            "Collections: PGN to Parquet (maia-1900)",
            _module_run("bench_collections", **quick, **threads),
            dict_table,
        ),
        _section(
            f"Forward pass vs onnxruntime (maia-1900, batch {YARDSTICK_BATCH})",
            lambda: onnx_yardstick(repeats=3 if args.quick else 20),
            dict_table,
        ),
        _section("BT4-shaped attention net vs onnxruntime", _module_run("bench_bt4", **quick, **threads), dict_table),
        _section(
            "Ablation: 64 channels x 256 positions", _module_run("bench_ablation", **quick, **threads), dict_table
        ),
        _section(
            "The explorer: views, browser round trip, report",
            _module_run("bench_explorer", **quick, **threads),
            dict_table,
        ),
        # Last: its final measurement changes glibc's malloc settings for the rest of the process.
        _section("Lenses beside LRP", _module_run("bench_lenses", **quick, **threads), dict_table),
    ]
    total = time.perf_counter() - t0
    text = header + "\n" + "\n".join(sections) + f"\nTotal: {total:.0f} s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
