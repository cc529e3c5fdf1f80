"""Rebuild ``assets/saes/maia-1900-block3/`` (seeded): a TopK SAE of maia-1900's ``block3/conv2/relu``.

Data: the positions of the PGN games in ``assets/cache/chess-data/pgn`` (with their history) and the self-play
positions cached by :mod:`lczerolens.positions` (one per game, FEN only). Held out by game: every fifth PGN
game, and all of the seed-4 self-play file, are never trained on; the metrics of the card are measured there.

Run: ``PYTHONPATH=. .venv/bin/python scripts/build_sae_maia.py [--steps N] [--out DIR]`` (writes a log line per
stage to stdout).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lczerolens import LczeroBoard, LczeroModel
from lczerolens.data import read_pgn
from lczerolens.features import module_tokens, sae_metrics, train_sae

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"
MODULE = "block3/conv2/relu"


def fens(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "assets" / "saes" / "maia-1900-block3"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = LczeroModel.from_path(CACHE / "maia-1900.pb.gz")
    train, held = [], []
    games: dict[tuple[str, int], int] = {}
    for pgn in sorted((CACHE / "chess-data" / "pgn").glob("*.pgn")):
        if "antichess" in pgn.name or "zh" in pgn.name or "fischerrandom" in pgn.name:
            continue  # other variants: not what maia plays
        for position in read_pgn(pgn):
            number = games.setdefault((pgn.name, position.game), len(games))
            (held if number % 5 == 4 else train).append(position.board)
    for seed in (1, 3):
        train += [LczeroBoard(f) for f in fens(CACHE / f"positions-maia-1900-seed{seed}.txt")]
    held_fens = fens(CACHE / "positions-maia-1900-seed4.txt")
    held += [LczeroBoard(f) for f in held_fens]
    print(f"positions: train {len(train)}, held out {len(held)} ({time.perf_counter() - start:.0f}s)", flush=True)
    rows = module_tokens(model, train, MODULE).flatten(0, 1)
    print(f"activations: {tuple(rows.shape)} ({time.perf_counter() - start:.0f}s)", flush=True)
    t0 = time.perf_counter()
    sae = train_sae(
        model,
        rows,
        MODULE,
        features=args.features,
        k=args.k,
        steps=args.steps,
        batch_size=2048,
        lr=2e-3,
        seed=args.seed,
        buffer_tokens=1 << 16,
        dead_after=100_000,
        progress=False,
        model_name="maia-1900",
    )
    train_s = time.perf_counter() - t0
    print(f"trained {args.steps} steps in {train_s:.0f}s", flush=True)
    metrics = sae_metrics(model, sae, MODULE, held)
    train_metrics = sae_metrics(model, sae, MODULE, train[:500])
    sae.metadata.update(
        {
            "training_positions": len(train),
            "heldout_positions": len(held),
            "heldout_metrics": metrics,
            "train_metrics_first500": train_metrics,
            "training_seconds_with_activations": round(time.perf_counter() - start, 1),
        }
    )
    out = sae.save(args.out)
    (out / "heldout.fen").write_text("\n".join(b.fen() for b in held[:200]) + "\n")
    print(json.dumps({"heldout": metrics, "train": train_metrics, "train_s": train_s}, indent=1), flush=True)


if __name__ == "__main__":
    main()
