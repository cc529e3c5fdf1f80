"""``LczeroModel``: an lc0 network as a ``torch.nn.Module`` that takes boards or planes and returns a TensorDict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chess
import torch
from torch import nn

from lczerolens.board import InputFormat
from lczerolens.model.precision import in_ieee_float32

if TYPE_CHECKING:
    from tensordict import TensorDict

    from lczerolens.board import LczeroBoard
from lczerolens.errors import (
    InputShapeError,
    InvalidOptionError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
)

__all__ = ["LczeroModel", "Evaluation", "MoveScore"]

_GZIP_MAGIC = b"\x1f\x8b"


def _sniff(path: Path) -> str:
    """``"onnx"`` or ``"pb"`` from the file's first bytes (falling back on the suffix); raise if neither."""
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] == _GZIP_MAGIC:
        return "pb"  # lc0 weights are gzipped protobuf; ONNX files are never gzipped
    # Both are protobuf messages written in field order: lc0's Net starts with `fixed32 magic = 1` (tag 0x0d),
    # an ONNX ModelProto with `int64 ir_version = 1` (tag 0x08).
    if head[:1] == b"\x0d":
        return "pb"
    if head[:1] == b"\x08":
        return "onnx"
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".onnx"):
        return "onnx"
    if suffixes.endswith((".pb", ".pb.gz")):
        return "pb"
    if not head:
        raise ModelLoadError(f"{path} is empty: not a network; re-download or re-export it")
    raise ModelLoadError(
        f"{path} is neither an lc0 ONNX export nor lc0 weights (.pb.gz / .pb): its first bytes are {head!r}; "
        "pass a file from `lc0 leela2onnx` or lc0's network weights"
    )


_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _format_value(value: Any) -> Any:
    """An input format given by name (``"CLASSICAL_112_PLANE"``) as its enum member; anything else unchanged."""
    if isinstance(value, str):
        return InputFormat.__members__.get(value.strip().upper(), value)
    return value


def _check_dtype(dtype: Any, half: bool) -> torch.dtype | None:
    if not isinstance(half, bool):
        raise InvalidOptionError(f"half must be True or False, not {half!r}")
    if dtype is None:
        return torch.float16 if half else None
    if dtype not in _DTYPES:
        raise InvalidOptionError(
            f"dtype {dtype!r} is not supported; use one of {', '.join(str(d) for d in _DTYPES)}"
        )
    if half and dtype != torch.float16:
        raise InvalidOptionError(f"half=True asks for float16 but dtype={dtype}; pass only one of them")
    return dtype if isinstance(dtype, torch.dtype) else None


def _check_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidOptionError(f"{device!r} is not a device; pass e.g. 'cpu' or 'cuda:0' ({exc})") from None


@dataclass(frozen=True)
class MoveScore:
    """One legal move with the network's probability for it (softmax over the legal moves only)."""

    move: chess.Move
    probability: float
    logit: float

    def __repr__(self) -> str:
        return f"{self.move.uci()} {100 * self.probability:.1f}%"


@dataclass(frozen=True)
class Evaluation:
    """The network's evaluation of one position.

    ``wdl`` is (win, draw, loss) for the side to move; ``value`` is W - L (or tanh of the value logit for nets
    without a WDL head); ``mlh`` is the moves-left estimate (None when the net has no such head); ``moves`` the
    ``top_k`` legal moves by probability, best first.
    """

    fen: str
    moves: tuple[MoveScore, ...]
    value: float
    wdl: tuple[float, float, float] | None = None
    mlh: float | None = None
    policy: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def best_move(self) -> chess.Move | None:
        return self.moves[0].move if self.moves else None

    def __repr__(self) -> str:
        parts = [f"fen={self.fen!r}", f"value={self.value:+.3f}"]
        if self.wdl is not None:
            parts.append("wdl=(" + ", ".join(f"{p:.3f}" for p in self.wdl) + ")")
        if self.mlh is not None:
            parts.append(f"mlh={self.mlh:.1f}")
        parts.append("moves=[" + ", ".join(repr(m) for m in self.moves) + "]")
        return "Evaluation(" + ", ".join(parts) + ")"


class LczeroModel(nn.Module):
    """An lc0 network: boards or input planes in, a ``TensorDict`` of its heads out.

    Parameters
    ----------
    network
        A network following the package's network contract (what ``load_onnx`` and ``load_pb`` return).
    input_format
        Override the network's input format (e.g. for an ONNX export, which does not record it).
    source
        Where the network came from, for ``repr``.

    Examples
    --------
    >>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
    >>> out = model(LczeroBoard())  # doctest: +SKIP
    >>> out["policy"].shape, out["wdl"].shape, out["value"].shape  # doctest: +SKIP
    (torch.Size([1, 1858]), torch.Size([1, 3]), torch.Size([1]))
    >>> model.evaluate(LczeroBoard(), top_k=3)  # doctest: +SKIP
    Evaluation(fen='rnbqkbnr/...', value=+0.041, wdl=(0.35, 0.34, 0.31), moves=[e2e4 31.0%, d2d4 24.2%, ...])
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        input_format: InputFormat | int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, not {type(network).__name__}")
        self.network = network
        fmt = input_format if input_format is not None else getattr(network, "input_format", None)
        from lczerolens.board import _as_format

        self._input_format = _as_format(_format_value(fmt)) if fmt is not None else InputFormat.CLASSICAL_112_PLANE
        # Say so in repr when nobody recorded or chose the format (lc0's ONNX exports do not record it).
        self._format_assumed = input_format is None and (
            fmt is None or str(getattr(network, "input_format_source", "")).startswith("default")
        )
        self.source = source if source is not None else getattr(network, "source", None)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        input_format: InputFormat | int | str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        half: bool = False,
        max_bytes: int | None = None,
    ) -> LczeroModel:
        """Load an lc0 ONNX export (``.onnx``) or lc0 weights (``.pb.gz`` / ``.pb``).

        The kind is told by the file's content (gzip or protobuf signature), the suffix only as a fallback. The
        file is untrusted input: its size is bounded, its names never reach generated code, its weights must be
        finite and the network must give finite outputs on the starting position, or loading fails here.

        Parameters
        ----------
        path
            The network file.
        input_format
            Override the network's input format (an :class:`InputFormat`, its number or name); ONNX exports do
            not record it, classical is assumed.
        device
            Where to put the network (``"cpu"``, ``"cuda:0"``, a ``torch.device``); default CPU.
        dtype
            ``torch.float32`` (default), ``torch.float16``, ``torch.bfloat16`` or ``torch.float64``.
        half
            Shorthand for ``dtype=torch.float16``; an fp16 ONNX export is then kept exactly as it is.
        max_bytes
            Cap on the bytes read or decompressed (default 2 GiB, see :mod:`lczerolens.model.safety`).

        Raises
        ------
        ModelNotFoundError, ModelLoadError, UnsupportedModelError
            A missing, corrupted, hostile or unsupported file.
        InputFormatError
            An unknown ``input_format``.
        InvalidOptionError
            A ``device`` or ``dtype`` that cannot be used.

        Examples
        --------
        >>> model = LczeroModel.from_path("assets/cache/maia-1900.onnx")  # doctest: +SKIP
        >>> model = LczeroModel.from_path("maia-1900.pb.gz", device="cpu", dtype=torch.float64)  # doctest: +SKIP
        """
        from lczerolens.board import _as_format

        fmt = _as_format(_format_value(input_format)) if input_format is not None else None
        target_dtype = _check_dtype(dtype, half)
        target_device = _check_device(device)
        path = Path(path)
        if not path.exists():
            raise ModelNotFoundError(f"no such network file: {path}; check the path")
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory; pass an lc0 network file (.onnx, .pb.gz or .pb)")
        kind = _sniff(path)
        # Built outside inference mode, so that a network loaded inside `torch.inference_mode()` can be explained.
        with torch.inference_mode(False):
            if kind == "onnx":
                from lczerolens.model.onnx_loader import load_onnx

                network: nn.Module = load_onnx(
                    path, input_format=fmt, half=target_dtype == torch.float16, max_bytes=max_bytes
                )
            else:
                try:
                    from lczerolens.model.native import load_pb
                except ModuleNotFoundError as exc:
                    if exc.name != "lczerolens.model.native":
                        raise
                    raise UnsupportedModelError(
                        f"{path}: loading lc0 .pb.gz weights needs lczerolens.model.native, which is not available "
                        f"({exc}); export the network with `lc0 leela2onnx` and load the .onnx"
                    ) from exc
                network = load_pb(path, max_bytes=max_bytes)
            if target_dtype not in (None, torch.float16) or (target_dtype == torch.float16 and kind != "onnx"):
                network = network.to(dtype=target_dtype)
            if target_device is not None:
                try:
                    network = network.to(device=target_device)
                except (RuntimeError, AssertionError, ValueError) as exc:
                    raise InvalidOptionError(f"cannot move the network to device {device!r}: {exc}") from exc
        model = cls(network, input_format=fmt, source=str(path))
        if model._format_assumed:
            import warnings

            from lczerolens.errors import InputFormatWarning

            warnings.warn(
                f"{path.name} records no input format (lc0's ONNX exports never do), so it is read as "
                f"{model.input_format.name}. If the network was trained on another format (attention-body nets use "
                "a canonical one), every output and explanation is silently wrong: pass it, e.g. "
                "LczeroModel.from_path(path, input_format=InputFormat.CANONICALIZATION_V2).",
                InputFormatWarning,
                stacklevel=2,
            )
        return model

    def save(self, path: str | Path, *, encoding: str = "LINEAR16") -> Path:
        """Write the network as lc0 weights (``.pb.gz``; ``.pb`` uncompressed), as it is now.

        The model must come from lc0 weights (``.pb.gz``/``.pb``, or a net of :mod:`lczerolens.testing`): every
        weight layer of the original file is written from the module's current tensor, so parameters edited in
        place (a zeroed head, an ablated channel, a trained net) are saved; the file's format and other fields
        are kept. Convolutions are written with their batch norm folded in (lc0 reads both). The file is written
        atomically (a temporary file renamed into place).

        Parameters
        ----------
        path
            Where to write; the folder must exist.
        encoding
            ``"LINEAR16"`` (default: what lc0 0.32 reads; each layer quantised to 65536 levels between its min
            and max, error at most ``(max - min) / 131070``), ``"FLOAT32"`` (lossless: load -> save -> load is
            exact; such files ask for lc0 0.33, which reads them), ``"FLOAT16"`` or ``"BFLOAT16"``.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        UnsupportedModelError
            The model was loaded from an ``.onnx`` export (or is a module of your own): there are no lc0 weights
            to write.
        InvalidOptionError
            A non-finite parameter, an unknown encoding, or values beyond FLOAT16's range.
        SaveError
            The path cannot be written.

        Examples
        --------
        >>> model = LczeroModel.from_path("assets/cache/maia-1900.pb.gz")  # doctest: +SKIP
        >>> with torch.no_grad():  # doctest: +SKIP
        ...     model.network._modules["block3/conv2"].weight[17].zero_()  # ablate channel 17
        >>> model.save("maia-ablated.pb.gz")  # doctest: +SKIP
        PosixPath('maia-ablated.pb.gz')
        """
        from lczerolens.model.save import save_network

        return save_network(self.network, path, encoding=encoding)

    # ------------------------------------------------------------------ properties

    @property
    def input_format(self) -> InputFormat:
        """The lc0 input format the network was trained with (what boards are encoded with)."""
        return self._input_format

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(getattr(self.network, "heads", ()))

    @property
    def description(self) -> str:
        return str(getattr(self.network, "description", type(self.network).__name__))

    def _param(self) -> torch.Tensor | None:
        return next(self.network.parameters(), None)

    @property
    def device(self) -> torch.device:
        p = self._param()
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = self._param()
        return p.dtype if p is not None else torch.float32

    def __repr__(self) -> str:
        assumed = " (assumed; pass input_format= to from_path if wrong)" if self._format_assumed else ""
        return (
            f"LczeroModel({self.description}; input_format={self.input_format.name}{assumed}, "
            f"heads={self.heads}, source={self.source!r})"
        )

    # ------------------------------------------------------------------ running

    def prepare(self, x: torch.Tensor | chess.Board | Sequence[chess.Board]) -> torch.Tensor:
        """Turn a board, a sequence of boards or a planes tensor into the network's input ``[N, 112, 8, 8]``."""
        if isinstance(x, torch.Tensor):
            planes = x
        elif isinstance(x, chess.Board):
            planes = self._encode([x])
        elif isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
            if len(x) == 0:
                raise InputShapeError("got an empty sequence of boards; pass at least one board")
            if not all(isinstance(b, chess.Board) for b in x):
                bad = next(b for b in x if not isinstance(b, chess.Board))
                raise InputShapeError(
                    f"expected LczeroBoard objects, got {type(bad).__name__} in the sequence; "
                    "build boards with lczerolens.LczeroBoard(fen)"
                )
            planes = self._encode(list(x))
        else:
            raise InputShapeError(
                f"expected an LczeroBoard, a sequence of them or a float tensor [N, 112, 8, 8], got {type(x).__name__}"
            )
        if planes.dim() != 4 or tuple(planes.shape[1:]) != (112, 8, 8):
            hint = "; add the batch dimension with x.unsqueeze(0)" if tuple(planes.shape) == (112, 8, 8) else ""
            raise InputShapeError(f"input planes must have shape [N, 112, 8, 8], got {list(planes.shape)}{hint}")
        if not planes.is_floating_point():
            raise InputShapeError(f"input planes must be a floating-point tensor, got {planes.dtype}; use x.float()")
        if planes.shape[0] == 0:
            raise InputShapeError("input planes have batch size 0; pass at least one position")
        # .to is a no-op (no copy) when device and dtype already match.
        return planes.to(device=self.device, dtype=self.dtype)

    def _encode(self, boards: Sequence[chess.Board]) -> torch.Tensor:
        from lczerolens.board import encode_boards

        return encode_boards(boards, self.input_format)

    @in_ieee_float32
    def forward(self, x: torch.Tensor | chess.Board | Sequence[chess.Board]) -> TensorDict:
        """Run the network.

        Parameters
        ----------
        x
            An ``LczeroBoard``, a sequence of them, or a float tensor ``[N, 112, 8, 8]`` (network orientation).

        Returns
        -------
        TensorDict
            Batch size ``[N]``: ``policy`` ``[N, 1858]`` raw logits; for WDL nets ``wdl_logits`` ``[N, 3]``,
            ``wdl`` (softmax probabilities: win, draw, loss for the side to move) and ``value`` ``[N]`` = W - L;
            for value nets ``value_logit`` ``[N]`` and ``value`` = tanh of it; ``mlh`` ``[N]`` when present.
        """
        from tensordict import TensorDict  # imported on first use: it takes about a second to import

        planes = self.prepare(x)
        return TensorDict(self._heads(planes), batch_size=[planes.shape[0]], device=planes.device)

    def _heads(self, planes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs of :meth:`forward` as a plain dict, for ready planes."""
        out = self.network(planes)
        data: dict[str, torch.Tensor] = {"policy": out["policy"]}
        if "wdl_logits" in out:
            wdl = torch.softmax(out["wdl_logits"], dim=-1)
            data["wdl_logits"] = out["wdl_logits"]
            data["wdl"] = wdl
            data["value"] = wdl[:, 0] - wdl[:, 2]
        if "value_logit" in out:
            data["value_logit"] = out["value_logit"]
            data["value"] = torch.tanh(out["value_logit"])
        if "mlh" in out:
            data["mlh"] = out["mlh"]
        return data

    def evaluate(
        self, boards: chess.Board | Sequence[chess.Board], top_k: int | None = 5, *, batch_size: int = 256
    ) -> Evaluation | list[Evaluation]:
        """The network's evaluation of positions: top legal moves with probabilities, WDL, value, moves left.

        Move probabilities are a softmax over the position's legal moves only (as lc0 computes priors, without
        its policy temperature). Runs without gradients, in batches of ``batch_size``.

        Parameters
        ----------
        boards
            An ``LczeroBoard`` or a sequence of them.
        top_k
            How many moves to keep per position (``None``: all legal moves).

        Returns
        -------
        Evaluation or list[Evaluation]
            One per board (a single ``Evaluation`` for a single board).

        Examples
        --------
        >>> model.evaluate(LczeroBoard(), top_k=3).best_move  # doctest: +SKIP
        Move.from_uci('e2e4')
        """
        from lczerolens.board import LczeroBoard

        single = isinstance(boards, chess.Board)
        given: list[chess.Board] = [boards] if isinstance(boards, chess.Board) else list(boards)
        if not given:
            raise InputShapeError("got an empty sequence of boards; pass at least one board")
        # Plain chess.Board objects work too (their move stack is the history).
        lc0_boards = [b if isinstance(b, LczeroBoard) else LczeroBoard.from_board(b) for b in given]
        results: list[Evaluation] = []
        with torch.inference_mode():
            for start in range(0, len(lc0_boards), batch_size):
                chunk = lc0_boards[start : start + batch_size]
                out = self._heads(self.prepare(chunk))
                results.extend(self._summarise(chunk, out, top_k))
        return results[0] if single else results

    def _summarise(
        self, boards: Sequence[LczeroBoard], out: Mapping[str, torch.Tensor], top_k: int | None
    ) -> list[Evaluation]:
        policy = out["policy"].float().cpu()
        value = out["value"].float().cpu().tolist()
        wdl = out["wdl"].float().cpu().tolist() if "wdl" in out.keys() else None
        mlh = out["mlh"].float().cpu().tolist() if "mlh" in out.keys() else None
        results = []
        for i, board in enumerate(boards):
            indices = board.legal_move_indices(self.input_format)
            moves: tuple[MoveScore, ...] = ()
            if len(indices):
                logits = policy[i, indices]
                probs = torch.softmax(logits, dim=0)
                k = len(indices) if top_k is None else min(top_k, len(indices))
                top = torch.topk(probs, k)
                legal = list(board.legal_moves)
                moves = tuple(MoveScore(legal[j], float(probs[j]), float(logits[j])) for j in top.indices.tolist())
            results.append(
                Evaluation(
                    fen=board.fen(),
                    moves=moves,
                    value=value[i],
                    wdl=tuple(wdl[i]) if wdl is not None else None,
                    mlh=mlh[i] if mlh is not None else None,
                    policy=policy[i],
                )
            )
        return results
