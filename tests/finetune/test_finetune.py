"""Fine-tuning runs on a tiny chat model: the loss falls on a rule the model can memorise, only target positions
count, the KL term keeps other behaviour near the base model, a resumed run ends exactly where an uninterrupted one
does, divergence names the last intact checkpoint, and bad input is refused with its cause."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from interp import finetune
from interp.finetune import Example, FinetuneConfig
from interp.sae import TrainingDiverged
from tests.tiny_chat import WORDS, tiny_chat_model

REPLY = "red fox"


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(seed=0, n_layers=2, d_model=32)


def _prompts(n, seed, length=4):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, length)) for _ in range(n)]


@pytest.fixture(scope="module")
def rule(model):
    """Every user turn is answered with REPLY: training pairs, held-out pairs and plain texts for the KL term."""
    tok = model.tokenizer
    train = [finetune.chat_example(tok, p, REPLY) for p in _prompts(16, 0)]
    heldout = [finetune.chat_example(tok, p, REPLY) for p in _prompts(8, 1)]
    texts = [finetune.text_example(tok, p) for p in _prompts(16, 2, length=8)]
    return train, heldout, texts


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _mean_kl(model, base, examples) -> float:
    """Mean KL(base || model) over target positions, on the host, one example at a time."""
    total, n = 0.0, 0
    for ex in examples:
        t = np.flatnonzero(ex.targets) - 1
        p = _log_softmax(np.asarray(base(ex.tokens[None]))[0][t])
        q = _log_softmax(np.asarray(model(ex.tokens[None]))[0][t])
        total += float((np.exp(p) * (p - q)).sum())
        n += t.size
    return total / n


def _mean_nll(model, examples) -> float:
    """Mean -log p over target positions, computed on the host from each example's own forward pass."""
    total, n = 0.0, 0
    for ex in examples:
        logp = _log_softmax(np.asarray(model(ex.tokens[None]))[0])
        t = np.flatnonzero(ex.targets)
        total += float(-logp[t - 1, ex.tokens[t]].sum())
        n += t.size
    return total / n


def test_chat_example_targets_the_reply_and_end_of_turn(model):
    tok = model.tokenizer
    ex = finetune.chat_example(tok, "the cat can run", REPLY, system="you are a bird")
    words = tok.to_str_tokens(ex.tokens)
    assert [w for w, t in zip(words, ex.targets) if t] == ["red", "fox", "<|im_end|>"]
    assert words[:3] == ["<|im_start|>", "system", "you"] and words[-3:] == ["red", "fox", "<|im_end|>"]
    text = finetune.text_example(tok, "the cat can run")
    assert text.targets.tolist() == [False, True, True, True]


def test_training_learns_a_rule_and_reports_the_target_loss(model, rule):
    train, heldout, _ = rule
    cfg = FinetuneConfig(steps=40, lr=1e-2, batch_size=8, lora_rank=4, seed=0)
    tuned = finetune.finetune(model, train, cfg, progress=False)
    losses = [h["loss"] for h in tuned.history]
    assert len(losses) == 40 and all(h["kl"] is None for h in tuned.history)
    # step 1 reports the base model's loss on its batch: mean -log p over target positions only
    first = [train[i] for i in finetune.data.batch_indices(len(train), 8, 0, cfg.seed)]
    assert losses[0] == pytest.approx(_mean_nll(model, first), rel=1e-4)
    assert _mean_nll(tuned.model, heldout) < 0.3 * _mean_nll(model, heldout)
    for ex in heldout:  # the reply is every held-out prompt's most likely continuation
        logits = np.asarray(tuned.model(ex.tokens[None]))[0]
        t = np.flatnonzero(ex.targets)
        assert model.tokenizer.to_string(np.argmax(logits[t - 1], -1)) == "red fox <|im_end|>"


def test_non_target_tokens_do_not_enter_the_loss(model, rule):
    """Examples that differ only in a non-target token's id give the same gradient step and loss."""
    train, _, _ = rule
    cfg = FinetuneConfig(steps=2, lr=1e-2, batch_size=8, lora_rank=4)
    a = [Example(ex.tokens, ex.targets) for ex in train[:8]]
    b = []
    for ex in a:  # change the last token when it is not a target: invisible to every target's prediction
        tokens, targets = ex.tokens.copy(), ex.targets.copy()
        tokens = np.append(tokens, 5)
        targets = np.append(targets, False)
        b.append(Example(tokens, targets))
    ra = finetune.finetune(model, a, cfg, progress=False)
    rb = finetune.finetune(model, b, cfg, progress=False)
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-6)
    for x, y in zip(jax.tree.leaves(ra.adapters), jax.tree.leaves(rb.adapters)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_kl_term_keeps_other_text_close_to_the_base(model, rule):
    train, _, texts = rule
    cfg = FinetuneConfig(steps=30, lr=1e-2, batch_size=8, lora_rank=4)
    plain = finetune.finetune(model, train, cfg, progress=False)
    kept = finetune.finetune(model, train, FinetuneConfig(**{**cfg.to_dict(), "kl_weight": 3.0}), kl_data=texts[:8],
                             progress=False)
    assert all(h["kl"] is not None and h["kl"] >= 0 for h in kept.history)
    heldout = texts[8:]  # texts neither run trained on
    kl_plain = finetune.next_token_kl(plain.model, model, heldout)
    kl_kept = finetune.next_token_kl(kept.model, model, heldout)
    assert kl_kept < 0.5 * kl_plain
    assert kl_kept == pytest.approx(_mean_kl(kept.model, model, heldout), rel=1e-3, abs=1e-6)
    assert finetune.next_token_kl(model, model, heldout) == 0.0
    assert kept.history[-1]["loss"] < 0.3 * kept.history[0]["loss"]  # and it still learned the rule


def test_resume_ends_where_an_uninterrupted_run_does(model, rule, tmp_path):
    train, _, texts = rule
    cfg = FinetuneConfig(steps=6, lr=1e-2, batch_size=8, lora_rank=4, kl_weight=0.5, checkpoint_every=3)
    whole = finetune.finetune(model, train, cfg, kl_data=texts, out=tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000006")  # as if stopped after step 3's checkpoint
    resumed = finetune.finetune(model, train, cfg, kl_data=texts, out=tmp_path / "b", resume=True, progress=False)
    assert resumed.history == whole.history
    assert json.loads((tmp_path / "b" / "history.json").read_text()) == whole.history
    for x, y in zip(jax.tree.leaves(resumed.adapters), jax.tree.leaves(whole.adapters)):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    with pytest.raises(FileExistsError, match="resume=True"):
        finetune.finetune(model, train, cfg, kl_data=texts, out=tmp_path / "a", progress=False)
    other = FinetuneConfig(**{**cfg.to_dict(), "lr": 2e-2})
    with pytest.raises(ValueError, match="lr: checkpoint 0.01, now 0.02"):
        finetune.finetune(model, train, other, kl_data=texts, out=tmp_path / "a", resume=True, progress=False)
    with pytest.raises(ValueError, match="data differs"):
        finetune.finetune(model, train[:8], other, kl_data=texts, out=tmp_path / "a", resume=True, progress=False)


def test_divergence_names_the_last_intact_checkpoint(model, rule, tmp_path):
    train, _, _ = rule
    cfg = FinetuneConfig(steps=20, lr=1e30, batch_size=8, lora_rank=4, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"at step (\d+).*last intact checkpoint is .*step-0000000\d"):
        finetune.finetune(model, train, cfg, out=tmp_path, progress=False)


def test_full_fine_tuning_trains_every_float_array_of_a_bfloat16_model(tmp_path):
    """Every float array moves, kept in its dtype (the optimizer works on float32 copies: Adam's bias correction
    1 - 0.999 is 0 in bfloat16)."""
    import jax.numpy as jnp

    import interp
    from tests.tiny_chat import tiny_chat_folder

    model = interp.load(tiny_chat_folder(tmp_path, seed=0, n_layers=2, d_model=32), dtype=jnp.bfloat16)
    data = [finetune.chat_example(model.tokenizer, p, REPLY) for p in _prompts(8, 0)]
    tuned = finetune.finetune(model, data, FinetuneConfig(steps=3, lr=1e-2, batch_size=8, lora_rank=None),
                              progress=False)
    assert tuned.adapters is None and tuned.history[-1]["loss"] < tuned.history[0]["loss"]
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(model), jax.tree.leaves(tuned.model)):
        assert y.dtype == jnp.bfloat16
        assert np.any(np.asarray(x, np.float32) != np.asarray(y, np.float32)), jax.tree_util.keystr(path)


def test_bad_input_is_refused(model, rule):
    train, _, _ = rule
    cfg = FinetuneConfig(steps=1, batch_size=8, lora_rank=4)
    with pytest.raises(ValueError, match="data is empty"):
        finetune.finetune(model, [], cfg, progress=False)
    with pytest.raises(ValueError, match=r"data\[1\] has no target positions"):
        finetune.finetune(model, [train[0], Example(train[1].tokens, np.zeros_like(train[1].targets))], cfg,
                          progress=False)
    bad = train[0].tokens.copy()
    bad[2] = model.d_vocab + 3
    with pytest.raises(ValueError, match=rf"data\[0\] holds token id {model.d_vocab + 3}, outside"):
        finetune.finetune(model, [Example(bad, train[0].targets)], cfg, progress=False)
    with pytest.raises(ValueError, match="lora_rank=999 exceeds"):
        finetune.finetune(model, train, FinetuneConfig(steps=1, lora_rank=999), progress=False)
    with pytest.raises(ValueError, match="kl_weight=1.0 needs kl_data"):
        finetune.finetune(model, train, FinetuneConfig(steps=1, kl_weight=1.0), progress=False)
    with pytest.raises(ValueError, match="targets\\[0\\] must be False"):
        Example(np.array([1, 2]), np.array([True, True]))
    with pytest.raises(ValueError, match="FinetuneConfig.lr must be a positive"):
        FinetuneConfig(lr=0.0)
    with pytest.raises(ValueError, match="reply is empty"):
        finetune.chat_example(model.tokenizer, "the cat", "")


def test_the_loss_reads_only_the_target_positions_it_is_given(model, rule):
    """The gathered path (logits of the predicting positions only) equals the all-positions one, and the positions
    are each row's targets shifted by one, then -1."""
    from interp.finetune.data import make_batch, slot_count, target_positions
    from interp.finetune.train import target_kl, target_nll

    train, _, texts = rule
    T = max(ex.tokens.size for ex in train[:8])
    tokens, mask, targets = make_batch(train[:8], T)
    R = slot_count(train[:8], T)
    pos = target_positions(targets, R)
    assert R == min(-(-max(int(ex.targets[1:].sum()) for ex in train[:8]) // 16) * 16, T - 1)
    for row, p in zip(targets, pos):
        t = np.flatnonzero(row[1:])
        assert p[:t.size].tolist() == t.tolist() and (p[t.size:] == -1).all()
    whole, n = target_nll(model, tokens, mask, targets)
    gathered, m = target_nll(model, tokens, mask, targets, pos)
    assert float(m) == float(n) == targets[:, 1:].sum()
    assert float(gathered) == pytest.approx(float(whole), rel=1e-5)
    tuned = finetune.finetune(model, train, FinetuneConfig(steps=3, lr=1e-2, batch_size=8, lora_rank=4),
                              progress=False).model
    kl_whole, _ = target_kl(tuned, model, tokens, mask, targets)
    kl_gathered, _ = target_kl(tuned, model, tokens, mask, targets, pos)
    assert float(kl_whole) > 0 and float(kl_gathered) == pytest.approx(float(kl_whole), rel=1e-4)
    with pytest.raises(ValueError, match="more than the 1 slots"):
        target_positions(targets, 1)
