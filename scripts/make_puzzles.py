"""Write mate puzzles found in maia-1900 self-play games, in the Lichess puzzle CSV format (seeded).

Lichess's puzzle database cannot be downloaded here, so the depth notebook and its checks use puzzles made from
games played on this machine. A position of a self-play game becomes a puzzle when the side to move has a forced
mate, proven by exhaustive search with python-chess:

- ``mateIn1``: a move that mates at once;
- ``mateIn2``: no mate in one, and a checking move after which every reply allows a mate (only checking first
  moves are searched, so quiet mates in two are not found).

Each row follows Lichess's columns: ``FEN`` is the position *before* the opponent's last move and ``Moves`` starts
with that move, then the solution (for ``mateIn2``: the checking move, the first defence in python-chess's move
order, and its mate). ``Rating``, ``RatingDeviation``, ``Popularity`` and ``NbPlays`` are 0 (nobody rated or
played these puzzles), ``GameUrl`` is empty, ``Themes`` names the mate and ``selfplay``.

Run: ``PYTHONPATH=. .venv/bin/python scripts/make_puzzles.py [--games N] [--seed S] [--out PATH]``; writes
``assets/cache/puzzles-selfplay.csv`` by default.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import chess

from lczerolens import LczeroModel
from lczerolens.data.puzzles import PUZZLE_COLUMNS
from lczerolens.positions import play_games

ROOT = Path(__file__).resolve().parents[1]


def mates_in_one(board: chess.Board) -> list[chess.Move]:
    found = []
    for move in board.legal_moves:
        board.push(move)
        if board.is_checkmate():
            found.append(move)
        board.pop()
    return found


def checking_mate_in_two(board: chess.Board) -> list[chess.Move] | None:
    """``[check, defence, mate]`` for the first checking move after which every reply allows a mate in one."""
    for move in list(board.legal_moves):
        if not board.gives_check(move):
            continue
        board.push(move)
        replies = list(board.legal_moves)
        line = None
        if replies:
            answers = []
            for reply in replies:
                board.push(reply)
                mates = mates_in_one(board)
                board.pop()
                if not mates:
                    break
                answers.append((reply, mates[0]))
            else:
                line = [move, answers[0][0], answers[0][1]]
        board.pop()
        if line is not None:
            return line
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--games", type=int, default=256)
    parser.add_argument("--max-plies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "assets" / "cache" / "puzzles-selfplay.csv"))
    args = parser.parse_args()
    start = time.perf_counter()
    model = LczeroModel.from_path(ROOT / "assets" / "cache" / "maia-1900.pb.gz")
    games = play_games(model, args.games, args.seed, args.max_plies)
    print(f"{len(games)} games, {sum(map(len, games))} positions ({time.perf_counter() - start:.0f}s)", flush=True)
    rows, seen = [], set()
    for number, game in enumerate(games):
        for ply in range(1, len(game)):
            board = chess.Board(game[ply].fen())
            key = board.epd()
            if key in seen:
                continue
            mates = mates_in_one(board)
            line = [mates[0]] if mates else checking_mate_in_two(board)
            if line is None:
                continue
            seen.add(key)
            before = game[ply - 1]
            opponent = game[ply].move_stack[-1]
            rows.append(
                {
                    "PuzzleId": f"sp{args.seed}g{number}p{ply}",
                    "FEN": before.fen(),
                    "Moves": " ".join(m.uci() for m in [opponent, *line]),
                    "Rating": 0,
                    "RatingDeviation": 0,
                    "Popularity": 0,
                    "NbPlays": 0,
                    "Themes": ("mateIn1 mate oneMove" if len(line) == 1 else "mateIn2 mate short") + " selfplay",
                    "GameUrl": "",
                    "OpeningTags": "",
                }
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(PUZZLE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    counts = {t: sum(t in r["Themes"] for r in rows) for t in ("mateIn1", "mateIn2")}
    print(f"{len(rows)} puzzles {counts} -> {out} ({time.perf_counter() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
