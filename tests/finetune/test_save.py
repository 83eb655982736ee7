"""A fine-tuned model saved with its adapters merged: interp.load and transformers read the folder with the tuned
model's logits; finetune.json records the run."""

from __future__ import annotations

import json

import numpy as np
import torch
import transformers

import interp
from interp import finetune
from tests.numerics import model_bound
from tests.tiny_chat import tiny_chat_model


def test_saved_fine_tune_loads_in_interp_and_transformers(tmp_path):
    model = tiny_chat_model(seed=2, n_layers=2, d_model=32)
    data = [finetune.chat_example(model.tokenizer, p, "blue moon") for p in ("the cat", "a dog can run", "hello")]
    tuned = finetune.finetune(model, data, finetune.FinetuneConfig(steps=5, lr=1e-2, batch_size=4, lora_rank=4),
                              progress=False)
    folder = tuned.save(tmp_path / "tuned")
    record = json.loads((folder / "finetune.json").read_text())
    assert record["config"]["lora_rank"] == 4 and [h["step"] for h in record["history"]] == [1, 2, 3, 4, 5]

    tokens = data[1].tokens[None]
    ours = np.asarray(tuned.model(tokens))
    assert np.abs(ours - np.asarray(model(tokens))).max() > 1e-2  # the adapters are in what was saved
    back = interp.load(folder)
    assert np.array_equal(np.asarray(back(tokens)), ours)
    assert back.tokenizer.chat_template == model.tokenizer.chat_template

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - theirs).max() <= model_bound(theirs, n_layers=model.n_layers)
