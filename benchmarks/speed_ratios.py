"""Speed ratios of issue 23 for maia-1900, in one process: median over 3 runs of interleaved medians (CPU time).

    T=1 PYTHONPATH=. python benchmarks/speed_ratios.py     # T: torch and onnxruntime threads (default 1)

Prints, per batch size (64, 1) and per clock (CPU time of all threads, wall time), the medians of forward,
onnxruntime forward (lc0's export), gradient x input, ``LrpLens()`` and ``LrpLens(**EPSILON)`` relevance for
``target="value"``, and their ratios, each ratio taken within one run. ``docs/speed.md`` has the figures.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import torch

from benchmarks.bench_relevance import _gradient_x_input, interleaved_times, random_boards

CACHE = Path(__file__).resolve().parents[1] / "assets" / "cache"


def main() -> None:
    import onnxruntime as ort

    from lczerolens.board import encode_boards
    from lczerolens.lenses import EPSILON, LrpLens
    from lczerolens.model.native import load_pb

    threads = int(os.environ.get("T", "1"))
    torch.set_num_threads(threads)
    net = load_pb(CACHE / "maia-1900.pb.gz").eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # onnxruntime's idle threads spin after each run and take the cores from whatever runs next (with 2 threads
    # that doubled the time of the torch call after it); without spinning its own forward was no slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(CACHE / "maia-1900.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    lens, eps = LrpLens(), LrpLens(**EPSILON)
    for batch in (64, 1):
        boards = random_boards(batch, seed=batch)
        planes = encode_boards(boards, net.input_format)
        feed = {name: planes.numpy()}

        def forward(planes: torch.Tensor = planes) -> object:
            with torch.inference_mode():
                return net(planes)

        fns = {
            "forward": forward,
            "ort": lambda feed=feed: session.run(None, feed),
            "gxi": lambda planes=planes: _gradient_x_input(net, planes),
            "default": lambda boards=boards: lens.relevance(net, boards, "value"),
            "eps": lambda boards=boards: eps.relevance(net, boards, "value"),
        }
        rows: dict[str, list[dict[str, float]]] = {"cpu ms": [], "wall ms": []}
        for _ in range(3):
            times = interleaved_times(fns, 7 if batch == 64 else 21)
            for clock, runs in rows.items():
                t = {k: v[clock] for k, v in times.items()}
                runs.append(dict(t, **{
                    "default/fwd": t["default"] / t["forward"], "eps/fwd": t["eps"] / t["forward"],
                    "default/gxi": t["default"] / t["gxi"], "default/ort": t["default"] / t["ort"],
                    "fwd/ort": t["forward"] / t["ort"],
                }))
        for clock, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"threads {threads} batch {batch} {clock.split()[0]}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)


if __name__ == "__main__":
    main()
