"""lczerolens.run: rows equal the lens on the same boards, exactly-once resume after SIGKILL, workers, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chess
import chess.pgn
import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")

from lczerolens.board import LczeroBoard  # noqa: E402
from lczerolens.data import read_pgn  # noqa: E402
from lczerolens.errors import RunError  # noqa: E402
from lczerolens.lenses import LrpLens  # noqa: E402
from lczerolens.run import COLUMNS, explain_dataset, load_manifest, load_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NEPO = ROOT / "assets" / "cache" / "chess-data" / "pgn" / "nepomniachtchi-liren-game1.pgn"

SMALL_PGN = """[Event "A"]
[Result "1-0"]

1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Ba4 Nf6 5. O-O Be7 1-0

[Event "Mate"]
[Result "1-0"]

1. e4 e5 2. Bc4 Nc6 3. Qh5 Nf6 4. Qxf7# 1-0

[Event "Broken"]
[Result "*"]

1. d4 d5 2. Ke3 *
"""


@pytest.fixture(scope="module")
def maia(maia_pb_path: Path):
    from lczerolens.model import LczeroModel

    return LczeroModel.from_path(maia_pb_path)


@pytest.fixture()
def small_pgn(tmp_path: Path) -> Path:
    path = tmp_path / "small.pgn"
    path.write_text(SMALL_PGN)
    return path


def _games(path: Path) -> list[list[chess.Move]]:
    out = []
    with open(path, encoding="utf-8-sig") as handle:
        while (game := chess.pgn.read_game(handle)) is not None:
            out.append(list(game.mainline_moves()) if not game.errors else None)
    return out


def _check_rows_against_lens(table, pgn: Path, model) -> None:
    """Every row's relevance is LrpLens().relevance on the board rebuilt from the game, same target."""
    games = _games(pgn)
    rows = table.to_pylist()
    lens = LrpLens()
    by_target: dict[str, list[dict]] = {}
    for row in rows:
        moves = games[row["game"]]
        assert row["played"] == (moves[row["ply"]].uci() if row["ply"] < len(moves) else None)
        by_target.setdefault(row["target"], []).append(row)
    for target, group in by_target.items():
        boards = [LczeroBoard.from_moves(games[r["game"]][: r["ply"]]) for r in group]
        for board, r in zip(boards, group, strict=True):
            assert board.fen() == r["fen"]
        arg = None if target == "top" else [r["played"] for r in group] if target == "played" else target
        rel = lens.relevance(model, boards, arg)
        expected = rel.squares.reshape(len(group), 64).numpy()
        got = np.array([r["relevance"] for r in group], dtype=np.float32)
        scale = np.abs(expected).max(axis=1, keepdims=True)
        assert (np.abs(got - expected) <= 1e-5 * scale).all(), target
        assert np.allclose([r["target_value"] for r in group], rel.target.numpy(), rtol=1e-5, atol=1e-6)
        if rel.moves is not None:
            assert [r["move"] for r in group] == [m.uci() for m in rel.moves]
        else:
            assert all(r["move"] is None for r in group)
        # The evaluation columns are the network's own outputs on those boards.
        evaluation = model(boards)
        assert np.allclose([r["value"] for r in group], evaluation["value"].detach().numpy(), atol=1e-5)
        assert np.allclose([r["wdl"] for r in group], evaluation["wdl"].detach().numpy(), atol=1e-5)
        total = rel.planes.sum(dim=(1, 2, 3)).numpy()
        cons = np.array([r["conservation"] for r in group])
        assert np.allclose(cons, total / rel.target.numpy(), rtol=1e-4)


def test_rows_equal_the_lens_on_the_same_boards(maia, small_pgn: Path, tmp_path: Path) -> None:
    out = explain_dataset(
        maia, small_pgn, tmp_path / "run", targets=("top", "played", "value"), batch_size=5, shard_size=7,
        progress=False,
    )  # fmt: skip
    table = load_results(out)
    assert table.column_names == list(COLUMNS)
    assert table.schema.field("relevance").type == pa.list_(pa.float32(), 64)
    assert table.schema.field("wdl").type == pa.list_(pa.float32(), 3)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert {"lczerolens_version", "network_sha256", "network", "input_format", "lens"} <= set(meta)
    assert meta["lens"] == repr(LrpLens()) and meta["network"] == "maia-1900.pb.gz"
    # Game A: 11 positions, game Mate: 8 (the mated one has no top move and no played move), Broken: skipped.
    df = table.to_pandas()
    counts = df.groupby(["game", "target"]).size().to_dict()
    assert counts == {(0, "top"): 11, (0, "played"): 10, (0, "value"): 11, (1, "top"): 7, (1, "played"): 7,
                      (1, "value"): 8}  # fmt: skip
    keys = list(zip(df["game"], df["ply"], df["target"], strict=True))
    assert len(set(keys)) == len(keys)
    manifest = load_manifest(out)
    assert manifest["complete"] and manifest["n_skipped"] == 1 and "Ke3" in manifest["skipped"][0]
    assert np.allclose(np.stack(df["wdl"]).sum(axis=1), 1.0, atol=1e-5)
    _check_rows_against_lens(table, small_pgn, maia)


def test_real_game_rows_equal_the_lens(maia, tmp_path: Path) -> None:
    if not NEPO.exists():
        pytest.skip(f"{NEPO} missing: run `make assets`")
    out = explain_dataset(
        maia, read_pgn(NEPO, every=9, min_ply=20), tmp_path / "run", targets=("top", "played", "win"),
        progress=False,
    )  # fmt: skip
    table = load_results(out)
    assert table.num_rows > 10
    _check_rows_against_lens(table, NEPO, maia)


def _equal_tables(a, b) -> None:
    assert a.num_rows == b.num_rows and a.column_names == b.column_names
    for name in a.column_names:
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        if name in ("relevance", "wdl", "target_value", "value", "conservation", "mlh"):
            x = np.array([np.nan if v is None else v for v in x], dtype=np.float64)
            y = np.array([np.nan if v is None else v for v in y], dtype=np.float64)
            assert np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True), name
        else:
            assert x == y, name


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from lczerolens.data import read_pgn
from lczerolens.run import explain_dataset
explain_dataset(sys.argv[1], read_pgn(sys.argv[2], every=2), sys.argv[3], targets=("top", "value"), batch_size=4,
                shard_size=4, progress=False)
"""


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_rows(maia_pb_path: Path, tmp_path: Path) -> None:
    pgn = tmp_path / "games.pgn"
    pgn.write_text(SMALL_PGN * 3)
    reference = explain_dataset(
        maia_pb_path, read_pgn(pgn, every=2), tmp_path / "ref", targets=("top", "value"), batch_size=4,
        shard_size=4, progress=False,
    )  # fmt: skip
    n_shards = load_manifest(reference)["shards_total"]
    assert n_shards >= 6

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(maia_pb_path), str(pgn), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                done = len(json.loads((out / "manifest.json").read_text())["shards"])
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= 2 or child.poll() is not None:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    manifest = load_manifest(out)
    assert not manifest["complete"] and 0 < len(manifest["shards"]) < n_shards, "kill it mid-way"
    with pytest.raises(RunError, match="unfinished"):
        load_results(out)
    partial = load_results(out, allow_partial=True)
    assert 0 < partial.num_rows < load_results(reference).num_rows
    # What a kill can leave besides: a half-written temporary file and a shard written but not recorded.
    (out / ".part-000099.parquet.1.tmp").write_bytes(b"half")
    missing = next(str(i) for i in range(n_shards) if str(i) not in manifest["shards"])
    (out / f"part-{int(missing):06d}.parquet").write_bytes(b"garbage from a killed run")

    explain_dataset(
        maia_pb_path, read_pgn(pgn, every=2), out, targets=("top", "value"), batch_size=4, shard_size=4,
        progress=False,
    )  # fmt: skip
    _equal_tables(load_results(out), load_results(reference))
    assert not list(out.glob(".*.tmp"))


def test_two_workers_give_the_rows_of_one(maia_pb_path: Path, tmp_path: Path, small_pgn: Path) -> None:
    one = explain_dataset(maia_pb_path, small_pgn, tmp_path / "one", targets=("top", "played"), shard_size=5,
                          progress=False)  # fmt: skip
    # The workers load the network on the device named (the CPU here; the same path takes "cuda").
    two = explain_dataset(maia_pb_path, small_pgn, tmp_path / "two", targets=("top", "played"), shard_size=5,
                          workers=2, progress=False, device="cpu")  # fmt: skip
    _equal_tables(load_results(one), load_results(two))


def test_a_device_that_cannot_be_used_is_refused_before_anything_is_written(
    maia, maia_pb_path: Path, small_pgn: Path, tmp_path: Path
) -> None:
    from lczerolens.errors import InvalidOptionError

    out = tmp_path / "run"
    with pytest.raises(RunError, match="device= is for a network file"):
        explain_dataset(maia, small_pgn, out, device="cpu", progress=False)
    with pytest.raises(RunError, match="Ray engine runs its actors on CPUs"):
        explain_dataset(maia_pb_path, small_pgn, out, device="cuda", engine="ray", progress=False)
    with pytest.raises(InvalidOptionError, match="not a device"):
        explain_dataset(maia_pb_path, small_pgn, out, device="gpu please", progress=False)
    assert not out.exists()


def test_resume_with_other_settings_is_refused(maia, small_pgn: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    explain_dataset(maia, read_pgn(small_pgn, every=3), out, targets=("value",), progress=False)
    before = sorted(p.name for p in out.iterdir())
    manifest = (out / "manifest.json").read_text()
    for changed in (
        {"source": read_pgn(small_pgn, every=2)},
        {"targets": ("value", "top")},
        {"lens": LrpLens(epsilon=1e-3)},
    ):
        kwargs = {"source": read_pgn(small_pgn, every=3), "targets": ("value",), **changed}
        with pytest.raises(RunError, match="other settings"):
            explain_dataset(maia, kwargs.pop("source"), out, progress=False, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "manifest.json").read_text() == manifest
    # A release whose default rules differ: LrpLens() keeps its repr, and the run still refuses to mix the two.
    import lczerolens.lenses.lrp.lens as lens_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lens_module, "RESIDUAL_DEFAULT", {**lens_module.RESIDUAL_DEFAULT, "relu_beta": math.inf})
        with pytest.raises(RunError, match="other settings"):
            explain_dataset(maia, read_pgn(small_pgn, every=3), out, targets=("value",), progress=False)
    # The same call again is a no-op resume.
    explain_dataset(maia, read_pgn(small_pgn, every=3), out, targets=("value",), progress=False)
    assert (out / "manifest.json").read_text() == manifest


def test_bad_outputs_and_arguments(maia, small_pgn: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="non-empty folder"):
        explain_dataset(maia, small_pgn, foreign, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        explain_dataset(maia, small_pgn, a_file, progress=False)
    with pytest.raises(RunError, match="cannot write"):
        explain_dataset(maia, small_pgn, a_file / "sub", progress=False)
    with pytest.raises(RunError, match="unknown target"):
        explain_dataset(maia, small_pgn, tmp_path / "x", targets=("best",), progress=False)
    with pytest.raises(RunError, match="mlh"):
        explain_dataset(maia, small_pgn, tmp_path / "x", targets=("mlh",), progress=False)
    with pytest.raises(RunError, match="engine"):
        explain_dataset(maia, small_pgn, tmp_path / "x", engine="spark", progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(RunError, match="no lczerolens run"):
        load_results(tmp_path)


def test_cli_run_and_summarize(maia_pb_path: Path, small_pgn: Path, tmp_path: Path, capsys) -> None:
    from lczerolens.cli import main

    out = tmp_path / "run"
    argv = ["run", str(maia_pb_path), str(small_pgn), "--out", str(out), "--target", "top", "--target", "value",
            "--every", "2", "--batch-size", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "rows" in printed and "skipped 1 games" in printed and "Ke3" in printed
    table = load_results(out)
    assert set(table.column("target").to_pylist()) == {"top", "value"}
    assert all(p % 2 == 0 for p in table.column("ply").to_pylist())

    svg = tmp_path / "summary.svg"
    assert main(["summarize", str(out), "--out", str(svg)]) == 0
    printed = capsys.readouterr().out
    assert svg.read_text().count('class="board"') == 16  # 2 targets x (all squares + 6 pieces + empty)
    assert "mean target" in printed and "value" in printed

    # Errors: one line on stderr, status 1, nothing written.
    assert main(["run", str(maia_pb_path), str(small_pgn), "--out", str(out), "--target", "played"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lczerolens: error:") and err.count("\n") == 1 and "other settings" in err
    assert main(["run", str(maia_pb_path), str(tmp_path / "none.pgn"), "--out", str(tmp_path / "o")]) == 1
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["summarize", str(tmp_path), "--out", str(svg)]) == 1
    assert "no lczerolens run" in capsys.readouterr().err
