"""The explorer as a notebook widget (anywidget: JupyterLab, Notebook 7, VS Code, Colab, marimo)."""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets

from lczerolens.errors import LczeroLensError
from lczerolens.explorer.page import asset
from lczerolens.explorer.session import ExplorerSession


class ExplorerWidget(anywidget.AnyWidget):
    """The explorer in a notebook. Python computes every view; the front end draws it.

    Traits: ``meta`` (the source's moves, lenses, layers, values per ply), ``request`` (what the front end asks
    for: ``{index, moves, target, lens, layer, channel, attention, query, request_id}``; setting it from Python
    works too) and ``view`` (the answer:
    :meth:`ExplorerSession.view`'s dict with ``request_id``, or ``{error, request_id}``). :meth:`show` is the
    Python way to move.
    """

    _esm = asset("explorer.js")
    _css = asset("explorer.css")
    meta = traitlets.Dict().tag(sync=True)
    request = traitlets.Dict().tag(sync=True)
    view = traitlets.Dict().tag(sync=True)

    def __init__(self, session: ExplorerSession, **kwargs: Any) -> None:
        self.session = session
        super().__init__(meta=session.meta(), **kwargs)

    @traitlets.observe("request")
    def _on_request(self, change: dict[str, Any]) -> None:
        ask = change["new"] or {}
        rid = ask.get("request_id")
        try:
            index = ask.get("index", 0)
            channel = ask.get("channel")
            view = self.session.view(
                int(index),
                [str(m) for m in ask.get("moves", [])],
                str(ask.get("target", self.session.default_target)),
                str(ask.get("lens", self.session.default_lens)),
                layer=str(ask["layer"]) if ask.get("layer") else None,
                channel=None if channel is None or channel == "" else int(channel),
                attention=str(ask["attention"]) if ask.get("attention") else None,
                query=str(ask["query"]) if ask.get("query") else None,
            )
        except (LczeroLensError, ValueError, TypeError) as exc:
            self.view = {"error": " ".join(str(exc).split()), "request_id": rid}
            return
        view["request_id"] = rid
        self.view = view

    def show(
        self,
        index: int = 0,
        moves: tuple[str, ...] | list[str] = (),
        target: str | None = None,
        lens: str | None = None,
        *,
        layer: str | None = None,
        channel: int | None = None,
        attention: str | None = None,
        query: str | None = None,
    ) -> dict[str, Any]:
        """Compute and show a view from Python; returns it (``{"error": ...}`` if the request was bad).

        ``layer`` opens the layer view (``channel``: its CRP channel), ``attention`` the attention view of that
        encoder layer (``query``: the query square), as :meth:`ExplorerSession.view` takes them.
        """
        self.request = {
            "index": index,
            "moves": list(moves),
            "target": target or self.session.default_target,
            "lens": lens or self.session.default_lens,
            "layer": layer or "",
            "channel": channel,
            "attention": attention or "",
            "query": query or "",
            "request_id": f"py-{id(self)}-{index}-{list(moves)}-{target}-{lens}-{layer}-{channel}-{attention}-{query}",
        }
        return dict(self.view)
