"""``python -m lczerolens``: the same as the ``lczerolens`` command."""

from lczerolens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
