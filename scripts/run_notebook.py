"""Execute a notebook in place from the repository root, its pictures saved as PNG files under notebooks/figures/.

Every SVG output (a Heatmap) becomes ``notebooks/figures/<notebook>-cell<i>.png`` and a Markdown output that shows
it, so the committed notebook stays small (``tests/test_new_user_trial.py`` caps notebooks at 512 KB).

    .venv/bin/python scripts/run_notebook.py notebooks/attention.ipynb
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import cairosvg
    import nbclient
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()
    path = args.notebook.resolve()
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    figures = path.parent / "figures"
    figures.mkdir(exist_ok=True)
    for old in figures.glob(f"{path.stem}-cell*.png"):
        old.unlink()
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            svg = output.get("data", {}).get("image/svg+xml")
            if svg is None:
                continue
            name = f"figures/{path.stem}-cell{i}.png"
            # Large grids at a smaller scale: a picture stays near 150 KB.
            scale = 0.6 if svg.count('class="board"') > 8 else 0.8
            cairosvg.svg2png(bytestring=svg.encode("utf-8"), write_to=str(path.parent / name), scale=scale)
            output["data"] = {
                "text/plain": output["data"].get("text/plain", ""),
                "text/markdown": f"![output of this cell]({name})",
            }
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    nbformat.write(nb, path)
    if errors:
        raise SystemExit(f"{path.name}: {len(errors)} cell(s) raised; see the notebook's outputs")


if __name__ == "__main__":
    main()
