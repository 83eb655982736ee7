"""Generation: cached logits equal full recomputation (padding, sliding windows and edits included), the
sampling options, stop tokens, and on the default model greedy output identical to transformers' generate and
a steering edit that moves the text the expected way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp import edits
from tests.conftest import left_padded, random_tokens
from tests.numerics import assert_close, model_bound


def check_against_full(model, out, edit_list=()):
    """Each step's distribution equals the full forward over the generated sequence at that position."""
    P = out.tokens.shape[1] - out.new_tokens.shape[1]
    full = np.asarray(model.run_with_hooks(out.tokens, edit_list, attention_mask=out.attention_mask)
                      if edit_list else model(out.tokens, attention_mask=out.attention_mask))
    for i in range(out.new_tokens.shape[1]):
        live = out.attention_mask[:, P + i - 1] == 1 if i else np.ones(len(full), bool)
        assert_close(out.logits[live, i], full[live, P - 1 + i], model_bound(full, n_layers=model.n_layers),
                     f"step {i}")


@pytest.mark.parametrize("variant", ["gqa", "mistral_window"])
def test_cached_logits_equal_full_recompute(variant, hf_checkpoints):
    _, folder = hf_checkpoints(variant)
    model = interp.load(folder)
    toks, mask = left_padded(model.d_vocab, [3, 7, 5], seed=1)  # windowed model: 7 + 9 tokens > window 5
    out = model.generate(toks, 9, attention_mask=mask, stop_tokens=[], return_logits=True)
    assert out.new_tokens.shape == (3, 9) and (out.lengths == 9).all()
    check_against_full(model, out)
    # greedy: each new token is the argmax of its distribution
    np.testing.assert_array_equal(out.new_tokens, out.logits.argmax(-1))


def test_edits_apply_at_every_step(tiny3):
    vec = np.random.default_rng(0).normal(size=tiny3.d_model).astype(np.float32) * 3
    edit = [("blocks.1.hook_resid_pre", edits.add, vec)]
    toks = random_tokens(tiny3.d_vocab, (2, 5), seed=2)
    plain = tiny3.generate(toks, 6, stop_tokens=[], return_logits=True)
    steered = tiny3.generate(toks, 6, stop_tokens=[], edits=edit, return_logits=True)
    assert not np.allclose(plain.logits, steered.logits)
    check_against_full(tiny3, steered, edit)


def test_sampling_options_and_stop_tokens(tiny3):
    toks = random_tokens(tiny3.d_vocab, (2, 4), seed=3)
    greedy = tiny3.generate(toks, 8, stop_tokens=[])
    np.testing.assert_array_equal(tiny3.generate(toks, 8, temperature=1.0, top_k=1, stop_tokens=[]).new_tokens,
                                  greedy.new_tokens)
    np.testing.assert_array_equal(tiny3.generate(toks, 8, temperature=1.0, top_p=1e-6, stop_tokens=[]).new_tokens,
                                  greedy.new_tokens)
    a = tiny3.generate(toks, 8, temperature=5.0, seed=1, stop_tokens=[]).new_tokens
    b = tiny3.generate(toks, 8, temperature=5.0, seed=1, stop_tokens=[]).new_tokens
    c = tiny3.generate(toks, 8, temperature=5.0, seed=2, stop_tokens=[]).new_tokens
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # a sampled distribution with top_k keeps only the k best tokens
    sampled = tiny3.generate(toks, 8, temperature=1.0, top_k=3, seed=4, stop_tokens=[], return_logits=True)
    top3 = np.argsort(-sampled.logits, axis=-1)[..., :3]
    assert all(t in top3[i, j] for (i, j), t in np.ndenumerate(sampled.new_tokens))
    # stop at the third greedy token of row 0: that row has 3 tokens, then the pad id
    stop = int(greedy.new_tokens[0, 2])
    out = tiny3.generate(toks, 8, stop_tokens=[stop])
    first = int(np.flatnonzero(greedy.new_tokens[0] == stop)[0])
    assert out.lengths[0] == first + 1
    pad = tiny3.config.pad_token_id if tiny3.config.pad_token_id is not None else (tiny3.config.eos_token_id or 0)
    assert (out.new_tokens[0, first + 1:] == pad).all()
    np.testing.assert_array_equal(out.new_tokens[0, : first + 1], greedy.new_tokens[0, : first + 1])
    with pytest.raises(ValueError, match="left-padded"):
        tiny3.generate(toks, 2, attention_mask=np.array([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="top_p"):
        tiny3.generate(toks, 2, top_p=0.0)


@pytest.mark.slow
def test_greedy_matches_transformers_generate(default_model, default_gguf):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name,
                                              attn_implementation="eager").eval()
    chat = "<|im_start|>user\nName three primary colours.<|im_end|>\n<|im_start|>assistant\n"
    prompts = ["The capital of France is", chat]
    for prompt in prompts:
        ids = default_model.to_tokens(prompt)
        ours = default_model.generate(ids, 24, stop_tokens=[])
        with torch.no_grad():
            # an explicit mask: the pad id (2) is also <|im_end|>, which transformers would otherwise mask out
            t = torch.tensor(np.asarray(ids), dtype=torch.long)
            ref = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=24, do_sample=False,
                              eos_token_id=None, pad_token_id=default_model.config.pad_token_id)
        np.testing.assert_array_equal(ours.new_tokens[0], ref[0, ids.shape[1]:].numpy())
    # a left-padded batch gives each row what it gives alone
    batch = default_model.generate(prompts, 12, stop_tokens=[])
    for i, prompt in enumerate(prompts):
        alone = default_model.generate(prompt, 12, stop_tokens=[]).new_tokens[0]
        np.testing.assert_array_equal(batch.new_tokens[i], alone)


@pytest.mark.slow
def test_steering_moves_generation_the_expected_way(default_model):
    """Activation addition: half the residual-stream difference between "I went to London" and "I went to
    Paris" at layer 6, added at every position while generating, turns a continuation about Paris into one
    about London."""
    m = default_model
    name = "blocks.6.hook_resid_pre"
    _, cache = m.run_with_cache(["I went to London", "I went to Paris"], [name])
    v = np.asarray(cache[name][0, -1] - cache[name][1, -1])
    prompt = "My favourite city to visit is"

    def mentions(coeff):
        text = m.generate(prompt, 24, stop_tokens=[], edits=[(name, edits.add, coeff * v)]).texts[0]
        return text.count("London") + text.count("England"), text.count("Paris") + text.count("France")

    london, paris = mentions(0.0)
    london_steered, paris_steered = mentions(0.5)
    assert paris > 0 and london == 0  # unsteered, the model writes about Paris
    assert london_steered > 0 and paris_steered == 0
