"""GPT-2 family (``GPT2LMHeadModel``): learned positions, LayerNorm, fused QKV with biases, GELU MLP, tied unembedding.

This file says how those checkpoints map onto the shared blocks; it holds no compute of its own.
Hugging Face stores GPT-2's linear layers as ``Conv1D`` with weights ``[in, out]``, already the layout the blocks use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp

from interp.models._blocks import MLP, Attention, Embed, LayerNorm, PreNormBlock
from interp.models._hf import Fields, Tensors, check_config, token_ids_to_hf, weight_listings
from interp.models._model import Model

HF_ARCHITECTURES = ("GPT2LMHeadModel",)

# config.json "activation_function" -> the blocks' activation name
_ACTIVATIONS = {
    "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh", "gelu": "gelu", "gelu_python": "gelu", "relu": "relu", "silu": "silu",
    "swish": "silu",
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Configuration of a GPT-2 model: sizes, learned positions (``n_ctx`` rows), LayerNorm epsilon, activation and
    the attention-scaling options."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    n_ctx: int = 1024
    ln_eps: float = 1e-5
    act: str = "gelu_tanh"
    tie_embeddings: bool = True
    scale_attn_weights: bool = True  # scores times head_dim ** -0.5 (else unscaled)
    scale_by_inverse_layer: bool = False  # scores of layer i further divided by i + 1
    upcast_attn: bool = False  # reorder_and_upcast_attn: scores in float32 (same as ours in float32)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        check_config(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp", "n_ctx"), ("ln_eps",))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def attn_scale(self, layer: int) -> float:
        """The score scale of ``layer``, as ``GPT2Attention`` computes it."""
        scale = self.d_head**-0.5 if self.scale_attn_weights else 1.0
        return scale / float(layer + 1) if self.scale_by_inverse_layer else scale

    @classmethod
    def from_hf(cls, cfg: Mapping, where="config.json") -> GPT2Config:
        """From a Hugging Face ``config.json`` dict (``n_embd``, ``n_layer``, ... or ``hidden_size``, ...); ``where``
        names the file in errors."""
        f = Fields(cfg, where)
        if f.bool("add_cross_attention", False):
            raise ValueError(f"GPT-2 with add_cross_attention=true (an encoder-decoder) in {f.where} is not supported")
        hf_act = f.str("activation_function", "gelu_new")
        if hf_act not in _ACTIVATIONS:
            raise ValueError(
                f"activation_function '{hf_act}' in {f.where} is not supported by the GPT-2 family; "
                f"supported: {', '.join(sorted(_ACTIVATIONS))}"
            )
        d_model = f.int("n_embd", aliases=("hidden_size",))
        return f.build(
            cls,
            vocab_size=f.int("vocab_size"),
            d_model=d_model,
            n_layers=f.layers("n_layer", aliases=("num_hidden_layers",)),
            n_heads=f.int("n_head", aliases=("num_attention_heads",)),
            d_mlp=f.opt_int("n_inner") or 4 * d_model,
            n_ctx=f.int("n_positions", 1024, aliases=("max_position_embeddings",)),
            ln_eps=f.float("layer_norm_epsilon", 1e-5),
            act=_ACTIVATIONS[hf_act],
            tie_embeddings=f.bool("tie_word_embeddings", True),
            scale_attn_weights=f.bool("scale_attn_weights", True),
            scale_by_inverse_layer=f.bool("scale_attn_by_inverse_layer_idx", False),
            upcast_attn=f.bool("reorder_and_upcast_attn", False),
            **f.token_ids(),
        )

    def to_hf(self) -> dict:
        """A ``config.json`` dict that ``transformers`` reads as ``GPT2LMHeadModel``."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_embd": self.d_model,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_inner": self.d_mlp,
            "n_positions": self.n_ctx,
            "layer_norm_epsilon": self.ln_eps,
            "activation_function": {"gelu_tanh": "gelu_new"}.get(self.act, self.act),
            "tie_word_embeddings": self.tie_embeddings,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_by_inverse_layer,
            "reorder_and_upcast_attn": self.upcast_attn,
            **token_ids_to_hf(self),
        }


def from_hf_weights(config: GPT2Config, get, *, dtype=jnp.float32, tokenizer=None) -> Model:
    """Build the model from Hugging Face tensors; ``get(name) -> np.ndarray`` (``Conv1D``'s ``[in, out]`` layout).

    ``get`` may also serve the names without the ``transformer.`` prefix (openai-community/gpt2's own files).
    """
    if config.upcast_attn and jnp.finfo(dtype).bits < 32:
        raise ValueError(
            "this GPT-2 checkpoint sets reorder_and_upcast_attn, which computes attention scores in float32; "
            f"load it with dtype=float32 (got {jnp.dtype(dtype).name})"
        )
    t = Tensors(get, dtype, HF_OPTIONAL_PREFIXES)
    H, E, D, F = config.n_heads, config.d_head, config.d_model, config.d_mlp

    def layer_norm(p):
        return LayerNorm(t.weight(f"{p}.weight", (D,)), t.weight(f"{p}.bias", (D,)), config.ln_eps)

    def block(i):
        p = f"transformer.h.{i}"
        ln1 = layer_norm(f"{p}.ln_1")
        w_qkv, b_qkv = t(f"{p}.attn.c_attn.weight", (D, 3 * D)), t(f"{p}.attn.c_attn.bias", (3 * D,))
        q, k, v = (slice(j * D, (j + 1) * D) for j in range(3))
        attn = Attention(
            W_Q=t.arr(w_qkv[:, q].reshape(D, H, E)), W_K=t.arr(w_qkv[:, k].reshape(D, H, E)),
            W_V=t.arr(w_qkv[:, v].reshape(D, H, E)), W_O=t.arr(t(f"{p}.attn.c_proj.weight", (D, D)).reshape(H, E, D)),
            b_Q=t.arr(b_qkv[q].reshape(H, E)), b_K=t.arr(b_qkv[k].reshape(H, E)), b_V=t.arr(b_qkv[v].reshape(H, E)),
            b_O=t.weight(f"{p}.attn.c_proj.bias", (D,)), rope=None, sliding_window=None, scale=config.attn_scale(i),
        )
        ln2 = layer_norm(f"{p}.ln_2")
        mlp = MLP(W_in=t.weight(f"{p}.mlp.c_fc.weight", (D, F)), W_out=t.weight(f"{p}.mlp.c_proj.weight", (F, D)),
                  b_in=t.weight(f"{p}.mlp.c_fc.bias", (F,)), b_out=t.weight(f"{p}.mlp.c_proj.bias", (D,)),
                  act=config.act)
        return PreNormBlock(ln1=ln1, attn=attn, ln2=ln2, mlp=mlp)

    embed = Embed(t.weight("transformer.wte.weight", (config.vocab_size, D)),
                  W_pos=t.weight("transformer.wpe.weight", (config.n_ctx, D)))
    ln_final, unembed = layer_norm("transformer.ln_f"), t.unembed(config, "lm_head.weight")
    return Model(embed=embed, blocks=tuple(block(i) for i in range(config.n_layers)), ln_final=ln_final,
                 unembed=unembed, config=config, tokenizer=tokenizer)


hf_weight_shapes, hf_weight_names = weight_listings(from_hf_weights)
# Names some checkpoints hold that carry no weights of the model: a tied head saved anyway, and the causal-mask
# buffers older transformers versions stored (openai-community/gpt2's own files, without the prefix).
HF_IGNORED = (r"lm_head\.weight", r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias")
# openai-community/gpt2's own safetensors name the tensors without this prefix
HF_OPTIONAL_PREFIXES = ("transformer.",)
GGUF_ARCHITECTURES: dict[str, bool] = {}  # GGUF files of GPT-2 are not read

Config = GPT2Config
