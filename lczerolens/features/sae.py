"""Sparse autoencoders over per-square activations, stored in SAELens's on-disk format.

Why our own classes: the ``sae-lens`` package pulls in transformer-lens, transformers, datasets and wandb (about
90 packages) for what is, at inference, two matrix products and an activation function. The classes here hold
the same tensors under the same names and save them the way SAELens 6 does (``cfg.json`` with ``architecture``,
``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``metadata``, and
``k`` for TopK; ``sae_weights.safetensors`` with ``W_enc`` ``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_in]``,
``b_enc``, ``b_dec`` and, for JumpReLU, ``threshold``), so ``sae_lens.SAE.load_from_disk(path)`` reads what
:meth:`SAE.save` writes and encodes and decodes the same numbers. Install the ``saelens`` extra to use it.

The three architectures, with ``x' = x - b_dec`` (``apply_b_dec_to_input``) and ``h = x' @ W_enc + b_enc``:

- ``"standard"`` (trained with ReLU and an L1 penalty): ``f = relu(h)``;
- ``"topk"``: ``f`` keeps the ``k`` largest entries of ``h`` (then ``relu``), 0 elsewhere;
- ``"jumprelu"``: ``f = h * (h > threshold)`` where ``h > 0``;

and ``decode(f) = f @ W_dec + b_dec``. Input scaling used in training is folded into the weights before
saving (as SAELens's ``fold_activation_norm_scaling_factor`` does), so ``normalize_activations`` is ``"none"``
and the SAE reads raw activations.

Example
-------
>>> import torch
>>> sae = SAE.create(d_in=4, d_sae=8, architecture="topk", k=2, seed=0)
>>> sae.encode(torch.ones(3, 4)).ne(0).sum(-1).tolist()
[2, 2, 2]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lczerolens.errors import DataError, InvalidOptionError

__all__ = ["SAE", "load_sae", "ARCHITECTURES", "KINDS"]

#: SAELens architecture names we read and write.
ARCHITECTURES = ("standard", "topk", "jumprelu")
#: The training kinds of :func:`~lczerolens.features.train_sae` and the architecture each is saved as.
KINDS = {"topk": "topk", "relu_l1": "standard", "jumprelu": "jumprelu"}

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
#: The SAELens format version the files follow (its loader treats older configs differently).
FORMAT_VERSION = "6.0.0"
#: Bounds on what a file may declare (a file is untrusted input).
MAX_DIM = 1 << 20
MAX_BYTES = 1 << 31


class SAE(nn.Module):
    """A sparse autoencoder: ``encode(x)`` ``[..., d_in] -> [..., d_sae]`` (0 where a feature is inactive),
    ``decode(f)`` ``[..., d_sae] -> [..., d_in]``, ``forward(x) = decode(encode(x))``.

    Attributes
    ----------
    W_enc, W_dec, b_enc, b_dec, threshold
        The SAELens tensors (``threshold`` only for ``"jumprelu"``).
    architecture : str
        ``"standard"``, ``"topk"`` or ``"jumprelu"``.
    k : int or None
        Active features per row for ``"topk"``.
    metadata : dict
        Where the SAE reads from (``model_name``, ``hook_name``) and how it was trained; saved in ``cfg.json``.
    """

    threshold: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        *,
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise InvalidOptionError(f"architecture={architecture!r} is not one of {ARCHITECTURES}")
        if not (0 < d_in <= MAX_DIM and 0 < d_sae <= MAX_DIM):
            raise InvalidOptionError(f"d_in={d_in}, d_sae={d_sae} must be positive and at most {MAX_DIM}")
        if architecture == "topk" and (k is None or not 0 < k <= d_sae):
            raise InvalidOptionError(f"a topk SAE needs 0 < k <= d_sae={d_sae}, got k={k!r}")
        self.d_in, self.d_sae, self.architecture = d_in, d_sae, architecture
        self.k = k if architecture == "topk" else None
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))

    @classmethod
    def create(
        cls,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        *,
        k: int | None = None,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> SAE:
        """A new SAE with seeded weights: unit-norm decoder rows, the encoder their transpose, biases 0."""
        sae = cls(d_in, d_sae, architecture, k=k, metadata=metadata)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(d_sae, d_in, generator=gen)
            w /= w.norm(dim=1, keepdim=True)
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
        return sae

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        hook = self.metadata.get("hook_name")
        where = f", hook_name={hook!r}" if hook else ""
        return f"SAE(d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.architecture!r}{extra}{where})"

    # ------------------------------------------------------------------------------------------------------
    # Forward

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``h = (x - b_dec) @ W_enc + b_enc`` (``[..., d_sae]``), before the sparsifying activation."""
        self._check_width(x, self.d_in, "x")
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """The architecture's activation applied to pre-activations ``h``."""
        if self.architecture == "standard":
            return torch.relu(h)
        if self.architecture == "jumprelu":
            return torch.relu(h) * (h > self.threshold).to(h.dtype)
        k = int(self.k or 0)
        values, indices = torch.topk(h, k, dim=-1, sorted=False)
        return torch.zeros_like(h).scatter(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of rows ``x`` ``[..., d_in]`` (one row per square)."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``f @ W_dec + b_dec`` ``[..., d_in]`` of feature activations ``f``."""
        self._check_width(f, self.d_sae, "f")
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def _check_width(self, x: torch.Tensor, width: int, what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != width:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidOptionError(f"{what} must end in dimension {width}, got shape {shape}")

    # ------------------------------------------------------------------------------------------------------
    # Files

    def config(self) -> dict[str, Any]:
        """The ``cfg.json`` contents (SAELens 6 field names)."""
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": FORMAT_VERSION,
                "sae_lens_training_version": FORMAT_VERSION,
                **self.metadata,
            },
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = False
        return cfg

    def save(self, path: str | Path) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (float32) into directory ``path``; returns it."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in self.named_parameters()}
        save_file(tensors, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")
        return out


def load_sae(path: str | Path) -> SAE:
    """Read an SAE saved by :meth:`SAE.save` or by SAELens (``standard``, ``topk``, ``jumprelu``) from a directory.

    Raises
    ------
    DataError
        A file is missing, too large, or declares shapes, types or settings we do not read (e.g. activation
        normalisation other than ``"none"``), or a tensor is not finite.

    Example
    -------
    >>> sae = load_sae("assets/saes/maia-1900-block3")  # doctest: +SKIP
    >>> sae.d_in, sae.d_sae  # doctest: +SKIP
    (64, 1024)
    """
    from safetensors import safe_open

    root = Path(path)
    cfg_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for file in (cfg_path, weights_path):
        if not file.is_file():
            raise DataError(f"{file} is missing; an SAE directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
        if file.stat().st_size > MAX_BYTES:
            raise DataError(f"{file} is larger than {MAX_BYTES} bytes")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_path} must hold a JSON object")
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise DataError(f"{cfg_path}: architecture {arch!r} is not one of {ARCHITECTURES}")
    norm = cfg.get("normalize_activations", "none")
    if norm != "none":
        raise DataError(f"{cfg_path}: normalize_activations={norm!r}; only 'none' is read (fold the scaling first)")
    if cfg.get("reshape_activations", "none") != "none":
        raise DataError(f"{cfg_path}: reshape_activations={cfg.get('reshape_activations')!r} is not read")
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        raise DataError(f"{cfg_path}: rescale_acts_by_decoder_norm=true is not read")
    d_in, d_sae, k = cfg.get("d_in"), cfg.get("d_sae"), cfg.get("k")
    if not isinstance(d_in, int) or not isinstance(d_sae, int):
        raise DataError(f"{cfg_path}: d_in and d_sae must be integers, got {d_in!r}, {d_sae!r}")
    if arch == "topk" and (not isinstance(k, int) or isinstance(k, bool)):
        raise DataError(f"{cfg_path}: a topk SAE needs an integer k, got {k!r}")
    metadata = cfg.get("metadata", {})
    if not isinstance(metadata, dict):
        raise DataError(f"{cfg_path}: metadata must be an object")
    metadata = {key: value for key, value in metadata.items() if not key.startswith("sae_lens")}
    try:
        sae = SAE(
            d_in,
            d_sae,
            arch,
            k=k if arch == "topk" else None,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            metadata=metadata,
        )
    except InvalidOptionError as exc:
        raise DataError(f"{cfg_path}: {exc}") from None
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    with safe_open(str(weights_path), framework="pt") as handle:
        names = set(handle.keys())
        missing = sorted(set(expected) - names)
        if missing:
            raise DataError(f"{weights_path} lacks tensors {missing}")
        with torch.no_grad():
            for name, shape in expected.items():
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != shape:
                    raise DataError(f"{weights_path}: {name} has shape {tuple(tensor.shape)}, expected {shape}")
                if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                    raise DataError(f"{weights_path}: {name} must hold finite floating-point numbers")
                getattr(sae, name).copy_(tensor.to(torch.float32))
    return sae
