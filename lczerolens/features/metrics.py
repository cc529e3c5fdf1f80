"""How good an SAE is on positions: reconstruction, sparsity, dead features, and what splicing it in costs.

The splice runs the network's shadow (:func:`lczerolens.lenses.inside.run_with`) with the module's output
replaced by the SAE's reconstruction; the user's model is never changed.
"""

from __future__ import annotations

from typing import Any

import torch

from lczerolens.features.sae import SAE
from lczerolens.features.train import as_tokens, from_tokens
from lczerolens.model.precision import in_ieee_float32

__all__ = ["sae_metrics"]


@in_ieee_float32
@torch.no_grad()
def sae_metrics(model: Any, sae: SAE, module: str, boards: Any, *, batch_size: int = 256) -> dict[str, float]:
    """Measure ``sae`` on the activations of ``module`` over ``boards`` (use positions it was not trained on).

    Returns
    -------
    dict
        ``fve``: fraction of variance explained, ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over all squares;
        ``l0``: mean number of active features per square; ``dead``: share of features active on no square of
        these boards; ``kl``: mean over boards of ``KL(p || p_spliced)`` in nats, ``p`` the policy softmax over
        the legal moves and ``p_spliced`` the same with the module's output replaced by the reconstruction;
        ``value_error``: mean ``|value - value_spliced|`` (``value`` = W - L for WDL nets); ``positions``.

    Example
    -------
    >>> sae_metrics(model, sae, "block3/conv2/relu", boards)["fve"]  # doctest: +SKIP
    0.93
    """
    from lczerolens.board import encode_boards
    from lczerolens.lenses.base import as_boards, legal_indices, model_parts, param_like
    from lczerolens.lenses.inside import match_modules, run_with

    network, input_format = model_parts(model)
    match_modules(network, [module])
    board_list = as_boards(boards)
    sq_err = total = l0 = 0.0
    dtype, device = param_like(network)
    sae_device = sae.W_dec.device
    sums = torch.zeros(sae.d_in, dtype=torch.float64, device=sae_device)
    sq_sums = torch.zeros(sae.d_in, dtype=torch.float64, device=sae_device)
    rows = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae_device)
    kls: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for i in range(0, len(board_list), batch_size):
        part = board_list[i : i + batch_size]
        x = encode_boards(part, input_format).to(dtype=dtype, device=device)
        seen: dict[str, torch.Tensor] = {}

        def splice(out: torch.Tensor, n: int = len(part), seen: dict[str, torch.Tensor] = seen) -> torch.Tensor:
            # The SAE computes where its weights are; its reconstruction goes back to the network's device.
            tokens = as_tokens(out, n).to(device=sae_device, dtype=torch.float32)
            f = sae.encode(tokens)
            seen["x"], seen["f"] = tokens, f
            return from_tokens(sae.decode(f).to(device=out.device, dtype=out.dtype), out)

        with torch.no_grad():
            clean = run_with(network, x)[0]
            spliced = run_with(network, x, replace={module: splice})[0]
        tokens, f = seen["x"].reshape(-1, sae.d_in), seen["f"].reshape(-1, sae.d_sae)
        recon = sae.decode(f)
        sq_err += float((tokens - recon).double().pow(2).sum())
        sums += tokens.double().sum(0)
        sq_sums += tokens.double().pow(2).sum(0)
        rows += tokens.shape[0]
        l0 += float((f > 0).sum())
        fired |= (f > 0).any(0)
        for row, legal in enumerate(legal_indices(part, input_format)):
            p = torch.log_softmax(clean["policy"][row, legal].double(), 0)
            q = torch.log_softmax(spliced["policy"][row, legal].double(), 0)
            kls.append((p.exp() * (p - q)).sum())
        v_clean, v_spliced = _value(clean), _value(spliced)
        if v_clean is not None and v_spliced is not None:
            values.append((v_clean - v_spliced).abs().reshape(-1))
    total = float((sq_sums - sums.pow(2) / rows).sum())
    return {
        "fve": 1.0 - sq_err / max(total, 1e-30),
        "l0": l0 / rows,
        "dead": float((~fired).float().mean()),
        "kl": float(torch.stack(kls).mean()) if kls else float("nan"),
        "value_error": float(torch.cat(values).mean()) if values else float("nan"),
        "positions": float(len(board_list)),
    }


def _value(out: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """W - L from the WDL head (probabilities or logits), else the value head; ``None`` without either."""
    if "wdl_logits" in out:
        wdl = torch.softmax(out["wdl_logits"].double(), -1)
        return wdl[:, 0] - wdl[:, 2]
    if "wdl" in out:
        wdl = out["wdl"].double()
        return wdl[:, 0] - wdl[:, 2]
    if "value" in out:
        return out["value"].double().reshape(-1)
    return None
