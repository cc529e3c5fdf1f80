"""Heatmaps of per-square values (relevance, attributions, masks) drawn on a chess board, as self-contained SVG.

:func:`render_heatmap` draws one board: python-chess's :mod:`chess.svg` draws the board, the pieces, the
coordinates and the move arrow; this module fills each square with its value through a colour map and adds a
colour bar with its scale and an optional caption, all in one SVG document (no external files, no fonts to
fetch, no scripts). :func:`render_grid` puts several boards side by side with one shared colour bar.
Both return a :class:`Heatmap`, which Jupyter shows inline and which saves as ``.svg`` or ``.png``.

Conventions
-----------
- ``values`` are in *board orientation*: an ``[8, 8]`` array indexed ``[rank, file]`` (so
  ``values.flatten()[chess.E4]`` is e4) or a flat ``[64]`` array indexed by python-chess square. Torch tensors,
  numpy arrays and nested lists are accepted.
- Signed values (relevance) use a *diverging* map centred on zero: positive red, negative blue, zero a neutral
  near-white. Values that are all ``>= 0`` (magnitudes, masks) use a *sequential* map from white.
- The scale is per board by default (``norm="symmetric"``: ``[-m, m]`` with ``m = max |value|``); pass
  ``vmax=`` to share one scale across several pictures, or ``norm="absolute"`` to draw magnitudes ``|value|``.
- Each square's filled rectangle carries ``id="square-e4"`` (``"b{i}-square-e4"`` for board ``i`` of a grid),
  ``data-square="e4"`` and ``data-value`` (the value as given), so a test or a script can read a picture back.

Example
-------
>>> import chess, numpy as np
>>> from lczerolens.visual import render_heatmap
>>> values = np.zeros(64)
>>> values[chess.E4] = 1.0
>>> heatmap = render_heatmap(chess.Board(), values, move="e2e4", caption="toy values")
>>> heatmap.svg.startswith("<svg")
True
>>> 'id="square-e4"' in heatmap.svg
True
"""

from __future__ import annotations

import hashlib
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, Union

import chess
import chess.svg
import numpy as np

from lczerolens.errors import InputShapeError, LczeroLensError

if TYPE_CHECKING:
    import torch  # for annotations only: drawing never imports torch

__all__ = [
    "COLORMAPS",
    "Colormap",
    "Heatmap",
    "MissingDependencyError",
    "RenderError",
    "CONTRASTS",
    "DEFAULT_CONTRAST",
    "get_cmap",
    "robust_limit",
    "render_grid",
    "render_heatmap",
]

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"

# Geometry of chess.svg's board (coordinates on): 8 squares of 45 units inside a 15-unit margin.
SQUARE = chess.svg.SQUARE_SIZE
MARGIN = 15
BOARD = 8 * SQUARE + 2 * MARGIN

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
TEXT_COLOR = "#262626"
MUTED_COLOR = "#5f5f5f"
ARROW_COLOR = "#1f7a3a"
ARROW_OPACITY = 0.8
#: Colour of the corner triangle that marks a square whose value lies beyond the colour scale.
CLIP_MARK_COLOR = "#111111"
# chess.svg's coordinate margin, a light frame so that the heat colours stand out.
BOARD_COLORS = {"margin": "#e8e8e8", "coord": "#4a4a4a"}


class RenderError(LczeroLensError, ValueError):
    """A rendering option that cannot be honoured (unknown colour map, orientation, norm or file type)."""


class MissingDependencyError(LczeroLensError, ImportError):
    """An optional dependency (cairosvg for PNG export) is not installed or cannot load its C library."""


# ---------------------------------------------------------------------------------------------------------
# Colour maps
# ---------------------------------------------------------------------------------------------------------

ColorLike = Union[str, Sequence[float]]  # noqa: UP007 (a runtime alias: py3.10 needs Union)
#: Values on squares: a torch tensor, a numpy array or (nested) lists of numbers.
ValuesLike: TypeAlias = Union["torch.Tensor", np.ndarray, Sequence[float], Sequence[Sequence[float]]]  # noqa: UP007
#: Which side is at the bottom: ``"white"``, ``"black"``, ``"turn"`` (the side to move), chess.WHITE or chess.BLACK.
OrientationLike: TypeAlias = Union[chess.Color, str]  # noqa: UP007 (a runtime alias)
#: A move to draw as an arrow: a ``chess.Move``, a UCI string or ``None`` (no arrow).
MoveArg: TypeAlias = Union[chess.Move, str, None]  # noqa: UP007 (a runtime alias)


def _hex_to_rgb(color: str) -> tuple[float, float, float]:
    c = color.lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    if len(c) not in (6, 8) or any(ch not in "0123456789abcdefABCDEF" for ch in c):
        raise RenderError(f"colour {color!r} is not a hex colour like '#b2182b'")
    return tuple(int(c[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def _rgb_to_hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(min(max(float(v), 0.0), 1.0) * 255):02x}" for v in rgb[:3])


def _to_hex(color: Any) -> str:
    """A colour from a user's colour map as ``#rrggbb``: a hex string or an (r, g, b[, a]) tuple in [0, 1]."""
    if isinstance(color, str):
        return _rgb_to_hex(_hex_to_rgb(color))
    try:
        parts = [float(v) for v in color]
    except TypeError as exc:
        raise RenderError(
            f"colour map returned {color!r}; return a hex string or an (r, g, b[, a]) tuple in [0, 1]"
        ) from exc
    if len(parts) not in (3, 4) or not all(0.0 <= v <= 1.0 for v in parts):
        raise RenderError(f"colour map returned {color!r}; return a hex string or an (r, g, b[, a]) tuple in [0, 1]")
    return _rgb_to_hex(parts)


@dataclass(frozen=True)
class Colormap:
    """A colour map: ``cmap(t)`` for ``t`` in ``[0, 1]`` gives ``"#rrggbb"``.

    Built-in maps interpolate linearly in sRGB between evenly spaced anchor colours. ``diverging`` says whether
    the map has a neutral middle (``t = 0.5`` is zero) and suits signed values.

    Example
    -------
    >>> get_cmap("RdBu_r")(0.5)
    '#f7f7f7'
    """

    name: str
    anchors: tuple[str, ...]
    diverging: bool

    def __call__(self, t: float) -> str:
        t = min(max(float(t), 0.0), 1.0)
        pos = t * (len(self.anchors) - 1)
        i = min(int(pos), len(self.anchors) - 2)
        frac = pos - i
        lo, hi = _hex_to_rgb(self.anchors[i]), _hex_to_rgb(self.anchors[i + 1])
        return _rgb_to_hex([a + (b - a) * frac for a, b in zip(lo, hi, strict=True)])

    def reversed(self) -> Colormap:
        """The same map run backwards (``"RdBu_r"`` is ``"RdBu"`` reversed)."""
        name = self.name[:-2] if self.name.endswith("_r") else self.name + "_r"
        return Colormap(name, tuple(reversed(self.anchors)), self.diverging)


# Anchor colours: ColorBrewer's 9-class schemes (their darkest ends are left out of the diverging maps so
# that black pieces stay readable on the most relevant squares), Moreland's cool-warm and matplotlib's viridis.
# Names follow matplotlib's direction: the first colour is for low values, "_r" reverses.
_MAPS = [
    Colormap(
        "RdBu",
        ("#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac"),
        True,
    ),
    Colormap(
        "coolwarm",
        ("#3b4cc0", "#6a8bef", "#9abbff", "#c9d7f0", "#eeeeee", "#f2cbb7", "#f7a889", "#e26952", "#b40426"),
        True,
    ),
    Colormap(
        "PiYG",
        ("#c51b7d", "#de77ae", "#f1b6da", "#fde0ef", "#f7f7f7", "#e6f5d0", "#b8e186", "#7fbc41", "#4d9221"),
        True,
    ),
    Colormap(
        "PuOr",
        ("#b35806", "#e08214", "#fdb863", "#fee0b6", "#f7f7f7", "#d8daeb", "#b2abd2", "#8073ac", "#542788"),
        True,
    ),
    Colormap(
        "Reds",
        ("#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15"),
        False,
    ),
    Colormap(
        "Blues",
        ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c"),
        False,
    ),
    Colormap(
        "Greys",
        ("#ffffff", "#f0f0f0", "#d9d9d9", "#bdbdbd", "#969696", "#737373", "#525252", "#252525"),
        False,
    ),
    Colormap(
        "viridis",
        (
            "#440154",
            "#482878",
            "#3e4989",
            "#31688e",
            "#26828e",
            "#1f9e89",
            "#35b779",
            "#6ece58",
            "#b5de2b",
            "#fde725",
        ),
        False,
    ),
]
COLORMAPS: dict[str, Colormap] = {}
for _m in _MAPS:
    COLORMAPS[_m.name] = _m
    COLORMAPS[_m.name + "_r"] = _m.reversed()
del _m

DEFAULT_DIVERGING = "RdBu_r"  # negative blue, zero white, positive red
DEFAULT_SEQUENTIAL = "Reds"  # zero white, large red


def get_cmap(cmap: str | Callable[[float], ColorLike]) -> Callable[[float], str]:
    """A colour map by name (case-insensitive, ``"_r"`` reverses) or a user's callable, as ``t -> "#rrggbb"``.

    A callable takes ``t`` in ``[0, 1]`` and returns a hex colour or an ``(r, g, b[, a])`` tuple of floats in
    ``[0, 1]`` (so a matplotlib colormap works as is; alpha is ignored).

    Example
    -------
    >>> get_cmap("reds")(0.0)
    '#fff5f0'
    >>> get_cmap(lambda t: (t, 0.0, 1.0 - t))(1.0)
    '#ff0000'
    """
    if isinstance(cmap, str):
        for name, m in COLORMAPS.items():
            if name.lower() == cmap.lower():
                return m
        names = ", ".join(m.name for m in _MAPS)
        raise RenderError(f"unknown colour map {cmap!r}; use one of {names} (add '_r' to reverse) or a callable")
    if callable(cmap):
        user = cmap
        return lambda t: _to_hex(user(float(t)))
    raise RenderError(f"cmap must be a colour map name or a callable t -> colour, not {type(cmap).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Values, scales and options
# ---------------------------------------------------------------------------------------------------------


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputShapeError(f"values must be numbers ([8, 8] or [64]), got {type(values).__name__}") from exc


def _as_square_values(values: Any) -> np.ndarray:
    """One board's values as float64 ``[64]`` indexed by python-chess square."""
    arr = _to_numpy(values)
    if arr.shape in ((1, 8, 8), (1, 64)):
        arr = arr[0]
    if arr.shape not in ((8, 8), (64,)):
        raise InputShapeError(
            f"values have shape {list(arr.shape)}; expected [8, 8] (board orientation, [rank, file]) or [64]"
        )
    arr = arr.reshape(64)
    if not np.all(np.isfinite(arr)):
        bad = [chess.SQUARE_NAMES[s] for s in np.flatnonzero(~np.isfinite(arr))[:4]]
        raise InputShapeError(f"values are not finite on {', '.join(bad)}; replace NaN/inf before rendering")
    return arr


def _as_batch_values(values: Any, n: int | None) -> list[np.ndarray]:
    if isinstance(values, (list, tuple)) and values and not isinstance(values[0], (int, float)):
        batch = [_as_square_values(v) for v in values]
    else:
        arr = _to_numpy(values)
        if arr.ndim == 3 and arr.shape[1:] == (8, 8):
            arr = arr.reshape(arr.shape[0], 64)
        if arr.ndim != 2 or arr.shape[1] != 64:
            raise InputShapeError(f"values for a grid have shape {list(arr.shape)}; expected [N, 8, 8] or [N, 64]")
        batch = [_as_square_values(row) for row in arr]
    if not batch:
        raise InputShapeError("render_grid needs at least one board's values")
    if n is not None and len(batch) != n:
        raise InputShapeError(f"got {n} boards but values for {len(batch)}; give one [8, 8] per board")
    return batch


#: Contrasts of a colour scale (``contrast=`` of :func:`render_heatmap`, :func:`render_grid` and the CLI):
#:
#: - ``"robust"`` (default): the limit is the :data:`ROBUST_PERCENTILE` th percentile of ``|value|`` over the
#:   squares that are not zero, so the few largest squares (often the moving piece) do not wash out the rest;
#:   squares beyond the limit are drawn saturated and marked with a corner triangle, and the colour bar's ends read
#:   ``>=`` / ``<=``;
#: - ``"max"``: the limit is the largest ``|value|`` (nothing is clipped; one square can set the whole scale);
#: - ``"power"``: the limit is the largest ``|value|`` and colours follow ``sign(v) |v / limit| ** 0.5``
#:   (:data:`POWER`), so small values show without clipping; the colour bar's ticks keep real values.
CONTRASTS = ("robust", "max", "power")
#: The percentile of ``|value|`` (over nonzero squares) that sets the ``"robust"`` limit.
ROBUST_PERCENTILE = 98.0
#: The exponent of the ``"power"`` contrast.
POWER = 0.5


@dataclass(frozen=True)
class _Scale:
    """Maps a value to ``t`` in [0, 1]: ``[-vmax, vmax]`` (diverging) or ``[0, vmax]`` (sequential).

    ``power`` < 1 stretches small values (``t`` follows ``|v / vmax| ** power``); ``peak`` is the largest
    ``|value|`` drawn (above ``vmax`` when the scale clips).
    """

    vmax: float
    diverging: bool
    absolute: bool
    power: float = 1.0
    peak: float = 0.0
    low: float = 0.0

    @property
    def vmin(self) -> float:
        return -self.vmax if self.diverging else 0.0

    @property
    def clips_high(self) -> bool:
        """Some value lies above the top of the scale (drawn saturated)."""
        return self.peak > self.vmax * (1 + 1e-9) and self.vmax > 0

    @property
    def clips_low(self) -> bool:
        """Some value lies below the bottom of a diverging scale."""
        return self.diverging and -self.low > self.vmax * (1 + 1e-9) and self.vmax > 0

    def clipped(self, value: float) -> bool:
        """True where ``value`` lies beyond the scale (drawn saturated, marked)."""
        v = abs(value) if (self.absolute or self.diverging) else value
        return self.vmax > 0 and v > self.vmax * (1 + 1e-9)

    def t(self, value: float) -> float:
        v = abs(value) if self.absolute else value
        if self.vmax <= 0:
            return 0.5 if self.diverging else 0.0
        r = v / self.vmax
        if self.power != 1.0:
            r = math.copysign(min(abs(r), 1.0) ** self.power, r)
        if self.diverging:
            return min(max(0.5 + 0.5 * r, 0.0), 1.0)
        return min(max(r, 0.0), 1.0)


def robust_limit(arrays: Sequence[Any], percentile: float | None = None) -> float:
    """The ``"robust"`` colour limit: the ``percentile`` th percentile of ``|value|`` over the nonzero values.

    Example
    -------
    >>> robust_limit([np.array([0.0, 0.1, -0.2, 0.3, 5.0])], 50.0)
    0.25
    """
    values = np.abs(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return 0.0
    return float(np.percentile(values, ROBUST_PERCENTILE if percentile is None else percentile))


def _make_scale(
    arrays: Sequence[np.ndarray], norm: str | None, vmax: float | None, contrast: str | None = None
) -> _Scale:
    if norm is not None and norm not in ("symmetric", "absolute"):
        raise RenderError(f"unknown norm {norm!r}; use 'symmetric', 'absolute' or leave it out")
    contrast = DEFAULT_CONTRAST if contrast is None else contrast
    if contrast not in CONTRASTS:
        raise RenderError(f"unknown contrast {contrast!r}; use one of {CONTRASTS}")
    signed = any(bool((a < 0).any()) for a in arrays)
    absolute = norm == "absolute"
    diverging = norm == "symmetric" or (norm is None and signed)
    peak = max(float(np.abs(a).max()) for a in arrays) if (absolute or diverging) else max(
        float(a.max()) for a in arrays)
    low = min(float(a.min()) for a in arrays)
    if vmax is None:
        top = max(float(np.abs(a).max()) for a in arrays)
        if contrast == "robust":
            limit = robust_limit(arrays)
            top = limit if limit > 0 else top
    else:
        try:
            top = float(vmax)  # also numpy and 0-d torch scalars, e.g. a batch's relevance.abs().max()
        except (TypeError, ValueError):
            top = float("nan")
        if not (math.isfinite(top) and top > 0):
            raise RenderError(f"vmax must be a positive number, not {vmax!r}")
    return _Scale(top, diverging, absolute, POWER if contrast == "power" else 1.0, peak, low)


#: The contrast the renderers use when none is given (see :data:`CONTRASTS`).
DEFAULT_CONTRAST = "robust"


def _resolve_cmap(cmap: Any, scale: _Scale) -> Callable[[float], str]:
    if cmap is None:
        cmap = DEFAULT_DIVERGING if scale.diverging else DEFAULT_SEQUENTIAL
    return get_cmap(cmap)


def _resolve_orientation(orientation: Any, board: chess.BaseBoard) -> bool:
    """The colour at the bottom of the picture."""
    if isinstance(orientation, str):
        key = orientation.lower()
        if key == "white":
            return chess.WHITE
        if key == "black":
            return chess.BLACK
        if key == "turn":
            return getattr(board, "turn", chess.WHITE)
    elif isinstance(orientation, (bool, np.bool_)):
        return bool(orientation)
    raise RenderError(
        f"unknown orientation {orientation!r}; use 'white' (default), 'black', 'turn' (side to move at the "
        "bottom), chess.WHITE or chess.BLACK"
    )


def _resolve_move(move: Any, board: chess.BaseBoard) -> chess.Move | None:
    if move is None:
        return None
    if isinstance(move, chess.Move):
        return move
    if isinstance(move, str):
        try:
            return chess.Move.from_uci(move)
        except (chess.InvalidMoveError, ValueError) as exc:
            raise RenderError(f"move {move!r} is not a UCI move like 'e2e4'") from exc
    raise RenderError(f"move must be a chess.Move or a UCI string, not {type(move).__name__}")


def _fmt(x: float) -> str:
    """A short tick label: 3 significant digits, scientific only for very small or large numbers."""
    if x == 0:
        return "0"
    sign = "+" if x > 0 else "\u2212"  # a real minus sign reads better than a hyphen
    a = abs(x)
    text = f"{a:.2e}" if a < 1e-3 or a >= 1e5 else f"{a:.3g}"
    return sign + text


def _caption_lines(caption: Any) -> list[str]:
    if caption is None:
        return []
    if isinstance(caption, str):
        return [line for line in caption.splitlines() if line.strip()]
    return [str(line) for line in caption]


def _text_width(text: str, size: float) -> float:
    """A generous estimate of a text's width in user units (no font metrics in a pure-Python SVG writer)."""
    return 0.58 * size * len(text)


# ---------------------------------------------------------------------------------------------------------
# SVG building
# ---------------------------------------------------------------------------------------------------------


def _strip_namespaces(root: ET.Element) -> ET.Element:
    """Turn parsed ``{ns}tag`` names back into plain ones, so the pieces join our namespace-free tree."""
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.startswith("{"):
            el.tag = el.tag.split("}", 1)[1]
        for key in list(el.attrib):
            if key.startswith("{" + XLINK_NS + "}"):
                el.attrib["xlink:" + key.split("}", 1)[1]] = el.attrib.pop(key)
            elif key.startswith("{"):
                el.attrib[key.split("}", 1)[1]] = el.attrib.pop(key)
    return root


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _board_group(
    board: chess.BaseBoard,
    values: np.ndarray,
    colors: list[str],
    orientation: bool,
    move: chess.Move | None,
    id_prefix: str,
    defs: dict[str, ET.Element],
    coordinates: bool,
    clipped: Sequence[bool] | None = None,
) -> ET.Element:
    """The board drawn by chess.svg with each square filled by its colour, as a ``<g>`` at the origin.

    Squares flagged in ``clipped`` (values beyond the colour scale) get a small triangle in their top-right corner.
    """
    arrows = []
    if move is not None and move.from_square != move.to_square:
        arrows.append(chess.svg.Arrow(move.from_square, move.to_square, color=ARROW_COLOR))
    text = chess.svg.board(board, orientation=orientation, arrows=arrows, coordinates=coordinates, colors=BOARD_COLORS)
    root = _strip_namespaces(ET.fromstring(text))
    group = ET.Element("g", {"class": "board", "data-fen": board.fen() if hasattr(board, "fen") else ""})
    for child in list(root):
        if child.tag == "desc":
            continue
        if child.tag == "defs":
            for d in child:
                defs.setdefault(d.get("id", ""), d)
            continue
        cls = child.get("class", "").split()
        if child.tag == "rect" and "square" in cls:
            name = cls[-1]
            square = chess.parse_square(name)
            child.set("id", f"{id_prefix}square-{name}")
            child.set("class", " ".join([*cls, f"square-{name}"]))
            child.set("fill", colors[square])
            child.set("data-square", name)
            child.set("data-value", repr(float(values[square])))
            # Hovering a square in a browser shows its value.
            ET.SubElement(child, "title").text = f"{name}: {float(values[square]):+.4g}"
        elif child.tag == "g" and len(child) == 1 and child[0].tag == "path" and "d" in child[0].attrib:
            # A coordinate letter: chess.svg writes each glyph's outline twice per board. One copy in <defs>,
            # referenced by <use>, keeps grids of many boards small.
            path = child[0]
            glyph_id = "glyph-" + hashlib.sha1(path.get("d", "").encode()).hexdigest()[:10]
            if glyph_id not in defs:
                defs[glyph_id] = ET.Element("path", {"id": glyph_id, "d": path.get("d", "")})
            child.remove(path)
            ET.SubElement(child, "use", {"href": f"#{glyph_id}", "xlink:href": f"#{glyph_id}"})
            child.set("class", "coord")
        elif "arrow" in cls and move is not None:
            child.set("class", "arrow move-arrow")
            child.set("opacity", str(ARROW_OPACITY))
            child.set("data-move", move.uci())
        group.append(child)
    # Hairlines between squares: with heat colours instead of light/dark squares the grid still reads.
    offset = MARGIN if coordinates else 0
    grid = ET.Element("g", {"class": "grid", "stroke": "#000000", "stroke-opacity": "0.12", "stroke-width": "1"})
    for k in range(1, 8):
        p = offset + k * SQUARE
        ET.SubElement(grid, "line", {"x1": _num(p), "y1": _num(offset), "x2": _num(p), "y2": _num(offset + 8 * SQUARE)})
        ET.SubElement(grid, "line", {"x1": _num(offset), "y1": _num(p), "x2": _num(offset + 8 * SQUARE), "y2": _num(p)})
    # Right after the last square rect, so the lines sit under the pieces and the arrow.
    last_square = max(i for i, el in enumerate(group) if "square" in el.get("class", "").split())
    group.insert(last_square + 1, grid)
    if clipped is not None and any(clipped):
        marks = ET.Element("g", {"class": "clipped-marks", "fill": CLIP_MARK_COLOR, "fill-opacity": "0.85"})
        for square in chess.SQUARES:
            if not clipped[square]:
                continue
            file, rank = chess.square_file(square), chess.square_rank(square)
            col, row = (file, 7 - rank) if orientation else (7 - file, rank)
            x1, y0, m = offset + (col + 1) * SQUARE, offset + row * SQUARE, SQUARE * 0.22
            points = f"{_num(x1 - m)},{_num(y0)} {_num(x1)},{_num(y0)} {_num(x1)},{_num(y0 + m)}"
            mark = ET.SubElement(marks, "polygon", {"class": f"clipped square-{chess.square_name(square)}",
                                                    "points": points})
            ET.SubElement(mark, "title").text = f"{chess.square_name(square)}: {float(values[square]):+.4g} (beyond " \
                                                 "the colour scale)"
        group.insert(last_square + 2, marks)
    if move is not None and move.promotion:
        group.append(_promotion_badge(move, board, orientation, offset))
    return group


def _promotion_badge(move: chess.Move, board: chess.BaseBoard, orientation: bool, offset: float) -> ET.Element:
    """The promoted piece, drawn small in the corner of the destination square (a promotion is otherwise a
    one-square arrow that does not say which piece the pawn becomes)."""
    promotion = move.promotion
    if promotion is None:
        raise RenderError(f"move {move.uci()} is not a promotion: it has no promoted piece to draw")
    mover = board.piece_at(move.from_square)
    color = mover.color if mover is not None else chess.square_rank(move.to_square) == 7
    piece = chess.Piece(promotion, color)
    file, rank = chess.square_file(move.to_square), chess.square_rank(move.to_square)
    col, row = (file, 7 - rank) if orientation else (7 - file, rank)
    scale = 0.5
    x = offset + (col + 1 - scale) * SQUARE
    y = offset + row * SQUARE
    badge = ET.Element(
        "g",
        {
            "class": "promotion",
            "data-piece": piece.symbol(),
            "transform": f"translate({_num(x)}, {_num(y)}) scale({scale})",
        },
    )
    ET.SubElement(
        badge,
        "circle",
        {"cx": _num(SQUARE / 2), "cy": _num(SQUARE / 2), "r": _num(SQUARE / 2), "fill": ARROW_COLOR,
         "fill-opacity": "0.85"},
    )
    glyph = _strip_namespaces(ET.fromstring(chess.svg.piece(piece, size=SQUARE)))
    for child in glyph:
        badge.append(child)
    ET.SubElement(badge, "title").text = f"promotes to {chess.piece_name(promotion)}"
    return badge


def _colorbar(
    scale: _Scale,
    cmap: Callable[[float], str],
    x: float,
    y: float,
    height: float,
    label: str | None,
    bar_id: str,
    defs: dict[str, ET.Element],
) -> tuple[ET.Element, float]:
    """A vertical colour bar (top = ``vmax``) with tick labels; returns the group and its width."""
    width = 14.0
    n_stops = 33
    stops = [cmap(i / (n_stops - 1)) for i in range(n_stops)]
    # Named after its colours: several heatmaps inlined in one HTML page (Jupyter) share one id namespace, and a
    # fixed id would make every colour bar show the first one's gradient. Equal ids now mean equal gradients.
    gradient_id = "colorbar-gradient-" + hashlib.sha1("".join(stops).encode()).hexdigest()[:10]
    grad = ET.Element("linearGradient", {"id": gradient_id, "x1": "0", "y1": "1", "x2": "0", "y2": "0"})
    for i, color in enumerate(stops):
        ET.SubElement(grad, "stop", {"offset": _num(i / (n_stops - 1)), "stop-color": color})
    defs[gradient_id] = grad

    g = ET.Element(
        "g",
        {
            "class": "colorbar",
            "id": bar_id,
            "data-vmin": repr(scale.vmin),
            "data-vmax": repr(scale.vmax),
            "data-cmap-low": cmap(0.0),
            "data-cmap-high": cmap(1.0),
            "font-family": FONT,
        },
    )
    ET.SubElement(
        g,
        "rect",
        {
            "class": "colorbar-fill",
            "x": _num(x),
            "y": _num(y),
            "width": _num(width),
            "height": _num(height),
            "fill": f"url(#{gradient_id})",
            "stroke": "#9a9a9a",
            "stroke-width": "0.8",
        },
    )
    ticks = [scale.vmin, 0.5 * (scale.vmin + scale.vmax), scale.vmax]
    if scale.diverging:
        ticks = [-scale.vmax, -0.5 * scale.vmax, 0.0, 0.5 * scale.vmax, scale.vmax]
    font = 11.0
    widest = 0.0
    if scale.power != 1.0:
        # Ticks at real values: the one halfway up each side of a power scale is vmax * 0.5 ** (1 / power).
        mid = scale.vmax * 0.5 ** (1.0 / scale.power)
        ticks = [-scale.vmax, -mid, 0.0, mid, scale.vmax] if scale.diverging else [0.0, mid, scale.vmax]
    for value in ticks:
        frac = scale.t(value) if scale.vmax > 0 else 0.0
        ty = y + height * (1.0 - frac)
        ET.SubElement(
            g,
            "line",
            {
                "x1": _num(x + width),
                "y1": _num(ty),
                "x2": _num(x + width + 4),
                "y2": _num(ty),
                "stroke": "#6b6b6b",
                "stroke-width": "0.8",
            },
        )
        text = _fmt(value) if scale.vmax > 0 else "0"
        if not scale.diverging:  # a sequential scale has no sign to show
            text = text.lstrip("+")
        # The ends of a clipping scale stand for every value beyond them.
        if value == ticks[-1] and scale.clips_high:
            text = "\u2265" + text
        elif value == ticks[0] and scale.clips_low:
            text = "\u2264" + text
        t_el = ET.SubElement(
            g,
            "text",
            {
                "class": "colorbar-tick",
                "data-value": repr(float(value)),
                "x": _num(x + width + 7),
                "y": _num(ty + font * 0.35),
                "font-size": _num(font),
                "fill": TEXT_COLOR,
            },
        )
        t_el.text = text
        widest = max(widest, _text_width(text, font))
    total = width + 7 + widest
    if label:
        lx = x + total + 4 + font / 2
        ly = y + height / 2
        lab = ET.SubElement(
            g,
            "text",
            {
                "class": "colorbar-label",
                "x": _num(lx),
                "y": _num(ly),
                "font-size": _num(font),
                "fill": MUTED_COLOR,
                "text-anchor": "middle",
                "transform": f"rotate(90 {_num(lx)} {_num(ly)})",
            },
        )
        lab.text = label
        total += 4 + font + 2
    return g, total


def _text(
    x: float, y: float, text: str, size: float, color: str, cls: str, weight: str | None = None, anchor: str = "start"
) -> ET.Element:
    attrs = {
        "class": cls,
        "x": _num(x),
        "y": _num(y),
        "font-size": _num(size),
        "fill": color,
        "font-family": FONT,
        "text-anchor": anchor,
    }
    if weight:
        attrs["font-weight"] = weight
    el = ET.Element("text", attrs)
    el.text = text
    return el


def _document(width: float, height: float, size: float | None, desc: str) -> ET.Element:
    attrs = {
        "xmlns": SVG_NS,
        "xmlns:xlink": XLINK_NS,
        "version": "1.1",
        "viewBox": f"0 0 {_num(width)} {_num(height)}",
        "width": _num(size if size else width),
        "height": _num(size * height / width if size else height),
    }
    svg = ET.Element("svg", attrs)
    d = ET.SubElement(svg, "desc")
    d.text = desc
    return svg


# ---------------------------------------------------------------------------------------------------------
# The picture
# ---------------------------------------------------------------------------------------------------------


class Heatmap:
    """A rendered heatmap: SVG text that shows itself in Jupyter and saves as ``.svg`` or ``.png``.

    Attributes
    ----------
    svg : str
        The self-contained SVG document.
    width, height : float
        Its size in pixels (CSS px), as written on the ``<svg>`` element.
    vmin, vmax : float
        The colour scale's range (the ends of the colour bar; ``None`` for a grid with one scale per board).

    Example
    -------
    >>> import chess
    >>> hm = render_heatmap(chess.Board(), [0.0] * 64)
    >>> hm.width > 0 and hm._repr_svg_() == hm.svg
    True
    """

    def __init__(self, svg: str, width: float, height: float, vmin: float | None, vmax: float | None):
        self.svg = svg
        self.width = width
        self.height = height
        self.vmin = vmin
        self.vmax = vmax

    def _repr_svg_(self) -> str:
        return self.svg

    def __repr__(self) -> str:
        scale = "" if self.vmax is None else f", scale [{self.vmin:.3g}, {self.vmax:.3g}]"
        return f"Heatmap({_num(self.width)}x{_num(self.height)} px{scale})"

    def to_png(self, scale: float = 2.0) -> bytes:
        """The picture as PNG bytes, ``scale`` times its SVG size (2 by default, sharp on high-DPI screens).

        PNG goes through cairosvg: it is maintained, has a plain Python API over the cairo library, and needs
        no browser or headless Chrome. It is imported only here, so SVG users never need it.
        """
        try:
            import cairosvg
        except (ImportError, OSError) as exc:  # OSError: cairosvg installed but the cairo library is missing
            raise MissingDependencyError(
                f"PNG export needs cairosvg and the cairo library ({exc}); install them with "
                "`pip install 'lczerolens[png]'` or save as .svg instead"
            ) from exc
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise RenderError(f"scale must be a positive number, not {scale!r}")
        png: bytes = cairosvg.svg2png(bytestring=self.svg.encode("utf-8"), scale=float(scale))
        return png

    def save(self, path: str | Path, scale: float = 2.0) -> Path:
        """Write the picture to ``path``: ``.svg`` as is, ``.png`` through cairosvg (see :meth:`to_png`).

        Returns the path written. Any other suffix raises :class:`RenderError`.

        Example
        -------
        >>> import chess, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "board.svg"
        >>> render_heatmap(chess.Board(), [0.0] * 64).save(out).exists()
        True
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".svg":
            data = self.svg.encode("utf-8")
        elif suffix == ".png":
            data = self.to_png(scale=scale)
        else:
            raise RenderError(f"cannot save a heatmap as {path.name!r}; use a .svg or .png file name")
        if not path.parent.exists():
            raise RenderError(f"cannot save {str(path)!r}: folder {str(path.parent)!r} does not exist")
        path.write_bytes(data)
        return path


def render_heatmap(
    board: chess.BaseBoard,
    values: ValuesLike,
    *,
    move: chess.Move | str | None = None,
    caption: str | Sequence[str] | None = None,
    cmap: str | Callable[[float], ColorLike] | None = None,
    norm: str | None = None,
    vmax: float | None = None,
    orientation: OrientationLike = chess.WHITE,
    label: str | None = None,
    coordinates: bool = True,
    colorbar: bool = True,
    size: float | None = None,
    contrast: str | None = None,
) -> Heatmap:
    """Draw ``values`` on ``board``'s squares as one SVG, with a colour bar, the move's arrow and a caption.

    Parameters
    ----------
    board : chess.BaseBoard
        The position (an :class:`~lczerolens.LczeroBoard` or any python-chess board).
    values : array-like
        ``[8, 8]`` in board orientation (``[rank, file]``) or ``[64]`` by square; torch, numpy or lists.
    move : chess.Move or str, optional
        The explained move, drawn as an arrow from its origin to its destination.
    caption : str or list of str, optional
        Lines of text under the board (network, target, value, ...). The first line is drawn bold.
    cmap : str or callable, optional
        A name from :data:`COLORMAPS` (diverging: ``RdBu_r``, ``coolwarm``, ``PiYG``, ``PuOr``; sequential:
        ``Reds``, ``Blues``, ``Greys``, ``viridis``; ``_r`` reverses) or a callable ``t -> colour`` for ``t``
        in ``[0, 1]`` (a matplotlib colormap works). Default: ``RdBu_r`` for signed scales, ``Reds`` otherwise.
    norm : {None, "symmetric", "absolute"}
        ``None`` (default): ``"symmetric"`` if any value is negative, else a sequential ``[0, max]`` scale.
        ``"symmetric"``: a diverging ``[-m, m]`` scale, zero in the middle. ``"absolute"``: draw ``|value|``
        on a sequential ``[0, m]`` scale. ``m`` is set by ``contrast`` unless ``vmax`` is given.
    vmax : float, optional
        A fixed end of the scale, to compare several pictures on one scale (values beyond it are clipped and
        marked).
    orientation : "white", "black", "turn", chess.WHITE or chess.BLACK
        Which side is at the bottom; ``"turn"`` puts the side to move there. Default: white.
    label : str, optional
        Text along the colour bar (e.g. ``"relevance"``).
    coordinates : bool
        Draw the file and rank letters around the board.
    colorbar : bool
        Draw the colour bar.
    size : float, optional
        Width in pixels of the whole picture (the drawing scales); default: its natural size.
    contrast : {"robust", "max", "power"}, optional
        How the end of the scale ``m`` is chosen (:data:`CONTRASTS`; default :data:`DEFAULT_CONTRAST`):
        ``"robust"``: the 98th percentile of ``|value|`` over the nonzero squares, squares beyond it drawn
        saturated and marked by a corner triangle; ``"max"``: the largest ``|value|``; ``"power"``: the largest
        ``|value|`` with colours following ``sqrt(|v| / m)``. The colour bar is labelled in real values.

    Returns
    -------
    Heatmap

    Example
    -------
    >>> import chess, numpy as np
    >>> board = chess.Board()
    >>> values = np.linspace(-1, 1, 64).reshape(8, 8)
    >>> hm = render_heatmap(board, values, move="g1f3", caption="ramp", orientation="turn")
    >>> (hm.vmin, hm.vmax)
    (-1.0, 1.0)
    """
    squares = _as_square_values(values)
    scale = _make_scale([squares], norm, vmax, contrast)
    colormap = _resolve_cmap(cmap, scale)
    bottom = _resolve_orientation(orientation, board)
    arrow = _resolve_move(move, board)
    lines = _caption_lines(caption)

    defs: dict[str, ET.Element] = {}
    colors = [colormap(scale.t(v)) for v in squares]
    clipped = [scale.clipped(v) for v in squares]
    group = _board_group(board, squares, colors, bottom, arrow, "", defs, coordinates, clipped)

    board_size = BOARD if coordinates else 8 * SQUARE
    pad = 10.0
    width = pad + board_size
    bar = None
    if colorbar:
        top = MARGIN if coordinates else 0
        bar, bar_width = _colorbar(
            scale, colormap, pad + board_size + 14, pad + top, 8 * SQUARE, label, "colorbar", defs
        )
        width += 14 + bar_width
    width += pad
    height = pad + board_size
    caption_els = []
    y = height + 6
    for i, line in enumerate(lines):
        fsize = 13.0 if i == 0 else 12.0
        y += fsize + 4
        caption_els.append(
            _text(pad + 2, y, line, fsize, TEXT_COLOR if i == 0 else MUTED_COLOR, "caption", "bold" if i == 0 else None)
        )
        width = max(width, pad + 2 + _text_width(line, fsize) + pad)
    height = (y + 8 if lines else height) + pad

    desc = "lczerolens heatmap: " + (board.fen() if hasattr(board, "fen") else str(board))
    svg = _document(width, height, size, desc)
    defs_el = ET.SubElement(svg, "defs")
    defs_el.extend(defs.values())
    ET.SubElement(
        svg,
        "rect",
        {"class": "background", "x": "0", "y": "0", "width": _num(width), "height": _num(height), "fill": "#ffffff"},
    )
    group.set("transform", f"translate({_num(pad)} {_num(pad)})")
    svg.append(group)
    if bar is not None:
        svg.append(bar)
    svg.extend(caption_els)
    out_w = size if size else width
    out_h = size * height / width if size else height
    return Heatmap(ET.tostring(svg, encoding="unicode"), out_w, out_h, scale.vmin, scale.vmax)


def render_grid(
    boards: chess.BaseBoard | Sequence[chess.BaseBoard],
    values: ValuesLike | Sequence[ValuesLike],
    titles: Sequence[str] | None = None,
    shared_scale: bool | Sequence[Any] = True,
    ncols: int | None = None,
    *,
    move: MoveArg | Sequence[MoveArg] = None,
    caption: str | Sequence[str] | None = None,
    cmap: str | Callable[[float], ColorLike] | None = None,
    norm: str | None = None,
    vmax: float | None = None,
    orientation: OrientationLike = chess.WHITE,
    label: str | None = None,
    coordinates: bool = True,
    size: float | None = None,
    contrast: str | None = None,
) -> Heatmap:
    """Several heatmaps side by side in one SVG, on one shared colour scale and colour bar by default.

    Use it for a batch of positions, one position explained for several target moves, the relevance of each
    history step, or of each group of input planes.

    Parameters
    ----------
    boards : chess.BaseBoard or sequence of them
        One board per picture, or a single board repeated for every row of ``values``.
    values : array-like
        ``[N, 8, 8]`` or ``[N, 64]`` (board orientation), or a list of ``N`` arrays.
    titles : list of str, optional
        One title per picture, drawn above it.
    shared_scale : bool
        ``True`` (default): one scale for all pictures (from their largest ``|value|``, or ``vmax``) and one
        colour bar. ``False``: each picture on its own scale, with its own colour bar. A sequence of ``N`` keys
        (e.g. each picture's target): pictures with equal keys share one scale, each drawn with its colour bar.
    ncols : int, optional
        Pictures per row (default: all in one row up to 4, then rows of 4).
    move : move or list of moves, optional
        One move for every picture, or one per picture (``None`` for no arrow).
    caption, cmap, norm, vmax, orientation, label, coordinates, size, contrast
        As in :func:`render_heatmap`, applied to every picture (``caption`` goes under the whole grid).

    Returns
    -------
    Heatmap
        ``vmin``/``vmax`` are the shared scale's, or ``None`` when each picture has its own.

    Example
    -------
    >>> import chess, numpy as np
    >>> board = chess.Board()
    >>> grid = render_grid(board, np.random.default_rng(0).normal(size=(3, 64)), titles=["a", "b", "c"])
    >>> grid.svg.count('class="board"')
    3
    """
    batch = _as_batch_values(values, None)
    n = len(batch)
    if isinstance(boards, chess.BaseBoard):
        board_list = [boards] * n
    else:
        board_list = list(boards)
        if len(board_list) == 1 and n > 1:
            board_list = board_list * n
        if len(board_list) != n:
            raise InputShapeError(f"got {len(board_list)} boards but values for {n}; give one [8, 8] per board")
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n:
            raise InputShapeError(f"got {len(titles)} titles for {n} boards")
    if isinstance(move, (list, tuple)):
        moves = list(move)
        if len(moves) != n:
            raise InputShapeError(f"got {len(moves)} moves for {n} boards; give one per board (None: no arrow)")
    else:
        moves = [move] * n
    if ncols is None:
        ncols = n if n <= 4 else 4
    if not (isinstance(ncols, int) and ncols >= 1):
        raise RenderError(f"ncols must be a positive integer, not {ncols!r}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)

    if not isinstance(shared_scale, bool):
        keys = list(shared_scale)
        if len(keys) != n:
            raise InputShapeError(f"got {len(keys)} scale keys for {n} boards; give one per board")
        group_scale = {k: _make_scale([b for b, kb in zip(batch, keys, strict=True) if kb == k], norm, vmax,
                                      contrast) for k in dict.fromkeys(keys)}
        scales = [group_scale[k] for k in keys]
        shared_scale = False
    elif shared_scale:
        scales = [_make_scale(batch, norm, vmax, contrast)] * n
    else:
        scales = [_make_scale([b], norm, vmax, contrast) for b in batch]
    # One colour map for the whole grid: a mix of signed and unsigned per-board scales keeps one look.
    shared_kind = _Scale(1.0, any(s.diverging for s in scales), False)
    colormap = _resolve_cmap(cmap, shared_kind)
    if not shared_scale:
        scales = [_Scale(s.vmax, shared_kind.diverging, s.absolute, s.power, s.peak, s.low) for s in scales]

    defs: dict[str, ET.Element] = {}
    board_size = BOARD if coordinates else 8 * SQUARE
    top = MARGIN if coordinates else 0
    pad, gap = 10.0, 16.0
    title_h = 22.0 if titles else 0.0

    panels: list[ET.Element] = []
    panel_w: float = board_size
    bars: list[tuple[ET.Element, float]] = []
    for i, (b, vals, scale) in enumerate(zip(board_list, batch, scales, strict=True)):
        colors = [colormap(scale.t(v)) for v in vals]
        g = _board_group(
            b,
            vals,
            colors,
            _resolve_orientation(orientation, b),
            _resolve_move(moves[i], b),
            f"b{i}-",
            defs,
            coordinates,
            [scale.clipped(v) for v in vals],
        )
        g.set("data-index", str(i))
        panels.append(g)
        if not shared_scale:
            bar = _colorbar(scale, colormap, 0.0, 0.0, 8 * SQUARE, label, f"colorbar-{i}", defs)
            bars.append(bar)
    if not shared_scale:
        panel_w = board_size + 10 + max(w for _, w in bars)

    svg_children: list[ET.Element] = []
    for i, g in enumerate(panels):
        row, col = divmod(i, ncols)
        x = pad + col * (panel_w + gap)
        y = pad + row * (title_h + board_size + gap)
        if titles:
            svg_children.append(
                _text(x + board_size / 2, y + 15, titles[i], 13.0, TEXT_COLOR, "title", "bold", anchor="middle")
            )
        g.set("transform", f"translate({_num(x)} {_num(y + title_h)})")
        svg_children.append(g)
        if not shared_scale:
            bar_g, _ = bars[i]
            bar_g.set("transform", f"translate({_num(x + board_size + 10)} {_num(y + title_h + top)})")
            svg_children.append(bar_g)

    width = pad + ncols * panel_w + (ncols - 1) * gap
    grid_h = nrows * (title_h + board_size) + (nrows - 1) * gap
    if shared_scale:
        bar_top = pad + title_h + top
        bar_h = grid_h - title_h - 2 * top
        bar_g, bar_w = _colorbar(scales[0], colormap, width + 14, bar_top, bar_h, label, "colorbar", defs)
        svg_children.append(bar_g)
        width += 14 + bar_w
    width += pad
    height = pad + grid_h
    y = height + 6
    for i, line in enumerate(_caption_lines(caption)):
        fsize = 13.0 if i == 0 else 12.0
        y += fsize + 4
        svg_children.append(
            _text(pad + 2, y, line, fsize, TEXT_COLOR if i == 0 else MUTED_COLOR, "caption", "bold" if i == 0 else None)
        )
        width = max(width, pad + 2 + _text_width(line, fsize) + pad)
    height = (y + 8 if caption else height) + pad

    desc = "lczerolens heatmap grid: " + " | ".join(b.fen() if hasattr(b, "fen") else str(b) for b in board_list)
    svg = _document(width, height, size, desc)
    ET.SubElement(svg, "defs").extend(defs.values())
    ET.SubElement(
        svg,
        "rect",
        {"class": "background", "x": "0", "y": "0", "width": _num(width), "height": _num(height), "fill": "#ffffff"},
    )
    svg.extend(svg_children)
    out_w = size if size else width
    out_h = size * height / width if size else height
    vmin_out = scales[0].vmin if shared_scale else None
    vmax_out = scales[0].vmax if shared_scale else None
    return Heatmap(ET.tostring(svg, encoding="unicode"), out_w, out_h, vmin_out, vmax_out)


# ---------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------

#: Colour of the frame drawn around the query square of :func:`render_attention`.
QUERY_COLOR = "#1f4fbf"


def _mark_squares(heatmap: Heatmap, square: int) -> Heatmap:
    """``heatmap`` with a frame around ``square`` on every board it draws."""
    root = _strip_namespaces(ET.fromstring(heatmap.svg))
    root.set("xmlns", SVG_NS)
    root.set("xmlns:xlink", XLINK_NS)
    name = chess.square_name(square)
    targets = [
        group
        for group in root.iter("g")
        if any(c.tag == "rect" and f"square-{name}" in c.get("class", "").split() for c in group)
    ]
    if not targets:
        raise RenderError(f"no square {name} found in the picture")
    for group in targets:
        square_rect = next(c for c in group if c.tag == "rect" and f"square-{name}" in c.get("class", "").split())
        x, y = float(square_rect.get("x", 0)), float(square_rect.get("y", 0))
        w, h = float(square_rect.get("width", SQUARE)), float(square_rect.get("height", SQUARE))
        ET.SubElement(
            group,
            "rect",
            {
                "class": "query",
                "data-square": name,
                "x": _num(x + 2),
                "y": _num(y + 2),
                "width": _num(w - 4),
                "height": _num(h - 4),
                "fill": "none",
                "stroke": QUERY_COLOR,
                "stroke-width": "4",
            },
        )
    return Heatmap(ET.tostring(root, encoding="unicode"), heatmap.width, heatmap.height, heatmap.vmin, heatmap.vmax)


def render_attention(
    board: chess.BaseBoard,
    weights: ValuesLike,
    query: str | int,
    *,
    titles: Sequence[str] | None = None,
    caption: str | Sequence[str] | None = None,
    **options: Any,
) -> Heatmap:
    """Draw where the query square attends: one row of attention weights as a heatmap, the query framed.

    Parameters
    ----------
    board : chess.BaseBoard
        The position the weights belong to.
    weights : array-like
        Board-orientation attention weights (as :class:`lczerolens.lenses.AttentionLens` gives them):
        ``[64, 64]`` for one head (queries x keys), or ``[heads, 64, 64]`` for a grid with one picture per head
        on one colour scale.
    query : str or int
        The query square (``"e4"`` or a python-chess index); its row ``weights[..., query, :]`` is drawn.
    titles : list of str, optional
        For several heads: one title per picture (default ``"head 0"``, ``"head 1"``, ...).
    caption : str or list of str, optional
        Text under the picture (default: which square is the query).
    **options
        Passed to :func:`render_heatmap` (one head) or :func:`render_grid` (several): ``cmap``, ``vmax``,
        ``orientation``, ``size``, ``ncols``, ...

    Returns
    -------
    Heatmap

    Example
    -------
    >>> import chess, numpy as np
    >>> uniform = np.full((2, 64, 64), 1 / 64)
    >>> hm = render_attention(chess.Board(), uniform, "e2")
    >>> hm.svg.count('class="query"'), hm.svg.count('class="board"')
    (2, 2)
    """
    if isinstance(query, str):
        try:
            square = chess.parse_square(query.lower())
        except ValueError:
            raise RenderError(f"query {query!r} is not a square name such as 'e4'") from None
    elif isinstance(query, (int, np.integer)) and not isinstance(query, bool) and 0 <= int(query) < 64:
        square = int(query)
    else:
        raise RenderError(f"query {query!r} is not a square (a name such as 'e4' or an index 0..63)")
    arr = _to_numpy(weights)
    if arr.ndim not in (2, 3) or tuple(arr.shape[-2:]) != (64, 64):
        raise InputShapeError(
            f"attention weights have shape {list(arr.shape)}; expected [64, 64] (one head) or [heads, 64, 64]"
        )
    if caption is None:
        caption = f"attention from {chess.square_name(square)} (framed)"
    options.setdefault("label", "attention weight")
    if arr.ndim == 2:
        heatmap = render_heatmap(board, arr[square], caption=caption, **options)
    else:
        heads = arr.shape[0]
        titles = list(titles) if titles is not None else [f"head {h}" for h in range(heads)]
        heatmap = render_grid(board, arr[:, square, :], titles=titles, caption=caption, **options)
    return _mark_squares(heatmap, square)


def square_colors(
    values: ValuesLike,
    *,
    cmap: str | Callable[[float], ColorLike] | None = None,
    norm: str | None = None,
    vmax: float | None = None,
    stops: int = 33,
) -> dict[str, Any]:
    """The colours :func:`render_heatmap` gives each square, and its colour bar, as plain data (for web pages).

    Parameters
    ----------
    values : array-like
        ``[8, 8]`` (board orientation) or ``[64]`` by square.
    cmap, norm, vmax
        As in :func:`render_heatmap` (the same scale and colour map, so a page matches the SVG).
    stops : int
        How many evenly spaced colours of the colour bar to return (bottom = ``vmin`` first).

    Returns
    -------
    dict
        ``colors``: 64 ``"#rrggbb"`` strings by python-chess square; ``vmin``, ``vmax``: the ends of the scale;
        ``stops``: the colour bar's colours from ``vmin`` to ``vmax``.

    Example
    -------
    >>> out = square_colors([0.0] * 63 + [1.0])
    >>> out["colors"][63], out["vmin"], out["vmax"], len(out["stops"])
    ('#a50f15', 0.0, 1.0, 33)
    """
    squares = _as_square_values(values)
    scale = _make_scale([squares], norm, vmax)
    colormap = _resolve_cmap(cmap, scale)
    n = max(int(stops), 2)
    return {
        "colors": [colormap(scale.t(float(v))) for v in squares],
        "vmin": float(scale.vmin),
        "vmax": float(scale.vmax),
        "stops": [colormap(i / (n - 1)) for i in range(n)],
    }
