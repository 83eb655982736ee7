"""Activations for dictionary training: text -> fixed-length contexts -> hooked model -> shuffled batches.

The stream is deterministic for a seed and resumable: it is cut into *chunks* (``buffer_tokens``
activations from consecutive contexts), each chunk is shuffled with a generator seeded by
``(seed, chunk index)`` and served in batches, so a position is just ``(chunk, batch)``. The model runs only
up to the hooked layer. ``cache_activations`` writes the same stream to disk once (safetensors shards) and
``CachedActivationStore`` replays it without the model.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from interp.weights._atomic import atomic_dir

# ----------------------------------------------------------------------------- text sources


def default_corpus() -> Iterator[str]:
    """Text that ships with Python itself: pydoc's topic pages, then the standard library's source files."""
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[key]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def _read_file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no} is not valid JSON ({e})") from None
                text = row.get("text") if isinstance(row, dict) else row
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{line_no} has no string 'text' field")
                yield text
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only for parquet corpora

        for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t)
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def iter_texts(corpus) -> Iterator[str]:
    """Documents from ``corpus``: None (the built-in default), a text/JSONL/Parquet file, a folder of them
    (sorted, recursively), or an iterable of strings."""
    if corpus is None:
        yield from default_corpus()
        return
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus {path} does not exist")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet", ".md"))
            if not files:
                raise ValueError(f"corpus folder {path} holds no .txt, .md, .jsonl or .parquet files")
            for f in files:
                yield from _read_file(f)
        else:
            yield from _read_file(path)
        return
    if isinstance(corpus, Iterable):
        for text in corpus:
            if not isinstance(text, str):
                raise TypeError(f"a corpus iterable must yield strings, got {type(text).__name__}")
            yield text
        return
    raise TypeError(f"corpus must be None, a path or an iterable of strings, not {type(corpus).__name__}")


def iter_contexts(tokenizer, corpus, context_size: int, *, cycle: bool = True) -> Iterator[np.ndarray]:
    """Fixed-length token contexts from the documents, joined by the end-of-text token."""
    sep = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    while True:
        buf: list[int] = []
        produced = False
        for text in iter_texts(corpus):
            buf.extend(tokenizer.encode(text, prepend_bos=False) + sep)
            while len(buf) >= context_size:
                produced = True
                yield np.asarray(buf[:context_size], np.int32)
                buf = buf[context_size:]
        if not produced:
            raise ValueError(
                f"the corpus holds fewer than {context_size} tokens{' (it is empty)' if not buf else ''}; "
                "pass more text or a smaller context_size"
            )
        if not cycle:
            return


# ----------------------------------------------------------------------------- stores


class _ChunkedStore:
    """Serves shuffled batches chunk by chunk; subclasses say how to build chunk ``i``."""

    def __init__(self, batch_size: int, chunk_size: int, seed: int):
        if chunk_size < batch_size:
            raise ValueError(f"buffer size {chunk_size} must hold at least one batch of {batch_size}")
        self.batch_size, self.chunk_size, self.seed = batch_size, chunk_size, seed
        self.chunk, self.batch = 0, 0
        self._loaded: tuple[int, tuple] | None = None

    def _build(self, i: int) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def _chunk_arrays(self, i: int):
        if self._loaded is None or self._loaded[0] != i:
            arrays = self._build(i)
            if self.seed is not None:  # seed None: serve in order (no shuffle)
                perm = np.random.default_rng([self.seed, i]).permutation(arrays[0].shape[0])
                arrays = tuple(a[perm] for a in arrays)
            self._loaded = (i, arrays)
        return self._loaded[1]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``: inputs ``[batch, d_in]`` and targets (the same array for an SAE)."""
        arrays = self._chunk_arrays(self.chunk)
        sl = slice(self.batch * self.batch_size, (self.batch + 1) * self.batch_size)
        out = tuple(a[sl] for a in arrays)
        self.batch += 1
        # a chunk serves whole batches; the few rows left over (after dropping skipped positions) are not used
        if (self.batch + 1) * self.batch_size > arrays[0].shape[0]:
            self.chunk, self.batch = self.chunk + 1, 0
        return out[0], out[-1]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state(self) -> dict:
        return {"chunk": self.chunk, "batch": self.batch}

    def restore(self, state: dict) -> None:
        self.chunk, self.batch = int(state["chunk"]), int(state["batch"])


class ActivationStore(_ChunkedStore):
    """Activations at ``hook_name`` (and ``hook_name_out`` for transcoders) of ``model`` on ``corpus``."""

    def __init__(self, model, hook_name: str, corpus=None, *, hook_name_out: str | None = None,
                 context_size: int = 128, model_batch: int = 16, buffer_tokens: int = 2**16,
                 batch_size: int = 4096, seed: int = 0, skip_positions: int = 0):
        if hook_name not in model.hook_names:
            from interp.hooks._names import suggest

            raise ValueError(f"unknown hook '{hook_name}'{suggest(hook_name, model.hook_names)}")
        super().__init__(batch_size, buffer_tokens, seed)
        if buffer_tokens % context_size:
            raise ValueError(f"buffer_tokens {buffer_tokens} must be a multiple of context_size {context_size}")
        self.model, self.corpus = model, corpus
        self.names = [hook_name] + ([hook_name_out] if hook_name_out and hook_name_out != hook_name else [])
        self.context_size, self.model_batch = context_size, model_batch
        self.skip_positions = skip_positions
        self.contexts_per_chunk = buffer_tokens // context_size
        self._contexts = None
        self._next_context = 0

    def _contexts_for(self, i: int) -> np.ndarray:
        start = i * self.contexts_per_chunk
        if self._contexts is None or self._next_context > start:
            self._contexts = iter_contexts(self.model.tokenizer, self.corpus, self.context_size)
            self._next_context = 0
        while self._next_context < start:  # skipping (e.g. on resume) only tokenizes
            next(self._contexts)
            self._next_context += 1
        rows = [next(self._contexts) for _ in range(self.contexts_per_chunk)]
        self._next_context += self.contexts_per_chunk
        return np.stack(rows)

    def _build(self, i: int):
        contexts = self._contexts_for(i)
        outs = {n: [] for n in self.names}
        for j in range(0, len(contexts), self.model_batch):
            _, cache = self.model.run_with_cache(contexts[j:j + self.model_batch], names=self.names, return_logits=False)
            for n in self.names:
                a = np.asarray(cache[n], np.float32)[:, self.skip_positions:]
                outs[n].append(a.reshape(-1, a.shape[-1]))
        return tuple(np.concatenate(outs[n]) for n in self.names)

    @property
    def d_in(self) -> int:
        return self.model.hook_shapes()[self.names[0]][-1]


def cache_activations(store: ActivationStore, n_tokens: int, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Write ``n_tokens`` activations of ``store``'s stream (unshuffled chunks) as safetensors shards.

    Each shard is one chunk, written atomically; re-running resumes after the last complete shard, and a
    manifest written last marks the cache complete.
    """
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-n_tokens // store.chunk_size)
    info = {"hooks": store.names, "context_size": store.context_size - store.skip_positions,
            "skipped_positions": store.skip_positions, "chunk_size": store.chunk_size,
            "n_chunks": n_chunks, "d": [store.model.hook_shapes()[n][-1] for n in store.names]}
    meta_path = out / "manifest.json"
    for i in tqdm(range(n_chunks), desc="caching activations", disable=not progress):
        shard = out / f"shard-{i:05d}"
        if (shard / "acts.safetensors").exists():
            continue
        arrays = store._build(i)
        with atomic_dir(shard) as tmp:
            save_file({f"a{j}": a for j, a in enumerate(arrays)}, str(tmp / "acts.safetensors"))
    meta_path.write_text(json.dumps(info, indent=2))
    return out


class CachedActivationStore(_ChunkedStore):
    """Replays activations written by ``cache_activations`` (cycling over the shards)."""

    def __init__(self, folder: str | Path, *, batch_size: int = 4096, seed: int = 0, skip_positions: int = 0):
        self.folder = Path(folder)
        self.skip_positions = skip_positions
        manifest = self.folder / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.folder} is not a complete activation cache (no manifest.json)")
        self.info = json.loads(manifest.read_text())
        super().__init__(batch_size, self.info["chunk_size"], seed)
        self.names = self.info["hooks"]

    def _build(self, i: int):
        from safetensors.numpy import load_file

        shard = self.folder / f"shard-{i % self.info['n_chunks']:05d}" / "acts.safetensors"
        data = load_file(str(shard))
        arrays = tuple(data[f"a{j}"] for j in range(len(self.names)))
        if self.skip_positions:  # rows are contexts laid end to end: drop each context's first positions
            T = self.info["context_size"]
            keep = np.arange(arrays[0].shape[0]) % T >= self.skip_positions
            arrays = tuple(a[keep] for a in arrays)
        return arrays

    @property
    def d_in(self) -> int:
        return self.info["d"][0]


class ArrayActivationStore(_ChunkedStore):
    """Activations you already have (``x [N D]``, optional targets ``y [N O]``), served like the others."""

    def __init__(self, x, y=None, *, batch_size: int = 4096, chunk_size: int | None = None, seed: int = 0):
        x = np.asarray(x, np.float32)
        chunk_size = chunk_size or (len(x) // batch_size) * batch_size
        if chunk_size <= 0 or len(x) < chunk_size:
            raise ValueError(f"need at least one batch ({batch_size}) of activations, got {len(x)}")
        super().__init__(batch_size, chunk_size, seed)
        self.x, self.y = x, (None if y is None else np.asarray(y, np.float32))
        self.names = ["x"] if y is None else ["x", "y"]
        self.n_chunks = len(x) // chunk_size

    def _build(self, i: int):
        sl = slice((i % self.n_chunks) * self.chunk_size, (i % self.n_chunks + 1) * self.chunk_size)
        return (self.x[sl],) if self.y is None else (self.x[sl], self.y[sl])

    @property
    def d_in(self) -> int:
        return self.x.shape[-1]


def estimate_norm_scale(store, n_batches: int = 4) -> float:
    """SAELens's 'expected_average_only_in' factor: ``sqrt(d) / mean ||x||`` over a few batches (the store's
    position is left unchanged)."""
    saved = store.state()
    norms = []
    for _ in range(n_batches):
        x, _ = store.next_batch()
        norms.append(np.linalg.norm(x, axis=-1).mean())
    store.restore(saved)
    return float(np.sqrt(x.shape[-1]) / np.mean(norms))
