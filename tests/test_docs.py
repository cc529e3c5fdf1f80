"""The documentation's examples run: every ```python block of docs/*.md, in order, one namespace per page.

A page's blocks run one after another in a fresh namespace (so a later block may use what an earlier one
defined), in a temporary working directory (so files the examples write go nowhere), with ``assets/cache/`` in
the code replaced by the absolute path of this checkout's cache (so the examples can say what a user types).

Left out: a block whose fence says ``title="not run"``, or that follows a ``<!-- skip -->`` line (kept for
things that need what a test machine has not, such as a Ray cluster). A page whose examples need names that
are not in the package yet says so with ``<!-- requires: module:name ... -->``; its blocks are skipped, with
the missing names as the reason, until those names exist. When only some of them exist, the test fails: the
code has landed under other names than the page uses.
"""

from __future__ import annotations

import importlib
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CACHE = ROOT / "assets" / "cache"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)(?P<attrs>[^\n]*)$")
_REQUIRES = re.compile(r"<!--\s*requires:\s*(.*?)\s*-->")
_SKIP = "<!-- skip -->"
_CACHE_PATH = re.compile(r"assets/cache/[\w.+-]+(?:/[\w.+-]+)*")


@dataclass(frozen=True)
class Block:
    """One runnable ```python block: its code and the line of the page it starts on (1-based)."""

    code: str
    line: int


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown page to run, in order (see the module docstring for what is left out)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang, attrs = opening.group("indent", "lang", "attrs")
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"the code fence opened on line {i + 1} is never closed")
        previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        runnable = lang == "python" and 'title="not run"' not in attrs and previous != _SKIP
        if runnable:
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1 : end])
            blocks.append(Block(textwrap.dedent(body), i + 2))
        i = end + 1
    return blocks


def requirements(text: str) -> list[str]:
    """The ``module:name`` entries of the page's ``<!-- requires: ... -->`` lines."""
    return [entry for match in _REQUIRES.finditer(text) for entry in match.group(1).split()]


def missing_requirements(text: str) -> list[str]:
    """The entries of :func:`requirements` that cannot be imported."""
    missing = []
    for entry in requirements(text):
        module, _, name = entry.partition(":")
        try:
            found = importlib.import_module(module)
        except ImportError:
            missing.append(entry)
            continue
        if name and not hasattr(found, name):
            missing.append(entry)
    return missing


PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text(encoding="utf-8")
    missing = missing_requirements(text)
    if missing and len(missing) == len(requirements(text)):
        pytest.skip(f"{page.name} documents names that are not in the package yet: {missing}")
    # Some names there and some not: the code has landed but under other names, and the page must follow it.
    assert not missing, f"{page.name} documents names the package does not have: {missing}"
    blocks = python_blocks(text)
    needed = sorted({m for b in blocks for m in _CACHE_PATH.findall(b.code) if not (ROOT / m).exists()})
    if needed:
        pytest.skip(f"{page.name} needs {needed}; run `make assets`")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    for block in blocks:
        code = block.code.replace("assets/cache/", f"{CACHE.as_posix()}/")
        code = code.replace("assets/nets/", f"{(ROOT / 'assets' / 'nets').as_posix()}/")  # committed networks
        where = f"{page.relative_to(ROOT)}:{block.line}"
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the example at {where} fails: {type(error).__name__}: {error}") from error


def test_blocks_are_found_and_markers_respected() -> None:
    page = textwrap.dedent(
        """\
        Text.

        ```python
        a = 1
        ```

        ```sh
        make demo
        ```

        ```python title="not run"
        import ray
        ```

        <!-- skip -->
        ```python
        cluster()
        ```

        !!! note
            ```python
            b = a + 1
            ```
        """
    )
    blocks = python_blocks(page)
    assert [b.code.strip() for b in blocks] == ["a = 1", "b = a + 1"]
    assert [b.line for b in blocks] == [4, 22]


def test_requirements_name_what_is_missing() -> None:
    text = "<!-- requires: lczerolens.errors:LensError lczerolens.errors:NoSuchName no_such_module_xyz -->"
    assert missing_requirements(text) == ["lczerolens.errors:NoSuchName", "no_such_module_xyz"]


def test_every_guide_page_has_examples() -> None:
    # The pages that teach the Python API must keep runnable examples, so that this suite checks them.
    for name in ("getting-started", "positions", "loading", "lenses", "heatmaps"):
        assert python_blocks((DOCS / f"{name}.md").read_text(encoding="utf-8")), f"docs/{name}.md has no examples"


def test_docstring_extension_fences_doctests_and_converts_tables() -> None:
    # docs/griffe_doctests.py adapts the docstrings for the API reference; the strict build relies on it.
    pytest.importorskip("griffe")
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("griffe_doctests", DOCS / "griffe_doctests.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)

    text = "Summary.\n\nExample\n-------\n>>> [1, 2]\n['d1', 'a1']\n\nMore text."
    fenced = extension._fence_doctests(text).splitlines()
    assert fenced[4:8] == ["```pycon", ">>> [1, 2]", "['d1', 'a1']", "```"]
    numpy_examples = "Summary.\n\nExamples\n--------\n>>> 1\n1"
    assert extension._fence_doctests(numpy_examples) == numpy_examples  # griffe renders these itself

    from lczerolens.lenses.lrp.rules import epsilon

    table = [line for line in extension._convert_tables(inspect.cleandoc(epsilon.__doc__)).splitlines()
             if line.startswith("|")]
    assert table[0] == "| rule | relevance form | signal form |"
    rules = [row.split(" | ")[0].lstrip("| ") for row in table[2:]]
    assert len(rules) == 13 and rules[2] == "bilinear ``z = A @ B``<br>(AttnLRP, uniform)"
