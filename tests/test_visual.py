"""Heatmap rendering, checked from the SVG itself: colours, square placement, arrow, colour bar, PNG size."""

from __future__ import annotations

import re
import struct
import sys
import xml.etree.ElementTree as ET

import chess
import numpy as np
import pytest
import torch

from lczerolens.board import LczeroBoard
from lczerolens.errors import InputShapeError, LczeroLensError
from lczerolens.visual import (
    COLORMAPS,
    Heatmap,
    MissingDependencyError,
    RenderError,
    get_cmap,
    render_grid,
    render_heatmap,
)

NS = "{http://www.w3.org/2000/svg}"
WHITE_TO_MOVE = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
BLACK_TO_MOVE = "r1bqkbnr/pppp1ppp/2n5/1B2p3/4P3/5N2/PPPP1PPP/RNBQK2R b KQkq - 3 3"


def _translate(el: ET.Element) -> tuple[float, float]:
    m = re.search(r"translate\(\s*([-\d.]+)[ ,]+([-\d.]+)\s*\)", el.get("transform", ""))
    return (float(m.group(1)), float(m.group(2))) if m else (0.0, 0.0)


def _walk(el: ET.Element, ox: float = 0.0, oy: float = 0.0):
    """Every element with its absolute offset (sum of the translate() of its ancestors and itself)."""
    dx, dy = _translate(el) if el.tag != NS + "use" else (0.0, 0.0)
    ox, oy = ox + dx, oy + dy
    yield el, ox, oy
    for child in el:
        yield from _walk(child, ox, oy)


def _squares(svg: str, prefix: str = "") -> dict[str, dict]:
    """Square name -> absolute rect geometry, fill colour and value, read from the SVG."""
    out = {}
    for el, ox, oy in _walk(ET.fromstring(svg)):
        sid = el.get("id", "")
        if el.tag == NS + "rect" and sid.startswith(prefix + "square-"):
            name = sid[len(prefix + "square-") :]
            out[name] = {
                "x": ox + float(el.get("x")),
                "y": oy + float(el.get("y")),
                "w": float(el.get("width")),
                "h": float(el.get("height")),
                "fill": el.get("fill").lower(),
                "value": float(el.get("data-value")),
            }
    return out


def _center(sq: dict) -> tuple[float, float]:
    return sq["x"] + sq["w"] / 2, sq["y"] + sq["h"] / 2


def _values_with_peak(peak: int, trough: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.uniform(-0.5, 0.5, size=64)
    v[peak] = 2.0
    v[trough] = -1.5
    return v.reshape(8, 8)


@pytest.mark.parametrize("fen", [WHITE_TO_MOVE, BLACK_TO_MOVE])
@pytest.mark.parametrize("orientation", ["white", "black", "turn"])
def test_extreme_colours_land_on_the_extreme_squares(fen: str, orientation: str) -> None:
    board = chess.Board(fen)
    values = _values_with_peak(chess.E4, chess.C6)
    svg = render_heatmap(board, values, orientation=orientation, contrast="max").svg
    squares = _squares(svg)
    assert len(squares) == 64
    cmap = COLORMAPS["RdBu_r"]
    # Symmetric scale: the largest |value| (e4, +2) gets the top colour; c6 (-1.5) sits at t = 0.125.
    assert squares["e4"]["fill"] == cmap(1.0)
    assert squares["c6"]["fill"] == cmap(0.5 - 0.5 * 1.5 / 2.0)
    assert sum(sq["fill"] == cmap(1.0) for sq in squares.values()) == 1
    # Positive red, negative blue: the two ends are visibly different, zero is near-white.
    red = tuple(int(cmap(1.0)[i : i + 2], 16) for i in (1, 3, 5))
    blue = tuple(int(cmap(0.0)[i : i + 2], 16) for i in (1, 3, 5))
    assert red[0] > red[2] + 100 and blue[2] > blue[0] + 100
    assert min(int(cmap(0.5)[i : i + 2], 16) for i in (1, 3, 5)) > 235
    # The values written on the squares are the ones given, in board orientation.
    for name, sq in squares.items():
        assert sq["value"] == pytest.approx(values.flatten()[chess.parse_square(name)])


@pytest.mark.parametrize(
    ("fen", "orientation", "white_bottom"),
    [
        (WHITE_TO_MOVE, "white", True),
        (WHITE_TO_MOVE, chess.WHITE, True),
        (WHITE_TO_MOVE, "black", False),
        (WHITE_TO_MOVE, chess.BLACK, False),
        (WHITE_TO_MOVE, "turn", True),
        (BLACK_TO_MOVE, "turn", False),
        (BLACK_TO_MOVE, "white", True),
    ],
)
def test_a1_and_h8_land_where_they_should(fen: str, orientation, white_bottom: bool) -> None:
    squares = _squares(render_heatmap(chess.Board(fen), np.zeros(64), orientation=orientation).svg)
    a1, h8, a8 = squares["a1"], squares["h8"], squares["a8"]
    if white_bottom:
        assert a1["x"] < h8["x"] and a1["y"] > h8["y"]  # a1 bottom left, h8 top right
        assert a8["x"] == a1["x"] and a8["y"] < a1["y"]
    else:
        assert a1["x"] > h8["x"] and a1["y"] < h8["y"]  # a1 top right, h8 bottom left
        assert a8["x"] == a1["x"] and a8["y"] > a1["y"]
    # The 64 squares tile an 8x8 grid without overlap.
    assert len({(sq["x"], sq["y"]) for sq in squares.values()}) == 64
    assert abs(h8["x"] - a1["x"]) == pytest.approx(7 * a1["w"])


@pytest.mark.parametrize("fen", [WHITE_TO_MOVE, BLACK_TO_MOVE])
@pytest.mark.parametrize("orientation", ["white", "black", "turn"])
def test_arrow_joins_the_moves_squares(fen: str, orientation: str) -> None:
    board = chess.Board(fen)
    move = next(m for m in board.legal_moves if chess.square_file(m.from_square) != chess.square_file(m.to_square))
    svg = render_heatmap(board, np.zeros(64), move=move, orientation=orientation).svg
    squares = _squares(svg)
    frm, to = squares[chess.square_name(move.from_square)], squares[chess.square_name(move.to_square)]
    shaft = head = None
    for el, ox, oy in _walk(ET.fromstring(svg)):
        if "move-arrow" in el.get("class", ""):
            assert el.get("data-move") == move.uci()
            if el.tag == NS + "line":
                shaft = (ox + float(el.get("x1")), oy + float(el.get("y1")))
            elif el.tag == NS + "polygon":
                pts = [tuple(map(float, p.split(","))) for p in el.get("points").split()]
                head = (ox + pts[0][0], oy + pts[0][1])  # the tip
    assert shaft is not None and head is not None
    assert shaft == pytest.approx(_center(frm))
    assert to["x"] < head[0] < to["x"] + to["w"] and to["y"] < head[1] < to["y"] + to["h"]


def _colorbar(svg: str, index: str = "") -> ET.Element:
    root = ET.fromstring(svg)
    bars = [el for el in root.iter() if "colorbar" in el.get("class", "").split()]
    assert bars, "no colour bar"
    return bars[0] if not index else next(b for b in bars if b.get("id") == f"colorbar-{index}")


def test_colour_bar_shows_the_scale() -> None:
    values = _values_with_peak(chess.D5, chess.A1)
    hm = render_heatmap(chess.Board(), values, label="relevance", contrast="max")
    bar = _colorbar(hm.svg)
    assert float(bar.get("data-vmin")) == -2.0 and float(bar.get("data-vmax")) == 2.0
    assert (hm.vmin, hm.vmax) == (-2.0, 2.0)
    ticks = [el for el in bar if el.get("class") == "colorbar-tick"]
    assert [float(t.get("data-value")) for t in ticks] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert [t.text for t in ticks] == ["\u22122", "\u22121", "0", "+1", "+2"]
    assert any(el.text == "relevance" for el in bar)
    # The gradient runs from the low end's colour to the top end's.
    grad = next(el for el in ET.fromstring(hm.svg).iter(NS + "linearGradient"))
    stops = [s.get("stop-color") for s in grad]
    assert stops[0] == COLORMAPS["RdBu_r"](0.0) and stops[-1] == COLORMAPS["RdBu_r"](1.0)
    # The bar is drawn as tall as the 8 squares, to the right of the board.
    fill = next(el for el in bar if el.get("class") == "colorbar-fill")
    squares = _squares(hm.svg)
    assert float(fill.get("height")) == pytest.approx(8 * squares["a1"]["h"])
    assert float(fill.get("x")) > squares["h1"]["x"] + squares["h1"]["w"]


def test_magnitudes_use_a_sequential_map_and_vmax_shares_a_scale() -> None:
    values = np.linspace(0.0, 3.0, 64)
    hm = render_heatmap(chess.Board(), values, contrast="max")
    squares = _squares(hm.svg)
    assert (hm.vmin, hm.vmax) == (0.0, 3.0)
    assert squares["a1"]["fill"] == COLORMAPS["Reds"](0.0) == "#fff5f0"
    assert squares["h8"]["fill"] == COLORMAPS["Reds"](1.0)
    # A fixed vmax: values are placed on that scale and clipped beyond it.
    shared = _squares(render_heatmap(chess.Board(), values, vmax=6.0, contrast="max").svg)
    assert shared["h8"]["fill"] == COLORMAPS["Reds"](0.5)
    assert _squares(render_heatmap(chess.Board(), values, vmax=torch.tensor(6.0)).svg) == shared
    assert _squares(render_heatmap(chess.Board(), values, vmax=np.float32(6.0)).svg) == shared
    clipped = _squares(render_heatmap(chess.Board(), values, vmax=1.5, contrast="max").svg)
    assert clipped["h8"]["fill"] == clipped["g8"]["fill"] == COLORMAPS["Reds"](1.0)
    # "absolute" draws |value|: -3 and +3 get the same colour.
    signed = np.linspace(-3.0, 3.0, 64)
    absolute = _squares(render_heatmap(chess.Board(), signed, norm="absolute", contrast="max").svg)
    assert absolute["a1"]["fill"] == absolute["h8"]["fill"] == COLORMAPS["Reds"](1.0)
    # "symmetric" forces the diverging map even for non-negative values.
    sym = render_heatmap(chess.Board(), values, norm="symmetric", contrast="max")
    assert (sym.vmin, sym.vmax) == (-3.0, 3.0)
    assert _squares(sym.svg)["a1"]["fill"] == COLORMAPS["RdBu_r"](0.5)


def test_values_accept_torch_numpy_lists_8x8_and_64() -> None:
    board = chess.Board(BLACK_TO_MOVE)
    values = np.random.default_rng(1).normal(size=(8, 8))
    ref = render_heatmap(board, values).svg
    assert render_heatmap(board, values.flatten()).svg == ref
    assert render_heatmap(board, torch.tensor(values)).svg == ref
    assert render_heatmap(board, torch.tensor(values).reshape(64)).svg == ref
    assert render_heatmap(board, values.tolist()).svg == ref
    # [rank, file]: row 3, column 4 is e4.
    t = torch.zeros(8, 8)
    t[3, 4] = 1.0
    svg = render_heatmap(board, t).svg
    squares = _squares(svg)
    assert squares["e4"]["value"] == 1.0 and sum(sq["value"] for sq in squares.values()) == 1.0
    assert "<title>e4: +1</title>" in svg  # the hover text of e4's square


def test_colour_maps_by_name_and_callable() -> None:
    values = _values_with_peak(chess.E4, chess.C6)
    for name in ("coolwarm", "PiYG", "puor", "RdBu", "viridis"):
        squares = _squares(render_heatmap(chess.Board(), values, cmap=name).svg)
        assert squares["e4"]["fill"] == get_cmap(name)(1.0)
    assert get_cmap("RdBu_r")(0.0) == get_cmap("RdBu")(1.0)
    squares = _squares(render_heatmap(chess.Board(), values, cmap=lambda t: (t, 0.0, 1.0 - t, 1.0)).svg)
    assert squares["e4"]["fill"] == "#ff0000"
    squares = _squares(render_heatmap(chess.Board(), values, cmap=lambda t: "#00ff00" if t > 0.9 else "#000").svg)
    assert squares["e4"]["fill"] == "#00ff00" and squares["a1"]["fill"] == "#000000"


def test_caption_and_jupyter_repr() -> None:
    hm = render_heatmap(chess.Board(), np.zeros(64), caption=["maia-1900", "target e2e4: 1.25"])
    texts = [el.text for el in ET.fromstring(hm.svg).iter(NS + "text") if el.get("class") == "caption"]
    assert texts == ["maia-1900", "target e2e4: 1.25"]
    assert hm._repr_svg_() == hm.svg
    assert "Heatmap(" in repr(hm)
    root = ET.fromstring(hm.svg)
    assert float(root.get("width")) == pytest.approx(hm.width)
    assert float(root.get("height")) == pytest.approx(hm.height)
    sized = render_heatmap(chess.Board(), np.zeros(64), size=300)
    assert sized.width == 300 and float(ET.fromstring(sized.svg).get("width")) == 300


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_svg_and_png(tmp_path) -> None:
    pytest.importorskip("cairosvg")
    hm = render_heatmap(chess.Board(), _values_with_peak(chess.E4, chess.C6), move="e2e4", caption="x")
    svg_path = hm.save(tmp_path / "h.svg")
    assert svg_path.read_text() == hm.svg
    png_path = hm.save(tmp_path / "h.png")
    w, h = _png_size(png_path.read_bytes())
    assert abs(w - 2 * hm.width) <= 1 and abs(h - 2 * hm.height) <= 1
    w1, h1 = _png_size(hm.to_png(scale=1))
    assert abs(w1 - hm.width) <= 1 and abs(h1 - hm.height) <= 1


def test_bad_inputs_raise_clear_errors(tmp_path, monkeypatch) -> None:
    hm = render_heatmap(chess.Board(), np.zeros(64))
    with pytest.raises(RenderError, match=r"\.svg or \.png"):
        hm.save(tmp_path / "h.jpg")
    with pytest.raises(RenderError, match="does not exist"):
        hm.save(tmp_path / "missing" / "h.svg")
    with pytest.raises(InputShapeError, match=r"\[8, 8\]"):
        render_heatmap(chess.Board(), np.zeros(63))
    with pytest.raises(InputShapeError, match="not finite on e4"):
        v = np.zeros(64)
        v[chess.E4] = np.nan
        render_heatmap(chess.Board(), v)
    with pytest.raises(RenderError, match="unknown colour map 'nope'"):
        render_heatmap(chess.Board(), np.zeros(64), cmap="nope")
    with pytest.raises(RenderError, match="orientation"):
        render_heatmap(chess.Board(), np.zeros(64), orientation="sideways")
    with pytest.raises(RenderError, match="norm"):
        render_heatmap(chess.Board(), np.zeros(64), norm="minmax")
    with pytest.raises(RenderError, match="vmax"):
        render_heatmap(chess.Board(), np.zeros(64), vmax=-1)
    with pytest.raises(RenderError, match="UCI"):
        render_heatmap(chess.Board(), np.zeros(64), move="e2-e4")
    # All of them are LczeroLensError, so a caller (the CLI) can catch one class.
    assert issubclass(RenderError, LczeroLensError) and issubclass(MissingDependencyError, LczeroLensError)
    # PNG without cairosvg: a clear message, not a bare ImportError from deep inside.
    monkeypatch.setitem(sys.modules, "cairosvg", None)
    with pytest.raises(MissingDependencyError, match="pip install"):
        hm.save(tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def test_all_zero_values_render_neutral() -> None:
    hm = render_heatmap(chess.Board(), np.zeros((8, 8)))
    fills = {sq["fill"] for sq in _squares(hm.svg).values()}
    assert fills == {COLORMAPS["Reds"](0.0)}


def test_grid_shares_one_scale_and_one_colour_bar() -> None:
    board = chess.Board(WHITE_TO_MOVE)
    rng = np.random.default_rng(2)
    values = rng.normal(size=(3, 8, 8))
    values[1, 4, 4] = 10.0  # e5 of the second board: the largest value of all
    grid = render_grid(
        board, values, titles=["a", "b", "c"], move=["f1b5", None, "e1g1"], caption="three", contrast="max"
    )
    assert isinstance(grid, Heatmap)
    root = ET.fromstring(grid.svg)
    assert len([el for el in root.iter() if el.get("class") == "board"]) == 3
    assert len([el for el in root.iter() if el.get("class") == "colorbar"]) == 1
    assert (grid.vmin, grid.vmax) == (-10.0, 10.0)
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids)), "ids must be unique in one document"
    panels = [_squares(grid.svg, f"b{i}-") for i in range(3)]
    cmap = COLORMAPS["RdBu_r"]
    assert panels[1]["e5"]["fill"] == cmap(1.0)
    # Shared scale: the other boards' values are on the same [-10, 10] scale, so none reaches the top colour.
    assert all(sq["fill"] != cmap(1.0) for p in (panels[0], panels[2]) for sq in p.values())
    # Side by side, left to right in order; arrows only where a move was given.
    assert panels[0]["a1"]["x"] < panels[1]["a1"]["x"] < panels[2]["a1"]["x"]
    moves = {el.get("data-move") for el in root.iter() if "move-arrow" in el.get("class", "")}
    assert moves == {"f1b5", "e1g1"}
    titles = [el.text for el in root.iter(NS + "text") if el.get("class") == "title"]
    assert titles == ["a", "b", "c"]


def test_grid_per_board_scales_and_layout() -> None:
    boards = [chess.Board(WHITE_TO_MOVE), chess.Board(BLACK_TO_MOVE)] * 3
    values = torch.rand(6, 64) * torch.arange(1, 7).unsqueeze(1)
    grid = render_grid(boards, values, shared_scale=False, ncols=3, orientation="turn", contrast="max")
    root = ET.fromstring(grid.svg)
    bars = [el for el in root.iter() if el.get("class") == "colorbar"]
    assert len(bars) == 6 and grid.vmax is None
    for i, bar in enumerate(bars):
        assert float(bar.get("data-vmax")) == pytest.approx(float(values[i].max()))
    panels = [_squares(grid.svg, f"b{i}-") for i in range(6)]
    # Each board on its own scale: each one's largest value gets the top colour.
    for i, p in enumerate(panels):
        top = chess.square_name(int(values[i].argmax()))
        assert p[top]["fill"] == COLORMAPS["Reds"](1.0)
    # Two rows of three; "turn" puts black at the bottom of the black-to-move boards.
    assert panels[0]["a1"]["y"] == panels[2]["a1"]["y"] and panels[3]["a8"]["y"] > panels[0]["a1"]["y"]
    assert panels[1]["a1"]["y"] < panels[1]["a8"]["y"] and panels[0]["a1"]["y"] > panels[0]["a8"]["y"]
    with pytest.raises(InputShapeError, match="2 boards but values for 6"):
        render_grid(boards[:2], values, contrast="max")


def test_lczeroboard_delegates_to_render_heatmap() -> None:
    from lczerolens import board as board_module

    if not hasattr(board_module, "LczeroBoard") or not hasattr(board_module.LczeroBoard, "render_heatmap"):
        pytest.skip("LczeroBoard.render_heatmap not landed yet (lczerolens/board.py)")
    board = board_module.LczeroBoard(BLACK_TO_MOVE)
    values = _values_with_peak(chess.E4, chess.C6)
    hm = board.render_heatmap(values, move="e7e5", orientation="turn")
    assert hm.svg == render_heatmap(chess.Board(BLACK_TO_MOVE), values, move="e7e5", orientation="turn").svg


def test_pictures_inlined_together_keep_their_own_colour_bars() -> None:
    # Jupyter inlines every SVG into one HTML page: a gradient id shared by two different maps would make the
    # second colour bar paint the first one's colours.
    signed = render_heatmap(chess.Board(), np.linspace(-1, 1, 64), contrast="max").svg
    magnitude = render_heatmap(chess.Board(), np.linspace(0, 1, 64), contrast="max").svg
    grad_ids = [next(ET.fromstring(svg).iter(NS + "linearGradient")).get("id") for svg in (signed, magnitude)]
    assert grad_ids[0] != grad_ids[1]
    for svg, gid in zip((signed, magnitude), grad_ids, strict=True):
        assert f'fill="url(#{gid})"' in svg
    # A sequential scale has no signs on its ticks.
    ticks = [el.text for el in _colorbar(magnitude) if el.get("class") == "colorbar-tick"]
    assert ticks == ["0", "0.5", "1"]


@pytest.mark.parametrize(
    "uci, fen, orientation",
    [("e7e8n", "8/4P3/8/8/8/k7/8/K7 w - - 0 1", chess.WHITE), ("e2e1q", "k7/8/K7/8/8/8/4p3/8 b - - 0 1", chess.BLACK)],
)
def test_promotion_shows_the_promoted_piece_on_its_square(uci, fen, orientation):
    board = LczeroBoard(fen)
    move = chess.Move.from_uci(uci)
    root = ET.fromstring(board.render_heatmap([0.0] * 64, move=move, orientation=orientation).svg)
    badges = [el for el in root.iter() if el.get("class") == "promotion"]
    assert len(badges) == 1
    piece = chess.Piece(move.promotion, board.turn)
    assert badges[0].get("data-piece") == piece.symbol()
    x, y = map(float, re.search(r"translate\(([-\d.]+), ([-\d.]+)\)", badges[0].get("transform")).groups())
    square = next(el for el in root.iter() if el.get("data-square") == chess.square_name(move.to_square))
    sx, sy, size = float(square.get("x")), float(square.get("y")), float(square.get("width"))
    assert sx <= x < sx + size and sy <= y < sy + size


def test_robust_contrast_clips_the_top_squares_marks_them_and_labels_the_ends() -> None:
    from lczerolens.visual import robust_limit

    values = np.zeros(64)
    values[:40] = np.linspace(0.01, 0.4, 40)
    values[chess.F1] = 4.0  # one square far above the rest, as the moving piece often is
    values[chess.A8] = -0.3
    limit = robust_limit([values])
    assert limit == pytest.approx(np.percentile(np.abs(values[values != 0]), 98.0))
    hm = render_heatmap(chess.Board(), values)  # the default contrast is "robust"
    assert hm.vmax == pytest.approx(limit) and limit < 4.0
    squares = _squares(hm.svg)
    cmap = COLORMAPS["RdBu_r"]
    assert squares["f1"]["fill"] == cmap(1.0)
    # A square at a tenth of the limit shows a colour of its own (under "max" it would be near white).
    c = chess.square_name(int(np.argmin(np.abs(values[:40] - 0.1 * limit))))
    assert squares[c]["fill"] == cmap(0.5 + 0.5 * values[chess.parse_square(c)] / limit)
    root = ET.fromstring(hm.svg)
    marked = [el.get("class") for el in root.iter(NS + "polygon") if "clipped" in el.get("class", "")]
    assert "clipped square-f1" in marked and len(marked) == int((np.abs(values) > limit).sum())
    ticks = [el.text for el in _colorbar(hm.svg) if el.get("class") == "colorbar-tick"]
    assert ticks[-1].startswith("\u2265") and not ticks[0].startswith("\u2264")
    # "max" clips nothing and marks nothing.
    plain = render_heatmap(chess.Board(), values, contrast="max")
    assert plain.vmax == 4.0 and "clipped" not in plain.svg
    with pytest.raises(RenderError, match="unknown contrast"):
        render_heatmap(chess.Board(), values, contrast="loud")


def test_power_contrast_keeps_real_values_on_the_colour_bar() -> None:
    values = np.linspace(-4.0, 4.0, 64)
    hm = render_heatmap(chess.Board(), values, contrast="power")
    assert (hm.vmin, hm.vmax) == (-4.0, 4.0)
    ticks = [float(el.get("data-value")) for el in _colorbar(hm.svg) if el.get("class") == "colorbar-tick"]
    assert ticks == [-4.0, -1.0, 0.0, 1.0, 4.0]  # 1 = 4 * 0.5 ** 2 sits halfway up: colours follow sqrt(|v| / 4)
    squares = _squares(hm.svg)
    v = values[chess.E5]
    assert squares["e5"]["fill"] == COLORMAPS["RdBu_r"](0.5 + 0.5 * np.sign(v) * np.sqrt(abs(v) / 4.0))


def test_grid_scale_groups_share_a_scale_within_each_group() -> None:
    values = np.ones((4, 64))
    values[:2] *= np.linspace(0, 1, 64)
    values[2:] *= np.linspace(0, 10, 64)
    grid = render_grid(chess.Board(), values, shared_scale=["a", "a", "b", "b"], contrast="max")
    bars = [el for el in ET.fromstring(grid.svg).iter() if el.get("class") == "colorbar"]
    assert [float(b.get("data-vmax")) for b in bars] == [1.0, 1.0, 10.0, 10.0]
    with pytest.raises(InputShapeError, match="3 scale keys for 4 boards"):
        render_grid(chess.Board(), values, shared_scale=["a", "b", "c"])
