"""The newcomer's papercuts of issue 15, each pinned by a test that failed before the fix."""

from __future__ import annotations

import warnings

import chess
import pytest

from lczerolens import LczeroBoard
from lczerolens.errors import InputFormatWarning


def test_startpos_is_a_fen_everywhere():
    assert LczeroBoard("startpos").fen() == chess.STARTING_FEN
    board = LczeroBoard("8/8/8/4k3/8/8/2K5/8 w - - 0 1")
    board.set_fen("startpos")
    assert board.fen() == chess.STARTING_FEN


def test_invalid_fen_message_says_it_once():
    with pytest.raises(ValueError) as info:
        LczeroBoard("xyz")
    assert str(info.value).count("Pass a FEN such as") == 1


def test_onnx_export_without_a_format_warns_and_says_how_to_pass_it(maia_onnx_path, maia_pb_path):
    from lczerolens.model import LczeroModel

    with pytest.warns(InputFormatWarning, match="input_format="):
        LczeroModel.from_path(maia_onnx_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputFormatWarning)
        LczeroModel.from_path(maia_onnx_path, input_format=1)  # told: no warning
        LczeroModel.from_path(maia_pb_path)  # the weights file records its format


def test_default_caption_names_the_move_the_value_and_the_share(maia_pb_path):
    from lczerolens.lenses import LrpLens
    from lczerolens.model import LczeroModel

    model = LczeroModel.from_path(maia_pb_path)
    board = LczeroBoard("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3")
    caption = LrpLens().relevance(model, board).caption(0)
    assert "Bc4" in caption and "policy logit" in caption and "map sums to" in caption and "W " in caption
    value = LrpLens().relevance(model, board, "value").caption(0)
    assert "value" in value and "map sums to" in value
