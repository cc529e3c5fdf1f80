"""Distil maia-1900 into a small lc0 attention-body net: ``assets/nets/bt-distilled.pb.gz``.

Reproducible (seeded) and CPU-only; a GPU is used when present (``--device cuda``), never required.

Stages, each cached under ``--work`` (default ``assets/cache/distill``, git-ignored):

1. ``data``: positions from python-chess's real games (``assets/cache/chess-data/pgn``, from ``make assets``) and
   from maia-1900 self-play (moves sampled from its policy over the legal moves), deduplicated by position (EPD),
   split into train / held-out by game (a held-out position's EPD never occurs in train). Each position keeps
   lc0's 112-plane encoding with its history (stored as bit masks), and the teacher's labels: maia-1900's
   probabilities over the legal moves and its WDL.
2. ``train``: the student, an lc0 attention-body net (attention policy, WDL, smolgen, PE_MAP embedding,
   classical input, no moves-left head) built by :mod:`lczerolens.testing` and trained as our own PyTorch
   modules. Loss: KL(teacher || student) of the policy over the legal moves plus the WDL cross-entropy to the
   teacher's WDL. AdamW with warm-up and cosine decay, a fixed number of steps (not a time budget), checkpoints
   and a CSV log; a killed run resumes from its last checkpoint.
3. ``export``: the trained parameters written as lc0 weights (LINEAR16, what lc0 0.32 reads) with
   :meth:`lczerolens.LczeroModel.save`, the held-out metrics, and the loss-curve figure.

Run from the repository root::

    .venv/bin/python scripts/distill_bt.py            # all stages; the committed net is this command's output
    .venv/bin/python scripts/distill_bt.py --stage data
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lczerolens import LczeroBoard, LczeroModel  # noqa: E402
from lczerolens.board import encode_boards  # noqa: E402
from lczerolens.data import read_pgn  # noqa: E402

TEACHER = ROOT / "assets/cache/maia-1900.pb.gz"
PGN_DIR = ROOT / "assets/cache/chess-data/pgn"
OUT_NET = ROOT / "assets/nets/bt-distilled.pb.gz"

#: The student's architecture (see lczerolens.testing.AttentionNetSpec).
STUDENT = dict(
    embedding="PE_MAP",
    embedding_size=64,
    encoder_layers=5,
    heads=4,
    ffn_size=128,
    ffn_activation="default",
    default_activation="mish",
    smolgen=True,
    smolgen_activation="swish",
    smolgen_channels=4,
    smolgen_hidden=64,
    smolgen_gen=16,
    input_gates=False,
    policy_embedding=64,
    policy_d_model=64,
    value_channels=8,
    wdl=True,
    mlh=False,
    encoding="LINEAR16",
)

MAX_LEGAL = 128  # padded legal-move slots (positions with more legal moves than this are dropped: none in practice)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def encode_rows(boards: list[LczeroBoard]) -> tuple[np.ndarray, np.ndarray]:
    """Bit masks ``[N, 112]`` (uint64, bit s = square s in network orientation) and rule-50 counts ``[N]``."""
    rows, r50 = [], np.empty(len(boards), dtype=np.float32)
    for i, b in enumerate(boards):
        row, r50[i], transform = b._encoding_row(1)
        assert transform == 0  # classical input: no canonical transform
        rows.append(row)
    return np.frombuffer(b"".join(rows), dtype="<u8").reshape(len(boards), 112).copy(), r50


def planes_from_rows(masks: torch.Tensor, r50: torch.Tensor) -> torch.Tensor:
    """``[N, 112, 8, 8]`` float32 planes from stored masks (what ``encode_boards`` computes)."""
    n = masks.shape[0]
    shifts = torch.arange(64, dtype=torch.int64)
    bits = (masks.unsqueeze(-1) >> shifts) & 1
    planes = bits.to(torch.float32)
    planes[:, 109] = r50[:, None]
    return planes.reshape(n, 112, 8, 8)


@torch.no_grad()
def teacher_labels(teacher: LczeroModel, boards: list[LczeroBoard], planes: torch.Tensor):
    out = teacher.network(planes)
    logits = out["policy"]
    wdl = torch.softmax(out["wdl_logits"], dim=-1)
    idx = np.full((len(boards), MAX_LEGAL), -1, dtype=np.int16)
    probs = np.zeros((len(boards), MAX_LEGAL), dtype=np.float32)
    for i, b in enumerate(boards):
        legal = b.legal_move_indices(1)
        p = torch.softmax(logits[i, legal], dim=0)
        idx[i, : len(legal)] = legal.numpy()
        probs[i, : len(legal)] = p.numpy()
    return idx, probs, wdl.numpy().astype(np.float32)


def selfplay_games(teacher: LczeroModel, games: int, seed: int, max_plies: int, batch: int):
    """Yield finished games as lists of boards (with history), maia-1900 playing both sides."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, games, batch):
        live = [LczeroBoard() for _ in range(min(batch, games - start))]
        histories: list[list[LczeroBoard]] = [[] for _ in live]
        active = list(range(len(live)))
        ply = 0
        while active and ply < max_plies:
            boards = [live[i] for i in active]
            x = encode_boards(boards)
            with torch.no_grad():
                logits = teacher.network(x)["policy"]
            # A little more randomness in the opening, for variety; the policy itself afterwards.
            temperature = 1.5 if ply < 8 else 1.0
            still = []
            for j, i in enumerate(active):
                b = live[i]
                histories[i].append(b.copy())
                legal = b.legal_move_indices(1)
                p = torch.softmax(logits[j, legal] / temperature, dim=0)
                k = int(torch.multinomial(p, 1, generator=gen))
                move = list(b.legal_moves)[k]
                b.push(move)
                if not b.is_game_over(claim_draw=True):
                    still.append(i)
            active = still
            ply += 1
        yield from histories


def build_data(work: Path, seed: int, selfplay: int, max_plies: int, heldout_share: float) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    teacher = LczeroModel.from_path(TEACHER)
    t0 = time.time()
    games: list[tuple[str, list[LczeroBoard]]] = []
    # Real games (their mainlines; chess variants are skipped by the reader).
    by_game: dict[tuple[str, int], list[LczeroBoard]] = {}
    for path in sorted(PGN_DIR.glob("*.pgn")):
        for pos in read_pgn(path):
            if pos.board.is_game_over() or pos.board.chess960:
                continue
            by_game.setdefault((pos.source, pos.game), []).append(pos.board)
    for (src, g), boards in sorted(by_game.items()):
        games.append((f"pgn:{src}:{g}", boards))
    real = len(games)
    for k, history in enumerate(selfplay_games(teacher, selfplay, seed, max_plies, batch=256)):
        games.append((f"selfplay:{seed}:{k}", [b for b in history if not b.is_game_over()]))
        if k % 500 == 0:
            print(f"  self-play game {k}/{selfplay}  {time.time() - t0:.0f}s", flush=True)
    # Split by game with a hash of its id (stable whatever the order), then dedupe: train first, and a
    # held-out position whose EPD occurs in train is dropped.
    def heldout(name: str) -> bool:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
        return h / 2**64 < heldout_share

    seen: set[str] = set()
    split: dict[str, list[tuple[int, LczeroBoard]]] = {"train": [], "heldout": []}
    for part in ("train", "heldout"):
        for gi, (name, boards) in enumerate(games):
            if heldout(name) != (part == "heldout"):
                continue
            for b in boards:
                key = b.epd()
                if key in seen:
                    continue
                seen.add(key)
                split[part].append((gi, b))
    work.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part, items in split.items():
        masks_all, r50_all, idx_all, probs_all, wdl_all, game_all = [], [], [], [], [], []
        for s in range(0, len(items), 512):
            chunk = items[s : s + 512]
            boards = [b for _, b in chunk]
            masks, r50 = encode_rows(boards)
            planes = planes_from_rows(torch.from_numpy(masks.view(np.int64)), torch.from_numpy(r50))
            idx, probs, wdl = teacher_labels(teacher, boards, planes)
            masks_all.append(masks)
            r50_all.append(r50)
            idx_all.append(idx)
            probs_all.append(probs)
            wdl_all.append(wdl)
            game_all.append(np.array([g for g, _ in chunk], dtype=np.int32))
        np.savez(
            work / f"{part}.npz",
            masks=np.concatenate(masks_all),
            r50=np.concatenate(r50_all),
            idx=np.concatenate(idx_all),
            probs=np.concatenate(probs_all),
            wdl=np.concatenate(wdl_all),
            game=np.concatenate(game_all),
        )
        counts[part] = {"positions": len(items), "games": len({g for g, _ in items})}
    info = {
        "seed": seed,
        "selfplay_games": selfplay,
        "real_games": real,
        "max_plies": max_plies,
        "heldout_share": heldout_share,
        "counts": counts,
        "seconds": round(time.time() - t0, 1),
    }
    (work / "data.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Student and training
# ---------------------------------------------------------------------------------------------------------------
def make_student(seed: int) -> LczeroModel:
    from lczerolens.model.native import load_pb
    from lczerolens.testing import AttentionNetSpec, make_attention_net

    net = make_attention_net(AttentionNetSpec(seed=seed, **STUDENT))
    network = load_pb(net.serialize())
    for p in network.parameters():
        p.requires_grad_(True)
    return LczeroModel(network, source="bt-distilled (training)")


class Split:
    def __init__(self, path: Path, device: torch.device) -> None:
        d = np.load(path)
        self.masks = torch.from_numpy(d["masks"].view(np.int64)).to(device)
        self.r50 = torch.from_numpy(d["r50"]).to(device)
        self.idx = torch.from_numpy(d["idx"].astype(np.int64)).to(device)
        self.probs = torch.from_numpy(d["probs"]).to(device)
        self.wdl = torch.from_numpy(d["wdl"]).to(device)
        self.n = self.masks.shape[0]

    def batch(self, rows: torch.Tensor):
        planes = planes_from_rows(self.masks[rows], self.r50[rows])
        return planes, self.idx[rows], self.probs[rows], self.wdl[rows]


def losses(network, planes, idx, probs, wdl):
    out = network(planes)
    valid = idx >= 0
    logits = out["policy"].gather(1, idx.clamp(min=0))
    logits = logits.masked_fill(~valid, float("-inf"))
    logq = torch.log_softmax(logits, dim=1)
    logp = torch.where(valid, probs.clamp_min(1e-12).log(), torch.zeros_like(probs))
    kl = (torch.where(valid, probs * (logp - logq), torch.zeros_like(probs))).sum(1).mean()
    ce = -(wdl * torch.log_softmax(out["wdl_logits"], dim=1)).sum(1).mean()
    return kl, ce, logq, out


@torch.no_grad()
def evaluate(network, data: Split, batch: int = 1024) -> dict[str, float]:
    network.eval()
    kl_sum = ce_sum = agree = 0.0
    sv, tv = [], []
    for s in range(0, data.n, batch):
        rows = torch.arange(s, min(s + batch, data.n), device=data.masks.device)
        planes, idx, probs, wdl = data.batch(rows)
        kl, ce, logq, out = losses(network, planes, idx, probs, wdl)
        kl_sum += float(kl) * len(rows)
        ce_sum += float(ce) * len(rows)
        agree += float((logq.argmax(1) == probs.argmax(1)).sum())
        w = torch.softmax(out["wdl_logits"], 1)
        sv.append(w[:, 0] - w[:, 2])
        tv.append(wdl[:, 0] - wdl[:, 2])
    s_v, t_v = torch.cat(sv).double(), torch.cat(tv).double()
    corr = float(torch.corrcoef(torch.stack([s_v, t_v]))[0, 1])
    return {"kl": kl_sum / data.n, "wdl_ce": ce_sum / data.n, "top1": agree / data.n, "value_corr": corr}


def train(work: Path, seed: int, steps: int, batch: int, lr: float, device: str, eval_every: int) -> None:
    dev = torch.device(device)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    train_set = Split(work / "train.npz", dev)
    held = Split(work / "heldout.npz", dev)
    # A fixed slice of held-out positions for the periodic log (the full set is measured at export).
    probe = Split.__new__(Split)
    k = min(held.n, 4096)
    for name in ("masks", "r50", "idx", "probs", "wdl"):
        setattr(probe, name, getattr(held, name)[:k])
    probe.n = k
    model = make_student(seed)
    network = model.network.to(dev)
    decay, no_decay = [], []
    for name, p in network.named_parameters():
        (no_decay if p.ndim < 2 or "ln" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))  # fmt: skip
    warmup = max(1, steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    ckpt = work / "checkpoint.pt"
    log_path = work / "log.csv"
    step = 0
    gen = torch.Generator().manual_seed(seed + 1)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        gen.set_state(state["generator"])
        print(f"resumed at step {step}", flush=True)
    else:
        log_path.write_text("step,seconds,lr,train_kl,train_wdl_ce,heldout_kl,heldout_wdl_ce,heldout_top1,heldout_value_corr\n")
    t0 = time.time() - (float(torch.load(ckpt, weights_only=True)["seconds"]) if ckpt.exists() else 0.0)
    run_kl = run_ce = 0.0
    run_n = 0
    last_save = time.time()
    while step < steps:
        network.train()
        rows = torch.randint(0, train_set.n, (batch,), generator=gen).to(dev)
        planes, idx, probs, wdl = train_set.batch(rows)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        kl, ce, _, _ = losses(network, planes, idx, probs, wdl)
        loss = kl + ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        opt.step()
        step += 1
        run_kl += kl.item()
        run_ce += ce.item()
        run_n += 1
        if step % eval_every == 0 or step == steps:
            m = evaluate(network, probe)
            row = [step, round(time.time() - t0, 1), f"{lr_at(step - 1):.2e}", run_kl / run_n, run_ce / run_n,
                   m["kl"], m["wdl_ce"], m["top1"], m["value_corr"]]  # fmt: skip
            with log_path.open("a", newline="") as f:
                csv.writer(f).writerow(row)
            print(" ".join(str(round(v, 4)) if isinstance(v, float) else str(v) for v in row), flush=True)
            run_kl = run_ce = 0.0
            run_n = 0
        if time.time() - last_save > 120 or step == steps:
            state = {"network": network.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "generator": gen.get_state(), "seconds": time.time() - t0}  # fmt: skip
            torch.save(state, work / "checkpoint.tmp")
            (work / "checkpoint.tmp").replace(ckpt)
            last_save = time.time()


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------
def export(work: Path, seed: int) -> None:
    state = torch.load(work / "checkpoint.pt", weights_only=True)
    model = make_student(seed)
    model.network.load_state_dict(state["network"])
    OUT_NET.parent.mkdir(parents=True, exist_ok=True)
    model.save(OUT_NET, encoding="LINEAR16")
    # Measure what was written (LINEAR16 rounding included), on every held-out position.
    saved = LczeroModel.from_path(OUT_NET)
    held = Split(work / "heldout.npz", torch.device("cpu"))
    metrics = evaluate(saved.network, held)
    metrics["steps"] = int(state["step"])
    metrics["train_seconds"] = round(float(state["seconds"]), 1)
    metrics["bytes"] = OUT_NET.stat().st_size
    metrics["parameters"] = sum(p.numel() for p in saved.parameters())
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2), flush=True)
    plot_curves(work / "log.csv", ROOT / "assets/nets/bt-distilled-curves.svg")


def plot_curves(log: Path, out: Path) -> None:
    """The loss curves as a small hand-made SVG (no plotting dependency)."""
    rows = list(csv.DictReader(log.open()))
    steps = [int(r["step"]) for r in rows]
    series = {
        "train KL": ([float(r["train_kl"]) for r in rows], "#1f77b4"),
        "held-out KL": ([float(r["heldout_kl"]) for r in rows], "#d62728"),
        "train WDL CE": ([float(r["train_wdl_ce"]) for r in rows], "#2ca02c"),
        "held-out WDL CE": ([float(r["heldout_wdl_ce"]) for r in rows], "#ff7f0e"),
    }
    w, h, pad = 560, 320, 50
    ymax = max(max(v) for v, _ in series.values()) * 1.05
    xmax = max(steps)

    def px(s: int, y: float) -> str:
        return f"{pad + (w - 2 * pad) * s / xmax:.1f},{h - pad - (h - 2 * pad) * y / ymax:.1f}"

    svg = 'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11"'
    parts = [f'<svg {svg} width="{w}" height="{h}">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">training step</text>',
             f'<text x="{pad}" y="{pad - 10}">loss (nats)</text>']  # fmt: skip
    for i in range(5):
        y = ymax * i / 4
        yy = h - pad - (h - 2 * pad) * i / 4 + 4
        parts.append(f'<text x="{pad - 6}" y="{yy:.1f}" text-anchor="end">{y:.2f}</text>')
    for i in range(5):
        s = int(xmax * i / 4)
        parts.append(f'<text x="{pad + (w - 2 * pad) * i / 4:.1f}" y="{h - pad + 14}" text-anchor="middle">{s}</text>')
    for k, (name, (values, color)) in enumerate(series.items()):
        pts = " ".join(px(s, v) for s, v in zip(steps, values, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<text x="{w - pad - 110}" y="{pad + 14 * k}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("all", "data", "train", "export"), default="all")
    ap.add_argument("--work", type=Path, default=ROOT / "assets/cache/distill")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--selfplay-games", type=int, default=1500)
    ap.add_argument("--max-plies", type=int, default=160)
    ap.add_argument("--heldout-share", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.stage in ("all", "data") and not (args.work / "data.json").exists():
        build_data(args.work, args.seed, args.selfplay_games, args.max_plies, args.heldout_share)
    if args.stage in ("all", "train"):
        train(args.work, args.seed, args.steps, args.batch, args.lr, args.device, args.eval_every)
    if args.stage in ("all", "export"):
        export(args.work, args.seed)


if __name__ == "__main__":
    main()
