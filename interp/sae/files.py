"""Dictionary files in SAELens's layout: ``cfg.json`` + ``sae_weights.safetensors``.

Dictionaries saved here open in SAELens (``SAE.load_from_disk``) and SAELens dictionaries open here.
SAELens keeps only inference architectures, so BatchTopK and Matryoshka dictionaries are written as
JumpReLU with their single threshold repeated per latent (the same function at inference); the full
training config travels in ``cfg.json``'s ``metadata.interp`` so they load back as what they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from interp.sae._base import DictConfig, Dictionary, architecture
from interp.weights._atomic import atomic_dir

_SAELENS_ARCH = {"standard": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
                 "matryoshka": "jumprelu"}


def save(dictionary: Dictionary, folder: str | Path, *, metadata: dict | None = None) -> Path:
    """Write ``dictionary`` to ``folder`` atomically (a complete folder appears, or nothing)."""
    from safetensors.numpy import save_file

    cfg: DictConfig = dictionary.cfg
    arch = cfg.arch
    weights = {
        "W_enc": np.asarray(dictionary.W_enc, np.float32),
        "b_enc": np.asarray(dictionary.b_enc, np.float32),
        "W_dec": np.asarray(dictionary.W_dec, np.float32),
        "b_dec": np.asarray(dictionary.b_dec, np.float32),
    }
    if dictionary.W_skip is not None:
        weights["W_skip"] = np.asarray(dictionary.W_skip, np.float32)
    if arch == "jumprelu":
        weights["threshold"] = np.asarray(jnp.exp(dictionary.log_threshold), np.float32)
    elif arch in ("batchtopk", "matryoshka"):
        weights["threshold"] = np.full((cfg.width,), float(dictionary.threshold), np.float32)
    meta = {"hook_name": cfg.hook_name, "interp": cfg.to_dict(), **(metadata or {})}
    saelens_cfg = {
        "architecture": _SAELENS_ARCH[arch],
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input and not cfg.is_transcoder),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if arch == "topk":
        saelens_cfg["k"] = cfg.k
        saelens_cfg["rescale_acts_by_decoder_norm"] = False
    with atomic_dir(Path(folder)) as tmp:
        save_file(weights, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(saelens_cfg, indent=2))
    return Path(folder)


def load(folder: str | Path, dtype=jnp.float32) -> Dictionary:
    """A dictionary from a folder in SAELens's layout (written here or by SAELens)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise FileNotFoundError(f"{folder} is not a dictionary folder: it needs cfg.json and sae_weights.safetensors")
    raw = json.loads(cfg_path.read_text())
    w = load_file(str(w_path))
    meta = raw.get("metadata") or {}
    if meta.get("interp"):
        cfg = DictConfig.from_dict(meta["interp"])
    else:
        cfg = _config_from_saelens(raw, meta, w)
    config_cls, cls = architecture(cfg.arch)
    arr = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    fields = dict(W_enc=arr(w["W_enc"]), b_enc=arr(w["b_enc"]), W_dec=arr(w["W_dec"]), b_dec=arr(w["b_dec"]),
                  W_skip=arr(w["W_skip"]) if "W_skip" in w else None, cfg=cfg)
    expect = {"W_enc": (cfg.d_in, cfg.width), "W_dec": (cfg.width, cfg.out_dim)}
    for k, shape in expect.items():
        if tuple(w[k].shape) != shape:
            raise ValueError(f"{w_path}: {k} has shape {tuple(w[k].shape)}, cfg.json implies {shape}")
    if cfg.arch == "jumprelu":
        fields["log_threshold"] = jnp.log(arr(w["threshold"]))
    elif cfg.arch in ("batchtopk", "matryoshka"):
        fields["threshold"] = arr(w["threshold"][0])
    return cls(**fields)


def _config_from_saelens(raw: dict, meta: dict, w: dict) -> DictConfig:
    arch = raw.get("architecture", "standard")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"this SAELens dictionary expects activation normalization '{raw['normalize_activations']}'; fold the "
            "scaling factor into its weights in SAELens (fold_activation_norm_scaling_factor) and save it again"
        )
    if raw.get("rescale_acts_by_decoder_norm"):
        raise ValueError("SAELens dictionaries with rescale_acts_by_decoder_norm=True are not supported")
    if arch not in ("standard", "topk", "jumprelu"):
        raise ValueError(f"SAELens architecture '{arch}' is not supported; supported: standard, topk, jumprelu")
    config_cls, _ = architecture(arch)
    kw = dict(d_in=raw["d_in"], width=raw["d_sae"], hook_name=meta.get("hook_name") or raw.get("hook_name", ""),
              apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)))
    if arch == "topk":
        kw["k"] = int(raw["k"])
    if arch == "jumprelu":  # the trained thresholds are loaded as weights; this only has to be a valid config
        t = np.asarray(w["threshold"])
        kw["init_threshold"] = float(t[t > 0].min()) if (t > 0).any() else 1e-3
    return config_cls(**kw)
