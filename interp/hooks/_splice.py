"""Splicing a dictionary (SAE or transcoder) into the forward pass, with its latents as hook points.

``Splice(dictionary, hook_in, hook_out)``: at ``hook_in`` the dictionary encodes the activation; at
``hook_out`` (the same hook for an SAE) the activation is replaced by the reconstruction, plus the error term
``x - reconstruction`` if ``error_term`` (then the output is unchanged until latents are edited). New hook
points, under the name of ``hook_in`` / ``hook_out``:

  ``{hook_in}.sae.hook_latents   [..., M]``  the dictionary's latents (capture or edit features here)
  ``{hook_out}.sae.hook_recons   [..., O]``  the reconstruction
  ``{hook_out}.sae.hook_error    [..., O]``  the error term (only with ``error_term=True``)

Any object with ``encode``, ``decode`` and optional ``skip_term`` works; a pytree dictionary's arrays are
traced, so splicing a retrained dictionary of the same shape reuses the compiled function.

Splices that share a ``group`` are layers of one cross-layer set (``interp.sae.CrossLayerTranscoder.splices``):
each member's output is ``dictionary.decode_group(latents)`` over the (possibly edited) latents of every member
encoded so far in the forward pass, keyed by the member's ``dictionary.layer``.
"""

from __future__ import annotations

from typing import Any

import jax

from interp.hooks._names import act_name, suggest


@jax.tree_util.register_pytree_node_class
class Splice:
    """A dictionary spliced into the forward pass (see the module docstring): ``dictionary`` encodes the
    activation at ``hook_in`` and its reconstruction replaces the activation at ``hook_out`` (default: the same
    hook, as for an SAE; a later one for a transcoder). With ``error_term`` the error ``x - reconstruction`` is
    added back, so the output is the model's own until latents are edited. The first ``skip_positions``
    positions keep the model's activation (e.g. BOS, for a dictionary trained without it). Pass splices to
    ``run_with_cache``/``run_with_hooks`` (``splices=[...]``); the new hook points are listed by :meth:`names`.
    A pytree: the dictionary's arrays are leaves, the hook names and options static."""

    def __init__(self, dictionary: Any, hook_in: str, hook_out: str | None = None, error_term: bool = False,
                 skip_positions: int = 0, group: str | None = None):
        self.dictionary = dictionary
        self.hook_in = _hook_name(hook_in)
        self.hook_out = self.hook_in if hook_out is None else _hook_name(hook_out)
        self.error_term = error_term
        self.skip_positions = skip_positions  # the first positions keep the model's own activation
        self.group = group  # splices of one cross-layer set: each output reads the latents of every earlier member

    def tree_flatten(self):
        return (self.dictionary,), (self.hook_in, self.hook_out, self.error_term, self.skip_positions, self.group)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def names(self) -> list[tuple[str, str]]:
        """``(anchor, new name)``: each new hook point sits right after its anchor in the vocabulary."""
        out = [(self.hook_in, f"{self.hook_in}.sae.hook_latents"), (self.hook_out, f"{self.hook_out}.sae.hook_recons")]
        if self.error_term:
            out.append((self.hook_out, f"{self.hook_out}.sae.hook_error"))
        return out


def _hook_name(spec) -> str:
    """A splice sits at one hook point: a full name or a short key such as ``("resid_post", 3)``."""
    if not isinstance(spec, (str, tuple)):
        raise TypeError(f"a splice's hook must be a hook name or a short key like ('resid_post', 3), got {spec!r}; "
                        "a predicate could match several hook points or none")
    try:
        return act_name(*spec) if isinstance(spec, tuple) else act_name(spec)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None


def extend_vocabulary(vocabulary: list[str], splices) -> list[str]:
    """The model's hook names with each splice's new points inserted after their anchors."""
    if not splices:
        return list(vocabulary)
    extra: dict[str, list[str]] = {}
    for s in splices:
        if s.hook_in not in vocabulary or s.hook_out not in vocabulary:
            bad = s.hook_in if s.hook_in not in vocabulary else s.hook_out
            raise ValueError(f"cannot splice at unknown hook '{bad}'{suggest(bad, vocabulary)}")
        if vocabulary.index(s.hook_out) < vocabulary.index(s.hook_in):
            raise ValueError(f"a transcoder must read '{s.hook_in}' before it writes '{s.hook_out}'")
        for anchor, name in s.names():
            extra.setdefault(anchor, []).append(name)
    out = []
    for n in vocabulary:
        out.append(n)
        out.extend(extra.get(n, []))
    return out
