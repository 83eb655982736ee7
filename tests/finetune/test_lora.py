"""LoRA adapters: a fresh adapter is the base model; merged weights compute what the low-rank path computes beside
the base weights (x W0 + x A B alpha/r, evaluated separately through hooks); bad targets and ranks are refused."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import finetune
from tests.conftest import random_tokens
from tests.numerics import assert_model_close
from tests.tiny_chat import tiny_chat_model


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(seed=0, n_layers=2, d_model=32)


def _random_B(adapters, seed=1):
    keys = jax.random.split(jax.random.key(seed), len(adapters.B))
    B = tuple(0.1 * jax.random.normal(k, b.shape, b.dtype) for k, b in zip(keys, adapters.B))
    return eqx.tree_at(lambda a: a.B, adapters, B)


def test_fresh_adapters_leave_the_model_unchanged(model):
    adapters = finetune.lora(model, 4, key=jax.random.key(3))
    assert len(adapters.sites) == 7 * model.n_layers and adapters.scale == 16.0 / 4
    assert all(np.any(np.asarray(a) != 0) for a in adapters.A)  # only B starts at zero
    merged = finetune.merge(model, adapters)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(model)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


# where each matrix's input is read and where its output lands, as hook names (input read after the norm weight)
READS = {"W_Q": ("ln1", "attn.hook_q"), "W_K": ("ln1", "attn.hook_k"), "W_V": ("ln1", "attn.hook_v"),
         "W_O": ("attn.hook_z", "hook_attn_out"), "W_gate": ("ln2", "mlp.hook_pre"),
         "W_in": ("ln2", "mlp.hook_pre_linear"), "W_out": ("mlp.hook_post", "hook_mlp_out")}


def _unmerged_forward(model, adapters, tokens):
    """The base model with each adapter's x A B (alpha/r) added at the matrix's output hook."""
    inputs = {}

    def hk(name, x):
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
        rest = name.split(".", 2)[2] if layer is not None else name
        for (l, mat), a, b in zip(adapters.sites, adapters.A, adapters.B):
            if l != layer:
                continue
            src, dst = READS[mat]
            if mat == "W_in" and not hasattr(model.blocks[l].mlp, "W_gate"):  # a plain MLP: no linear branch
                dst = "mlp.hook_pre"
            if rest == f"{src}.hook_normalized":
                norm = getattr(model.blocks[l], src)
                inputs[(l, mat)] = x * norm.weight + (0.0 if getattr(norm, "bias", None) is None else norm.bias)
            elif rest == src:
                inputs[(l, mat)] = x
            if rest == dst:
                xin = inputs[(l, mat)]
                flat = xin.reshape(*xin.shape[:2], -1)
                x = x + ((flat @ a @ b) * jnp.float32(adapters.scale)).reshape(x.shape)
        return x

    return model.forward(jnp.asarray(tokens), hk)


@pytest.mark.parametrize("targets", [("W_Q", "W_K", "W_V"), ("W_O",), ("W_gate", "W_in"), ("W_out",),
                                     finetune.TARGETS])
def test_merged_weights_equal_the_low_rank_path(model, targets):
    adapters = _random_B(finetune.lora(model, 3, targets, alpha=8.0, key=jax.random.key(0)))
    tokens = random_tokens(model.d_vocab, (2, 7), seed=4)
    merged = np.asarray(finetune.merge(model, adapters).forward(jnp.asarray(tokens)))
    separate = np.asarray(_unmerged_forward(model, adapters, tokens))
    base = np.asarray(model.forward(jnp.asarray(tokens)))
    assert np.abs(merged - base).max() > 1e-2  # the adapters matter
    assert_model_close(merged, separate, model, "merged vs low-rank path")


def test_default_targets_skip_what_a_family_lacks():
    """GPT-2's plain MLP has no W_gate: the default targets adapt the other six matrices of each block."""
    from interp.models import gpt2

    config = gpt2.GPT2Config(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_mlp=32, n_ctx=32)
    rng = np.random.default_rng(0)
    tensors = {n: (0.2 * rng.standard_normal(s)).astype(np.float32) for n, s in gpt2.hf_weight_shapes(config).items()}
    model = gpt2.from_hf_weights(config, tensors.__getitem__)
    adapters = _random_B(finetune.lora(model, 2))
    assert {name for _, name in adapters.sites} == set(finetune.TARGETS) - {"W_gate"}
    tokens = random_tokens(model.d_vocab, (1, 5), seed=0)
    merged = np.asarray(finetune.merge(model, adapters).forward(jnp.asarray(tokens)))
    assert_model_close(merged, np.asarray(_unmerged_forward(model, adapters, tokens)), model, "GPT-2 merge")
    with pytest.raises(ValueError, match="none of W_gate; its matrices are W_Q, W_K, W_V, W_O, W_in, W_out"):
        finetune.lora(model, 2, ("W_gate",))


def test_bad_targets_and_ranks_are_refused(model):
    with pytest.raises(ValueError, match="unknown LoRA target.*W_Q"):
        finetune.lora(model, 2, ("W_q",))
    with pytest.raises(ValueError, match="lora_rank=64 exceeds .*W_K.*lora_rank <= 16"):
        finetune.lora(model, 64, ("W_K",))  # W_K is [32, 2 kv heads x 8]
    with pytest.raises(ValueError, match="positive integer"):
        finetune.lora(model, 0)
