"""Checkpoint readers: Hugging Face folders, GGUF files, and the packaged default model."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from interp.models import GGUF_FAMILIES, HF_FAMILIES, Model
from interp.weights._check import check_tensors
from interp.weights.default import DEFAULT_MODELS, cache_dir, default_gguf_path, ensure_default
from interp.weights.export import save_hf_dir
from interp.weights.fingerprint import weights_hash
from interp.weights.gguf_file import GGUFFile, hf_tensors
from interp.weights.hf import SafetensorsReader, read_config, safetensor_files
from interp.weights.hub import hub_snapshot, is_repo_id
from interp.weights.tokenize import Tokenizer


def load(source: str | Path = "smollm2-135m", *, revision: str | None = None, dtype=jnp.float32,
         mesh=None) -> Model:
    """Load a model: a packaged name (``"smollm2-135m"``), a Hugging Face checkpoint folder, a ``.gguf`` file, or a
    Hugging Face Hub repo id (``"HuggingFaceTB/SmolLM2-135M"``, at ``revision``: a branch, tag or commit hash, the
    default branch if None), downloaded into the Hub cache once (safetensors only) and loaded as a folder is.
    ``"owner/name@revision"`` names the revision in the string itself (what the command line takes).

    ``mesh``: a ``jax.sharding.Mesh`` with a ``"model"`` axis (and optionally ``"data"``): the weights are read on
    the host and placed over it, heads and MLP columns split across ``model`` (:mod:`interp.models.sharding`)."""
    if mesh is None:
        return _load(source, revision, dtype)
    from interp.models.sharding import check_mesh, shard

    check_mesh(mesh)
    host = jax.devices("cpu")[0] if any(d.platform != "cpu" for d in mesh.devices.flat) else None
    if host is None:
        return shard(_load(source, revision, dtype), mesh)
    with jax.default_device(host):  # the whole model never sits on one accelerator
        model = _load(source, revision, dtype)
    return shard(model, mesh)


def _load(source, revision, dtype) -> Model:
    key = str(source).lower()
    if key in DEFAULT_MODELS:
        _no_revision(source, revision)
        return load_hf_dir(ensure_default(key), dtype=dtype)
    path = Path(source).expanduser()
    if not path.exists() and isinstance(source, str):
        repo, revision = split_revision(source, revision)
        if is_repo_id(repo):
            return load_hf_dir(hub_snapshot(repo, revision=revision), dtype=dtype)
    _no_revision(source, revision)
    if path.is_dir():
        return load_hf_dir(path, dtype=dtype)
    if path.suffix == ".gguf" or (path.is_file() and _magic(path) == b"GGUF"):
        return load_gguf(path, dtype=dtype)
    if not path.exists():
        raise FileNotFoundError(
            f"'{source}' is neither a packaged model ({', '.join(sorted(DEFAULT_MODELS))}), an existing checkpoint "
            "folder or .gguf file, nor a Hugging Face Hub repo id ('owner/name' or 'owner/name@revision', as in "
            "'HuggingFaceTB/SmolLM2-135M')"
        )
    raise ValueError(f"cannot tell what kind of checkpoint {path} is: pass a folder with config.json or a .gguf file")


def split_revision(source: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"owner/name@rev"`` -> ``("owner/name", "rev")``; any other text comes back as it is, with ``revision``. A
    revision in the text and another one passed are refused."""
    repo, at, rev = source.partition("@")
    if not at or not is_repo_id(repo):
        return source, revision
    if not rev or "@" in rev:
        raise ValueError(f"'{source}': write a Hub revision as 'owner/name@revision' with one '@' and a branch, tag "
                         "or commit hash after it")
    if revision is not None and revision != rev:
        raise ValueError(f"'{source}' names revision {rev!r} and revision={revision!r} was passed too; give one")
    return repo, rev


def _no_revision(source, revision: str | None) -> None:
    if revision is not None:
        raise ValueError(f"revision={revision!r} applies to Hub repo ids ('owner/name'), not to '{source}'; "
                         "leave it out for a packaged name or a local path")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def _family_for_hf(cfg: dict, where: Path):
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"{where}: field 'architectures' must be a list of names such as ['LlamaForCausalLM'], got "
                         f"{archs!r}; fix it or use the config saved with these weights")
    for arch in archs:
        if arch in HF_FAMILIES:
            return HF_FAMILIES[arch]
    raise ValueError(
        f"{where} names architecture {archs or cfg.get('model_type')!r}, which is not supported; "
        f"supported: {', '.join(sorted(HF_FAMILIES))}"
    )


def load_hf_dir(folder: str | Path, *, dtype=jnp.float32) -> Model:
    """A Hugging Face checkpoint folder (``config.json`` + safetensors + optional ``tokenizer.json``)."""
    folder = Path(folder)
    cfg = read_config(folder)
    cfg_path = folder / "config.json"
    family = _family_for_hf(cfg, cfg_path)
    config = family.Config.from_hf(cfg, where=cfg_path)
    reader = SafetensorsReader(safetensor_files(folder))
    check_tensors(reader.stored(), family, config, where=f"checkpoint {folder}", config_name=str(cfg_path))
    tok_path = folder / "tokenizer.json"
    tokenizer = Tokenizer.from_file(tok_path, cfg) if tok_path.exists() else None
    return family.from_hf_weights(config, reader, dtype=dtype, tokenizer=tokenizer)


def load_gguf(path: str | Path, *, dtype=jnp.float32) -> Model:
    """A ``.gguf`` file: dequantized to float32, Q/K permutation undone, tokenizer from its vocabulary."""
    f = GGUFFile(path)
    family = GGUF_FAMILIES.get(f.arch)
    if family is None:
        raise ValueError(
            f"GGUF architecture '{f.arch}' in {path} is not supported; supported: {', '.join(sorted(GGUF_FAMILIES))}"
        )
    config = family.config_from_gguf(f.arch, f.meta)
    tensors = hf_tensors(f, family)
    tokenizer = Tokenizer.from_gguf_metadata(f.meta)
    return family.from_hf_weights(config, tensors.__getitem__, dtype=dtype, tokenizer=tokenizer)


__all__ = [
    "DEFAULT_MODELS", "GGUFFile", "SafetensorsReader", "cache_dir", "default_gguf_path", "ensure_default",
    "hub_snapshot", "is_repo_id", "load", "load_gguf", "load_hf_dir", "save_hf_dir", "weights_hash",
]
