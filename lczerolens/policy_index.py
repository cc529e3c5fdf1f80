"""lc0's policy vector: which move each of its 1858 entries stands for.

Moves are written from the side to move's point of view, as if white were to move (lc0 mirrors the ranks for
black before looking a move up). The first 1792 entries are every queen-line and knight move of an empty board,
grouped by from-square (a1 first) and, within a group, by to-square; the last 66 are the promotions to queen,
rook and bishop from rank 7 (per from-file: the to-squares in order, each with q, r, b). A knight promotion
uses the plain from-to entry, and castling is written king-takes-rook (``e1h1``, ``e1a1``).

The table ships as ``data/policy_moves.txt``; ``python -m lczerolens.policy_index`` writes it from
:func:`generate_policy_moves`, and the tests check that the two agree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import chess

POLICY_SIZE = 1858
_DATA_FILE = "policy_moves.txt"


def _reaches(from_square: int, to_square: int) -> bool:
    """Whether a queen or a knight on an empty board goes from ``from_square`` to ``to_square``."""
    df = abs(chess.square_file(to_square) - chess.square_file(from_square))
    dr = abs(chess.square_rank(to_square) - chess.square_rank(from_square))
    if from_square == to_square:
        return False
    queen_line = df == 0 or dr == 0 or df == dr
    knight = {df, dr} == {1, 2}
    return queen_line or knight


def generate_policy_moves() -> list[str]:
    """The 1858 UCI strings of lc0's policy vector, in index order."""
    moves = [
        chess.square_name(f) + chess.square_name(t)
        for f in chess.SQUARES
        for t in chess.SQUARES
        if _reaches(f, t)
    ]
    for file in range(8):
        from_square = chess.square(file, 6)
        for to_file in (file - 1, file, file + 1):
            if 0 <= to_file < 8:
                to_name = chess.square_name(chess.square(to_file, 7))
                moves.extend(chess.square_name(from_square) + to_name + p for p in "qrb")
    assert len(moves) == POLICY_SIZE
    return moves


def load_policy_moves() -> list[str]:
    """The table as shipped in the package's data."""
    text = resources.files("lczerolens").joinpath("data").joinpath(_DATA_FILE).read_text()
    return text.split()


def write_policy_moves(path: Path | None = None) -> Path:
    """Write the generated table (one UCI move per line) to ``path`` (default: the package's data file)."""
    if path is None:
        path = Path(__file__).resolve().parent / "data" / _DATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(generate_policy_moves()) + "\n")
    return path


#: Index -> UCI move (white's point of view).
POLICY_MOVES: tuple[str, ...] = tuple(load_policy_moves())
#: UCI move (white's point of view) -> index.
POLICY_INDEX: dict[str, int] = {uci: i for i, uci in enumerate(POLICY_MOVES)}


if __name__ == "__main__":
    print(write_policy_moves())
