"""Integrated gradients along the piece-removal test's own path, scored against occlusion and the default lens.

    PYTHONPATH=. python benchmarks/path_ceiling.py --positions 200 --seeds 1 2 3 4 -1

The piece-removal test (docs/faithfulness.md) ends at the position with only the kings left. Integrated gradients
from that position (``GradientLens("integrated_gradients", baseline="kings")``) splits exactly what all the
removals together change, with as many backward passes as it has steps; from the all-zero input (the usual
baseline) it also splits the effect of the kings and of the planes no removal touches. The question this script
answers: does a method that follows the nonlinearity along the removal path with 32 or 128 backward passes reach
occlusion, where the default lens (one backward pass) does not? Each method is paired per position with
occlusion and with ``LrpLens()``; bootstrap 95% intervals. 1 torch thread. ``--seeds -1`` is the 125 real-game
positions of ``make bench``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.faithfulness_ideas import GAMES, positions_of
from lczerolens import metrics
from lczerolens.lenses import GradientLens, LrpLens
from lczerolens.positions import DEFAULT_NET

#: (label, lens) of every method scored beside occlusion and the default.
METHODS: tuple[tuple[str, GradientLens], ...] = (
    ("integrated gradients from zeros, 32 steps", GradientLens("integrated_gradients", steps=32)),
    ("integrated gradients from the kings-only board, 4 steps",
     GradientLens("integrated_gradients", steps=4, baseline="kings")),
    ("integrated gradients from the kings-only board, 32 steps",
     GradientLens("integrated_gradients", steps=32, baseline="kings")),
    ("integrated gradients from the kings-only board, 128 steps",
     GradientLens("integrated_gradients", steps=128, baseline="kings")),
)

def _scores(lens: Any, model: Any, task: metrics.Task) -> torch.Tensor:
    target = task.indices if task.target == "move" else "value"
    rel = lens.relevance(model, task.boards, target=target, batch_size=16)
    return rel.squares.detach().reshape(len(task), 64).to(torch.float64)


def run(positions: int, seeds: list[int]) -> None:
    from lczerolens.model import LczeroModel

    torch.set_num_threads(1)
    model = LczeroModel.from_path(DEFAULT_NET)
    print("| set | method | target | ABPC | vs occlusion | vs `LrpLens()` | s |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        fens = positions_of(seed, positions, model)
        label = "real games" if seed == GAMES else f"seed {seed}"
        shared: dict = {}
        for target in metrics.TARGETS:
            task = metrics.prepare(model, fens, target, cache=shared)
            occl = metrics.evaluate_method(model, task, "occlusion", warmup=False).abpc
            default = metrics.evaluate_method(
                model, task, lambda m, t: _scores(LrpLens(), m, t), name="default", warmup=False).abpc
            print(f"| {label} ({len(fens)}) | `LrpLens()` | {target} | {float(default.mean()):.3f} | "
                  f"{metrics.paired_difference(default, occl)} | | |", flush=True)
            for name, lens in METHODS:
                t0 = time.perf_counter()
                abpc = metrics.evaluate_method(
                    model, task, lambda m, t, lens=lens: _scores(lens, m, t), name=name, warmup=False).abpc
                print(f"| {label} ({len(fens)}) | {name} | {target} | {float(abpc.mean()):.3f} | "
                      f"{metrics.paired_difference(abpc, occl)} | {metrics.paired_difference(abpc, default)} | "
                      f"{time.perf_counter() - t0:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, GAMES],
                        help=f"self-play seeds; {GAMES} for the real-game positions of make bench")
    args = parser.parse_args()
    run(args.positions, args.seeds)


if __name__ == "__main__":
    main()
