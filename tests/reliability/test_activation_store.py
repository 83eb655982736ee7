"""Activation caches and corpora never give silently wrong activations: a cache folder holds one stream or is refused,
a cache that is incomplete or inconsistent says so, and a corpus that cannot be what the user meant is named."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import equinox as eqx
import numpy as np
import pytest

from interp import sae
from interp.sae.store import estimate_norm_scale, iter_contexts

HOOK = "blocks.0.hook_resid_post"


class CharTokenizer:
    """One token per character, end of text 0: token counts are easy to reason about."""

    eos_id = 0

    def encode(self, text, prepend_bos=False):
        return [1 + ord(c) % 96 for c in text]


TEXTS = [" ".join(f"word{(i * 7 + j) % 13}" for j in range(30)) for i in range(40)]  # ~8,000 tokens


@pytest.fixture(scope="module")
def model(tiny3):
    return dataclasses.replace(tiny3, tokenizer=CharTokenizer())


KW = dict(context_size=16, buffer_tokens=128, batch_size=32, model_batch=4, seed=0)


def store(model, hook=HOOK, corpus=TEXTS, **kw):
    return sae.ActivationStore(model, hook, corpus, **{**KW, **kw})


def cache(model, folder, n_tokens=256, **kw):
    return sae.cache_activations(store(model, **kw), n_tokens, folder, progress=False)


# ----------------------------------------------------------------------------- writing a cache


@pytest.mark.parametrize("change, field", [
    (dict(hook="blocks.1.hook_resid_post"), "hooks"),
    (dict(context_size=32), "context_size"),
    (dict(skip_positions=1), "skipped_positions"),
    (dict(buffer_tokens=256), "chunk_size"),
    (dict(corpus=TEXTS[1:]), "corpus"),
])
def test_a_cache_folder_of_another_stream_is_refused(model, tmp_path, change, field):
    cache(model, tmp_path / "acts")
    before = (tmp_path / "acts" / "manifest.json").read_text()
    with pytest.raises(ValueError, match=f"holds activations of another stream.*{field}.*another folder.*delete") as e:
        cache(model, tmp_path / "acts", **change)
    assert str(tmp_path / "acts") in str(e.value)
    assert (tmp_path / "acts" / "manifest.json").read_text() == before


def test_a_cache_of_other_weights_is_refused(model, tmp_path):
    cache(model, tmp_path / "acts")
    other = eqx.tree_at(lambda m: m.ln_final.weight, model, model.ln_final.weight * 2)
    with pytest.raises(ValueError, match="another stream.*model"):
        sae.cache_activations(store(other), 256, tmp_path / "acts", progress=False)


def test_shards_without_a_manifest_are_refused(model, tmp_path):
    cache(model, tmp_path / "acts")
    (tmp_path / "acts" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="shards but no manifest.json.*delete"):
        cache(model, tmp_path / "acts")


def test_resuming_a_matching_cache_extends_it(model, tmp_path):
    cache(model, tmp_path / "whole", n_tokens=384)
    cache(model, tmp_path / "part", n_tokens=128)
    shard0 = tmp_path / "part" / "shard-00000" / "acts.safetensors"
    mtime = shard0.stat().st_mtime_ns
    # a one-shot generator works too: resuming reads it once
    cache(model, tmp_path / "part", n_tokens=384, corpus=(t for t in TEXTS))
    assert shard0.stat().st_mtime_ns == mtime
    a = sae.CachedActivationStore(tmp_path / "whole", batch_size=32, seed=None)
    b = sae.CachedActivationStore(tmp_path / "part", batch_size=32, seed=None)
    for _ in range(12):
        np.testing.assert_array_equal(a.next_batch()[0], b.next_batch()[0])


def test_caching_a_generator_corpus_reads_it_once(model, tmp_path):
    cache(model, tmp_path / "a", n_tokens=384)
    cache(model, tmp_path / "b", n_tokens=384, corpus=(t for t in TEXTS))
    for i in range(3):
        name = f"shard-{i:05d}/acts.safetensors"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ----------------------------------------------------------------------------- reading a cache


def test_a_shard_listed_but_missing_is_named(model, tmp_path):
    cache(model, tmp_path / "acts", n_tokens=384)
    import shutil

    shutil.rmtree(tmp_path / "acts" / "shard-00001")
    with pytest.raises(ValueError, match=r"lacks 1 of its 3 shards \(shard-00001\).*cache_activations again"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32)


def test_a_shard_of_the_wrong_shape_is_named(model, tmp_path):
    from safetensors.numpy import save_file

    cache(model, tmp_path / "acts", n_tokens=384)
    save_file({"a0": np.zeros((128, 7), np.float32)}, str(tmp_path / "acts" / "shard-00002" / "acts.safetensors"))
    with pytest.raises(ValueError, match=re.escape("shard-00002/acts.safetensors: a0 is float32 (128, 7), but the "
                                                   "manifest implies float32 (128, 32)")):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32)


def test_a_truncated_shard_is_named(model, tmp_path):
    cache(model, tmp_path / "acts")
    shard = tmp_path / "acts" / "shard-00001" / "acts.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="shard-00001/acts.safetensors cannot be read.*delete it"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32)


def test_an_unfinished_or_broken_manifest_is_named(model, tmp_path):
    cache(model, tmp_path / "acts")
    manifest = tmp_path / "acts" / "manifest.json"
    info = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(ValueError, match="unfinished.*cache_activations again"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32)
    manifest.write_text(json.dumps({k: v for k, v in info.items() if k != "d"}))
    with pytest.raises(ValueError, match="manifest.json lacks 'd'"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32)
    manifest.write_text("{")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32)


def test_skip_positions_count_from_the_start_of_each_context(model, tmp_path):
    """A cache that already left out the first position, read with skip_positions=1, serves the same rows as the
    live stream with skip_positions=1, not one position fewer."""
    cache(model, tmp_path / "acts", skip_positions=1)
    live = store(model, skip_positions=1, seed=None)
    cached = sae.CachedActivationStore(tmp_path / "acts", batch_size=32, seed=None, skip_positions=1)
    for _ in range(3):
        np.testing.assert_array_equal(cached.next_batch()[0], live.next_batch()[0])
    two = sae.CachedActivationStore(tmp_path / "acts", batch_size=32, seed=None, skip_positions=2)
    np.testing.assert_array_equal(two.next_batch()[0], store(model, skip_positions=2, seed=None).next_batch()[0])


# ----------------------------------------------------------------------------- numbers at the boundary


@pytest.mark.parametrize("kw, match", [
    (dict(context_size=0), r"context_size=0 must be a positive integer \(>= 1\)"),
    (dict(batch_size=0), r"batch_size=0 must be a positive integer \(>= 1\)"),
    (dict(model_batch=0), r"model_batch=0 must be a positive integer \(>= 1\)"),
    (dict(skip_positions=-1), r"skip_positions=-1 must be an integer in \[0, 16\)"),
    (dict(skip_positions=16), r"skip_positions=16 must be an integer in \[0, 16\)"),
    (dict(batch_size=128, skip_positions=1), r"gives 120 activations per chunk, fewer than one batch of 128"),
])
def test_activation_store_numbers(model, kw, match):
    with pytest.raises(ValueError, match=match):
        store(model, **kw)


@pytest.mark.parametrize("n", [0, -5])
def test_cache_activations_needs_tokens(model, tmp_path, n):
    with pytest.raises(ValueError, match=rf"n_tokens={n} must be a positive integer \(>= 1\)"):
        cache(model, tmp_path / "acts", n_tokens=n)
    assert not (tmp_path / "acts").exists()


def test_cached_store_numbers(model, tmp_path):
    cache(model, tmp_path / "acts")
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer \(>= 1\)"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=0)
    with pytest.raises(ValueError, match=r"skip_positions=-1 must be an integer in \[0, 16\)"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32, skip_positions=-1)
    with pytest.raises(ValueError, match=r"skip_positions=16 must be an integer in \[0, 16\)"):
        sae.CachedActivationStore(tmp_path / "acts", batch_size=32, skip_positions=16)


def test_array_store_and_norm_scale_numbers():
    x = np.ones((100, 4), np.float32)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer \(>= 1\)"):
        sae.ArrayActivationStore(x, batch_size=0)
    with pytest.raises(ValueError, match=r"chunk_size=0 must be a positive integer \(>= 1\)"):
        sae.ArrayActivationStore(x, batch_size=10, chunk_size=0)
    with pytest.raises(ValueError, match=r"x must be \[N, d\], got shape \(100,\)"):
        sae.ArrayActivationStore(x[:, 0], batch_size=10)
    with pytest.raises(ValueError, match=r"y has 99 rows but x has 100"):
        sae.ArrayActivationStore(x, x[:99], batch_size=10)
    with pytest.raises(ValueError, match=r"n_batches=0 must be a positive integer \(>= 1\)"):
        estimate_norm_scale(sae.ArrayActivationStore(x, batch_size=10), n_batches=0)


def test_iter_contexts_needs_a_positive_context_size():
    with pytest.raises(ValueError, match=r"context_size=0 must be a positive integer \(>= 1\)"):
        next(iter_contexts(CharTokenizer(), TEXTS, 0))


# ----------------------------------------------------------------------------- corpora


def test_whitespace_corpora_are_refused(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text(" \n\t " * 500)
    with pytest.raises(ValueError, match=f"corpus {re.escape(str(path))} holds only whitespace"):
        next(iter_contexts(CharTokenizer(), path, 16))
    with pytest.raises(ValueError, match="corpus iterable holds only whitespace"):
        next(iter_contexts(CharTokenizer(), ["   ", "\n\n"] * 100, 16))
    # whitespace before the text is fine
    ctx = next(iter_contexts(CharTokenizer(), ["    "] + TEXTS, 16))
    assert ctx[:4].tolist() == [1 + ord(" ") % 96] * 4


def test_binary_files_are_refused(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=f"corpus file {re.escape(str(path))} looks binary"):
        next(iter_contexts(CharTokenizer(), path, 16))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(" ".join(TEXTS).encode("utf-16-le"))
    with pytest.raises(ValueError, match="utf16.txt looks binary.*NUL"):
        next(iter_contexts(CharTokenizer(), utf16, 16))
    # a few stray bytes in real text are read as before (replaced)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(" ".join(TEXTS).encode() + "café".encode("latin-1"))
    assert next(iter_contexts(CharTokenizer(), latin1, 16)).shape == (16,)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n\xff\xfe\x00\x01garbage\n')
    with pytest.raises(ValueError, match="rows.jsonl is not UTF-8 text"):
        list(sae.iter_texts(jsonl))


def test_a_small_corpus_is_repeated_with_one_warning():
    tok = CharTokenizer()
    with pytest.warns(UserWarning) as record:
        it = iter_contexts(tok, ["abc" * 10], 8, n_contexts=12)
        got = [next(it) for _ in range(12)]
    assert len(record) == 1
    msg = str(record[0].message)
    assert "holds only 31 tokens (3 contexts of 8)" in msg and "read 4 times" in msg
    np.testing.assert_array_equal(got[0], got[3])
    with warnings.catch_warnings():  # a corpus that is not exhausted does not warn
        warnings.simplefilter("error")
        it = iter_contexts(tok, ["abc" * 10], 8)
        [next(it) for _ in range(3)]


def test_caching_a_small_corpus_says_how_often_it_repeats(model, tmp_path):
    # 186 tokens make 11 contexts of 16; three shards of 8 contexts need 24
    with pytest.warns(UserWarning, match=r"holds only 186 tokens \(11 contexts of 16\).*read 3 times for the 24"):
        cache(model, tmp_path / "acts", n_tokens=384, corpus=TEXTS[:1])


def test_an_exhausted_generator_is_named():
    def gen():
        yield from TEXTS[:10]

    it = iter_contexts(CharTokenizer(), gen(), 64)
    with pytest.raises(ValueError, match="corpus iterator was exhausted.*read once.*list, a path, or a callable"):
        for _ in range(1000):
            next(it)
    # a callable is called again for every pass
    it = iter_contexts(CharTokenizer(), gen, 64)
    with pytest.warns(UserWarning, match="29 contexts of 64.*read again from the start"):
        first = [next(it) for _ in range(100)]
    np.testing.assert_array_equal(first[0], iter_contexts(CharTokenizer(), gen, 64).__next__())
    assert list(sae.iter_texts(gen)) == TEXTS[:10]


# ----------------------------------------------------------------------------- training from a cache


def test_training_on_a_cache_of_another_hook_is_refused(model, tmp_path):
    folder = cache(model, tmp_path / "acts", n_tokens=512)
    d_in = model.d_model
    other = sae.TopKConfig(d_in=d_in, width=16, k=2, hook_name="blocks.1.hook_resid_post")
    cfg = sae.TrainConfig(other, activation_cache=str(folder), total_tokens=64, batch_size=32, lr_warmup_steps=0)
    with pytest.raises(ValueError,
                       match=r"holds \['blocks\.0\.hook_resid_post'\].*reads \['blocks\.1\.hook_resid_post'\]"):
        sae.train(cfg, progress=False)
    same = dataclasses.replace(cfg, dictionary=dataclasses.replace(other, hook_name=HOOK))
    assert sae.train(same, progress=False).dictionary.cfg.hook_name == HOOK


def test_training_warns_how_often_a_small_corpus_repeats(model):
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=model.d_model, width=16, k=2, hook_name=HOOK), corpus=TEXTS[:2],
                          total_tokens=2048, batch_size=32, context_size=16, buffer_tokens=128, model_batch=4,
                          lr_warmup_steps=0)
    with pytest.warns(UserWarning, match="tokens") as caught:
        sae.train(cfg, model=model, progress=False)
    assert len([w for w in caught if "tokens" in str(w.message)]) == 1
    assert re.search(r"\d+ times", str(caught[0].message)), str(caught[0].message)


@pytest.mark.parametrize("kw, match", [(dict(model_batch=0), "model_batch=0"), (dict(context_size=0), "context_size=0"),
                                      (dict(skip_positions=8), "skip_positions=8")])
def test_train_transcoders_numbers(model, kw, match):
    with pytest.raises(ValueError, match=match):
        sae.train_transcoders(model, **{"width": 16, "k": 2, "total_tokens": 64, "context_size": 8, **kw},
                              corpus=TEXTS, progress=False)
