"""A tiny model with a character-level byte-level BPE tokenizer (97 tokens: one special, 95 printable ASCII
characters and the newline), so that text prompts, targets, allowed tokens and the command line run without torch."""

from __future__ import annotations

import pytest

from tests.conftest import numpy_checkpoint

CHARS = [chr(c) for c in range(32, 127)]
TOKENS = ["<|endoftext|>"] + ["Ġ" if c == " " else c for c in CHARS] + ["Ċ"]


def char_tokenizer():
    import interp

    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TOKENS,
            "tokenizer.ggml.token_type": [3] + [1] * (len(TOKENS) - 1), "tokenizer.ggml.merges": [],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0}
    return interp.Tokenizer.from_gguf_metadata(meta)


@pytest.fixture(scope="session")
def char_folder(tmp_path_factory):
    folder = numpy_checkpoint(tmp_path_factory.mktemp("tiny-chars"), seed=5, num_hidden_layers=2,
                              num_key_value_heads=2, vocab_size=len(TOKENS))
    char_tokenizer().save(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def char_model(char_folder):
    import interp

    return interp.load(char_folder)
