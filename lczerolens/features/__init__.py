"""Sparse autoencoders (SAEs) on lc0 activations: train, measure, explore features, and explain through them.

- :func:`train_sae` trains one on a module's per-square activations over a collection (streamed, seeded);
  :func:`load_sae` / :meth:`SAE.save` use SAELens's on-disk format (``cfg.json``, ``sae_weights.safetensors``).
- :func:`sae_metrics`: fraction of variance explained, L0, dead features, and the policy KL and value error when
  the module's output is replaced by the reconstruction.
- :func:`top_feature_positions`, :func:`feature_concepts`, :func:`render_feature`: what a feature responds to.
- :func:`feature_relevance`: LRP maps of the relevance flowing through chosen features (plus the error term).

Example
-------
>>> from lczerolens.features import load_sae
>>> load_sae("assets/saes/maia-1900-block3").architecture  # doctest: +SKIP
'topk'
"""

from __future__ import annotations

from lczerolens.features.explore import feature_concepts, feature_maps, render_feature, top_feature_positions
from lczerolens.features.metrics import sae_metrics
from lczerolens.features.relevance import feature_relevance
from lczerolens.features.sae import SAE, load_sae
from lczerolens.features.train import module_tokens, train_sae

__all__ = [
    "SAE",
    "feature_concepts",
    "feature_maps",
    "feature_relevance",
    "load_sae",
    "module_tokens",
    "render_feature",
    "sae_metrics",
    "top_feature_positions",
    "train_sae",
]
