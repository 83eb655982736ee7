"""The calls a TransformerLens user types: ``model(tokens, return_type=...)``, ``run_with_cache``,
``run_with_hooks`` (pure edits or ``fwd_hooks``), ``with model.hooks(...)``, ``test_prompt``, the tokenizer
conveniences, ``model.cfg`` and the stacked weights (``model.W_Q`` ... ``model.OV``). A plain mixin of
:class:`interp.models.Model`; every forward pass goes through ``Model.run``, the one compiled entry point.

Axis letters: L layer, H query heads, D model, E head dim, F mlp hidden, V vocabulary, B batch, T position.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float

from interp.hooks import Cache, Hooks
from interp.models import _tl_compat as tl
from interp.models.factored import FactoredMatrix

_RETURN_TYPES = ("logits", "loss", "both", None)


def _is_text(tokens) -> bool:
    return isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and bool(tokens)
                                       and isinstance(tokens[0], str))


class UserAPI:
    """Conveniences over :meth:`Model.run` (mixed into :class:`Model`)."""

    def __getattribute__(self, name: str):
        # equinox hands out every method as a pytree `BoundMethod` (so that `jax.jit(model.forward)` works), and
        # building one walks every leaf of the model (~0.2 ms for the default model, paid on each access). The
        # conveniences here, the Python-level entry points (`run` ...) and every private method are called, not
        # transformed: they are handed out as plain bound methods, which also lets `help()` show their docs.
        if name in _PLAIN_METHODS or name in _plain_methods(type(self)):
            return object.__getattribute__(self, name)
        return super().__getattribute__(name)

    # ----------------------------------------------------------------- forward passes
    def __call__(self, tokens, return_type: str | None = "logits", *, loss_per_token: bool = False,
                 attention_mask=None, positions=None, stop_at_layer=None, hooks: Hooks | None = None,
                 prepend_bos: bool | None = None, padding_side: str = "right"):
        """Logits ``[batch, pos, vocab]`` (or the residual stream with ``stop_at_layer``).

        ``tokens``: int array ``[batch, pos]`` or ``[pos]``, or text (tokenized with the model's tokenizer;
        ``prepend_bos`` and ``padding_side`` as in :meth:`to_tokens`, and several strings are padded and masked).
        ``return_type``: "logits", "loss" (next-token cross-entropy in float32, the mean over predicted tokens, or
        ``[batch, pos-1]`` with ``loss_per_token=True``; padded positions excluded by the attention mask),
        "both" (``(logits, loss)``) or None. With ``hooks`` the result is ``(output, cache)``. Edits of an active
        ``with model.hooks(...)`` block apply.

        Checks: token ids must lie in ``0..d_vocab-1`` and positions below :attr:`n_ctx` (learned positions
        always; rotary models unless ``positions`` are passed explicitly, which runs past the context on purpose).
        The ids can only be checked when they are concrete: under ``jax.jit`` an out-of-range id gives NaN
        logits, so check them inside the jitted function with :func:`interp.check_tokens`. The length is static
        and is checked under ``jit`` too.
        """
        out, cache = self._forward(tokens, hooks, return_type, loss_per_token, attention_mask, positions,
                                   stop_at_layer, prepend_bos, padding_side)
        return (out, cache) if hooks is not None else out

    def run_with_cache(
        self,
        tokens,
        names=None,
        *,
        names_filter=None,
        edits: Sequence = (),
        fwd_hooks: Sequence = (),
        splices: Sequence = (),
        attention_mask=None,
        positions=None,
        stop_at_layer: int | None = None,
        return_logits: bool = True,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        remove_batch_dim: bool = False,
        prepend_bos: bool | None = None,
        padding_side: str = "right",
    ) -> tuple[Array | None, Cache]:
        """``(logits, cache)``; the cache holds exactly the requested activations and knows this model, so its
        TransformerLens methods (``accumulated_resid``, ``decompose_resid``, ``stack_head_results``,
        ``apply_ln_to_stack``, ``logit_attrs``) and negative layers (``cache["resid_post", -1]``) work.

        ``names``: hook names, short keys like ``("resid_post", 5)`` (negative layers count from the end), bare
        short names meaning every layer (``"pattern"``, ``["resid_pre", "resid_post"]``), or a predicate
        ``name -> bool``; None captures every hook point. ``names_filter`` is TransformerLens's spelling.
        ``edits`` (pure, ``fn(x, name, *params)``) and ``fwd_hooks`` (``fn(activation, hook)``) apply before
        capture. ``return_type``/``loss_per_token`` as for ``model(...)``; ``return_logits=False`` is
        ``return_type=None`` and skips the blocks after the deepest captured hook. ``remove_batch_dim=True``
        drops the batch axis of a one-sequence cache.
        """
        if names is None:
            names = names_filter
        capture = (lambda n: True) if names is None else tl.expand_names(names, self.n_layers, stop_at_layer)
        hooks = Hooks(capture=capture, edits=self._edits(edits, fwd_hooks), splices=splices)
        out, cache = self._forward(tokens, hooks, return_type if return_logits else None, loss_per_token,
                                   attention_mask, positions, stop_at_layer, prepend_bos, padding_side)
        cache = cache.with_model(self)
        return out, (cache.remove_batch_dim() if remove_batch_dim else cache)

    def run_with_hooks(
        self, tokens, edits: Sequence = (), *, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (),
        splices: Sequence = (), attention_mask=None, positions=None, stop_at_layer=None,
        return_type: str | None = "logits", loss_per_token: bool = False, reset_hooks_end: bool = True,
        prepend_bos: bool | None = None, padding_side: str = "right",
    ):
        """Output with edits applied.

        ``edits``: a sequence of ``(name, fn, *params)`` where ``fn(activation, name, *params) -> activation`` is
        pure and ``params`` are traced arrays (new values reuse the compiled program).
        ``fwd_hooks``: TransformerLens's ``[(name or predicate, fn)]`` with ``fn(activation, hook)`` returning the
        new activation (or None to leave it); ``hook.name`` is the hook's name. Arrays are immutable, so a hook
        returns ``act.at[:, :, 3].set(0)`` where PyTorch code assigns in place. A hook runs while the forward pass
        is compiled: storing the activation it sees is refused with an error (capture with ``run_with_cache``).
        Bare short names (``"pattern"``) mean every layer. ``splices``: ``interp.hooks.Splice`` objects that run
        dictionaries inside the model. ``return_type``/``loss_per_token`` as for ``model(...)``.
        """
        if bwd_hooks:
            raise ValueError("bwd_hooks are not supported: take gradients with jax.grad / jax.vjp of a function "
                             "that runs the model with an edit at the hook (gradients flow through edits)")
        if not reset_hooks_end:
            raise ValueError("hooks never outlive a call here; to keep hooks on across calls use "
                             "`with model.hooks(fwd_hooks=...):`")
        out, _ = self._forward(tokens, Hooks(edits=self._edits(edits, fwd_hooks), splices=splices), return_type,
                               loss_per_token, attention_mask, positions, stop_at_layer, prepend_bos, padding_side)
        return out

    def hooks(self, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (), *, edits: Sequence = (),
              reset_hooks_end: bool = True):
        """A context in which calls on this model object (``model(...)``, ``run_with_cache``, ``run_with_hooks``,
        ``test_prompt``) apply these hooks, as TransformerLens's ``with model.hooks(fwd_hooks=[...]):``.

        ``fwd_hooks``: ``[(name or predicate, fn(activation, hook))]``; ``edits``: pure ``(name, fn, *params)``.
        Nested blocks add up (outer hooks run first). The model stays unchanged: the hooks belong to the block,
        and copies of the model (``jax.tree.map``, weight transforms) do not see them; ``model.forward`` is pure
        and never does. Storing a traced activation from a hook is refused on leaving the block at the latest.
        """
        if bwd_hooks:
            raise ValueError("bwd_hooks are not supported: take gradients with jax.grad / jax.vjp through an edit")
        if not reset_hooks_end:
            raise ValueError("the hooks of `with model.hooks(...)` end with the block; keep the block open instead")
        return tl.hooks_context(self, tuple(self._edits(edits, fwd_hooks)))

    def _edits(self, edits: Sequence, fwd_hooks: Sequence) -> tuple:
        return tuple(tl.expand_edits(list(edits), self.n_layers)) + tuple(tl.tl_edits(fwd_hooks, self.n_layers))

    def _context_edits(self) -> tuple:
        """The edits ``(name, fn, *params)`` of every ``with model.hooks(...)`` block active for this model,
        outermost first (empty outside any block)."""
        return tl.context_edits(self)

    def _with_context_edits(self, hooks: Hooks | None) -> Hooks | None:
        """``hooks`` with the active context edits put first; idempotent (edits already present by identity are
        not added twice), so both the conveniences here and ``Model.run`` may call it."""
        extra = self._context_edits()
        if not extra:
            return hooks
        hooks = hooks or Hooks()
        have = {id(e) for e in hooks.edits}
        missing = tuple(e for e in extra if id(e) not in have)
        return dataclasses.replace(hooks, edits=missing + tuple(hooks.edits)) if missing else hooks

    def _forward(self, tokens, hooks, return_type, loss_per_token, attention_mask, positions, stop_at_layer,
                 prepend_bos, padding_side):
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        needs_loss = return_type in ("loss", "both")
        if needs_loss and stop_at_layer is not None:
            raise ValueError(f"return_type={return_type!r} needs logits, but stop_at_layer returns the residual "
                             "stream; drop one of them")
        if loss_per_token and not needs_loss:
            raise ValueError("loss_per_token=True needs return_type='loss' or 'both'")
        if _is_text(tokens):
            several = not isinstance(tokens, str) and len(tokens) > 1
            if several and attention_mask is None:
                tokens, attention_mask = self.to_tokens(tokens, prepend_bos=prepend_bos, padding_side=padding_side,
                                                        return_mask=True)
            else:
                tokens = self.to_tokens(tokens, prepend_bos=prepend_bos, padding_side=padding_side)
        out, cache = self.run(tokens, self._with_context_edits(hooks), attention_mask=attention_mask,
                              positions=positions, stop_at_layer=stop_at_layer, return_output=return_type is not None)
        tl.check_hook_leaks()
        if not needs_loss:
            return out, cache
        ids = jnp.asarray(tokens, jnp.int32)
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.shape[1] < 2:
            raise ValueError("the loss predicts each next token, so it needs at least two tokens; got one")
        mask = None if attention_mask is None else jnp.asarray(attention_mask).reshape(ids.shape)
        loss = tl.next_token_loss(out, ids, mask, per_token=loss_per_token)
        return (loss if return_type == "loss" else (out, loss)), cache

    def test_prompt(self, prompt: str, answer: str | Sequence[str], prepend_space_to_answer: bool = True,
                    print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10) -> tl.PromptTest:
        """Print how the model ranks ``answer`` after ``prompt``, as TransformerLens's ``test_prompt``: the tokens,
        then per answer token its rank (0 = top), logit and probability and the ``top_k`` tokens, then the ranks.

        ``answer``: a string (every one of its tokens is scored, each after the ones before it), or a list of
        strings compared as alternatives for the next token. A space is put before an answer that lacks one unless
        ``prepend_space_to_answer=False``. Returns a :class:`PromptTest` with the printed numbers.
        """
        return tl.prompt_test(self, prompt, answer, prepend_space_to_answer=prepend_space_to_answer,
                              print_details=print_details, prepend_bos=prepend_bos, top_k=top_k)

    # ----------------------------------------------------------------- tokenizer conveniences
    def _tok(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (its checkpoint had none); pass token ids instead of text")
        return self.tokenizer

    def to_tokens(self, text, *, prepend_bos: bool | None = None, padding_side: str = "right",
                  return_mask: bool = False):
        """Token ids ``[batch, pos]`` for a string or a list of strings, padded with the pad token at
        ``padding_side``; with ``return_mask=True`` also the attention mask (1 = real token)."""
        return self._tok().to_tokens(text, prepend_bos=prepend_bos, padding_side=padding_side, return_mask=return_mask)

    def to_string(self, ids) -> str | list[str]:
        """Text of ``ids``: a string for ``[pos]``, a list of strings for ``[batch, pos]``."""
        return self._tok().to_string(ids)

    def to_str_tokens(self, text_or_ids, *, prepend_bos: bool | None = None, attention_mask=None):
        """Each token as its text. A string or ``[pos]``/``[1, pos]`` ids give one list; a list of strings or
        ``[batch, pos]`` ids give one list per row. Rows of ids keep their pad tokens (a pad id cannot be told
        from the same id used as a real token); pass the ``attention_mask`` from ``to_tokens(...,
        return_mask=True)`` to drop them."""
        return self._tok().to_str_tokens(text_or_ids, prepend_bos=prepend_bos, attention_mask=attention_mask)

    def to_single_token(self, text: str) -> int:
        """The id of ``text``, which must be exactly one token (no BOS)."""
        return self._tok().to_single_token(text)

    def tokens_to_residual_directions(self, tokens) -> Float[Array, "... D"]:
        """The unembedding column of each token (``W_U[:, tokens]``, moved to ``[..., d_model]``): the direction
        the final residual stream, after the final norm, is read along for that token's logit."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        return jnp.moveaxis(self.W_U[:, jnp.asarray(tokens)], 0, -1)

    # ----------------------------------------------------------------- config and stacked weights
    @property
    def cfg(self) -> tl.ModelCfg:
        """TransformerLens's config names (``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
        ``d_vocab``, ``n_ctx``, ...); other attributes come from ``model.config``."""
        return tl.model_cfg(self)

    def _stack(self, get) -> Array:
        return jnp.stack([get(block) for block in self.blocks])

    def _kv(self, w, axis: int):
        """Key/value heads repeated to the query heads (query head h reads kv head h // (H/K))."""
        H, K = self.blocks[0].attn.n_heads, w.shape[axis]
        return jnp.repeat(w, H // K, axis=axis)

    def _bias(self, get, shape) -> Array:
        """Stacked bias; zeros for layers without one (as TransformerLens holds them)."""
        return self._stack(lambda b: get(b) if get(b) is not None else jnp.zeros(shape(b), self.W_E.dtype))

    @property
    def W_Q(self) -> Float[Array, "L H D E"]:
        return self._stack(lambda b: b.attn.W_Q.transpose(1, 0, 2))

    @property
    def W_K(self) -> Float[Array, "L H D E"]:
        """Key weights per query head: with grouped-query attention each kv head is repeated for the query heads
        that read it (head h uses kv head ``h // (n_heads / n_kv_heads)``), as TransformerLens does."""
        return self._stack(lambda b: self._kv(b.attn.W_K, 1).transpose(1, 0, 2))

    @property
    def W_V(self) -> Float[Array, "L H D E"]:
        """Value weights per query head, kv heads repeated as for :attr:`W_K`."""
        return self._stack(lambda b: self._kv(b.attn.W_V, 1).transpose(1, 0, 2))

    @property
    def W_O(self) -> Float[Array, "L H E D"]:
        return self._stack(lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> Float[Array, "L H E"]:
        return self._bias(lambda b: b.attn.b_Q, lambda b: b.attn.W_Q.shape[1:])

    @property
    def b_K(self) -> Float[Array, "L H E"]:
        return self._bias(lambda b: None if b.attn.b_K is None else self._kv(b.attn.b_K, 0),
                          lambda b: b.attn.W_Q.shape[1:])

    @property
    def b_V(self) -> Float[Array, "L H E"]:
        return self._bias(lambda b: None if b.attn.b_V is None else self._kv(b.attn.b_V, 0),
                          lambda b: b.attn.W_Q.shape[1:])

    @property
    def b_O(self) -> Float[Array, "L D"]:
        return self._bias(lambda b: b.attn.b_O, lambda b: b.attn.W_O.shape[-1:])

    @property
    def W_in(self) -> Float[Array, "L D F"]:
        """MLP input weights (for gated MLPs the linear branch; the gate is :attr:`W_gate`)."""
        return self._stack(lambda b: b.mlp.W_in)

    @property
    def W_gate(self) -> Float[Array, "L D F"]:
        if not hasattr(self.blocks[0].mlp, "W_gate"):
            raise AttributeError("this model's MLPs are not gated, so it has no W_gate (see W_in)")
        return self._stack(lambda b: b.mlp.W_gate)

    @property
    def W_out(self) -> Float[Array, "L F D"]:
        return self._stack(lambda b: b.mlp.W_out)

    @property
    def b_in(self) -> Float[Array, "L F"]:
        return self._bias(lambda b: b.mlp.b_in, lambda b: b.mlp.W_in.shape[-1:])

    @property
    def b_out(self) -> Float[Array, "L D"]:
        return self._bias(lambda b: b.mlp.b_out, lambda b: b.mlp.W_out.shape[-1:])

    @property
    def W_pos(self) -> Float[Array, "P D"]:
        if self.embed.W_pos is None:
            raise AttributeError("this model has rotary positions, so it has no learned W_pos")
        return self.embed.W_pos

    @property
    def QK(self) -> FactoredMatrix:
        """Each head's ``W_Q @ W_K.T`` ``[L H D D]`` as a :class:`FactoredMatrix` (rotary positions not applied)."""
        return FactoredMatrix(self.W_Q, jnp.swapaxes(self.W_K, -1, -2))

    @property
    def OV(self) -> FactoredMatrix:
        """Each head's ``W_V @ W_O`` ``[L H D D]`` as a :class:`FactoredMatrix`."""
        return FactoredMatrix(self.W_V, self.W_O)


# the public methods defined above: handed out as plain bound methods (see UserAPI.__getattribute__)
_PLAIN_METHODS = frozenset(n for n, v in vars(UserAPI).items() if inspect.isfunction(v) and not n.startswith("_"))
# public methods of a model class that are Python-level entry points (they take hooks, pad to buckets, check
# concrete inputs): called inside a jitted function, never transformed themselves
_PLAIN_ENTRY_POINTS = frozenset({"run", "check_inputs", "hook_shapes", "bucket_length", "position_axes",
                                 "top_next", "generate", "next_token", "init_cache"})
_PLAIN_BY_CLASS: dict[type, frozenset[str]] = {}


def _plain_methods(cls: type) -> frozenset[str]:
    """The methods of ``cls`` handed out as plain bound methods: its private ones (``_name``, not dunders) and
    :data:`_PLAIN_ENTRY_POINTS`."""
    names = _PLAIN_BY_CLASS.get(cls)
    if names is None:
        names = frozenset(
            n for k in cls.__mro__ for n, v in vars(k).items()
            if inspect.isfunction(v) and (n in _PLAIN_ENTRY_POINTS or (n.startswith("_") and not n.startswith("__"))))
        _PLAIN_BY_CLASS[cls] = names
    return names
