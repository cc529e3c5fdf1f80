"""Which heads a network's forward pass computes.

lczerolens's own networks (:class:`~lczerolens.model.residual.ResidualNetwork`,
:class:`~lczerolens.model.attention.AttentionNetwork`) take ``heads=`` in ``forward`` and ``forward_heads``: the
heads to compute, by name. The gradient lenses and occlusion ask for the head they explain only: on maia-1900 the
policy head is two of the sixteen convolutions of a forward pass, and about an eighth of its time at batch 64.
The LRP lens runs every head, because its result carries all of the network's outputs.

Example
-------
>>> sorted(wanted_heads(["value"], has_mlh=False))
['value']
>>> sorted(wanted_heads(None, has_mlh=True))
['mlh', 'policy', 'value']
"""

from __future__ import annotations

from collections.abc import Iterable

from lczerolens.errors import InvalidOptionError

#: Head names: ``"policy"`` (the ``policy`` output), ``"value"`` (``wdl_logits`` or ``value_logit``), ``"mlh"``.
HEADS = ("policy", "value", "mlh")


def wanted_heads(heads: str | Iterable[str] | None, has_mlh: bool) -> frozenset[str]:
    """The heads to compute: all of the network's for ``None``, else the named ones (one name or several).

    Raises :class:`~lczerolens.errors.InvalidOptionError` for an unknown name, for ``"mlh"`` on a network without
    a moves-left head, and for an empty selection.
    """
    own = frozenset(HEADS if has_mlh else HEADS[:2])
    if heads is None:
        return own
    names = [heads] if isinstance(heads, str) else list(heads)
    for name in names:
        if name not in HEADS:
            raise InvalidOptionError(f"heads: unknown head {name!r}; use 'policy', 'value' or 'mlh'")
        if name not in own:
            raise InvalidOptionError(f"heads: this network has no {name!r} head; it has {sorted(own)}")
    if not names:
        raise InvalidOptionError("heads: name at least one head ('policy', 'value' or 'mlh'), or None for all")
    return frozenset(names)
