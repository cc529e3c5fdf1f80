"""A picture of one position through the depth of a network: value, and the final top move's probability and rank.

:func:`render_depth` draws what :class:`~lczerolens.lenses.LogitLens` (or a tuned lens) read after every layer
for one board, as one self-contained SVG (no scripts, no fonts to fetch): the board with the network's final top
move on the left; on the right, the value (W - L, side to move) per layer, and under it the probability the layer
gives that move (softmax over the legal moves) with its rank among the legal moves. It returns a
:class:`~lczerolens.visual.Heatmap` (shown inline by Jupyter, saved as ``.svg`` or ``.png``). Each point carries
``data-layer``, ``data-value``, ``data-probability`` and ``data-rank`` so a script can read the picture back.

Example
-------
>>> from lczerolens import LczeroBoard, LczeroModel
>>> from lczerolens.lenses import LogitLens
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> board = LczeroBoard()
>>> outputs = LogitLens().outputs(model, [board])  # doctest: +SKIP
>>> render_depth(outputs, board).save("depth.svg")  # doctest: +SKIP
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import chess
import chess.svg

from lczerolens.visual import (
    ARROW_COLOR,
    BOARD_COLORS,
    MUTED_COLOR,
    TEXT_COLOR,
    Heatmap,
    RenderError,
    _caption_lines,
    _document,
    _num,
    _strip_namespaces,
    _text,
)

__all__ = ["render_depth"]

VALUE_COLOR = "#2b6cb0"
MOVE_COLOR = "#c05621"


def _row(outputs: Any, index: int) -> tuple[list[str], list[Any]]:
    """Layer names and each layer's entry for board ``index`` of a lens's outputs."""
    try:
        names = [str(k) for k in outputs.keys()]
    except AttributeError:
        raise RenderError(
            f"outputs must be what LogitLens().outputs(model, boards) returns, not {type(outputs).__name__}"
        ) from None
    if not names:
        raise RenderError("outputs hold no layers")
    entries = []
    for name in names:
        entry = outputs[name]
        if not hasattr(entry, "keys") or "policy" not in entry.keys() or "value" not in entry.keys():
            raise RenderError(f"outputs[{name!r}] has no 'policy' and 'value': pass a LogitLens/TunedLens output")
        n = int(entry["policy"].shape[0])
        if not -n <= index < n:
            raise RenderError(f"index {index} is out of range for outputs of {n} boards")
        entries.append(entry)
    return names, entries


def render_depth(
    outputs: Any,
    board: chess.Board,
    *,
    index: int = 0,
    input_format: Any = None,
    caption: str | None = None,
    size: float | None = None,
) -> Heatmap:
    """Value and the final top move's probability and rank after every layer, for one board.

    Parameters
    ----------
    outputs : TensorDict
        What :meth:`LogitLens.outputs <lczerolens.lenses.LogitLens.outputs>` (or a :class:`TunedLens`) returned;
        its last layer is the network's output.
    board : chess.Board
        The position of row ``index`` (for its legal moves and the picture).
    index : int
        Which board of ``outputs`` to draw.
    input_format : InputFormat, optional
        The network's input format (``model.input_format``), which decides the policy index of each move;
        default classical.
    caption : str, optional
        Text under the chart (default: the move and the FEN).
    size : float, optional
        Width in pixels of the written picture (it keeps its proportions).

    Returns
    -------
    Heatmap
        The SVG picture (``vmin``/``vmax`` are -1 and 1, the value axis).

    Example
    -------
    >>> render_depth(LogitLens().outputs(model, [board]), board)  # doctest: +SKIP
    """
    import torch

    from lczerolens.board import InputFormat, LczeroBoard

    if not isinstance(board, chess.Board):
        raise RenderError(f"board must be a chess.Board / LczeroBoard, not {type(board).__name__}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise RenderError(f"index must be an int, not {index!r}")
    names, entries = _row(outputs, index)
    lc0_board = board if isinstance(board, LczeroBoard) else LczeroBoard.from_board(board)
    fmt = input_format if input_format is not None else InputFormat.CLASSICAL_112_PLANE
    legal_moves = list(lc0_board.legal_moves)
    if not legal_moves:
        raise RenderError(f"{board.fen()} has no legal move: there is no top move to follow through depth")
    legal = torch.as_tensor(lc0_board.legal_move_indices(fmt), dtype=torch.long)
    final = entries[-1]["policy"][index].float().cpu()[legal]
    top = int(final.argmax())
    move = legal_moves[top]
    values, probs, ranks = [], [], []
    for entry in entries:
        logits = entry["policy"][index].float().cpu()[legal]
        p = torch.softmax(logits, dim=0)
        probs.append(float(p[top]))
        ranks.append(int((logits > logits[top]).sum()) + 1)
        values.append(float(entry["value"][index]))

    board_px = 240
    left = board_px + 30
    plot_w = max(300, 44 * len(names))
    width = left + 50 + plot_w + 20
    panel_h = 120
    top_v, top_p = 40, 40 + panel_h + 50
    label_y = top_p + panel_h + 16
    lines = _caption_lines(caption) or [f"top move {lc0_board.san(move)} ({move.uci()}), {board.fen()}"]
    height = label_y + 56 + 16 * len(lines)
    svg = _document(width, height, size, "value and the final top move through the network's depth")
    ET.SubElement(svg, "rect", {"x": "0", "y": "0", "width": _num(width), "height": _num(height), "fill": "#ffffff"})

    arrows = [chess.svg.Arrow(move.from_square, move.to_square, color=ARROW_COLOR)]
    inner = _strip_namespaces(ET.fromstring(chess.svg.board(board, arrows=arrows, colors=BOARD_COLORS)))
    inner.attrib.update({"x": "10", "y": _num(top_v), "width": _num(board_px), "height": _num(board_px)})
    inner.attrib.pop("version", None)
    svg.append(inner)

    x0 = left + 40

    def x_at(i: int) -> float:
        return x0 + (i + 0.5) * plot_w / len(names)

    def panel(y0: float, lo: float, hi: float, ticks: list[float], title: str, color: str) -> ET.Element:
        group = ET.SubElement(svg, "g", {"class": "panel"})
        group.append(_text(x0, y0 - 8, title, 13, TEXT_COLOR, "panel-title", weight="bold"))
        ET.SubElement(group, "rect", {"x": _num(x0), "y": _num(y0), "width": _num(plot_w), "height": _num(panel_h),
                                      "fill": "none", "stroke": "#bbbbbb"})
        for tick in ticks:
            y = y0 + panel_h * (hi - tick) / (hi - lo)
            ET.SubElement(group, "line", {"x1": _num(x0), "x2": _num(x0 + plot_w), "y1": _num(y), "y2": _num(y),
                                          "stroke": "#e2e2e2" if tick else "#999999"})
            group.append(_text(x0 - 6, y + 4, f"{tick:g}", 11, MUTED_COLOR, "tick", anchor="end"))
        return group

    def y_in(y0: float, lo: float, hi: float, v: float) -> float:
        return y0 + panel_h * (hi - min(max(v, lo), hi)) / (hi - lo)

    vg = panel(top_v, -1.0, 1.0, [-1.0, -0.5, 0.0, 0.5, 1.0], "value (W - L, side to move)", VALUE_COLOR)
    pg = panel(top_p, 0.0, 1.0, [0.0, 0.5, 1.0], f"probability of {lc0_board.san(move)} (rank)", MOVE_COLOR)
    for group, y0, lo, hi, series, color in ((vg, top_v, -1.0, 1.0, values, VALUE_COLOR),
                                             (pg, top_p, 0.0, 1.0, probs, MOVE_COLOR)):
        points = " ".join(f"{_num(x_at(i))},{_num(y_in(y0, lo, hi, v))}" for i, v in enumerate(series))
        ET.SubElement(group, "polyline", {"points": points, "fill": "none", "stroke": color, "stroke-width": "2"})
    for i, name in enumerate(names):
        attrs = {"data-layer": name, "data-value": repr(values[i]), "data-probability": repr(probs[i]),
                 "data-rank": str(ranks[i])}
        dot = ET.SubElement(vg, "circle", {"class": "point value", "cx": _num(x_at(i)),
                                           "cy": _num(y_in(top_v, -1, 1, values[i])), "r": "3.5",
                                           "fill": VALUE_COLOR, **attrs})
        ET.SubElement(dot, "title").text = f"{name}: value {values[i]:+.3f}"
        dot = ET.SubElement(pg, "circle", {"class": "point move", "cx": _num(x_at(i)),
                                           "cy": _num(y_in(top_p, 0, 1, probs[i])), "r": "3.5",
                                           "fill": MOVE_COLOR, **attrs})
        ET.SubElement(dot, "title").text = f"{name}: {100 * probs[i]:.1f}%, rank {ranks[i]} of {len(legal_moves)}"
        pg.append(_text(x_at(i), y_in(top_p, 0, 1, probs[i]) - 7, f"#{ranks[i]}", 10, MUTED_COLOR, "rank",
                        anchor="middle"))
        label = _text(x_at(i), label_y, name, 10, TEXT_COLOR, "layer", anchor="end")
        label.set("transform", f"rotate(-35 {_num(x_at(i))} {_num(label_y)})")
        svg.append(label)
    for k, line in enumerate(lines):
        svg.append(_text(10, label_y + 56 + 16 * k, line, 12, MUTED_COLOR, "caption"))
    text = ET.tostring(svg, encoding="unicode")
    out_w = size if size else width
    return Heatmap(text, out_w, out_w * height / width, -1.0, 1.0)
