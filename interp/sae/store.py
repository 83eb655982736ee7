"""Activations for dictionary training: text -> fixed-length contexts -> hooked model -> shuffled batches.

The stream is deterministic for a seed and resumable: it is cut into *chunks* (``buffer_tokens``
activations from consecutive contexts), each chunk is shuffled with a generator seeded by
``(seed, chunk index)`` and served in batches, so a position is just ``(chunk, batch)``. The model runs only
up to the hooked layer. ``cache_activations`` writes the same stream to disk once (safetensors shards) and
``CachedActivationStore`` replays it without the model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike, Float

from interp._io import atomic_dir, atomic_file
from interp.checks import check_range
from interp.weights.fingerprint import weights_hash
from interp.weights.hf import read_json


def _positive(**values) -> None:
    for name, v in values.items():
        check_range(name, v, 1, integer=True)


def _skip_ok(skip: int, context_size: int) -> None:
    check_range("skip_positions", skip, 0, context_size, integer=True, hi_open=True,
                note=f": it leaves out the first positions of each context of {context_size}, and one must remain")


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


def _read_text(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    # a few stray bytes in real text are replaced as before; a file mostly of NULs or invalid UTF-8 is not text
    bad = text.count("\ufffd") + text.count("\x00")
    if bad > 0.1 * len(text):
        raise ValueError(f"corpus file {path} looks binary: {bad / len(text):.0%} of it is NUL bytes or invalid "
                         "UTF-8; pass UTF-8 text files, or JSONL/Parquet with a 'text' field")
    return text


def _read_file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        try:
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
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e}); JSONL corpora must be UTF-8") from None
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only for parquet corpora

        for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t)
    else:
        yield _read_text(path)


def iter_texts(corpus) -> Iterator[str]:
    """Documents from ``corpus``: None (the built-in default), a text/JSONL/Parquet file, a folder of them
    (sorted, recursively), an iterable of strings, or a callable returning one (called again for every pass,
    so a generator function can be read more than once)."""
    if corpus is None:
        yield from default_corpus()
        return
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus {path} does not exist")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet", ".md"))
            if not files:
                raise ValueError(f"corpus folder {path} holds no .txt, .md, .jsonl or .parquet files")
            for f in files:
                yield from _read_file(f)
        else:
            yield from _read_file(path)
        return
    if callable(corpus) and not isinstance(corpus, Iterable):
        corpus = corpus()
    if isinstance(corpus, Iterable):
        for text in corpus:
            if not isinstance(text, str):
                raise TypeError(f"a corpus iterable must yield strings, got {type(text).__name__}")
            yield text
        return
    raise TypeError(f"corpus must be None, a path, an iterable of strings or a callable returning one, not "
                    f"{type(corpus).__name__}")


def _corpus_name(corpus) -> str:
    if corpus is None:
        return "the built-in corpus"
    if isinstance(corpus, (str, os.PathLike)):
        return f"corpus {Path(corpus).expanduser()}"
    return "the corpus iterator" if isinstance(corpus, Iterator) else "the corpus iterable"


def iter_contexts(tokenizer, corpus, context_size: int, *, cycle: bool = True,
                  n_contexts: int | None = None) -> Iterator[np.ndarray]:
    """Fixed-length token contexts from the documents, joined by the end-of-text token.

    With ``cycle`` a corpus that runs out is read again from the start (with one warning, which says how often
    when ``n_contexts``, the number of contexts the caller will draw, is given)."""
    _positive(context_size=context_size)
    sep = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    one_shot = isinstance(corpus, Iterator)
    for pass_no in itertools.count():
        buf: list[int] = []
        produced = n_tokens = 0
        has_text = False
        for text in iter_texts(corpus):
            ids = tokenizer.encode(text, prepend_bos=False) + sep
            n_tokens += len(ids)
            buf.extend(ids)
            # contexts are held back until the corpus shows some text, so a blank corpus fails before any is used
            has_text = has_text or bool(text.strip())
            while has_text and len(buf) >= context_size:
                produced += 1
                yield np.asarray(buf[:context_size], np.int32)
                buf = buf[context_size:]
        name = _corpus_name(corpus)
        reread = ("pass a re-iterable corpus: a list, a path, or a callable returning a fresh iterator (e.g. the "
                  "generator function itself)")
        if one_shot and pass_no and n_tokens == 0:
            raise ValueError(f"{name} was exhausted after one pass: an iterator (such as a generator) can be read "
                             f"once, and the stream needs it again; {reread}")
        if n_tokens and not has_text:
            raise ValueError(f"{name} holds only whitespace ({n_tokens} tokens); pass a corpus with text")
        if not produced:
            why = ""
            if not n_tokens:
                why = f" (it is empty, or an iterator that was read before: {reread})" if one_shot else " (it is empty)"
            raise ValueError(f"{name} holds fewer than {context_size} tokens{why}; pass more text or a smaller "
                             "context_size")
        if not cycle:
            return
        if pass_no == 0 and not one_shot:
            times = f"read {-(-n_contexts // produced)} times for the {n_contexts} contexts asked" if n_contexts \
                else "read again from the start as often as needed"
            warnings.warn(f"{name} holds only {n_tokens} tokens ({produced} contexts of {context_size}); it is "
                          f"{times}, so the same activations repeat: pass more text for more varied ones", stacklevel=2)


# ----------------------------------------------------------------------------- stores


class _ChunkedStore:
    """Serves shuffled batches chunk by chunk; subclasses say how to build chunk ``i``."""

    def __init__(self, batch_size: int, chunk_size: int, seed: int):
        _positive(batch_size=batch_size, chunk_size=chunk_size)
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

    def next_batch(self) -> tuple[Float[np.ndarray, "N D"], Float[np.ndarray, "N O"]]:
        """``(x, y)``: inputs ``[N D]`` (N = batch_size) and targets ``[N O]`` (the same array for an SAE)."""
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


def _rows_check(rows: int, batch_size: int, why: str, fix: str) -> None:
    if rows < batch_size:
        raise ValueError(f"{why} gives {rows} activations per chunk, fewer than one batch of {batch_size}; {fix}")


class ActivationStore(_ChunkedStore):
    """Activations at ``hook_name`` (and ``hook_name_out`` for transcoders) of ``model`` on ``corpus``.

    ``n_tokens``, the number of activations the caller will draw, says how often a corpus too small for it is
    repeated, and lets the last chunk harvest only the batches still to be drawn (in whole forward passes) rather
    than a whole buffer. ``on_harvest``, when set, is called with the number of activations each forward pass of
    the model yields (progress bars count with it).

    Contexts are cut from the documents' tokens joined by the end-of-text token, with no BOS token put at their
    start (SAELens's ``prepend_bos=False``), whatever the tokenizer does for a single prompt."""

    prepend_bos = False

    def __init__(self, model, hook_name: str, corpus=None, *, hook_name_out: str | None = None,
                 context_size: int = 128, model_batch: int = 16, buffer_tokens: int = 2**16,
                 batch_size: int = 4096, seed: int = 0, skip_positions: int = 0, n_tokens: int | None = None):
        if hook_name not in model.hook_names:
            from interp.hooks import suggest

            raise ValueError(f"unknown hook '{hook_name}'{suggest(hook_name, model.hook_names)}")
        _positive(context_size=context_size, model_batch=model_batch, buffer_tokens=buffer_tokens,
                  batch_size=batch_size, **({} if n_tokens is None else {"n_tokens": n_tokens}))
        _skip_ok(skip_positions, context_size)
        if buffer_tokens % context_size:
            raise ValueError(f"buffer_tokens {buffer_tokens} must be a multiple of context_size {context_size}")
        self.contexts_per_chunk = buffer_tokens // context_size
        self.rows_per_chunk = self.contexts_per_chunk * (context_size - skip_positions)
        _rows_check(self.rows_per_chunk, batch_size,
                    f"buffer_tokens={buffer_tokens} in contexts of {context_size} less their first {skip_positions}",
                    "raise buffer_tokens or lower batch_size")
        super().__init__(batch_size, buffer_tokens, seed)
        self.model, self.corpus = model, corpus
        self.names = [hook_name] + ([hook_name_out] if hook_name_out and hook_name_out != hook_name else [])
        self.context_size, self.model_batch = context_size, model_batch
        self.skip_positions, self.n_tokens = skip_positions, n_tokens
        self._contexts = None
        self._next_context = 0
        self.on_harvest = None

    def rows_ahead(self, n_batches: int) -> int:
        """Activations the model yields while the next ``n_batches`` batches are served (a chunk that is loaded
        already is not harvested again)."""
        if n_batches <= 0:
            return 0
        last = self.chunk + (self.batch + n_batches - 1) // (self.rows_per_chunk // self.batch_size)
        loaded = self._loaded is not None and self._loaded[0] == self.chunk
        kept = self.context_size - self.skip_positions
        return sum(self._chunk_contexts(c) for c in range(self.chunk + loaded, last + 1)) * kept

    def _chunk_contexts(self, i: int) -> int:
        """Contexts chunk ``i`` holds: a buffer's worth, except the last chunk of ``n_tokens`` activations, which
        holds the batches still to be drawn, rounded up to whole forward passes of ``model_batch`` contexts."""
        if self.n_tokens is None:
            return self.contexts_per_chunk
        per_chunk = self.rows_per_chunk // self.batch_size  # batches a whole chunk serves
        left = -(-self.n_tokens // self.batch_size) - i * per_chunk
        if left <= 0 or left >= per_chunk:
            return self.contexts_per_chunk
        contexts = -(-left * self.batch_size // (self.context_size - self.skip_positions))
        return min(-(-contexts // self.model_batch) * self.model_batch, self.contexts_per_chunk)

    def stream_metadata(self) -> dict:
        """The facts about these activations that SAELens keeps in a dictionary's ``cfg.json`` metadata."""
        return {"context_size": self.context_size, "prepend_bos": self.prepend_bos,
                "seqpos_slice": [self.skip_positions, None]}

    def _contexts_for(self, i: int) -> np.ndarray:
        start = i * self.contexts_per_chunk
        if self._contexts is None or self._next_context > start:
            n_contexts = None
            if self.n_tokens is not None:
                served = self.rows_per_chunk // self.batch_size * self.batch_size
                n_contexts = -(-self.n_tokens // served) * self.contexts_per_chunk
            self._contexts = iter_contexts(self.model.tokenizer, self.corpus, self.context_size, n_contexts=n_contexts)
            self._next_context = 0
        while self._next_context < start:  # skipping (e.g. on resume) only tokenizes
            next(self._contexts)
            self._next_context += 1
        rows = [next(self._contexts) for _ in range(self._chunk_contexts(i))]
        self._next_context += len(rows)
        return np.stack(rows)

    def _build(self, i: int):
        return self._activations(self._contexts_for(i))

    def _activations(self, contexts: np.ndarray):
        outs = {n: [] for n in self.names}
        for j in range(0, len(contexts), self.model_batch):
            _, cache = self.model.run_with_cache(contexts[j:j + self.model_batch], names=self.names,
                                                 return_logits=False)
            for n in self.names:
                a = np.asarray(cache[n], np.float32)[:, self.skip_positions:]
                outs[n].append(a.reshape(-1, a.shape[-1]))
            if self.on_harvest is not None:
                self.on_harvest(len(outs[self.names[0]][-1]))
        return tuple(np.concatenate(outs[n]) for n in self.names)

    @property
    def d_in(self) -> int:
        return self.model.hook_shapes()[self.names[0]][-1]


_MANIFEST = ("an activation cache manifest", "delete the cache folder and cache the activations again")


def _show(v):
    return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else repr(v)  # sha256 digests, shortened


def _check_same_stream(out: Path, manifest: Path, identity: dict) -> None:
    """A folder holds one stream: resuming into it with another hook, model, corpus or layout would mix shards."""
    fix = "cache into another folder, or delete this one to start over"
    if manifest.exists():
        old = read_json(manifest, *_MANIFEST)
        differ = [k for k in identity if old.get(k) != identity[k]]
        if differ:
            listing = "; ".join(f"{k}: {_show(old[k]) if k in old else '(not recorded)'} there, "
                                f"{_show(identity[k])} now" for k in differ)
            raise ValueError(f"{out} holds activations of another stream ({listing}); {fix}")
    elif any(out.glob("shard-*")):
        raise ValueError(f"{out} holds shards but no manifest.json, so what they hold is unknown; {fix}")


def cache_activations(store: ActivationStore, n_tokens: int, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Write ``n_tokens`` activations of ``store``'s stream (unshuffled chunks) as safetensors shards.

    Each shard is one chunk, written atomically; re-running with the same stream (hooks, model weights, corpus,
    context and chunk sizes, skipped positions) resumes after the complete shards, and a folder holding another
    stream is refused. The manifest records the stream and whether the cache is complete.
    """
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    _positive(n_tokens=n_tokens)
    out = Path(out_dir)
    n_chunks = -(-n_tokens // store.chunk_size)
    store.n_tokens = n_chunks * (store.rows_per_chunk // store.batch_size * store.batch_size)
    first = store._contexts_for(0)  # tokens of the first chunk identify the corpus (and tokenizer) cheaply
    identity = {"hooks": list(store.names), "context_size": store.context_size - store.skip_positions,
                "skipped_positions": store.skip_positions, "chunk_size": store.chunk_size,
                "d": [store.model.hook_shapes()[n][-1] for n in store.names], "dtype": "float32",
                "model_weights_sha256": weights_hash(store.model),
                "corpus_sha256": hashlib.sha256(first.tobytes()).hexdigest()}
    manifest = out / "manifest.json"
    _check_same_stream(out, manifest, identity)

    def write_manifest(complete: bool):
        with atomic_file(manifest, "w") as fh:
            json.dump({**identity, "n_chunks": n_chunks, "complete": complete}, fh, indent=2)

    missing = [i for i in range(n_chunks) if not (out / f"shard-{i:05d}" / "acts.safetensors").exists()]
    if missing:
        write_manifest(False)
    bar = tqdm(total=len(missing) * store.rows_per_chunk, desc="caching activations", unit="tok", unit_scale=True,
               disable=not progress)
    store.on_harvest = bar.update
    try:
        for i in missing:
            arrays = store._activations(first if i == 0 else store._contexts_for(i))
            with atomic_dir(out / f"shard-{i:05d}") as tmp:
                save_file({f"a{j}": a for j, a in enumerate(arrays)}, str(tmp / "acts.safetensors"))
    finally:
        store.on_harvest = None
        bar.close()
    write_manifest(True)
    return out


_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _unreadable(path: Path, e: Exception) -> ValueError:
    return ValueError(f"{path} cannot be read ({e}): it is truncated or corrupt; delete it and run cache_activations "
                      "again with the same store to rewrite it")


class CachedActivationStore(_ChunkedStore):
    """Replays activations written by ``cache_activations`` (cycling over the shards).

    ``skip_positions`` counts from the start of each original context: positions the cache already left out are
    not left out twice. The manifest and every shard's header are checked when the store is made."""

    _REQUIRED = (("hooks", list), ("context_size", int), ("skipped_positions", int), ("chunk_size", int),
                 ("n_chunks", int), ("d", list))

    def __init__(self, folder: str | Path, *, batch_size: int = 4096, seed: int = 0, skip_positions: int = 0):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.folder} is not a complete activation cache (no manifest.json)")
        self.info = info = read_json(manifest, *_MANIFEST)
        for key, kind in self._REQUIRED:
            if not isinstance(info.get(key), kind):
                raise ValueError(f"{manifest} lacks '{key}' (or it is not a {kind.__name__}); it was not written by "
                                 "cache_activations: delete the folder and cache the activations again")
        if len(info["d"]) != len(info["hooks"]) or min(info["context_size"], info["chunk_size"], info["n_chunks"]) <= 0:
            raise ValueError(f"{manifest} is inconsistent (hooks {info['hooks']}, d {info['d']}, context_size "
                             f"{info['context_size']}, chunk_size {info['chunk_size']}, n_chunks {info['n_chunks']}); "
                             "delete the folder and cache the activations again")
        if not info.get("complete", True):
            raise ValueError(f"{self.folder} is an unfinished activation cache; run cache_activations again with the "
                             "same store to finish it")
        _positive(batch_size=batch_size)
        T, skipped = info["context_size"], info["skipped_positions"]
        _skip_ok(skip_positions, T + skipped)
        contexts = info["chunk_size"] // (T + skipped)
        self.shard_rows = contexts * T
        self.extra_skip = max(0, skip_positions - skipped)
        _rows_check(contexts * (T - self.extra_skip), batch_size,
                    f"a cache of {contexts} contexts of {T + skipped} per shard read with "
                    f"skip_positions={skip_positions}",
                    "lower batch_size or cache with a larger buffer_tokens")
        super().__init__(batch_size, contexts * (T - self.extra_skip), seed)
        self.names, self.skip_positions = info["hooks"], skip_positions
        self._check_shards()

    def _shard(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}" / "acts.safetensors"

    def _check_shards(self) -> None:
        from safetensors import SafetensorError, safe_open

        n = self.info["n_chunks"]
        missing = [self._shard(i).parent.name for i in range(n) if not self._shard(i).exists()]
        if missing:
            raise ValueError(f"{self.folder} lacks {len(missing)} of its {n} shards ({', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}); run cache_activations again with the same store "
                             "to rewrite them")
        for i in range(n):
            path = self._shard(i)
            try:
                with safe_open(str(path), framework="numpy") as f:
                    got = {k: (_DTYPES.get(f.get_slice(k).get_dtype(), f.get_slice(k).get_dtype()),
                               tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            except (SafetensorError, OSError) as e:
                raise _unreadable(path, e) from None
            for j, d in enumerate(self.info["d"]):
                want = ("float32", (self.shard_rows, d))
                if got.get(f"a{j}") != want:
                    have = "missing" if f"a{j}" not in got else " ".join(map(str, got[f"a{j}"]))
                    raise ValueError(f"{path}: a{j} is {have}, but the manifest implies {' '.join(map(str, want))}; "
                                     "delete it and run cache_activations again with the same store to rewrite it")

    def _build(self, i: int):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = self._shard(i % self.info["n_chunks"])
        try:
            data = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise _unreadable(path, e) from None
        arrays = tuple(data[f"a{j}"] for j in range(len(self.names)))
        if self.extra_skip:  # rows are contexts laid end to end: drop each context's first positions
            keep = np.arange(arrays[0].shape[0]) % self.info["context_size"] >= self.extra_skip
            arrays = tuple(a[keep] for a in arrays)
        return arrays

    def stream_metadata(self) -> dict:
        """The facts about these activations that SAELens keeps in a dictionary's ``cfg.json`` metadata
        (``cache_activations`` writes an ``ActivationStore``'s stream: no BOS at the start of a context)."""
        skipped = self.info["skipped_positions"]
        return {"context_size": self.info["context_size"] + skipped, "prepend_bos": ActivationStore.prepend_bos,
                "seqpos_slice": [max(skipped, self.skip_positions), None]}

    @property
    def d_in(self) -> int:
        return self.info["d"][0]


class ArrayActivationStore(_ChunkedStore):
    """Activations you already have (``x [N D]``, optional targets ``y [N O]``), served like the others."""

    def __init__(self, x: Float[ArrayLike, "N D"], y: Float[ArrayLike, "N O"] | None = None, *, batch_size: int = 4096,
                 chunk_size: int | None = None, seed: int = 0):
        x = np.asarray(x, np.float32)
        y = None if y is None else np.asarray(y, np.float32)
        for name, a in (("x", x), ("y", y)):
            if a is not None and a.ndim != 2:
                raise ValueError(f"{name} must be [N, d], got shape {a.shape}")
        if y is not None and len(y) != len(x):
            raise ValueError(f"y has {len(y)} rows but x has {len(x)}; targets pair with inputs row by row")
        _positive(batch_size=batch_size, **({} if chunk_size is None else {"chunk_size": chunk_size}))
        chunk_size = chunk_size or (len(x) // batch_size) * batch_size
        if chunk_size <= 0 or len(x) < chunk_size:
            raise ValueError(f"need at least one batch ({batch_size}) of activations, got {len(x)}")
        super().__init__(batch_size, chunk_size, seed)
        self.x, self.y = x, y
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
    _positive(n_batches=n_batches)
    saved = store.state()
    norms = []
    for _ in range(n_batches):
        x, _ = store.next_batch()
        norms.append(np.linalg.norm(x, axis=-1).mean())
    store.restore(saved)
    return float(np.sqrt(x.shape[-1]) / np.mean(norms))
