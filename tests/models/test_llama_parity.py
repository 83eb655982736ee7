"""Parity with Hugging Face transformers on tiny random-init configs: logits and every hook point."""

from __future__ import annotations

import numpy as np
import pytest

import interp
from tests.conftest import VARIANTS, random_tokens
from tests.models.parity import compare_all
from tests.numerics import assert_close, model_bound


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_hook_and_logits_match_transformers(variant, hf_checkpoints):
    hf, folder = hf_checkpoints(variant)
    model = interp.load(folder)
    T = 12 if variant == "mistral_window" else 9  # longer than the sliding window
    tokens = random_tokens(model.d_vocab, (2, T), seed=1)
    compare_all(model, hf, tokens)


@pytest.mark.parametrize("variant", ["gqa", "mistral_window"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(variant, side, hf_checkpoints):
    hf, folder = hf_checkpoints(variant)
    model = interp.load(folder)
    lengths = [10, 6, 3]
    T = max(lengths)
    tokens = random_tokens(model.d_vocab, (3, T), seed=2)
    mask = np.zeros((3, T), np.int32)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1 if side == "left" else 0
        if side == "right":
            mask[i, :n] = 1
    tokens = np.where(mask == 1, tokens, 0).astype(np.int32)
    compare_all(model, hf, tokens, attention_mask=mask, valid=mask)


def test_padding_does_not_change_real_tokens(hf_checkpoints):
    """Invariance: a left-padded sequence gives the same logits on its real tokens as the unpadded one."""
    _, folder = hf_checkpoints("gqa")
    model = interp.load(folder)
    seq = random_tokens(model.d_vocab, (1, 7), seed=3)
    alone = np.asarray(model(seq))
    padded = np.concatenate([np.zeros((1, 4), np.int32), seq], axis=1)
    mask = np.concatenate([np.zeros((1, 4), np.int32), np.ones((1, 7), np.int32)], axis=1)
    out = np.asarray(model(padded, attention_mask=mask))
    assert_close(out[:, 4:], alone, model_bound(alone, n_layers=model.n_layers), "padded vs unpadded logits")


def test_batch_split_invariance(hf_checkpoints):
    _, folder = hf_checkpoints("mha")
    model = interp.load(folder)
    tokens = random_tokens(model.d_vocab, (4, 8), seed=4)
    whole = np.asarray(model(tokens))
    parts = np.concatenate([np.asarray(model(tokens[:2])), np.asarray(model(tokens[2:]))])
    assert_close(whole, parts, model_bound(whole, n_layers=model.n_layers), "one batch vs two")
