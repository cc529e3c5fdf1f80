"""Seeded mutation fuzzing, bounded to seconds: corrupted ``.pb.gz`` / ``.onnx`` files and FENs give a package
error or a model (board) whose outputs are finite -- never another exception and never a silent NaN model.

The long version is ``make fuzz`` (``benchmarks/fuzz.py``: 10,000 cases per kind, in subprocesses, with hang
and crash detection); this one runs a few cases of each kind in-process with the same mutations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fuzz import FAILURES, Subject

CASES = {"pb": 8, "gen-pb": 10, "gen-onnx": 6, "fen": 150}


def fuzz(kind: str, path: Path, cases: int, folder: Path) -> dict[str, int]:
    subject = Subject(kind, path, seed=1234, folder=folder)
    counts: dict[str, int] = {}
    for i in range(cases):
        outcome, detail = subject.run(i)
        assert outcome not in FAILURES, f"{kind} case {i}: {outcome} {detail}"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


@pytest.fixture(scope="module")
def generated(tmp_path_factory, lc0_binary) -> dict[str, Path]:
    from lczerolens.testing import write_random_net

    folder = tmp_path_factory.mktemp("fuzz")
    pb = write_random_net(folder / "gen.pb.gz", blocks=1, filters=8, moves_left=True, seed=7)
    onnx_path = folder / "gen.onnx"
    subprocess.run([str(lc0_binary), "leela2onnx", f"--input={pb}", f"--output={onnx_path}"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return {"gen-pb": pb, "gen-onnx": onnx_path}


def test_fuzz_maia_weights(maia_pb_path, tmp_path):
    counts = fuzz("pb", maia_pb_path, CASES["pb"], tmp_path)
    assert counts.get("error", 0) > 0  # the mutations do corrupt


@pytest.mark.parametrize("kind", ["gen-pb", "gen-onnx"])
def test_fuzz_generated_net(generated, kind, tmp_path):
    counts = fuzz(kind, generated[kind], CASES[kind], tmp_path)
    assert counts.get("error", 0) > 0


def test_fuzz_fens(maia_pb_path, tmp_path):
    counts = fuzz("fen", maia_pb_path, CASES["fen"], tmp_path)
    assert counts.get("error", 0) > 0 and counts.get("changed", 0) > 0


def test_replay_is_deterministic(maia_pb_path):
    import random

    from benchmarks.fuzz import mutate_fen, mutate_pb_gz

    data = maia_pb_path.read_bytes()
    assert mutate_pb_gz(data, random.Random("1:pb:3")) == mutate_pb_gz(data, random.Random("1:pb:3"))
    assert mutate_fen("8/8/8/4k3/8/8/2K5/6Q1 b - - 37 60", random.Random(5)) == mutate_fen(
        "8/8/8/4k3/8/8/2K5/6Q1 b - - 37 60", random.Random(5)
    )


def test_fuzz_script_runs(tmp_path):
    """The long fuzzer's command line, on 2 cases of one kind (subprocess workers, summary table)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz", "--cases", "2", "--workers", "1", "--kinds", "fen"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| fen | 2 |" in proc.stdout
