"""GPT-2 family (``GPT2LMHeadModel``): learned positions, LayerNorm, fused QKV with biases, GELU MLP, tied unembedding.

This file says how those checkpoints map onto the shared blocks; it holds no compute of its own.
Hugging Face stores GPT-2's linear layers as ``Conv1D`` with weights ``[in, out]``, already the layout the blocks use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from interp.models._blocks import MLP, Attention, Embed, LayerNorm, PreNormBlock
from interp.models._hf import first
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
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp", "n_ctx"):
            if getattr(self, f) <= 0:
                raise ValueError(f"GPT2Config.{f} must be positive, got {getattr(self, f)}")
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
    def from_hf(cls, cfg: Mapping) -> "GPT2Config":
        """From a Hugging Face ``config.json`` dict (``n_embd``, ``n_layer``, ... or ``hidden_size``, ...)."""
        if cfg.get("add_cross_attention", False):
            raise ValueError("GPT-2 with add_cross_attention=true (an encoder-decoder) is not supported")
        hf_act = cfg.get("activation_function", "gelu_new")
        if hf_act not in _ACTIVATIONS:
            raise ValueError(
                f"activation_function '{hf_act}' in config.json is not supported by the GPT-2 family; "
                f"supported: {', '.join(sorted(_ACTIVATIONS))}"
            )

        def get(name, alias, default=None):
            value = cfg.get(name, cfg.get(alias, default))
            if value is None:
                raise ValueError(f"config.json lacks '{name}' (or '{alias}'), which a GPT-2 checkpoint needs")
            return value

        d_model = get("n_embd", "hidden_size")
        return cls(
            vocab_size=cfg["vocab_size"],
            d_model=d_model,
            n_layers=get("n_layer", "num_hidden_layers"),
            n_heads=get("n_head", "num_attention_heads"),
            d_mlp=cfg.get("n_inner") or 4 * d_model,
            n_ctx=get("n_positions", "max_position_embeddings", 1024),
            ln_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
            act=_ACTIVATIONS[hf_act],
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            scale_attn_weights=bool(cfg.get("scale_attn_weights", True)),
            scale_by_inverse_layer=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
            upcast_attn=bool(cfg.get("reorder_and_upcast_attn", False)),
            bos_token_id=first(cfg.get("bos_token_id")),
            eos_token_id=first(cfg.get("eos_token_id")),
            pad_token_id=first(cfg.get("pad_token_id")),
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
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }


# openai-community/gpt2's own safetensors name the tensors without this prefix
HF_OPTIONAL_PREFIXES = ("transformer.",)


def hf_weight_names(config: GPT2Config) -> list[str]:
    """The tensor names a Hugging Face checkpoint of this config holds (as ``transformers`` saves them)."""
    t = "transformer"
    names = [f"{t}.wte.weight", f"{t}.wpe.weight", f"{t}.ln_f.weight", f"{t}.ln_f.bias"]
    if not config.tie_embeddings:
        names.append("lm_head.weight")
    for i in range(config.n_layers):
        p = f"{t}.h.{i}"
        for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += [f"{p}.{part}.weight", f"{p}.{part}.bias"]
    return names


def from_hf_weights(config: GPT2Config, get, *, dtype=jnp.float32, tokenizer=None) -> Model:
    """Build the model from Hugging Face tensors; ``get(name) -> np.ndarray`` (``Conv1D``'s ``[in, out]`` layout).

    ``get`` may also serve the names without the ``transformer.`` prefix (openai-community/gpt2's own files).
    """
    if config.upcast_attn and jnp.finfo(dtype).bits < 32:
        raise ValueError(
            "this GPT-2 checkpoint sets reorder_and_upcast_attn, which computes attention scores in float32; "
            f"load it with dtype=float32 (got {jnp.dtype(dtype).name})"
        )
    H, E, D, F = config.n_heads, config.d_head, config.d_model, config.d_mlp

    def arr(x):
        return jnp.asarray(np.asarray(x), dtype=dtype)

    def tensor(name):
        try:
            return get(name)
        except KeyError:
            if not name.startswith("transformer."):
                raise
            return get(name[len("transformer."):])

    def layer_norm(p):
        return LayerNorm(arr(tensor(f"{p}.weight")), arr(tensor(f"{p}.bias")), config.ln_eps)

    blocks = []
    for i in range(config.n_layers):
        p = f"transformer.h.{i}"
        w_qkv, b_qkv = tensor(f"{p}.attn.c_attn.weight"), tensor(f"{p}.attn.c_attn.bias")  # [D 3D], [3D]
        attn = Attention(
            W_Q=arr(w_qkv[:, :D].reshape(D, H, E)),
            W_K=arr(w_qkv[:, D:2 * D].reshape(D, H, E)),
            W_V=arr(w_qkv[:, 2 * D:].reshape(D, H, E)),
            W_O=arr(tensor(f"{p}.attn.c_proj.weight").reshape(H, E, D)),
            b_Q=arr(b_qkv[:D].reshape(H, E)),
            b_K=arr(b_qkv[D:2 * D].reshape(H, E)),
            b_V=arr(b_qkv[2 * D:].reshape(H, E)),
            b_O=arr(tensor(f"{p}.attn.c_proj.bias")),
            rope=None,
            sliding_window=None,
            scale=config.attn_scale(i),
        )
        mlp = MLP(
            W_in=arr(tensor(f"{p}.mlp.c_fc.weight")),
            W_out=arr(tensor(f"{p}.mlp.c_proj.weight")),
            b_in=arr(tensor(f"{p}.mlp.c_fc.bias").reshape(F)),
            b_out=arr(tensor(f"{p}.mlp.c_proj.bias").reshape(D)),
            act=config.act,
        )
        blocks.append(PreNormBlock(ln1=layer_norm(f"{p}.ln_1"), attn=attn, ln2=layer_norm(f"{p}.ln_2"), mlp=mlp))
    return Model(
        embed=Embed(arr(tensor("transformer.wte.weight")), W_pos=arr(tensor("transformer.wpe.weight"))),
        blocks=tuple(blocks),
        ln_final=layer_norm("transformer.ln_f"),
        unembed=None if config.tie_embeddings else arr(get("lm_head.weight").T),
        config=config,
        tokenizer=tokenizer,
    )


Config = GPT2Config
