"""Collections end to end: a PGN to Parquet with ``explain_dataset``, against the bare lens, on maia-1900.

    python -m benchmarks.bench_collections [--quick] [--threads N] [--rss-positions 1000 100000]

Measured in one process, on positions of real games (python-chess's ``kasparov-deep-blue-1997.pgn`` and
``stockfish-learning.pgn``, repeated as often as needed, from ``make assets``):

- ``bare relevance pos/s``: ``LrpLens().relevance(model, boards, None)`` (top move) on ready boards with their
  history, batch 64 -- the yardstick;
- ``end-to-end pos/s``: ``explain_dataset`` with ``targets=("top",)``, batch 64, one worker: read the PGN,
  build boards, encode, forward + backward, decode, write Parquet and the manifest; the ratio to the yardstick
  (target >= 0.8);
- where the difference goes: PGN parsing alone (``read_pgn(...).count()``, python-chess's SAN parser on the
  mainline), building the boards with history, and python-chess's full ``read_game`` (the game tree) for
  comparison;
- peak RSS of a whole run in a fresh process for two sizes (``--rss-positions``; default 1,000 and 10,000;
  pass ``1000 100000`` for the 100,000-position figure, which takes minutes), and their ratio (target <= 1.5);
- ``--workers 2`` and Ray with 2 actors against one worker (same positions), when Ray is installed.

The end-to-end and bare figures are interleaved (bare, run, bare) so a change of machine load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"
PGN_DIR = CACHE / "chess-data" / "pgn"
GAMES = ("kasparov-deep-blue-1997.pgn", "stockfish-learning.pgn")
BATCH = 64
PARALLEL_SHARD = 128
#: Parts of the benchmark: throughput and its breakdown, peak RSS (maia, then the tiny net), workers and Ray.
PARTS = ("speed", "rss", "tiny-rss", "parallel")


def looped_pgn(path: Path, positions: int) -> Path:
    """A PGN of real games repeated until it holds at least ``positions`` positions."""
    from lczerolens.data import read_pgn

    texts = []
    for name in GAMES:
        source = PGN_DIR / name
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing: run `make assets`")
        texts.append(source.read_text(encoding="utf-8-sig").strip() + "\n\n")
    block = "".join(texts)
    probe = path.with_suffix(".probe.pgn")
    probe.write_text(block)
    per_block = read_pgn(probe).count()
    probe.unlink()
    copies = -(-positions // per_block)
    with open(path, "w") as handle:
        for _ in range(copies):
            handle.write(block)
    return path


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def bare_relevance(model: Any, boards: list) -> tuple[float, float]:
    """Positions/s of LrpLens().relevance (top move) over the boards in batches of 64: by wall and CPU time."""
    from lczerolens.lenses import LrpLens

    lens = LrpLens()
    w0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(boards), BATCH):
        lens.relevance(model, boards[start : start + BATCH], None)
    return _rate(len(boards), time.perf_counter() - w0), _rate(len(boards), time.process_time() - c0)


def end_to_end(model: Any, pgn: Path, n: int, out: Path, **kwargs: Any) -> tuple[float, float]:
    """Positions/s of ``explain_dataset`` over the whole file (``n`` positions), top move, batch 64.

    By wall time and by this process's CPU time (the latter leaves out worker processes and Ray actors).
    """
    from lczerolens.run import explain_dataset

    shutil.rmtree(out, ignore_errors=True)
    w0, c0 = time.perf_counter(), time.process_time()
    explain_dataset(model, pgn, out, targets=("top",), batch_size=BATCH, progress=False, **kwargs)
    return _rate(n, time.perf_counter() - w0), _rate(n, time.process_time() - c0)


_RSS_CHILD = """
import resource, sys, torch
torch.set_num_threads(int(sys.argv[4]))
from lczerolens.data import read_pgn
from lczerolens.run import explain_dataset
explain_dataset(sys.argv[1], read_pgn(sys.argv[2], sample=int(sys.argv[3])), sys.argv[5], targets=("top",),
                batch_size=64, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(pgn: Path, n: int, out: Path, threads: int, weights: Path | None = None) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of a whole ``n``-position run in a fresh process (maia-1900 by default)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(weights or CACHE / "maia-1900.pb.gz"), str(pgn), str(n), str(threads),
         str(out)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - t0


class _Results(dict):
    """A result dict that can print each figure as soon as it is measured (a long run shows its progress)."""

    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.echo = echo

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if self.echo:
            _print({key: value})
            sys.stdout.flush()


def run(
    quick: bool = False,
    threads: int | None = 2,
    rss_positions: tuple[int, int] | None = None,
    echo: bool = False,
    tiny_rss_positions: tuple[int, int] | None = (1000, 100_000),
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:
    """The figures of the module docstring; ``parts`` picks among :data:`PARTS`."""
    from lczerolens.data import read_pgn
    from lczerolens.model import LczeroModel

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    n = 256 if quick else 1024
    rss_positions = rss_positions or ((200, 1000) if quick else (1000, 10_000))
    if quick and tiny_rss_positions == (1000, 100_000):
        tiny_rss_positions = (200, 2000)
    result: dict[str, Any] = _Results(echo)
    result["threads"] = torch.get_num_threads()
    result["batch"] = BATCH
    tmp = Path(tempfile.mkdtemp(prefix="bench-collections-"))
    try:
        model = LczeroModel.from_path(CACHE / "maia-1900.pb.gz")
        pgn = looped_pgn(tmp / "games.pgn", n)
        boards = [p.board for p in read_pgn(pgn)]
        n = len(boards)
        result["positions"] = n

        if "speed" in parts:
            _speed(result, model, boards, pgn, tmp, quick)
        if "rss" in parts:
            _rss(result, rss_positions, tmp)
        if "tiny-rss" in parts and tiny_rss_positions:
            _tiny_rss(result, tiny_rss_positions, tmp)
        if "parallel" in parts:
            _parallel(result, pgn, n, tmp)
        return dict(result)
    finally:
        torch.set_num_threads(previous)
        shutil.rmtree(tmp, ignore_errors=True)


def _speed(result: dict, model: Any, boards: list, pgn: Path, tmp: Path, quick: bool) -> None:
    from lczerolens.data import read_pgn

    n = len(boards)
    # Yardstick and end to end, interleaved round after round (a change of load hits both); medians.
    bare_relevance(model, boards[:BATCH])  # warm-up (rule modules, imports)
    end_to_end(model, pgn, n, tmp / "run")
    bare, e2e = [], []
    for _ in range(1 if quick else 3):
        bare.append(bare_relevance(model, boards))
        e2e.append(end_to_end(model, pgn, n, tmp / "run"))
    for label, index in (("wall", 0), ("CPU", 1)):
        b = statistics.median(r[index] for r in bare)
        e = statistics.median(r[index] for r in e2e)
        result[f"bare relevance pos/s by {label} time (LrpLens, top move, batch 64)"] = b
        result[f"end-to-end pos/s by {label} time (explain_dataset, 1 worker)"] = e
        result[f"end-to-end / bare, {label} time"] = e / b
        result[f"end-to-end >= 0.8 bare, {label} time"] = "yes" if e / b >= 0.8 else "NO"

    # Where the rest goes.
    t0 = time.perf_counter()
    counted = read_pgn(pgn).count()
    parse_s = time.perf_counter() - t0
    result["PGN parsing alone pos/s (read_pgn().count(): mainline SAN, no boards)"] = _rate(counted, parse_s)
    t0 = time.perf_counter()
    built = sum(1 for _ in read_pgn(pgn))
    result["reading + boards with history pos/s"] = _rate(built, time.perf_counter() - t0)
    import chess.pgn

    t0 = time.perf_counter()
    plies = 0
    with open(pgn) as handle:
        while (game := chess.pgn.read_game(handle)) is not None:
            plies += sum(1 for _ in game.mainline_moves()) + 1
    result["python-chess read_game (full game tree) pos/s"] = _rate(plies, time.perf_counter() - t0)
    from lczerolens.board import encode_boards

    t0 = time.perf_counter()
    for start in range(0, len(boards), BATCH):
        encode_boards(boards[start : start + BATCH], model.input_format)
    result["encoding pos/s"] = _rate(len(boards), time.perf_counter() - t0)
    manifest = json.loads((tmp / "run" / "manifest.json").read_text())
    result["shards of the end-to-end run"] = len(manifest["shards"])


def _rss(result: dict, rss_positions: tuple[int, int], tmp: Path) -> None:
    # Memory: two sizes, fresh processes.
    # Each size samples exactly that many positions from one file large enough for the larger run.
    small, large = rss_positions
    big_pgn = looped_pgn(tmp / "big.pgn", large)
    rss_small, s_small = peak_rss_mib(big_pgn, small, tmp / "rss-small", torch.get_num_threads())
    rss_large, s_large = peak_rss_mib(big_pgn, large, tmp / "rss-large", torch.get_num_threads())
    result[f"peak RSS MiB, {small} positions"] = rss_small
    result[f"peak RSS MiB, {large} positions"] = rss_large
    result["peak RSS ratio"] = rss_large / rss_small
    result["peak RSS within 1.5x"] = "yes" if rss_large / rss_small <= 1.5 else "NO"
    result[f"seconds, {large}-position run"] = s_large


def _tiny_rss(result: dict, tiny_rss_positions: tuple[int, int], tmp: Path) -> None:
    # The pipeline's own memory (reader, shards, manifest) at 100,000 positions, with a tiny random net
    # (1 block of 8 filters, lczerolens.testing) so that the run takes minutes rather than hours.
    from lczerolens.testing import write_random_net

    tiny = write_random_net(tmp / "tiny.pb.gz", blocks=1, filters=8, seed=0)
    t_small, t_large = tiny_rss_positions
    tiny_pgn = looped_pgn(tmp / "tiny.pgn", t_large)
    rss_ts, _ = peak_rss_mib(tiny_pgn, t_small, tmp / "tiny-small", torch.get_num_threads(), tiny)
    rss_tl, s_tl = peak_rss_mib(tiny_pgn, t_large, tmp / "tiny-large", torch.get_num_threads(), tiny)
    result[f"tiny net: peak RSS MiB, {t_small} positions"] = rss_ts
    result[f"tiny net: peak RSS MiB, {t_large} positions"] = rss_tl
    result["tiny net: peak RSS ratio"] = rss_tl / rss_ts
    result["tiny net: within 1.5x"] = "yes" if rss_tl / rss_ts <= 1.5 else "NO"
    result[f"tiny net: seconds, {t_large}-position run"] = s_tl


def _parallel(result: dict, pgn: Path, n: int, tmp: Path) -> None:
    """The same positions with 2 local workers and with Ray (2 actors) against 1 worker, in shards of 128."""
    from lczerolens.data import read_pgn

    weights = str(CACHE / "maia-1900.pb.gz")
    shards = {"shard_size": PARALLEL_SHARD}  # enough shards for two workers to share
    one = end_to_end(weights, pgn, n, tmp / "w1", **shards)[0]
    two = end_to_end(weights, pgn, n, tmp / "w2", workers=2, **shards)[0]
    result[f"1 worker pos/s (shards of {PARALLEL_SHARD}, model load included)"] = one
    result["2 local workers pos/s"] = two
    result["2 local workers / 1"] = two / one
    try:
        import ray
    except ImportError:
        result["ray"] = "not installed (pip install 'lczerolens[ray]')"
        return
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Warm-up: Ray's own start-up (workers, object store) is not what is measured.
    end_to_end(weights, read_pgn(pgn, sample=64), 64, tmp / "ray-warm", engine="ray", workers=2)
    r2 = end_to_end(weights, pgn, n, tmp / "ray", engine="ray", workers=2, **shards)[0]
    result["ray, 2 actors pos/s (Ray already started)"] = r2
    result["ray 2 actors / 1 local worker"] = r2 / one


def _print(result: dict[str, Any]) -> None:
    for key, value in result.items():
        print(f"{key:<75} {value:.4g}" if isinstance(value, float) else f"{key:<75} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_collections", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 positions, RSS at 200 and 1,000")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rss-positions", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                        help="the two run sizes of the RSS comparison (default 1000 10000)")  # fmt: skip
    parser.add_argument("--tiny-rss-positions", type=int, nargs=2, default=(1000, 100_000), metavar=("SMALL", "LARGE"),
                        help="the two run sizes with the tiny net (default 1000 100000)")  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    args = parser.parse_args(argv)
    run(quick=args.quick, threads=args.threads, rss_positions=tuple(args.rss_positions or ()) or None, echo=True,
        tiny_rss_positions=tuple(args.tiny_rss_positions), parts=tuple(args.parts))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
