"""How fast lczerolens encodes boards into lc0's 112 input planes, next to a plain per-square encoder.

Every board carries at least eight positions of history (random games of 12 to 80 plies). Both encoders run
single-threaded (``torch.set_num_threads(1)``) in this process, timed in CPU time (so that other work on a
busy machine does not distort the figures; on an idle machine it equals wall time). Three lczerolens figures
per input format:

- ``batch``: :func:`lczerolens.board.encode_boards` on the whole list, boards already encoded once (the
  per-position snapshots are cached on the boards);
- ``cold``: the same on freshly played boards, so the first encode also packs each history position's planes;
- ``single``: ``board.to_input_tensor()`` one board at a time.

The reference is deliberately naive: it walks back through the move stack with ``pop()`` and reads every
square with ``board.piece_at``, as a straightforward encoder would. It writes the classical format's planes
(pieces, castling, side to move, rule 50; no repetition planes) and serves as the yardstick for every format.

Run ``python -m benchmarks.bench_encoding`` (a few seconds on an idle core).
"""

from __future__ import annotations

import random
import time
from typing import Any

import chess
import torch

from lczerolens.board import InputFormat, LczeroBoard, encode_boards

_PIECE_PLANE = {chess.PAWN: 0, chess.KNIGHT: 1, chess.BISHOP: 2, chess.ROOK: 3, chess.QUEEN: 4, chess.KING: 5}


def naive_encode(board: chess.Board) -> torch.Tensor:
    """A plain encoder: eight history positions read square by square with ``piece_at``."""
    planes = torch.zeros(112, 8, 8)
    us = board.turn
    work = board.copy()
    for slot in range(8):
        for square in chess.SQUARES:
            piece = work.piece_at(square)
            if piece is None:
                continue
            plane = 13 * slot + _PIECE_PLANE[piece.piece_type] + (0 if piece.color == us else 6)
            row = chess.square_rank(square) if us == chess.WHITE else 7 - chess.square_rank(square)
            planes[plane, row, chess.square_file(square)] = 1.0
        if not work.move_stack:
            break
        work.pop()
    them = not us
    planes[104] = float(board.has_queenside_castling_rights(us))
    planes[105] = float(board.has_kingside_castling_rights(us))
    planes[106] = float(board.has_queenside_castling_rights(them))
    planes[107] = float(board.has_kingside_castling_rights(them))
    planes[108] = float(us == chess.BLACK)
    planes[109] = float(board.halfmove_clock)
    planes[111] = 1.0
    return planes


def _games(n: int, seed: int) -> list[list[chess.Move]]:
    rng = random.Random(seed)
    games = []
    while len(games) < n:
        board = chess.Board()
        for _ in range(rng.randint(12, 80)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        if len(board.move_stack) >= 8:
            games.append(list(board.move_stack))
    return games


def _boards(games: list[list[chess.Move]]) -> list[LczeroBoard]:
    boards = []
    for moves in games:
        board = LczeroBoard()
        for move in moves:
            board.push(move)
        boards.append(board)
    return boards


def _rate(fn, count: int, repeats: int) -> float:
    """Boards per second, best of ``repeats`` timings (CPU time of this single-threaded process)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return count / best


def run(
    n_boards: int = 1000,
    n_naive: int = 100,
    formats: tuple[InputFormat | int, ...] = (InputFormat.CLASSICAL_112_PLANE, InputFormat.CANONICALIZATION),
    repeats: int = 3,
    seed: int = 0,
    quick: bool = False,
) -> dict[str, Any]:
    """Measure encoding throughput (boards per second, single thread).

    Returns a dict: ``{"n_boards", "history", "threads", "clock", "naive_boards_per_s", "formats": {name:
    {"batch", "cold", "single", "speedup_vs_naive"}}}``, ``"naive_agrees"`` (whether the naive encoder gives
    the same classical piece planes as lczerolens on its boards: a sanity check of the yardstick) and
    ``"markdown"`` (the same as a table). ``quick=True`` runs a small smoke version.

    >>> result = run(n_boards=50, n_naive=10, repeats=1)  # doctest: +SKIP
    >>> result["formats"]["CLASSICAL_112_PLANE"]["batch"] > 0  # doctest: +SKIP
    True
    """
    if quick:
        n_boards, n_naive, repeats = min(n_boards, 200), min(n_naive, 20), 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        games = _games(n_boards, seed)
        boards = _boards(games)
        naive_boards = [chess.Board() for _ in range(n_naive)]
        for board, moves in zip(naive_boards, games, strict=False):
            for move in moves:
                board.push(move)
        naive_rate = _rate(lambda: [naive_encode(b) for b in naive_boards], n_naive, repeats)
        ours = encode_boards(boards[:n_naive], InputFormat.CLASSICAL_112_PLANE)
        reference = torch.stack([naive_encode(b) for b in naive_boards])
        # Piece planes of all slots; the naive repetition test is python-chess's, not lc0's, so skip those.
        piece_planes = [p for p in range(104) if p % 13 != 12]
        agrees = bool(torch.equal(ours[:, piece_planes], reference[:, piece_planes]))

        result: dict[str, Any] = {
            "n_boards": len(boards),
            "history": 8,
            "threads": 1,
            "clock": "process CPU time",
            "naive_boards_per_s": naive_rate,
            "naive_agrees": agrees,
            "formats": {},
        }
        for input_format in formats:
            fmt = InputFormat(input_format)
            encode_boards(boards, fmt)  # warm the per-position caches
            batch = _rate(lambda fmt=fmt: encode_boards(boards, fmt), len(boards), repeats)
            few = boards[: max(1, len(boards) // 4)]
            single = _rate(lambda fmt=fmt, few=few: [b.to_input_tensor(fmt) for b in few], len(few), 1)
            fresh = _boards(games)
            start = time.process_time()
            encode_boards(fresh, fmt)
            cold = len(fresh) / (time.process_time() - start)
            result["formats"][fmt.name] = {
                "batch": batch,
                "cold": cold,
                "single": single,
                "speedup_vs_naive": batch / naive_rate,
            }
        result["markdown"] = to_markdown(result, repeats)
        return result
    finally:
        torch.set_num_threads(threads)


def to_markdown(result: dict[str, Any], repeats: int = 3) -> str:
    """The result as a markdown table (boards per second, CPU time, best of ``repeats``)."""
    lines = [
        f"{result['n_boards']} boards with {result['history']} positions of history each, one thread, boards per "
        f"second of CPU time (best of {repeats}).",
        "",
        "| encoder | boards/s |",
        "|---|---|",
        f"| naive per-square Python (`piece_at`), classical | {result['naive_boards_per_s']:,.0f} |",
    ]
    for name, rates in result["formats"].items():
        lines += [
            f"| `encode_boards`, {name} | {rates['batch']:,.0f} (x{rates['speedup_vs_naive']:.0f} naive) |",
            f"| `encode_boards`, {name}, first encode of fresh boards | {rates['cold']:,.0f} |",
            f"| `to_input_tensor`, {name}, one board at a time | {rates['single']:,.0f} |",
        ]
    lines.append(f"\nNaive encoder agrees with lczerolens on the piece planes: {result['naive_agrees']}.")
    return "\n".join(lines) + "\n"


def _print(result: dict[str, Any]) -> None:
    print(f"{result['n_boards']} boards, each with {result['history']} positions of history, 1 thread")
    print(f"{'encoder':<44}{'boards/s':>12}")
    print(f"{'naive per-square (piece_at), classical':<44}{result['naive_boards_per_s']:>12,.0f}")
    for name, rates in result["formats"].items():
        print(f"{'lczerolens encode_boards, ' + name:<44}{rates['batch']:>12,.0f}"
              f"   (x{rates['speedup_vs_naive']:.0f} naive)")  # fmt: skip
        print(f"{'  first encode of fresh boards':<44}{rates['cold']:>12,.0f}")
        print(f"{'  one board at a time (to_input_tensor)':<44}{rates['single']:>12,.0f}")
    print(f"naive encoder agrees with lczerolens on the piece planes: {result['naive_agrees']}")


if __name__ == "__main__":
    _print(run())
