"""One-backward variants of the default lens, scored by piece removal against occlusion (issue 23, part 2).

    PYTHONPATH=. python benchmarks/faithfulness_ideas.py --positions 150 --seeds 1 3 4

Each variant changes one thing of ``LrpLens()`` (``RESIDUAL_DEFAULT``) and costs one forward and one backward:

- ``fold=pieces``: a square's score sums only the piece planes of the 8 history steps (the repetition, castling,
  side-to-move, rule-50 and constant planes left out) instead of all 112 planes;
- ``fold=current``: only the current position's 12 piece planes;
- ``value=expected``: the value explained through the expected score ``P(win) - P(loss)`` (the output seed is its
  gradient with respect to the three logits) instead of the win-minus-loss logit;
- ``input=z+``: the z+ rule (``gamma=inf``) on the input convolution instead of ``gamma=1``;
- ``se=absorb``: the squeeze-excitation shift held constant;
- ``blocks=gamma 0.25`` / ``blocks=gamma 0.05``: the block convolutions' gamma;
- ``gate=uniform``: the squeeze-excitation gate ``sigmoid(s1) * x`` split half/half between the gate and ``x``
  (uniform rule), the gate's half going on through ``sigmoid`` (identity rule, its value at 0 held as a bias) to
  the block's pooled features, instead of the gate held constant (``x`` takes all).

Seed 1 is the set the default was chosen on; other seeds are held out. The piece-removal metric always
measures the explained output of the protocol (top move's logit, win-minus-loss logit).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from lczerolens import metrics
from lczerolens.lenses import RESIDUAL_DEFAULT, LrpLens
from lczerolens.lenses.lrp.lens import make_composite
from lczerolens.lenses.lrp.rules.epsilon import IdentityRuleFunction, MulUniformFunction
from lczerolens.model import ops
from lczerolens.positions import DEFAULT_NET, load_positions

#: Classical input: 8 history steps x (12 piece planes + 1 repetition plane), then 8 auxiliary planes.
PIECE_PLANES = [13 * step + p for step in range(8) for p in range(12)]
CURRENT_PLANES = list(range(12))


def _with_rule(pattern: str, rule: dict[str, Any]) -> dict[str, Any]:
    rules = tuple((p, rule if p == pattern else r) for p, r in RESIDUAL_DEFAULT["layer_rules"])
    return {**RESIDUAL_DEFAULT, "layer_rules": rules}


def _blocks(gamma: float) -> dict[str, Any]:
    rules = tuple((p, {"rule": "gamma", "gamma": gamma} if p.startswith("block") else r)
                  for p, r in RESIDUAL_DEFAULT["layer_rules"])
    return {**RESIDUAL_DEFAULT, "layer_rules": rules}


class GateUniform(nn.Module):
    """``sigmoid(s) * x`` with the uniform rule between the gate and ``x`` (the ``gate=uniform`` variant)."""

    lrp_rule = True

    def forward(self, gate_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = IdentityRuleFunction.apply(gate_logits, torch.sigmoid, 1e-6, 0.5)
        return MulUniformFunction.apply(gate, x)


def _gate_uniform_composite() -> dict:
    composite = make_composite(1e-6, "attnlrp")
    composite[ops.Gate] = lambda op: GateUniform()
    return composite


def scores(model: Any, task: metrics.Task, options: dict[str, Any], fold: str = "all",
           value: str = "logit", composite: Any = None) -> torch.Tensor:
    """``[N, 64]`` square scores (board orientation) of the lens with ``options``, one forward and one backward."""
    lens = LrpLens(**options, composite=composite)
    network = metrics.network_of(model)
    fmt = metrics.input_format_of(model)
    tree = lens.explaining_network(model, "policy" if task.target == "move" else "value")
    out = []
    for start in range(0, len(task), 64):
        rows = slice(start, start + 64)
        boards = task.boards[rows]
        x = metrics.encode(boards, fmt).requires_grad_(True)
        outputs = tree(x)
        if task.target == "move":
            logits = outputs["policy"]
            seed = torch.zeros_like(logits)
            seed[torch.arange(len(boards)), task.indices[rows]] = 1.0
        else:
            logits = outputs["wdl_logits"]
            if value == "logit":
                seed = torch.tensor([1.0, 0.0, -1.0]).expand_as(logits)
            else:  # gradient of P(win) - P(loss) with respect to the logits
                p = torch.softmax(logits.detach(), dim=1)
                v = (p[:, 0] - p[:, 2])[:, None]
                seed = p * (torch.tensor([1.0, 0.0, -1.0]) - v)
        (grad,) = torch.autograd.grad(logits, x, seed)
        rel = (x.detach() * grad)
        if fold == "pieces":
            rel = rel[:, PIECE_PLANES]
        elif fold == "current":
            rel = rel[:, CURRENT_PLANES]
        out.append(metrics.to_board_orientation(boards, rel.sum(dim=1), fmt))
    del network
    return torch.cat(out).to(torch.float64)


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "fold=pieces": {"fold": "pieces"},
    "fold=current": {"fold": "current"},
    "value=expected": {"value": "expected"},
    "input=z+": {"options": _with_rule("inputconv", {"rule": "gamma", "gamma": float("inf"), "bias": "ignore"})},
    "se=absorb": {"options": {**RESIDUAL_DEFAULT, "se_shift": "absorb"}},
    "blocks=gamma 0.25": {"options": _blocks(0.25)},
    "blocks=gamma 0.05": {"options": _blocks(0.05)},
    "gate=uniform": {"composite": True},
}


def run(positions: int, seeds: list[int], names: list[str]) -> None:
    from lczerolens.model import LczeroModel

    torch.set_num_threads(1)
    model = LczeroModel.from_path(DEFAULT_NET)
    print("| seed | variant | target | ABPC | vs occlusion (paired, 95% CI) | vs default | s |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        fens = load_positions(positions, DEFAULT_NET, seed=seed, model=model)
        shared: dict = {}
        for target in metrics.TARGETS:
            task = metrics.prepare(model, fens, target, cache=shared)
            occl = metrics.evaluate_method(model, task, "occlusion", warmup=False).abpc
            base = None
            for name in names:
                spec = VARIANTS[name]
                if target == "move" and spec.get("value"):
                    continue
                t0 = time.perf_counter()
                options = spec.get("options", RESIDUAL_DEFAULT)
                composite = _gate_uniform_composite() if spec.get("composite") else None
                fn = lambda m, t, o=options, s=spec, c=composite: scores(  # noqa: E731
                    m, t, o, s.get("fold", "all"), s.get("value", "logit"), c)
                result = metrics.evaluate_method(model, task, fn, name=name, warmup=False)
                if name == "default":
                    base = result.abpc
                vs_default = "" if base is None or name == "default" else str(
                    metrics.paired_difference(result.abpc, base))
                print(f"| {seed} | {name} | {target} | {float(result.abpc.mean()):.3f} | "
                      f"{metrics.paired_difference(result.abpc, occl)} | {vs_default} | "
                      f"{time.perf_counter() - t0:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    run(args.positions, args.seeds, args.variants)


if __name__ == "__main__":
    main()
