"""The explorer's Python side: the session core, the widget's traits, the local server and the report file.

The same pages in a real browser: tests/test_explorer_browser.py.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import chess
import numpy as np
import pytest

from lczerolens import LczeroBoard, LczeroModel
from lczerolens.errors import InvalidBoardError, InvalidMoveError, InvalidOptionError
from lczerolens.explorer import ExplorerSession, load_source
from lczerolens.lenses import LrpLens, OcclusionLens
from lczerolens.visual import render_heatmap, square_colors

# A short game: a few plies keep every test quick.
GAME = """[Event "explorer test"]
[White "A"]
[Black "B"]
[Result "*"]

1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 *
"""


@pytest.fixture(scope="module")
def model(maia_pb_path: Path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture(scope="module")
def session(model: LczeroModel) -> ExplorerSession:
    return ExplorerSession(model, GAME)


def _expected(model: LczeroModel, board: LczeroBoard, target: str | None) -> np.ndarray:
    return LrpLens().relevance(model, board, target).squares[0].flatten().numpy()


def test_load_source_kinds(tmp_path: Path) -> None:
    boards, line, title = load_source(GAME)
    assert len(boards) == 7 and line[:2] == ["e2e4", "e7e5"] and title.startswith("A - B")
    # Each position carries the game's moves as history (lc0 reads up to 8 of them).
    assert [m.uci() for m in boards[3].move_stack] == ["e2e4", "e7e5", "g1f3"]
    path = tmp_path / "g.pgn"
    path.write_text(GAME + "\n" + GAME.replace("Bb5 a6", "Bc4 Bc5"))
    assert load_source(str(path), game=1)[1][-2:] == ["f1c4", "f8c5"]
    with pytest.raises(InvalidOptionError, match="no game number 5"):
        load_source(path, game=5)
    assert load_source("startpos")[0][0].fen() == chess.STARTING_FEN
    assert len(load_source([chess.Board(), "8/8/8/8/8/8/8/K1k5 w - - 0 1"])[0]) == 2
    with pytest.raises(InvalidBoardError, match="not a FEN"):
        load_source("not a fen at all")


def test_view_matches_lrp_lens(model: LczeroModel, session: ExplorerSession) -> None:
    for index, target in [(0, "top"), (3, "value"), (4, "top")]:
        view = session.view(index, (), target, "lrp")
        board = session.position(index)
        assert view["fen"] == board.fen() and view["ply"] == index
        expected = _expected(model, board, None if target == "top" else target)
        np.testing.assert_allclose(view["values"], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    top = session.view(0, (), "top", "lrp")
    assert top["target"]["move"] == model.evaluate(LczeroBoard()).best_move.uci()
    assert len(top["legal"]) == 20 and top["evaluation"]["wdl"] is not None
    # Colours and legend: exactly what render_heatmap draws for these values.
    colors = square_colors(top["values"])
    assert top["colors"] == colors["colors"] and top["vmax"] == pytest.approx(colors["vmax"])


def test_square_colors_match_render_heatmap() -> None:
    values = np.linspace(-1, 2, 64)
    colors = square_colors(values)["colors"]
    drawn = render_heatmap(chess.Board(), values)._repr_svg_()
    for c in (colors[0], colors[40], colors[63]):
        assert c in drawn


def test_moves_targets_lenses_and_errors(model: LczeroModel, session: ExplorerSession) -> None:
    view = session.view(2, ["g1f3", "b8c6"], "d2d4", "lrp")
    board = session.position(2, ["g1f3", "b8c6"])
    assert view["ply"] == 4 and view["target"]["move"] == "d2d4"
    np.testing.assert_allclose(view["values"], _expected(model, board, "d2d4"), rtol=1e-5, atol=1e-6)
    occ = session.view(0, (), "top", "occlusion")
    expected = OcclusionLens().relevance(model, LczeroBoard()).squares[0].flatten().numpy()
    np.testing.assert_allclose(occ["values"], expected, rtol=1e-5, atol=1e-6)
    assert "residual_conserving" in session.lens_names() and "attention_default" not in session.lens_names()
    with pytest.raises(InvalidMoveError, match="not legal"):
        session.view(0, ["e2e5"])
    with pytest.raises(InvalidMoveError, match="UCI"):
        session.view(0, ["hello"])
    with pytest.raises(InvalidBoardError, match="does not exist"):
        session.view(99)
    with pytest.raises(InvalidOptionError, match="unknown lens"):
        session.view(0, (), "top", "nope")
    with pytest.raises(InvalidMoveError, match="not legal"):
        session.view(0, (), "e7e5", "lrp")
    # Cached: the same dict content comes back without recomputing.
    assert session.view(2, ["g1f3", "b8c6"], "d2d4", "lrp") == view


def test_meta(session: ExplorerSession) -> None:
    meta = session.meta()
    assert meta["count"] == 7 and [m["san"] for m in meta["line"]][:3] == ["e4", "e5", "Nf3"]
    assert len(meta["values"]) == 7 and set(meta["pieces"]) == set("PNBRQKpnbrqk")
    assert meta["lens"] == "lrp" and meta["target"] == "top"
    json.dumps(meta, allow_nan=False)


# ---- the widget (Python side: traits) ------------------------------------------------------------------------
def test_widget_traits(model: LczeroModel) -> None:
    pytest.importorskip("anywidget")
    from lczerolens import explore

    widget = explore(model, GAME, target="value")
    assert widget.meta["count"] == 7 and "export default" in widget._esm
    widget.request = {"index": 2, "moves": [], "target": "value", "lens": "lrp", "request_id": "a"}
    assert widget.view["request_id"] == "a" and widget.view["ply"] == 2
    np.testing.assert_allclose(
        widget.view["values"], _expected(model, widget.session.position(2), "value"), rtol=1e-5, atol=1e-6
    )
    bad = widget.show(0, ["e2e5"])
    assert "not legal" in bad["error"]
    shown = widget.show(1, target="top")
    assert shown["fen"] == widget.session.position(1).fen()


# ---- serve ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(session: ExplorerSession):
    from lczerolens.explorer import make_server

    srv = make_server(session, port=0)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            body = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_serve_binds_loopback(server) -> None:
    assert server.server_address[0] == "127.0.0.1"
    status, page = _get(server.url)
    assert status == 200 and "explorer.js" in page
    assert _get(server.url + "static/explorer.js")[0] == 200
    assert _get(server.url + "api/meta")[1]["count"] == 7


def test_serve_views_and_bad_input(server, model: LczeroModel) -> None:
    status, view = _get(server.url + "api/view?index=1&moves=e7e5,g1f3&target=value&lens=lrp")
    assert status == 200 and view["ply"] == 3
    board = LczeroBoard()
    for m in ["e2e4", "e7e5", "g1f3"]:
        board.push_uci(m)
    np.testing.assert_allclose(view["values"], _expected(model, board, "value"), rtol=1e-5, atol=1e-6)
    for query, match in [
        ("index=0&moves=e2e5", "not legal"),
        ("index=0&moves=zz", "UCI"),
        ("index=x", "whole number"),
        ("index=50", "does not exist"),
        ("index=0&lens=nope", "unknown lens"),
        ("index=0&target=a1a2", "not legal"),
    ]:
        status, body = _get(server.url + "api/view?" + query)
        assert status == 400 and match in body["error"], query
    assert _get(server.url + "api/view?index=0")[0] == 200  # still serving


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/session.py",
        "/static/..%2fsession.py",
        "/static/explorer.js/../../__init__.py",
        "//etc/passwd",
        "/lczerolens/explorer/session.py",
        "/static/",
    ],
)
def test_serve_no_traversal(server, path: str) -> None:
    # http.client sends the path as written (urllib would normalise the dots away).
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 404 and b"root:" not in body and b"import" not in body


def test_serve_concurrent_requests_agree(server) -> None:
    urls = [server.url + f"api/view?index={i % 3}&target={'value' if i % 2 else 'top'}" for i in range(12)]
    alone = {u: _get(u)[1] for u in set(urls)}
    results: dict[int, dict] = {}

    def fetch(i: int) -> None:
        results[i] = _get(urls[i])[1]

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == alone[urls[i]] for i in range(len(urls)))


def test_cli_serve_defaults_to_loopback() -> None:
    from lczerolens.cli import build_parser

    args = build_parser().parse_args(["serve", "w.pb.gz"])
    assert args.host == "127.0.0.1" and args.port == 8765


# ---- report --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_path(model: LczeroModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lczerolens.explorer import write_report

    pgn = tmp_path_factory.mktemp("report") / "game.pgn"
    pgn.write_text(GAME)
    return write_report(model, pgn, pgn.with_suffix(".html"), targets=["top", "value"])


def test_report_is_self_contained(report_path: Path, model: LczeroModel) -> None:
    html = report_path.read_text()
    # Nothing is fetched: no src/href attributes, no imports, no URLs other than data: and the SVG namespace.
    assert not re.search(r"\b(src|href)\s*=", html)
    assert not re.search(r"^\s*import\s", html, re.M)
    urls = set(re.findall(r"https?://[\w./-]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    data = json.loads(re.search(r'id="lczerolens-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["views"]) == 14  # 7 positions x 2 targets
    view = data["views"]["5|value|lrp"]
    board = LczeroBoard()
    for m in ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5"]:
        board.push_uci(m)
    np.testing.assert_allclose(view["values"], _expected(model, board, "value"), rtol=1e-5, atol=1e-6)


def test_report_rejects_move_targets(model: LczeroModel, tmp_path: Path) -> None:
    from lczerolens.explorer import write_report

    pgn = tmp_path / "g.pgn"
    pgn.write_text(GAME)
    with pytest.raises(InvalidOptionError, match="report target"):
        write_report(model, pgn, tmp_path / "x.html", targets=["e2e4"])


# ---- speed: prefetching -------------------------------------------------------------------------------------
def test_prefetch_fills_neighbours(model: LczeroModel) -> None:
    session = ExplorerSession(model, GAME)
    session.view(2, (), "top", "lrp")
    session.wait_prefetch()
    for index, target in [(3, "top"), (4, "top"), (1, "top"), (2, "value")]:
        assert session.cached(index, (), target, "lrp"), (index, target)
    # A prefetched view is the same as one computed when asked (one position per call either way).
    plain = ExplorerSession(model, GAME, prefetch=False)
    assert session.view(3, (), "top", "lrp") == plain.view(3, (), "top", "lrp")
    assert not plain.cached(4, (), "top", "lrp")
    session.close()


# ---- the layer view and the attention view -------------------------------------------------------------------
def test_layer_view_matches_lrp(model: LczeroModel, session: ExplorerSession) -> None:
    from lczerolens.concepts import channel_relevance

    layer = "block3/conv2/relu"
    assert session.layer_names()[0] == "inputconv/relu" and layer in session.layer_names()
    assert session.attention_layers() == [] and session.meta()["layers"] == session.layer_names()
    view = session.view(3, (), "value", "lrp", layer=layer)
    board = session.position(3)
    rel = LrpLens().relevance(model, board, "value", record=(layer,))
    latent = board.network_to_board(rel.layers[layer][0].sum(dim=0).double(), model.input_format)
    np.testing.assert_allclose(view["layer"]["latent"]["values"], latent.flatten().numpy(), rtol=1e-5, atol=1e-7)
    per_channel = channel_relevance(rel, layer)[0]
    assert [c["channel"] for c in view["layer"]["channels"]] == per_channel.argsort(descending=True)[:8].tolist()
    top = view["layer"]["channel"]
    assert top == view["layer"]["channels"][0]["channel"]
    crp = LrpLens().relevance(model, board, "value", condition={layer: [top]}).squares[0].flatten().numpy()
    np.testing.assert_allclose(view["layer"]["crp"]["values"], crp, rtol=1e-5, atol=1e-7)
    other = session.view(3, (), "value", "lrp", layer=layer, channel=7)["layer"]
    crp7 = LrpLens().relevance(model, board, "value", condition={layer: [7]}).squares[0].flatten().numpy()
    assert other["channel"] == 7
    np.testing.assert_allclose(other["crp"]["values"], crp7, rtol=1e-5, atol=1e-7)
    # Not an LRP lens: the view stands, the layer panel says why it is empty.
    assert "needs an LRP lens" in session.view(3, (), "value", "gradient", layer=layer)["layer"]["error"]
    with pytest.raises(InvalidOptionError, match="unknown layer"):
        session.view(3, (), "value", "lrp", layer="block99")
    with pytest.raises(InvalidOptionError, match="channel 64 does not exist"):
        session.view(3, (), "value", "lrp", layer=layer, channel=64)
    with pytest.raises(InvalidOptionError, match="no attention layers"):
        session.view(3, attention="encoder0")


def test_attention_view_matches_attention_lens() -> None:
    from lczerolens.lenses import AttentionLens

    path = Path(__file__).resolve().parents[1] / "assets" / "nets" / "bt-distilled.pb.gz"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    net = LczeroModel.from_path(path)
    session = ExplorerSession(net, GAME, prefetch=False)
    assert session.attention_layers()[:2] == ["encoder0", "encoder1"]
    assert session.layer_names()[0] == "encoder0/ln2"
    view = session.view(2, (), "top", "lrp", attention="encoder1", query="f3")
    board = session.position(2)
    weights = AttentionLens().attention(net, board)["encoder1"][0]
    heads = view["attention"]["heads"]
    assert view["attention"]["query"] == "f3" and len(heads) == weights.shape[0]
    for h, head in enumerate(heads):
        np.testing.assert_allclose(head["values"], weights[h, chess.F3].double().numpy(), rtol=1e-5, atol=1e-7)
        assert head["sum"] == pytest.approx(1.0, abs=1e-5)
    # Default query: the from-square of the top move.
    default = session.view(2, (), "top", "lrp", attention="encoder1")["attention"]["query"]
    assert default == net.evaluate(board).best_move.uci()[:2]
    with pytest.raises(InvalidOptionError, match="not a square"):
        session.view(2, attention="encoder1", query="z9")
    with pytest.raises(InvalidOptionError, match="unknown attention layer"):
        session.view(2, attention="encoder9")
    latent = session.view(2, (), "top", "lrp", layer="encoder2/ln2")["layer"]
    rel = LrpLens().relevance(net, board, record=("encoder2/ln2",))
    tokens = rel.layers["encoder2/ln2"].reshape(64, -1).sum(dim=1).reshape(8, 8).double()
    expected = board.network_to_board(tokens, net.input_format).flatten().numpy()
    np.testing.assert_allclose(latent["latent"]["values"], expected, rtol=1e-5, atol=1e-7)


def test_widget_and_server_layer_requests(model: LczeroModel, server) -> None:
    pytest.importorskip("anywidget")
    from lczerolens import explore

    widget = explore(model, GAME)
    shown = widget.show(1, layer="block2/conv2/relu", channel=3)
    assert shown["layer"]["channel"] == 3 and len(shown["layer"]["crp"]["values"]) == 64
    status, view = _get(server.url + "api/view?index=1&layer=block2/conv2/relu&channel=3")
    assert status == 200 and view["layer"]["crp"]["values"] == shown["layer"]["crp"]["values"]
    status, body = _get(server.url + "api/view?index=1&layer=block2/conv2/relu&channel=x")
    assert status == 400 and "whole number" in body["error"]
    status, body = _get(server.url + "api/view?index=1&layer=nope")
    assert status == 400 and "unknown layer" in body["error"]


def test_report_layer_view(model: LczeroModel, tmp_path: Path) -> None:
    from lczerolens.explorer import write_report

    layer = "block3/conv2/relu"
    pgn = tmp_path / "g.pgn"
    pgn.write_text(GAME)
    html = write_report(model, pgn, tmp_path / "g.html", targets=["top"], layer=layer, channels=2).read_text()
    data = json.loads(re.search(r'id="lczerolens-data">(.*?)</script>', html, re.S).group(1))
    assert data["meta"]["layers"] == [layer] and data["meta"]["attention_layers"] == []
    session = ExplorerSession(model, GAME, prefetch=False)
    for index in (0, 5):
        stored = data["views"][f"{index}|top|lrp"]["layers"][layer]
        live = session.layer_view(index, (), "top", "lrp", layer)
        assert stored["order"] == [c["channel"] for c in live["channels"][:2]]
        np.testing.assert_allclose(stored["latent"]["values"], live["latent"]["values"], rtol=1e-5, atol=1e-6)
        for channel in stored["order"]:
            crp = session.layer_view(index, (), "top", "lrp", layer, channel)["crp"]["values"]
            np.testing.assert_allclose(stored["crps"][str(channel)]["values"], crp, rtol=1e-4, atol=1e-6)


def test_cli_report_layer_and_threads(maia_pb_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from lczerolens import cli

    pgn = tmp_path / "g.pgn"
    pgn.write_text(GAME)
    out = tmp_path / "g.html"
    threads = torch.get_num_threads()
    try:
        args = ["report", str(maia_pb_path), str(pgn), "--out", str(out), "--target", "value"]
        assert cli.main([*args, "--layer", "block1/conv2/relu", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    data = json.loads(re.search(r'id="lczerolens-data">(.*?)</script>', out.read_text(), re.S).group(1))
    assert set(data["views"]["2|value|lrp"]["layers"]) == {"block1/conv2/relu"}
    assert cli.main(["report", str(maia_pb_path), str(pgn), "--out", str(out), "--threads", "0"]) != 0
    assert "--threads must be 1 or more" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["serve", "w.pb.gz"]).threads == 1


def test_prefetch_layer_view_of_neighbours(model: LczeroModel) -> None:
    session = ExplorerSession(model, GAME)
    layer = "block1/conv2/relu"
    session.view(2, (), "top", "lrp", layer=layer)
    session.wait_prefetch()
    assert (3, (), "top", "lrp", layer) in session._extras and (1, (), "top", "lrp", layer) in session._extras
    plain = ExplorerSession(model, GAME, prefetch=False)
    assert session.view(3, (), "top", "lrp", layer=layer) == plain.view(3, (), "top", "lrp", layer=layer)
    session.close()
