"""What the lenses beside LRP cost, next to a plain forward pass or one gradient.

    python -m benchmarks.bench_lenses [--quick] [--threads N]

On maia-1900 (``assets/cache/maia-1900.pb.gz``), with real positions (:mod:`lczerolens.positions`):

- ``ActivationLens("*")`` (all 58 modules) at batch 64 on ready planes vs the plain forward on the same planes
  under ``torch.no_grad`` (target: within 1.2x);
- ``GradientLens("integrated_gradients", steps=32)`` vs ``GradientLens("gradient")``, whole user calls from
  boards, at batch 1 and 16 (target: within 40x);
- the patching sweep of one position pair over the 6 residual blocks x 64 squares
  (``PatchingLens("block*/conv2/relu").patch(..., per_square=True)``), its forward passes counted, vs one
  forward at batch 64 (the size of each of its passes).

Every time is a median of wall and CPU time (``time.process_time``, all threads), the functions interleaved round
after round; on a machine shared with other work the CPU-time ratios are the steadier comparison.

Recording every module keeps 58 activations alive per call, so each call writes to fresh memory instead of
reusing a few buffers; with glibc's default settings that memory goes back to the system after each call and
comes back as page faults on the next, which the plain forward does not pay. The activation comparison is
therefore run twice: with the allocator as it is, then (last, since it changes the process for good) after
``mallopt`` keeps freed memory (``M_TRIM_THRESHOLD`` 2 GiB, ``M_MMAP_THRESHOLD`` 32 MiB; the same as starting
Python with ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` set), on glibc only.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_relevance import _print, interleaved_times

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"


def _ratio(times: dict[str, dict[str, float]], top: str, bottom: str) -> dict[str, float]:
    return {
        "wall": times[top]["wall ms"] / times[bottom]["wall ms"],
        "cpu": times[top]["cpu ms"] / times[bottom]["cpu ms"],
    }


def _keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the system (process-wide; False if not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        # glibc caps the mmap threshold at 32 MiB on 64-bit systems; the trim threshold is a C int.
        return bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1)) and bool(libc.mallopt(m_mmap_threshold, 1 << 25))
    except (OSError, AttributeError):
        return False


def run(quick: bool = False, threads: int | None = 2, tune_malloc: bool = True) -> dict[str, Any]:
    """Time the activation, integrated-gradients and patching lenses on maia-1900."""
    from lczerolens.board import LczeroBoard, encode_boards
    from lczerolens.lenses import ActivationLens, GradientLens, PatchingLens, corrupt
    from lczerolens.model import LczeroModel
    from lczerolens.positions import load_positions

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rounds = 3 if quick else 9
        model = LczeroModel.from_path(CACHE / "maia-1900.pb.gz")
        network = model.network.eval()
        boards = [LczeroBoard(f) for f in load_positions(64)]
        planes = encode_boards(boards, model.input_format)
        results: dict[str, Any] = {"threads": torch.get_num_threads()}

        every = ActivationLens("*")
        modules = len(every.names(model))

        def forward() -> Any:
            with torch.no_grad():  # as the lens runs (inference tensors could not feed a trained probe)
                return network(planes)

        def activations() -> dict[str, Any]:
            times = interleaved_times(
                {"forward": forward, "activations": lambda: every.activations(model, boards, planes=planes)}, rounds
            )
            ratio = _ratio(times, "activations", "forward")
            return {
                **{f"{name} ({unit})": value for name, t in times.items() for unit, value in t.items()},
                "activations / forward (wall)": ratio["wall"],
                "activations / forward (cpu)": ratio["cpu"],
                "within 1.2x (cpu)": ratio["cpu"] <= 1.2,
            }

        results[f"activations of all {modules} modules, batch 64"] = activations()

        gradient = GradientLens("gradient")
        integrated = GradientLens("integrated_gradients", steps=32)
        for batch in (1, 16):
            part = boards[:batch]
            times = interleaved_times(
                {
                    "gradient": lambda part=part: gradient.relevance(model, part, target="value"),
                    "IG 32 steps": lambda part=part: integrated.relevance(model, part, target="value"),
                },
                rounds,
            )
            ratio = _ratio(times, "IG 32 steps", "gradient")
            results[f"integrated gradients, batch {batch}"] = {
                "gradient (wall ms)": times["gradient"]["wall ms"],
                "IG 32 steps (wall ms)": times["IG 32 steps"]["wall ms"],
                "IG / gradient (wall)": ratio["wall"],
                "IG / gradient (cpu)": ratio["cpu"],
                "within 40x (cpu)": ratio["cpu"] <= 40,
            }

        clean = corrupt(boards[0])
        square = next(s for s, p in clean.piece_map().items() if p.piece_type != 6)
        bad = corrupt(clean, remove=square)
        sweep = PatchingLens("block*/conv2/relu")
        passes: list[int] = []

        class Counting(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = network
                self.input_format = network.input_format

            def forward(self, x: torch.Tensor) -> Any:
                passes.append(x.shape[0])
                return self.inner(x)

        counted = Counting()
        PatchingLens("inner.block*/conv2/relu").patch(counted, clean, bad, per_square=True)
        times = interleaved_times(
            {
                "sweep": lambda: sweep.patch(model, clean, bad, per_square=True),
                "forward (batch 64)": forward,
            },
            rounds,
        )
        results["patching sweep, 6 blocks x 64 squares, 1 pair"] = {
            "forward passes": len(passes),
            "boards per pass": ", ".join(map(str, passes)),
            "sweep (wall ms)": times["sweep"]["wall ms"],
            "sweep (cpu ms)": times["sweep"]["cpu ms"],
            "forward batch 64 (cpu ms)": times["forward (batch 64)"]["cpu ms"],
            "sweep / forward batch 64 (cpu)": times["sweep"]["cpu ms"] / times["forward (batch 64)"]["cpu ms"],
        }
        if tune_malloc and _keep_freed_memory():
            results[f"activations of all {modules} modules, batch 64, freed memory kept (mallopt)"] = activations()
        return results
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="skip the run with mallopt")
    args = parser.parse_args(argv)
    _print(run(quick=args.quick, threads=args.threads, tune_malloc=not args.no_malloc_tuning))
    return 0


if __name__ == "__main__":
    sys.exit(main())
