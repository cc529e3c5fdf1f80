"""A reproducible set of test positions: self-play games of a network, one position per game.

The protocol of ``FAITHFULNESS.md``: games of a network (maia-1900 by default) against itself, every move sampled
from its policy over the legal moves at temperature 1; one position per game, taken at a ply drawn uniformly
from 10 to 80; a game that is over before (or at) that ply gives no position. The net sees each game's move
history while it plays; the positions are handed back as FEN strings (to be analysed FEN-only).

Self-play is batched: all games of a chunk advance together, one forward pass per ply for the whole chunk.
Games come in chunks of ``chunk_games``, each chunk seeded from ``(seed, chunk number)``, and positions keep the
game order, so the first ``n`` positions never depend on how many were asked for, and a cache can grow.
Everything is deterministic given the seed and the net (and the machine's float arithmetic, which could in
principle flip a sample that falls exactly on a probability boundary).

Example
-------
>>> from lczerolens.positions import load_positions
>>> fens = load_positions(100)  # doctest: +SKIP
>>> len(fens)  # doctest: +SKIP
100
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lczerolens.errors import InputShapeError, LensError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NET = ROOT / "assets" / "cache" / "maia-1900.pb.gz"
DEFAULT_CACHE_DIR = ROOT / "assets" / "cache"
MIN_PLY = 10
MAX_PLY = 80
CHUNK_GAMES = 128


def _network(model: Any) -> torch.nn.Module:
    from lczerolens.metrics import network_of

    return network_of(model)


def play_chunk(
    model: Any,
    seed: int,
    chunk: int,
    n_games: int = CHUNK_GAMES,
    min_ply: int = MIN_PLY,
    max_ply: int = MAX_PLY,
    temperature: float = 1.0,
) -> list[str]:
    """Play ``n_games`` self-play games together; return the FENs of the kept positions, in game order.

    Parameters
    ----------
    model : an :class:`lczerolens.LczeroModel` or a network (policy head required).
    seed, chunk : the chunk's random stream is seeded from both.
    min_ply, max_ply : the bounds (inclusive) of the ply at which each game's position is taken.
    temperature : moves are sampled from ``softmax(logits / temperature)`` over the legal moves.
    """
    from lczerolens.board import LczeroBoard, encode_boards
    from lczerolens.metrics import input_format_of

    if not 0 <= min_ply <= max_ply:
        raise InputShapeError(f"need 0 <= min_ply <= max_ply, got {min_ply}, {max_ply}")
    if temperature <= 0:
        raise LensError(f"temperature must be positive, got {temperature}")
    network, fmt = _network(model), input_format_of(model)
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk]))
    stop_at = rng.integers(min_ply, max_ply + 1, size=n_games)
    boards = [LczeroBoard() for _ in range(n_games)]
    kept: dict[int, str] = {}
    active = list(range(n_games))
    ply = 0
    while active:
        # Decide which games end at this ply before anything is sampled.
        still = []
        for g in active:
            if boards[g].is_game_over():
                continue
            if ply == stop_at[g]:
                kept[g] = boards[g].fen()
                continue
            still.append(g)
        active = still
        if not active:
            break
        with torch.no_grad():
            policy = network(encode_boards([boards[g] for g in active], fmt))["policy"].to(torch.float64)
        draws = rng.random(len(active))
        for row, g, u in zip(policy, active, draws, strict=True):
            board = boards[g]
            legal = list(board.legal_moves)
            idx = board.legal_move_indices(fmt)
            probs = torch.softmax(row[idx] / temperature, 0).numpy()
            cdf = np.cumsum(probs)
            pick = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(legal) - 1)
            board.push(legal[pick])
        ply += 1
    return [kept[g] for g in sorted(kept)]


def play_games(
    model: Any, n_games: int, seed: int, max_plies: int = 160, chunk_games: int = CHUNK_GAMES
) -> list[list[Any]]:
    """Play ``n_games`` self-play games and return every position of each, game by game.

    Each game is a list of :class:`~lczerolens.LczeroBoard` copies, one per position before each move, each with
    the game's moves as its history. Moves are sampled from ``softmax`` of the network's logits over the legal
    moves (temperature 1), all games of a chunk advancing together, one forward pass per ply. A game ends when it
    is over (draws claimable by repetition or the fifty-move rule included) or after ``max_plies`` plies.
    Deterministic given ``seed``, ``chunk_games`` and the net.

    Example
    -------
    >>> games = play_games(model, 4, seed=0, max_plies=20)  # doctest: +SKIP
    >>> len(games), len(games[0])  # doctest: +SKIP
    (4, 20)
    """
    from lczerolens.board import LczeroBoard, encode_boards
    from lczerolens.metrics import input_format_of

    if n_games < 0 or max_plies < 0:
        raise InputShapeError(f"n_games and max_plies must not be negative, got {n_games}, {max_plies}")
    network, fmt = _network(model), input_format_of(model)
    rng = np.random.default_rng(seed)
    games: list[list[Any]] = []
    for first in range(0, n_games, chunk_games):
        live = [LczeroBoard() for _ in range(min(chunk_games, n_games - first))]
        seen: list[list[Any]] = [[] for _ in live]
        active = list(range(len(live)))
        for _ in range(max_plies):
            if not active:
                break
            with torch.no_grad():
                logits = network(encode_boards([live[g] for g in active], fmt))["policy"].to(torch.float64)
            still = []
            for row, g in zip(logits, active, strict=True):
                board = live[g]
                seen[g].append(board.copy())
                legal = list(board.legal_moves)
                p = torch.softmax(row[board.legal_move_indices(fmt)], 0).numpy()
                pick = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum()))
                board.push(legal[min(pick, len(legal) - 1)])
                if not board.is_game_over(claim_draw=True):
                    still.append(g)
            active = still
        games.extend(seen)
    return games


def generate_positions(
    model: Any,
    n_positions: int,
    seed: int = 0,
    chunk_games: int = CHUNK_GAMES,
    start_chunk: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[str], int]:
    """Play chunks from ``start_chunk`` on until at least ``n_positions`` positions are kept.

    Returns all kept FENs (possibly more than asked, whole chunks) and the number of the next chunk.
    """
    fens: list[str] = []
    chunk = start_chunk
    while len(fens) < n_positions:
        fens.extend(play_chunk(model, seed, chunk, chunk_games))
        chunk += 1
        if progress is not None:
            progress(f"self-play chunk {chunk}: {len(fens)} positions")
    return fens, chunk


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _header(net: Path, seed: int, chunk_games: int, chunks: int) -> str:
    return (
        f"# lczerolens positions net={net.name} sha256={_sha256(net)} seed={seed} chunk_games={chunk_games}"
        f" chunks={chunks} min_ply={MIN_PLY} max_ply={MAX_PLY} temperature=1"
    )


def cache_path(net: str | Path = DEFAULT_NET, seed: int = 0, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Where :func:`load_positions` caches the FENs, e.g. ``assets/cache/positions-maia-1900-seed0.txt``."""
    stem = Path(net).name.split(".")[0]
    return Path(cache_dir) / f"positions-{stem}-seed{seed}.txt"


def load_positions(
    n_positions: int,
    net: str | Path = DEFAULT_NET,
    seed: int = 0,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    model: Any = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """The first ``n_positions`` positions of the self-play set of ``net`` with ``seed``, from the cache if it has them.

    The cache file starts with a header naming the net (and its SHA-256), the seed and how many chunks it holds;
    a cache of another net or seed is regenerated, one with too few positions is extended. ``model`` may pass
    the already loaded net to save loading it again.
    """
    if n_positions < 1:
        raise InputShapeError(f"n_positions must be at least 1, got {n_positions}")
    net = Path(net)
    path = cache_path(net, seed, cache_dir)
    fens: list[str] = []
    chunks = 0
    if path.exists():
        lines = path.read_text().splitlines()
        if lines and lines[0].startswith("# lczerolens positions"):
            fields = dict(item.split("=", 1) for item in lines[0].split()[3:] if "=" in item)
            chunks = int(fields.get("chunks", 0))
            if _header(net, seed, CHUNK_GAMES, chunks) == lines[0]:
                fens = [line for line in lines[1:] if line and not line.startswith("#")]
            else:
                chunks = 0
    if len(fens) < n_positions:
        if model is None:
            from lczerolens.model import LczeroModel

            model = LczeroModel.from_path(net)
        more, chunks = generate_positions(model, n_positions - len(fens), seed, CHUNK_GAMES, chunks, progress)
        fens.extend(more)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_header(net, seed, CHUNK_GAMES, chunks) + "\n" + "\n".join(fens) + "\n")
    return fens[:n_positions]
