"""The explorer: step through positions, switch targets and lenses, and share what you see.

- :func:`explore` (a notebook widget), ``lczerolens serve`` (:func:`make_server`, a local page) and
  ``lczerolens report`` (:func:`write_report`, one self-contained HTML file) show the same front end
  (``static/explorer.js``) over one Python core, :class:`ExplorerSession`.
- The page follows one DOM contract: a root ``[data-lczerolens-explorer]`` with ``data-fen`` and ``data-ply``,
  64 ``[data-square="e4"]`` with ``data-value``, ``[data-target-value]``, ``[data-action="next"|"prev"]``,
  ``select[name="target"]`` and ``select[name="lens"]``.
"""

from __future__ import annotations

from typing import Any

from lczerolens.explorer.session import ExplorerSession, load_source

__all__ = ["ExplorerSession", "explore", "load_source", "make_server", "write_report"]


def explore(model: Any, source: Any = None, *, lens: Any = None, target: str | None = None, game: int = 0) -> Any:
    """A notebook widget to explore ``model`` on ``source`` (needs ``pip install lczerolens[explore]``).

    Parameters
    ----------
    model : LczeroModel
    source : optional
        A board, a FEN, a PGN path or PGN text (``game`` picks one, 0-based), or a list of boards. Default: the
        starting position.
    lens : str or lens, optional
        ``"lrp"`` (``LrpLens()``, the default), an LRP preset name (``"epsilon"``, ``"gamma"``, ...),
        ``"gradient"``, ``"gradient_x_input"``, ``"integrated_gradients"``, ``"smoothgrad"``, ``"occlusion"``, or
        an attribution lens object.
    target : str, optional
        ``"top"`` (default), ``"value"``, ``"win"``, ``"draw"``, ``"loss"`` or a legal move in UCI.

    Returns
    -------
    ExplorerWidget
        An ``anywidget.AnyWidget``; its ``view`` trait holds what it shows.

    Example
    -------
    >>> explore(model, "assets/cache/chess-data/pgn/kasparov-deep-blue-1997.pgn")  # doctest: +SKIP
    """
    try:
        from lczerolens.explorer.widget import ExplorerWidget
    except ImportError as exc:  # anywidget is an optional extra
        from lczerolens.visual import MissingDependencyError

        raise MissingDependencyError("explore() needs anywidget: pip install 'lczerolens[explore]'") from exc
    return ExplorerWidget(ExplorerSession(model, source, lens=lens, target=target, game=game))


def __getattr__(name: str) -> Any:
    if name == "make_server":
        from lczerolens.explorer.server import make_server

        return make_server
    if name == "write_report":
        from lczerolens.explorer.report import write_report

        return write_report
    raise AttributeError(f"module 'lczerolens.explorer' has no attribute {name!r}")
