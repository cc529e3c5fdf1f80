"""Rebuild a shipped SAE (seeded): a TopK SAE of one module's per-square activations, with its card.

``--net maia`` (default) writes ``assets/saes/maia-1900-block3/`` (maia-1900's ``block3/conv2/relu``); ``--net bt``
writes ``assets/saes/bt-distilled-encoder2/`` (the distilled attention net's residual stream after encoder 2,
``encoder2/ln2``).

Data: maia-1900 self-play games (maia plays, whichever net is explained), every position of each game with its
history (moves sampled from maia's policy over the legal moves, temperature 1, at most ``--max-plies`` plies), plus
the mainlines of the real games in ``assets/cache/chess-data/pgn``. Held out by game: the self-play games of another
seed and every fifth real game are never trained on; the card's metrics are measured there.

Run: ``PYTHONPATH=. .venv/bin/python scripts/build_sae.py [--net maia|bt] [--games N] [--steps N] [--out DIR]``
(a log line per stage on stdout, a progress bar on stderr).
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
from lczerolens.positions import play_games

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"
#: name -> (weights, module, output directory, the net's name in the card)
NETS = {
    "maia": (CACHE / "maia-1900.pb.gz", "block3/conv2/relu", "maia-1900-block3", "maia-1900"),
    "bt": (ROOT / "assets" / "nets" / "bt-distilled.pb.gz", "encoder2/ln2", "bt-distilled-encoder2", "bt-distilled"),
}


def selfplay(model: LczeroModel, games: int, seed: int, max_plies: int) -> list[LczeroBoard]:
    """Every position (with history) of ``games`` self-play games, game after game."""
    return [board for game in play_games(model, games, seed, max_plies) for board in game]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--net", choices=sorted(NETS), default="maia")
    parser.add_argument("--games", type=int, default=256, help="self-play games to train on")
    parser.add_argument("--heldout-games", type=int, default=48)
    parser.add_argument("--max-plies", type=int, default=160)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: assets/saes/<the net's directory>")
    args = parser.parse_args()
    weights, module, directory, net_name = NETS[args.net]
    out_dir = Path(args.out) if args.out else ROOT / "assets" / "saes" / directory
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # one thread: steady when the cores are shared with other work
    start = time.perf_counter()
    teacher = LczeroModel.from_path(CACHE / "maia-1900.pb.gz")
    model = teacher if args.net == "maia" else LczeroModel.from_path(weights)
    train, held = [], []
    games: dict[tuple[str, int], int] = {}
    for pgn in sorted((CACHE / "chess-data" / "pgn").glob("*.pgn")):
        for position in read_pgn(pgn):
            if position.board.chess960:
                continue
            number = games.setdefault((pgn.name, position.game), len(games))
            (held if number % 5 == 4 else train).append(position.board)
    real_train, real_held = len(train), len(held)
    train += selfplay(teacher, args.games, 1000 + args.seed, args.max_plies)
    held += selfplay(teacher, args.heldout_games, 2000 + args.seed, args.max_plies)
    print(f"positions: train {len(train)}, held out {len(held)} ({time.perf_counter() - start:.0f}s)", flush=True)
    rows = module_tokens(model, train, module).flatten(0, 1)
    print(f"activations: {tuple(rows.shape)} ({time.perf_counter() - start:.0f}s)", flush=True)
    t0 = time.perf_counter()
    sae = train_sae(
        model,
        rows,
        module,
        features=args.features,
        k=args.k,
        steps=args.steps,
        batch_size=4096,
        lr=2e-3,
        seed=args.seed,
        buffer_tokens=1 << 20,
        dead_after=200_000,
        progress=True,
        model_name=net_name,
    )
    train_s = time.perf_counter() - t0
    print(f"trained {args.steps} steps in {train_s:.0f}s", flush=True)
    metrics = sae_metrics(model, sae, module, held)
    train_metrics = sae_metrics(model, sae, module, train[:500])
    sae.metadata.update(
        {
            "data": (
                f"maia-1900 self-play: {args.games} games for training (seed {1000 + args.seed}), "
                f"{args.heldout_games} held out (seed {2000 + args.seed}), every position, at most {args.max_plies} "
                f"plies; real games of python-chess's data/pgn: {real_train} training and {real_held} held-out "
                "positions (every fifth game held out)"
            ),
            "training_positions": len(train),
            "heldout_positions": len(held),
            "heldout_metrics": metrics,
            "train_metrics_first500": train_metrics,
            "training_seconds_with_activations": round(time.perf_counter() - start, 1),
        }
    )
    out = sae.save(out_dir)
    (out / "heldout.fen").write_text("\n".join(b.fen() for b in held[:200]) + "\n")
    command = f"PYTHONPATH=. .venv/bin/python scripts/build_sae.py --net {args.net}"
    for name in ("games", "heldout_games", "max_plies", "steps", "features", "k", "seed"):
        if getattr(args, name) != parser.get_default(name):
            command += f" --{name.replace('_', '-')} {getattr(args, name)}"
    where = out.relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    (out / "README.md").write_text(card(sae, net_name, module, metrics, train_metrics, train_s, command, where))
    print(json.dumps({"heldout": metrics, "train": train_metrics, "train_s": train_s}, indent=1), flush=True)


def card(sae, net: str, module: str, held: dict, train: dict, train_s: float, command: str, where: Path) -> str:
    """The SAE's card (Markdown): what it reads, the data, the training, and its metrics on unseen positions."""
    meta = sae.metadata
    rows = "\n".join(
        f"| {label} | {held[key]:.4g} | {train[key]:.4g} |"
        for key, label in (
            ("fve", "fraction of variance explained"),
            ("l0", "mean active features per square (L0)"),
            ("dead", "dead features (share active on no square of these positions)"),
            ("kl", "policy KL when spliced in (nats, legal moves)"),
            ("value_error", "mean abs. value change when spliced in (W - L)"),
        )
    )
    return f"""# SAE: {net} `{module}`

A TopK sparse autoencoder (k = {sae.k}) with {sae.d_sae} features on the {sae.d_in}-channel per-square
activations of {net}'s `{module}` (one row per square, network orientation). Files in SAELens 6's format:
`cfg.json` and `sae_weights.safetensors`; `heldout.fen` lists the first 200 held-out positions (FEN only; the
metrics below use them with their game history).

Load it with `lczerolens.features.load_sae("{where}")` (or SAELens's `SAE.load_from_disk`).

## Data

{meta["data"]}. Training positions: {meta["training_positions"]:,}; held-out positions: {meta["heldout_positions"]:,}.

## Training

{meta["steps"]:,} Adam steps of {meta["batch_size"]:,} rows ({meta["rows_seen"]:,} rows in all), learning rate
{meta["lr"]} (linear decay over the last fifth), seed {meta["seed"]}; auxiliary loss on dead features. Training
took {train_s:.0f} s; with the self-play and the activations, {meta["training_seconds_with_activations"]:.0f} s
(on this project's 2-core machine, shared with other work while it ran).

## Metrics

| metric | held-out positions | training positions (first 500) |
|---|---|---|
{rows}

The held-out column is what the SAE is judged on (lczerolens's goals: FVE at least 0.9 with L0 at most 16, at
most 5% dead, policy KL at most 0.05 nats). On only 500 training positions many rare features do not fire, so
the dead share there counts rare features too.

Rebuild: `{command}`
"""


if __name__ == "__main__":
    main()
