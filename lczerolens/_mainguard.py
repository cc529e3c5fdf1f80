"""Whether worker processes can start from here: the ``if __name__ == "__main__":`` guard of a script.

Worker processes are *spawned* (a fork after torch started its threads can deadlock): each one starts a fresh
interpreter and imports the script that started the run, under the name ``__mp_main__``, to find what it
defines. A script that calls :func:`lczerolens.run.explain_dataset` at its top level, unguarded, would start the
run again inside every worker; Python refuses that with a ``RuntimeError`` about the "bootstrapping phase" in each
worker and the parent sees a ``BrokenProcessPool``. :func:`check_main_guard` tells the user before any process
starts, and :func:`guard_hint` words the same advice for a pool that broke anyway.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from lczerolens.errors import RunError

_GUARD = 'if __name__ == "__main__":'


def _has_guard(source: str) -> bool:
    """Whether the module's top level has an ``if __name__ == "__main__":`` (either operand order)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return True  # not ours to judge
    for node in tree.body:
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
            continue
        operands = [node.test.left, *node.test.comparators]
        names = [o.id for o in operands if isinstance(o, ast.Name)]
        texts = [o.value for o in operands if isinstance(o, ast.Constant)]
        if "__name__" in names and "__main__" in texts:
            return True
    return False


def main_script() -> Path | None:
    """The file of the running ``__main__`` module, or None (an interactive session, Jupyter, ``python -c``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    return Path(path)


def guard_hint(workers: int) -> str:
    """The advice, naming the running script."""
    script = main_script()
    where = f"the script {str(script)!r}" if script is not None else "the script that started the run"
    return (
        f"explain_dataset(workers={workers}) starts worker processes with 'spawn', and each imports {where} "
        f"again: put the code that starts the run under `{_GUARD}` (as in the README's collections example), "
        "or use workers=1"
    )


def check_main_guard(workers: int) -> None:
    """Raise :class:`RunError` when ``workers > 1`` would start processes from a script without the guard.

    The script is the ``__main__`` module's file (``python script.py`` or ``python -m module``); an interactive
    session, Jupyter or ``python -c`` has none and needs no guard.
    """
    if workers <= 1:
        return
    script = main_script()
    if script is None:
        return
    try:
        source = script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    if not _has_guard(source):
        raise RunError(guard_hint(workers))
