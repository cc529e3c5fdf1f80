"""Linear probes: how well a layer's activations predict a concept, on positions held out by game.

:func:`fit_probe` fits one probe (multinomial logistic regression or ridge regression, in torch) on a split by
``groups`` and reports held-out metrics. :func:`probe_layers` probes a concept at several modules of a network
and of a control network with the same architecture and random weights (:func:`control_model`, built by
:mod:`lczerolens.testing`), giving selectivity = score - control score per layer. :func:`plot_probe_layers`
draws the scores by layer as an SVG.

Features
--------
- Per-square concepts (``[N, 64]`` labels) are probed square by square with one probe shared by all squares: the
  sample for (position, square) is the activation vector at that square (``C`` channels, or ``E`` features of
  that token), with squares mapped from network orientation (flipped for black to move) to board orientation
  so they line up with the labels. ``N`` positions give ``64 N`` samples; the groups follow the positions.
- Per-position concepts are probed on the whole activation flattened (``features="flat"``, in network
  orientation, as the network sees it) or on its mean over squares (``features="mean"``).

Example
-------
>>> from lczerolens.concepts import PieceOnSquare, probe_layers
>>> rows = probe_layers(model, PieceOnSquare(), boards, modules=["inputconv", "block5/conv2/relu"])  # doctest: +SKIP
>>> rows[0]["score"], rows[0]["control"], rows[0]["selectivity"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chess
import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from lczerolens.concepts.activations import (
    _activations,
    _flat_features,
    _mean_features,
    resolve_modules,
    square_features,
)
from lczerolens.concepts.base import Concept, as_board_list
from lczerolens.errors import InputShapeError, LensError, UnsupportedModelError

if TYPE_CHECKING:
    from lczerolens.board import InputFormat
    from lczerolens.lenses.base import ModelLike
    from lczerolens.model.model import LczeroModel
    from lczerolens.visual import Heatmap

__all__ = ["ProbeResult", "ProbeTable", "fit_probe", "split_groups", "probe_layers", "control_model",
           "plot_probe_layers"]  # fmt: skip


@dataclass
class ProbeResult:
    """A fitted probe and its scores.

    Attributes
    ----------
    kind : "logistic" or "linear"
    metric : "accuracy" (logistic) or "r2" (linear)
    score : the metric on the held-out samples; ``train_score`` on the training samples.
    baseline : what predicting without the activations scores on the held-out samples: the accuracy of always
        answering the training set's most frequent class (logistic), 0 for R^2 (predicting the training mean
        scores about 0).
    balanced_accuracy : held-out mean of per-class recall over the classes present there (logistic only);
        ``chance`` = 1 / the number of those classes, what a constant answer scores on it;
        ``train_balanced_accuracy`` the same on the training samples.
    weight, bias : the probe in the raw feature units: ``logits = x @ weight.T + bias`` (``[K, D]``, ``[K]``;
        K classes for logistic, K targets for linear).
    n_train, n_test : samples on each side; ``test_groups``: the held-out group ids.
    """

    kind: str
    metric: str
    score: float
    train_score: float
    baseline: float
    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor = field(repr=False)
    n_train: int = 0
    n_test: int = 0
    balanced_accuracy: float | None = None
    chance: float | None = None
    train_balanced_accuracy: float | None = None
    test_groups: np.ndarray | None = field(default=None, repr=False)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices (logistic) or predicted values (linear; ``[M]`` for one target) for ``features``
        ``[M, D]``."""
        out = features.to(self.weight.dtype) @ self.weight.T + self.bias
        if self.kind == "logistic":
            return out.argmax(dim=1)
        return out[:, 0] if out.shape[1] == 1 else out


def split_groups(groups: npt.ArrayLike, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask ``[M]``, ``True`` for held-out samples: a random ``test_fraction`` of the distinct groups
    (at least one, and at least one left for training), so no group straddles the split. Deterministic in
    ``seed``."""
    group_ids = np.asarray(groups)
    if group_ids.ndim != 1:
        raise InputShapeError(f"groups must be one id per sample, got shape {group_ids.shape}")
    unique = np.unique(group_ids)
    if len(unique) < 2:
        raise LensError(f"a split by groups needs at least 2 distinct groups, got {len(unique)}")
    if not 0 < test_fraction < 1:
        raise LensError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    n_test = min(max(1, int(round(test_fraction * len(unique)))), len(unique) - 1)
    held_out = rng.permutation(unique)[:n_test]
    return np.isin(group_ids, held_out)


def _standardize(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False)
    # Constant features (dead channels) carry nothing; a unit scale keeps them at 0 instead of dividing by 0.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean, std


def _fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int, balanced: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    class_weight = None
    if balanced:
        # Each class present weighs as much in the loss as any other (n / (k * count)).
        counts = torch.bincount(y, minlength=n_classes).to(x.dtype)
        present = counts > 0
        class_weight = torch.where(present, counts.sum() / (present.sum() * counts.clamp(min=1)), 0.0)
    weight = torch.zeros(n_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6, tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y, weight=class_weight) + l2 * (weight * weight).sum()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]  # torch leaves LBFGS.step unannotated
    return weight.detach(), bias.detach()


def _fit_ridge(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Minimises mean squared error + l2 * |w|^2 on centred data; closed form, in float64.
    x64, y64 = x.double(), y.double()
    xm, ym = x64.mean(0), y64.mean(0)
    xc, yc = x64 - xm, y64 - ym
    gram = xc.T @ xc / len(x64) + l2 * torch.eye(x64.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, xc.T @ yc / len(x64)).T  # [T, D]
    bias = ym - weight @ xm
    return weight.to(x.dtype), bias.to(x.dtype)


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    ss_res = ((pred - y) ** 2).sum().item()
    ss_tot = ((y - y.mean(0)) ** 2).sum().item()
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def fit_probe(
    activations: torch.Tensor,
    labels: torch.Tensor,
    *,
    groups: npt.ArrayLike,
    kind: str = "logistic",
    l2: float = 1e-4,
    test_fraction: float = 0.2,
    seed: int = 0,
    n_classes: int | None = None,
    max_iter: int = 100,
    balanced: bool = False,
) -> ProbeResult:
    """Fit a linear probe from ``activations`` to ``labels`` on a split by ``groups``; score it on the held-out
    groups.

    Features are standardised with the training samples' mean and standard deviation before fitting (so ``l2``
    means the same whatever the layer's scale); the returned weights are mapped back to raw units.

    Parameters
    ----------
    activations : tensor ``[M, D]`` (anything ``[M, ...]`` is flattened).
    labels : ``[M]`` class indices (logistic) or ``[M]`` / ``[M, T]`` values (linear).
    groups : ``[M]`` ids (e.g. game numbers); samples of one group are all on one side of the split.
    kind : ``"logistic"`` (multinomial, cross-entropy, full-batch L-BFGS from zeros: deterministic) or
        ``"linear"`` (ridge regression, closed form).
    l2 : weight penalty added to the mean loss: ``l2 * |W|^2`` on standardised features.
    test_fraction, seed : the share of groups held out and the seed that picks them (:func:`split_groups`).
    n_classes : logistic only; default ``labels.max() + 1``.
    max_iter : L-BFGS iterations.
    balanced : logistic only: weigh classes inversely to their training frequency (for rare classes such as
        hanging pieces, where always answering "no" already scores a high accuracy); compare
        ``balanced_accuracy`` then.

    Returns
    -------
    ProbeResult

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(400, 5, generator=g); y = (x[:, 0] > 0).long()
    >>> result = fit_probe(x, y, groups=torch.arange(400) // 4)
    >>> result.metric, result.score > 0.95
    ('accuracy', True)
    """
    if kind not in ("logistic", "linear"):
        raise LensError(f"kind must be 'logistic' or 'linear', not {kind!r}")
    x = torch.as_tensor(activations)
    x = x.reshape(x.shape[0], -1).to(torch.float32)
    y = torch.as_tensor(labels)
    groups = np.asarray(groups.cpu() if isinstance(groups, torch.Tensor) else groups)
    if y.shape[0] != x.shape[0] or groups.shape[0] != x.shape[0]:
        raise InputShapeError(
            f"activations, labels and groups need one row per sample: got {x.shape[0]}, {y.shape[0]}, "
            f"{groups.shape[0]}"
        )
    if not torch.isfinite(x).all():
        raise LensError("activations have non-finite values")
    if l2 < 0:
        raise LensError(f"l2 must be >= 0, got {l2}")
    test = torch.from_numpy(split_groups(groups, test_fraction, seed))
    train = ~test
    mean, std = _standardize(x[train])
    xs = (x - mean) / std
    if kind == "logistic":
        y = y.long()
        if y.ndim != 1:
            hint = ""
            if y.ndim == 2 and y.shape[1] == 64:
                hint = ("; for per-square labels [N, 64] make one sample per square: "
                        "square_features(activation, boards, input_format).reshape(-1, C), labels.reshape(-1), "
                        "groups repeated 64 times (np.repeat(groups, 64)), or use probe_layers")  # fmt: skip
            raise InputShapeError(f"logistic probes take class labels [M], got shape {tuple(y.shape)}{hint}")
        k = int(n_classes) if n_classes is not None else int(y.max()) + 1
        if y.min() < 0 or y.max() >= k:
            raise LensError(f"class labels must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]")
        w, b = _fit_logistic(xs[train], y[train], k, l2, max_iter, balanced)
        pred = (xs @ w.T + b).argmax(1)
        correct = pred == y
        majority = int(torch.bincount(y[train], minlength=k).argmax())
        recalls = [correct[test & (y == c)].float().mean().item() for c in range(k) if (y[test] == c).any()]
        train_recalls = [correct[train & (y == c)].float().mean().item() for c in range(k) if (y[train] == c).any()]
        result: dict[str, Any] = dict(metric="accuracy", score=correct[test].float().mean().item(),
                      train_score=correct[train].float().mean().item(),
                      baseline=(y[test] == majority).float().mean().item(),
                      balanced_accuracy=float(np.mean(recalls)), chance=1.0 / len(recalls),
                      train_balanced_accuracy=float(np.mean(train_recalls)))  # fmt: skip
    else:
        y = y.to(torch.float32)
        y2 = y[:, None] if y.ndim == 1 else y
        w, b = _fit_ridge(xs[train], y2[train], l2)
        pred = xs @ w.T + b
        result = dict(metric="r2", score=_r2(pred[test], y2[test]), train_score=_r2(pred[train], y2[train]),
                      baseline=0.0)  # fmt: skip
    weight = w / std[None, :]
    bias = b - (w * (mean / std)[None, :]).sum(1)
    return ProbeResult(kind=kind, weight=weight, bias=bias, n_train=int(train.sum()), n_test=int(test.sum()),
                       test_groups=np.unique(groups[test.numpy()]), **result)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Control network
# ------------------------------------------------------------------------------------------------------------


def _residual_spec(model: ModelLike) -> dict[str, Any]:
    """The :func:`lczerolens.testing.random_net` spec of a residual net, read off its module names and the output
    shapes of one forward pass (so it works the same for natively loaded weights and ONNX exports)."""
    from lczerolens.board import LczeroBoard

    network = getattr(model, "network", model)
    modules = dict(network.named_modules())
    names = list(modules)
    wanted = [n for n in ("inputconv", "block0/conv2/se/relu", "policy/conv/relu", "value/conv/relu",
                          "value/dense1/relu", "mlh/conv/relu", "mlh/dense1/relu") if n in modules]  # fmt: skip
    shapes = {name: tuple(t.shape) for name, t in _activations(model, [LczeroBoard()], wanted).items()}
    heads = tuple(getattr(model, "heads", ()) or getattr(network, "heads", ()))
    act = next((n.rsplit("/", 1)[1] for n in names if n.startswith("inputconv/")), "relu")
    if "policy/conv2" in modules:
        policy = "conv"
    elif "policy/conv/relu" in modules:
        policy = "classical"
    else:
        policy = "attention"
    spec: dict[str, Any] = {
        "input_format": int(getattr(model, "input_format", getattr(network, "input_format", 1))),
        "blocks": sum(1 for n in names if re.fullmatch(r"block\d+/conv1", n)),
        "filters": shapes["inputconv"][1],
        "se": "block0/conv2/se/relu" in shapes,
        "activation": act if act in ("relu", "mish") else "relu",
        "value": "wdl" if "wdl" in heads or not heads else "value",
        "moves_left": "mlh" in heads,
        "policy": policy,
    }
    if spec["se"]:
        spec["se_channels"] = shapes["block0/conv2/se/relu"][-1]
    if policy == "classical":
        spec["policy_channels"] = shapes["policy/conv/relu"][1]
    if "value/conv/relu" in shapes:
        spec["value_channels"] = shapes["value/conv/relu"][1]
    if "value/dense1/relu" in shapes:
        spec["value_hidden"] = shapes["value/dense1/relu"][-1]
    if spec["moves_left"] and "mlh/conv/relu" in shapes:
        spec["mlh_channels"] = shapes["mlh/conv/relu"][1]
        spec["mlh_hidden"] = shapes["mlh/dense1/relu"][-1]
    return spec


def control_model(model: ModelLike, seed: int = 0) -> LczeroModel:
    """A network with ``model``'s architecture and random weights, from :func:`lczerolens.testing.random_net`.

    Supports residual (SE-)ResNets, loaded from lc0 weights or from an ONNX export (blocks, filters,
    squeeze-excitation width, heads, activation and input format are read off ``model``'s module names and the
    output shapes of one forward pass). Written to a temporary lc0 file and loaded with
    :meth:`~lczerolens.LczeroModel.from_path`, so it goes through the same loader as a real net. The random
    weights are calibrated (see :mod:`lczerolens.testing`): batch norms fitted to plausible inputs, so
    activations keep their scale through the blocks.

    Raises
    ------
    UnsupportedModelError
        For other architectures (pass your own ``control=`` to :func:`probe_layers`).
    """
    from lczerolens.model.model import LczeroModel
    from lczerolens.testing import write_random_net

    network = getattr(model, "network", model)
    if "inputconv" not in dict(network.named_modules()):
        raise UnsupportedModelError(
            "control_model builds residual nets only; for other nets pass control=<an LczeroModel with random "
            "weights of the same shape> (e.g. from lczerolens.testing.write_random_net('x.pb.gz', 'attention', ...))"
        )
    spec = _residual_spec(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_net(Path(tmp) / "control.pb.gz", "residual", seed=seed, **spec)
        return LczeroModel.from_path(path)


# ------------------------------------------------------------------------------------------------------------
# Probing layers
# ------------------------------------------------------------------------------------------------------------


class ProbeTable(list[dict[str, Any]]):
    """The rows of :func:`probe_layers` (a list of dicts), printable as a table and drawable with :meth:`plot`."""

    columns = ("module", "metric", "score", "control", "selectivity", "baseline", "accuracy", "balanced",
               "train_score", "n_train", "n_test")  # fmt: skip

    def format(self) -> str:
        """A plain-text table (Markdown pipe syntax)."""
        cols = [c for c in self.columns if any(c in row for row in self)]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for row in self:
            cells = []
            for c in cols:
                v = row.get(c)
                cells.append("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def plot(self, **options: Any) -> Heatmap:
        """:func:`plot_probe_layers` of these rows."""
        return plot_probe_layers(self, **options)


def _features_and_labels(
    activation: torch.Tensor,
    labels: torch.Tensor,
    boards: list[chess.Board],
    input_format: InputFormat | int,
    features: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if labels.ndim == 2:  # per square: one sample per (position, square)
        feats = square_features(activation, boards, input_format)  # [N, 64, C]
        return feats.reshape(-1, feats.shape[-1]), labels.reshape(-1)
    if features == "mean":
        return _mean_features(activation), labels
    return _flat_features(activation), labels


def probe_layers(
    model: ModelLike,
    concept: Concept,
    boards: Sequence[chess.Board],
    modules: str | Sequence[str] | None = None,
    *,
    groups: npt.ArrayLike | None = None,
    control: ModelLike | str | None = "random",
    kind: str | None = None,
    features: str = "flat",
    l2: float = 1e-4,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 256,
    max_iter: int = 100,
    balanced: bool = False,
    labels: torch.Tensor | None = None,
) -> ProbeTable:
    """Probe ``concept`` at each of ``modules`` of ``model`` and of a random-weight control; one row per module.

    Parameters
    ----------
    model : lczerolens.LczeroModel
    concept : the concept to probe; its labels are computed once for ``boards`` (or pass them as ``labels``).
    boards : the positions.
    modules : names or glob patterns (``"block*/conv2/relu"``); default: the input convolution and every block's
        output (residual), or the embedding and every encoder layer's output (attention).
    groups : one id per board (e.g. the game it comes from); held-out groups never appear in training.
        Default: every board its own group (fine when no two boards come from one game).
    control : ``"random"`` (default: :func:`control_model` ``(model, seed)``), an ``LczeroModel`` of the same
        architecture, or ``None`` (no control).
    kind : ``"logistic"`` or ``"linear"``; default from the concept (continuous -> linear).
    features : per-position concepts only: ``"flat"`` (whole activation) or ``"mean"`` (mean over squares).
    l2, test_fraction, seed, max_iter, balanced : as in :func:`fit_probe`.
    labels : precomputed labels of ``concept`` for ``boards`` (skips computing them).

    Returns
    -------
    ProbeTable
        Rows ``{"module", "metric", "score", "control", "selectivity", "baseline", "train_score", "n_train",
        "n_test", "result", "control_result"}`` (the last two are the :class:`ProbeResult` objects); logistic
        probes add ``"accuracy"`` and ``"balanced"`` (held-out accuracy and balanced accuracy). ``score`` is
        the held-out accuracy, R^2 for linear probes, or the balanced accuracy with ``balanced=True`` (then
        ``baseline`` is chance, 1 / classes); ``control`` and ``selectivity`` use the same metric.
    """
    board_list = as_board_list(boards)
    n = len(board_list)
    if features not in ("flat", "mean"):
        raise LensError(f"features must be 'flat' or 'mean', not {features!r}")
    kind = kind or ("linear" if concept.kind == "continuous" else "logistic")
    names = resolve_modules(model, modules)
    y = concept.labels(board_list) if labels is None else torch.as_tensor(labels)
    if y.shape[0] != n:
        raise InputShapeError(f"{y.shape[0]} labels for {n} boards")
    group_ids = np.arange(n) if groups is None else np.asarray(groups)
    if group_ids.shape != (n,):
        raise InputShapeError(f"groups must be one id per board ({n}), got shape {group_ids.shape}")
    sample_groups = np.repeat(group_ids, 64) if y.ndim == 2 else group_ids
    n_classes = concept.n_classes if kind == "logistic" else None

    if isinstance(control, str):
        if control != "random":
            raise LensError(f"control must be 'random', a model or None, not {control!r}")
        control = control_model(model, seed=seed)
    nets = [("score", model)] + ([("control", control)] if control is not None else [])
    fmt = getattr(model, "input_format", 1)
    rows = ProbeTable({"module": name} for name in names)
    for key, net in nets:
        acts = _activations(net, board_list, names, batch_size)
        for row, name in zip(rows, names, strict=True):
            x, labels_flat = _features_and_labels(acts.pop(name), y, board_list, fmt, features)
            result = fit_probe(x, labels_flat, groups=sample_groups, kind=kind, l2=l2, test_fraction=test_fraction,
                               seed=seed, n_classes=n_classes, max_iter=max_iter, balanced=balanced)  # fmt: skip
            # With class weights the probe trades accuracy for recall of the rare classes: score it by the
            # balanced accuracy then (chance = 1 / number of classes), so selectivity compares like with like.
            score = result.balanced_accuracy if balanced and kind == "logistic" else result.score
            if key == "score":
                row.update(metric="balanced_accuracy" if balanced and kind == "logistic" else result.metric,
                           score=score, n_train=result.n_train,
                           n_test=result.n_test, result=result)  # fmt: skip
                weighted = balanced and kind == "logistic"
                row["baseline"] = result.chance if weighted else result.baseline
                row["train_score"] = result.train_balanced_accuracy if weighted else result.train_score
                if result.balanced_accuracy is not None:
                    row.update(accuracy=result.score, balanced=result.balanced_accuracy)
            else:
                row.update(control=score, selectivity=row["score"] - score, control_result=result)
    return rows


# ------------------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def plot_probe_layers(
    rows: Sequence[dict[str, Any]] | dict[str, Sequence[dict[str, Any]]],
    *,
    title: str | None = None,
    width: float = 560,
    height: float = 320,
) -> Heatmap:
    """Probe score by layer (and the control's, dashed) as an SVG line chart.

    ``rows`` is one :func:`probe_layers` table, or ``{label: table}`` for several concepts on one chart (each
    its own colour). Returns a :class:`lczerolens.visual.Heatmap` (shows itself in Jupyter, ``.save("x.svg")``).
    """
    from lczerolens.visual import Heatmap

    series = dict(rows) if isinstance(rows, dict) else {"": list(rows)}
    if not series or not all(len(r) for r in series.values()):
        raise LensError("nothing to plot: pass the rows of probe_layers")
    modules = [row["module"] for row in next(iter(series.values()))]
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
    values: list[float] = [v for table in series.values() for row in table
                           for v in (row.get("score"), row.get("control"))
                           if v is not None and math.isfinite(v)]  # fmt: skip
    lo = min(0.0, min(values))
    hi = max(1.0, max(values))
    # Room for the rotated layer names (about 6.2 px per character at 11 px, tilted 40 degrees) and the legend.
    char = 6.2
    longest = max(len(m) for m in modules)
    legend_chars = max(len((label + " " if label else "") + "(trained)") for label in series)
    left = max(56.0, len(modules[0]) * char * 0.77 + 8)
    bottom = max(40.0, longest * char * 0.64 + 24)
    right = legend_chars * char + 50
    top = 34.0
    width = max(width, left + right + 60 * max(1, len(modules) - 1))
    height = max(height, top + bottom + 160)
    pw, ph = width - left - right, height - top - bottom
    xs = [left + (pw * i / max(1, len(modules) - 1) if len(modules) > 1 else pw / 2) for i in range(len(modules))]

    def ypos(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" viewBox="0 0 {width:g} {height:g}" '
             f'width="{width:g}" height="{height:g}" font-family="sans-serif" font-size="11">',
             "<desc>probe score by layer</desc>",
             f'<rect x="0" y="0" width="{width:g}" height="{height:g}" fill="white"/>']  # fmt: skip
    if title:
        parts.append(f'<text x="{left:g}" y="18" font-size="13">{_esc(title)}</text>')
    metric = " / ".join(dict.fromkeys(str(t[0].get("metric", "score")) for t in series.values()))
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        y = ypos(v)
        parts.append(f'<line x1="{left:g}" y1="{y:.1f}" x2="{left + pw:g}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6:g}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2:.1f}" transform="rotate(-90 14 {top + ph / 2:.1f})" '
                 f'text-anchor="middle">{_esc(metric)}</text>')  # fmt: skip
    for x, name in zip(xs, modules, strict=True):
        yb = top + ph + 10
        parts.append(f'<text x="{x:.1f}" y="{yb:.1f}" text-anchor="end" transform="rotate(-40 {x:.1f} {yb:.1f})">'
                     f"{_esc(name)}</text>")  # fmt: skip
    legend_y = top
    for i, (label, table) in enumerate(series.items()):
        color = palette[i % len(palette)]
        for key, dash in (("score", ""), ("control", ' stroke-dasharray="5,4"')):
            raw = [(x, row.get(key)) for x, row in zip(xs, table, strict=True)]
            pts: list[tuple[float, float]] = [(x, v) for x, v in raw if v is not None and math.isfinite(v)]
            if not pts:
                continue
            path = " ".join(f"{x:.1f},{ypos(v):.1f}" for x, v in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for x, v in pts:
                parts.append(f'<circle cx="{x:.1f}" cy="{ypos(v):.1f}" r="2.5" fill="{color}"/>')
            name = (label + " " if label else "") + ("(trained)" if key == "score" else "(control)")
            lx = left + pw + 12
            parts.append(f'<line x1="{lx:g}" y1="{legend_y:g}" x2="{lx + 22:g}" y2="{legend_y:g}" stroke="{color}" '
                         f'stroke-width="2"{dash}/>')  # fmt: skip
            parts.append(f'<text x="{lx + 27:g}" y="{legend_y + 4:g}">{_esc(name)}</text>')
            legend_y += 16
    parts.append("</svg>")
    return Heatmap("\n".join(parts), width, height, None, None)
