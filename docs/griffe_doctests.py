"""A griffe extension that lets the package's docstrings render well in the API reference.

The docstrings are numpy-style, written for readers of the source and for Sphinx-minded tools:

- doctest lines (``>>> ...`` and their output) appear under an ``Example`` heading (singular, which griffe's
  numpy parser turns into an admonition of plain Markdown) or straight after the summary. In Markdown they
  would run together as text, and an output such as ``['d1', 'a1']`` reads as a cross-reference. Each run of
  doctest lines outside a numpy ``Examples`` section is wrapped in a ``pycon`` code fence here.
- Sphinx roles (``:class:`~lczerolens.errors.LensError```, ``:func:`stabilize```) become inline code
  (``LensError``, ``stabilize``), shortened where the role asks for it with ``~``.
- reStructuredText simple tables (columns under ``====  ====`` rules, as in the rule table of
  :mod:`lczerolens.lenses.lrp.rules.epsilon`) become Markdown tables. A line whose first cell is empty, or starts
  with ``(``, continues the row above on a new line of each cell (the docstrings write a row's qualifier or
  variant on its second line).
- ``.. code-block::`` directives are dropped; the indented block under them stays a code block in Markdown.

Only the rendered text changes; the source docstrings stay as they are (doctest and Sphinx keep working).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
_DASHES = re.compile(r"^\s*-{3,}\s*$")
_RULE = re.compile(r"^(\s*)(=+)(\s+=+)+\s*$")
_CODE_BLOCK = re.compile(r"^\s*\.\. code-block::.*$")


def _role_to_code(match: re.Match[str]) -> str:
    shorten, target = match.groups()
    target = target.strip()
    if target.startswith("~") or shorten:
        target = target.lstrip("~").rsplit(".", 1)[-1]
    return f"`{target}`"


def _fence_doctests(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    section = ""
    in_fence = False
    in_doctest = False
    indent = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        heading = i + 1 < len(lines) and stripped and _DASHES.match(lines[i + 1]) and not in_fence
        if heading:
            section = stripped.lower()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_doctest and (not stripped or heading):
            out.append(indent + "```")
            in_doctest = False
        elif (
            not in_fence
            and not in_doctest
            and section != "examples"
            and stripped.startswith(">>>")
        ):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append(indent + "```")
    return "\n".join(out)


def _cells(line: str, starts: list[int]) -> list[str]:
    """The cells of one table line: chunks split on 2+ spaces, each given to the column it starts in."""
    cells = [""] * len(starts)
    for match in re.finditer(r"\S+(?: \S+)*", line):
        column = max([0] + [k for k, start in enumerate(starts) if start <= match.start() + 2])
        cells[column] = f"{cells[column]} {match.group()}".strip()
    return cells


def _markdown_table(rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header, body = rows[0], rows[1:]
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in body]


def _convert_tables(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        rule = _RULE.match(lines[i])
        if rule is None:
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        rows: list[list[str]] = []
        rules_seen = 1
        i += 1
        while i < len(lines) and rules_seen < 3:
            if _RULE.match(lines[i]):
                rules_seen += 1
            elif lines[i].strip():
                cells = _cells(lines[i], starts)
                if rows and rules_seen == 2 and (not cells[0] or cells[0].startswith("(")):
                    rows[-1] = [f"{a}<br>{b}" if a and b else a or b for a, b in zip(rows[-1], cells, strict=True)]
                else:
                    rows.append(cells)
            i += 1
        out.append("")
        out.extend(_markdown_table(rows))  # at the margin: Markdown tables do not nest in list items
        out.append("")
    return "\n".join(out)


class DoctestBlocks(Extension):
    """Fence doctest lines, turn Sphinx roles into inline code and RST tables into Markdown, in every docstring."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        value = _ROLE.sub(_role_to_code, obj.docstring.value)
        value = "\n".join(line for line in value.splitlines() if not _CODE_BLOCK.match(line))
        if "==" in value:
            value = _convert_tables(value)
        obj.docstring.value = _fence_doctests(value)
