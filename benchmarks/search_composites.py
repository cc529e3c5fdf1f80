"""Search for the most faithful one-backward LRP composite on maia-1900, by piece removal (``FAITHFULNESS.md``).

Protocol: every setting is scored on a *selection* set of positions (maia-1900 self-play, seed 1) and nothing
else; the chosen setting is then reported by ``bench_faithfulness.py`` on positions that played no part in
choosing (self-play seed 0, and positions from real games). The search is coarse to fine: stage 1 varies one
factor at a time around plain epsilon-LRP (bias treatment, rule of the input convolution, rule of the block
convolutions by depth, rule of the head convolutions, squeeze-excitation shift, epsilon), stage 2 combines the
best of each factor, stage 3 refines gamma around the best combination. Stages 4-6 vary the policy and
value heads, the dense layers and epsilon one at a time, combine the best, and leave biases out of the
propagation in one group of layers at a time; stage 7 restricts the winner's block rules to the convolutions
(lc0's ONNX exports have no ``nn.Linear`` for the squeeze-excitation dense layers, and the default must give the
same maps from both loaders). Stage 0 scores the named presets for reference. The score of a
setting is the mean over both targets (top move, value) of its selection-set ABPC divided by occlusion's on the
same positions; the chosen setting is the best score of stages 1-6.

Every setting tried is written to a JSON cache (a rerun resumes) and to a markdown table.

Usage::

    PYTHONPATH=. python benchmarks/search_composites.py --positions 60 --out benchmarks/results/search.md

Example
-------
>>> from benchmarks import search_composites
>>> table = search_composites.run(positions=8, stages=1)  # doctest: +SKIP
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
from lczerolens.positions import DEFAULT_NET, load_positions

ROOT = Path(__file__).resolve().parents[1]
SELECTION_SEED = 1
DEFAULT_POSITIONS = 100
CACHE = ROOT / "benchmarks" / "results" / "search_composites.json"

BLOCKS = 6  # maia-1900's residual blocks
LOW = tuple(f"block{i}/conv*" for i in range(BLOCKS // 2))
HIGH = tuple(f"block{i}/conv*" for i in range(BLOCKS // 2, BLOCKS))
HEADS = ("policy/conv*", "value/conv")  # maia-1900 has no moves-left head


def _rule(rule: str, **kw: float) -> dict[str, Any]:
    return {"rule": rule, **kw}


def _rules(ignore: tuple[str, ...] = (), convs_only: bool = False, **groups: dict[str, Any] | None) -> tuple:
    """Layer rules from groups ``input``, ``low``, ``high``, ``heads``, ... (``None``: epsilon, the plain gradient).

    The groups in ``ignore`` leave their biases out of the propagation (``bias="ignore"``), whatever the lens's
    ``bias``.
    """
    low, high = LOW, HIGH
    if convs_only:  # the blocks' convolutions alone, not their squeeze-excitation dense layers
        low, high = (tuple(p[:-1] + c for p in group for c in "12") for group in (LOW, HIGH))
    patterns = {"input": ("inputconv",), "low": low, "high": high, "heads": HEADS,
                "policy": ("policy/conv*",), "value": ("value/conv",), "vdense": ("value/dense*",),
                "se": ("*/se/matmul*",)}
    out = []
    for group, rule in groups.items():
        if group in ignore:
            rule = {**(rule or {"rule": "epsilon"}), "bias": "ignore"}
        if rule is not None:
            out.extend((p, rule) for p in patterns[group])
    return tuple(out)


RULE_CHOICES: dict[str, dict[str, Any] | None] = {
    "eps": None,
    "g0.1": _rule("gamma", gamma=0.1),
    "g0.25": _rule("gamma", gamma=0.25),
    "g1": _rule("gamma", gamma=1.0),
    "g4": _rule("gamma", gamma=4.0),
    "z+": _rule("gamma", gamma=math.inf),
    "a2b1": _rule("alphabeta", alpha=2.0, beta=1.0),
}


def setting(
    bias: str = "absorb",
    input: str = "eps",  # noqa: A002 - the name of the layer group
    low: str = "eps",
    high: str = "eps",
    heads: str = "eps",
    se_shift: str = "propagate",
    epsilon: float = 1e-6,
    policy: str = "eps",
    value: str = "eps",
    vdense: str = "eps",
    se: str = "eps",
    ignore: str = "",
    convs_only: bool = False,
) -> dict[str, Any]:
    """A named point of the grid: lens options plus the short labels it was built from.

    ``heads`` sets both head convolutions; ``policy`` / ``value`` set one of them (where ``heads`` is ``eps``).
    ``vdense`` is the value head's dense layers, ``se`` the squeeze-excitation dense layers.
    """
    label = f"bias={bias} in={input} low={low} high={high} heads={heads} se={se_shift} eps={epsilon:g}"
    extra = {"policy": policy, "value": value, "vdense": vdense, "sedense": se}
    label += "".join(f" {k}={v}" for k, v in extra.items() if v != "eps")
    label += f" ignore={ignore}" if ignore else ""
    label += " convs-only" if convs_only else ""
    options = {
        "epsilon": epsilon,
        "softmax": "attnlrp",
        "bias": bias,
        "se_shift": se_shift,
        "layer_rules": _rules(
            tuple(ignore.split("+")) if ignore else (),
            convs_only,
            input=RULE_CHOICES[input], low=RULE_CHOICES[low], high=RULE_CHOICES[high], heads=RULE_CHOICES[heads],
            policy=RULE_CHOICES[policy], value=RULE_CHOICES[value], vdense=RULE_CHOICES[vdense], se=RULE_CHOICES[se],
        ),
    }
    return {"label": label, "options": options,
            "factors": dict(bias=bias, input=input, low=low, high=high, heads=heads, se_shift=se_shift,
                            epsilon=epsilon, policy=policy, value=value, vdense=vdense, se=se, ignore=ignore,
                            convs_only=convs_only)}


PRESET_NAMES = ("EPSILON", "GAMMA_COMPOSITE", "RESIDUAL_DEFAULT", "RESIDUAL_CONSERVING")


def presets() -> list[dict[str, Any]]:
    """The named presets of :mod:`lczerolens.lenses`, scored for reference (stage 0; never chosen from)."""
    from lczerolens import lenses

    out = []
    for name in PRESET_NAMES:
        options = {**lenses.EPSILON, **getattr(lenses, name)}
        if "conv_rule" in options:
            options.pop("layer_rules")
        out.append({"label": f"preset {name}", "options": options, "factors": {"preset": name}})
    return out


def _top(results: dict[str, Any], stage: int = 7) -> dict[str, Any]:
    """The best-scoring setting of stages ``1 .. stage - 1`` (the anchor of ``stage``; presets excluded).

    Anchoring each stage on the earlier ones only makes a rerun ask for exactly the same settings.
    """
    return max((r for r in results.values() if 1 <= r.get("stage", 0) < stage), key=lambda r: r["score"])


def stage1() -> list[dict[str, Any]]:
    """One factor at a time around plain epsilon-LRP (and around the old gamma composite)."""
    grid = [setting()]
    grid += [setting(bias=b, input="z+", low="z+", high="z+", heads="z+") for b in ("absorb", "ignore", "flat")]
    grid += [setting(bias=b) for b in ("flat",)]
    grid += [setting(input=r) for r in ("g0.25", "g1", "z+", "a2b1")]
    grid += [setting(low=r, high=r) for r in ("g0.1", "g0.25", "g1", "z+", "a2b1")]
    grid += [setting(low="g1", high="g0.25"), setting(low="g0.25", high="g0.1"), setting(low="z+", high="g0.25")]
    grid += [setting(heads=r) for r in ("g0.25", "z+")]
    grid += [setting(se_shift="absorb")]
    grid += [setting(epsilon=e) for e in (1e-2, 0.1)]
    return grid


def _best(results: dict[str, Any], factors: tuple[str, ...], grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The values of ``factors`` in the best-scoring setting of ``grid`` that differs from epsilon-LRP in them alone."""
    base = setting()["factors"]
    best, value = -math.inf, {k: base[k] for k in factors}
    for s in grid:
        f = s["factors"]
        if "preset" not in f and all(f[k] == base[k] for k in f if k not in factors) and s["label"] in results:
            score = results[s["label"]]["score"]
            if score > best:
                best, value = score, {k: f[k] for k in factors}
    return value


def stage2(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Combinations of the best value of each factor, with every bias treatment and SE-shift treatment."""
    grid1 = stage1()
    best: dict[str, Any] = {}
    for group in (("input",), ("low", "high"), ("heads",), ("epsilon",)):  # the blocks were varied together
        best.update(_best(results, group, grid1))
    out = []
    for bias in ("absorb", "ignore", "flat"):
        for se in ("propagate", "absorb"):
            out.append(setting(bias=bias, se_shift=se, **best))
            # Sign-aware rules on every convolution (needed to conserve with bias="ignore").
            out.append(setting(bias=bias, se_shift=se, input=best["input"] if best["input"] != "eps" else "z+",
                               low=best["low"] if best["low"] != "eps" else "g0.25",
                               high=best["high"] if best["high"] != "eps" else "g0.25",
                               heads=best["heads"] if best["heads"] != "eps" else "g0.25",
                               epsilon=best["epsilon"]))
    # Each factor's runner-up too: factors interact (a larger epsilon and gamma both damp the value's map).
    for inp in ("z+", "g1"):
        for heads in ("eps", "g0.25"):
            for low, high in (("g0.1", "g0.1"), ("g0.25", "g0.1")):
                out.append(setting(input=inp, low=low, high=high, heads=heads))
    return out


def stage3(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Gamma refined around the best setting so far, one layer group at a time."""
    top = _top(results, 3)
    f = dict(top["factors"])
    out = []
    for group in ("input", "low", "high", "heads"):
        for r in ("g0.1", "g0.25", "g1", "g4", "z+"):
            if r != f[group]:
                out.append(setting(**{**f, group: r}))
    return out


def stage4(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Around the best so far: each head and dense group on its own (the policy head only acts on the move's
    map, the value head only on the value's), and epsilon with the gamma rules in place."""
    top = _top(results, 4)
    f = {**setting()["factors"], **top["factors"]}
    out = []
    for group, choices in (("policy", ("g0.1", "g0.25", "g1", "z+")), ("value", ("g0.1", "g0.25")),
                           ("vdense", ("g0.1", "g0.25")), ("se", ("g0.1", "g0.25"))):
        out += [setting(**{**f, "heads": "eps", group: r}) for r in choices if r != f[group]]
    out += [setting(**{**f, "epsilon": e}) for e in (1e-4, 1e-2) if e != f["epsilon"]]
    return out


def stage5(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The best of each stage-4 group combined, and its neighbours in the policy head's gamma."""
    top = _top(results, 5)
    f = {**setting()["factors"], **top["factors"]}
    best = dict(f)
    for group in ("policy", "value", "vdense", "se", "epsilon"):
        scored = [(r["score"], {**setting()["factors"], **r["factors"]}[group]) for r in results.values()
                  if r.get("stage") == 4 and all({**setting()["factors"], **r["factors"]}[k] == f[k]
                                                   for k in f if k not in (group, "heads"))]
        if scored:
            s, v = max(scored, key=lambda sv: sv[0])
            if s > top["score"]:
                best[group] = v
    best["heads"] = "eps"
    out = [setting(**best)]
    out += [setting(**{**best, "policy": r}) for r in ("g0.25", "g1", "z+") if r != best["policy"]]
    out += [setting(**{**best, "input": r}) for r in ("g1", "z+") if r != best["input"]]
    return out


def stage6(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Around the best so far: biases left out of the propagation in one group of layers at a time."""
    top = _top(results, 6)
    f = {**setting()["factors"], **top["factors"]}
    groups = ("input", "low", "high", "input+low+high", "policy", "value", "vdense", "se")
    return [setting(**{**f, "ignore": g}) for g in groups if g != f["ignore"]]


def stage7(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The winner with its block rules on the convolutions only: lc0's ONNX exports express the squeeze-excitation
    dense layers as MatMul + Add (no ``nn.Linear``), so only this form gives the same maps from both loaders."""
    f = {**setting()["factors"], **_top(results, 7)["factors"]}
    return [setting(**{**f, "convs_only": True})]


def _score_setting(model, tasks, occl, options) -> dict[str, Any]:
    row: dict[str, Any] = {}
    ratios = []
    for target, task in tasks.items():
        t0 = time.perf_counter()
        result = metrics.evaluate_method(
            model, task, lambda m, t, o=options: metrics.lrp_attribution(m, t, **o), name="lrp", warmup=False
        )
        abpc = float(result.abpc.mean())
        row[target] = {"abpc": abpc, "vs_occlusion": str(metrics.paired_difference(result.abpc, occl[target])),
                       "seconds": time.perf_counter() - t0}
        ratios.append(abpc / float(occl[target].mean()))
    row["score"] = sum(ratios) / len(ratios)
    return row


def run(positions: int = DEFAULT_POSITIONS, stages: int = 7, cache: Path = CACHE, progress=print) -> str:
    """Score every setting of the stages on the selection set; return the markdown table (best first)."""
    from lczerolens.model import LczeroModel

    torch.manual_seed(0)
    model = LczeroModel.from_path(DEFAULT_NET)
    fens = load_positions(positions, DEFAULT_NET, seed=SELECTION_SEED, model=model)
    shared: dict = {}
    tasks = {t: metrics.prepare(model, fens, t, cache=shared) for t in metrics.TARGETS}
    store: dict[str, Any] = {}
    if cache.exists():
        store = json.loads(cache.read_text())
    key = f"{positions}"
    if store.get("positions") != key:
        store = {"positions": key, "results": {}, "baselines": {}}
    results = store["results"]
    occl = {}
    for target, task in tasks.items():
        # Occlusion costs one forward per piece: computed once per target and kept.
        found = store["baselines"].get(f"occlusion/{target}")
        if found is None:
            r = metrics.evaluate_method(model, task, "occlusion", warmup=False)
            found = store["baselines"][f"occlusion/{target}"] = r.abpc.tolist()
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(store))
        occl[target] = torch.tensor(found, dtype=torch.float64)
    stage_makers = (
        (0, lambda: presets()),
        (1, lambda: stage1()),
        (2, lambda: stage2(results)),
        (3, lambda: stage3(results)),
        (4, lambda: stage4(results)),
        (5, lambda: stage5(results)),
        (6, lambda: stage6(results)),
        (7, lambda: stage7(results)),
    )
    for stage, make in stage_makers[: stages + 1]:
        for s in make():
            if s["label"] in results:
                continue
            t0 = time.perf_counter()
            row = _score_setting(model, tasks, occl, s["options"])
            row.update(stage=stage, factors=s["factors"], options=_jsonable(s["options"]))
            results[s["label"]] = row
            cache.write_text(json.dumps(store))
            progress(f"[stage {stage}] {s['label']}: score {row['score']:.3f} "
                     f"(move {row['move']['abpc']:.3f}, value {row['value']['abpc']:.3f}; "
                     f"{time.perf_counter() - t0:.0f}s)")
    return to_markdown(store, positions)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    if options.get("layer_rules") is not None:
        out["layer_rules"] = [
            [p, {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}]
            for p, r in options["layer_rules"]
        ]
    if out.get("gamma_layers") is not None:
        out["gamma_layers"] = list(out["gamma_layers"])
    return out


def to_markdown(store: dict[str, Any], positions: int) -> str:
    """Every setting tried, best first: selection-set ABPC per target and its score (share of occlusion's)."""
    occl = {t: sum(v) / len(v) for t, v in ((k.split("/")[1], v) for k, v in store["baselines"].items())}
    lines = [
        f"Selection set: {positions} maia-1900 self-play positions (seed {SELECTION_SEED}, FEN-only). "
        f"Occlusion ABPC there: move {occl.get('move', math.nan):.3f}, value {occl.get('value', math.nan):.3f}. "
        "Score = mean over the two targets of ABPC / occlusion's ABPC. Groups: in = inputconv, low = blocks 0-2, "
        "high = blocks 3-5, heads = policy and value convolutions (policy=, value= one of them), vdense = value "
        "head's dense layers, sedense = squeeze-excitation dense layers (the patterns of low and high, "
        "`blockN/conv*`, match them too and come first, so sedense changes nothing where low/high are set); "
        "ignore = groups whose biases are left out; eps = epsilon rule (plain gradient), gN = "
        "generalized gamma N, z+ = gamma=inf, a2b1 = alpha 2 beta 1.",
        "",
        "| stage | setting | ABPC move | Δ vs occlusion (move) | ABPC value | Δ vs occlusion (value) | score |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = sorted(store["results"].items(), key=lambda kv: -kv[1]["score"])
    grid = [(label, r) for label, r in rows if 1 <= r.get("stage", 0) <= 6]
    final = [(label, r) for label, r in rows if r.get("stage") == 7]
    for label, r in rows:
        lines.append(
            f"| {r['stage']} | {label} | {r['move']['abpc']:.3f} | {r['move']['vs_occlusion']} | "
            f"{r['value']['abpc']:.3f} | {r['value']['vs_occlusion']} | {r['score']:.3f} |"
        )
    if grid:
        lines += ["", f"Best score of stages 1-6 ({len(grid)} settings): **{grid[0][0]}**."]
    if final:
        lines += [f"The default (`RESIDUAL_DEFAULT`) is its form with the block rules on the convolutions only "
                  f"(stage 7; the same maps from the `.pb.gz` and the `.onnx` loaders): **{final[0][0]}**, score "
                  f"{final[0][1]['score']:.3f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--positions", type=int, default=DEFAULT_POSITIONS)
    parser.add_argument("--stages", type=int, default=7, choices=(0, 1, 2, 3, 4, 5, 6, 7))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_composites.md")
    args = parser.parse_args()
    table = run(args.positions, args.stages)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
