"""How fast the explorer answers: session calls, the browser round trip, and ``lczerolens report``.

    python -m benchmarks.bench_explorer [--quick] [--threads T] [--no-browser]

On maia-1900 (``assets/cache/maia-1900.pb.gz``) and the first game of ``kasparov-deep-blue-1997.pgn``:

- **session**: wall seconds of :meth:`ExplorerSession.view` for the first view (a cold lens), for stepping to the
  next ply with prefetching (``pause`` seconds between steps, as a person reading the board) and without it,
  for switching the target (top -> value) and the lens (each lens's first use, then again), and for the layer
  view (first open of ``block3/conv2/relu``, then a channel switch);
- **browser**: the same steps through ``lczerolens serve``'s page in headless Chromium, from the key press to the
  redrawn board (``performance.now()`` in the page), when selenium and chromium are installed;
- **report**: ``write_report`` for the game's first 60 plies with targets top and value (seconds, MB), and the
  same as a cold ``lczerolens report`` process;
- **attention**: the attention view on ``assets/nets/bt-distilled.pb.gz``.

The target of issue 20: a redraw within 1 s on 2 CPU cores, a 60-ply report in at most 30 s and 2 MB. A machine
shared with other jobs slows everything (the load average is printed with the figures).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MAIA = ROOT / "assets" / "cache" / "maia-1900.pb.gz"
PGN = ROOT / "assets" / "cache" / "chess-data" / "pgn" / "kasparov-deep-blue-1997.pgn"
REPORT_PGN = ROOT / "assets" / "cache" / "chess-data" / "pgn" / "nepomniachtchi-liren-game1.pgn"
ATTENTION_NET = ROOT / "assets" / "nets" / "bt-distilled.pb.gz"


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.3f} s, max {max(times):.3f} s ({len(times)} steps)"


def _first_plies(path: Path, plies: int) -> str:
    """The PGN text of the first game of ``path`` cut after ``plies`` plies."""
    import chess.pgn

    with path.open(encoding="utf-8") as handle:
        game = chess.pgn.read_game(handle)
    assert game is not None
    node = game
    for _ in range(plies):
        if not node.variations:
            break
        node = node.variation(0)
    node.variations = []
    out = io.StringIO()
    print(game, file=out)
    return out.getvalue()


def session_figures(model: Any, steps: int, pause: float) -> dict[str, Any]:
    from lczerolens.explorer import ExplorerSession

    out: dict[str, Any] = {}
    session = ExplorerSession(model, PGN)
    out["meta (evaluations of all plies), s"] = _timed(session.meta)
    out["first view (lrp, top; builds the lens), s"] = _timed(lambda: session.view(0))
    session.wait_prefetch()
    stepped = []
    for i in range(1, steps + 1):
        time.sleep(pause)
        stepped.append(_timed(lambda i=i: session.view(i)))
    out[f"next ply, prefetch, {pause} s between steps"] = _summary(stepped)
    rapid = []
    for i in range(steps + 1, 2 * steps + 1):
        rapid.append(_timed(lambda i=i: session.view(i)))
    out["next ply, prefetch, no pause (held keys)"] = _summary(rapid)
    session.close()

    plain = ExplorerSession(model, PGN, prefetch=False)
    plain.view(0)
    cold = [_timed(lambda i=i: plain.view(i)) for i in range(1, steps + 1)]
    out["next ply, no prefetch (computed when asked)"] = _summary(cold)
    switch = [_timed(lambda i=i: plain.view(i, (), "value")) for i in range(1, steps + 1)]
    out["target top -> value, no prefetch"] = _summary(switch)
    session = ExplorerSession(model, PGN)
    session.view(5)
    time.sleep(pause)
    session.wait_prefetch()
    out["target top -> value, prefetched"] = f"{_timed(lambda: session.view(5, (), 'value')):.3f} s"
    for lens in session.lens_names():
        first = _timed(lambda lens=lens: session.view(6, (), "top", lens))
        again = _timed(lambda lens=lens: session.view(7, (), "top", lens))
        out[f"lens {lens}: first use / next ply, s"] = f"{first:.3f} / {again:.3f}"
    session.wait_prefetch()
    layer = "block3/conv2/relu"
    out[f"layer view {layer}: open, s"] = _timed(lambda: session.view(8, (), "top", "lrp", layer=layer))
    time.sleep(pause)
    out["layer view: next ply, prefetched (after a pause), s"] = _timed(
        lambda: session.view(9, (), "top", "lrp", layer=layer)
    )
    view = session.view(9, (), "top", "lrp", layer=layer)
    second = view["layer"]["channels"][1]["channel"]
    out["layer view: another channel's CRP, s"] = _timed(
        lambda: session.view(9, (), "top", "lrp", layer=layer, channel=second)
    )
    session.close()
    out["layer view: next ply, no prefetch, s"] = _timed(lambda: plain.view(9, (), "top", "lrp", layer=layer))
    return out


def browser_figures(model: Any, steps: int, pause: float) -> dict[str, Any]:
    """Key press to redrawn board in headless Chromium on ``lczerolens serve``'s page."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return {"browser": "not measured: selenium is not installed"}
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if browser is None or not os.path.exists(driver_path):
        return {"browser": "not measured: no chromium/chromedriver"}
    from lczerolens.explorer import ExplorerSession, make_server

    session = ExplorerSession(model, PGN)
    server = make_server(session, port=0)
    server.start()
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_script_timeout(120)
    # One press of a key or a change of a select, then wait for the page to show the answer: data-ply set to the
    # awaited ply and no request in flight. Returns milliseconds measured by the page itself.
    script = """
const [kind, arg, ply, done] = [arguments[0], arguments[1], arguments[2], arguments[arguments.length - 1]];
const root = document.querySelector('[data-lczerolens-explorer]');
const t0 = performance.now();
const check = () => {
  if (root.getAttribute('data-ply') === String(ply) && !root.hasAttribute('data-busy')) done(performance.now() - t0);
  else requestAnimationFrame(check);
};
if (kind === 'key') document.dispatchEvent(new KeyboardEvent('keydown', {key: arg, bubbles: true}));
else { const s = document.querySelector(`select[name=${kind}]`); s.value = arg; s.dispatchEvent(new Event('change')); }
requestAnimationFrame(check);
"""
    out: dict[str, Any] = {}
    try:
        driver.get(server.url)
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const t = () => {"
            " const r = document.querySelector('[data-lczerolens-explorer]');"
            " if (r && r.getAttribute('data-fen') && !r.hasAttribute('data-busy')) done();"
            " else setTimeout(t, 20); }; t();"
        )
        keys = []
        for ply in range(1, steps + 1):
            time.sleep(pause)
            keys.append(driver.execute_async_script(script, "key", "ArrowRight", ply) / 1000)
        out[f"ArrowRight to redrawn board, {pause} s between presses"] = _summary(keys)
        held = [
            driver.execute_async_script(script, "key", "ArrowRight", ply) / 1000
            for ply in range(steps + 1, 2 * steps + 1)
        ]
        out["ArrowRight to redrawn board, no pause"] = _summary(held)
        time.sleep(pause)
        ply = 2 * steps
        out["target -> value, s"] = driver.execute_async_script(script, "target", "value", ply) / 1000
        out["lens -> gradient (first use), s"] = driver.execute_async_script(script, "lens", "gradient", ply) / 1000
        out["lens -> lrp, s"] = driver.execute_async_script(script, "lens", "lrp", ply) / 1000
        out["layer -> block3/conv2/relu, s"] = (
            driver.execute_async_script(script, "layer", "block3/conv2/relu", ply) / 1000
        )
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
        session.close()
    return out


def report_figures(model: Any, plies: int = 60) -> dict[str, Any]:
    from lczerolens.explorer import write_report

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pgn = Path(tmp) / "game.pgn"
        pgn.write_text(_first_plies(REPORT_PGN, plies), encoding="utf-8")
        html = Path(tmp) / "game.html"
        seconds = _timed(lambda: write_report(model, pgn, html, targets=["top", "value"]))
        out[f"write_report, {plies} plies, top and value: s"] = seconds
        out["size, MB"] = html.stat().st_size / 1e6
        t0 = time.perf_counter()
        command = [sys.executable, "-m", "lczerolens", "report", str(MAIA), str(pgn), "--out", str(html)]
        command += ["--target", "top", "--target", "value", "--threads", str(torch.get_num_threads())]
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        out[f"lczerolens report --threads {torch.get_num_threads()} (cold process, loads the net): s"] = (
            time.perf_counter() - t0
        )
        out["within 30 s and 2 MB"] = "yes" if seconds <= 30 and html.stat().st_size <= 2e6 else "NO"
    return out


def attention_figures() -> dict[str, Any]:
    from lczerolens import LczeroModel
    from lczerolens.explorer import ExplorerSession

    if not ATTENTION_NET.exists():
        return {"attention": f"not measured: {ATTENTION_NET} is missing"}
    model = LczeroModel.from_path(ATTENTION_NET)
    session = ExplorerSession(model, PGN, prefetch=False)
    session.view(0)
    first = _timed(lambda: session.view(1, (), "top", "lrp", attention="encoder2"))
    query = _timed(lambda: session.view(1, (), "top", "lrp", attention="encoder2", query="e4"))
    layer = _timed(lambda: session.view(1, (), "top", "lrp", attention="encoder2", layer="encoder2/ln2"))
    return {
        "bt-distilled: attention view, first at a ply, s": first,
        "bt-distilled: another query square, s": query,
        "bt-distilled: layer view encoder2/ln2, s": layer,
    }


def run(quick: bool = False, threads: int | None = None, browser: bool = True) -> dict[str, Any]:
    from lczerolens import LczeroModel

    if threads:
        torch.set_num_threads(threads)
    steps, pause = (4, 0.3) if quick else (12, 0.5)
    model = LczeroModel.from_path(MAIA)
    result: dict[str, Any] = {
        "torch threads": torch.get_num_threads(),
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    result["session (maia-1900)"] = session_figures(model, steps, pause)
    if browser:
        result["browser (serve, headless Chromium)"] = browser_figures(model, steps, pause)
    result["report"] = report_figures(model)
    result["attention net"] = attention_figures()
    result["load average at end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return result


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import dict_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    print(dict_table(run(quick=args.quick, threads=args.threads, browser=not args.no_browser)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
