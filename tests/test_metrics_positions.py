"""The self-play position set: deterministic, plies in range, no finished games, cached by net and seed."""

from __future__ import annotations

import chess
import pytest
from test_metrics import random_toy

from lczerolens import positions
from lczerolens.errors import InputShapeError


def _ply(fen: str) -> int:
    board = chess.Board(fen)
    return 2 * (board.fullmove_number - 1) + (0 if board.turn else 1)


def test_play_chunk_is_deterministic_and_in_range() -> None:
    net = random_toy(5)
    a = positions.play_chunk(net, seed=0, chunk=0, n_games=8, min_ply=3, max_ply=9)
    b = positions.play_chunk(net, seed=0, chunk=0, n_games=8, min_ply=3, max_ply=9)
    c = positions.play_chunk(net, seed=1, chunk=0, n_games=8, min_ply=3, max_ply=9)
    assert a == b
    assert a != c
    assert 0 < len(a) <= 8
    for fen in a:
        assert 3 <= _ply(fen) <= 9
        assert not chess.Board(fen).is_game_over()
    assert len({_ply(f) for f in a + c}) > 1  # plies are drawn, not fixed


def test_moves_follow_the_policy() -> None:
    # A net whose policy puts nearly all mass on one move index: self-play plays the top legal move.
    net = random_toy(6)
    net.offsets = net.offsets * 1000.0
    a = positions.play_chunk(net, seed=0, chunk=0, n_games=4, min_ply=4, max_ply=4)
    b = positions.play_chunk(net, seed=3, chunk=2, n_games=4, min_ply=4, max_ply=4)
    assert len(set(a + b)) == 1


def test_load_positions_caches_and_extends(tmp_path, monkeypatch) -> None:
    net_file = tmp_path / "toy.pb.gz"
    net_file.write_bytes(b"not really a net: only its hash names the cache")
    net = random_toy(7)
    monkeypatch.setattr(positions, "CHUNK_GAMES", 4)
    first = positions.load_positions(3, net_file, seed=0, cache_dir=tmp_path, model=net)
    assert len(first) == 3
    path = positions.cache_path(net_file, 0, tmp_path)
    assert path.name == "positions-toy-seed0.txt" and path.exists()
    # From the cache (model=None would have to load the fake file, and fail).
    assert positions.load_positions(3, net_file, seed=0, cache_dir=tmp_path) == first
    # More positions extend the cache; the first ones stay the same.
    more = positions.load_positions(9, net_file, seed=0, cache_dir=tmp_path, model=net)
    assert more[:3] == first and len(more) == 9
    # Another net (another hash) does not reuse the cache.
    net_file.write_bytes(b"another net")
    with pytest.raises(Exception):  # noqa: B017 (loading the fake file fails, whatever the loader says)
        positions.load_positions(3, net_file, seed=0, cache_dir=tmp_path)
    with pytest.raises(InputShapeError):
        positions.load_positions(0, net_file, cache_dir=tmp_path, model=net)


def test_play_games_gives_every_position_with_its_history() -> None:
    net = random_toy(7)
    games = positions.play_games(net, 5, seed=2, max_plies=12, chunk_games=2)
    again = positions.play_games(net, 5, seed=2, max_plies=12, chunk_games=2)
    other = positions.play_games(net, 5, seed=3, max_plies=12, chunk_games=2)
    assert len(games) == 5
    assert [[b.fen() for b in g] for g in games] == [[b.fen() for b in g] for g in again]
    assert [[b.fen() for b in g] for g in games] != [[b.fen() for b in g] for g in other]
    for game in games:
        assert 1 <= len(game) <= 12
        assert game[0].fen() == chess.STARTING_FEN
        for ply, board in enumerate(game):
            assert len(board.move_stack) == ply  # the history is the game's moves
            if ply:
                assert board.move_stack[:-1] == game[ply - 1].move_stack
        assert not any(board.is_game_over(claim_draw=True) for board in game)  # every position had a move
    with pytest.raises(InputShapeError):
        positions.play_games(net, -1, seed=0)
