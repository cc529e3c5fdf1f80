"""The result of a lens: relevance of every input plane, decoded onto the board.

Example
-------
>>> rel = LrpLens().relevance(model, board, target="value")  # doctest: +SKIP
>>> rel.squares[0].flatten()[chess.E4]  # relevance of e4, board orientation  # doctest: +SKIP
>>> rel.breakdown()["ours"]  # our pieces' share, [N, 8, 8]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chess
import numpy as np
import torch

from lczerolens.errors import InputShapeError, LczeroLensError

if TYPE_CHECKING:
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


#: Methods whose map is no share-out of the explained value (a sensitivity, or drops that need not add up):
#: captions leave out "map sums to x% of it" for them.
NOT_A_DECOMPOSITION = frozenset({"gradient", "SmoothGrad", "occlusion"})


class Relevance:
    """Relevance of a batch of ``N`` positions for one explained output each.

    Attributes
    ----------
    planes : torch.Tensor or None
        ``[N, 112, 8, 8]``, network orientation: input x modified gradient; sums to the explained output up
        to what biases and stabilisers absorb and what rules that do not conserve (the default's smoothed ReLUs,
        AttnLRP's softmax) add or remove. ``None`` for lenses that score squares, not planes (occlusion).
    squares : torch.Tensor
        ``[N, 8, 8]``, board orientation (``squares[i].flatten()[chess.E4]`` is e4), summed over planes.
    conservation : torch.Tensor
        ``[N]``: the sum of the map (``planes``, else ``squares``) divided by ``target``: the share of the
        explained number that the map accounts for (``nan`` where the target is 0).
    layers : dict of str to torch.Tensor
        Latent relevance recorded with ``record=``: module name -> relevance of its output.
    outputs : dict of str to torch.Tensor
        The network's outputs in the explaining pass (``"policy"``, ``"wdl_logits"``, ``"value_logit"``,
        ``"mlh"``, ... as the network returns them), one row per board: the evaluation comes with the map at no
        extra cost. Empty for lenses that do not run the plain position once.
    conditions : list of dict or None
        With ``condition=``: the ``K`` conditions; row ``i * K + k`` is board ``i`` under condition ``k``.
    method : str
        What made the map ("LRP relevance", "gradient x input", ...), used in captions.
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
        planes: torch.Tensor | None,
        target: torch.Tensor,
        boards: list,
        input_format: Any,
        target_name: str,
        policy_indices: torch.Tensor | None = None,
        *,
        squares: torch.Tensor | None = None,
        layers: Mapping[str, torch.Tensor] | None = None,
        conditions: Sequence[Mapping[str, Any]] | None = None,
        method: str = "LRP relevance",
        outputs: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.planes = planes
        self.target = target
        self.boards = list(boards)
        self.input_format = input_format
        self.target_name = target_name
        self.policy_indices = policy_indices
        self.layers: dict[str, torch.Tensor] = dict(layers or {})
        self.outputs: dict[str, torch.Tensor] = dict(outputs or {})
        self.conditions = None if conditions is None else [dict(c) for c in conditions]
        self.method = method
        if planes is None:
            if squares is None:
                raise InputShapeError("a Relevance needs planes [N, 112, 8, 8] or squares [N, 8, 8]")
            self.squares = squares
        else:
            self.squares = self._to_board(planes.sum(dim=1)) if squares is None else squares
        if self.squares.shape[0] != len(self.boards) or target.shape[0] != len(self.boards):
            raise InputShapeError(
                f"{len(self.boards)} boards but {self.squares.shape[0]} maps and {target.shape[0]} targets"
            )

    @property
    def conservation(self) -> torch.Tensor:
        """``[N]``: sum of the map / the explained value (``nan`` where that value is 0).

        1 means the map accounts for all of the explained number; with biases, the biases' share is missing
        (see the lens's documentation for which options conserve).
        """
        maps = self.planes if self.planes is not None else self.squares
        total = maps.flatten(1).sum(dim=1)
        target = self.target.to(total.dtype)
        zero = target == 0
        return torch.where(zero, torch.full_like(total, math.nan), total / torch.where(zero, 1, target))

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
            None if self.planes is None else self.planes[picked],
            self.target[picked],
            [self.boards[int(i)] for i in picked],
            self.input_format,
            self.target_name,
            None if self.policy_indices is None else self.policy_indices[picked],
            squares=self.squares[picked],
            layers={name: _rows(value, picked, len(self)) for name, value in self.layers.items()},
            conditions=self.conditions,
            method=self.method,
            outputs={name: value[picked] for name, value in self.outputs.items()},
        )

    @classmethod
    def cat(cls, parts: Sequence[Relevance]) -> Relevance:
        """One ``Relevance`` holding the rows of ``parts`` in order (same target, input format and method).

        Example
        -------
        >>> both = Relevance.cat([rel[0], rel[1]])  # doctest: +SKIP
        """
        parts = list(parts)
        if not parts or not all(isinstance(p, Relevance) for p in parts):
            raise InputShapeError("Relevance.cat needs a non-empty sequence of Relevance objects")
        first = parts[0]
        for p in parts[1:]:
            same = (p.target_name, int(p.input_format), p.method, sorted(p.layers), p.planes is None)
            if same != (first.target_name, int(first.input_format), first.method, sorted(first.layers),
                        first.planes is None):
                raise InputShapeError(
                    "Relevance.cat joins results of one lens, target kind and input format only; got "
                    f"{first.target_name!r}/{first.method!r} and {p.target_name!r}/{p.method!r}"
                )
        return cls(
            None if first.planes is None else torch.cat([p.planes for p in parts]),
            torch.cat([p.target for p in parts]),
            [b for p in parts for b in p.boards],
            first.input_format,
            first.target_name,
            None if first.policy_indices is None else torch.cat([p.policy_indices for p in parts]),
            squares=torch.cat([p.squares for p in parts]),
            layers={k: torch.cat([p.layers[k] for p in parts]) for k in first.layers},
            conditions=first.conditions,
            method=first.method,
            outputs={k: torch.cat([p.outputs[k] for p in parts]) for k in _shared_keys(p.outputs for p in parts)},
        )

    # ----------------------------------------------------------------------------------------------------------
    # Saving

    def save(self, path: str | Path) -> Path:
        """Write this result to ``path`` (an ``.npz``: tensors as arrays, the rest as JSON; no pickle).

        Boards keep their move history; :meth:`load` gives back an equal ``Relevance``.

        Example
        -------
        >>> rel.save("maps.npz"); Relevance.load("maps.npz")  # doctest: +SKIP
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "target": self.target.detach().cpu().numpy(),
            "squares": self.squares.detach().cpu().numpy(),
        }
        if self.planes is not None:
            arrays["planes"] = self.planes.detach().cpu().numpy()
        if self.policy_indices is not None:
            arrays["policy_indices"] = self.policy_indices.cpu().numpy()
        names = list(self.layers)
        for i, name in enumerate(names):
            arrays[f"layer_{i}"] = self.layers[name].detach().cpu().numpy()
        heads = list(self.outputs)
        for i, name in enumerate(heads):
            arrays[f"output_{i}"] = self.outputs[name].detach().cpu().numpy()
        meta = {
            "format": "lczerolens.Relevance/1",
            "target_name": self.target_name,
            "input_format": int(self.input_format),
            "method": self.method,
            "layers": names,
            "outputs": heads,
            "conditions": self.conditions,
            "boards": [_board_record(b) for b in self.boards],
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        try:
            with open(path, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        except OSError as error:
            raise LczeroLensError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Relevance:
        """Read a result written by :meth:`save` (never unpickles anything)."""
        from lczerolens.board import InputFormat, LczeroBoard

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
            if meta.get("format") != "lczerolens.Relevance/1":
                raise ValueError(f"unknown format {meta.get('format')!r}")
            boards = []
            for record in meta["boards"]:
                board = LczeroBoard(record["root"], chess960=bool(record.get("chess960", False)))
                for uci in record["moves"]:
                    board.push(chess.Move.from_uci(uci))
                boards.append(board)
            layers = {name: torch.from_numpy(arrays[f"layer_{i}"]) for i, name in enumerate(meta["layers"])}
            outputs = {name: torch.from_numpy(arrays[f"output_{i}"]) for i, name in enumerate(meta.get("outputs", []))}
            planes = arrays.get("planes")
            indices = arrays.get("policy_indices")
            return cls(
                None if planes is None else torch.from_numpy(planes),
                torch.from_numpy(arrays["target"]),
                boards,
                InputFormat(meta["input_format"]),
                meta["target_name"],
                None if indices is None else torch.from_numpy(indices),
                squares=torch.from_numpy(arrays["squares"]),
                layers=layers,
                conditions=meta.get("conditions"),
                method=meta.get("method", "LRP relevance"),
                outputs=outputs,
            )
        except FileNotFoundError:
            raise LczeroLensError(f"no saved relevance at {str(path)!r}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LczeroLensError(f"{str(path)!r} is not a relevance saved by Relevance.save: {error}") from None

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
        from tensordict import TensorDict  # imported on use: it takes a second to import

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

    def accounting(self) -> TensorDict:
        """Where the explained number went, per board: a ``TensorDict`` of ``[N]`` sums that add up to ``target``.

        Keys (all sums of relevance): ``"pieces"`` (the piece and repetition planes, 0-103, on the squares that
        hold a piece now), ``"empty"`` (the same planes on the empty squares: history and repetition),
        ``"castling"`` (planes 104-107), ``"side_to_move"`` (plane 108: side to move, or en passant in the
        canonical formats), ``"rule50"`` (109), ``"plane110"`` (110: zeros, or the armageddon side),
        ``"constant"`` (111, the all-ones plane) and ``"unexplained"``: ``target`` minus the whole map, the
        share not in the map: what biases and stabilisers absorbed, and what rules that do not conserve added or
        removed. A lens that scores squares only (occlusion) puts its map in
        ``"pieces"``/``"empty"`` and 0 in the plane groups.

        Example
        -------
        >>> acc = rel.accounting()  # doctest: +SKIP
        >>> float(acc["unexplained"][0] / rel.target[0])  # share not in the map  # doctest: +SKIP
        """
        from tensordict import TensorDict  # imported on use: it takes a second to import

        return TensorDict(self._accounting_parts(), batch_size=[len(self)])

    def _accounting_parts(self) -> dict[str, torch.Tensor]:
        """:meth:`accounting` as a plain dict of ``[N]`` tensors."""
        n = len(self)
        occupied = torch.zeros(n, 64, dtype=torch.bool, device=self.squares.device)
        for i, board in enumerate(self.boards):
            occupied[i, list(board.piece_map())] = True
        occupied = occupied.reshape(n, 8, 8)
        if self.planes is not None:
            planes = self.board_planes
            board_part = planes[:, :104].sum(dim=1)
            groups = {
                "castling": planes[:, 104:108].sum(dim=(1, 2, 3)),
                "side_to_move": planes[:, 108].sum(dim=(1, 2)),
                "rule50": planes[:, 109].sum(dim=(1, 2)),
                "plane110": planes[:, 110].sum(dim=(1, 2)),
                "constant": planes[:, 111].sum(dim=(1, 2)),
            }
        else:
            board_part = self.squares
            groups = {k: torch.zeros(n, dtype=self.squares.dtype, device=self.squares.device)
                      for k in ("castling", "side_to_move", "rule50", "plane110", "constant")}
        pieces = torch.where(occupied, board_part, 0).sum(dim=(1, 2))
        empty = torch.where(occupied, 0, board_part).sum(dim=(1, 2))
        total = pieces + empty + sum(groups.values())
        return {"pieces": pieces, "empty": empty, **groups, "unexplained": self.target.to(total.dtype) - total}

    def accounting_text(self, i: int = 0) -> str:
        """:meth:`accounting` of board ``i`` in one line, as shares of the explained number where it is not 0.

        >>> rel.accounting_text(0)  # doctest: +SKIP
        'pieces 61%, empty squares 4%, castling 0%, side to move 0%, rule-50 1%, constant plane -3%; not in the
        map (biases, stabilisers, rules that do not conserve) 37%'
        """
        acc = {key: value[i] for key, value in self._accounting_parts().items()}
        target = float(self.target[i])
        names = {"pieces": "pieces", "empty": "empty squares", "castling": "castling", "side_to_move": "side to move",
                 "rule50": "rule-50", "plane110": "plane 110", "constant": "constant plane"}

        def show(value: float) -> str:
            return f"{value / target:.0%}" if target != 0 else f"{value:+.3g}"

        parts = [f"{label} {show(float(acc[k]))}" for k, label in names.items()
                 if k != "plane110" or float(acc[k]) != 0]
        rest = show(float(acc["unexplained"]))
        return ", ".join(parts) + f"; not in the map (biases, stabilisers, rules that do not conserve) {rest}"

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
        options.setdefault("caption", self.caption(i))
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
        """Board ``i``'s relevance of each of its 8 history slots (now, 1 ply ago, ...), on one colour scale.

        Each slot is drawn on the position it encodes: the board as it stood that many plies ago (for a
        position set up from a FEN without moves, lc0 repeats the FEN position in the older slots, and so does
        the picture). Squares stay in the current board's orientation, as lc0 encodes every slot.

        Example
        -------
        >>> rel.render_history(0).save("history.svg")  # doctest: +SKIP
        """
        from lczerolens.visual import render_grid

        options.setdefault("titles", ["now"] + [f"{k} ply ago" if k == 1 else f"{k} plies ago" for k in range(1, 8)])
        return render_grid(_past_positions(self.boards[i], 8), self.history[i], **options)

    def _repr_svg_(self) -> str | None:
        try:
            picture = self.render(0) if len(self) == 1 else self.render_grid(limit=8)
        except ImportError:
            return None  # no visual module: Jupyter falls back to __repr__
        return picture._repr_svg_()

    def caption(self, i: int = 0) -> str:
        """What board ``i``'s map explains, how much of it the map accounts for, and the network's evaluation.

        >>> rel.caption(0)  # doctest: +SKIP
        'LRP relevance of Bc4 (f1c4), policy logit +13.01 · map sums to 20% of it · eval W 35% D 40% L 25%'
        """
        text = f"{self.method} of {self._explained(i)}"
        share = float(self.conservation[i])
        if math.isfinite(share) and self.method not in NOT_A_DECOMPOSITION:
            text += f" \u00b7 map sums to {share:.0%} of it"
        if "wdl_logits" in self.outputs:
            w, d, lo = torch.softmax(self.outputs["wdl_logits"][i].double(), dim=0).tolist()
            text += f" \u00b7 eval W {w:.0%} D {d:.0%} L {lo:.0%}"
        elif "value_logit" in self.outputs:
            text += f" \u00b7 eval value {math.tanh(float(self.outputs['value_logit'][i].reshape(-1)[0])):+.2f}"
        return text

    def _explained(self, i: int) -> str:
        """``Bc4 (f1c4), policy logit +13.01`` or ``value (win - loss logit) +0.52``."""
        value = float(self.target[i])
        if self.policy_indices is None:
            what = {"value": "value (win - loss logit)", "mlh": "moves left"}.get(self.target_name, self.target_name)
            if self.target_name in ("win", "draw", "loss"):
                what = f"{self.target_name} logit"
            return f"{what} {value:+.4g}"
        move = self.moves[i]
        try:
            san = self.boards[i].san(move)
        except (ValueError, AssertionError):
            san = move.uci()
        name = san if san == move.uci() else f"{san} ({move.uci()})"
        return f"{name}, policy logit {value:+.4g}"

    def _describe(self, i: int) -> str:
        if self.policy_indices is None:
            return f"{self.target_name}={float(self.target[i]):.4g}"
        return f"{self.moves[i].uci()}={float(self.target[i]):.4g}"

    def __repr__(self) -> str:
        shown = ", ".join(self._describe(i) for i in range(min(len(self), 4)))
        more = ", ..." if len(self) > 4 else ""
        return f"Relevance(N={len(self)}, target={self.target_name!r}, explained=[{shown}{more}])"


def _rows(value: torch.Tensor, picked: torch.Tensor, n: int) -> torch.Tensor:
    """Rows ``picked`` of a per-board tensor, or of the attention body's ``[N*64, E]`` token stream."""
    if value.shape[0] == n:
        return value[picked]
    per = value.shape[0] // n
    return value.unflatten(0, (n, per))[picked].flatten(0, 1)


def _past_positions(board: chess.Board, count: int) -> list[chess.Board]:
    """``board`` now and ``count - 1`` plies back; past the start of its move stack, the root position."""
    out = []
    past = board.copy()
    for _ in range(count):
        out.append(past.copy(stack=False))
        if past.move_stack:
            past.pop()
    return out


def _shared_keys(tables: Any) -> list[str]:
    """The keys every table has, in the first table's order."""
    tables = list(tables)
    return [key for key in tables[0] if all(key in t for t in tables[1:])]


def _board_record(board: chess.Board) -> dict[str, Any]:
    root = board.root()
    return {"root": root.fen(), "moves": [m.uci() for m in board.move_stack], "chess960": bool(board.chess960)}
