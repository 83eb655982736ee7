"""Inputs that fail early instead of doing something silently: edits and splices that touch no hook point,
prompts past the model's context, generation options out of range, and out-of-range token ids under ``jax.jit``."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import numpy as np
import pytest

import interp
from interp import edits, sae
from interp.hooks import Splice
from tests.conftest import TINY, make_hf_model, random_tokens, saved_checkpoints

CONTEXT = 16  # max_position_embeddings / n_positions of the tiny checkpoints below
# family -> (transformers config class, arguments)
FAMILIES = {
    "gpt2": ("GPT2Config", dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=CONTEXT)),
    "neox": ("GPTNeoXConfig", dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, rotary_pct=0.5, max_position_embeddings=CONTEXT)),
    "gemma3": ("Gemma3TextConfig", {**TINY, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4,
                                    "sliding_window_pattern": 2, "max_position_embeddings": CONTEXT}),
}
# how a failed equinox.error_if surfaces from a compiled function (a runtime error carrying its message)
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


@pytest.fixture(scope="module")
def tiny(hf_checkpoints):
    return interp.load(hf_checkpoints("gqa")[1])


def make_family(family: str):
    """A tiny random-init transformers model of ``family`` whose context is ``CONTEXT`` positions."""
    import torch
    import transformers

    if family == "llama":
        return make_hf_model("gqa", max_position_embeddings=CONTEXT)
    cls_name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls_name)(**kwargs, initializer_range=0.1)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """family -> our model of its tiny checkpoint."""
    saved = saved_checkpoints(make_family, tmp_path_factory)
    return functools.cache(lambda family: interp.load(saved(family)[1]))


# ----------------------------------------------------------------------------------- edits and splices
def test_an_edit_predicate_that_matches_nothing_fails_before_compute(tiny):
    tokens = random_tokens(tiny.d_vocab, (1, 5))
    before = interp.compile_count()
    for run in (lambda e: tiny.run_with_hooks(tokens, [e]), lambda e: tiny.run_with_cache(tokens, [], edits=[e]),
                lambda e: tiny.generate(tokens, 2, edits=[e])):
        with pytest.raises(ValueError, match=r"predicate .*<lambda>.* of edit 'zero' matches none of the 43 hook "
                                             r"points, so the edit would change nothing; test it against "
                                             r"model.hook_names \(e.g. 'ln_final.hook_normalized'\)"):
            run((lambda name: name.endswith("hook_resid_psot"), edits.zero))
    assert interp.compile_count() == before
    # a predicate that matches acts on every hook it selects, as before
    hit = tiny.run_with_hooks(tokens, [(lambda name: name.endswith("mlp_out"), edits.zero)])
    both = tiny.run_with_hooks(tokens, [(f"blocks.{i}.hook_mlp_out", edits.zero) for i in range(2)])
    np.testing.assert_array_equal(np.asarray(hit), np.asarray(both))


def test_splices_name_one_hook_point(tiny):
    d = sae.create(sae.TopKConfig(d_in=tiny.d_model, width=8, k=2, hook_name="blocks.0.hook_resid_post"),
                   jax.random.key(0))
    tokens = random_tokens(tiny.d_vocab, (1, 5))
    with pytest.raises(TypeError, match=r"a splice's hook must be a hook name or a short key like \('resid_post', 3\)"):
        Splice(d, lambda name: "resid_post" in name)
    with pytest.raises(ValueError, match="cannot splice at unknown hook 'blocks.7.hook_resid_post'"):
        tiny.run_with_hooks(tokens, splices=[Splice(d, ("resid_post", 7))])
    short = Splice(d, ("resid_post", 0))
    assert short.hook_in == short.hook_out == "blocks.0.hook_resid_post"
    full = tiny.run_with_hooks(tokens, splices=[Splice(d, "blocks.0.hook_resid_post")])
    np.testing.assert_array_equal(np.asarray(tiny.run_with_hooks(tokens, splices=[short])), np.asarray(full))


# ----------------------------------------------------------------------------------- context length
@pytest.mark.parametrize("family", ["llama", "neox", "gemma3"])
def test_rotary_models_refuse_prompts_past_their_context_unless_positions_are_given(families, family):
    model = families(family)
    assert model.n_ctx == CONTEXT
    tokens = random_tokens(model.d_vocab, (2, CONTEXT + 1), seed=1)
    message = rf"{CONTEXT + 1} tokens exceed this model's context of {CONTEXT} positions .*positions= explicitly"
    with pytest.raises(ValueError, match=message):
        model(tokens)
    with pytest.raises(ValueError, match=message):  # the length is static: refused under jit as well
        jax.jit(lambda t: model(t))(tokens)
    with pytest.raises(ValueError, match=message):
        model.run_with_cache(tokens, ["blocks.0.hook_resid_post"])
    # explicit positions run past the context on purpose; the first CONTEXT positions are the model's own
    past = np.asarray(model(tokens, positions=np.arange(CONTEXT + 1)))
    np.testing.assert_allclose(past[:, :CONTEXT], np.asarray(model(tokens[:, :CONTEXT])), rtol=1e-5, atol=1e-5)
    # positions count real tokens: left padding does not use up the context
    mask = np.ones(tokens.shape, np.int32)
    mask[:, 0] = 0
    padded = np.asarray(model(tokens, attention_mask=mask))
    np.testing.assert_allclose(padded[:, 1:], np.asarray(model(tokens[:, 1:])), rtol=1e-5, atol=1e-5)


def test_learned_positions_refuse_positions_past_their_table(families):
    model = families("gpt2")
    tokens = random_tokens(model.d_vocab, (1, CONTEXT + 1), seed=2)
    with pytest.raises(ValueError, match=f"{CONTEXT + 1} tokens exceed this model's {CONTEXT} learned positions"):
        model(tokens)
    with pytest.raises(ValueError, match=f"position {CONTEXT} is outside this model's {CONTEXT} learned positions"):
        model(tokens, positions=np.arange(CONTEXT + 1))
    with pytest.raises(ValueError, match="position 40 is outside"):
        model(tokens[:, :4], positions=np.array([0, 1, 2, 40]))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generation_must_fit_the_context(families, family):
    model = families(family)
    prompt = random_tokens(model.d_vocab, (1, CONTEXT - 4), seed=3)
    assert model.generate(prompt, 4).new_tokens.shape == (1, 4)
    with pytest.raises(ValueError, match=rf"a prompt of {CONTEXT - 4} tokens and max_new_tokens=5 need {CONTEXT + 1} "
                                         rf"positions, past this model's context of {CONTEXT}; ask for at most 4"):
        model.generate(prompt, 5)


# ----------------------------------------------------------------------------------- generation options
@pytest.mark.parametrize("kwargs, error, message", [
    ({"temperature": float("nan")}, ValueError, r"temperature=nan must be a finite number >= 0 \(0 is greedy\)"),
    ({"temperature": float("inf")}, ValueError, r"temperature=inf must be a finite number >= 0"),
    ({"temperature": -0.5}, ValueError, r"temperature=-0.5 must be a finite number >= 0"),
    ({"temperature": "warm"}, ValueError, r"temperature='warm' must be a finite number >= 0"),
    ({"max_new_tokens": -1}, ValueError, r"max_new_tokens=-1 must be an integer >= 0"),
    ({"max_new_tokens": 2.5}, ValueError, r"max_new_tokens=2.5 must be an integer >= 0"),
    ({"top_k": -1}, ValueError, r"top_k=-1 must be an integer in \[0, 97\]"),
    ({"top_k": 98}, ValueError, r"top_k=98 must be an integer in \[0, 97\] \(the vocabulary; 0 keeps every token\)"),
    ({"top_k": 3.0}, ValueError, r"top_k=3.0 must be an integer"),
    ({"top_p": float("nan")}, ValueError, r"top_p=nan must be a finite number in \(0, 1\]"),
    ({"top_p": 0.0}, ValueError, r"top_p=0.0 must be a finite number in \(0, 1\]"),
    ({"seed": 1.5}, ValueError, r"seed=1.5 must be an integer"),
], ids=lambda v: None if isinstance(v, dict) else "")
def test_generation_options_are_checked(tiny, kwargs, error, message):
    prompt = random_tokens(tiny.d_vocab, (1, 4))
    with pytest.raises(error, match=message):
        tiny.generate(prompt, **{"max_new_tokens": 3, "temperature": 1.0, **kwargs})


def test_zero_new_tokens_and_top_k_zero(tiny):
    prompt = random_tokens(tiny.d_vocab, (2, 4), seed=4)
    none = tiny.generate(prompt, 0, return_logits=True)
    np.testing.assert_array_equal(none.tokens, prompt)
    assert none.new_tokens.shape == (2, 0) and none.logits.shape == (2, 0, tiny.d_vocab)
    assert none.lengths.tolist() == [0, 0]
    # top_k=0 keeps every token, as top_k=None does
    sampled = dict(max_new_tokens=6, temperature=1.5, seed=np.int64(7))
    np.testing.assert_array_equal(tiny.generate(prompt, top_k=0, **sampled).new_tokens,
                                  tiny.generate(prompt, top_k=None, **sampled).new_tokens)


# ----------------------------------------------------------------------------------- token ids under jit
def test_check_tokens_raises_under_jit_and_passes_good_ids_through(tiny):
    good = random_tokens(tiny.d_vocab, (2, 5), seed=5)
    bad = good.copy()
    bad[1, 3] = tiny.d_vocab
    # what it guards against: the jitted model cannot see the values and reads NaN
    assert np.isnan(np.asarray(jax.jit(lambda t: tiny(t))(bad))).any()

    @jax.jit
    def logits(tokens):
        return tiny.forward(interp.check_tokens(tiny, tokens))

    with pytest.raises(RUNTIME_ERRORS, match=r"token id is out of range for this model's vocabulary of 97 "
                                             r"\(valid ids are 0..96\)"):
        jax.block_until_ready(logits(bad))
    with pytest.raises(RUNTIME_ERRORS, match="out of range"):
        jax.block_until_ready(logits(-good))
    np.testing.assert_array_equal(np.asarray(jax.jit(functools.partial(interp.check_tokens, tiny))(good)), good)
    np.testing.assert_array_equal(np.asarray(logits(good)), np.asarray(jax.jit(lambda t: tiny.forward(t))(good)))
    with pytest.raises(ValueError, match="integer ids"):
        interp.check_tokens(tiny, good.astype(np.float32))
