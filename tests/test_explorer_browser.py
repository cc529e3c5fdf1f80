"""The explorer in a real browser: headless Chromium driven by selenium, on the served page and the report.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium`` (``make test`` installs them when
it runs as root); otherwise every test here is skipped with one line saying what is missing. Screenshots go to
``$LCZEROLENS_SCREENSHOTS`` if set, else to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chess
import numpy as np
import pytest

from lczerolens import LczeroBoard, LczeroModel
from lczerolens.explorer import ExplorerSession
from lczerolens.lenses import LrpLens, OcclusionLens

GAME = """[Event "browser test"]
[White "A"]
[Black "B"]

1. d4 Nf6 2. c4 e6 3. Nc3 Bb4 *
"""


def _browser_paths() -> tuple[str, str] | str:
    # On by default (12 s on an idle 2-core machine, and inside the whole suite with -n 2);
    # LCZEROLENS_BROWSER_TESTS=0 skips them.
    if os.environ.get("LCZEROLENS_BROWSER_TESTS") == "0":
        return "browser tests switched off (LCZEROLENS_BROWSER_TESTS=0)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None
    )
    if browser is None or driver is None:
        return "no chromium/chromedriver (apt-get install chromium chromium-driver; make test does it as root)"
    return browser, driver


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    found = _browser_paths()
    if isinstance(found, str):
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,720"):
        options.add_argument(arg)
    drv = webdriver.Chrome(options=options, service=Service(found[1]))
    # Bounded waits: a page or script that never answers fails the test instead of hanging the suite.
    drv.set_page_load_timeout(120)
    drv.set_script_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("LCZEROLENS_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def model(maia_pb_path: Path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture(scope="module")
def session(model: LczeroModel) -> ExplorerSession:
    return ExplorerSession(model, GAME)


@pytest.fixture(scope="module")
def server(session: ExplorerSession) -> Iterator[Any]:
    from lczerolens.explorer import make_server

    srv = make_server(session, port=0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _wait(drv: Any, ply: int | None = None, timeout: float = 120) -> Any:
    """Wait until the page shows ``ply`` (any, if None) with no request in flight; return the root element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: Any) -> Any:
        roots = d.find_elements(By.CSS_SELECTOR, "[data-lczerolens-explorer]")
        if not roots or roots[0].get_attribute("data-busy") is not None or not roots[0].get_attribute("data-fen"):
            return False
        if ply is not None and roots[0].get_attribute("data-ply") != str(ply):
            return False
        return roots[0]

    return WebDriverWait(drv, timeout).until(ready)


def _shown(drv: Any) -> np.ndarray:
    pairs = drv.execute_script(
        "return Array.from(document.querySelectorAll('[data-square]')).map(e => [e.dataset.square, e.dataset.value])"
    )
    assert len(pairs) == 64
    values = np.zeros(64)
    for name, value in pairs:
        values[chess.parse_square(name)] = float(value)
    return values


def _key(drv: Any, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).send_keys(key).perform()


def _select(drv: Any, name: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(drv.find_element(By.CSS_SELECTOR, f'select[name="{name}"]')).select_by_value(value)


def _check(drv: Any, model: LczeroModel, board: LczeroBoard, target: str | None, lens: Any = None) -> None:
    root = _wait(drv)
    assert root.get_attribute("data-fen") == board.fen()
    rel = (lens or LrpLens()).relevance(model, board, target)
    expected = rel.squares[0].flatten().numpy()
    np.testing.assert_allclose(_shown(drv), expected, rtol=1e-5, atol=1e-6 * max(np.abs(expected).max(), 1e-9))
    from selenium.webdriver.common.by import By

    shown_target = float(drv.find_element(By.CSS_SELECTOR, "[data-target-value]").get_attribute("data-target-value"))
    assert shown_target == pytest.approx(float(rel.target[0]), rel=1e-5)


def test_served_page(driver: Any, server: Any, session: ExplorerSession, model: LczeroModel, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(server.url)
    _wait(driver, 0)
    _check(driver, model, session.position(0), None)
    options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, 'select[name="target"] option')]
    assert options[:5] == ["top", "value", "win", "draw", "loss"] and "e2e4" in options and len(options) == 25
    lenses = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, 'select[name="lens"] option')]
    assert lenses[0] == "lrp" and "occlusion" in lenses

    _key(driver, Keys.ARROW_RIGHT)
    _wait(driver, 1)
    _key(driver, Keys.ARROW_RIGHT)
    _wait(driver, 2)
    _check(driver, model, session.position(2), None)
    driver.save_screenshot(str(shots / "serve-ply2-top.png"))

    _select(driver, "target", "value")
    _check(driver, model, session.position(2), "value")
    driver.save_screenshot(str(shots / "serve-ply2-value.png"))
    _select(driver, "lens", "occlusion")
    _check(driver, model, session.position(2), "value", OcclusionLens())
    _select(driver, "lens", "lrp")
    _wait(driver, 2)

    driver.find_element(By.CSS_SELECTOR, '[data-action="next"]').click()
    _wait(driver, 3)
    driver.find_element(By.CSS_SELECTOR, '[data-action="prev"]').click()
    _wait(driver, 2)

    # Click a piece, then a square: a legal move off the game's line (white: Nb1-c3 is the game's move; g1f3 not).
    driver.find_element(By.CSS_SELECTOR, '[data-square="g1"]').click()
    driver.find_element(By.CSS_SELECTOR, '[data-square="f3"]').click()
    _wait(driver, 3)
    board = session.position(2, ["g1f3"])
    _check(driver, model, board, "value")
    driver.save_screenshot(str(shots / "serve-played-move.png"))
    _key(driver, Keys.ARROW_LEFT)
    _wait(driver, 2)
    _key(driver, Keys.ARROW_LEFT)
    _wait(driver, 1)
    _check(driver, model, session.position(1), "value")


def test_served_page_shows_errors(driver: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server.url)
    _wait(driver, 0)
    # A move the position does not allow, asked for by hand: the page says why and keeps the last view.
    driver.execute_script(
        "document.querySelector('select[name=target]').append(new Option('e2e5', 'e2e5'));"
        "const s = document.querySelector('select[name=target]'); s.value = 'e2e5';"
        "s.dispatchEvent(new Event('change'));"
    )
    status = driver.find_element(By.CSS_SELECTOR, ".lzx-status")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: "not legal" in status.text)
    assert _wait(driver, 0).get_attribute("data-fen") == chess.STARTING_FEN


def test_report(driver: Any, model: LczeroModel, session: ExplorerSession, tmp_path: Path, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from lczerolens.explorer import write_report

    pgn = tmp_path / "game.pgn"
    pgn.write_text(GAME)
    out = write_report(model, pgn, tmp_path / "game.html", targets=["top", "value"])
    driver.get(out.as_uri())
    _wait(driver, 0)
    _check(driver, model, session.position(0), None)
    for ply in (1, 2, 3):
        _key(driver, Keys.ARROW_RIGHT)
        _wait(driver, ply)
    _check(driver, model, session.position(3), None)
    _select(driver, "target", "value")
    _check(driver, model, session.position(3), "value")
    driver.save_screenshot(str(shots / "report-ply3-value.png"))
    _key(driver, Keys.ARROW_LEFT)
    _check(driver, model, session.position(2), "value")
    # The value chart: a click at its right end goes to the last position.
    chart = driver.find_element(By.CSS_SELECTOR, ".lzx-chart-svg")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element_with_offset(chart, chart.size["width"] // 2 - 2, 0).click().perform()
    _wait(driver, 6)
    _check(driver, model, session.position(6), "value")
    driver.save_screenshot(str(shots / "report-last.png"))


# ---- the layer view and the attention view --------------------------------------------------------------------
def _mini(drv: Any, name: str) -> np.ndarray:
    pairs = drv.execute_script(
        "return Array.from(document.querySelectorAll(`[data-map='${arguments[0]}'] [data-cell]`))"
        ".map(e => [e.dataset.cell, e.dataset.value])",
        name,
    )
    assert len(pairs) == 64, name
    values = np.zeros(64)
    for square, value in pairs:
        values[chess.parse_square(square)] = float(value)
    return values


def _until(drv: Any, condition: Any) -> Any:
    """Wait (bounded) for ``condition(driver)``; elements redrawn meanwhile are read again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, 120, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def _close(shown: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(shown, expected, rtol=1e-5, atol=1e-6 * max(np.abs(expected).max(), 1e-9))


def test_layer_view(driver: Any, server: Any, session: ExplorerSession, model: LczeroModel, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    from lczerolens.concepts import channel_relevance

    layer = "block3/conv2/relu"
    driver.set_window_size(1000, 1000)
    driver.get(server.url)
    _wait(driver, 0)
    driver.find_element(By.CSS_SELECTOR, '[data-action="next"]').click()
    _wait(driver, 1)
    _select(driver, "layer", layer)
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-map='crp'] [data-cell]"))
    _wait(driver, 1)
    board = session.position(1)
    rel = LrpLens().relevance(model, board, record=(layer,))
    latent = board.network_to_board(rel.layers[layer][0].sum(dim=0).double(), model.input_format)
    _close(_mini(driver, "latent"), latent.flatten().numpy())
    per_channel = channel_relevance(rel, layer)[0]
    order = per_channel.argsort(descending=True).tolist()
    shown = [int(e.get_attribute("data-channel")) for e in driver.find_elements(By.CSS_SELECTOR, "[data-channel]")]
    assert shown == order[: len(shown)] and len(shown) == 8
    crp = LrpLens().relevance(model, board, condition={layer: [order[0]]}).squares[0].flatten().numpy()
    _close(_mini(driver, "crp"), crp)
    # The main board still shows the lens's map (the contract's 64 squares).
    _check(driver, model, board, None)

    # Another channel from the list: its CRP map.
    driver.find_element(By.CSS_SELECTOR, f'[data-channel="{order[2]}"]').click()
    _until(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-map='crp'] figcaption").text.find(f"channel {order[2]} ") >= 0,
    )
    _wait(driver, 1)
    crp = LrpLens().relevance(model, board, condition={layer: [order[2]]}).squares[0].flatten().numpy()
    _close(_mini(driver, "crp"), crp)
    driver.save_screenshot(str(shots / "serve-layer-crp.png"))

    # The chosen channel stays chosen on the next ply (follow one channel through the game).
    from selenium.webdriver.common.keys import Keys

    _key(driver, Keys.ARROW_RIGHT)
    _wait(driver, 2)
    following = session.position(2)
    assert f"channel {order[2]} " in driver.find_element(By.CSS_SELECTOR, "[data-map='crp'] figcaption").text
    crp = LrpLens().relevance(model, following, condition={layer: [order[2]]}).squares[0].flatten().numpy()
    _close(_mini(driver, "crp"), crp)

    # With a lens that is not LRP, the panel says why and the rest of the view stands.
    _select(driver, "lens", "gradient")
    _until(driver, lambda d: "needs an LRP lens" in d.find_element(By.CSS_SELECTOR, ".lzx-layer").text)
    _select(driver, "layer", "")
    _wait(driver, 2)
    assert not driver.find_element(By.CSS_SELECTOR, ".lzx-layer").is_displayed()


ATTENTION_NET = Path(__file__).resolve().parents[1] / "assets" / "nets" / "bt-distilled.pb.gz"


@pytest.fixture(scope="module")
def attention_server() -> Iterator[Any]:
    from lczerolens.explorer import make_server

    if not ATTENTION_NET.exists():
        pytest.skip(f"{ATTENTION_NET} is missing")
    model = LczeroModel.from_path(ATTENTION_NET)
    srv = make_server(ExplorerSession(model, GAME), port=0)
    srv.model = model  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_attention_view(driver: Any, attention_server: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    from lczerolens.lenses import AttentionLens

    model = attention_server.model
    driver.set_window_size(1000, 1000)
    driver.get(attention_server.url)
    _wait(driver, 0)
    for ply in (1, 2):
        driver.find_element(By.CSS_SELECTOR, '[data-action="next"]').click()
        _wait(driver, ply)
    board = ExplorerSession(model, GAME, prefetch=False).position(2)
    _check(driver, model, board, None)
    _select(driver, "attention", "encoder1")
    _select(driver, "query", "e2")
    _until(
        driver,
        lambda d: [e.get_attribute("data-query") for e in d.find_elements(By.CSS_SELECTOR, "[data-query]")] == ["e2"],
    )
    _wait(driver, 2)
    weights = AttentionLens().attention(model, board)["encoder1"][0]
    heads = weights.shape[0]
    assert len(driver.find_elements(By.CSS_SELECTOR, "[data-map^='head-']")) == heads
    for head in range(heads):
        _close(_mini(driver, f"head-{head}"), weights[head, chess.E2].double().numpy())
    # Clicking a square of a head's board queries that square.
    driver.find_element(By.CSS_SELECTOR, "[data-map='head-0'] [data-cell='d7']").click()
    _until(
        driver,
        lambda d: [e.get_attribute("data-query") for e in d.find_elements(By.CSS_SELECTOR, "[data-query]")] == ["d7"],
    )
    _wait(driver, 2)
    _close(_mini(driver, "head-1"), weights[1, chess.D7].double().numpy())
    driver.save_screenshot(str(shots / "serve-attention.png"))


def test_report_layer_view(driver: Any, model: LczeroModel, tmp_path: Path, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from lczerolens.explorer import write_report

    layer = "block2/conv2/relu"
    pgn = tmp_path / "game.pgn"
    pgn.write_text(GAME)
    out = write_report(model, pgn, tmp_path / "game.html", targets=["top", "value"], layer=layer, channels=3)
    plain = ExplorerSession(model, GAME, prefetch=False)
    driver.set_window_size(1000, 1000)
    driver.get(out.as_uri())
    _wait(driver, 0)
    _key(driver, Keys.ARROW_RIGHT)
    _wait(driver, 1)
    _select(driver, "layer", layer)
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-map='crp'] [data-cell]"))
    live = plain.layer_view(1, (), "top", "lrp", layer)
    _close(_mini(driver, "latent"), np.array(live["latent"]["values"]))
    _close(_mini(driver, "crp"), np.array(live["crp"]["values"]))
    channels = [int(e.get_attribute("data-channel")) for e in driver.find_elements(By.CSS_SELECTOR, "[data-channel]")]
    assert channels == [c["channel"] for c in live["channels"][:3]]
    driver.find_element(By.CSS_SELECTOR, f'[data-channel="{channels[1]}"]').click()
    _until(
        driver,
        lambda d: f"channel {channels[1]} " in d.find_element(By.CSS_SELECTOR, "[data-map='crp'] figcaption").text,
    )
    crp = plain.layer_view(1, (), "top", "lrp", layer, channels[1])["crp"]["values"]
    np.testing.assert_allclose(_mini(driver, "crp"), crp, rtol=1e-4, atol=1e-6)
    _select(driver, "target", "value")
    _wait(driver, 1)
    live = plain.layer_view(1, (), "value", "lrp", layer)
    _close(_mini(driver, "latent"), np.array(live["latent"]["values"]))
    driver.save_screenshot(str(shots / "report-layer.png"))
