"""Model families over shared blocks, and the registries that map checkpoints onto them."""

from interp.models import gemma, gpt2, llama, neox, transforms
from interp.models._blocks import (
    MLP,
    Attention,
    AttnOnlyBlock,
    Embed,
    GatedMLP,
    LayerNorm,
    NoNorm,
    PreNormBlock,
    RMSNorm,
    Rope,
    activation,
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
from interp.models.family import Family, FamilyConfig, GGUFFamily
from interp.models.llama import LlamaConfig

# the registered family modules; each satisfies Family (and GGUFFamily where it reads GGUF files)
FAMILIES: tuple[Family, ...] = (llama, gpt2, neox, gemma)
# config.json "architectures" entry -> family module
HF_FAMILIES: dict[str, Family] = {arch: family for family in FAMILIES for arch in family.HF_ARCHITECTURES}
# GGUF "general.architecture" -> family module
GGUF_FAMILIES: dict[str, GGUFFamily] = {arch: family for family in FAMILIES for arch in family.GGUF_ARCHITECTURES}

__all__ = [
    "DEFAULT_BUCKETS",
    "FAMILIES",
    "GGUF_FAMILIES",
    "GGUFFamily",
    "HF_FAMILIES",
    "MLP",
    "Attention",
    "AttnOnlyBlock",
    "Embed",
    "FactoredMatrix",
    "Family",
    "FamilyConfig",
    "GatedMLP",
    "LayerNorm",
    "NoNorm",
    "LlamaConfig",
    "Model",
    "PreNormBlock",
    "RMSNorm",
    "Rope",
    "activation",
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
