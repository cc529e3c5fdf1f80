"""Concepts, probes and channels: what a network represents, where, and which channels carry it.

- Concepts (:class:`Concept` and the built-ins :class:`PieceOnSquare`, :class:`InCheck`,
  :class:`MaterialBalance`, :class:`AttackedBy`, :class:`HangingPiece`, :class:`LegalMoveFrom`, :class:`BestMove`)
  label positions or squares, exactly, from python-chess bitboards; ``&``, ``|``, ``~`` and
  :meth:`Concept.equals` combine them.
- Probes: :func:`fit_probe` (logistic / ridge on a split by game) and :func:`probe_layers` (one row per layer,
  with a random-weight control and selectivity), :func:`plot_probe_layers`.
- Channels: :func:`channel_relevance` (latent relevance per channel), :func:`reference_positions` (top-k
  positions per channel by activation or relevance, savable and drawable), :func:`top_positions` (the top-k
  positions of one unit over a whole collection, streamed) and :func:`render_top_positions`.

Example
-------
>>> import chess
>>> from lczerolens.concepts import HangingPiece, AttackedBy
>>> concept = HangingPiece() & AttackedBy(chess.WHITE)
>>> concept.name
'(hanging_piece & attacked_by_white)'
"""

from __future__ import annotations

from lczerolens.concepts.activations import activation_maps, resolve_modules, square_features
from lczerolens.concepts.base import AndConcept, ClassEquals, Concept, NotConcept, OrConcept
from lczerolens.concepts.builtin import (
    PIECE_VALUES,
    AttackedBy,
    BestMove,
    HangingPiece,
    InCheck,
    LegalMoveFrom,
    MaterialBalance,
    PieceOnSquare,
    attack_masks,
)
from lczerolens.concepts.channels import (
    ReferencePositions,
    activation_maps_of,
    channel_relevance,
    reference_positions,
    relevance_maps_of,
)
from lczerolens.concepts.probes import (
    ProbeResult,
    ProbeTable,
    control_model,
    fit_probe,
    plot_probe_layers,
    probe_layers,
    split_groups,
)
from lczerolens.concepts.top import render_top_positions, top_positions, unit_maps

__all__ = [
    "PIECE_VALUES",
    "AndConcept",
    "AttackedBy",
    "BestMove",
    "ClassEquals",
    "Concept",
    "HangingPiece",
    "InCheck",
    "LegalMoveFrom",
    "MaterialBalance",
    "NotConcept",
    "OrConcept",
    "PieceOnSquare",
    "ProbeResult",
    "ProbeTable",
    "ReferencePositions",
    "activation_maps",
    "activation_maps_of",
    "attack_masks",
    "channel_relevance",
    "control_model",
    "fit_probe",
    "plot_probe_layers",
    "probe_layers",
    "reference_positions",
    "relevance_maps_of",
    "render_top_positions",
    "resolve_modules",
    "split_groups",
    "square_features",
    "top_positions",
    "unit_maps",
]
