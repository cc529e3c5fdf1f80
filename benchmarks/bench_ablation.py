"""What ablating every channel of a maia-1900 block costs: 64 channels x 256 positions (target: 10 s on 2 cores).

    python -m benchmarks.bench_ablation [--quick] [--threads N]

On maia-1900 (``assets/cache/maia-1900.pb.gz``) with real positions (:mod:`lczerolens.positions`), times
``AblationLens("block3/conv2/relu").effects(model, boards, target)`` (64 x 256 = 16,384 ablated rows) for the top
move and for the value (which skips the policy head in the ablated passes), next to one plain forward pass over
the same 256 boards; ``64 forwards`` is what ablating by rerunning the whole network would cost (the yardstick the
fan-out beats). Also ``top_positions`` over the same boards. Medians of wall and CPU time (``time.process_time``,
all threads) over interleaved rounds: on a machine shared with other jobs the CPU time is the steadier figure and
the wall time can be several times that of an idle machine.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from benchmarks.bench_relevance import _print, interleaved_times

MODULE = "block3/conv2/relu"
TARGET_SECONDS = LIMIT = 10.0


def run(quick: bool = False, threads: int | None = 2) -> dict[str, Any]:
    """Time the 64-channel ablation of one maia block on 256 positions (64 in quick mode)."""
    from lczerolens.board import LczeroBoard, encode_boards
    from lczerolens.concepts import top_positions
    from lczerolens.lenses import AblationLens
    from lczerolens.model import LczeroModel
    from lczerolens.positions import load_positions

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")
        n = 64 if quick else 256
        boards = [LczeroBoard(f) for f in load_positions(n)]
        planes = encode_boards(boards, model.input_format)
        lens = AblationLens(MODULE)

        def forward() -> None:
            with torch.no_grad():
                model.network(planes)

        fns = {
            "ablation, top move": lambda: lens.effects(model, boards),
            "ablation, value": lambda: lens.effects(model, boards, target="value"),
            "forward": forward,
            "top_positions": lambda: top_positions(model, boards, MODULE, 17, k=16),
        }
        times = interleaved_times(fns, rounds=1 if quick else 2, warmup=0)
        top = times["ablation, top move"]
        return {
            "threads": torch.get_num_threads(),
            "positions": n,
            "units x positions": 64 * n,
            "ablation, top move (wall s)": top["wall ms"] / 1e3,
            "ablation, top move (cpu s)": top["cpu ms"] / 1e3,
            "ablation, value (wall s)": times["ablation, value"]["wall ms"] / 1e3,
            "ablation, value (cpu s)": times["ablation, value"]["cpu ms"] / 1e3,
            "forward of the boards (wall ms)": times["forward"]["wall ms"],
            "forward of the boards (cpu ms)": times["forward"]["cpu ms"],
            "ablation top move / 64 forwards (cpu)": top["cpu ms"] / (64 * times["forward"]["cpu ms"]),
            f"ablation top move, {n} positions, within {TARGET_SECONDS:g} s wall": top["wall ms"] <= 1e3 * LIMIT,
            "top_positions, k=16 (wall ms)": times["top_positions"]["wall ms"],
        }
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 positions, one round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    _print(run(quick=args.quick, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
