"""What SAE features respond to: their top positions (with the square), their best built-in concept, a grid.

Feature maps are in board orientation: ``maps[i, j, chess.E4]`` is feature ``j`` at e4 of board ``i``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import torch

from lczerolens.errors import InvalidOptionError
from lczerolens.features.sae import SAE
from lczerolens.features.train import iter_boards, module_tokens

__all__ = ["feature_maps", "top_feature_positions", "feature_concepts", "render_feature"]


def feature_maps(model: Any, sae: SAE, module: str, boards: Any, *, batch_size: int = 256) -> torch.Tensor:
    """``[N, d_sae, 64]``: each feature's activation on each square (board orientation, python-chess index)."""
    from lczerolens.concepts.activations import board_square_index
    from lczerolens.lenses.base import as_boards, model_parts

    _, input_format = model_parts(model)
    board_list = as_boards(boards)
    tokens = module_tokens(model, board_list, module, batch_size=batch_size)
    with torch.no_grad():
        f = sae.encode(tokens.to(sae.W_dec.device))  # [N, 64 network squares, d_sae], where the SAE's weights are
    index = board_square_index(board_list, input_format).to(f.device)  # board square -> network square
    return torch.gather(f, 1, index[:, :, None].expand(-1, -1, f.shape[2])).transpose(1, 2)


def top_feature_positions(
    model: Any, source: Any, sae: SAE, module: str, feature: int, *, k: int = 16, batch_size: int = 256
) -> list[tuple[float, int, Any]]:
    """The ``k`` positions of ``source`` where ``feature`` is highest: ``(activation, square, board)``, highest
    first; ``square`` is the python-chess index of the square where it peaks. Streams ``source``."""
    if not 0 <= feature < sae.d_sae:
        raise InvalidOptionError(f"feature={feature} must lie in [0, {sae.d_sae})")
    heap: list[tuple[float, int, int, Any]] = []
    counter = 0
    batch: list[Any] = []

    def flush() -> None:
        nonlocal counter
        maps = feature_maps(model, sae, module, batch, batch_size=batch_size)[:, feature]
        best, square = maps.max(dim=1)
        for value, sq, board in zip(best.tolist(), square.tolist(), batch, strict=True):
            item = (value, -counter, sq, board)
            counter += 1
            if len(heap) < k:
                heapq.heappush(heap, item)  # type: ignore[misc]
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)  # type: ignore[misc]

    for board in iter_boards(source):
        batch.append(board)
        if len(batch) == batch_size:
            flush()
            batch = []
    if batch:
        flush()
    ranked = sorted(heap, key=lambda item: (-item[0], -item[1]))
    return [(value, square, board) for value, _, square, board in ranked]


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC of each column of ``scores`` ``[M, F]`` for binary ``labels`` ``[M]`` (ties count half)."""
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full((scores.shape[1],), float("nan"))
    ranks = torch.empty_like(scores, dtype=torch.float64)
    for j in range(scores.shape[1]):
        col = scores[:, j]
        _, inverse, counts = torch.unique(col, return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        mid = ends - (counts.double() - 1) / 2  # average rank of each tie group
        ranks[:, j] = mid[inverse]
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def feature_concepts(
    model: Any,
    sae: SAE,
    module: str,
    boards: Any,
    concepts: Sequence[Any] | None = None,
    *,
    features: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Each feature's best-matching binary concept, by ROC AUC of its activation on the concept's labels.

    Per-square concepts (labels ``[N, 64]``) are scored square by square; per-position ones (``[N]``) against the
    feature's maximum over the board. Multi-class labels are one-vs-rest per class (``name=class``, the class
    named as the concept's ``classes`` names it, e.g. ``piece_on_square=our N``).
    ``concepts`` defaults to a set of built-ins (pieces by type and colour, attacked squares, hanging pieces,
    legal-move from-squares, in check).

    Returns
    -------
    list of dict
        One per feature: ``feature``, ``concept``, ``auc`` (of the best concept), ``frequency`` (share of squares
        where the feature is active).
    """
    import chess

    from lczerolens import concepts as cc
    from lczerolens.lenses.base import as_boards

    board_list = as_boards(boards)
    if concepts is None:
        concepts = [
            cc.PieceOnSquare(),
            cc.AttackedBy(chess.WHITE),
            cc.AttackedBy(chess.BLACK),
            cc.HangingPiece(),
            cc.LegalMoveFrom(),
            cc.InCheck(),
        ]
    maps = feature_maps(model, sae, module, board_list).cpu()  # [N, F, 64]; the labels are on the CPU
    ids = list(range(sae.d_sae)) if features is None else list(features)
    maps = maps[:, ids]
    per_square = maps.transpose(1, 2).reshape(-1, len(ids)).double()
    per_board = maps.amax(dim=2).double()
    best_auc = torch.full((len(ids),), float("-inf"), dtype=torch.float64)
    best_name = [""] * len(ids)
    for concept in concepts:
        labels = torch.as_tensor(concept.labels(board_list))
        scores = per_square if labels.dim() == 2 else per_board
        flat = labels.reshape(-1)
        classes = flat.unique()
        binary = len(classes) <= 2 and set(classes.tolist()) <= {0, 1}
        for cls in [1] if binary else classes.tolist():
            target = (flat == cls) if not binary else flat.bool()
            auc = _auc(scores, target)
            names = getattr(concept, "classes", None)
            label = names[int(cls)] if names is not None and 0 <= int(cls) < len(names) else cls
            name = concept.name if binary else f"{concept.name}={label}"
            better = auc > best_auc
            best_auc = torch.where(better, auc, best_auc)
            for j in better.nonzero()[:, 0].tolist():
                best_name[j] = name
    freq = (maps > 0).double().mean(dim=(0, 2))
    return [
        {"feature": f, "concept": best_name[j], "auc": float(best_auc[j]), "frequency": float(freq[j])}
        for j, f in enumerate(ids)
    ]


def render_feature(model: Any, source: Any, sae: SAE, module: str, feature: int, *, k: int = 8, **options: Any) -> Any:
    """A grid (:func:`lczerolens.visual.render_grid`) of ``feature``'s top ``k`` positions of ``source``, its
    activation on each square as the heatmap, titled with the peak value and square."""
    import chess

    from lczerolens.visual import render_grid

    top = top_feature_positions(model, source, sae, module, feature, k=k)
    boards = [board for _, _, board in top]
    maps = feature_maps(model, sae, module, boards)[:, feature] if boards else torch.zeros(0, 64)
    titles = [f"{value:.2f} @ {chess.square_name(square)}" for value, square, _ in top]
    options.setdefault("caption", f"SAE feature {feature} of {module}")
    return render_grid(boards, maps, titles=titles, **options)
