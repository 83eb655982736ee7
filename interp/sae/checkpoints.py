"""A run's files: atomic checkpoints with checksums, finding the newest that verifies, the output folder's checks,
and what makes a checkpoint belong to a run (its settings and its data, not where its files live)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from interp._io import atomic_dir
from interp.weights.fingerprint import file_sha256

if TYPE_CHECKING:
    from interp.sae.train_config import TrainConfig
    from interp.sae.trainer import TrainState


def _flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


STATE = "state.safetensors"
_STEP_DIR = re.compile(r"step-\d+")
# what an interrupted atomic write leaves beside its target (interp._io): the temporary folder or
# file, or the folder it was replacing
_LEFTOVER = re.compile(r"\..+\.(partial|old)-[A-Za-z0-9_]+")


def _meta_sha256(meta: dict) -> str:
    """Checksum of the metadata's own fields (all but ``sha256``), over their canonical JSON."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_checkpoint(folder: Path, state: TrainState, meta: dict) -> Path:
    """Write ``state`` and ``meta`` to ``folder`` atomically; ``meta.json`` records the sha256 of the state file
    and of its own fields, which ``checkpoint_problem`` verifies."""
    from safetensors.numpy import save_file

    with atomic_dir(folder) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in _flat(state).items()}, str(tmp / STATE))
        meta = {**meta, "sha256": {STATE: file_sha256(tmp / STATE)}}
        meta["sha256"]["meta"] = _meta_sha256(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_checkpoint(folder: Path, template: TrainState) -> tuple[TrainState, dict]:
    from safetensors.numpy import load_file

    arrays = load_file(str(folder / STATE))
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"checkpoint {folder} does not match this config (missing {missing[:3]})")
    leaves = [jnp.asarray(arrays[n], dtype=leaf.dtype).reshape(jnp.shape(leaf))
              for n, (_, leaf) in zip(names, paths_leaves)]
    return jax.tree_util.tree_unflatten(treedef, leaves), json.loads((folder / "meta.json").read_text())


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be trusted (None: it verifies against its checksums)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json is missing"
    except ValueError:
        return "meta.json is not valid JSON"
    if not isinstance(meta, dict):
        return "meta.json holds no checkpoint metadata"
    sums = meta.get("sha256")
    if sums is not None and (not isinstance(sums, dict) or sums.get("meta") != _meta_sha256(meta)):
        return "meta.json does not match its sha256 checksum (corrupted)"
    if not (folder / STATE).is_file():
        return f"{STATE} is missing"
    if sums is None:  # written before checkpoints carried checksums: only the file's structure can be checked
        from safetensors import safe_open

        try:
            with safe_open(str(folder / STATE), "numpy"):
                pass
        except Exception as e:  # safetensors raises its own error types for damaged files
            return f"{STATE} cannot be read ({e})"
        return None
    if sums.get(STATE) != file_sha256(folder / STATE):
        return f"{STATE} does not match its sha256 checksum (truncated or corrupted)"
    return None


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first, whether or not they verify."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()),
                  key=lambda p: int(p.name[5:]))


def find_checkpoint(out_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``out_dir/checkpoints`` that verifies, and why each newer one does not."""
    skipped = []
    for folder in reversed(checkpoint_dirs(out_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append(f"{folder} ({problem})")
    return None, skipped


def latest_checkpoint(out_dir: Path) -> Path | None:
    return find_checkpoint(out_dir)[0]


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write and remove a file there, so a run learns that it cannot save before it trains."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe.partial-{secrets.token_hex(6)}"  # a leftover name: a kill here leaves nothing
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)  # another process cleaning this folder may have removed it: it was written
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
        raise type(e)(f"cannot write the output folder {folder}: {why}; choose another out_dir (--out)") from None


def prepare_out_dir(out_dir: Path) -> None:
    """Check that the run can write ``out_dir`` and its checkpoints, and remove what writes interrupted by a crash
    or a kill left there: the leftovers of atomic writes in those two folders, nothing else."""
    for folder in (out_dir, out_dir / "checkpoints"):
        check_writable(folder)
        for entry in folder.iterdir():
            if _LEFTOVER.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


_DATA = ("corpus", "activation_cache")


def _fingerprint(path) -> str:
    """The data at ``path``, wherever it lives: how many files, their bytes, and a checksum of their names (relative
    to ``path``) and sizes. Reading every byte would take minutes on a large corpus or cache."""
    path = Path(path).expanduser()
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(p.relative_to(path).as_posix(), p.stat().st_size) for p in files]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return f"{len(files)} files, {sum(size for _, size in listing)} bytes, names and sizes sha256 {digest}"


# how the run is laid out over devices: a run may resume on another layout (or process count)
_LAYOUT = ("data_parallel", "latent_parallel")


def run_identity(cfg: TrainConfig) -> dict:
    """What makes a checkpoint belong to ``cfg``'s run: every setting that changes the numbers, and not where files
    live or how the run is laid out over devices. ``out_dir`` and the layout are left out, and a corpus or activation
    cache given as a path counts by its content (see ``_fingerprint``), so a run folder and its data can be copied,
    moved or renamed and the run resumed there; other data is another run."""
    d = json.loads(json.dumps(cfg.to_dict()))
    for key in ("out_dir", *_LAYOUT):
        del d[key]
    for key in _DATA:
        if isinstance(getattr(cfg, key), (str, os.PathLike)):
            d[key] = _fingerprint(getattr(cfg, key))
    return d


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    def show(v):
        return v if isinstance(v, str) else repr(v)

    out = []
    for key in [*now, *(k for k in saved if k not in now)]:
        a, b = saved.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            name = f"{key} (the data, not its location)" if key in _DATA and not prefix else prefix + key
            out.append(f"{name}: checkpoint {show(a)}, now {show(b)}")
    return out


def check_same_run(meta: dict, cfg: TrainConfig, folder: Path) -> None:
    """Refuse to resume ``cfg`` from a checkpoint of another run, naming each setting that differs."""
    now = run_identity(cfg)
    saved = meta.get("identity")
    if saved is None:  # written before checkpoints recorded their identity: paths are all they say of the data
        saved = {k: v for k, v in meta["config"].items() if k != "out_dir"}
        saved.update({k: now[k] for k in _DATA if isinstance(getattr(cfg, k), (str, os.PathLike))})
    saved = {k: v for k, v in saved.items() if k not in _LAYOUT}
    diffs = _differences(saved, now)
    if diffs:
        raise ValueError(f"--resume with a different config than the checkpoint {folder}: {'; '.join(diffs)}. "
                         "Resume with the checkpoint's settings, or start a new run in another out_dir")
