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
from interp.models._hf import Fields, Tensors, check_config, rope_scaling, token_ids_to_hf, weight_listings
from interp.models._model import Model

HF_ARCHITECTURES = ("GPTNeoXForCausalLM",)

# config.json "hidden_act" -> the blocks' activation name
_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu",
}


@dataclasses.dataclass(frozen=True)
class NeoXConfig:
    """Configuration of a GPT-NeoX / Pythia model: sizes, partial rotary (``rotary_pct``), parallel or sequential
    residual, rope scaling and LayerNorm epsilon."""

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
        check_config(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp", "max_position"),
                     ("ln_eps", "rope_theta"))
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
    def from_hf(cls, cfg: Mapping, where="config.json") -> NeoXConfig:
        """From a Hugging Face ``config.json`` dict: transformers 5.x ``rope_parameters`` (``rope_theta``,
        ``partial_rotary_factor``) or the older top-level ``rotary_emb_base`` / ``rotary_pct`` / ``rope_scaling``;
        ``where`` names the file in errors."""
        f = Fields(cfg, where)
        rope = f.sub("rope_parameters")
        theta = rope.float("rope_theta", None) or f.float("rope_theta", None) or f.float("rotary_emb_base", 10000.0)
        pct = (rope.float("partial_rotary_factor", None) or f.float("partial_rotary_factor", None)
               or f.float("rotary_pct", 0.25))
        scaling = rope_scaling(f.sub("rope_scaling") if f.raw("rope_scaling") else rope, "GPT-NeoX")
        hf_act = f.str("hidden_act", "gelu")
        if hf_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act '{hf_act}' in {f.where} is not supported by the GPT-NeoX family; "
                f"supported: {', '.join(sorted(_ACTIVATIONS))}"
            )
        d_model, n_heads = f.int("hidden_size"), f.int("num_attention_heads")
        if f.opt_int("head_dim") not in (None, d_model // n_heads):
            raise ValueError(f"head_dim={f.raw('head_dim')} in {f.where} differs from hidden_size / "
                             "num_attention_heads, which GPT-NeoX attention always uses")
        return f.build(
            cls,
            vocab_size=f.int("vocab_size"),
            d_model=d_model,
            n_layers=f.layers("num_hidden_layers"),
            n_heads=n_heads,
            d_mlp=f.int("intermediate_size"),
            rotary_pct=pct,
            rope_theta=theta,
            rope_scaling=scaling,
            ln_eps=f.float("layer_norm_eps", 1e-5),
            act=_ACTIVATIONS[hf_act],
            parallel_residual=f.bool("use_parallel_residual", True),
            attention_bias=f.bool("attention_bias", True),
            tie_embeddings=f.bool("tie_word_embeddings", False),
            max_position=f.int("max_position_embeddings", 2048),
            **f.token_ids(),
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
            **token_ids_to_hf(self),
        }


def from_hf_weights(config: NeoXConfig, get, *, dtype=jnp.float32, tokenizer=None) -> Model:
    """Build the model from Hugging Face tensors; ``get(name) -> np.ndarray`` (torch's ``[out, in]`` layout).

    ``query_key_value`` rows are laid out per head as ``[head][q, k, v][head_dim]``.
    """
    t, (H, E, D, F) = Tensors(get, dtype), (config.n_heads, config.d_head, config.d_model, config.d_mlp)
    bias = config.attention_bias

    def layer_norm(p):
        return LayerNorm(t.weight(f"{p}.weight", (D,)), t.weight(f"{p}.bias", (D,)), config.ln_eps)

    rope = Rope(dim=config.rotary_dim, theta=config.rope_theta, scaling=config.rope_scaling)

    def block(i):
        p = f"gpt_neox.layers.{i}"
        a, m = f"{p}.attention", f"{p}.mlp"
        ln1, ln2 = layer_norm(f"{p}.input_layernorm"), layer_norm(f"{p}.post_attention_layernorm")
        w_qkv = np.asarray(t(f"{a}.query_key_value.weight", (3 * D, D))).reshape(H, 3, E, D)
        b_qkv = np.asarray(t(f"{a}.query_key_value.bias", (3 * D,))).reshape(H, 3, E) if bias else None
        attn = Attention(
            W_Q=t.arr(w_qkv[:, 0].transpose(2, 0, 1)), W_K=t.arr(w_qkv[:, 1].transpose(2, 0, 1)),
            W_V=t.arr(w_qkv[:, 2].transpose(2, 0, 1)), W_O=t.arr(t(f"{a}.dense.weight", (D, D)).T.reshape(H, E, D)),
            b_Q=None if b_qkv is None else t.arr(b_qkv[:, 0]), b_K=None if b_qkv is None else t.arr(b_qkv[:, 1]),
            b_V=None if b_qkv is None else t.arr(b_qkv[:, 2]), b_O=t.weight(f"{a}.dense.bias", (D,)) if bias else None,
            rope=rope, sliding_window=None,
        )
        mlp = MLP(W_in=t.arr(t(f"{m}.dense_h_to_4h.weight", (F, D)).T),
                  W_out=t.arr(t(f"{m}.dense_4h_to_h.weight", (D, F)).T),
                  b_in=t.weight(f"{m}.dense_h_to_4h.bias", (F,)), b_out=t.weight(f"{m}.dense_4h_to_h.bias", (D,)),
                  act=config.act)
        return (ParallelBlock if config.parallel_residual else PreNormBlock)(ln1=ln1, attn=attn, ln2=ln2, mlp=mlp)

    embed = Embed(t.weight("gpt_neox.embed_in.weight", (config.vocab_size, D)))
    ln_final, unembed = layer_norm("gpt_neox.final_layer_norm"), t.unembed(config, "embed_out.weight")
    return Model(embed=embed, blocks=tuple(block(i) for i in range(config.n_layers)), ln_final=ln_final,
                 unembed=unembed, config=config, tokenizer=tokenizer)


hf_weight_shapes, hf_weight_names = weight_listings(from_hf_weights)
# Names some checkpoints hold that carry no weights of the model: a tied head saved anyway, and the causal-mask and
# rotary buffers older transformers versions stored (Pythia's files).
HF_IGNORED = (r"embed_out\.weight",
              r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)")
HF_OPTIONAL_PREFIXES = ()
GGUF_ARCHITECTURES: dict[str, bool] = {}  # GGUF files of GPT-NeoX are not read

Config = NeoXConfig
