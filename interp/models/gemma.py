"""Gemma family: Gemma 1, Gemma 2 and Gemma 3 (text) — RMSNorm with ``(1 + w)``, GeGLU, scaled and tied embedding.

Gemma 2 and 3 add norms after attention and after the MLP (``ln1_post``, ``ln2_post``) and alternate sliding-window
(local) and global layers; Gemma 2 soft-caps attention scores and final logits; Gemma 3 normalises queries and keys
per head (QK-norm) and gives local layers their own rotary base.

This file says how those checkpoints map onto the shared blocks; it holds no compute of its own. Gemma's norms
compute ``x / rms(x) * (1 + w)`` and its checkpoints store ``w``: ``1 + w`` is folded into the weight at load time
(GGUF files store ``1 + w`` already).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from interp.models import _hf
from interp.models._blocks import RMSNorm, Rope
from interp.models._model import Model

HF_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")

_VERSIONS = {"GemmaForCausalLM": 1, "Gemma2ForCausalLM": 2, "Gemma3ForCausalLM": 3,
             "gemma": 1, "gemma2": 2, "gemma3_text": 3}
_HF_NAMES = {1: ("GemmaForCausalLM", "gemma"), 2: ("Gemma2ForCausalLM", "gemma2"),
             3: ("Gemma3ForCausalLM", "gemma3_text")}
# transformers' activation names -> ours
_ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "silu": "silu", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Configuration of a Gemma 1, 2 or 3 model (``version``): sizes, global and local rotary settings, the sliding
    window, soft-caps, ``query_pre_attn_scalar`` and the family's norm and embedding-scaling options."""

    version: int  # 1, 2 or 3
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    head_dim: int = 256
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0  # global layers (all layers before Gemma 3)
    rope_scaling: tuple | None = None
    rope_local_theta: float | None = None  # sliding-window layers of Gemma 3; None: as the global layers
    rope_local_scaling: tuple | None = None
    sliding_window: int | None = None  # a local layer's query sees itself and the sliding_window - 1 keys before it
    sliding_layers: tuple[bool, ...] | None = None  # which layers are local; None: none
    query_pre_attn_scalar: float | None = None  # scores are scaled by its -1/2 power; None: head_dim
    attn_softcap: float | None = None
    final_softcap: float | None = None
    attention_bias: bool = False
    act: str = "gelu_tanh"
    tie_embeddings: bool = True
    norm_offset: float = 1.0  # added to stored norm weights: 1 for Hugging Face checkpoints, 0 for GGUF files
    max_position: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.version not in (1, 2, 3):
            raise ValueError(f"GemmaConfig.version must be 1, 2 or 3, got {self.version}")
        _hf.check_config(self, ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_mlp", "head_dim",
                            "sliding_window", "max_position"),
                     ("rms_eps", "rope_theta", "rope_local_theta", "query_pre_attn_scalar", "attn_softcap",
                      "final_softcap"))
        _hf.check_layout(self)

    @property
    def d_head(self) -> int:
        return self.head_dim

    @property
    def post_norms(self) -> bool:
        """Norms after attention and after the MLP (Gemma 2 and 3)."""
        return self.version >= 2

    @property
    def qk_norm(self) -> bool:
        return self.version == 3

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_window is not None and self.sliding_layers is not None and self.sliding_layers[layer]

    @classmethod
    def from_hf(cls, cfg: Mapping, where="config.json") -> GemmaConfig:
        """From a Hugging Face ``config.json`` dict (``GemmaConfig``, ``Gemma2Config`` or ``Gemma3TextConfig``;
        transformers 4.x ``rope_theta``/``rope_scaling``/``rope_local_base_freq`` or 5.x ``rope_parameters``);
        ``where`` names the file in errors."""
        f = _hf.Fields(cfg, where)
        arch = (f.str_list("architectures") or [None])[0]
        version = _VERSIONS.get(arch) or _VERSIONS.get(f.str("model_type", None))
        if version is None:
            raise ValueError(f"{f.where} names {arch or f.raw('model_type')!r}, which is not a Gemma text model")
        if f.raw("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention (embedding models) is not supported: this is a causal LM")
        n_layers = f.layers("num_hidden_layers")
        rope = f.sub("rope_parameters")
        if version == 3:
            full, local = rope.sub("full_attention"), rope.sub("sliding_attention")
            theta = full.float("rope_theta", None) or f.float("rope_theta", 1_000_000.0)
            local_theta = local.float("rope_theta", None) or f.float("rope_local_base_freq", 10_000.0)
            if not full.cfg and f.raw("rope_scaling"):
                full = f.sub("rope_scaling")
            scaling, local_scaling = _hf.rope_scaling(full, "Gemma"), _hf.rope_scaling(local, "Gemma")
        else:
            params = rope if rope.cfg else f.sub("rope_scaling")
            theta = params.float("rope_theta", None) or f.float("rope_theta", 10_000.0)
            scaling, local_theta, local_scaling = _hf.rope_scaling(params, "Gemma"), None, None

        window, sliding = None, None
        if version >= 2:
            window = f.opt_int("sliding_window", 4096)
            pattern = 2 if version == 2 else f.int("sliding_window_pattern", f.int("_sliding_window_pattern", 6))
            types = f.str_list("layer_types", n_layers) or [
                "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)
            ]
            sliding = tuple(t == "sliding_attention" for t in types)
        if version == 1:  # transformers reads hidden_act here and takes a plain "gelu" to mean the tanh form
            act_name = f.str("hidden_act", "gelu_pytorch_tanh")
            act_name = "gelu_pytorch_tanh" if act_name == "gelu" else act_name
        else:
            act_name = f.str("hidden_activation", "gelu_pytorch_tanh")
        if act_name not in _ACTS:
            raise ValueError(
                f"activation '{act_name}' in {f.where} is not supported by the Gemma family; supported: {sorted(_ACTS)}"
            )
        return f.build(
            cls,
            version=version,
            **_hf.hf_layout_fields(f, n_layers),
            head_dim=f.int("head_dim", 256),
            rope_theta=theta,
            rope_scaling=scaling,
            rope_local_theta=local_theta,
            rope_local_scaling=local_scaling,
            sliding_window=window,
            sliding_layers=sliding,
            query_pre_attn_scalar=f.opt_float("query_pre_attn_scalar", 256) if version >= 2 else None,
            # transformers soft-caps attention scores in Gemma 2 only (its Gemma 3 ignores the setting)
            attn_softcap=f.opt_float("attn_logit_softcapping", 50.0) if version == 2 else None,
            final_softcap=(f.opt_float("final_logit_softcapping", 30.0 if version == 2 else None)
                           if version >= 2 else None),
            attention_bias=f.bool("attention_bias", False),
            act=_ACTS[act_name],
            tie_embeddings=f.bool("tie_word_embeddings", True),
            max_position=f.int("max_position_embeddings", 8192),
        )

    def to_hf(self) -> dict:
        """A ``config.json`` dict that ``transformers`` reads as this model (norm weights stored as ``w``)."""
        if self.norm_offset != 1.0:
            raise ValueError("to_hf describes checkpoints that store w of (1 + w) norms; see gguf_to_hf")
        arch, model_type = _HF_NAMES[self.version]
        act = {"gelu_tanh": "gelu_pytorch_tanh"}.get(self.act, self.act)
        cfg = {**_hf.layout_to_hf(self, arch, model_type), "attention_bias": self.attention_bias}
        if self.rope_scaling is not None:
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": self.rope_scaling[1]}
        if self.version == 1:
            cfg["hidden_act"] = act
            return cfg
        cfg.update(
            hidden_activation=act,
            query_pre_attn_scalar=self.query_pre_attn_scalar,
            sliding_window=self.sliding_window,
            layer_types=["sliding_attention" if s else "full_attention" for s in self.sliding_layers],
            attn_logit_softcapping=self.attn_softcap,
            final_logit_softcapping=self.final_softcap,
        )
        if self.version == 3:
            local = self.rope_local_theta
            cfg["rope_local_base_freq"] = self.rope_theta if local is None else local
        return cfg


def from_hf_weights(config: GemmaConfig, get, *, dtype=jnp.float32, tokenizer=None) -> Model:
    """Build the model from Hugging Face tensors; ``get(name) -> np.ndarray`` (torch's ``[out, in]`` layout)."""
    if jnp.dtype(dtype) == jnp.float16:
        warnings.warn(
            "trained Gemma checkpoints carry residual-stream values past float16's largest (65504; Gemma 3 270M "
            "reaches about 1e5), which become inf and turn the logits to NaN (transformers adds the stream in "
            "float16 too); load Gemma with dtype=jnp.bfloat16 (same memory, float32's range) or float32", stacklevel=4)
    t, offset = _hf.Tensors(get, dtype), np.float32(config.norm_offset)

    def norm(name, size):  # (1 + w) folded into the weight and kept float32 whatever the dtype, as the reference
        return RMSNorm(t.weight(name, (size,), lambda w: np.asarray(w, np.float32) + offset, jnp.float32),
                       config.rms_eps)

    global_rope = Rope(dim=config.d_head, theta=config.rope_theta, scaling=config.rope_scaling)
    local_rope = global_rope if config.rope_local_theta is None else Rope(
        dim=config.d_head, theta=config.rope_local_theta, scaling=config.rope_local_scaling
    )
    scale = None if config.query_pre_attn_scalar is None else float(config.query_pre_attn_scalar) ** -0.5

    def attn_kw(i):
        sliding = config.is_sliding(i)
        return dict(rope=local_rope if sliding else global_rope, sliding_window=config.sliding_window if sliding
                    else None, scale=scale, softcap=config.attn_softcap)

    # transformers multiplies the embedding by hidden_size ** 0.5 cast to the activation dtype, as Embed does
    return _hf.llama_layout_model(t, config, norm=norm, attn_kw=attn_kw, qkv_bias=config.attention_bias,
                              o_bias=config.attention_bias, post_norms=config.post_norms,
                              embed_scale=config.d_model**0.5, tokenizer=tokenizer, logit_softcap=config.final_softcap)


hf_weight_shapes, hf_weight_names = _hf.weight_listings(from_hf_weights)
HF_IGNORED = _hf.LLAMA_LAYOUT_IGNORED
HF_OPTIONAL_PREFIXES = ()

# GGUF architectures of this family and whether llama.cpp permuted their Q/K rows (not for Gemma).
GGUF_ARCHITECTURES = {"gemma3": False}
GGUF_NAMES = _hf.LLAMA_LAYOUT_GGUF_NAMES
GGUF_BLOCK_NAMES = {  # Gemma 3
    **_hf.LLAMA_LAYOUT_GGUF_BLOCK_NAMES,
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}

# What llama.cpp fixes for Gemma 3 rather than writing to the file: every sixth layer is global, local layers
# rotate with base 10000, and queries are scaled by head_dim ** -0.5 except in the 27B model (62 layers), which
# uses (d_model / n_heads) ** -0.5.
_GEMMA3_PATTERN, _GEMMA3_LOCAL_THETA, _GEMMA3_27B_LAYERS = 6, 10_000.0, 62


def config_from_gguf(arch: str, meta: Mapping) -> GemmaConfig:
    """GemmaConfig from GGUF metadata (``gemma3.block_count`` etc.). Norm weights in GGUF are ``1 + w``."""
    g, root = _hf.gguf_fields(meta, arch)
    common = _hf.gguf_layout_fields(g, root, meta)
    d_model, n_heads, n_layers = common["d_model"], common["n_heads"], common["n_layers"]
    head_dim = g.int("attention.key_length", d_model // n_heads)
    return g.build(
        GemmaConfig, version=3, **common, head_dim=head_dim, rms_eps=g.float("attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=g.float("rope.freq_base", 1_000_000.0), rope_local_theta=_GEMMA3_LOCAL_THETA,
        sliding_window=g.opt_int("attention.sliding_window"),
        sliding_layers=tuple(bool((i + 1) % _GEMMA3_PATTERN) for i in range(n_layers)),
        query_pre_attn_scalar=d_model // n_heads if n_layers == _GEMMA3_27B_LAYERS else head_dim,
        norm_offset=0.0, max_position=g.int("context_length", 8192),
    )


def gguf_to_hf(config: GemmaConfig, tensors: dict[str, np.ndarray]) -> tuple[GemmaConfig, dict[str, np.ndarray]]:
    """A GGUF model's config and tensors in Hugging Face's convention (norm weights ``w`` of ``1 + w``), as a
    checkpoint folder stores them."""
    shift = np.float32(1.0 - config.norm_offset)
    out = {k: (v - shift if k.endswith("norm.weight") else v) for k, v in tensors.items()}
    return dataclasses.replace(config, norm_offset=1.0), out


Config = GemmaConfig
