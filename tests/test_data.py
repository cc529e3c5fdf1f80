"""lczerolens.data: streaming PGN/EPD readers against python-chess's own reading of real and broken files."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import chess
import chess.pgn
import pytest

from lczerolens.board import LczeroBoard
from lczerolens.data import read_epd, read_pgn, read_positions
from lczerolens.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CHESS_DATA = ROOT / "assets" / "cache" / "chess-data"

GAME_A = """[Event "A"]
[White "w"]
[Black "b"]
[Result "1-0"]

1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 (3... Nf6 4. O-O) 4. Ba4 Nf6 1-0
"""
GAME_ILLEGAL = """[Event "B"]
[Result "*"]

1. d4 d5 2. Ke3 Kxe1 3. c4 *
"""
GAME_C = """[Event "C"]
[FEN "4k3/8/8/8/8/8/4P3/4K3 w - - 0 1"]
[SetUp "1"]
[Result "*"]

1. e4 Kd7 2. e5 *
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _asset(relative: str) -> Path:
    path = CHESS_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} missing: run `make assets`")
    return path


def _mainlines(path: Path) -> list[tuple[chess.Board, list[chess.Move], dict]]:
    games = []
    with open(path, encoding="utf-8-sig") as handle:
        while (game := chess.pgn.read_game(handle)) is not None:
            games.append((game.board(), list(game.mainline_moves()), dict(game.headers)))
    return games


def test_real_pgn_matches_python_chess_mainlines() -> None:
    path = _asset("pgn/kasparov-deep-blue-1997.pgn")
    games = _mainlines(path)
    positions = list(read_pgn(path))
    assert len(positions) == sum(len(moves) + 1 for _, moves, _ in games)
    by_game: dict[int, list] = {}
    for p in positions:
        by_game.setdefault(p.game, []).append(p)
    assert sorted(by_game) == list(range(len(games)))
    for index, (root, moves, headers) in enumerate(games):
        plies = by_game[index]
        assert [p.ply for p in plies] == list(range(len(moves) + 1))
        for p in plies:
            assert isinstance(p.board, LczeroBoard)
            assert p.board.move_stack == moves[: p.ply]  # the game's history
            assert p.played == (moves[p.ply] if p.ply < len(moves) else None)
            assert p.info == headers and p.source == path.name
        board = root.copy()
        for move in moves:
            board.push(move)
        assert plies[-1].board.fen() == board.fen()


def test_compressed_streams_read_the_same(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    text = GAME_A + "\n" + GAME_C
    plain = _write(tmp_path, "g.pgn", text)
    (tmp_path / "g.pgn.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "g.pgn.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    expected = [(p.game, p.ply, p.board.fen(), p.played) for p in read_pgn(plain)]
    assert len(expected) == 9 + 4
    for name in ("g.pgn.gz", "g.pgn.zst"):
        got = [(p.game, p.ply, p.board.fen(), p.played) for p in read_positions(tmp_path / name)]
        assert got == expected


def test_variations_are_skipped_and_setup_fen_is_the_root(tmp_path: Path) -> None:
    positions = list(read_pgn(_write(tmp_path, "g.pgn", GAME_A + "\n" + GAME_C)))
    a = [p for p in positions if p.game == 0]
    assert [m.uci() for m in a[-1].board.move_stack] == "e2e4 e7e5 g1f3 b8c6 f1b5 a7a6 b5a4 g8f6".split()
    c = [p for p in positions if p.game == 1]
    assert c[0].board.fen() == "4k3/8/8/8/8/8/4P3/4K3 w - - 0 1" and c[0].info["Event"] == "C"
    assert c[-1].board.move_stack == [chess.Move.from_uci(u) for u in ("e2e4", "e8d7", "e4e5")]


def test_selection_every_and_ply_range(tmp_path: Path) -> None:
    path = _write(tmp_path, "g.pgn", GAME_A)
    assert [p.ply for p in read_pgn(path, every=3)] == [0, 3, 6]
    assert [p.ply for p in read_pgn(path, min_ply=2, max_ply=5)] == [2, 3, 4, 5]
    assert [p.ply for p in read_pgn(path, every=2, min_ply=3, max_ply=7)] == [4, 6]
    for bad in ({"every": 0}, {"min_ply": -1}, {"max_ply": 1, "min_ply": 2}, {"sample": 0}, {"sample": 1.5}):
        with pytest.raises(DataError):
            read_pgn(path, **bad)


def test_seeded_sample_is_exact_reproducible_and_in_file_order() -> None:
    path = _asset("pgn/kasparov-deep-blue-1997.pgn")
    keys = [(p.game, p.ply) for p in read_pgn(path, sample=40, seed=7)]
    assert len(keys) == 40 and keys == sorted(keys)
    assert keys == [(p.game, p.ply) for p in read_pgn(path, sample=40, seed=7)]
    assert keys != [(p.game, p.ply) for p in read_pgn(path, sample=40, seed=8)]
    # A sample of a selection draws from that selection only; a fraction keeps about that share.
    assert all(p.ply % 4 == 0 for p in read_pgn(path, every=4, sample=10, seed=1))
    n_all = read_pgn(path).count()
    assert read_pgn(path, sample=n_all + 5).count() == n_all
    assert 0.1 * n_all < read_pgn(path, sample=0.25, seed=2).count() < 0.4 * n_all


def test_bad_games_are_skipped_counted_and_located(tmp_path: Path) -> None:
    text = GAME_A + "\n" + GAME_ILLEGAL + "\n" + GAME_C
    reader = read_pgn(_write(tmp_path, "g.pgn", text))
    games = sorted({p.game for p in reader})
    assert games == [0, 2]
    assert reader.n_skipped == 1
    (skip,) = reader.skipped
    assert skip.game == 1 and skip.line == text.splitlines().index('[Event "B"]') + 1
    assert "Ke3" in skip.reason and "g.pgn:" in reader.report()


def test_garbage_truncation_and_variants_never_stop_the_stream(tmp_path: Path) -> None:
    text = (
        "this is not a pgn file\n\n"
        + GAME_A
        + "\n"
        + '[Event "D"]\n[Variant "Atomic"]\n\n1. e4 e5 *\n\n'
        + GAME_C
        + "\n"
        + '[Event "E"]\n\n1. e4 e5 2. Nf'
    )
    reader = read_pgn(_write(tmp_path, "g.pgn", text))
    events = sorted({p.info.get("Event") for p in reader})
    assert "A" in events and "C" in events and "D" not in events
    assert reader.n_skipped >= 2  # the variant and the truncated last game
    assert "Atomic" in reader.report()


def test_truncated_gzip_is_reported_after_the_games_before_it(tmp_path: Path) -> None:
    rng = random.Random(0)  # comments that do not compress away, so the cut falls mid-file
    games = [GAME_A.replace("1-0\n", f"{{{rng.getrandbits(256):x}}} 1-0\n") for _ in range(1000)]
    data = gzip.compress("\n".join(games).encode())
    path = tmp_path / "cut.pgn.gz"
    path.write_bytes(data[: len(data) // 2])
    reader = read_pgn(path)
    n = len({p.game for p in reader})
    assert 0 < n < 1000
    assert reader.n_skipped == 1 and "breaks" in reader.skipped[0].reason


def test_unreadable_sources_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_pgn(tmp_path / "missing.pgn")
    with pytest.raises(DataError, match="folder"):
        read_pgn(tmp_path)
    with pytest.raises(DataError, match="cannot tell the format"):
        read_positions(_write(tmp_path, "x.json", "a,b\n"))


def test_epd_real_suite_and_bad_lines(tmp_path: Path) -> None:
    path = _asset("endgame.epd")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    positions = list(read_epd(path))
    assert len(positions) == len(lines)
    first_board, first_ops = chess.Board.from_epd(lines[0])
    assert positions[0].board.board_fen() == first_board.board_fen() and positions[0].ply == 0
    assert positions[0].info == {k: str(v) for k, v in first_ops.items()} and positions[0].played is None

    text = "# comment\n" + "\n".join(
        [
            "rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1",
            "garbage line here",
            "8/8/8/8/8/8/8/8 w - - bm e4;",
            "4k3/8/8/8/8/8/8/4K2R w K - id \"castle\";",
        ]
    )
    reader = read_epd(_write(tmp_path, "p.epd", text))
    got = list(reader)
    assert [p.game for p in got] == [0, 3] and got[1].info == {"id": "castle"}
    assert reader.n_skipped == 2 and [s.line for s in reader.skipped] == [3, 4]


def test_policy_table_still_ships_in_the_data_package() -> None:
    from lczerolens.policy_index import POLICY_MOVES, generate_policy_moves, load_policy_moves

    assert list(POLICY_MOVES) == load_policy_moves() == generate_policy_moves()


def test_reader_iterates_again_and_memory_holds_one_game(tmp_path: Path) -> None:
    reader = read_pgn(_write(tmp_path, "g.pgn", (GAME_A + "\n") * 3))
    first = [(p.game, p.ply) for p in reader]
    assert first == [(p.game, p.ply) for p in reader] and len(first) == 27
    assert isinstance(iter(reader), io.IOBase) is False
