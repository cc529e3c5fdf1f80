"""Mutation fuzzing of the loaders and of FEN parsing: every corrupted input must give a package error or a model
whose outputs are finite.

    python -m benchmarks.fuzz [--cases 10000] [--workers 2] [--timeout 60] [--seed 0] [--kinds pb,gen-pb,...]

Kinds: ``pb`` (maia-1900.pb.gz), ``onnx`` (maia-1900.onnx), ``gen-pb`` / ``gen-onnx`` (a small generated net from
:mod:`lczerolens.testing` and its export by lc0's own ``leela2onnx``), ``fen``. Case ``i`` of a kind is the
mutation drawn from ``random.Random(f"{seed}:{kind}:{i}")``, so any case can be replayed alone.

Each case runs in a worker subprocess, so that a crash (the worker dies) or a hang (over ``--timeout`` seconds;
the worker is killed and replaced) is recorded instead of stopping the run. Outcomes:

- ``error``: a package error (:class:`~lczerolens.errors.LczeroLensError`) -- what a corrupted file should give;
- ``same``: the file loads and its outputs on the check positions equal the original's bit for bit (the
  mutation hit something that does not matter, e.g. a name or padding);
- ``changed``: loads, finite outputs, different from the original's (corrupted weights that are still numbers:
  no loader can tell them from real ones);
- ``FOREIGN`` (another exception type), ``NAN`` (loaded but an output is NaN or infinite), ``HANG``, ``CRASH``:
  failures. The run exits 1 when any failure occurred.

For FENs, ``same`` / ``changed`` mean the mutated FEN parses and encodes to finite planes, and the network's
outputs on it (maia-1900) are finite.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing as mp
import os
import queue
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"
KINDS = ("pb", "gen-pb", "onnx", "gen-onnx", "fen")
OUTCOMES = ("error", "same", "changed", "FOREIGN", "NAN", "HANG", "CRASH")
FAILURES = ("FOREIGN", "NAN", "HANG", "CRASH")
CHECK_FENS = (
    "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1",
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "8/8/8/4k3/8/8/2K5/6Q1 b - - 37 60",
)
SEED_FENS = CHECK_FENS + (
    "r3k2r/p1ppqpb1/bn2pnp1/3PN3/1p2P3/2N2Q1p/PPPBBPPP/R3K2R w KQkq - 0 1",
    "8/2p5/3p4/KP5r/1R3p1k/8/4P1P1/8 w - - 0 1",
    "rnbqkb1r/pp1p1ppp/4pn2/2pP4/2P5/8/PP2PPPP/RNBQKBNR w KQkq c6 0 4",
)


# ----------------------------------------------------------------------------------------------- mutations


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data``: bit flips, byte sets, deletions, duplications, truncation, a float32
    overwritten with NaN / inf / a huge value, or a varint length prefix replaced by a large one."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        op = rng.random()
        pos = rng.randrange(len(buf))
        if op < 0.30:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.45:
            buf[pos] = rng.randrange(256)
        elif op < 0.55:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op < 0.62:
            end = min(len(buf), pos + rng.randint(1, 256))
            buf[pos:pos] = buf[pos:end]
        elif op < 0.67:
            del buf[rng.randrange(len(buf)) :]
        elif op < 0.85:
            value = rng.choice([float("nan"), float("inf"), -float("inf"), 3.0e38, -1.0e30, 1.0e-40])
            pos -= pos % 4
            buf[pos : pos + 4] = struct.pack("<f", value)
        else:
            big = rng.choice([1 << 30, 1 << 31, 1 << 40, rng.randrange(1 << 24)])
            varint = bytearray()
            while True:
                low, big = big & 0x7F, big >> 7
                varint.append(low | (0x80 if big else 0))
                if not big:
                    break
            buf[pos : pos + len(varint)] = varint
    return bytes(buf)


def mutate_pb_gz(data: bytes, rng: random.Random, raw: bytes | None = None) -> bytes:
    """Mostly mutate the decompressed protobuf (``raw``, decompressed here when not given) and gzip it again
    (stored, level 0: a flipped compressed byte mostly fails the checksum); sometimes the compressed bytes."""
    if rng.random() < 0.2:
        return mutate_bytes(data, rng)
    mutated = mutate_bytes(gzip.decompress(data) if raw is None else raw, rng)
    return gzip.compress(mutated, compresslevel=0, mtime=0)


def mutate_fen(fen: str, rng: random.Random) -> str:
    """A FEN with a random field replaced (huge or negative numbers, junk) or random characters edited."""
    parts = fen.split(" ")
    op = rng.random()
    if op < 0.4 and len(parts) == 6:
        index = rng.randrange(6)
        parts[index] = rng.choice(
            [str(10 ** rng.randint(0, 40)), str(-rng.randint(1, 100)), str(2**31 - 1), str(2**31), "1e6", "nan",
             "-", "", "KQkqKQ", "z9", "e3", "b", "w", "0"]
        )  # fmt: skip
        return " ".join(parts)
    chars = list(fen)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(chars) + 1)
        if chars and rng.random() < 0.5:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars.insert(pos, rng.choice("pnbrqkPNBRQK12345678/ -wbKQkqa-h0123456789\x00é"))
    return "".join(chars)


# ----------------------------------------------------------------------------------------------- one case


class Subject:
    """What a worker fuzzes: one kind's original bytes and the original model's outputs on the check positions."""

    def __init__(self, kind: str, path: Path, seed: int, folder: Path | None = None) -> None:
        import torch

        from lczerolens import LczeroBoard, LczeroModel

        torch.set_num_threads(1)
        self.kind, self.path, self.seed = kind, path, seed
        self.data = path.read_bytes() if kind != "fen" else b""
        self.raw = gzip.decompress(self.data) if kind in ("pb", "gen-pb") else None
        self.model = LczeroModel.from_path(path)
        self.boards = [LczeroBoard(f) for f in CHECK_FENS]
        self.reference = self.outputs(self.model)
        self.folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="lczerolens-fuzz-"))

    def outputs(self, model):
        import torch

        with torch.no_grad():
            out = model(self.boards)
        return {k: v.clone() for k, v in out.items()}

    def run(self, index: int) -> tuple[str, str]:
        """(outcome, detail) of case ``index``."""
        import torch

        from lczerolens import LczeroBoard, LczeroModel
        from lczerolens.errors import LczeroLensError

        rng = random.Random(f"{self.seed}:{self.kind}:{index}")
        try:
            if self.kind == "fen":
                fen = mutate_fen(rng.choice(SEED_FENS), rng)
                board = LczeroBoard(fen)
                planes = board.to_input_tensor(self.model.input_format)
                if not torch.isfinite(planes).all():
                    return "NAN", f"planes of {fen!r}"
                with torch.no_grad():
                    out = self.model(board)
                if not all(torch.isfinite(v).all() for v in out.values()):
                    return "NAN", f"outputs on {fen!r}"
                return ("same" if fen in SEED_FENS else "changed"), ""
            if self.kind in ("pb", "gen-pb"):
                data = mutate_pb_gz(self.data, rng, self.raw)
            else:
                data = mutate_bytes(self.data, rng)
            path = self.folder / f"case{self.path.name}"
            path.write_bytes(data)
            model = LczeroModel.from_path(path)
            out = self.outputs(model)
        except LczeroLensError as exc:
            return "error", type(exc).__name__
        except Exception as exc:  # the bug this fuzzer looks for
            return "FOREIGN", f"{type(exc).__name__}: {exc}"[:300] + " | " + traceback.format_exc()[-600:]
        if not all(torch.isfinite(v).all() for v in out.values()):
            return "NAN", "loaded, non-finite outputs"
        same = out.keys() == self.reference.keys() and all(torch.equal(out[k], self.reference[k]) for k in out)
        return ("same" if same else "changed"), ""


def _worker(kind: str, path: str, seed: int, tasks, results) -> None:
    subject = Subject(kind, Path(path), seed)
    results.put(("ready", None, None, None))
    while True:
        index = tasks.get()
        if index is None:
            return
        results.put(("start", index, os.getpid(), time.monotonic()))
        outcome, detail = subject.run(index)
        results.put(("done", index, outcome, detail))


def run_kind(kind: str, path: Path, cases: int, *, workers: int = 2, timeout: float = 60.0, seed: int = 0,
             progress: bool = True) -> dict:  # fmt: skip
    """Run ``cases`` mutations of one kind in a pool of subprocesses; return counts and the failures' details."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    counts = dict.fromkeys(OUTCOMES, 0)
    failures: list[tuple[int, str, str]] = []
    for i in range(cases):
        tasks.put(i)

    def start():
        p = ctx.Process(target=_worker, args=(kind, str(path), seed, tasks, results), daemon=True)
        p.start()
        return p

    procs = [start() for _ in range(workers)]
    running: dict[int, tuple[float, int]] = {}  # index -> (start time, worker pid)
    done = restarts = 0
    t0 = time.monotonic()
    while done < cases:
        try:
            msg, index, outcome, detail = results.get(timeout=1.0)
            if msg == "start":
                running[index] = (time.monotonic(), outcome)
            elif msg == "done":
                running.pop(index, None)
                counts[outcome] += 1
                done += 1
                if outcome in FAILURES:
                    failures.append((index, outcome, detail))
                if progress and done % 500 == 0:
                    print(f"  {kind}: {done}/{cases} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        except queue.Empty:
            pass
        now = time.monotonic()
        by_pid = {pid: i for i, (_, pid) in running.items()}
        for p in list(procs):
            index = by_pid.get(p.pid)
            hung = index is not None and now - running[index][0] > timeout
            if p.is_alive() and not hung:
                continue
            if hung:
                p.kill()
            p.join()
            procs.remove(p)
            restarts += 1
            if restarts > cases + 10 * workers:
                raise RuntimeError(f"{kind}: workers keep dying without a case (cannot load {path}?)")
            procs.append(start())
            if index is not None:  # the case this worker held when it hung or died
                outcome = "HANG" if hung else "CRASH"
                counts[outcome] += 1
                failures.append((index, outcome, f"exit code {p.exitcode}"))
                running.pop(index)
                done += 1
    for _ in procs:
        tasks.put(None)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return {"counts": counts, "failures": failures, "seconds": time.monotonic() - t0}


def generated_files(folder: Path) -> dict[str, Path]:
    """A small generated residual net (.pb.gz) and its export by lc0's leela2onnx (.onnx), when lc0 is here."""
    from lczerolens.testing import write_random_net

    pb = write_random_net(folder / "gen.pb.gz", blocks=2, filters=16, moves_left=True, seed=7)
    files = {"gen-pb": pb}
    lc0 = Path(sys.executable).parent / "lc0"
    if lc0.exists():
        onnx_path = folder / "gen.onnx"
        subprocess.run([str(lc0), "leela2onnx", f"--input={pb}", f"--output={onnx_path}"], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        files["gen-onnx"] = onnx_path
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="mutations per kind")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="lczerolens-fuzz-src-"))
    kinds = args.kinds.split(",")
    files = {"pb": CACHE / "maia-1900.pb.gz", "onnx": CACHE / "maia-1900.onnx", "fen": CACHE / "maia-1900.pb.gz"}
    if any(k.startswith("gen-") for k in kinds):
        files.update(generated_files(folder))
    rows = []
    failed = False
    for kind in kinds:
        if kind not in files or not files[kind].exists():
            print(f"{kind}: skipped (file missing: run `make assets`; lc0 needed for gen-onnx)", file=sys.stderr)
            continue
        result = run_kind(kind, files[kind], args.cases, workers=args.workers, timeout=args.timeout, seed=args.seed)
        rows.append((kind, result))
        c = result["counts"]
        print(f"  {kind} done: " + ", ".join(f"{o} {c[o]}" for o in OUTCOMES) + f" ({result['seconds']:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
        for index, outcome, detail in result["failures"][:10]:
            print(f"  {kind} case {index}: {outcome} {detail}", file=sys.stderr)
        failed |= any(result["counts"][o] for o in FAILURES)
    header = "| kind | cases | " + " | ".join(OUTCOMES) + " | seconds |"
    print(header)
    print("|" + "---|" * (len(OUTCOMES) + 3))
    for kind, result in rows:
        c = result["counts"]
        print(f"| {kind} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES)
              + f" | {result['seconds']:.0f} |")  # fmt: skip
    print(f"\nseed {args.seed}, {args.workers} workers, timeout {args.timeout:.0f} s per case; "
          f"{'FAILURES above' if failed else 'no failures'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
