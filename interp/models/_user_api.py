"""The calls a TransformerLens user types: ``model(tokens)``, ``run_with_cache``, ``run_with_hooks`` and the
tokenizer conveniences. A plain mixin of :class:`interp.models.Model`; everything here goes through
``Model.run``, the one compiled entry point."""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Array

from interp.hooks import Cache, Hooks


class UserAPI:
    """Conveniences over :meth:`Model.run` (mixed into :class:`Model`)."""

    def __call__(self, tokens, *, attention_mask=None, positions=None, stop_at_layer=None, hooks: Hooks | None = None):
        """Logits ``[batch, pos, vocab]`` (or the residual stream with ``stop_at_layer``).

        ``tokens``: int array ``[batch, pos]`` or ``[pos]``, or text (tokenized with the model's tokenizer).
        With ``hooks`` the result is ``(output, cache)``.

        Checks: token ids must lie in ``0..d_vocab-1`` and positions below :attr:`n_ctx` (learned positions
        always; rotary models unless ``positions`` are passed explicitly, which runs past the context on purpose).
        The ids can only be checked when they are concrete: under ``jax.jit`` an out-of-range id gives NaN
        logits, so check them inside the jitted function with :func:`interp.check_tokens`. The length is static
        and is checked under ``jit`` too.
        """
        out, cache = self.run(
            tokens, hooks, attention_mask=attention_mask, positions=positions, stop_at_layer=stop_at_layer
        )
        return (out, cache) if hooks is not None else out

    def run_with_cache(
        self,
        tokens,
        names=None,
        *,
        names_filter=None,
        edits: Sequence = (),
        splices: Sequence = (),
        attention_mask=None,
        positions=None,
        stop_at_layer: int | None = None,
        return_logits: bool = True,
    ) -> tuple[Array | None, Cache]:
        """``(logits, cache)``; the cache holds exactly the requested activations.

        ``names``: hook names, short keys like ``("resid_post", 5)``, or a predicate ``name -> bool``;
        None captures every hook point. ``names_filter`` is accepted as TransformerLens's spelling.
        """
        if names is None:
            names = names_filter
        capture = (lambda n: True) if names is None else names
        return self.run(
            tokens,
            Hooks(capture=capture, edits=edits, splices=splices),
            attention_mask=attention_mask,
            positions=positions,
            stop_at_layer=stop_at_layer,
            return_output=return_logits,
        )

    def run_with_hooks(
        self, tokens, edits: Sequence = (), *, splices: Sequence = (), attention_mask=None, positions=None,
        stop_at_layer=None,
    ) -> Array:
        """Output with edits applied: ``edits`` is a sequence of ``(name, fn, *params)`` where
        ``fn(activation, name, *params) -> activation`` is pure and ``params`` are traced arrays.
        ``splices``: ``interp.hooks.Splice`` objects that run dictionaries inside the model."""
        out, _ = self.run(
            tokens,
            Hooks(edits=edits, splices=splices),
            attention_mask=attention_mask,
            positions=positions,
            stop_at_layer=stop_at_layer,
        )
        return out

    # ----------------------------------------------------------------- tokenizer conveniences
    def _tok(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (its checkpoint had none); pass token ids instead of text")
        return self.tokenizer

    def to_tokens(self, text, *, prepend_bos: bool | None = None, padding_side: str = "right", return_mask: bool = False):
        """Token ids ``[batch, pos]`` for a string or a list of strings (padded with the pad token)."""
        return self._tok().to_tokens(text, prepend_bos=prepend_bos, padding_side=padding_side, return_mask=return_mask)

    def to_string(self, ids) -> str | list[str]:
        return self._tok().to_string(ids)

    def to_str_tokens(self, text_or_ids, *, prepend_bos: bool | None = None) -> list[str]:
        return self._tok().to_str_tokens(text_or_ids, prepend_bos=prepend_bos)

    def to_single_token(self, text: str) -> int:
        return self._tok().to_single_token(text)
