"""A random search over the residual default's settings, scored by piece removal against occlusion (issue 23).

    PYTHONPATH=. python benchmarks/search_default.py search --settings 250 --seed 1 --positions 300 \\
        --out benchmarks/results/search_default.jsonl
    PYTHONPATH=. python benchmarks/search_default.py confirm --ids 1 32 121 235 \\
        --results benchmarks/results/search_default.jsonl
    PYTHONPATH=. python benchmarks/search_default.py report --results benchmarks/results/search_default.jsonl

``search`` scores ``RESIDUAL_DEFAULT`` (row 0) and ``--settings`` settings drawn uniformly from :data:`SPACE`
(``random.Random(0)``) on one self-play set, both targets, and appends one JSON line per setting: the setting,
its mean ABPC and its mean paired difference with occlusion per target. Every setting is one forward and one
backward pass. ``confirm`` scores chosen rows on the held-out sets (seeds 2, 3, 4 with 200 positions, 5 and 6
with 300, the real games) against occlusion and against the default, paired, with bootstrap intervals.
``report`` prints the rows as a markdown table, best on the move first.

The ``beta`` patterns name maia-1900's six blocks (blocks 0-1, 2-3, 4-5): the search is of this network, and a
setting found this way would need rewriting by relative depth before it could serve other towers.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.faithfulness_ideas import GAMES, positions_of, scores
from lczerolens import metrics
from lczerolens.lenses import RESIDUAL_DEFAULT
from lczerolens.positions import DEFAULT_NET

inf = math.inf

#: Each setting's choices. ``in``, ``conv1``, ``policy``: the gamma of the input convolution, of each block's
#: ``conv1``, of the policy head's convolutions (inf: the z+ rule). ``b_*``: the smoothed ReLU's ``beta`` on blocks
#: 0-1, 2-3, 4-5 (their output and squeeze-excitation ReLUs), on the squeeze-excitation ReLUs alone (``same``:
#: as their block), on the value head; the ReLUs after gamma convolutions keep the identity rule throughout.
#: ``gate_*``: the squeeze-excitation gate's share for move and value targets.
SPACE: dict[str, list[Any]] = {
    "in": [1.0, 2.0, 4.0, inf],
    "conv1": [0.05, 0.1, 0.2],
    "policy": [0.05, 0.1, 0.25],
    "b_early": [1.0, 1.5, 2.0, 3.0, 4.0],
    "b_mid": [1.0, 1.5, 2.0, 3.0, 4.0],
    "b_late": [1.0, 1.5, 2.0, 3.0, 4.0, 8.0],
    "b_se": [1.0, 2.0, 4.0, "same"],
    "b_value": [1.0, 2.0, 4.0],
    "gate_policy": ["constant", 0.1, 0.25],
    "gate_value": [0.25, 0.5, 0.75],
}

#: ``RESIDUAL_DEFAULT`` in the search's terms (the same rules on maia-1900).
DEFAULT_SETTING: dict[str, Any] = {
    "in": 1.0, "conv1": 0.1, "policy": 0.1, "b_early": 2.0, "b_mid": 2.0, "b_late": 2.0, "b_se": "same",
    "b_value": 2.0, "gate_policy": "constant", "gate_value": 0.5,
}  # fmt: skip


def options(setting: dict[str, Any]) -> dict[str, Any]:
    """The ``LrpLens`` options of one setting."""
    rules = (
        ("inputconv", {"rule": "gamma", "gamma": setting["in"]}),
        ("block*/conv1", {"rule": "gamma", "gamma": setting["conv1"]}),
        ("policy/conv*", {"rule": "gamma", "gamma": setting["policy"]}),
    )
    beta: list[tuple[str, float]] = [("inputconv/relu", inf), ("*/conv1/relu", inf)]
    if setting["b_se"] != "same":
        beta.append(("*/se/relu", setting["b_se"]))
    beta += [("block[01]/*", setting["b_early"]), ("block[23]/*", setting["b_mid"]),
             ("block[45]/*", setting["b_late"]), ("value/*", setting["b_value"])]  # fmt: skip
    gate = {"policy": setting["gate_policy"], "value": setting["gate_value"]}
    return {**RESIDUAL_DEFAULT, "layer_rules": rules, "relu_beta": tuple(beta), "se_gate": gate}


def search(settings: int, seed: int, positions: int, out: Path) -> None:
    from lczerolens.model import LczeroModel

    torch.set_num_threads(1)
    model = LczeroModel.from_path(DEFAULT_NET)
    fens = positions_of(seed, positions, model)
    shared: dict = {}
    tasks = {t: metrics.prepare(model, fens, t, cache=shared) for t in metrics.TARGETS}
    occlusion = {t: metrics.evaluate_method(model, task, "occlusion", warmup=False).abpc for t, task in tasks.items()}
    rng = random.Random(0)
    drawn = [DEFAULT_SETTING] + [{k: rng.choice(v) for k, v in SPACE.items()} for _ in range(settings)]
    with out.open("a") as f:
        for i, setting in enumerate(drawn):
            start = time.perf_counter()
            row: dict[str, Any] = {"i": i, "config": setting}
            chosen = options(setting)
            for target, task in tasks.items():
                fn = lambda m, t, o=chosen: scores(m, t, o)  # noqa: E731
                abpc = metrics.evaluate_method(model, task, fn, name=str(i), warmup=False).abpc
                row[target] = float((abpc - occlusion[target]).mean())
                row[target + "_abpc"] = float(abpc.mean())
            row["s"] = time.perf_counter() - start
            f.write(json.dumps(row) + "\n")
            f.flush()


def _rows(results: Path) -> dict[int, dict[str, Any]]:
    return {row["i"]: row for row in map(json.loads, results.read_text().splitlines())}


def confirm(ids: list[int], results: Path) -> None:
    from lczerolens.model import LczeroModel

    torch.set_num_threads(1)
    rows = _rows(results)
    model = LczeroModel.from_path(DEFAULT_NET)
    print("| set | setting | target | ABPC | vs occlusion (paired, 95% CI) | vs the default |")
    print("|---|---|---|---|---|---|")
    for seed, positions in ((2, 200), (3, 200), (4, 200), (5, 300), (6, 300), (GAMES, 0)):
        fens = positions_of(seed, positions, model)
        shared: dict = {}
        for target in metrics.TARGETS:
            task = metrics.prepare(model, fens, target, cache=shared)
            occl = metrics.evaluate_method(model, task, "occlusion", warmup=False).abpc
            base = metrics.evaluate_method(
                model, task, lambda m, t: scores(m, t, RESIDUAL_DEFAULT), name="default", warmup=False
            ).abpc
            print(f"| {seed} | default | {target} | {float(base.mean()):.3f} | "
                  f"{metrics.paired_difference(base, occl)} | |", flush=True)  # fmt: skip
            for i in ids:
                chosen = options(rows[i]["config"])
                fn = lambda m, t, o=chosen: scores(m, t, o)  # noqa: E731
                abpc = metrics.evaluate_method(model, task, fn, name=str(i), warmup=False).abpc
                print(f"| {seed} | #{i} | {target} | {float(abpc.mean()):.3f} | "
                      f"{metrics.paired_difference(abpc, occl)} | {metrics.paired_difference(abpc, base)} |",
                      flush=True)  # fmt: skip


def report(results: Path) -> None:
    rows = sorted(_rows(results).values(), key=lambda r: -r["move"])
    keys = list(SPACE)
    print("| # | " + " | ".join(keys) + " | move: ABPC | Δ vs occlusion | value: ABPC | Δ vs occlusion |")
    print("|" + "---|" * (len(keys) + 5))
    for row in rows:
        cells = [str(row["config"][k]) for k in keys]
        label = f"{row['i']} (the default)" if row["i"] == 0 else str(row["i"])
        print(f"| {label} | " + " | ".join(cells) + f" | {row['move_abpc']:.3f} | {row['move']:+.3f} | "
              f"{row['value_abpc']:.3f} | {row['value']:+.3f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search")
    s.add_argument("--settings", type=int, default=250)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--positions", type=int, default=300)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("confirm")
    c.add_argument("--ids", type=int, nargs="+", required=True)
    c.add_argument("--results", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "search":
        search(args.settings, args.seed, args.positions, args.out)
    elif args.command == "confirm":
        confirm(args.ids, args.results)
    else:
        report(args.results)


if __name__ == "__main__":
    main()
