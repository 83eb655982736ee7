"""Published sparse dictionaries, opened as interp's own: ``from_pretrained``.

    >>> d = sae.from_pretrained("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")
    >>> d = sae.from_pretrained("EleutherAI/sae-pythia-70m-32k", "layers.3")
    >>> d = sae.from_pretrained(release="gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")
    >>> d = sae.from_pretrained("/data/my_saes", "blocks.6")        # a local folder holding several

Layouts, recognised by the files in the dictionary's folder:

=============  =============================================  ===================================================
layout         files                                          becomes
=============  =============================================  ===================================================
SAELens        ``cfg.json`` + ``sae_weights.safetensors``     the architecture ``cfg.json`` names (``sae.load``)
sparsify       ``cfg.json`` + ``sae.safetensors``             TopK (``encoder.weight`` [M D], ``encoder.bias``,
                                                              ``W_dec`` [M D], ``b_dec``, ``W_skip`` [D D] applied
                                                              as ``x W_skip^T``); ``transcode`` makes a transcoder
Gemma Scope    ``params.npz`` (``W_enc`` [D M], ``W_dec``     JumpReLU, without ``b_dec`` subtracted from the
               [M D], ``b_enc``, ``b_dec``, ``threshold``)    input; D is read from the arrays
=============  =============================================  ===================================================

Hook names (``PUBLISHED_HOOKS``; L is the layer). SAELens files already carry TransformerLens names, which are interp's.
sparsify names a module of the Hugging Face model (its folder name, e.g. ``layers.6``; GPT-2's ``h.6`` alike) and
reads that module's output, or for a transcoder its input and output. Gemma Scope's kind is the repo's suffix
(``google/gemma-scope-2b-pt-res``), its layer the folder's ``layer_L``:

=====================================  ======================================  ==================================
published                              hook_name                               hook_name_out (transcoders)
=====================================  ======================================  ==================================
sparsify ``layers.L``                  ``blocks.L.hook_resid_post``
sparsify ``layers.L.mlp``              ``blocks.L.hook_mlp_out``
sparsify ``layers.L.self_attn``        ``blocks.L.hook_attn_out``
sparsify ``layers.L.mlp``, transcode   ``blocks.L.ln2.hook_normalized``        ``blocks.L.hook_mlp_out``
Gemma Scope ``-res`` ``layer_L``       ``blocks.L.hook_resid_post``
Gemma Scope ``-res`` ``embedding``     ``hook_embed``
Gemma Scope ``-mlp``                   ``blocks.L.hook_mlp_out``
Gemma Scope ``-att``                   ``blocks.L.attn.hook_z`` (heads joined)
Gemma Scope ``-transcoders``           ``blocks.L.ln2.hook_normalized``        ``blocks.L.hook_mlp_out``
=====================================  ======================================  ==================================

Where the published hook differs from interp's by a fixed map, the weights absorb it: Gemma Scope's embedding SAEs
read the embedding before Gemma's ``sqrt(d_model)`` scale, and ``hook_embed`` is after it, so ``W_enc`` is divided
and ``W_dec``, ``b_dec`` multiplied by ``sqrt(D)``. Two differences depend on the model: ``ln2.hook_normalized`` is
the MLP's input before the norm's multiplier ``w`` (and LayerNorm's bias ``b``), which the published transcoders saw
applied, so a transcoder spliced there needs them folded in (``W_enc <- w[:, None] * W_enc``,
``b_enc <- b_enc + b @ W_enc``): ``from_pretrained(..., model=model)`` does it (:func:`fold_input_norm`); and on
Gemma 2 and 3 sparsify's ``layers.L.mlp`` is the MLP's output before its post-norm, while ``hook_mlp_out`` is after
it, which is left to the caller. interp's ``attn.hook_z`` is ``[B T H E]``; an attention SAE reads it with the
heads joined, ``[B T H*E]``, and a ``Splice`` there joins them on the way in and splits them on the way out.

``hook=`` names the hook instead (a ``(hook_name, hook_name_out)`` pair for a transcoder). A published name that
has no entry here needs ``hook=``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from interp.sae import files
from interp.sae._base import Dictionary
from interp.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from interp.sae.topk import TopKConfig, TopKSAE

# published site -> (hook_name, hook_name_out); "{L}" is the layer
PUBLISHED_HOOKS: dict[str, dict[str, tuple[str, str | None]]] = {
    "sparsify": {
        "layer": ("blocks.{L}.hook_resid_post", None),
        "mlp": ("blocks.{L}.hook_mlp_out", None),
        "attn": ("blocks.{L}.hook_attn_out", None),
        "mlp transcoder": ("blocks.{L}.ln2.hook_normalized", "blocks.{L}.hook_mlp_out"),
    },
    "gemma-scope": {
        "res": ("blocks.{L}.hook_resid_post", None),
        "res embedding": ("hook_embed", None),
        "mlp": ("blocks.{L}.hook_mlp_out", None),
        "att": ("blocks.{L}.attn.hook_z", None),
        "transcoders": ("blocks.{L}.ln2.hook_normalized", "blocks.{L}.hook_mlp_out"),
    },
}

# the files that make each layout (besides cfg.json for SAELens and sparsify)
LAYOUTS = {"SAELens": ("cfg.json", "sae_weights.safetensors"), "sparsify": ("cfg.json", "sae.safetensors"),
           "Gemma Scope": ("params.npz",)}
_MARKERS = ("sae_weights.safetensors", "sae.safetensors", "params.npz")
# sparsify's hook points: modules of the Hugging Face base model, as ``{layers}.{L}[.{part}]``
_SPARSIFY_SITE = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(?:\.(\w+))?$")
_SPARSIFY_PARTS = {None: "layer", "mlp": "mlp", "self_attn": "attn", "attn": "attn", "attention": "attn"}
_GEMMA_SCOPE_KIND = re.compile(r"gemma-scope-[\w.-]*?-(res|mlp|att|transcoders)(?![\w])")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# SAELens registry conversions whose files are in a layout read here
_READABLE_CONVERSIONS = {None, "gemma_2", "gemma_2_transcoder"}


def from_pretrained(source: str | Path | None = None, path: str | None = None, *, release: str | None = None,
                    sae_id: str | None = None, hook: str | tuple[str, str] | None = None,
                    revision: str | None = None, dtype=jnp.float32, model=None) -> Dictionary:
    """A published dictionary as an interp dictionary whose ``encode``/``decode`` compute what its own library's do.

    source: a local folder holding one of the layouts (module docstring), or a file in one (``params.npz``), or a
        folder holding several with ``path`` naming one (relative to it); or a Hugging Face Hub repo id
        ``owner/name`` with ``path`` the dictionary's folder in the repo (only that folder is downloaded).
    release, sae_id: instead of ``source`` and ``path``, a SAELens release and the id of one of its dictionaries,
        resolved to a repo and folder through SAELens's registry (needs ``sae-lens`` installed).
    hook: the hook the dictionary reads (``cfg.hook_name``), or a ``(hook_name, hook_name_out)`` pair, instead of
        the one the published name maps to (``PUBLISHED_HOOKS``).
    revision: a branch, tag or commit of a Hub repo.
    dtype: the dictionary's array dtype (files are read as float32 and cast).
    model: the interp model the dictionary will read. A transcoder that reads a norm's ``hook_normalized`` then gets
        that norm's multiplier and bias folded in (:func:`fold_input_norm`), so that spliced there it computes what
        it computed on the published MLP input; other dictionaries are checked against the model's hook points.
    """
    if release is not None or sae_id is not None:
        if source is not None or path is not None:
            raise ValueError("pass either source (and path) or release and sae_id, not both")
        if release is None or sae_id is None:
            raise ValueError("a SAELens release needs both release= and sae_id=")
        source, path = _resolve_release(release, sae_id)
    if source is None:
        raise ValueError("name a dictionary: from_pretrained(folder or 'owner/repo', path) or "
                         "from_pretrained(release=..., sae_id=...)")
    local = Path(source).expanduser()
    if local.exists():
        target, where = _local_target(local, path), str(local)
    elif isinstance(source, str) and _REPO_ID.match(source):
        target, where = _hub_target(source, path, revision), source
    else:
        raise FileNotFoundError(f"{source!r} is neither an existing file or folder nor a Hub repo id 'owner/name'; "
                                "check the path, or name the repo as owner/name")
    d = _open(target, f"{where}/{path}" if path else where, hook, dtype)
    if model is None:
        return d
    names = set(model.hook_names)
    for h in (d.cfg.hook_name, d.cfg.hook_name_out if d.cfg.is_transcoder else None):
        if h is not None and h not in names:
            raise ValueError(f"the dictionary uses hook '{h}', which the model does not have; pass hook= the hook "
                             "point(s) it should use")
    if d.cfg.d_in != model.d_model and not d.cfg.hook_name.endswith("hook_z"):
        raise ValueError(f"the dictionary reads {d.cfg.d_in} numbers per token and the model's stream has "
                         f"{model.d_model}: it was trained on another model")
    return fold_input_norm(d, model) if d.cfg.hook_name.endswith(".hook_normalized") else d


def fold_input_norm(d: Dictionary, model) -> Dictionary:
    """A transcoder that reads ``blocks.L.ln{1,2}.hook_normalized`` with that norm's multiplier ``w`` and bias ``b``
    folded in. interp's ``hook_normalized`` is the norm's input divided by its scale, before ``w`` and ``b``; a
    published transcoder saw the norm's output ``y = x w + b`` (the MLP's input). Folded, it computes on ``x``
    exactly what it computed on ``y``: ``W_enc <- w[:, None] W_enc``, ``b_enc <- b_enc + b W_enc``, and for a skip
    connection ``W_skip <- w[:, None] W_skip``, ``b_dec <- b_dec + b W_skip``. Only transcoders: an SAE there would
    also have to reconstruct ``x`` instead of ``y``."""
    m = re.fullmatch(r"blocks\.(\d+)\.(ln1|ln2)\.hook_normalized", d.cfg.hook_name)
    if m is None:
        raise ValueError(f"fold_input_norm folds the norm a dictionary reads through 'blocks.L.ln1/ln2.hook_normalized'"
                         f"; this one reads '{d.cfg.hook_name}'")
    if not d.cfg.is_transcoder:
        raise ValueError(f"an SAE at '{d.cfg.hook_name}' reconstructs the norm's output, not the hook's value; "
                         "fold_input_norm takes transcoders (an SAE belongs at the hook it was trained on)")
    if d.cfg.apply_b_dec_to_input:
        raise ValueError("this transcoder subtracts b_dec from its input; fold_input_norm takes transcoders that "
                         "encode their input as it is")
    layer = int(m.group(1))
    if layer >= model.n_layers:
        raise ValueError(f"the dictionary reads layer {layer} and the model has {model.n_layers} layers")
    norm = getattr(model.blocks[layer], m.group(2))
    dt = d.W_enc.dtype
    w = jnp.asarray(norm.weight, jnp.float32)
    b = jnp.zeros_like(w) if getattr(norm, "bias", None) is None else jnp.asarray(norm.bias, jnp.float32)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    new = {"W_enc": (w[:, None] * f32(d.W_enc)).astype(dt), "b_enc": (f32(d.b_enc) + b @ f32(d.W_enc)).astype(dt)}
    if d.W_skip is not None:
        new["W_skip"] = (w[:, None] * f32(d.W_skip)).astype(dt)
        new["b_dec"] = (f32(d.b_dec) + b @ f32(d.W_skip)).astype(dt)
    return dataclasses.replace(d, **new)


# ------------------------------------------------------------------ where the files are
def _local_target(root: Path, path: str | None) -> Path:
    target = root / path if path else root
    if not target.exists():
        raise FileNotFoundError(f"{root} has no {path!r}; dictionaries it holds: {_listing(_found(root))}")
    return target


def _hub_target(repo_id: str, path: str | None, revision: str | None) -> Path:
    if path is None:
        names = _hub_files(repo_id, revision)
        if not any(n in names for n in _MARKERS):
            raise ValueError(f"{repo_id} holds no dictionary at its top level; pass path= the folder of one, e.g. "
                             f"{_listing(_dictionary_folders(names))}")
        return _download(repo_id, None, revision)
    path = path.strip("/")
    target = _download(repo_id, path, revision) / path
    if not target.exists():
        held = _dictionary_folders(_hub_files(repo_id, revision))
        raise FileNotFoundError(f"{repo_id} (revision {revision or 'main'}) has no files under {path!r}; "
                                f"dictionaries it holds: {_listing(held)}")
    return target


def _download(repo_id: str, path: str | None, revision: str | None) -> Path:
    """The local snapshot of ``repo_id`` holding the files under ``path`` (the top-level dictionary files if None)."""
    from interp.weights.hub import hub_download

    return hub_download(repo_id, [f"{path}/*"] if path else ["cfg.json", *_MARKERS], revision=revision)


def _hub_files(repo_id: str, revision: str | None) -> list[str]:
    """Every file path in ``repo_id`` (to list its dictionaries without downloading them)."""
    from interp.weights.hub import hub_files

    return hub_files(repo_id, revision=revision)


def _dictionary_folders(names: list[str]) -> list[str]:
    return sorted({n.rpartition("/")[0] for n in names if n.rpartition("/")[2] in _MARKERS} - {""})


def _found(root: Path) -> list[str]:
    if root.is_file():
        return []
    return sorted({str(p.parent.relative_to(root)) for m in _MARKERS for p in root.rglob(m)} - {"."})


def _listing(names: list[str], n: int = 5) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def _resolve_release(release: str, sae_id: str) -> tuple[str, str]:
    registry = _saelens_registry()
    if release not in registry:
        near = difflib.get_close_matches(release, list(registry), n=3)
        raise ValueError(f"SAELens knows no release {release!r}" + (f"; did you mean {_listing(near)}?" if near else
                                                                      "; see sae_lens's pretrained_saes.yaml"))
    entry = registry[release]
    if sae_id not in entry.saes_map:
        near = difflib.get_close_matches(sae_id, list(entry.saes_map), n=3) or list(entry.saes_map)
        raise ValueError(f"release {release!r} has no sae_id {sae_id!r}; it has {_listing(near)}")
    if entry.conversion_func not in _READABLE_CONVERSIONS:
        raise ValueError(f"release {release!r} is stored in SAELens's {entry.conversion_func!r} format, which interp "
                         "does not read; load it in SAELens (SAE.from_pretrained), save it with save_model and pass "
                         "that folder")
    return entry.repo_id, entry.saes_map[sae_id]


def _saelens_registry() -> dict:
    """SAELens's registry of published dictionaries: release -> entry with ``repo_id``, ``saes_map`` (id -> path)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise ImportError("release= and sae_id= are looked up in SAELens's registry: install sae-lens "
                          "(pip install sae-lens), or pass the repo id and path: "
                          "from_pretrained('owner/repo', 'folder')") from None
    return get_pretrained_saes_directory()


# ------------------------------------------------------------------ layouts
def _open(target: Path, where: str, hook, dtype) -> Dictionary:
    if target.is_file():
        if target.suffix == ".npz":
            return _gemma_scope(target, where, hook, dtype)
        if target.name in ("cfg.json", "sae_weights.safetensors", "sae.safetensors"):
            target = target.parent
        else:
            raise ValueError(f"{target} is not a dictionary file; pass its folder, or a Gemma Scope params.npz")
    if (target / "cfg.json").exists() and (target / "sae_weights.safetensors").exists():
        d = files.load(target, dtype)
        return d if hook is None else _with_hook(d, hook, where)
    if (target / "cfg.json").exists() and (target / "sae.safetensors").exists():
        return _sparsify(target, where, hook, dtype)
    if (target / "params.npz").exists():
        return _gemma_scope(target / "params.npz", where, hook, dtype)
    inside = _found(target)
    if inside:
        raise ValueError(f"{target} holds {len(inside)} dictionaries; pass path= one of them "
                         f"(relative to the source), e.g. {_listing(inside)}")
    looked = "; ".join(f"{' + '.join(names)} ({name})" for name, names in LAYOUTS.items())
    held = sorted(p.name for p in target.iterdir())[:8]
    raise ValueError(f"{target} matches no dictionary layout: looked for {looked}; it holds {held or 'nothing'}")


def _sparsify(folder: Path, where: str, hook, dtype) -> Dictionary:
    """sparsify's ``SparseCoder`` (``save_to_disk``): relu, then the top k per activation."""
    from interp.weights.hf import read_json

    cfg_path, w_path = folder / "cfg.json", folder / "sae.safetensors"
    raw = read_json(cfg_path, "a sparsify config", "save the dictionary again with sparsify or fix the file")
    w = _read_any_safetensors(w_path)
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise ValueError(f"{cfg_path}: sparsify activation {activation!r} is not supported; only 'topk' is")
    transcode = bool(raw.get("transcode", False))
    skip = bool(raw.get("skip_connection", False))
    if skip and not transcode:
        raise ValueError(f"{cfg_path}: a skip connection on an autoencoder (skip_connection without transcode) is "
                         "not supported; interp's dictionaries take W_skip only as transcoders")
    for key in ("d_in", "k"):
        if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool):
            raise ValueError(f"{cfg_path} lacks an integer '{key}', which a sparsify config holds; fix the file")
    d_in = raw["d_in"]
    width = raw.get("num_latents") or d_in * raw.get("expansion_factor", 32)
    shapes = {"encoder.weight": (width, d_in), "encoder.bias": (width,), "W_dec": (width, d_in), "b_dec": (d_in,)}
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    _check(w_path, w, shapes, f"cfg.json (d_in={d_in}, {width} latents)")
    hook_in, hook_out = _hooks(_sparsify_site(folder.name, transcode), hook, transcode, where)
    try:
        cfg = TopKConfig(d_in=d_in, width=width, k=raw["k"], hook_name=hook_in, hook_name_out=hook_out, skip=skip,
                         normalize_decoder=bool(raw.get("normalize_decoder", True)),
                         apply_b_dec_to_input=not transcode)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    a = lambda name: jnp.asarray(w[name], dtype)  # noqa: E731
    return TopKSAE(W_enc=a("encoder.weight").T, b_enc=a("encoder.bias"), W_dec=a("W_dec"), b_dec=a("b_dec"),
                   W_skip=a("W_skip").T if skip else None, cfg=cfg)


def _sparsify_site(name: str, transcode: bool) -> tuple[str, str | None] | None:
    m = _SPARSIFY_SITE.match(name)
    part = _SPARSIFY_PARTS.get(m.group(2), "") if m else ""
    if transcode:
        part = f"{part} transcoder"
    if part not in PUBLISHED_HOOKS["sparsify"]:
        return None
    hook_in, hook_out = PUBLISHED_HOOKS["sparsify"][part]
    return hook_in.format(L=m.group(1)), hook_out and hook_out.format(L=m.group(1))


def _gemma_scope(npz: Path, where: str, hook, dtype) -> Dictionary:
    """Gemma Scope's JumpReLU: ``z = pre · H(pre − threshold)``, ``pre = x W_enc + b_enc``."""
    w = _read_npz(npz)
    w = {("W" + k[1:] if k.startswith("w_") else k): v for k, v in w.items()}
    scaling = w.pop("scaling_factor", None)
    if scaling is not None and not np.all(scaling == 1):
        raise ValueError(f"{npz} holds a scaling_factor other than 1, which Gemma Scope's dictionaries do not; "
                         "this file is another format")
    if "W_enc" not in w or np.ndim(w["W_enc"]) != 2:
        raise ValueError(f"{npz} holds no 2-d W_enc (it holds {sorted(w)}); a Gemma Scope params.npz has W_enc, "
                         "W_dec, b_enc, b_dec and threshold")
    d_in, width = w["W_enc"].shape
    d_out = w["W_dec"].shape[-1] if np.ndim(w.get("W_dec")) == 2 else d_in
    _check(npz, w, {"W_enc": (d_in, width), "W_dec": (width, d_out), "b_enc": (width,), "b_dec": (d_out,),
                    "threshold": (width,)}, f"W_enc's shape (d_in={d_in}, {width} latents)")
    extra = sorted(set(w) - {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"})
    if extra:
        raise ValueError(f"{npz} holds {extra}, which Gemma Scope's JumpReLU does not use; this file is another format")
    kind = _gemma_scope_kind(f"{where}/{npz.resolve()}")
    layer = re.search(r"layer_(\d+)", str(npz.parent))
    if kind == "res" and layer is None and "embedding" in str(npz.parent):
        kind = "res embedding"
        scale = np.sqrt(d_in)  # Gemma's embedding scale, applied before hook_embed but not to what the SAE read
        w.update(W_enc=w["W_enc"] / scale, W_dec=w["W_dec"] * scale, b_dec=w["b_dec"] * scale)
    mapped = None
    if kind and (layer or kind == "res embedding"):
        hook_in, hook_out = PUBLISHED_HOOKS["gemma-scope"][kind]
        mapped = hook_in.format(L=layer and layer.group(1)), hook_out and hook_out.format(L=layer.group(1))
    # without a known kind, a pair of hooks says it is a transcoder (which computes what an SAE without b_dec
    # subtracted from its input does)
    pair = isinstance(hook, tuple) and len(hook) == 2 and hook[0] != hook[1]
    hook_in, hook_out = _hooks(mapped, hook, kind == "transcoders" or (kind is None and pair), where)
    t = w["threshold"]
    cfg = JumpReLUConfig(d_in=d_in, width=width, d_out=d_out if d_out != d_in else None, hook_name=hook_in,
                         hook_name_out=hook_out, apply_b_dec_to_input=False,
                         init_threshold=float(t[t > 0].min()) if (t > 0).any() else 1e-3)
    try:
        extra = JumpReLUSAE.from_saelens(cfg, {"threshold": t}, dtype)
    except ValueError as e:
        raise ValueError(f"{npz}: {e}") from None
    return JumpReLUSAE(**{k: jnp.asarray(w[k], dtype) for k in files.AFFINE}, W_skip=None, cfg=cfg, **extra)


def _gemma_scope_kind(where: str) -> str | None:
    m = _GEMMA_SCOPE_KIND.search(where)
    return m.group(1) if m else None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise ValueError(f"{path} holds pickled Python objects, which are not read (unpickling can run code); "
                             "save the arrays as plain numeric arrays (np.savez) and load that file") from None
        raise ValueError(f"{path} cannot be read as an npz archive ({e}); download it again") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} cannot be read as an npz archive ({e}); download it again") from None


def _read_any_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors as float32 NumPy arrays, bfloat16 ones included (NumPy has no bfloat16; JAX reads it)."""
    from safetensors import SafetensorError
    from safetensors.flax import load_file

    try:
        return {k: np.asarray(v, np.float32) if jnp.issubdtype(v.dtype, jnp.floating) else np.asarray(v)
                for k, v in load_file(str(path)).items()}
    except (SafetensorError, TypeError, OSError) as e:
        raise ValueError(f"{path} cannot be read ({e}): the file is truncated or corrupt; download or save the "
                         "dictionary again") from None


def _check(path: Path, w: dict, shapes: dict, source: str) -> None:
    for name, shape in shapes.items():
        if name not in w:
            raise ValueError(f"{path} lacks '{name}'; the file holds {sorted(w)}")
        a = w[name]
        if tuple(a.shape) != shape:
            raise ValueError(f"{path}: {name} has shape {tuple(a.shape)}, but {source} implies {shape}; the weights "
                             "and the config belong to different dictionaries")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{path}: {name} has dtype {a.dtype}; dictionary weights must be floating point")
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: {name} holds NaN or infinite values; the dictionary is corrupt")


def _hooks(mapped: tuple[str, str | None] | None, hook, transcoder: bool, where: str) -> tuple[str, str | None]:
    """``(hook_name, hook_name_out)``: ``hook=`` when given, else the published name's (``PUBLISHED_HOOKS``)."""
    kind = "transcoder" if transcoder else "SAE"
    if hook is None:
        if mapped is None:
            want = "hook=(hook_name, hook_name_out)" if transcoder else "hook='blocks.L.hook_...'"
            raise ValueError(f"{where}: no hook name is known for this {kind} (its folder names no published hook "
                             f"point interp maps, see interp.sae.pretrained.PUBLISHED_HOOKS); pass {want}")
        return mapped
    if isinstance(hook, str):
        if transcoder and mapped is None:
            raise ValueError(f"{where} is a transcoder: pass hook=(hook_name, hook_name_out)")
        return hook, mapped[1] if transcoder else None
    if not (isinstance(hook, tuple) and len(hook) == 2 and all(isinstance(h, str) for h in hook)):
        raise TypeError(f"hook must be a hook name or a (hook_name, hook_name_out) pair, not {hook!r}")
    if transcoder != (hook[0] != hook[1]):
        what = "reads one hook and writes another" if transcoder else "reads and writes one hook"
        raise ValueError(f"hook={hook!r} names {'two hooks' if hook[0] != hook[1] else 'one hook'}, but {where} is "
                         f"a{'' if transcoder else 'n'} {kind}, which {what}; pass hook=(hook_name, hook_name_out) "
                         "for a transcoder and one name for an SAE")
    return hook if transcoder else (hook[0], None)


def _with_hook(d: Dictionary, hook, where: str) -> Dictionary:
    """``d`` with its hook names replaced by ``hook=`` (a SAELens file: its own names otherwise)."""
    current = (d.cfg.hook_name, d.cfg.hook_name_out if d.cfg.is_transcoder else None)
    hook_in, hook_out = _hooks(current, hook, d.cfg.is_transcoder, where)
    return dataclasses.replace(d, cfg=dataclasses.replace(d.cfg, hook_name=hook_in, hook_name_out=hook_out))
