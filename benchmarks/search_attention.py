"""Choose ``ATTENTION_DEFAULT`` by measurement on the trained attention-body net ``assets/nets/bt-distilled.pb.gz``.

The piece-removal protocol of ``shared/FAITHFULNESS.md`` (as ``benchmarks/bench_faithfulness.py``): maia-1900
self-play positions, FEN-only, ply 10..80; ABPC of the top move's logit (normalised by |f0|) and of the value
(win logit - loss logit). Every setting is scored on the *selection* set (seed 1) and the best ones, with the
baselines, are confirmed on a *held-out* set (seed 2) that played no part in the choice. bt-distilled was
trained on maia-1900 self-play of seed 0 (other games).

Run from the repository root (about 10 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.search_attention --positions 80 --out benchmarks/results/search_attention.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from lczerolens import metrics
from lczerolens.lenses import ATTENTION_DEFAULT, EPSILON, LrpLens
from lczerolens.positions import DEFAULT_NET, load_positions

ROOT = Path(__file__).resolve().parents[1]
NET = ROOT / "assets" / "nets" / "bt-distilled.pb.gz"
SELECTION_SEED, HELDOUT_SEED = 1, 2

# Module-name patterns of lc0's attention bodies (the names of lc0's ONNX nodes).
EMBEDDING = "attn_body/matmul"
ATTN_PROJ = ("encoder*/mha/Q/w", "encoder*/mha/K/w", "encoder*/mha/V/w", "encoder*/mha/out/dense/w")
FFN = ("encoder*/ffn/dense*/w",)
SMOLGEN = ("encoder*/smolgen/*",)
HEADS = ("policy/*", "value/*")


def _rules(groups: dict[tuple[str, ...] | str, dict[str, Any]]) -> tuple:
    out = []
    for patterns, rule in groups.items():
        for p in (patterns,) if isinstance(patterns, str) else patterns:
            out.append((p, rule))
    return tuple(out)


def _gamma(g: float, **kw: Any) -> dict[str, Any]:
    return {"rule": "gamma", "gamma": g, **kw}


def settings() -> dict[str, dict[str, Any]]:
    """The LRP settings tried: softmax rule x bias treatment x per-layer-type rules (one backward each)."""
    base = {**EPSILON, "layer_rules": ()}
    s: dict[str, dict[str, Any]] = {}
    for softmax in ("attnlrp", "cp"):
        for bias in ("absorb", "ignore"):
            tag = f"{softmax}/{bias}"
            s[f"eps {tag}"] = {**base, "softmax": softmax, "bias": bias}
            for g in (0.05, 0.25):
                s[f"gamma{g} all-linear {tag}"] = {**base, "softmax": softmax, "bias": bias,
                                                   "layer_rules": _rules({"*": _gamma(g)})}  # fmt: skip
            s[f"gamma0.25 ffn {tag}"] = {**base, "softmax": softmax, "bias": bias,
                                         "layer_rules": _rules({FFN: _gamma(0.25)})}  # fmt: skip
            s[f"gamma0.25 attn-proj {tag}"] = {**base, "softmax": softmax, "bias": bias,
                                               "layer_rules": _rules({ATTN_PROJ: _gamma(0.25)})}  # fmt: skip
            s[f"z+ embedding {tag}"] = {**base, "softmax": softmax, "bias": bias,
                                        "layer_rules": _rules({EMBEDDING: _gamma(math.inf)})}  # fmt: skip
            s[f"gamma1 embedding {tag}"] = {**base, "softmax": softmax, "bias": bias,
                                            "layer_rules": _rules({EMBEDDING: _gamma(1.0)})}  # fmt: skip
            s[f"gamma0.25 heads {tag}"] = {**base, "softmax": softmax, "bias": bias,
                                           "layer_rules": _rules({HEADS: _gamma(0.25)})}  # fmt: skip
    return s


BASELINES = ("occlusion", "gradient_x_input", "integrated_gradients")


def _score(model: Any, tasks: dict[str, metrics.Task], method: Any, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for target, task in tasks.items():
        t0 = time.perf_counter()
        r = metrics.evaluate_method(model, task, method, name=name, warmup=False)
        row[target] = {"abpc": r.abpc.tolist(), "seconds": time.perf_counter() - t0}
    return row


def _lrp(options: dict[str, Any]):
    def method(model: Any, task: metrics.Task) -> torch.Tensor:
        return metrics.lrp_attribution(model, task, **options)

    return method


def conservation(model: Any, fens: list[str], options: dict[str, Any]) -> dict[str, float]:
    """Median share of the explained number that the map accounts for, per target."""
    boards = metrics.fen_only(fens)
    out = {}
    for target in ("move", "value"):
        rel = LrpLens(**options).relevance(model, boards, target=None if target == "move" else "value")
        out[target] = float(rel.conservation.median())
    return out


def run(net: Path, positions: int, top: int, progress=print) -> dict[str, Any]:
    from lczerolens import LczeroModel

    torch.manual_seed(0)
    model = LczeroModel.from_path(net)
    maia = LczeroModel.from_path(DEFAULT_NET)
    sets = {seed: load_positions(positions, DEFAULT_NET, seed=seed, model=maia) for seed in (SELECTION_SEED,
                                                                                             HELDOUT_SEED)}  # fmt: skip
    result: dict[str, Any] = {"net": net.name, "positions": positions, "selection": {}, "heldout": {}}
    tasks_by_seed = {}
    for seed, fens in sets.items():
        shared: dict = {}
        tasks_by_seed[seed] = {t: metrics.prepare(model, fens, t, cache=shared) for t in metrics.TARGETS}
    sel = tasks_by_seed[SELECTION_SEED]
    for name in BASELINES:
        t0 = time.perf_counter()
        result["selection"][name] = _score(model, sel, name, name)
        progress(f"[selection] {name}: {time.perf_counter() - t0:.0f}s")
    occl = {t: torch.tensor(result["selection"]["occlusion"][t]["abpc"]).mean().item() for t in metrics.TARGETS}
    grid = settings()
    for label, options in grid.items():
        t0 = time.perf_counter()
        row = _score(model, sel, _lrp(options), label)
        row["score"] = sum(torch.tensor(row[t]["abpc"]).mean().item() / occl[t] for t in metrics.TARGETS) / 2
        result["selection"][label] = row
        progress(f"[selection] {label}: score {row['score']:.3f} ({time.perf_counter() - t0:.0f}s)")
    ranked = sorted(grid, key=lambda k: -result["selection"][k]["score"])
    chosen = ranked[:top] + (["eps attnlrp/absorb"] if "eps attnlrp/absorb" not in ranked[:top] else [])
    held = tasks_by_seed[HELDOUT_SEED]
    for name in BASELINES:
        result["heldout"][name] = _score(model, held, name, name)
    for label in chosen:
        result["heldout"][label] = _score(model, held, _lrp(grid[label]), label)
        result["heldout"][label]["conservation"] = conservation(model, sets[HELDOUT_SEED][:32], grid[label])
        progress(f"[held-out] {label}")
    result["winner"] = ranked[0]
    result["winner_options"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in grid[ranked[0]].items()}
    result["current_default_conservation"] = conservation(model, sets[HELDOUT_SEED][:32], ATTENTION_DEFAULT)
    return result


def _ci(values: list[float]) -> str:
    e = metrics.bootstrap_mean(torch.tensor(values, dtype=torch.float64))
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]"


def _paired(a: list[float], b: list[float]) -> str:
    e = metrics.paired_difference(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    return f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def to_markdown(result: dict[str, Any]) -> str:
    n = result["positions"]
    lines = [f"### Selection set (maia-1900 self-play seed {SELECTION_SEED}, {n} positions, FEN-only)", "",
             "| setting | move ABPC | value ABPC | score (share of occlusion's, mean of both) |",
             "|---|---|---|---|"]  # fmt: skip
    sel = result["selection"]
    for name in BASELINES:
        lines.append(f"| {name} | {_ci(sel[name]['move']['abpc'])} | {_ci(sel[name]['value']['abpc'])} | |")
    for label in sorted((k for k in sel if "score" in sel[k]), key=lambda k: -sel[k]["score"]):
        row = sel[label]
        lines.append(f"| LRP {label} | {_ci(row['move']['abpc'])} | {_ci(row['value']['abpc'])} | {row['score']:.3f} |")
    held = result["heldout"]
    lines += ["", f"### Held-out set (seed {HELDOUT_SEED}, {n} positions): ABPC and paired difference to occlusion",
              "", "| method | move ABPC | value ABPC | move - occlusion | value - occlusion | conservation (median, "
              "move / value) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in held.items():
        cons = row.get("conservation")
        c = f"{cons['move']:.2f} / {cons['value']:.2f}" if cons else ""
        label = name if name in BASELINES else f"LRP {name}"
        lines.append(
            f"| {label} | {_ci(row['move']['abpc'])} | {_ci(row['value']['abpc'])} | "
            f"{_paired(row['move']['abpc'], held['occlusion']['move']['abpc'])} | "
            f"{_paired(row['value']['abpc'], held['occlusion']['value']['abpc'])} | {c} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", type=Path, default=NET)
    ap.add_argument("--positions", type=int, default=80)
    ap.add_argument("--top", type=int, default=4, help="settings confirmed on the held-out set")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_attention.md")
    args = ap.parse_args()
    result = run(args.net, args.positions, args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result))
    args.out.write_text(to_markdown(result))
    print(to_markdown(result))
    print("winner:", result["winner"], result["winner_options"])


if __name__ == "__main__":
    main()
