"""The result of a lens: relevance of every input plane, decoded onto the board.

Example
-------
>>> rel = LrpLens().relevance(model, board, target="value")  # doctest: +SKIP
>>> rel.squares[0].flatten()[chess.E4]  # relevance of e4, board orientation  # doctest: +SKIP
>>> rel.breakdown()["ours"]  # our pieces' share, [N, 8, 8]  # doctest: +SKIP
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import chess
import torch
from tensordict import TensorDict

__all__ = ["Relevance", "PIECE_NAMES", "GROUPS"]

#: Piece planes of one history slot, in lc0's order: ours then theirs.
PIECE_NAMES = tuple(f"{side}_{piece}" for side in ("our", "their") for piece in "PNBRQK")

#: Plane groups of :meth:`Relevance.breakdown` (they partition the 112 planes).
GROUPS = {
    "ours": "our pieces, all 8 history slots (planes 13h+0..13h+5)",
    "theirs": "their pieces, all 8 history slots (planes 13h+6..13h+11)",
    "repetition": "repetition markers (planes 13h+12)",
    "castling": "castling planes (104-107)",
    "other": "side to move / en passant, rule-50, armageddon and the all-ones plane (108-111)",
}


class Relevance:
    """Relevance of a batch of ``N`` positions for one explained output each.

    Attributes
    ----------
    planes : torch.Tensor
        ``[N, 112, 8, 8]``, network orientation: input x modified gradient; sums to the explained output up
        to what biases and stabilisers absorb.
    squares : torch.Tensor
        ``[N, 8, 8]``, board orientation (``squares[i].flatten()[chess.E4]`` is e4), summed over planes.
    target : torch.Tensor
        ``[N]``: the explained output's value (a policy logit, ``win - loss`` logit, ...).
    target_name : str
        ``"policy"`` or the head target (``"value"``, ``"win"``, ``"draw"``, ``"loss"``, ``"mlh"``).
    policy_indices : torch.Tensor or None
        ``[N]`` policy indices of the explained moves (``None`` for head targets).
    boards : list of LczeroBoard
    input_format : InputFormat
    """

    def __init__(
        self,
        planes: torch.Tensor,
        target: torch.Tensor,
        boards: list,
        input_format: Any,
        target_name: str,
        policy_indices: torch.Tensor | None = None,
    ) -> None:
        self.planes = planes
        self.target = target
        self.boards = list(boards)
        self.input_format = input_format
        self.target_name = target_name
        self.policy_indices = policy_indices
        self.squares = self._to_board(planes.sum(dim=1))

    def _to_board(self, maps: torch.Tensor) -> torch.Tensor:
        """``[N, ..., 8, 8]`` network orientation -> board orientation.

        The way back depends only on the side to move and the canonical transform, so boards sharing both go
        through ``network_to_board`` together (two calls for a whole batch in the classical formats).
        """
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, board in enumerate(self.boards):
            groups.setdefault((board.turn, board.canonical_transform(self.input_format)), []).append(i)
        if len(groups) == 1:
            return self.boards[0].network_to_board(maps, self.input_format)
        out = torch.empty_like(maps)
        for rows in groups.values():
            index = torch.tensor(rows, dtype=torch.long, device=maps.device)
            out[index] = self.boards[rows[0]].network_to_board(maps[index], self.input_format)
        return out

    def __len__(self) -> int:
        return len(self.boards)

    def __getitem__(self, index: int | slice) -> Relevance:
        """The relevance of one board (as a batch of 1) or of a slice of the batch."""
        keep = [index] if isinstance(index, int) else list(range(len(self)))[index]
        if not keep or not all(-len(self) <= i < len(self) for i in keep):
            raise IndexError(f"index {index!r} out of range for {len(self)} boards")
        picked = torch.tensor(keep, dtype=torch.long) % len(self)
        return Relevance(
            self.planes[picked],
            self.target[picked],
            [self.boards[int(i)] for i in picked],
            self.input_format,
            self.target_name,
            None if self.policy_indices is None else self.policy_indices[picked],
        )

    @cached_property
    def moves(self) -> list[chess.Move] | None:
        """The explained moves (``None`` for head targets)."""
        if self.policy_indices is None:
            return None
        return [
            board.decode_move(int(i), self.input_format)
            for board, i in zip(self.boards, self.policy_indices, strict=True)
        ]

    @cached_property
    def board_planes(self) -> torch.Tensor:
        """``[N, 112, 8, 8]`` in board orientation."""
        return self._to_board(self.planes)

    @property
    def history(self) -> torch.Tensor:
        """``[N, 8, 8, 8]``: relevance of each history slot (0 = current position), board orientation."""
        return self.board_planes[:, :104].unflatten(1, (8, 13)).sum(dim=2)

    @property
    def pieces(self) -> torch.Tensor:
        """``[N, 12, 8, 8]``: relevance per piece plane (:data:`PIECE_NAMES`), summed over history."""
        return self.board_planes[:, :104].unflatten(1, (8, 13))[:, :, :12].sum(dim=1)

    def breakdown(self) -> TensorDict:
        """Relevance split by history step, plane group and piece type, as a ``TensorDict`` of batch ``[N]``.

        Keys: ``"history"`` ``[N, 8, 8, 8]``; the plane groups of :data:`GROUPS` (``"ours"``, ``"theirs"``,
        ``"repetition"``, ``"castling"``, ``"other"``; each ``[N, 8, 8]``, summing to :attr:`squares`);
        ``"pieces"`` ``[N, 12, 8, 8]`` (:data:`PIECE_NAMES`). All in board orientation.

        Example
        -------
        >>> parts = rel.breakdown()  # doctest: +SKIP
        >>> parts["ours"].sum((-2, -1))  # how much our pieces matter, per board  # doctest: +SKIP
        """
        planes = self.board_planes
        slots = planes[:, :104].unflatten(1, (8, 13))
        return TensorDict(
            {
                "history": slots.sum(dim=2),
                "ours": slots[:, :, 0:6].sum(dim=(1, 2)),
                "theirs": slots[:, :, 6:12].sum(dim=(1, 2)),
                "repetition": slots[:, :, 12].sum(dim=1),
                "castling": planes[:, 104:108].sum(dim=1),
                "other": planes[:, 108:112].sum(dim=1),
                "pieces": slots[:, :, :12].sum(dim=1),
            },
            batch_size=[len(self)],
        )

    def render(self, i: int = 0, **options: Any) -> Any:
        """Board ``i`` with its relevance as a heatmap (an SVG object; see ``LczeroBoard.render_heatmap``).

        By default the explained move is drawn as an arrow and the caption names the target and its value;
        ``options`` (``cmap``, ``vmax``, ``caption``, ``move``, ...) go to :func:`lczerolens.visual.render_heatmap`.

        Example
        -------
        >>> rel.render(0, cmap="coolwarm").save("heatmap.svg")  # doctest: +SKIP
        """
        if self.moves is not None:
            options.setdefault("move", self.moves[i])
        options.setdefault("caption", f"LRP relevance of {self._describe(i)}")
        return self.boards[i].render_heatmap(self.squares[i], **options)

    def render_grid(self, limit: int | None = None, **options: Any) -> Any:
        """All boards (or the first ``limit``) side by side on one shared colour scale.

        ``options`` go to :func:`lczerolens.visual.render_grid` (``cmap``, ``vmax``, ``ncols``, ...).

        Example
        -------
        >>> rel.render_grid(ncols=4).save("batch.svg")  # doctest: +SKIP
        """
        from lczerolens.visual import render_grid

        n = len(self) if limit is None else min(limit, len(self))
        if self.moves is not None:
            options.setdefault("move", self.moves[:n])
        options.setdefault("titles", [self._describe(i) for i in range(n)])
        if n < len(self):
            options.setdefault("caption", f"first {n} of {len(self)} positions")
        return render_grid(self.boards[:n], self.squares[:n], **options)

    def render_history(self, i: int = 0, **options: Any) -> Any:
        """Board ``i`` with the relevance of each of its 8 history slots (now, 1 ply ago, ...), one scale.

        Example
        -------
        >>> rel.render_history(0).save("history.svg")  # doctest: +SKIP
        """
        from lczerolens.visual import render_grid

        options.setdefault("titles", ["now"] + [f"{k} ply ago" if k == 1 else f"{k} plies ago" for k in range(1, 8)])
        return render_grid(self.boards[i], self.history[i], **options)

    def _repr_svg_(self) -> str | None:
        try:
            picture = self.render(0) if len(self) == 1 else self.render_grid(limit=8)
        except ImportError:
            return None  # no visual module: Jupyter falls back to __repr__
        return picture._repr_svg_()

    def _describe(self, i: int) -> str:
        if self.policy_indices is None:
            return f"{self.target_name}={float(self.target[i]):.4g}"
        return f"{self.moves[i].uci()}={float(self.target[i]):.4g}"

    def __repr__(self) -> str:
        shown = ", ".join(self._describe(i) for i in range(min(len(self), 4)))
        more = ", ..." if len(self) > 4 else ""
        return f"Relevance(N={len(self)}, target={self.target_name!r}, explained=[{shown}{more}])"
