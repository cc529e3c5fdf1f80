"""LRP through a sparse autoencoder: the relevance that flows through chosen features.

The module's output ``y`` is written, per square, as ``y = sum_j f_j W_dec[j] + e`` where ``f = sae.encode(y)``
and ``e = y - sum_j f_j W_dec[j]`` is the error term (the SAE's reconstruction error plus its decoder bias: the
part of ``y`` no feature explains). The forward pass is the network's own, so its output is unchanged. The
relevance ``R`` of ``y`` (what the lens gives the module's output) is shared among these parts by the z-rule of
the decoder, channel by channel: feature ``j`` gets ``f_j W_dec[j, c] / y_c * R_c`` and the error term
``e_c / y_c * R_c`` (where ``y_c`` is exactly 0, the error term takes it all, and there ``R_c`` is 0). From the
module's output back to the input the lens's rules carry each part, as concept-conditional relevance (CRP) does
for channels, in one batched backward pass. The parts add up to ``R`` exactly, so the maps of all features plus
the error term sum to the lens's unconditional map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lczerolens.errors import InvalidOptionError
from lczerolens.features.sae import SAE
from lczerolens.features.train import as_tokens, from_tokens
from lczerolens.lenses.base import AttributionLens, Target, TopLegalMoves, param_like, select_output

__all__ = ["feature_relevance"]

Group = list[int] | str


def _groups(features: Any, d_sae: int) -> tuple[list[Group], bool]:
    """``features`` as a list of groups (feature ids, or ``"error"``) and whether one group was given."""
    if isinstance(features, str) or (isinstance(features, Sequence) and all(isinstance(f, int) for f in features)):
        features, single = [features], True
    elif isinstance(features, int):
        features, single = [[features]], True
    else:
        single = False
    if not isinstance(features, Sequence) or not features:
        raise InvalidOptionError(f"features={features!r}: give feature ids, 'error', or a list of such groups")
    out: list[Group] = []
    for group in features:
        if isinstance(group, int):
            group = [group]
        if isinstance(group, str):
            if group != "error":
                raise InvalidOptionError(f"features={group!r}: the only named group is 'error'")
            out.append(group)
            continue
        ids = list(group)
        if not ids or not all(isinstance(i, int) and 0 <= i < d_sae for i in ids):
            raise InvalidOptionError(f"feature ids must be integers in [0, {d_sae}), got {group!r}")
        out.append(ids)
    return out, single


class _FeatureLrp(AttributionLens):
    """The batched CRP pass of an LRP lens, with the seeds at the module split by SAE features."""

    def __init__(self, lens: Any, sae: SAE, module: str, groups: list[Group]) -> None:
        self.lens, self.sae, self.module, self.groups = lens, sae, module, groups
        self.method_name = getattr(lens, "method_name", "LRP relevance")

    def _check_options(self, network: torch.nn.Module, options: Any) -> None:
        from lczerolens.lenses.inside import match_modules

        super()._check_options(network, options)
        match_modules(network, [self.module])

    def _explain(self, network: torch.nn.Module, input_format: Any, boards: list, target: Target, **_: Any) -> Any:
        from lczerolens.board import encode_boards
        from lczerolens.lenses.inside import Record
        from lczerolens.lenses.relevance import Relevance
        from lczerolens.lenses.tree import overlay

        n, k = len(boards), len(self.groups)
        legal = TopLegalMoves(boards, input_format) if target.kind == "policy" and target.indices is None else None
        tree = self.lens.explaining_network(network, target.kind)
        dtype, device = param_like(tree)
        store: dict[str, torch.Tensor] = {}
        tree = overlay(tree, {self.module: lambda m: Record(m, self.module, store)})
        with torch.inference_mode(False), torch.enable_grad():
            x = encode_boards(boards, input_format).to(dtype=dtype, device=device).requires_grad_(True)
            outputs = tree(x)
            output, seed, values, indices = select_output(outputs, target.kind, target.indices, legal)
            if self.module not in store:
                raise InvalidOptionError(f"module {self.module!r} gave no tensor output in the forward pass")
            y = store[self.module]
            (grad_y,) = torch.autograd.grad(output, [y], seed, retain_graph=True)
            with torch.no_grad():
                # The SAE computes where its weights are (a CPU SAE on a GPU model's activations, or the reverse);
                # the shares go back to the network's device.
                sae_device = self.sae.W_dec.device
                tokens = as_tokens(y.detach(), n).to(device=sae_device, dtype=torch.float32)
                f = self.sae.encode(tokens)
                full = f @ self.sae.W_dec
                zero = tokens == 0
                safe = torch.where(zero, torch.ones_like(tokens), tokens)
                shares = []
                for group in self.groups:
                    if group == "error":
                        part = torch.where(zero, torch.ones_like(tokens), (tokens - full) / safe)
                    else:
                        ids = torch.tensor(group, dtype=torch.long, device=sae_device)
                        part = torch.where(zero, torch.zeros_like(tokens), f[..., ids] @ self.sae.W_dec[ids] / safe)
                    shares.append(from_tokens(part, y).to(device=grad_y.device, dtype=grad_y.dtype))
                seeds = torch.stack(shares) * grad_y[None]
            (gx,) = torch.autograd.grad(y, x, seeds, is_grads_batched=True)
            with torch.no_grad():
                planes = (x.detach()[None] * gx).transpose(0, 1).reshape(n * k, *x.shape[1:])
        names = [{self.module: {"features": g if g == "error" else list(g)}} for g in self.groups]
        rows = {}
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
                rows[key] = value.detach().repeat_interleave(k, 0)
        return Relevance(
            planes=planes,
            target=values.repeat_interleave(k, 0),
            boards=[b for b in boards for _ in range(k)],
            input_format=input_format,
            target_name=target.kind,
            policy_indices=None if indices is None else indices.repeat_interleave(k, 0),
            conditions=names,
            method=self.method_name,
            outputs=rows,
        )


def feature_relevance(
    model: Any,
    boards: Any,
    sae: SAE,
    module: str,
    features: Any,
    *,
    target: Any = None,
    lens: Any = None,
    batch_size: int | None = None,
) -> Any:
    """The LRP map of the explained output that flows through SAE ``features`` at ``module``.

    Parameters
    ----------
    model : LczeroModel or network
    boards : LczeroBoard or sequence of them
    sae : SAE
        Trained on ``module``'s per-square activations.
    module : str
        The module name (as :class:`~lczerolens.lenses.ActivationLens` names it).
    features : int, list of int, ``"error"``, or a list of such groups
        One group (feature ids whose relevance is summed, or ``"error"``, the error term with the decoder bias)
        gives one map per board; a list of ``K`` groups gives ``K`` maps per board in one backward pass, row
        ``i * K + k`` being board ``i`` under group ``k``. Over all features plus ``"error"`` the maps sum to
        ``lens.relevance(model, boards, target)``.
    target : as in :meth:`LrpLens.relevance`
    lens : LrpLens, optional
        The rules (default ``LrpLens()``).

    Returns
    -------
    Relevance
        ``.conditions[k]`` names group ``k``; ``.outputs`` are the network's own outputs (unchanged).

    Example
    -------
    >>> rel = feature_relevance(model, board, sae, "block3/conv2/relu", [17])  # doctest: +SKIP
    >>> groups = [list(range(sae.d_sae)), "error"]  # doctest: +SKIP
    >>> both = feature_relevance(model, board, sae, "block3/conv2/relu", groups)  # doctest: +SKIP
    """
    from lczerolens.lenses import LrpLens

    lens = LrpLens() if lens is None else lens
    if not hasattr(lens, "explaining_network"):
        raise InvalidOptionError(f"lens={lens!r} must be an LrpLens (feature relevance needs its rules)")
    groups, _ = _groups(features, sae.d_sae)
    return _FeatureLrp(lens, sae, module, groups).relevance(model, boards, target, batch_size=batch_size)
