"""The activation lens: the outputs of named modules, batched, as a TensorDict.

Module names are lc0's node names, as in ``model.network.named_modules()`` (``"block3/conv2/relu"``,
``"encoder0/ln2"``); ``fnmatch`` patterns choose several at once. The values are what lc0's own ONNX export
computes at the node of the same name, with the boards first: ``[N, C, 8, 8]`` for a residual block (network
orientation), ``[N, 64, E]`` for an attention body's tokens (which the export runs as ``[N*64, E]``).

Example
-------
>>> from lczerolens import LczeroBoard, LczeroModel
>>> from lczerolens.lenses import ActivationLens
>>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
>>> acts = ActivationLens(("block*/conv2/relu",)).activations(model, [LczeroBoard()])  # doctest: +SKIP
>>> acts["block5/conv2/relu"].shape  # doctest: +SKIP
torch.Size([1, 64, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict

from lczerolens.errors import LensError
from lczerolens.lenses.base import BoardsLike, ModelLike, as_boards, check_batch_size, chunks, model_parts, param_like
from lczerolens.lenses.inside import batch_first, match_modules, module_patterns, run_with
from lczerolens.model.precision import in_ieee_float32

__all__ = ["ActivationLens"]


class ActivationLens:
    """Read the outputs of the modules that ``modules`` names (``fnmatch`` patterns on module names).

    Parameters
    ----------
    modules : str or sequence of str
        Module names or patterns, e.g. ``("block*/conv2/relu",)`` (each residual block's output) or ``"*"``
        (every module). A pattern that matches no module raises :class:`~lczerolens.errors.LensError` listing
        the names. Modules matched only by a wildcard that return no floating tensor (shape arithmetic in an
        ONNX graph) or do not run are left out; a name given exactly must give a tensor.

    Example
    -------
    >>> ActivationLens("block*/conv2/relu")
    ActivationLens(modules=('block*/conv2/relu',))
    """

    def __init__(self, modules: str | Sequence[str] = ("block*/conv2/relu",)) -> None:
        self.modules = module_patterns(modules)

    def __repr__(self) -> str:
        return f"ActivationLens(modules={self.modules!r})"

    def names(self, model: ModelLike) -> list[str]:
        """The module names of ``model`` this lens reads, in the network's order (raises if a pattern misses)."""
        network, _ = model_parts(model)
        return match_modules(network, self.modules)

    @in_ieee_float32
    def activations(
        self,
        model: ModelLike,
        boards: BoardsLike,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        planes: torch.Tensor | None = None,
    ) -> TensorDict:
        """The chosen modules' outputs on ``boards``: a TensorDict with batch size ``[N]``.

        Parameters
        ----------
        model : LczeroModel or network
        boards : LczeroBoard or sequence of LczeroBoard
            The positions, with their history (encoded as lc0 does).
        batch_size : int, optional
            At most this many boards per forward pass; ``None``: one pass.
        progress : bool
            A tqdm progress bar over the boards.
        planes : torch.Tensor, optional
            ``[N, 112, 8, 8]`` input to run instead of the boards' encoding.

        Returns
        -------
        TensorDict
            key = module name, value = its output ``[N, ...]`` (detached, the model's dtype and device).

        Example
        -------
        >>> acts = ActivationLens("*").activations(model, boards, batch_size=64)  # doctest: +SKIP
        """
        from lczerolens.board import encode_boards

        network, input_format = model_parts(model)
        board_list = as_boards(boards)
        n = len(board_list)
        size = check_batch_size(batch_size)
        names = match_modules(network, self.modules)
        exact = {p for p in self.modules if not any(c in p for c in "*?[")}
        if planes is not None and (not isinstance(planes, torch.Tensor) or tuple(planes.shape) != (n, 112, 8, 8)):
            shape = tuple(planes.shape) if isinstance(planes, torch.Tensor) else type(planes).__name__
            raise LensError(f"planes must be a tensor of shape ({n}, 112, 8, 8) for {n} boards, not {shape}")
        dtype, device = param_like(network)
        parts: list[dict[str, torch.Tensor]] = []
        for rows in chunks(n, size, progress, desc="ActivationLens"):
            x = encode_boards(board_list[rows], input_format) if planes is None else planes[rows]
            with torch.no_grad():
                _, store = run_with(network, x.to(dtype=dtype, device=device), record=names)
            parts.append(_keep(store, names, exact, rows.stop - rows.start))
        # A wildcard match kept in one batch but not another (an output that only looked per-board) is dropped.
        keys = [k for k in parts[0] if all(k in p for p in parts)]
        values = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in keys}
        return TensorDict(values, batch_size=[n], device=None)


def _keep(store: dict[str, torch.Tensor], names: list[str], exact: set[str], n: int) -> dict[str, torch.Tensor]:
    """The recorded outputs worth returning, boards first, in the network's order."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        value = store.get(name)
        usable = value is not None and value.is_floating_point() and value.dim() > 0 and value.shape[0] % n == 0
        if value is None or not usable:
            if name in exact:
                what = "did not run" if value is None else f"gave a {value.dtype} tensor {tuple(value.shape)}"
                raise LensError(f"module {name!r} {what}; it has no activation per board to read")
            continue
        out[name] = batch_first(value.detach(), n)
    if not out:
        raise LensError(f"none of the modules {names[:8]} gave an activation per board")
    return out
