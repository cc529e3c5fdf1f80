"""Where the default lens loses a piece's removal effect on the way down (issue 23, the move's remaining gap).

For every non-king piece of the positions whose removal *raises* the explained top-move logit by more than
``--threshold`` of ``|f0|`` (the pieces occlusion ranks least relevant, which the lens's maps miss most), the
script compares the true change with first-order estimates made at several depths: at a layer's output ``a``,
``sum(g * (a - a_removed))``, where ``g`` is the lens's signal (modified gradient) at ``a`` in the original
position and ``a_removed`` the layer's output with the piece removed (a plain forward). At the input the estimate
is the lens's own score of the piece's square (its relevance); at the policy head's last ReLU it is nearly exact,
the head after it being linear. How far each layer's estimate falls short of the truth says how much of the
removal's effect the rules below that layer lose.

    PYTHONPATH=. python benchmarks/removal_linearity.py --positions 150 --seed 1 [--side own|opponent]

Prints, per depth, the mean estimate (as a share of ``|f0|``, negative = removal raises the logit) and the share
of those pieces whose estimate has the right sign.
"""

from __future__ import annotations

import argparse
from typing import Any

import chess
import numpy as np
import torch

from lczerolens import LczeroBoard, metrics
from lczerolens.lenses import LrpLens
from lczerolens.positions import DEFAULT_NET, load_positions

LAYERS = ["inputconv/relu"] + [f"block{i}/conv2/relu" for i in range(6)] + ["policy/conv1/relu"]


def _without(board: chess.Board, square: int) -> LczeroBoard:
    """``board`` with the piece on ``square`` removed, as the piece-removal protocol removes it."""
    out = LczeroBoard(board.fen())
    out.remove_piece_at(square)
    out.castling_rights = out.clean_castling_rights()
    if out.ep_square is not None and not out.has_legal_en_passant():
        out.ep_square = None
    return out


def run(positions: int, seed: int, threshold: float, side: str = "both") -> dict[str, Any]:
    """Per depth, the estimates for the pieces whose removal raises the logit; ``side``: ``"both"``, ``"own"`` (the
    side to move's pieces) or ``"opponent"``."""
    from lczerolens.model import LczeroModel

    torch.set_num_threads(1)
    model = LczeroModel.from_path(DEFAULT_NET)
    task = metrics.prepare(model, load_positions(positions, DEFAULT_NET, seed=seed, model=model), "move")
    fmt = metrics.input_format_of(model)
    tree = LrpLens().explaining_network(model, "policy")
    outputs: dict[str, torch.Tensor] = {}
    hooks = [tree.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o))
             for n in LAYERS]
    rows: dict[str, list[float]] = {"true change": [], "input (the map)": [], **{n: [] for n in LAYERS}}
    try:
        for board, index in zip(task.boards, task.indices.tolist(), strict=True):
            x = metrics.encode([board], fmt).requires_grad_(True)
            logit = tree(x)["policy"][0, index]
            kept = {n: outputs[n] for n in LAYERS}
            signals = torch.autograd.grad(logit, [x, *kept.values()])
            f0 = float(logit.detach())
            scores = metrics.to_board_orientation([board], (x.detach() * signals[0]).sum(1), fmt)[0].reshape(64)
            for square, piece in board.piece_map().items():
                if piece.piece_type == chess.KING:
                    continue
                if side != "both" and (piece.color == board.turn) != (side == "own"):
                    continue
                with torch.no_grad():
                    changed = float(tree(metrics.encode([_without(board, square)], fmt))["policy"][0, index])
                drop = (f0 - changed) / abs(f0)
                if drop >= -threshold:
                    continue
                rows["true change"].append(drop)
                rows["input (the map)"].append(float(scores[square]) / abs(f0))
                for name, g in zip(LAYERS, signals[1:], strict=True):
                    estimate = (g * (kept[name].detach() - outputs[name])).sum()
                    rows[name].append(float(estimate) / abs(f0))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.03)
    parser.add_argument("--side", choices=("both", "own", "opponent"), default="both",
                        help="only the side to move's pieces (own) or the opponent's")
    args = parser.parse_args()
    rows = run(args.positions, args.seed, args.threshold, args.side)
    n = len(rows["true change"])
    whose = "" if args.side == "both" else f"{args.side} "
    print(f"{n} {whose}pieces whose removal raises the top move's logit by more than {args.threshold:.0%} of |f0| "
          f"({args.positions} positions of seed {args.seed})\n")
    print("| depth | mean drop estimated (share of \\|f0\\|) | right sign |")
    print("|---|---|---|")
    for name, values in rows.items():
        v = np.array(values)
        print(f"| {name} | {v.mean():+.3f} | {np.mean(v < 0):.0%} |")


if __name__ == "__main__":
    main()
