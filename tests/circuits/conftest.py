"""A clean/corrupted token pair for the circuit tests (on the tiny three-layer model ``tiny3``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import random_tokens


@pytest.fixture(scope="session")
def pair(tiny3):
    """(clean, corrupted) [3, 6]: the corrupted prompts differ at positions 1 and 3."""
    clean = random_tokens(tiny3.d_vocab, (3, 6), seed=11)
    corrupted = clean.copy()
    corrupted[:, 1] = (clean[:, 1] + 7) % tiny3.d_vocab
    corrupted[:, 3] = (clean[:, 3] + 13) % tiny3.d_vocab
    return clean, corrupted


@pytest.fixture(scope="session")
def answers(tiny3, pair):
    """Answer/foil ids: the clean run's top next token and its runner-up."""
    logits = np.asarray(tiny3(pair[0]))[:, -1]
    order = np.argsort(-logits, axis=-1)
    return order[:, 0].astype(np.int32), order[:, 1].astype(np.int32)
