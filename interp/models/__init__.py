"""Model families over shared blocks, and the registries that map checkpoints onto them."""

from interp.models import gemma, gpt2, llama, neox, transforms
from interp.models._blocks import (
    Attention,
    Embed,
    GatedMLP,
    PreNormBlock,
    RMSNorm,
    Rope,
)
from interp.models._buckets import (
    DEFAULT_BUCKETS,
    bucket_length,
    length_buckets,
    pad_positions,
    set_length_buckets,
    slice_positions,
)
from interp.models._model import Model, attention_inputs, check_tokens, to_device
from interp.models.factored import FactoredMatrix
from interp.models.llama import LlamaConfig

# config.json "architectures" entry -> family module
HF_FAMILIES = {arch: family for family in (llama, gpt2, neox, gemma) for arch in family.HF_ARCHITECTURES}
# GGUF "general.architecture" -> family module
GGUF_FAMILIES = {arch: family for family in (llama, gemma) for arch in family.GGUF_ARCHITECTURES}

__all__ = [
    "DEFAULT_BUCKETS",
    "GGUF_FAMILIES",
    "HF_FAMILIES",
    "Attention",
    "Embed",
    "FactoredMatrix",
    "GatedMLP",
    "LlamaConfig",
    "Model",
    "PreNormBlock",
    "RMSNorm",
    "Rope",
    "attention_inputs",
    "bucket_length",
    "check_tokens",
    "gemma",
    "gpt2",
    "length_buckets",
    "llama",
    "neox",
    "pad_positions",
    "set_length_buckets",
    "slice_positions",
    "to_device",
    "transforms",
]
