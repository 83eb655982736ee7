"""Llama family: Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3 — RMSNorm, rotary, grouped-query attention, SwiGLU.

This file says how those checkpoints map onto the shared blocks; it holds no compute of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from interp.models import _hf
from interp.models._blocks import RMSNorm, Rope
from interp.models._model import Model

HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Configuration of a Llama-layout model (Llama, SmolLM2, Mistral, Qwen2/3): sizes, rotary settings, norm
    epsilon, biases, tied embeddings and optional QK-norm and sliding layers; read from a checkpoint's config.json or
    GGUF metadata, or made by a named constructor such as ``LlamaConfig.smollm2_135m()``."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    head_dim: int | None = None
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None  # layers that use sliding_window; None: all of them
    qk_norm: bool = False  # RMSNorm of each query and key head before rotary (Qwen3)
    act: str = "silu"
    max_position: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        _hf.check_config(self, ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_mlp", "head_dim",
                            "sliding_window", "max_position"), ("rms_eps", "rope_theta"))
        _hf.check_layout(self)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim")

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @classmethod
    def smollm2_135m(cls) -> LlamaConfig:
        """SmolLM2-135M(-Instruct)."""
        return cls(
            vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_mlp=1536, head_dim=64,
            rms_eps=1e-5, rope_theta=100000.0, tie_embeddings=True, max_position=8192,
            bos_token_id=1, eos_token_id=2, pad_token_id=2,
        )

    @classmethod
    def from_hf(cls, cfg: Mapping, where="config.json") -> LlamaConfig:
        """From a Hugging Face ``config.json`` dict (transformers 4.x ``rope_scaling`` or 5.x ``rope_parameters``);
        ``where`` names the file in errors."""
        f = _hf.Fields(cfg, where)
        arch = (f.str_list("architectures") or [None])[0]
        rope = f.sub("rope_parameters")
        theta = rope.float("rope_theta", None) or f.float("rope_theta", 10000.0)
        params = f.sub("rope_scaling") if f.raw("rope_scaling") else rope
        scaling = _hf.rope_scaling(params, "Llama", ("linear", "llama3"))
        qwen = arch == "Qwen2ForCausalLM" or f.raw("model_type") == "qwen2"
        qwen3 = arch == "Qwen3ForCausalLM" or f.raw("model_type") == "qwen3"
        n_layers = f.layers("num_hidden_layers")
        use_window = not (qwen or qwen3) or f.bool("use_sliding_window", False)
        window, sliding_layers = f.opt_int("sliding_window") if use_window else None, None
        if use_window and (qwen or qwen3):  # windowed layers: those layer_types names, else from max_window_layers on
            first_windowed = f.int("max_window_layers", 28, min=0)
            types = f.str_list("layer_types", n_layers) or [
                "sliding_attention" if i >= first_windowed else "full_attention" for i in range(n_layers)
            ]
            sliding_layers = tuple(t == "sliding_attention" for t in types)
        hidden_act = f.str("hidden_act", "silu")
        if hidden_act not in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"hidden_act '{hidden_act}' in {f.where} is not supported by the Llama family")
        return f.build(
            cls,
            **_hf.hf_layout_fields(f, n_layers),
            head_dim=f.opt_int("head_dim"),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_embeddings=f.bool("tie_word_embeddings", False),
            qkv_bias=True if qwen else f.bool("attention_bias", False),
            o_bias=False if qwen else f.bool("attention_bias", False),
            mlp_bias=f.bool("mlp_bias", False),
            sliding_window=window,
            sliding_layers=sliding_layers,
            qk_norm=qwen3,
            act={"gelu_pytorch_tanh": "gelu_tanh"}.get(hidden_act, hidden_act),
            max_position=f.int("max_position_embeddings", 4096),
        )

    def to_hf(self) -> dict:
        """A ``config.json`` dict that ``transformers`` reads as this model: ``LlamaForCausalLM``, or the Qwen2, Qwen3
        or Mistral architecture when the config holds what only that one can express."""
        arch, model_type = ("Qwen3ForCausalLM", "qwen3") if self.qk_norm else ("LlamaForCausalLM", "llama")
        cfg = {**_hf.layout_to_hf(self, arch, model_type), "attention_bias": self.qkv_bias, "mlp_bias": self.mlp_bias,
               "hidden_act": {"gelu_tanh": "gelu_pytorch_tanh"}.get(self.act, self.act)}
        if self.rope_scaling is not None:
            kind, factor, *rest = self.rope_scaling
            scaling = {"rope_type": kind, "factor": factor}
            if kind == "llama3":
                scaling.update(zip(("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), rest))
            cfg["rope_scaling"] = scaling
        window = self.sliding_window
        # What Llama's fields cannot say is said by the architecture that has it: Qwen2's query/key/value-only
        # biases, the windowed layers of Qwen2/3, Mistral's sliding window.
        if self.qk_norm or (self.qkv_bias and not self.o_bias):
            if not self.qk_norm:
                cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
                cfg.pop("attention_bias", None)
            if window is not None:
                layers = self.sliding_layers or (True,) * self.n_layers
                cfg.update(use_sliding_window=True, sliding_window=window, max_window_layers=self.n_layers,
                           layer_types=["sliding_attention" if s else "full_attention" for s in layers])
        elif window is not None and (self.sliding_layers is None or all(self.sliding_layers)):
            cfg.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=window)
        return cfg


def from_hf_weights(config: LlamaConfig, get, *, dtype=jnp.float32, tokenizer=None) -> Model:
    """Build the model from Hugging Face tensors; ``get(name) -> np.ndarray`` (torch's ``[out, in]`` layout)."""
    t = _hf.Tensors(get, dtype)
    rope = Rope(dim=config.d_head, theta=config.rope_theta, scaling=config.rope_scaling)

    def norm(name, size):
        return RMSNorm(t.weight(name, (size,)), config.rms_eps)

    def attn_kw(i):
        sliding = config.sliding_layers is None or config.sliding_layers[i]
        return dict(rope=rope, sliding_window=config.sliding_window if sliding else None)

    return _hf.llama_layout_model(t, config, norm=norm, attn_kw=attn_kw, qkv_bias=config.qkv_bias,
                                  o_bias=config.o_bias, mlp_bias=config.mlp_bias, tokenizer=tokenizer)


hf_weight_shapes, hf_weight_names = _hf.weight_listings(from_hf_weights)
HF_IGNORED = _hf.LLAMA_LAYOUT_IGNORED
HF_OPTIONAL_PREFIXES = ()

# GGUF architectures of this family and whether llama.cpp permuted their Q/K rows.
GGUF_ARCHITECTURES = {"llama": True, "mistral": True, "qwen2": False}
GGUF_NAMES = _hf.LLAMA_LAYOUT_GGUF_NAMES
GGUF_BLOCK_NAMES = {
    **_hf.LLAMA_LAYOUT_GGUF_BLOCK_NAMES,
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **{f"attn_{x}.bias": f"self_attn.{x}_proj.bias" for x in "qkv"},
}


def config_from_gguf(arch: str, meta: Mapping) -> LlamaConfig:
    """LlamaConfig from GGUF metadata (``{arch}.block_count`` etc.)."""
    g, root = _hf.gguf_fields(meta, arch)
    common = _hf.gguf_layout_fields(g, root, meta)
    head_dim = (g.opt_int("attention.key_length") or g.opt_int("rope.dimension_count")
                or common["d_model"] // common["n_heads"])
    return g.build(
        LlamaConfig, **common, head_dim=head_dim, rms_eps=g.float("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=g.float("rope.freq_base", 10000.0), qkv_bias=arch == "qwen2",
        max_position=g.int("context_length", 4096),
    )


def gguf_to_hf(config: LlamaConfig, tensors: dict[str, np.ndarray]) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """As they are: a Llama GGUF file's tensors follow Hugging Face's convention once the Q/K rows are unpermuted."""
    return config, tensors


Config = LlamaConfig
