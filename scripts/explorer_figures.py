"""Screenshots of the explorer for the docs: ``lczerolens serve``'s page in headless Chromium.

    PYTHONPATH=. python scripts/explorer_figures.py [--out docs/figures]

Writes ``explorer.png`` (maia-1900 on Kasparov - Deep Blue 1997, game 1, LRP of the top move), ``explorer-layer.png``
(the same with the layer view of ``block3/conv2/relu``) and ``explorer-attention.png`` (the attention view of
``assets/nets/bt-distilled.pb.gz``), each cropped to the explorer and reduced to a 256-colour palette (small files).
Needs selenium, chromium and chromedriver (as the browser tests do).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PGN = ROOT / "assets" / "cache" / "chess-data" / "pgn" / "kasparov-deep-blue-1997.pgn"


def _wait(driver: Any, ply: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: Any) -> bool:
        return bool(
            d.execute_script(
                "const r = document.querySelector('[data-lczerolens-explorer]');"
                "return r && r.getAttribute('data-ply') === arguments[0] && !r.hasAttribute('data-busy');",
                str(ply),
            )
        )

    WebDriverWait(driver, 300).until(ready)


def _select(driver: Any, name: str, value: str, ply: int) -> None:
    driver.execute_script(
        "const s = document.querySelector(`select[name=${arguments[0]}]`); s.value = arguments[1];"
        "s.dispatchEvent(new Event('change'));",
        name,
        value,
    )
    _wait(driver, ply)


def _save(driver: Any, path: Path) -> None:
    from PIL import Image

    png = driver.get_screenshot_as_png()
    box = driver.execute_script(
        "const r = document.querySelector('[data-lczerolens-explorer]').getBoundingClientRect();"
        "return [r.left, r.top, r.right, r.bottom, window.devicePixelRatio];"
    )
    image = Image.open(io.BytesIO(png)).convert("RGB")
    scale = box[4]
    left, top = max(int((box[0] - 8) * scale), 0), max(int((box[1] - 8) * scale), 0)
    right, bottom = min(int((box[2] + 8) * scale), image.width), min(int((box[3] + 8) * scale), image.height)
    image = image.crop((left, top, right, bottom)).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
    image.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")


def main(argv: list[str] | None = None) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from lczerolens import LczeroModel
    from lczerolens.explorer import ExplorerSession, make_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1000,1000")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        for net, shots in (
            (ROOT / "assets" / "cache" / "maia-1900.pb.gz", "maia"),
            (ROOT / "assets" / "nets" / "bt-distilled.pb.gz", "attention"),
        ):
            session = ExplorerSession(LczeroModel.from_path(net), PGN)
            server = make_server(session, port=0)
            server.start()
            try:
                driver.get(server.url)
                _wait(driver, 0)
                ply = 16
                driver.execute_script("document.querySelectorAll('.lzx-move')[arguments[0] - 1].click();", ply)
                _wait(driver, ply)
                if shots == "maia":
                    _save(driver, args.out / "explorer.png")
                    _select(driver, "layer", "block3/conv2/relu", ply)
                    _save(driver, args.out / "explorer-layer.png")
                else:
                    _select(driver, "attention", "encoder2", ply)
                    _select(driver, "query", "e5", ply)
                    _save(driver, args.out / "explorer-attention.png")
            finally:
                server.shutdown()
                server.server_close()
                session.close()
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
