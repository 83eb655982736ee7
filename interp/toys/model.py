"""Small transformers built from random weights, for training experiments (induction heads, grokking): the same
:class:`interp.models.Model` as a loaded checkpoint, so every hook, cache, edit and detector works on them.

Axis letters: V vocabulary, P positions, D model, H heads, E head dim, F MLP hidden.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from interp.models import MLP, Attention, AttnOnlyBlock, Embed, LayerNorm, Model, NoNorm, PreNormBlock, activation


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A GPT-2-style toy transformer: learned positions (``n_ctx`` of them), LayerNorm before attention and MLP
    (``layer_norm=False``: no norms at all, as in Nanda et al.'s grokking model), ``d_mlp=None`` for an
    attention-only model, an untied unembedding. ``bos_token_id`` (optional) is recorded for the detectors and data
    helpers."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_ctx: int
    d_mlp: int | None = None
    act: str = "relu"
    ln_eps: float = 1e-5
    layer_norm: bool = True
    bos_token_id: int | None = None

    def __post_init__(self):
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_ctx"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ToyConfig.{f} must be a positive int, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.d_mlp is not None and (isinstance(self.d_mlp, bool) or not isinstance(self.d_mlp, int)
                                       or self.d_mlp < 1):
            raise ValueError(f"ToyConfig.d_mlp must be a positive int or None (attention only), got {self.d_mlp!r}")
        activation(self.act)  # raises on an unknown name, listing the known ones
        if self.bos_token_id is not None and not 0 <= self.bos_token_id < self.vocab_size:
            raise ValueError(f"bos_token_id={self.bos_token_id} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    @property
    def name(self) -> str:
        kind = "attention-only" if self.attn_only else "toy"
        return f"{kind} {self.n_layers}L"

    @property
    def max_position(self) -> int:
        return self.n_ctx


def transformer(config: ToyConfig, *, seed: int = 0, dtype=jnp.float32) -> Model:
    """A freshly initialised model of ``config``: every matrix normal with standard deviation ``fan_in ** -0.5``,
    embeddings and positions normal with standard deviation ``d_model ** -0.5``, biases zero, norms the identity."""
    c = config
    D, H, E, V = c.d_model, c.n_heads, c.d_head, c.vocab_size
    keys = iter(jax.random.split(jax.random.key(seed), 4 + 6 * c.n_layers))

    def normal(shape, fan_in):
        return (jax.random.normal(next(keys), shape, jnp.float32) * fan_in**-0.5).astype(dtype)

    def zeros(*shape):
        return jnp.zeros(shape, dtype)

    def norm():
        return LayerNorm(jnp.ones((D,), dtype), zeros(D), c.ln_eps) if c.layer_norm else NoNorm(D)

    def block():
        attn = Attention(W_Q=normal((D, H, E), D), W_K=normal((D, H, E), D), W_V=normal((D, H, E), D),
                         W_O=normal((H, E, D), D), b_Q=zeros(H, E), b_K=zeros(H, E), b_V=zeros(H, E), b_O=zeros(D),
                         rope=None, sliding_window=None)
        if c.attn_only:
            return AttnOnlyBlock(ln1=norm(), attn=attn)
        mlp = MLP(W_in=normal((D, c.d_mlp), D), W_out=normal((c.d_mlp, D), c.d_mlp), b_in=zeros(c.d_mlp),
                  b_out=zeros(D), act=c.act)
        return PreNormBlock(ln1=norm(), attn=attn, ln2=norm(), mlp=mlp)

    embed = Embed(normal((V, D), D), W_pos=normal((c.n_ctx, D), D))
    blocks = tuple(block() for _ in range(c.n_layers))
    return Model(embed=embed, blocks=blocks, ln_final=norm(), unembed=normal((D, V), D), config=c)
