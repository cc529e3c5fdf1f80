"""The attention lens: softmax attention weights of an attention-body net, per layer and head, on board squares.

The network attends between its 64 tokens, which are the squares in *its* orientation (flipped for black, and
transformed in the canonical input formats). This lens gives the weights with queries and keys as python-chess
squares of the board itself: ``weights[i, h, q, k]`` is how much the token of square ``q`` attends to the token
of square ``k`` in head ``h``; each row sums to 1.

Example
-------
>>> from lczerolens.lenses import AttentionLens
>>> att = AttentionLens().attention(model, board)  # doctest: +SKIP
>>> att["encoder0"].shape  # doctest: +SKIP
torch.Size([1, 8, 64, 64])
>>> render_attention(board, att["encoder0"][0, 3], "e4")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict
from torch import nn

from lczerolens.errors import LensError
from lczerolens.lenses.base import BoardsLike, ModelLike, as_boards, check_batch_size, chunks, model_parts, param_like
from lczerolens.lenses.inside import run_with
from lczerolens.model import ops
from lczerolens.model.precision import in_ieee_float32

if TYPE_CHECKING:
    from lczerolens.board import InputFormat, LczeroBoard

__all__ = ["AttentionLens", "attention_modules", "network_squares"]

#: The suffix of an encoder layer's attention softmax in lc0's node names.
SOFTMAX_SUFFIX = "/mha/QK/softmax"


def attention_modules(network: nn.Module) -> dict[str, str]:
    """Encoder layer name -> the module name of its attention softmax (``"encoder0"`` -> ``"encoder0/mha/QK/softmax"``).

    Raises :class:`LensError` for a network without attention softmax (a residual net).
    """
    found: dict[str, str] = {}
    for name, module in network.named_modules():
        if isinstance(module, (ops.Softmax, nn.Softmax)) and name.endswith(SOFTMAX_SUFFIX):
            found[name[: -len(SOFTMAX_SUFFIX)]] = name
    if not found:
        kind = type(network).__name__
        raise LensError(
            f"this network ({kind}) has no attention layers (no '*{SOFTMAX_SUFFIX}' module): the attention lens "
            "applies to attention-body nets (lc0's BT/T-series transformers), not to residual nets"
        )
    return found


def network_squares(boards: Sequence[LczeroBoard], input_format: InputFormat | int) -> torch.Tensor:
    """``[N, 64]`` long: ``out[i, s]`` is the network's token (square in its orientation) of board square ``s``."""
    board_index = torch.arange(64, dtype=torch.float64).reshape(8, 8)
    # board_to_network puts at network square j the board square it shows; argsort inverts that map.
    return torch.stack([b.board_to_network(board_index, input_format).reshape(64) for b in boards]).argsort(dim=1)


class AttentionLens:
    """Read the attention weights of every encoder layer of an attention-body network.

    Example
    -------
    >>> AttentionLens()
    AttentionLens()
    """

    def __repr__(self) -> str:
        return "AttentionLens()"

    @in_ieee_float32
    def attention(
        self,
        model: ModelLike,
        boards: BoardsLike,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> TensorDict:
        """Softmax attention weights ``[N, heads, 64, 64]`` per encoder layer, queries and keys as board squares.

        Parameters
        ----------
        model : LczeroModel or network
            An attention-body network (``.onnx`` export or ``.pb.gz``); others raise :class:`LensError`.
        boards : LczeroBoard or sequence of LczeroBoard
        batch_size : int, optional
            At most this many boards per forward pass.
        progress : bool
            A tqdm progress bar over the boards.

        Returns
        -------
        TensorDict
            key = encoder layer name (``"encoder0"``, ..., and ``"policy/enc_layer_0"``, ... for the encoder
            layers of a policy head that has them), value ``[N, heads, 64, 64]``: ``[i, h, q, k]`` the weight of
            key square ``k`` for query square ``q`` (python-chess indices, board orientation).

        Example
        -------
        >>> att = AttentionLens().attention(model, [board], batch_size=32)  # doctest: +SKIP
        >>> att["encoder0"][0].sum(-1)  # every row sums to 1  # doctest: +SKIP
        """
        from lczerolens.board import encode_boards

        network, input_format = model_parts(model)
        layers = attention_modules(network)
        board_list = as_boards(boards)
        n = len(board_list)
        size = check_batch_size(batch_size)
        dtype, device = param_like(network)
        parts: list[dict[str, torch.Tensor]] = []
        for rows in chunks(n, size, progress, desc="AttentionLens"):
            part = board_list[rows]
            x = encode_boards(part, input_format).to(dtype=dtype, device=device)
            with torch.no_grad():
                _, store = run_with(network, x, record=list(layers.values()))
            where = network_squares(part, input_format).to(device)
            chunk: dict[str, torch.Tensor] = {}
            for layer, name in layers.items():
                weights = store.get(name)
                if weights is None:
                    raise LensError(f"the attention softmax {name!r} did not run")
                weights = weights.detach().reshape(len(part), -1, 64, 64)
                chunk[layer] = _to_board(weights, where)
            parts.append(chunk)
        values = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        return TensorDict(values, batch_size=[n])


def _to_board(weights: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``[N, H, 64, 64]`` over network tokens -> over board squares: ``out[i, h, q, k] = w[i, h, t(q), t(k)]``."""
    n, heads = weights.shape[:2]
    rows = where[:, None, :, None].expand(n, heads, 64, 64)
    picked = weights.gather(2, rows)  # queries
    cols = where[:, None, None, :].expand(n, heads, 64, 64)
    return picked.gather(3, cols)  # keys
