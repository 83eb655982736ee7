"""Dictionary files in SAELens's layout: ``cfg.json`` + ``sae_weights.safetensors``.

Dictionaries saved here open in SAELens (``SAE.load_from_disk``) and SAELens dictionaries open here. Each
architecture says how it maps onto these files (``Dictionary.saelens``, ``to_saelens``, ``from_saelens``): SAELens
keeps only inference architectures, so BatchTopK and Matryoshka dictionaries are written as JumpReLU with their
single threshold repeated per latent (the same function at inference); the full training config travels in
``cfg.json``'s ``metadata.interp`` so they load back as what they were.

``cfg.json`` follows the layout of SAELens 6: ``metadata.sae_lens_version`` tells SAELens to read ``metadata`` as
written (without it SAELens converts the file as an older one and keeps only top-level fields, so the hook name is
lost and ``prepend_bos`` becomes True). Files written before they carried it still load here.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from interp._io import atomic_dir
from interp.sae._base import REGISTRY, DictConfig, Dictionary, architecture
from interp.weights.hf import read_json

# SAELens reads ``metadata`` as written from this version of its layout on (sae_lens.loading.pretrained_sae_loaders:
# handle_config_defaulting); 6.0.0 is the first release with that layout.
SAELENS_VERSION = "6.0.0"

AFFINE = ("W_enc", "b_enc", "W_dec", "b_dec")


def _saelens_fields(cfg: DictConfig) -> dict:
    """The top-level fields SAELens reads, as they follow from ``cfg`` (dtype, device and metadata aside)."""
    layout = architecture(cfg.arch)[1].saelens
    return {
        "architecture": layout.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input and not cfg.is_transcoder),
        "normalize_activations": "none",
        "reshape_activations": "none",
        **{name: getattr(cfg, name) for name in layout.fields},
        **layout.constants,
    }


def save(dictionary: Dictionary, folder: str | Path, *, metadata: dict | None = None) -> Path:
    """Write ``dictionary`` to ``folder`` atomically (a complete folder appears, or nothing).

    ``cfg.json``'s ``metadata`` always carries ``sae_lens_version``, ``hook_name`` (and ``hook_name_out`` for a
    transcoder) and the dictionary's config (``interp``). ``metadata`` adds to it what the caller knows of the
    activations, in SAELens's names: ``model_name``, ``context_size`` (tokens per context), ``prepend_bos``
    (whether each context began with a BOS token) and ``seqpos_slice`` (the positions trained on, as
    ``[start, stop]``); ``train`` fills these in. A fact not given is left out, and SAELens reads it as None
    (unknown)."""
    from safetensors.numpy import save_file

    cfg: DictConfig = dictionary.cfg
    tensors = {name: getattr(dictionary, name) for name in AFFINE}
    if dictionary.W_skip is not None:
        tensors["W_skip"] = dictionary.W_skip
    tensors.update(dictionary.to_saelens())
    weights = {name: np.asarray(a, np.float32) for name, a in tensors.items()}
    meta = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": None, "hook_name": cfg.hook_name,
            **({"hook_name_out": cfg.hook_name_out} if cfg.is_transcoder else {}), "interp": cfg.to_dict(),
            **(metadata or {})}
    saelens_cfg = {**_saelens_fields(cfg), "metadata": meta}
    with atomic_dir(Path(folder)) as tmp:
        save_file(weights, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(saelens_cfg, indent=2))
    return Path(folder)


def load(folder: str | Path, dtype=jnp.float32) -> Dictionary:
    """A dictionary from a folder in SAELens's layout (written here or by SAELens).

    Every tensor is checked against the config (shape, floating dtype, finite values), and a config written
    here must agree with the top-level fields SAELens reads, so a file never loads as something it is not."""
    folder = Path(folder)
    cfg_path, w_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise FileNotFoundError(f"{folder} is not a dictionary folder: it needs cfg.json and sae_weights.safetensors")
    raw = read_json(cfg_path, "a SAELens config", "write the dictionary again or fix the file")
    w = _read_weights(w_path)
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_path}: 'metadata' must be a JSON object, not {type(meta).__name__}; fix or remove it")
    if meta.get("interp"):
        cfg = _interp_config(cfg_path, meta["interp"])
        _check_agrees(cfg_path, raw, _saelens_fields(cfg))
    else:
        cfg = _config_from_saelens(cfg_path, raw, meta, w)
    named = [("hook_name", raw.get("hook_name"), cfg.hook_name), ("metadata.hook_name", meta.get("hook_name"),
                                                                   cfg.hook_name)]
    if meta.get("interp"):
        named.append(("metadata.hook_name_out", meta.get("hook_name_out"), cfg.hook_name_out))
    for where, value, want in named:
        if value is not None and value != want:
            raise ValueError(f"{cfg_path}: '{where}' is {value!r} but the dictionary's config says {want!r}; "
                             "make them agree")
    _check_weights(w_path, w, cfg)
    _, cls = architecture(cfg.arch)
    try:
        extra = cls.from_saelens(cfg, {name: w[name] for name in cls.saelens.tensors}, dtype)
    except ValueError as e:
        raise ValueError(f"{w_path}: {e}") from None
    fields = {name: jnp.asarray(w[name], dtype) for name in AFFINE}
    return cls(**fields, W_skip=jnp.asarray(w["W_skip"], dtype) if cfg.skip else None, cfg=cfg, **extra)


def _read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, TypeError, OSError) as e:
        raise ValueError(f"{path} cannot be read ({e}): the file is truncated or corrupt, or holds a dtype NumPy "
                         "cannot read; save or download the dictionary again (in float32)") from None


def _interp_config(path: Path, d) -> DictConfig:
    arch = d.get("arch") if isinstance(d, dict) else None
    try:
        return DictConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: metadata.interp is not a valid {arch or 'dictionary'} config ({e}); "
                         "save the dictionary again with interp.sae.save") from None


def _check_agrees(path: Path, raw: dict, expected: dict) -> None:
    """SAELens reads the top-level fields and ignores ``metadata.interp``: both must describe one dictionary."""
    for field, want in expected.items():
        if field in ("dtype", "device") or field not in raw:
            continue
        if raw[field] != want:
            raise ValueError(f"{path}: '{field}' is {raw[field]!r} but metadata.interp implies {want!r}; SAELens "
                             "would read the first and interp the second: make them agree, or save the dictionary "
                             "again")


def _expected_shapes(cfg: DictConfig) -> dict:
    shapes = {"W_enc": (cfg.d_in, cfg.width), "b_enc": (cfg.width,), "W_dec": (cfg.width, cfg.out_dim),
              "b_dec": (cfg.out_dim,)}
    if cfg.skip:
        shapes["W_skip"] = (cfg.d_in, cfg.out_dim)
    shapes.update({name: (cfg.width,) for name in architecture(cfg.arch)[1].saelens.tensors})
    return shapes


def _check_weights(path: Path, w: dict, cfg: DictConfig) -> None:
    shapes = _expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in w:
            why = "skip=True" if name == "W_skip" else f"a {cfg.arch} dictionary"
            raise ValueError(f"{path} lacks '{name}', which {why} needs; the file holds {sorted(w)}")
        a = w[name]
        if tuple(a.shape) != shape:
            raise ValueError(f"{path}: {name} has shape {tuple(a.shape)}, but cfg.json implies {shape} "
                             f"(d_in={cfg.d_in}, width={cfg.width}, out={cfg.out_dim}); the weights and the config "
                             "belong to different dictionaries")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{path}: {name} has dtype {a.dtype}; dictionary weights must be floating point")
        bad = int(a.size - np.isfinite(a).sum())
        if bad:
            raise ValueError(f"{path}: {name} holds {bad} NaN or infinite values; the dictionary is corrupt or "
                             "diverged in training")
    # a tensor that some architecture uses but this one does not means the file is another dictionary
    known = {"W_skip"}.union(*(cls.saelens.tensors for _, cls in REGISTRY.values()))
    unused = sorted(known.intersection(w).difference(shapes))
    if unused:
        raise ValueError(f"{path} holds '{unused[0]}', which a {cfg.arch} dictionary with this config does not use "
                         f"(skip={cfg.skip}); the weights and cfg.json belong to different dictionaries")


def saelens_readable() -> list[str]:
    """The architectures that SAELens files carrying no interp config can be: those written under their own name."""
    return [name for name, (_, cls) in REGISTRY.items() if cls.saelens.architecture == name]


def _config_from_saelens(path: Path, raw: dict, meta: dict, w: dict) -> DictConfig:
    arch = raw.get("architecture", "standard")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{path}: this SAELens dictionary expects activation normalization '{raw['normalize_activations']}'; "
            "fold the scaling factor into its weights in SAELens (fold_activation_norm_scaling_factor) and save it "
            "again"
        )
    if raw.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{path}: SAELens dictionaries with rescale_acts_by_decoder_norm=True are not supported")
    readable = saelens_readable()
    if arch not in readable:
        raise ValueError(f"{path}: SAELens architecture {arch!r} is not supported; supported: {', '.join(readable)}")
    config_cls, cls = architecture(arch)

    def need(key):
        if not isinstance(raw.get(key), int) or isinstance(raw[key], bool):
            state = "lacks" if key not in raw else f"has a non-integer {raw[key]!r} for"
            raise ValueError(f"{path} {state} '{key}', which a SAELens {arch} config needs; add it (an integer)")
        return raw[key]

    kw = dict(d_in=need("d_in"), width=need("d_sae"), hook_name=meta.get("hook_name") or raw.get("hook_name", ""),
              apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
              **{name: need(name) for name in cls.saelens.fields}, **cls.config_from_saelens(w))
    try:
        return config_cls(**kw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
