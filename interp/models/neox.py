"""GPT-NeoX family (``GPTNeoXForCausalLM``): Pythia, GPT-NeoX-20B — LayerNorm, partial rotary, fused QKV,
parallel (or sequential) residual, GELU MLP, untied unembedding.

This file says how those checkpoints map onto the shared blocks; it holds no compute of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from interp.models._blocks import MLP, Attention, Embed, LayerNorm, ParallelBlock, PreNormBlock, Rope
from interp.models._hf import first, rope_scaling
from interp.models._model import Model

HF_ARCHITECTURES = ("GPTNeoXForCausalLM",)

# config.json "hidden_act" -> the blocks' activation name
_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu",
}


@dataclasses.dataclass(frozen=True)
class NeoXConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    rotary_pct: float = 0.25  # fraction of each head's features that rotary rotates (the first ones)
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    ln_eps: float = 1e-5
    act: str = "gelu"
    parallel_residual: bool = True
    attention_bias: bool = True
    tie_embeddings: bool = False
    max_position: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp"):
            if getattr(self, f) <= 0:
                raise ValueError(f"NeoXConfig.{f} must be positive, got {getattr(self, f)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must lie in (0, 1], got {self.rotary_pct}")
        if self.rotary_dim % 2:
            raise ValueError(
                f"rotary_pct={self.rotary_pct} of head dim {self.d_head} gives an odd rotary dim {self.rotary_dim}"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.d_head * self.rotary_pct)  # truncated, as transformers does

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "NeoXConfig":
        """From a Hugging Face ``config.json`` dict: transformers 5.x ``rope_parameters`` (``rope_theta``,
        ``partial_rotary_factor``) or the older top-level ``rotary_emb_base`` / ``rotary_pct`` / ``rope_scaling``."""
        rope = dict(cfg.get("rope_parameters") or {})
        scaling_src = cfg.get("rope_scaling") or rope
        theta = rope.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
        pct = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", cfg.get("rotary_pct", 0.25)))
        scaling = rope_scaling(scaling_src, "GPT-NeoX")
        hf_act = cfg.get("hidden_act", "gelu")
        if hf_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act '{hf_act}' in config.json is not supported by the GPT-NeoX family; "
                f"supported: {', '.join(sorted(_ACTIVATIONS))}"
            )
        if cfg.get("head_dim") not in (None, cfg["hidden_size"] // cfg["num_attention_heads"]):
            raise ValueError(f"head_dim={cfg['head_dim']} in config.json differs from hidden_size / "
                             "num_attention_heads, which GPT-NeoX attention always uses")
        return cls(
            vocab_size=cfg["vocab_size"],
            d_model=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            d_mlp=cfg["intermediate_size"],
            rotary_pct=float(pct),
            rope_theta=float(theta),
            rope_scaling=scaling,
            ln_eps=float(cfg.get("layer_norm_eps", 1e-5)),
            act=_ACTIVATIONS[hf_act],
            parallel_residual=bool(cfg.get("use_parallel_residual", True)),
            attention_bias=bool(cfg.get("attention_bias", True)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position=cfg.get("max_position_embeddings", 2048),
            bos_token_id=first(cfg.get("bos_token_id")),
            eos_token_id=first(cfg.get("eos_token_id")),
            pad_token_id=first(cfg.get("pad_token_id")),
        )

    def to_hf(self) -> dict:
        """A ``config.json`` dict that ``transformers`` reads as ``GPTNeoXForCausalLM``."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta, "partial_rotary_factor": self.rotary_pct}
        if self.rope_scaling is not None:
            rope.update(rope_type=self.rope_scaling[0], factor=self.rope_scaling[1])
        return {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_mlp,
            "rope_parameters": rope,
            "layer_norm_eps": self.ln_eps,
            "hidden_act": {"gelu_tanh": "gelu_new"}.get(self.act, self.act),
            "use_parallel_residual": self.parallel_residual,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }


def hf_weight_names(config: NeoXConfig) -> list[str]:
    """The tensor names a Hugging Face checkpoint of this config holds."""
    names = ["gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias"]
    if not config.tie_embeddings:
        names.append("embed_out.weight")
    for i in range(config.n_layers):
        p = f"gpt_neox.layers.{i}"
        for part in ("input_layernorm", "post_attention_layernorm", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
            names += [f"{p}.{part}.weight", f"{p}.{part}.bias"]
        names += [f"{p}.attention.query_key_value.weight", f"{p}.attention.dense.weight"]
        if config.attention_bias:
            names += [f"{p}.attention.query_key_value.bias", f"{p}.attention.dense.bias"]
    return names


def from_hf_weights(config: NeoXConfig, get, *, dtype=jnp.float32, tokenizer=None) -> Model:
    """Build the model from Hugging Face tensors; ``get(name) -> np.ndarray`` (torch's ``[out, in]`` layout).

    ``query_key_value`` rows are laid out per head as ``[head][q, k, v][head_dim]``.
    """
    H, E, D, F = config.n_heads, config.d_head, config.d_model, config.d_mlp

    def arr(x):
        return jnp.asarray(np.asarray(x), dtype=dtype)

    def layer_norm(p):
        return LayerNorm(arr(get(f"{p}.weight")), arr(get(f"{p}.bias")), config.ln_eps)

    rope = Rope(dim=config.rotary_dim, theta=config.rope_theta, scaling=config.rope_scaling)
    block_cls = ParallelBlock if config.parallel_residual else PreNormBlock
    blocks = []
    for i in range(config.n_layers):
        p = f"gpt_neox.layers.{i}"
        a, m = f"{p}.attention", f"{p}.mlp"
        w_qkv = np.asarray(get(f"{a}.query_key_value.weight")).reshape(H, 3, E, D)
        b_qkv = np.asarray(get(f"{a}.query_key_value.bias")).reshape(H, 3, E) if config.attention_bias else None
        attn = Attention(
            W_Q=arr(w_qkv[:, 0].transpose(2, 0, 1)),
            W_K=arr(w_qkv[:, 1].transpose(2, 0, 1)),
            W_V=arr(w_qkv[:, 2].transpose(2, 0, 1)),
            W_O=arr(get(f"{a}.dense.weight").T.reshape(H, E, D)),
            b_Q=None if b_qkv is None else arr(b_qkv[:, 0]),
            b_K=None if b_qkv is None else arr(b_qkv[:, 1]),
            b_V=None if b_qkv is None else arr(b_qkv[:, 2]),
            b_O=arr(get(f"{a}.dense.bias")) if config.attention_bias else None,
            rope=rope,
            sliding_window=None,
        )
        mlp = MLP(
            W_in=arr(get(f"{m}.dense_h_to_4h.weight").T),
            W_out=arr(get(f"{m}.dense_4h_to_h.weight").T),
            b_in=arr(get(f"{m}.dense_h_to_4h.bias").reshape(F)),
            b_out=arr(get(f"{m}.dense_4h_to_h.bias").reshape(D)),
            act=config.act,
        )
        blocks.append(block_cls(ln1=layer_norm(f"{p}.input_layernorm"), attn=attn,
                                ln2=layer_norm(f"{p}.post_attention_layernorm"), mlp=mlp))
    return Model(
        embed=Embed(arr(get("gpt_neox.embed_in.weight"))),
        blocks=tuple(blocks),
        ln_final=layer_norm("gpt_neox.final_layer_norm"),
        unembed=None if config.tie_embeddings else arr(get("embed_out.weight").T),
        config=config,
        tokenizer=tokenizer,
    )


Config = NeoXConfig
