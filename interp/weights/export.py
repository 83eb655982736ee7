"""Saving a model as a Hugging Face checkpoint folder that ``interp.load`` and ``transformers`` both read.

No family has an exporter of its own: the inverse of a family's loader is read off the loader itself. The loader
is run on probe tensors (all zeros, then each element's index split into a high and a low part that float32 holds
exactly), and each element of each model leaf then says which stored element it came from and what constant the
loader added (Gemma's ``1 + w`` norms). Scattering the model's leaves back through that map gives the stored
tensors; every stored element must be covered exactly once, and loading the result must give the model back, else
nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp._io import atomic_dir
from interp.models import FAMILIES, Model

# An element index g is probed as (g >> _LOW_BITS, g & _LOW_MASK): both parts stay exact in float32 for up to
# 2**(24 + _LOW_BITS) elements per checkpoint.
_LOW_BITS = 12
_LOW_MASK = (1 << _LOW_BITS) - 1


def family_of(config):
    """The family module whose config class ``config`` is (one of :data:`interp.models.FAMILIES`)."""
    for family in FAMILIES:
        if isinstance(config, family.Config):
            return family
    raise TypeError(f"{type(config).__name__} is not the config of a family interp saves "
                    f"({', '.join(f.Config.__name__ for f in FAMILIES)}); only models interp.load builds can be saved")


def _leaves(model) -> dict[str, jax.Array]:
    flat = jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_array))
    return {jax.tree_util.keystr(p): leaf for p, leaf in flat}


def _check_layout(model: Model, probe: Model, family) -> None:
    """Refuse a model whose arrays are not where the family's loader puts them (a weight transform was applied)."""
    ours, theirs = _leaves(model), _leaves(probe)
    extra, missing = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if extra or missing:
        parts = ([f"it has {', '.join(extra)}, which a checkpoint of this config does not hold"] if extra else []) + (
            [f"it lacks {', '.join(missing)}"] if missing else [])
        raise ValueError(
            f"this model cannot be saved as a {family.__name__.rsplit('.', 1)[-1]} checkpoint: {'; '.join(parts)}. "
            "Weight transforms such as fold_norm_weights add arrays (an unembedding bias b_U, an untied copy of a tied "
            "unembedding) that no checkpoint of this family stores; save the model before transforming it")
    bad = [k for k in ours if ours[k].shape != theirs[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(f"model array {k} has shape {ours[k].shape}, but the config implies {theirs[k].shape}; "
                         "the arrays were replaced by ones of another size, which the config does not describe")
    if jax.tree.structure(eqx.filter(model, eqx.is_array)) != jax.tree.structure(eqx.filter(probe, eqx.is_array)):
        raise ValueError("this model's modules differ from what the loader builds for its config (a changed static "
                         "setting such as an activation, norm or rotary); only models as interp.load builds them "
                         "can be saved")


def _probe(family, config, shapes: dict, starts: dict, high: bool, index_dtype) -> dict[str, np.ndarray]:
    """The float32 leaves the loader makes when each element of tensor ``name`` holds the high (or low) part of its
    global index (computed in ``index_dtype``)."""
    def get(name):
        g = np.arange(starts[name], starts[name] + math.prod(shapes[name]), dtype=index_dtype)
        if high:
            g >>= _LOW_BITS
        else:
            g &= _LOW_MASK
        return g.astype(np.float32).reshape(shapes[name])

    model = family.from_hf_weights(config, get, dtype=jnp.float32)
    return {k: np.asarray(v, np.float32) for k, v in _leaves(model).items()}


def _whole(part: np.ndarray, offset: np.ndarray | None, dtype) -> np.ndarray | None:
    """``part - offset`` as integers of ``dtype``, or None where an element is not a whole number."""
    if offset is not None:
        part = part - offset
    whole = np.rint(part)
    if not np.array_equal(whole, part):
        return None
    return whole.astype(dtype)


def hf_tensors(model: Model) -> tuple[object, dict[str, np.ndarray]]:
    """``(config, tensors)``: the model's weights as a Hugging Face checkpoint of its family stores them (names and
    layouts of ``transformers``, float32) and the config they belong to."""
    family = family_of(model.config)
    config = model.config
    shapes = family.hf_weight_shapes(config)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    starts = dict(zip(shapes, np.cumsum([0, *sizes.values()])[:-1].tolist()))
    total = sum(sizes.values())
    if total >= 1 << (24 + _LOW_BITS):
        raise ValueError(f"a checkpoint of {total} elements is too large to map back in one pass")
    probe = family.from_hf_weights(config, lambda n: np.zeros(shapes[n], np.float32), dtype=jnp.float32,
                                   tokenizer=model.tokenizer)
    _check_layout(model, probe, family)
    # the constant each leaf element gets from the loader (Gemma's 1 + w norms); None where there is none
    offset = {k: (o if o.any() else None) for k, v in _leaves(probe).items() for o in [np.asarray(v, np.float32)]}
    index_dtype = np.int32 if total < 2**31 else np.int64
    high = _probe(family, config, shapes, starts, True, index_dtype)
    low = _probe(family, config, shapes, starts, False, index_dtype)

    flat = np.zeros(total, np.float32)
    seen, covered = np.zeros(total, bool), 0
    for key, leaf in _leaves(model).items():
        hi, lo = _whole(high.pop(key), offset[key], index_dtype), _whole(low.pop(key), offset[key], index_dtype)
        if hi is not None and lo is not None:
            hi <<= _LOW_BITS
            hi += lo
            index = hi.ravel()
        if hi is None or lo is None or index.min(initial=0) < 0 or index.max(initial=0) >= total:
            raise ValueError(f"model array {key} is not a plain rearrangement of stored tensors in the "
                             f"{family.__name__} loader, so it cannot be written back")
        values = np.asarray(leaf, np.float32)
        flat[index] = (values if offset[key] is None else values - offset[key]).ravel()
        seen[index] = True
        covered += index.size
    if covered != total or not seen.all():  # with as many reads as elements, all seen means each seen once
        name = next((n for n in shapes if not seen[starts[n]:starts[n] + sizes[n]].all()), next(iter(shapes)))
        raise ValueError(f"the model's arrays do not cover stored tensor {name} exactly once, so the "
                         f"{family.__name__} loader cannot be inverted")
    tensors = {n: flat[starts[n]:starts[n] + sizes[n]].reshape(shapes[n]) for n in shapes}
    if hasattr(family, "gguf_to_hf") and family.GGUF_ARCHITECTURES:  # a model read from GGUF: HF's conventions
        config, tensors = family.gguf_to_hf(config, tensors)
        tensors = {n: np.ascontiguousarray(v, np.float32) for n, v in tensors.items()}
    _check_round_trip(model, family, config, tensors)
    return config, tensors


def _check_round_trip(model: Model, family, config, tensors: dict[str, np.ndarray]) -> None:
    """Loading ``tensors`` must give the model's arrays back (up to the rounding of a constant the loader adds)."""
    back = _leaves(family.from_hf_weights(config, tensors.__getitem__, dtype=jnp.float32))
    for key, leaf in _leaves(model).items():
        ours, theirs = np.asarray(leaf, np.float32), np.asarray(back[key])
        slack = 2 * np.finfo(np.float32).eps * np.maximum(np.abs(ours), 1.0)
        if not np.all(np.abs(ours - theirs) <= slack):
            raise ValueError(f"saving {key} does not round-trip through the {family.__name__} loader; the model "
                             "cannot be written as a checkpoint of its family")


def config_json(config) -> dict:
    """The ``config.json`` of a checkpoint of ``config`` (a family config): its ``to_hf()``. Refused unless reading
    it back describes the same computation."""
    cfg = config.to_hf()
    scalar = cfg.get("query_pre_attn_scalar")
    if isinstance(scalar, float) and scalar.is_integer():  # transformers' Gemma 2/3 configs take an integer
        cfg["query_pre_attn_scalar"] = int(scalar)
    family = family_of(config)
    back = family.Config.from_hf(cfg)
    if not _same_model(family, config, back):
        diffs = [f"{f.name}: {getattr(config, f.name)!r} is written as {getattr(back, f.name)!r}"
                 for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(back, f.name)]
        raise ValueError(f"config.json cannot express this {type(config).__name__}: {'; '.join(diffs)}")
    return cfg


def _same_model(family, a, b) -> bool:
    """Whether configs ``a`` and ``b`` build the same modules (shapes, biases, rotary, windows, scales) and say the
    same of the special tokens."""
    def modules(config):
        m = family.from_hf_weights(config, lambda n: np.zeros(shapes[n], np.float32))
        parts = eqx.filter((m.embed, m.blocks, m.ln_final, m.unembed), eqx.is_array)
        return jax.tree.structure(parts), [x.shape for x in jax.tree.leaves(parts)], m.logit_softcap

    shapes = family.hf_weight_shapes(a)
    if family.hf_weight_shapes(b) != shapes:
        return False
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "tie_embeddings")
    return (all(getattr(a, k, None) == getattr(b, k, None) for k in ids)
            and modules(a) == modules(b))


def save_hf_dir(model: Model, folder: str | Path, *, overwrite: bool = False,
                extra: Mapping[str, str | bytes] | None = None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint folder: ``config.json``, ``model.safetensors`` (float32, the
    names and layouts ``transformers`` uses; a tied head is not written) and, when the model has a tokenizer,
    ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens, chat template). ``interp.load(folder)`` gives
    the same arrays back, and ``transformers.AutoModelForCausalLM``/``AutoTokenizer`` read it with equal logits.

    The folder appears complete or not at all. An existing folder is refused unless ``overwrite=True``. A model
    whose arrays are not laid out as its family's loader builds them (after ``fold_norm_weights``, say) is refused.
    ``extra`` maps more file names to their text or bytes, written in the same atomic step. Returns the folder."""
    from safetensors.numpy import save_file

    folder = Path(folder).expanduser()
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite=True to replace it, or choose another folder")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; choose another folder")
    config, tensors = hf_tensors(model)
    cfg = config_json(config)
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if model.tokenizer is not None:
            save_tokenizer(model.tokenizer, tmp)
        for name, content in (extra or {}).items():
            if Path(name).name != name or name in ("config.json", "model.safetensors"):
                raise ValueError(f"extra file name {name!r} must be a plain file name other than the checkpoint's own")
            path = tmp / name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return folder


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` for ``tokenizer`` (:class:`interp.Tokenizer`): what
    ``interp.load`` and ``transformers.AutoTokenizer`` read (special tokens, chat template; the BOS rule lives in
    ``tokenizer.json``'s post-processor)."""
    folder = Path(folder)
    tokenizer.save(folder / "tokenizer.json")

    def token(i):
        return None if i is None else tokenizer.hf.id_to_token(int(i))

    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token(tokenizer.bos_id),
           "eos_token": token(tokenizer.eos_id), "pad_token": token(tokenizer.pad_id),
           "add_bos_token": bool(tokenizer.add_bos), "clean_up_tokenization_spaces": False}
    if tokenizer.chat_template:
        cfg["chat_template"] = tokenizer.chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
