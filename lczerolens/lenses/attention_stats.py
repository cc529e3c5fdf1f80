"""Which attention heads look along lines, diagonals or knight jumps: shares of attention on move patterns.

For every encoder layer and head, :func:`head_move_shares` measures the share of a query square's attention
(:class:`~lczerolens.lenses.AttentionLens` weights, board orientation) that falls on the squares of a pattern
seen from that query square, averaged over query squares and then over positions, next to the share that uniform
attention (``1/64`` on every square) would give. A head whose share is well above its uniform baseline puts its
attention on that pattern more than chance does.

The patterns (python-chess squares, board orientation; the query square itself belongs only to ``"self"``):

- ``"line"``: the squares a rook on the query square reaches on an empty board (same rank or file, 14 squares);
- ``"diagonal"``: a bishop's on an empty board (7 to 13 squares);
- ``"knight"``: a knight's jumps (2 to 8 squares);
- ``"attacks"``: the squares the piece actually on the query square attacks in the position (python-chess's
  ``board.attacks``: sliders stop at the first piece, which is included; a pawn's two capture squares); measured
  over occupied query squares only, whatever ``queries`` says;
- ``"self"``: the query square itself (1 square).

Example
-------
>>> from lczerolens.lenses.attention_stats import pattern_masks
>>> masks = pattern_masks()
>>> [int(masks[name].sum()) for name in ("line", "diagonal", "knight", "self")]  # over all 64 query squares
[896, 560, 336, 64]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import chess
import torch
from tensordict import TensorDict

from lczerolens.errors import InvalidOptionError, LensError
from lczerolens.lenses.base import BoardsLike, ModelLike, as_boards, check_batch_size
from lczerolens.model.precision import in_ieee_float32

if TYPE_CHECKING:
    from lczerolens.board import LczeroBoard

__all__ = ["PATTERNS", "HeadShares", "attack_masks", "head_move_shares", "pattern_masks"]

#: The patterns :func:`head_move_shares` measures, in its output order.
PATTERNS = ("line", "diagonal", "knight", "attacks", "self")
#: The patterns that depend only on the query square (not on the position).
GEOMETRIC = ("line", "diagonal", "knight", "self")
QUERIES = ("occupied", "all")


def pattern_masks() -> dict[str, torch.Tensor]:
    """The position-independent patterns as ``[64, 64]`` bool masks: ``mask[q, k]`` is True where square ``k`` is
    in the pattern seen from query square ``q`` (python-chess indices).

    Example
    -------
    >>> import chess
    >>> masks = pattern_masks()
    >>> chess.SquareSet(int(sum(1 << k for k in range(64) if masks["knight"][chess.G1, k])))
    SquareSet(0x0000_0000_00a0_1000)
    """
    square = torch.arange(64)
    file, rank = square % 8, square // 8
    df = (file[:, None] - file[None, :]).abs()
    dr = (rank[:, None] - rank[None, :]).abs()
    same = df + dr == 0
    return {
        "line": ((df == 0) | (dr == 0)) & ~same,
        "diagonal": (df == dr) & ~same,
        "knight": ((df == 1) & (dr == 2)) | ((df == 2) & (dr == 1)),
        "self": same,
    }


def attack_masks(boards: Sequence[chess.Board]) -> torch.Tensor:
    """``[N, 64, 64]`` bool: ``out[i, q, k]`` is True where the piece on square ``q`` of board ``i`` attacks ``k``.

    Rows of empty squares are all False. Attacks are python-chess's ``board.attacks_mask``.

    Example
    -------
    >>> import chess
    >>> int(attack_masks([chess.Board()])[0, chess.G1].sum())  # Ng1 attacks e2, f3 and h3
    3
    """
    out = torch.zeros(len(boards), 64, 64, dtype=torch.bool)
    for i, board in enumerate(boards):
        for q in chess.SquareSet(board.occupied):
            mask = board.attacks_mask(q)
            out[i, q, list(chess.SquareSet(mask))] = True
    return out


@dataclass(frozen=True)
class HeadShares:
    """What :func:`head_move_shares` measures.

    Attributes
    ----------
    per_position : TensorDict
        Batch ``[N]``; key = encoder layer name, value ``[N, heads, len(patterns)]`` float64: for position ``i``,
        head ``h`` and pattern ``p``, the share of attention on pattern ``p``, averaged over the query squares of
        position ``i`` (each query's attention row sums to 1, so a share is between 0 and 1).
    uniform_per_position : torch.Tensor
        ``[N, len(patterns)]``: the same average for uniform attention, i.e. the mean over the same queries of
        ``|pattern(q)| / 64``.
    patterns : tuple of str
    queries : str
        ``"occupied"`` or ``"all"``: the query squares averaged over (``"attacks"``: always the occupied ones).
    """

    per_position: TensorDict
    uniform_per_position: torch.Tensor
    patterns: tuple[str, ...]
    queries: str

    @property
    def layers(self) -> list[str]:
        """The encoder layers measured, in network order."""
        return [str(k) for k in self.per_position.keys()]

    def __len__(self) -> int:
        return int(self.uniform_per_position.shape[0])

    @property
    def share(self) -> dict[str, torch.Tensor]:
        """Layer -> ``[heads, patterns]``: the share averaged over positions (each position weighs the same)."""
        return {layer: self.per_position[layer].mean(0) for layer in self.layers}

    @property
    def stderr(self) -> dict[str, torch.Tensor]:
        """Layer -> ``[heads, patterns]``: the standard error of :attr:`share` over positions (0 for one position)."""
        n = len(self)
        if n < 2:
            return {layer: torch.zeros_like(v) for layer, v in self.share.items()}
        return {layer: self.per_position[layer].std(0) / math.sqrt(n) for layer in self.layers}

    @property
    def uniform(self) -> torch.Tensor:
        """``[patterns]``: the uniform-attention share averaged over positions (the chance level of :attr:`share`)."""
        return self.uniform_per_position.mean(0)

    @property
    def lift(self) -> dict[str, torch.Tensor]:
        """Layer -> ``[heads, patterns]``: :attr:`share` / :attr:`uniform` (1 = what uniform attention gives)."""
        return {layer: share / self.uniform for layer, share in self.share.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (layer, head, pattern): ``layer``, ``head``, ``pattern``, ``share``, ``stderr``,
        ``uniform``, ``lift``."""
        uniform = self.uniform.tolist()
        out: list[dict[str, Any]] = []
        share, err = self.share, self.stderr
        for layer in self.layers:
            for h in range(share[layer].shape[0]):
                for p, name in enumerate(self.patterns):
                    value = float(share[layer][h, p])
                    out.append({"layer": layer, "head": h, "pattern": name, "share": value,
                                "stderr": float(err[layer][h, p]), "uniform": uniform[p],
                                "lift": value / uniform[p] if uniform[p] > 0 else math.nan})  # fmt: skip
        return out

    def to_pandas(self) -> Any:
        """:meth:`rows` as a pandas DataFrame (pandas is imported here, not by the library)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def format(self, digits: int = 3) -> str:
        """A Markdown table: one row per layer and head, one column per pattern (its share), and a first row with
        the uniform-attention share of each pattern."""
        head = "| layer | head | " + " | ".join(self.patterns) + " |"
        lines = [head, "|---|---|" + "---|" * len(self.patterns)]
        lines.append("| uniform | | " + " | ".join(f"{v:.{digits}f}" for v in self.uniform.tolist()) + " |")
        for layer, share in self.share.items():
            for h in range(share.shape[0]):
                cells = " | ".join(f"{v:.{digits}f}" for v in share[h].tolist())
                lines.append(f"| {layer} | {h} | {cells} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


@in_ieee_float32
def head_move_shares(
    model: ModelLike,
    boards: BoardsLike,
    *,
    layers: str | Sequence[str] | None = None,
    queries: str = "occupied",
    batch_size: int | None = 256,
    progress: bool = False,
) -> HeadShares:
    """The share of each head's attention on lines, diagonals, knight jumps, the query piece's attacks and itself.

    Parameters
    ----------
    model : LczeroModel or network
        An attention-body network (others raise :class:`LensError`, as :class:`AttentionLens` does).
    boards : LczeroBoard or sequence of LczeroBoard
    layers : str or sequence of str, optional
        Encoder layer names (``"encoder0"``, ...); default every layer :class:`AttentionLens` reads.
    queries : str
        ``"occupied"`` (default): average over the squares that hold a piece; ``"all"``: over all 64 squares.
        The ``"attacks"`` pattern is always averaged over occupied squares.
    batch_size : int, optional
        Boards per forward pass (the attention weights of one batch are held at a time).
    progress : bool
        A tqdm progress bar.

    Returns
    -------
    HeadShares
        Per position, layer, head and pattern; ``.share``, ``.uniform``, ``.lift``, ``.format()``,
        ``.to_pandas()``.

    Example
    -------
    On bt-distilled over 300 self-play positions (``notebooks/attention.ipynb``), two of its 20 rows:

    >>> shares = head_move_shares(model, boards)  # doctest: +SKIP
    >>> print(shares)  # doctest: +SKIP
    | layer | head | line | diagonal | knight | attacks | self |
    |---|---|---|---|---|---|---|
    | uniform | | 0.219 | 0.138 | 0.081 | 0.069 | 0.016 |
    | encoder0 | 0 | 0.214 | 0.204 | 0.235 | 0.139 | 0.012 |
    | encoder1 | 0 | 0.122 | 0.638 | 0.042 | 0.336 | 0.021 |
    >>> shares.lift["encoder1"][0]  # doctest: +SKIP
    tensor([0.5588, 4.6325, 0.5267, 4.8620, 1.3372], dtype=torch.float64)
    """
    from lczerolens.lenses.attention import AttentionLens
    from lczerolens.lenses.base import chunks

    if queries not in QUERIES:
        raise InvalidOptionError(f"queries={queries!r}: choose 'occupied' or 'all'")
    board_list = as_boards(boards)
    size = check_batch_size(batch_size)
    wanted = [layers] if isinstance(layers, str) else None if layers is None else list(layers)
    geometric = torch.stack([pattern_masks()[p] for p in GEOMETRIC]).to(torch.float64)  # [G, 64, 64]
    lens = AttentionLens()
    parts: list[dict[str, torch.Tensor]] = []
    uniform_parts: list[torch.Tensor] = []
    for rows in chunks(len(board_list), size, progress, desc="head_move_shares"):
        part = board_list[rows]
        att = lens.attention(model, part)
        names = [str(k) for k in att.keys()]
        if wanted is not None:
            unknown = [w for w in wanted if w not in names]
            if unknown:
                raise LensError(f"layers {unknown} are not attention layers of this network; it has {names}")
            names = [w for w in names if w in wanted]
        shares, uniform = _shares(part, {k: att[k] for k in names}, geometric, queries)
        parts.append(shares)
        uniform_parts.append(uniform)
    values = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return HeadShares(TensorDict(values, batch_size=[len(board_list)]), torch.cat(uniform_parts), PATTERNS, queries)


def _shares(
    boards: Sequence[LczeroBoard], att: dict[str, torch.Tensor], geometric: torch.Tensor, queries: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per position shares ``[n, heads, P]`` of each layer, and the uniform baseline ``[n, P]`` (order PATTERNS)."""
    n = len(boards)
    occupied = torch.zeros(n, 64, dtype=torch.float64)
    for i, board in enumerate(boards):
        occupied[i, list(chess.SquareSet(board.occupied))] = 1.0
    query_weight = occupied if queries == "occupied" else torch.ones(n, 64, dtype=torch.float64)
    query_weight = query_weight / query_weight.sum(1, keepdim=True)  # a mean over the chosen queries
    piece_weight = occupied / occupied.sum(1, keepdim=True).clamp_min(1.0)
    attacks = attack_masks(boards).to(torch.float64)  # [n, 64, 64]
    order = [GEOMETRIC.index(p) if p in GEOMETRIC else -1 for p in PATTERNS]

    def assemble(geo: torch.Tensor, att_share: torch.Tensor) -> torch.Tensor:
        # geo [..., G], att_share [...] -> [..., P] in PATTERNS order.
        cols = [att_share if g < 0 else geo[..., g] for g in order]
        return torch.stack(cols, dim=-1)

    sizes = geometric.sum(-1) / 64  # [G, 64]: uniform share of each pattern per query
    uniform_geo = torch.einsum("gq,nq->ng", sizes, query_weight)
    uniform_att = torch.einsum("nq,nq->n", attacks.sum(-1) / 64, piece_weight)
    uniform = assemble(uniform_geo, uniform_att)
    out: dict[str, torch.Tensor] = {}
    for layer, weights in att.items():
        w = weights.to(torch.float64).cpu()  # [n, H, 64, 64]
        per_query = torch.einsum("nhqk,gqk->nhgq", w, geometric)
        geo = torch.einsum("nhgq,nq->nhg", per_query, query_weight)
        on_attacks = torch.einsum("nhqk,nqk->nhq", w, attacks)
        att_share = torch.einsum("nhq,nq->nh", on_attacks, piece_weight)
        out[layer] = assemble(geo, att_share)
    return out, uniform
