"""lczerolens.data.read_puzzles: Lichess puzzle CSV rows (made here by playing legal moves), filters, bad rows."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import chess
import pytest

from lczerolens.data import Puzzle, read_positions, read_puzzles
from lczerolens.errors import DataError

HEADER = "PuzzleId,FEN,Moves,Rating,RatingDeviation,Popularity,NbPlays,Themes,GameUrl,OpeningTags"
THEMES = ["fork middlegame short", "mateIn2 endgame short", "advantage opening", "crushing fork long"]


def _rows(n: int, seed: int = 0) -> list[tuple[str, str, list[str], int, str]]:
    """(id, FEN before the opponent's move, moves, rating, themes): random legal games cut at a random ply."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        board = chess.Board()
        for _ in range(rng.randrange(6, 30)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        fen = board.fen()
        line = []
        for _ in range(rng.choice([2, 4, 6])):
            moves = list(board.legal_moves)
            if not moves:
                break
            move = rng.choice(moves)
            line.append(move.uci())
            board.push(move)
        if len(line) < 2:
            continue
        pid = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(5))
        rows.append((pid, fen, line, rng.randrange(600, 2900), THEMES[len(rows) % len(THEMES)]))
    return rows


def _csv(rows: list[tuple[str, str, list[str], int, str]], extra: dict[int, str] | None = None) -> str:
    lines = [HEADER]
    for i, (pid, fen, moves, rating, themes) in enumerate(rows):
        if extra and i in extra:
            lines.append(extra[i])
        lines.append(f"{pid},{fen},{' '.join(moves)},{rating},75,94,{1000 + i},{themes},"
                     f"https://lichess.org/abcdefgh#{20 + i},")
    return "\n".join(lines) + "\n"


def test_puzzles_read_as_lichess_defines_them(tmp_path: Path) -> None:
    rows = _rows(12)
    path = tmp_path / "puzzles.csv"
    path.write_text(_csv(rows))
    puzzles = list(read_puzzles(path))
    assert len(puzzles) == 12
    for puzzle, (pid, fen, moves, rating, themes) in zip(puzzles, rows, strict=True):
        assert isinstance(puzzle, Puzzle)
        assert puzzle.id == pid and puzzle.rating == rating and puzzle.themes == themes.split()
        expected = chess.Board(fen)
        expected.push_uci(moves[0])
        assert puzzle.board.fen() == expected.fen()
        # the opponent's move is the board's history
        assert [m.uci() for m in puzzle.board.move_stack] == [moves[0]]
        assert puzzle.fen == chess.Board(fen).fen()
        assert puzzle.solution == moves[1:]
        assert chess.Move.from_uci(puzzle.solution[0]) in puzzle.board.legal_moves
    assert [p.line for p in puzzles] == list(range(2, 14))


def test_filters_rating_and_themes(tmp_path: Path) -> None:
    rows = _rows(20, seed=1)
    path = tmp_path / "p.csv"
    path.write_text(_csv(rows))
    got = [p.id for p in read_puzzles(path, min_rating=1200, max_rating=2000, themes=["fork"])]
    want = [r[0] for r in rows if 1200 <= r[3] <= 2000 and "fork" in r[4].split()]
    assert got == want
    assert [p.id for p in read_puzzles(path, themes="mateIn2")] == [r[0] for r in rows if "mateIn2" in r[4]]
    with pytest.raises(DataError, match="max_rating"):
        read_puzzles(path, min_rating=2000, max_rating=1000)


def test_bad_rows_are_skipped_with_their_line_and_counted(tmp_path: Path) -> None:
    rows = _rows(6, seed=2)
    pid, fen, moves, rating, themes = rows[0]
    bad = {
        1: "bad01,not a fen,e2e4 e7e5,1500,75,90,100,fork,https://lichess.org/x,",
        3: f"bad02,{fen},a1a8 h8h1,1500,75,90,100,fork,https://lichess.org/x,",  # illegal moves
        4: f"bad03,{fen},{moves[0]},1500,75,90,100,fork,https://lichess.org/x,",  # no solution move
        5: f"bad04,{fen},{' '.join(moves)},high,75,90,100,fork,https://lichess.org/x,",
    }
    path = tmp_path / "p.csv"
    path.write_text(_csv(rows, bad))
    reader = read_puzzles(path)
    assert [p.id for p in reader] == [r[0] for r in rows]
    assert reader.n_skipped == 4
    # header = line 1, row 0 = line 2, bad row = line 3, row 1 = 4, row 2 = 5, bad = 6, ...
    assert [s.line for s in reader.skipped] == [3, 6, 8, 10]
    assert "illegal" in reader.skipped[1].reason and "Rating" in reader.skipped[3].reason
    assert "skipped 4 rows" in reader.report()


def test_compressed_files_and_collection_records(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    text = _csv(_rows(5, seed=3))
    plain = tmp_path / "p.csv"
    plain.write_text(text)
    (tmp_path / "p.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "p.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    ids = [p.id for p in read_puzzles(plain)]
    for name in ("p.csv.gz", "p.csv.zst"):
        assert [p.id for p in read_puzzles(tmp_path / name)] == ids
    # a collection source: one position per puzzle, the puzzle's board, played = the first solution move
    reader = read_positions(plain)
    positions = [p for record in reader.games() for p in record.positions()]
    puzzles = list(read_puzzles(plain))
    assert reader.count() == len(positions) == 5
    for position, puzzle in zip(positions, puzzles, strict=True):
        assert position.board.fen() == puzzle.board.fen() and position.ply == 1
        assert position.played is not None and position.played.uci() == puzzle.solution[0]
        assert [m.uci() for m in position.board.move_stack] == [m.uci() for m in puzzle.board.move_stack]


def test_headerless_file_uses_the_lichess_columns(tmp_path: Path) -> None:
    rows = _rows(3, seed=4)
    path = tmp_path / "p.csv"
    path.write_text(_csv(rows).split("\n", 1)[1])
    assert [p.id for p in read_puzzles(path)] == [r[0] for r in rows]
