"""``lczerolens report``: one self-contained HTML file with every ply's maps of a game precomputed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lczerolens.explorer.page import report_page
from lczerolens.explorer.session import ExplorerSession


def write_report(
    model: Any,
    pgn: str | Path,
    out: str | Path,
    *,
    game: int = 0,
    targets: Sequence[str] = ("top", "value"),
    lens: str = "lrp",
    batch_size: int = 128,
    layer: str | None = None,
    channels: int = 3,
) -> Path:
    """Write the explorer for game ``game`` of ``pgn`` as one HTML file: scripts, styles and data inline.

    Every position of the game is explained for each of ``targets`` (``top``, ``value``, ``win``, ``draw``,
    ``loss``) with ``lens`` (a name from :meth:`ExplorerSession.lens_names`), in batches of ``batch_size``
    positions (one lens call per target for a game of up to ``batch_size`` positions).
    The file opens from disk with no server and no network.

    With ``layer`` (a block's name, e.g. ``"block3/conv2/relu"``; an LRP lens only) the report also holds the layer
    view of every ply: the latent relevance map and the CRP maps of that ply's ``channels`` top channels (one
    more lens call per ply and target, and about 2.5 KB per map). The attention view is not in reports
    (``lczerolens serve`` and the widget have it).

    Example
    -------
    >>> write_report(model, "game.pgn", "game.html", targets=["top", "value"])  # doctest: +SKIP
    PosixPath('game.html')
    """
    from lczerolens.errors import InvalidOptionError
    from lczerolens.explorer.session import HEAD_TARGETS

    for target in targets:
        if target not in HEAD_TARGETS:
            raise InvalidOptionError(f"report target {target!r}: use {', '.join(HEAD_TARGETS)} (moves differ per ply)")
    session = ExplorerSession(
        model, Path(pgn), lens=lens, target=targets[0] if targets else "top", game=game, prefetch=False
    )
    if not targets:
        targets = ("top",)
    meta = session.meta()
    meta["lenses"] = [lens]
    meta["layers"] = [layer] if layer else []
    meta["attention_layers"] = []  # the attention view needs the network: serve or the widget
    views: dict[str, Any] = {}
    states = [(i, ()) for i in range(len(session.boards))]
    for target in dict.fromkeys(targets):
        for start in range(0, len(states), batch_size):
            chunk = states[start : start + batch_size]
            for (index, _), view in zip(chunk, session.views(chunk, target, lens), strict=True):
                views[f"{index}|{target}|{lens}"] = view
            if layer:
                indices = [index for index, _ in chunk]
                summaries = session.layer_summaries(indices, target, lens, layer, channels=channels)
                for index, summary in zip(indices, summaries, strict=True):
                    views[f"{index}|{target}|{lens}"]["layers"] = {layer: summary}
    meta["targets"] = list(dict.fromkeys(["top", "value", "win", "draw", "loss"]))
    path = Path(out)
    path.write_text(report_page(f"lczerolens report: {session.title}", meta, views), encoding="utf-8")
    return path
