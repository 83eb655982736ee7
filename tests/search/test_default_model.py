"""On the packaged SmolLM2-135M: a 10-token suffix that makes ' London' the top next token after 'The capital of
France is', and an input that drives a dictionary latent above the largest activation it reaches on real text.

The dictionary is a random-init ReLU SAE (``StandardSAE``, seed 0) on the middle layer's residual stream, latent 0:
random, so that the test needs no training run; a ReLU latent is active on about half the tokens, so its gradient
is there from the start (a TopK latent outside the top k has none)."""

from __future__ import annotations

import itertools

import jax
import numpy as np

from interp import sae, search
from interp.sae import iter_contexts

PROMPT = "The capital of France is"


def test_london_suffix(default_model):
    model = default_model
    assert model.top_next(PROMPT, 1)[0][0] == " Paris"
    obj = search.logprob(model, " London")
    res = search.gcg(model, obj, PROMPT, span="suffix:10", steps=60, topk=64, batch=64, init="x x x x x x x x x x",
                     progress=False)
    assert res.success and len(res.tokens) == 10
    # the text, tokenized afresh, gives the same answer
    assert model.top_next(res.input_text, 1)[0][0] == " London"


def test_latent_above_its_corpus_maximum(default_model, corpus_text):
    model = default_model
    hook = f"blocks.{model.n_layers // 2}.hook_resid_post"
    d = sae.create(sae.StandardConfig(d_in=model.d_model, width=256, hook_name=hook), jax.random.key(0))
    contexts = np.stack(list(itertools.islice(iter_contexts(model.tokenizer, [corpus_text[:200_000]], 64), 16)))
    _, cache = model.run_with_cache(contexts, [hook])
    z = np.asarray(d.encode(cache[hook][:, 1:]))[..., 0]  # the first position (an attention sink) left out
    corpus_max = float(z.max())
    obj = search.latent(model, d, 0, threshold=corpus_max)
    res = search.gcg(model, obj, "", span="suffix:8", steps=60, topk=64, batch=64, progress=False)
    assert res.success and -res.objective > corpus_max
    _, cache = model.run_with_cache(res.input[None], [hook])
    assert float(np.asarray(d.encode(cache[hook][0, -1]))[0]) > corpus_max
