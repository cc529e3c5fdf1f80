"""Every lens on a CUDA device against the same lens on the CPU, and what they cost there.

    PYTHONPATH=. python benchmarks/cuda_check.py --device cuda [--out DIR]

Nothing in the test suite needs a GPU; this script is the check that the package also runs on one. For maia-1900
(lc0's weights) and the distilled attention-body net (``assets/nets``) it runs each lens on 64 positions on the
CPU and on ``--device``, and prints the largest difference of the two, relative to the largest magnitude of the
CPU result (``rel``). It runs each comparison twice on CUDA: with PyTorch's default settings, under which cuDNN
runs float32 convolutions in TF32 (10-bit mantissa), and with TF32 off. Then it times forward and ``LrpLens()``
relevance at several batch sizes (median of 10 after 3 warm-ups, the device synchronised). With ``--device cpu``
it runs the same comparisons CPU against CPU, as a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "assets" / "cache"


def _rel(a: Any, b: Any) -> float:
    """max |a - b| / max |a| over every tensor in two results of the same shape (TensorDicts, Relevance, tensors)."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb):
        raise AssertionError(f"results differ in structure: {len(ta)} against {len(tb)} tensors")
    worst = 0.0
    for x, y in zip(ta, tb, strict=True):
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        if x.shape != y.shape:
            raise AssertionError(f"shapes differ: {tuple(x.shape)} against {tuple(y.shape)}")
        scale = float(x.abs().max()) if x.numel() else 0.0
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        if not torch.isfinite(y).all() and torch.isfinite(x).all():
            return float("inf")
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "squares") and hasattr(value, "planes"):  # Relevance
        out = [value.squares]
        if value.planes is not None:
            out.append(value.planes)
        return out
    if hasattr(value, "keys") and hasattr(value, "get"):  # TensorDict or dict
        out = []
        for key in sorted(value.keys(), key=str):
            out.extend(_tensors(value.get(key)))
        return out
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    raise TypeError(f"cannot compare a {type(value).__name__}")


def _time(fn: Callable[[], Any], device: torch.device, rounds: int = 10) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _checks(path: Path, boards: list, family: str) -> dict[str, Callable[[Any], Any]]:
    """name -> function(model) giving a result to compare across devices."""
    from lczerolens import lenses
    from lczerolens.features import feature_maps, feature_relevance, load_sae, sae_metrics, train_sae

    checks: dict[str, Callable[[Any], Any]] = {
        "forward": lambda m: m(boards),
        "LrpLens() top move": lambda m: lenses.LrpLens().relevance(m, boards),
        "LrpLens() value": lambda m: lenses.LrpLens().relevance(m, boards, "value"),
        "EPSILON value": lambda m: lenses.LrpLens(**lenses.EPSILON).relevance(m, boards, "value"),
        "conserving top move": lambda m: (
            lenses.LrpLens(**lenses.RESIDUAL_CONSERVING).relevance(m, boards[:16])
            if family == "residual"
            else lenses.LrpLens(softmax="cp").relevance(m, boards[:16])
        ),
        "gradient x input": lambda m: lenses.GradientLens("gradient_x_input").relevance(m, boards, "value"),
        "integrated gradients": lambda m: lenses.GradientLens("integrated_gradients", steps=8).relevance(
            m, boards[:16], "value"
        ),
        "occlusion": lambda m: lenses.OcclusionLens().relevance(m, boards[:16]),
        "logit lens": lambda m: lenses.LogitLens().outputs(m, boards[:16]),
    }
    if family == "residual":
        layer = "block3/conv2/relu"
        checks["latent relevance"] = lambda m: lenses.LrpLens().relevance(m, boards[:16], record=(layer,)).layers[layer]
        checks["activations"] = lambda m: lenses.ActivationLens(modules=("block*/conv2/relu",)).activations(m, boards)
        checks["ablation"] = lambda m: lenses.AblationLens(("block3/conv2/relu",)).effects(m, boards[:8], "value")
        checks["patching"] = lambda m: lenses.PatchingLens(modules=("block2/conv2/relu",)).patch(
            m, boards[:8], boards[8:16], "value"
        )
        sae = load_sae(ROOT / "assets" / "saes" / "maia-1900-block3")
        checks["SAE features (CPU SAE)"] = lambda m: feature_relevance(m, boards[:8], sae, layer, [0, 1, 2, "error"])
        checks["SAE features (SAE on the model's device)"] = lambda m: feature_relevance(
            m, boards[:8], _sae_like(sae, m), layer, [0, 1, 2, "error"]
        )
        checks["SAE metrics"] = lambda m: torch.tensor(
            [v for k, v in sorted(sae_metrics(m, _sae_like(sae, m), layer, boards).items())]
        )
        checks["SAE feature maps"] = lambda m: feature_maps(m, sae, layer, boards[:16])
        checks["train_sae (20 steps)"] = lambda m: train_sae(
            m, boards, layer, features=128, k=8, steps=20, batch_size=256, buffer_tokens=2048, progress=False
        ).W_dec.detach()
    else:
        checks["attention weights"] = lambda m: lenses.AttentionLens().attention(m, boards[:16])
    return checks


def _sae_like(sae: Any, model: Any) -> Any:
    """A copy of ``sae`` on ``model``'s device (the user's SAE is left where it is)."""
    import copy

    device = next(model.parameters()).device
    return sae if sae.W_dec.device == device else copy.deepcopy(sae).to(device)


def _explain_dataset(model: Any, games: Path, out: Path) -> Any:
    from lczerolens.run import explain_dataset, load_results

    explain_dataset(model, games, out, targets=("top", "value"), batch_size=32, progress=False)
    table = load_results(out)
    return torch.tensor(table.column("relevance").to_pylist())


def main(argv: list[str] | None = None) -> None:
    from lczerolens import LczeroBoard, LczeroModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    parser.add_argument("--positions", type=int, default=64, help="positions per comparison (at least 16)")
    parser.add_argument("--no-timing", action="store_true", help="compare only")
    args = parser.parse_args(argv)
    if args.positions < 16:
        parser.error("--positions must be at least 16")
    device = torch.device(args.device)
    lines = (CACHE / "positions-maia-1900-seed2.txt").read_text().splitlines()
    boards = [LczeroBoard(line) for line in lines if line and not line.startswith("#")][: args.positions]
    nets = {
        "maia-1900": (CACHE / "maia-1900.pb.gz", "residual"),
        "bt-distilled": (ROOT / "assets" / "nets" / "bt-distilled.pb.gz", "attention"),
    }
    results: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "compare": [], "timing": []}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__} on {results.get('gpu', device)}", flush=True)
    games = CACHE / "chess-data" / "pgn" / "kasparov-deep-blue-1997.pgn"
    for name, (path, family) in nets.items():
        cpu = LczeroModel.from_path(path)
        dev = LczeroModel.from_path(path, device=device)
        for check, fn in {**_checks(path, boards, family), "explain_dataset": None}.items():
            with tempfile.TemporaryDirectory() as tmp:
                if fn is None:
                    reference = _explain_dataset(cpu, games, Path(tmp) / "cpu")
                else:
                    reference = fn(cpu)
                row: dict[str, Any] = {"net": name, "check": check}
                for tf32 in (True, False) if device.type == "cuda" else (False,):
                    torch.backends.cudnn.allow_tf32 = tf32
                    torch.backends.cuda.matmul.allow_tf32 = False
                    try:
                        if fn is None:
                            value = _explain_dataset(dev, games, Path(tmp) / f"dev-{tf32}")
                        else:
                            value = fn(dev)
                        row["tf32" if tf32 else "fp32"] = _rel(reference, value)
                    except Exception as exc:  # a failure on the device is the finding; keep going
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                torch.backends.cudnn.allow_tf32 = True
            results["compare"].append(row)
            print(json.dumps(row), flush=True)
        # Which of the two float32 results is nearer the float64 one (the same lens on a float64 copy on the CPU).
        exact = LczeroModel.from_path(path, dtype=torch.float64)
        for check in ("forward", "gradient x input", "EPSILON value", "LrpLens() top move"):
            fn = _checks(path, boards, family)[check]
            reference = fn(exact)
            row = {"net": name, "check": check, "cpu vs float64": _rel(reference, fn(cpu))}
            row["device vs float64"] = _rel(reference, fn(dev))
            results["compare"].append(row)
            print(json.dumps(row), flush=True)
        for batch in () if args.no_timing else (1, 64, 256, 1024) if device.type == "cuda" else (1, 64):
            many = (boards * (batch // len(boards) + 1))[:batch]
            from lczerolens.board import encode_boards
            from lczerolens.lenses import LrpLens

            planes = encode_boards(many, dev.input_format).to(device)
            lens = LrpLens()

            def forward(dev: Any = dev, planes: torch.Tensor = planes) -> Any:
                with torch.inference_mode():
                    return dev(planes)

            def value(dev: Any = dev, many: list = many, lens: Any = lens) -> Any:
                return lens.relevance(dev, many, "value")

            def top(dev: Any = dev, many: list = many, lens: Any = lens) -> Any:
                return lens.relevance(dev, many)

            from lczerolens.lenses.base import TopLegalMoves, legal_indices

            policy = forward()["policy"]

            def top_legal(many: list = many, fmt: Any = dev.input_format, policy: torch.Tensor = policy) -> Any:
                return TopLegalMoves(many, fmt).choose(policy)

            row = {
                "net": name,
                "batch": batch,
                "encode ms (CPU)": round(
                    _time(lambda many=many, fmt=dev.input_format: encode_boards(many, fmt), device), 3
                ),
                "legal moves ms (CPU)": round(
                    _time(lambda many=many, fmt=dev.input_format: legal_indices(many, fmt), device), 3
                ),
                "top legal move ms (CPU)": round(_time(top_legal, device), 3),
                "forward ms": round(_time(forward, device), 3),
                "LrpLens() value ms": round(_time(value, device), 3),
                "LrpLens() top move ms": round(_time(top, device), 3),
            }
            row["value / forward"] = round(row["LrpLens() value ms"] / row["forward ms"], 2)
            results["timing"].append(row)
            print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cuda_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
