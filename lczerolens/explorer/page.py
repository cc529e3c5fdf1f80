"""The explorer's front end as files and HTML pages (the served page and the self-contained report)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 16px; background: #fff; }}
{css}
</style>
</head>
<body>
<div id="lczerolens-app"></div>
{body}
</body>
</html>
"""


def asset(name: str) -> str:
    """The text of ``static/<name>`` (``explorer.js`` or ``explorer.css``)."""
    if name not in ("explorer.js", "explorer.css"):
        raise KeyError(name)
    return resources.files("lczerolens.explorer").joinpath("static", name).read_text(encoding="utf-8")


def _escape_title(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json_for_script(data: Any) -> str:
    # Inside <script>, "</" could close the element early; JSON allows "<\\/".
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def served_page(title: str) -> str:
    """The page ``lczerolens serve`` hands out at ``/``: it loads the module and asks the server for views."""
    body = """<script type="module">
import { mount } from "./static/explorer.js";
const get = async (url) => {
  const r = await fetch(url);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
};
const meta = await get("./api/meta");
mount(document.getElementById("lczerolens-app"), {
  meta,
  request: (s) => get(`./api/view?index=${s.index}&moves=${encodeURIComponent(s.moves.join(","))}`
    + `&target=${encodeURIComponent(s.target)}&lens=${encodeURIComponent(s.lens)}`
    + `&layer=${encodeURIComponent(s.layer || "")}&channel=${s.channel ?? ""}`
    + `&attention=${encodeURIComponent(s.attention || "")}&query=${encodeURIComponent(s.query || "")}`),
});
</script>"""
    return _TEMPLATE.format(title=_escape_title(title), css=asset("explorer.css"), body=body)


def report_page(title: str, meta: dict[str, Any], views: dict[str, Any]) -> str:
    """One HTML file with the module, the styles and every view inline (opens from disk, no network)."""
    js = asset("explorer.js")
    body = (
        '<script type="application/json" id="lczerolens-data">'
        + _json_for_script({"meta": meta, "views": views})
        + "</script>\n<script type=\"module\">\n"
        + js
        + """
const data = JSON.parse(document.getElementById("lczerolens-data").textContent);
mount(document.getElementById("lczerolens-app"), {
  meta: data.meta,
  request: async (s) => {
    if (s.moves.length) {
      return { error: "this report holds the game's own positions; lczerolens serve plays moves" };
    }
    const v = data.views[`${s.index}|${s.target}|${s.lens}`];
    if (!v) return { error: `${s.target} with lens ${s.lens} is not in this report (lczerolens report --target ...)` };
    const out = { ...v };
    delete out.layers;
    const L = s.layer && v.layers ? v.layers[s.layer] : null;
    if (L) {
      // The report holds each ply's top channels; a channel chosen at another ply falls back to this one's top.
      const c = s.channel !== null && L.crps[String(s.channel)] ? s.channel : L.order[0];
      out.layer = {
        layer: L.layer, latent: L.latent, channels: L.channels, count: L.count, channel: c, crp: L.crps[String(c)],
      };
    }
    return out;
  },
});
</script>"""
    )
    return _TEMPLATE.format(title=_escape_title(title), css=asset("explorer.css"), body=body)
