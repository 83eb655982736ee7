"""What a model family module defines: the names the checkpoint loaders (``interp.weights``) and the registries
(:data:`interp.models.HF_FAMILIES`, :data:`interp.models.GGUF_FAMILIES`) rely on.

A family module (``llama``, ``gpt2``, ``neox``, ``gemma``) satisfies :class:`Family`; one that also reads GGUF files
(a non-empty ``GGUF_ARCHITECTURES``) satisfies :class:`GGUFFamily`. Every member is required: a family without
ignored names, prefixes or GGUF files says so with an empty tuple or mapping, so no loader probes for a member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from interp.models._model import Model


@runtime_checkable
class FamilyConfig(Protocol):
    """A family's frozen config: the sizes the loaders check against, read from and written to ``config.json``."""

    n_layers: int
    vocab_size: int
    d_model: int
    tie_embeddings: bool

    @classmethod
    def from_hf(cls, cfg: Mapping, where: Any = "config.json") -> FamilyConfig:
        """The config of a Hugging Face ``config.json`` dict; ``where`` names the file in errors."""
        ...

    def to_hf(self) -> dict:
        """A ``config.json`` dict that ``transformers`` reads as this model (``from_hf`` of it gives the config)."""
        ...


@runtime_checkable
class Family(Protocol):
    """A model family read from Hugging Face checkpoint folders (``config.json`` + safetensors)."""

    HF_ARCHITECTURES: tuple[str, ...]
    """The ``config.json`` ``architectures`` entries this family reads (``"LlamaForCausalLM"``)."""

    Config: type[FamilyConfig]
    """The family's config class (:class:`FamilyConfig`), made from ``config.json`` by ``Config.from_hf``."""

    HF_IGNORED: tuple[str, ...]
    """Regular expressions of tensor names a checkpoint may hold that carry no weights of the model (a tied head
    saved anyway, buffers older ``transformers`` versions stored); empty when there are none."""

    HF_OPTIONAL_PREFIXES: tuple[str, ...]
    """Prefixes some checkpoints leave off the tensor names (GPT-2's ``"transformer."``); empty when none."""

    GGUF_ARCHITECTURES: Mapping[str, bool]
    """GGUF ``general.architecture`` values this family reads, each with whether llama.cpp permuted the Q/K rows;
    empty when the family reads no GGUF files (else the module is a :class:`GGUFFamily`)."""

    def from_hf_weights(self, config: Any, get: Callable[[str], np.ndarray], *, dtype: Any = ...,
                        tokenizer: Any = None) -> Model:
        """The model of ``config`` from its tensors under Hugging Face names (``get(name) -> np.ndarray``, laid out
        as stored), as ``dtype`` arrays. Every tensor is read through ``interp.models._hf.Tensors``, which refuses a
        shape the config does not imply and lets ``hf_weight_shapes`` list the names from this loader."""
        ...

    def hf_weight_shapes(self, config: Any) -> dict[str, tuple[int, ...]]:
        """Every tensor a Hugging Face checkpoint of ``config`` holds, with its shape as stored: the names
        ``from_hf_weights`` reads (recorded by running it without reading anything). Checkpoints are checked
        against it before any tensor is read."""
        ...

    def hf_weight_names(self, config: Any) -> list[str]:
        """The names of ``hf_weight_shapes(config)``."""
        ...


@runtime_checkable
class GGUFFamily(Family, Protocol):
    """A family that also reads GGUF files (llama.cpp): their metadata, tensor names and conventions."""

    GGUF_NAMES: Mapping[str, str]
    """GGUF tensor name -> Hugging Face name, for tensors outside the blocks (``token_embd.weight``)."""

    GGUF_BLOCK_NAMES: Mapping[str, str]
    """GGUF block tensor name -> Hugging Face name within a layer: ``blk.{i}.X`` is ``model.layers.{i}.Y``."""

    def config_from_gguf(self, arch: str, meta: Mapping) -> FamilyConfig:
        """The config of a GGUF file's metadata (``{arch}.block_count`` etc.; ``meta["__tensor_names__"]`` holds
        its tensor names, ``meta["__file__"]`` its path for errors)."""
        ...

    def gguf_to_hf(self, config: Any, tensors: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
        """A GGUF model's config and tensors (Hugging Face names, Q/K unpermuted) in the convention of the family's
        Hugging Face checkpoints, as a converted folder stores them; as they are where the conventions agree."""
        ...
