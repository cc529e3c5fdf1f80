"""head_move_shares against a hand loop over squares; its uniform baseline against squares python-chess counts."""

from __future__ import annotations

import chess
import pytest
import torch

from lczerolens.board import LczeroBoard
from lczerolens.errors import InvalidOptionError, LensError
from lczerolens.lenses import AttentionLens, HeadShares, head_move_shares
from lczerolens.lenses.attention_stats import PATTERNS, _shares, attack_masks, pattern_masks
from lczerolens.model import LczeroModel
from lczerolens.testing import AttentionNetSpec, random_boards, write_attention_net

FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 3 3",  # black to move
    "8/8/6K1/8/3n4/8/2p5/k6R w - - 0 60",
    "r1bq1rk1/ppp2ppp/2np1n2/2b1p3/2B1P3/2NP1N2/PPP2PPP/R1BQ1RK1 w - - 0 8",
]


@pytest.fixture(scope="module")
def attention_model(tmp_path_factory):
    spec = AttentionNetSpec(embedding="PE_MAP", embedding_size=32, encoder_layers=2, heads=4, seed=5)
    return LczeroModel.from_path(write_attention_net(spec, tmp_path_factory.mktemp("stats") / "net.pb.gz"))


def _boards() -> list[LczeroBoard]:
    return [LczeroBoard(f) for f in FENS] + [LczeroBoard.from_board(b) for b in random_boards(2, seed=4)]


def _in_pattern(name: str, board: chess.Board, q: int, k: int) -> bool:
    df = abs(chess.square_file(q) - chess.square_file(k))
    dr = abs(chess.square_rank(q) - chess.square_rank(k))
    if name == "line":
        return q != k and (df == 0 or dr == 0)
    if name == "diagonal":
        return q != k and df == dr
    if name == "knight":
        return {df, dr} == {1, 2}
    if name == "attacks":
        return k in board.attacks(q)
    return q == k


@pytest.mark.parametrize("queries", ["occupied", "all"])
def test_shares_equal_a_hand_loop(attention_model, queries):
    boards = _boards()
    shares = head_move_shares(attention_model, boards, queries=queries, batch_size=None)  # one pass, as below
    weights = AttentionLens().attention(attention_model, boards)
    assert isinstance(shares, HeadShares) and shares.layers == ["encoder0", "encoder1"] and len(shares) == 5
    for layer in shares.layers:
        w = weights[layer].to(torch.float64)
        got = shares.per_position[layer]
        assert got.shape == (5, 4, len(PATTERNS))
        for i, board in enumerate(boards):
            occupied = list(chess.SquareSet(board.occupied))
            for p, name in enumerate(PATTERNS):
                chosen = occupied if queries == "occupied" or name == "attacks" else list(range(64))
                for h in range(4):
                    per_query = [
                        sum(float(w[i, h, q, k]) for k in range(64) if _in_pattern(name, board, q, k)) for q in chosen
                    ]
                    want = sum(per_query) / len(chosen)
                    assert float(got[i, h, p]) == pytest.approx(want, abs=1e-9), (layer, i, h, name)
        mean = shares.share[layer]
        torch.testing.assert_close(mean, got.mean(0))
        torch.testing.assert_close(shares.lift[layer], mean / shares.uniform)


def test_uniform_baseline_equals_counted_squares():
    boards = _boards()
    for queries in ("occupied", "all"):
        flat = torch.full((len(boards), 1, 64, 64), 1 / 64, dtype=torch.float64)
        geometric = torch.stack([pattern_masks()[p] for p in ("line", "diagonal", "knight", "self")]).double()
        shares, uniform = _shares(boards, {"flat": flat}, geometric, queries)
        # Uniform attention scores exactly its own baseline.
        torch.testing.assert_close(shares["flat"][:, 0], uniform)
        for i, board in enumerate(boards):
            chosen = list(chess.SquareSet(board.occupied)) if queries == "occupied" else list(range(64))
            pieces = list(chess.SquareSet(board.occupied))
            counts = {
                "line": [
                    len(chess.SquareSet(chess.BB_RANK_ATTACKS[q][0] | chess.BB_FILE_ATTACKS[q][0])) for q in chosen
                ],
                "diagonal": [len(chess.SquareSet(chess.BB_DIAG_ATTACKS[q][0])) for q in chosen],
                "knight": [len(chess.SquareSet(chess.BB_KNIGHT_ATTACKS[q])) for q in chosen],
                "attacks": [len(board.attacks(q)) for q in pieces],
                "self": [1 for _ in chosen],
            }
            for p, name in enumerate(PATTERNS):
                want = sum(counts[name]) / len(counts[name]) / 64
                assert float(uniform[i, p]) == pytest.approx(want, abs=1e-12), (queries, i, name)
    # Over all 64 squares: a rook always sees 14, bishops 560 and knights 336 squares in total.
    _, uniform = _shares(boards[:1], {}, geometric, "all")
    torch.testing.assert_close(uniform[0, :3], torch.tensor([14 / 64, 560 / 4096, 336 / 4096], dtype=torch.float64))


def test_pattern_masks_match_python_chess_tables():
    masks = pattern_masks()
    for q in chess.SQUARES:
        rook = chess.BB_RANK_ATTACKS[q][0] | chess.BB_FILE_ATTACKS[q][0]
        for name, bb in [
            ("line", rook),
            ("diagonal", chess.BB_DIAG_ATTACKS[q][0]),
            ("knight", chess.BB_KNIGHT_ATTACKS[q]),
        ]:
            assert masks[name][q].nonzero().flatten().tolist() == list(chess.SquareSet(bb)), (name, q)
    board = chess.Board(FENS[2])
    got = attack_masks([board])[0]
    for q in chess.SQUARES:
        assert got[q].nonzero().flatten().tolist() == list(board.attacks(q))


def test_layers_batches_and_errors(attention_model):
    boards = _boards()[:3]
    whole = head_move_shares(attention_model, boards, batch_size=None)
    one = head_move_shares(attention_model, boards, layers="encoder1", batch_size=1)
    assert one.layers == ["encoder1"]
    # Batches of one and of three differ only by float32 rounding in the network.
    torch.testing.assert_close(one.per_position["encoder1"], whole.per_position["encoder1"], atol=1e-6, rtol=0)
    torch.testing.assert_close(one.uniform_per_position, whole.uniform_per_position)
    text = str(whole)
    assert len(text.splitlines()) == 2 + 1 + 2 * 4 and "| uniform |" in text
    rows = whole.rows()
    assert len(rows) == 2 * 4 * len(PATTERNS) and {r["pattern"] for r in rows} == set(PATTERNS)
    with pytest.raises(InvalidOptionError, match="queries"):
        head_move_shares(attention_model, boards, queries="pieces")
    with pytest.raises(LensError, match="encoder9"):
        head_move_shares(attention_model, boards, layers=["encoder9"])


def test_policy_encoder_layers_with_their_own_head_count(tmp_path):
    spec = AttentionNetSpec(
        embedding_size=32, encoder_layers=1, heads=4, policy_encoder_layers=1, policy_heads=2, seed=1
    )
    model = LczeroModel.from_path(write_attention_net(spec, tmp_path / "policy-encoder.pb.gz"))
    shares = head_move_shares(model, _boards()[:2])
    assert shares.layers == ["encoder0", "policy/enc_layer_0"]
    assert shares.share["encoder0"].shape == (4, len(PATTERNS)) and shares.share["policy/enc_layer_0"].shape == (2, 5)
    assert len(str(shares).splitlines()) == 2 + 1 + 4 + 2
