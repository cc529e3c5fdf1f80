"""Held-out KL to the final output, per layer, for the logit lens and a tuned lens (not part of ``make test``).

    python -m benchmarks.depth_lens [--steps 400] [--batch-size 64] [--lr 1e-2] [--held-out 227] [--nets maia bt]

For each network the tuned lens is fitted on the maia-1900 self-play positions of seeds 1-4
(``assets/cache/positions-maia-1900-seed{1..4}.txt``, :mod:`lczerolens.positions`: one position per game, so
every position is its own game) and measured on those of seed 0 (other games). Columns, per layer: the mean
``KL(final || layer)`` of the policy over the legal moves (nats), of the WDL probabilities, and how often the
layer's top legal move is the network's final one. Prints a markdown table per network, and the time taken.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "maia": ROOT / "assets" / "cache" / "maia-1900.pb.gz",
    "bt": ROOT / "assets" / "nets" / "bt-distilled.pb.gz",
}


def _fens(seed: int) -> list[str]:
    path = ROOT / "assets" / "cache" / f"positions-maia-1900-seed{seed}.txt"
    return [line.strip() for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _top1(lens: object, model: object, boards: list) -> dict[str, float]:
    from lczerolens.lenses.depth import _legal_mask

    out = lens.outputs(model, boards)  # type: ignore[attr-defined]
    names = [str(k) for k in out.keys()]
    mask = _legal_mask(boards, model.input_format)  # type: ignore[attr-defined]
    final = out[names[-1]]["policy"].masked_fill(~mask, float("-inf")).argmax(1)
    return {
        n: float((out[n]["policy"].masked_fill(~mask, float("-inf")).argmax(1) == final).float().mean())
        for n in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--held-out", type=int, default=227, help="held-out positions (seed 0 games)")
    parser.add_argument("--nets", nargs="+", default=["maia", "bt"], choices=sorted(NETS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from lczerolens import LczeroBoard, LczeroModel
    from lczerolens.lenses import LogitLens, TunedLens, depth_kl

    train = [fen for seed in (1, 2, 3, 4) for fen in _fens(seed)]
    held = [LczeroBoard(fen) for fen in _fens(0)[: args.held_out]]
    print(f"train: {len(train)} positions (self-play seeds 1-4), held out: {len(held)} (seed 0)")
    for key in args.nets:
        model = LczeroModel.from_path(NETS[key])
        start = time.perf_counter()
        tuned = TunedLens.fit(model, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=0)
        fit_s = time.perf_counter() - start
        rows = {}
        for label, lens in (("logit", LogitLens()), ("tuned", tuned)):
            rows[label] = (
                depth_kl(lens, model, held),
                depth_kl(lens, model, held, head="wdl"),
                _top1(lens, model, held),
            )
        print(f"\n{NETS[key].name}: fit {args.steps} steps x {args.batch_size} positions, lr {args.lr}, "
              f"{fit_s:.0f} s on {args.threads} thread(s); loss {tuned.losses[0]:.3f} -> "
              f"{sum(tuned.losses[-20:]) / len(tuned.losses[-20:]):.3f} (mean of the last 20 steps)\n")
        print("| layer | policy KL logit | policy KL tuned | WDL KL logit | WDL KL tuned | top-1 logit | top-1 tuned |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in rows["logit"][0]:
            (pl, wl, tl), (pt, wt, tt) = (
                [r[name] for r in rows["logit"]],
                [r[name] for r in rows["tuned"]],
            )
            print(f"| {name} | {pl:.3f} | {pt:.3f} | {wl:.3f} | {wt:.3f} | {100 * tl:.0f}% | {100 * tt:.0f}% |")


if __name__ == "__main__":
    main()
