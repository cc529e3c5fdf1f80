"""Training a sparse autoencoder on one module's per-square activations, streamed with bounded memory.

Each position gives 64 rows (one per square, network orientation): a residual block's ``[N, C, 8, 8]`` output
becomes ``[N*64, C]``, an attention encoder's ``[N, 64, E]`` (or ``[N*64, E]``) token stream ``[N*64, E]``. Rows
go through a shuffling buffer of ``buffer_tokens`` rows (refilled half at a time), so memory is bounded whatever
the collection's size. As in SAELens, inputs are scaled during training so that their mean squared norm is
``d_in`` (``expected_average_only_in``); the factor is folded into the weights at the end, so the returned SAE
reads raw activations. Decoder rows are kept at unit norm. Dead features are kept few by the auxiliary top-k
loss (TopK) or by resampling them onto badly reconstructed rows (ReLU+L1, JumpReLU).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lczerolens.errors import DataError, InvalidOptionError
from lczerolens.features.sae import KINDS, SAE

__all__ = ["train_sae", "module_tokens", "iter_boards"]


def iter_boards(source: Any) -> Iterator[Any]:
    """The boards of ``source``: a board, a sequence of boards or ``Position``s, or a PGN / EPD path."""
    from lczerolens.board import LczeroBoard

    if isinstance(source, (str, Path)):
        from lczerolens.data import read_positions

        for position in read_positions(source):
            yield position.board
        return
    if isinstance(source, LczeroBoard):
        yield source
        return
    for item in source:
        board = getattr(item, "board", item)
        if not isinstance(board, LczeroBoard):
            import chess

            if not isinstance(board, chess.Board):
                raise DataError(f"source holds {type(item).__name__}, not a board or a Position")
            board = LczeroBoard.from_board(board)
        yield board


def module_tokens(model: Any, boards: Any, module: str, *, batch_size: int = 256) -> torch.Tensor:
    """``[N, 64, C]``: module ``module``'s output on ``boards``, one row per square (network orientation).

    The output is read with :class:`~lczerolens.lenses.ActivationLens` (the model is never changed).
    """
    from lczerolens.lenses import ActivationLens

    found = ActivationLens(module).activations(model, boards, batch_size=batch_size)
    if module not in found.keys():
        raise InvalidOptionError(f"module {module!r} gave no output; name one module exactly (see ActivationLens)")
    return as_tokens(found[module].detach().to(torch.float32))


def as_tokens(activation: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """A per-square activation as ``[N, 64, C]``: from ``[N, C, 8, 8]``, ``[N, 64, C]`` or ``[N*64, C]``."""
    if activation.dim() == 4 and tuple(activation.shape[2:]) == (8, 8):
        return activation.flatten(2).transpose(1, 2)
    if activation.dim() == 3 and activation.shape[1] == 64:
        return activation
    if activation.dim() == 2 and activation.shape[0] % 64 == 0 and (n is None or activation.shape[0] == n * 64):
        return activation.reshape(-1, 64, activation.shape[1])
    raise InvalidOptionError(
        f"an SAE reads per-square activations [N, C, 8, 8], [N, 64, C] or [N*64, C]; got {tuple(activation.shape)}"
    )


def from_tokens(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`as_tokens`: ``[N, 64, C]`` back in the layout of ``like``."""
    if like.dim() == 4:
        return tokens.transpose(1, 2).reshape(like.shape)
    return tokens.reshape(like.shape)


class _Heaviside(torch.autograd.Function):
    """Step ``h > t`` with a straight-through rectangle estimate of its derivative in ``t`` (JumpReLU)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, t: torch.Tensor, width: float) -> torch.Tensor:
        ctx.save_for_backward(h, t)
        ctx.width = width
        return (h > t).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        h, t = ctx.saved_tensors
        near = ((h - t).abs() < ctx.width / 2).to(h.dtype) / ctx.width
        return None, (-near * grad).reshape(-1, t.shape[-1]).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """``h * (h > t)``: gradient in ``h`` where active, rectangle estimate in ``t``."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, t: torch.Tensor, width: float) -> torch.Tensor:
        ctx.save_for_backward(h, t)
        ctx.width = width
        return h * (h > t).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        h, t = ctx.saved_tensors
        near = ((h - t).abs() < ctx.width / 2).to(h.dtype) / ctx.width
        grad_t = (-t * near * grad).reshape(-1, t.shape[-1]).sum(0)
        return (h > t).to(h.dtype) * grad, grad_t, None


def _rows(model: Any, source: Any, module: str, board_batch: int, epochs: int | None) -> Iterator[torch.Tensor]:
    """``[n*64, C]`` chunks of rows, epoch after epoch (``None``: until the caller stops)."""
    if isinstance(source, torch.Tensor):
        # Precomputed rows (e.g. from module_tokens): no forward pass, read epoch after epoch.
        rows = as_tokens(source).flatten(0, 1) if source.dim() != 2 else source
        epoch = 0
        while epochs is None or epoch < epochs:
            yield from rows.to(torch.float32).split(board_batch * 64)
            epoch += 1
        return
    repeatable = isinstance(source, (str, Path)) or isinstance(source, (list, tuple))
    epoch = 0
    while epochs is None or epoch < epochs:
        if epoch > 0 and not repeatable:
            raise DataError("a one-shot iterator can be read once: pass a list or a path for more than one epoch")
        batch: list[Any] = []
        seen = False
        for board in iter_boards(source):
            batch.append(board)
            if len(batch) == board_batch:
                yield module_tokens(model, batch, module).flatten(0, 1)
                batch, seen = [], True
        if batch:
            yield module_tokens(model, batch, module).flatten(0, 1)
            seen = True
        if not seen:
            raise DataError("the source holds no positions")
        epoch += 1


def _shuffled(chunks: Iterable[torch.Tensor], capacity: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Rows from ``chunks`` in a shuffled order: a buffer of ``capacity`` rows, half of it emitted per refill."""
    held: list[torch.Tensor] = []
    size = 0
    for chunk in chunks:
        held.append(chunk)
        size += chunk.shape[0]
        if size >= capacity:
            rows = torch.cat(held)
            rows = rows[torch.randperm(rows.shape[0], generator=gen).to(rows.device)]
            half = rows.shape[0] // 2
            yield rows[:half]
            held, size = [rows[half:]], rows.shape[0] - half
    if size:
        rows = torch.cat(held)
        yield rows[torch.randperm(rows.shape[0], generator=gen).to(rows.device)]


def train_sae(
    model: Any,
    source: Any,
    module: str,
    *,
    features: int = 1024,
    kind: str = "topk",
    k: int = 16,
    l1: float = 5.0,
    l0: float = 0.05,
    steps: int | None = None,
    epochs: int = 1,
    batch_size: int = 4096,
    lr: float = 1e-3,
    seed: int = 0,
    buffer_tokens: int = 1 << 17,
    board_batch: int = 256,
    aux_coefficient: float = 1.0 / 32,
    dead_after: int = 200_000,
    progress: bool = True,
    model_name: str | None = None,
) -> SAE:
    """Train a sparse autoencoder on the per-square activations of ``module`` over the positions of ``source``.

    Parameters
    ----------
    model : LczeroModel or network
    source : board, sequence of boards or ``Position``s, a PGN / EPD path, or a tensor
        The positions (with their history). A path or a list can be read for several epochs. A tensor is taken
        as the module's activations already computed (``[M, C]`` rows, or any layout :func:`module_tokens`
        reads), so several epochs cost no forward pass.
    module : str
        A module name as :class:`~lczerolens.lenses.ActivationLens` names it (e.g. ``"block3/conv2/relu"``).
    features : int
        Dictionary size ``d_sae``.
    kind : {"topk", "relu_l1", "jumprelu"}
        TopK (``k`` active features per square, auxiliary loss on dead features), ReLU with an L1 penalty
        (``l1``, on activations times decoder norms), or JumpReLU (``l0`` penalty on the count of active features,
        straight-through threshold gradients). Saved as SAELens's ``topk``, ``standard`` and ``jumprelu``.
    steps, epochs : int
        Optimiser steps; when ``steps`` is ``None``, as many as ``epochs`` passes over ``source`` give.
    batch_size : int
        Rows (squares) per step.
    lr, seed : float, int
        Adam's learning rate (decayed linearly to 0 over the last fifth when ``steps`` is set); the seed of the
        initial weights and of the shuffling.
    buffer_tokens : int
        Rows held in the shuffling buffer (memory: ``buffer_tokens * d_in * 4`` bytes).
    dead_after : int
        A feature that fired on none of the last ``dead_after`` rows counts as dead (aux loss / resampling).
    progress : bool
        A tqdm bar over steps.

    Returns
    -------
    SAE
        In evaluation mode, reading raw activations; ``sae.metadata`` records the settings and the training.

    Example
    -------
    >>> sae = train_sae(model, "games.pgn", "block3/conv2/relu", features=1024, k=16, steps=2000)  # doctest: +SKIP
    >>> sae.encode(torch.rand(64, 64)).shape  # doctest: +SKIP
    torch.Size([64, 1024])
    """
    if kind not in KINDS:
        raise InvalidOptionError(f"kind={kind!r} is not one of {sorted(KINDS)}")
    for name, value in (("features", features), ("batch_size", batch_size), ("buffer_tokens", buffer_tokens)):
        if not isinstance(value, int) or value <= 0:
            raise InvalidOptionError(f"{name}={value!r} must be a positive integer")
    if steps is not None and (not isinstance(steps, int) or steps <= 0):
        raise InvalidOptionError(f"steps={steps!r} must be a positive integer or None")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    stream = _shuffled(_rows(model, source, module, board_batch, None if steps else epochs), buffer_tokens, gen)
    first = next(stream)
    d_in = first.shape[1]
    scale = float((d_in / first.pow(2).sum(1).mean().clamp_min(1e-12)).sqrt())
    # The SAE trains where the activations are (the model's device, or the given rows' device); the random
    # streams (initialisation, shuffling, resampling) are drawn on the CPU, so a seed means the same draws anywhere.
    device = first.device
    sae = SAE.create(d_in, features, KINDS[kind], k=k if kind == "topk" else None, seed=seed).to(device)
    with torch.no_grad():
        sae.b_dec.copy_((first * scale).mean(0))
        if kind == "jumprelu":
            sae.threshold.fill_(0.1)
    sae.train()
    optim = torch.optim.Adam(sae.parameters(), lr=lr)
    since = torch.zeros(features, dtype=torch.long, device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train_sae {module}", unit="step")
    step, rows_seen = 0, 0
    last: dict[str, float] = {}

    def batches() -> Iterator[torch.Tensor]:
        yield from first.split(batch_size)
        for rows in stream:
            yield from rows.split(batch_size)

    for raw in batches():
        if steps is not None and step >= steps:
            break
        x = raw * scale
        h = sae.pre_activations(x)
        if kind == "topk":
            # Only k features per row are active: decode them as a weighted sum of k decoder rows
            # (embedding_bag), not as a dense [rows, d_sae] product that is almost all zeros.
            top, idx = torch.topk(h, sae.k or 1, dim=-1, sorted=False)
            top = torch.relu(top)
            recon = F.embedding_bag(idx, sae.W_dec, per_sample_weights=top, mode="sum") + sae.b_dec
            active = top > 0
            fired = torch.zeros(features, dtype=torch.bool, device=device).index_fill_(0, idx[active], True)
            l0_batch = active.sum(-1)
        else:
            f = _JumpReLU.apply(torch.relu(h), sae.threshold, 0.05) if kind == "jumprelu" else torch.relu(h)
            recon = f @ sae.W_dec + sae.b_dec
            fired = (f > 0).any(0)
            l0_batch = (f > 0).sum(-1)
        err = x - recon
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        since = torch.where(fired, torch.zeros_like(since), since + x.shape[0])
        dead = since >= dead_after
        if kind == "topk" and dead.any():
            k_aux = min(d_in // 2, int(dead.sum()))
            masked = torch.where(dead, h, torch.full_like(h, float("-inf")))
            values, idx = torch.topk(masked, k_aux, dim=-1)
            f_aux = torch.zeros_like(h).scatter(-1, idx, torch.relu(values))
            aux = (err.detach() - f_aux @ sae.W_dec).pow(2).sum(-1).mean()
            loss = loss + aux_coefficient * aux
        elif kind == "relu_l1":
            loss = loss + l1 * (f * sae.W_dec.norm(dim=1)).sum(-1).mean() / d_in
        elif kind == "jumprelu":
            loss = loss + l0 * _Heaviside.apply(torch.relu(h), sae.threshold, 0.05).sum(-1).mean()
        if steps is not None and step >= 0.8 * steps:
            for group in optim.param_groups:
                group["lr"] = lr * max(0.0, (steps - step) / (0.2 * steps))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            if kind == "jumprelu":
                sae.threshold.clamp_(min=1e-4)
            if kind != "topk" and dead.any() and step % 250 == 249:
                _resample(sae, x, err, dead, gen)
                since[dead] = 0
        step += 1
        rows_seen += x.shape[0]
        last = {"mse": float(mse.detach()), "l0": float(l0_batch.float().mean()), "dead": float(dead.float().mean())}
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(last)
    if bar is not None:
        bar.close()
    with torch.no_grad():
        # Fold the input scaling into the weights (SAELens's fold_activation_norm_scaling_factor).
        sae.W_enc *= scale
        sae.W_dec /= scale
        sae.b_dec /= scale
    sae.eval()
    sae.requires_grad_(False)
    sae.metadata.update(
        {
            "model_name": model_name or _model_name(model),
            "hook_name": module,
            "kind": kind,
            "layout": "one row per square, network orientation; [N, C, 8, 8] -> [N*64, C]",
            "steps": step,
            "rows_seen": rows_seen,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "scaling_factor_folded": scale,
            "training_seconds": round(time.perf_counter() - start, 1),
            "final_batch": last,
        }
    )
    return sae


def _resample(sae: SAE, x: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, gen: torch.Generator) -> None:
    """Point dead features at rows the SAE reconstructs worst (chosen with probability ~ squared error)."""
    ids = dead.nonzero()[:, 0]
    weights = err.pow(2).sum(-1)
    picks = torch.multinomial((weights + 1e-12).cpu(), len(ids), replacement=True, generator=gen).to(err.device)
    directions = err[picks]
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else torch.tensor(1.0)
    sae.W_dec[ids] = directions
    sae.W_enc[:, ids] = directions.T * alive_norm * 0.2
    sae.b_enc[ids] = 0.0


def _model_name(model: Any) -> str:
    path = getattr(model, "path", None) or getattr(getattr(model, "network", None), "path", None)
    return Path(str(path)).name.split(".")[0] if path else type(model).__name__
