"""The :class:`Concept` base class and its combinators (``&``, ``|``, ``~``).

A concept labels positions: :meth:`Concept.labels` takes a sequence of boards and returns one label per board
(``[N]``) or one per square (``[N, 64]``, python-chess square index, board orientation: ``labels[i, chess.E4]``
is e4 whatever side is to move). Three kinds of labels:

- ``"binary"``: a ``torch.long`` tensor of 0 and 1 (``n_classes == 2``);
- ``"multiclass"``: a ``torch.long`` tensor of class indices in ``[0, n_classes)``;
- ``"continuous"``: a ``torch.float32`` tensor (``n_classes is None``).

Subclass :class:`Concept` to add one: set the class attributes (or pass them to ``__init__``) and implement
:meth:`Concept.compute`, which receives a list of boards and returns the label tensor.

Example
-------
>>> import chess, torch
>>> from lczerolens.concepts import Concept
>>> class WhiteToMove(Concept):
...     name = "white_to_move"
...     kind = "binary"
...     def compute(self, boards):
...         return torch.tensor([b.turn == chess.WHITE for b in boards], dtype=torch.long)
>>> WhiteToMove().labels([chess.Board()]).tolist()
[1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import chess
import torch

from lczerolens.errors import InputShapeError, InvalidBoardError, LensError

__all__ = ["Concept", "AndConcept", "OrConcept", "NotConcept", "ClassEquals", "as_board_list"]

Kind = Literal["binary", "multiclass", "continuous"]
_KINDS = ("binary", "multiclass", "continuous")


def as_board_list(boards: chess.Board | Sequence[chess.Board]) -> list[chess.Board]:
    """One board or a sequence of boards as a non-empty list of python-chess boards (raise otherwise)."""
    if isinstance(boards, chess.Board):
        return [boards]
    if isinstance(boards, (str, bytes)) or not isinstance(boards, Sequence):
        try:
            boards = list(boards)
        except TypeError:
            raise InvalidBoardError(
                f"expected a chess board or a sequence of boards, got {type(boards).__name__}"
            ) from None
    out = list(boards)
    if not out:
        raise InputShapeError("got an empty sequence of boards; pass at least one board")
    for b in out:
        if not isinstance(b, chess.Board):
            raise InvalidBoardError(
                f"expected chess boards (lczerolens.LczeroBoard or chess.Board), got {type(b).__name__}: {b!r}"
            )
    return out


class Concept:
    """A property of a position, or of each square of it, that a network may or may not represent.

    Attributes
    ----------
    name : str
        A short identifier (used as a column name in probe tables).
    per_square : bool
        ``True``: :meth:`labels` returns ``[N, 64]`` (board orientation); ``False``: ``[N]``.
    kind : {"binary", "multiclass", "continuous"}
    n_classes : int or None
        2 for binary, the number of classes for multiclass, ``None`` for continuous.
    classes : tuple of str or None
        Optional names of the classes, index = class.
    """

    name: str = "concept"
    per_square: bool = False
    kind: Kind = "binary"
    n_classes: int | None = 2
    classes: tuple[str, ...] | None = None

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        """The labels of a non-empty list of boards; override in subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute(boards)")

    def labels(self, boards: chess.Board | Sequence[chess.Board]) -> torch.Tensor:
        """Labels of ``boards``: ``[N]`` or ``[N, 64]`` (board orientation, python-chess square index).

        ``torch.long`` for binary and multiclass concepts, ``torch.float32`` for continuous ones.
        """
        board_list = as_board_list(boards)
        out = self.compute(board_list)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        expected = (len(board_list), 64) if self.per_square else (len(board_list),)
        if tuple(out.shape) != expected:
            raise InputShapeError(
                f"concept {self.name!r} returned labels of shape {tuple(out.shape)}, expected {expected}"
            )
        if self.kind == "continuous":
            return out.to(torch.float32)
        return out.to(torch.long)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- combinators -------------------------------------------------------------------------------------------

    def _check_binary(self, other: object, op: str) -> Concept:
        if not isinstance(other, Concept):
            return cast(Concept, NotImplemented)  # the operator hands it on to Python
        for c in (self, other):
            if c.kind != "binary":
                raise LensError(f"'{op}' combines binary concepts; {c.name!r} is {c.kind}")
        return other

    def __and__(self, other: Concept) -> Concept:
        other = self._check_binary(other, "&")
        if other is NotImplemented:
            return NotImplemented
        return AndConcept(self, other)

    def __or__(self, other: Concept) -> Concept:
        other = self._check_binary(other, "|")
        if other is NotImplemented:
            return NotImplemented
        return OrConcept(self, other)

    def equals(self, value: int | str) -> Concept:
        """A binary concept: 1 where this (multiclass or binary) concept's label is class ``value`` (an index,
        or a name from :attr:`classes`).

        >>> from lczerolens.concepts import PieceOnSquare
        >>> PieceOnSquare().equals("our K").labels([chess.Board()])[0, chess.E1].item()
        1
        """
        if self.kind == "continuous":
            raise LensError(f"equals() needs a class label; {self.name!r} is continuous")
        if isinstance(value, str):
            if not self.classes or value not in self.classes:
                raise LensError(f"{self.name!r} has no class named {value!r}; its classes are {self.classes}")
            index = self.classes.index(value)
        else:
            index = int(value)
        if self.n_classes is not None and not 0 <= index < self.n_classes:
            raise LensError(f"class {index} is out of range for {self.name!r} ({self.n_classes} classes)")
        return ClassEquals(self, index)

    def __invert__(self) -> Concept:
        if self.kind != "binary":
            raise LensError(f"'~' negates a binary concept; {self.name!r} is {self.kind}")
        return NotConcept(self)


class _Combined(Concept):
    """Two binary concepts combined square by square; a per-board concept is broadcast over the squares when
    the other is per square."""

    kind = "binary"
    n_classes = 2
    symbol = "?"

    def __init__(self, left: Concept, right: Concept) -> None:
        self.left, self.right = left, right
        self.per_square = left.per_square or right.per_square
        self.name = f"({left.name} {self.symbol} {right.name})"

    def _both(self, boards: list[chess.Board]) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.left.labels(boards).bool(), self.right.labels(boards).bool()
        if self.per_square:
            a = a if a.ndim == 2 else a[:, None].expand(-1, 64)
            b = b if b.ndim == 2 else b[:, None].expand(-1, 64)
        return a, b

    def __repr__(self) -> str:
        return f"{self.left!r} {self.symbol} {self.right!r}"


class AndConcept(_Combined):
    """``left & right``: 1 where both are 1."""

    symbol = "&"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        a, b = self._both(boards)
        return (a & b).long()


class OrConcept(_Combined):
    """``left | right``: 1 where either is 1."""

    symbol = "|"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        a, b = self._both(boards)
        return (a | b).long()


class NotConcept(Concept):
    """``~concept``: 1 where the binary concept is 0."""

    kind = "binary"
    n_classes = 2

    def __init__(self, inner: Concept) -> None:
        self.inner = inner
        self.per_square = inner.per_square
        self.name = f"~{inner.name}"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        return 1 - self.inner.labels(boards)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


class ClassEquals(Concept):
    """``concept.equals(k)``: 1 where the concept's label is class ``k``."""

    kind = "binary"
    n_classes = 2

    def __init__(self, inner: Concept, index: int) -> None:
        self.inner, self.index = inner, index
        self.per_square = inner.per_square
        label = inner.classes[index] if inner.classes else str(index)
        self.name = f"{inner.name}=={label}"

    def compute(self, boards: list[chess.Board]) -> torch.Tensor:
        return (self.inner.labels(boards) == self.index).long()

    def __repr__(self) -> str:
        return f"{self.inner!r}.equals({self.index})"
