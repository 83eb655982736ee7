"""GPT-2 and GPT-NeoX parity with Hugging Face transformers on tiny random-init configs: logits and every hook
point, unpadded and left-padded, plus clear errors for config values the families do not support."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import interp
from interp.models import gpt2, neox
from tests.conftest import random_tokens, saved_checkpoints
from tests.numerics import assert_close, model_bound

_GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48, layer_norm_epsilon=1e-5,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
_NEOX = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             layer_norm_eps=1e-5, max_position_embeddings=64)

# name -> (transformers config class, arguments)
VARIANTS = {
    "gpt2": ("GPT2Config", _GPT2),
    # per-layer score scale 1 / (layer + 1), untied lm_head, tanh-free exact GELU
    "gpt2_layer_scale": ("GPT2Config", {**_GPT2, "scale_attn_by_inverse_layer_idx": True,
                                        "reorder_and_upcast_attn": True, "tie_word_embeddings": False,
                                        "activation_function": "gelu"}),
    "neox_parallel": ("GPTNeoXConfig", {**_NEOX, "rotary_pct": 0.5, "rotary_emb_base": 500.0}),
    # sequential residual, a quarter of a 16-wide head rotated, linear rope scaling
    "neox_sequential": ("GPTNeoXConfig", {**_NEOX, "num_attention_heads": 2, "rotary_pct": 0.25,
                                          "use_parallel_residual": False,
                                          "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
}


def make_hf(variant: str, seed: int = 0):
    """A tiny random-init transformers model (eager attention, float32) with random LayerNorm weights and random
    biases, so that every weight has a visible effect."""
    import transformers

    cls_name, kwargs = VARIANTS[variant]
    cfg = getattr(transformers, cls_name)(**kwargs, initializer_range=0.1)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.3 * torch.randn_like(mod.weight))
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (transformers model, saved checkpoint folder)."""
    return saved_checkpoints(make_hf, tmp_path_factory)


def hf_activations(hf, tokens: np.ndarray, attention_mask=None, position_ids=None) -> dict[str, np.ndarray]:
    """Every hook point's reference value, read off the transformers model with torch hooks (and, for rotary,
    its own functions). Norm outputs include weight and bias (ours is compared after applying them)."""
    neox_family = hf.config.model_type == "gpt_neox"
    cfg = hf.config
    H = cfg.num_attention_heads
    E = cfg.hidden_size // H
    B, T = tokens.shape
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(name, reshape=None):
        def f(mod, args, out):
            o = out[0] if isinstance(out, tuple) else out
            acts[name] = o if reshape is None else o.reshape(B, T, *reshape)
        return f

    def in_hook(name, reshape=None):
        def f(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = x if reshape is None else x.reshape(B, T, *reshape)
        return f

    def pre(mod, name, reshape=None):
        handles.append(mod.register_forward_pre_hook(in_hook(name, reshape), with_kwargs=True))

    def post(mod, name, reshape=None):
        handles.append(mod.register_forward_hook(out_hook(name, reshape)))

    def split_qkv(p):
        def f(mod, args, out):
            if neox_family:  # rows per head as [q, k, v][head_dim], as GPTNeoXAttention reads them
                q, k, v = out.view(B, T, H, 3 * E).chunk(3, dim=-1)
            else:  # [q | k | v], each heads x head_dim, as GPT2Attention reads them
                q, k, v = (x.reshape(B, T, H, E) for x in out.split(cfg.hidden_size, dim=2))
            acts[f"{p}.hook_q"], acts[f"{p}.hook_k"], acts[f"{p}.hook_v"] = q, k, v
        return f

    if neox_family:
        m = hf.gpt_neox
        post(m.embed_in, "hook_embed")
        post(m.final_layer_norm, "ln_final.normed")
        layers = [(layer, layer.input_layernorm, layer.attention, layer.attention.query_key_value,
                   layer.attention.dense, layer.post_attention_layernorm, layer.mlp, layer.mlp.dense_h_to_4h,
                   layer.mlp.dense_4h_to_h) for layer in m.layers]
        sequential = not cfg.use_parallel_residual
    else:
        m = hf.transformer
        post(m.wte, "hook_embed")
        post(m.wpe, "hook_pos_embed")
        post(m.ln_f, "ln_final.normed")
        layers = [(layer, layer.ln_1, layer.attn, layer.attn.c_attn, layer.attn.c_proj, layer.ln_2, layer.mlp,
                   layer.mlp.c_fc, layer.mlp.c_proj) for layer in m.h]
        sequential = True
    for l, (layer, ln1, attn, qkv, out_proj, ln2, mlp, mlp_in, mlp_out) in enumerate(layers):
        p = f"blocks.{l}"
        pre(layer, f"{p}.hook_resid_pre")
        post(layer, f"{p}.hook_resid_post")
        post(ln1, f"{p}.ln1.normed")
        post(ln2, f"{p}.ln2.normed")
        if sequential:
            pre(ln2, f"{p}.hook_resid_mid")
        handles.append(qkv.register_forward_hook(split_qkv(f"{p}.attn")))
        pre(out_proj, f"{p}.attn.hook_z", (H, E))
        post(attn, f"{p}.hook_attn_out")
        post(mlp_in, f"{p}.mlp.hook_pre")
        pre(mlp_out, f"{p}.mlp.hook_post")
        post(mlp, f"{p}.hook_mlp_out")
    t = torch.tensor(tokens, dtype=torch.long)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    pos = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    try:
        with torch.no_grad():
            out = hf(t, position_ids=pos, output_attentions=True, **kw)
            if neox_family:
                from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

                cos, sin = m.rotary_emb(acts["hook_embed"], pos)
            for l, (_, _, attn, *_rest) in enumerate(layers):
                p = f"blocks.{l}.attn"
                q, k = acts[f"{p}.hook_q"].transpose(1, 2), acts[f"{p}.hook_k"].transpose(1, 2)
                if neox_family:
                    q, k = apply_rotary_pos_emb(q, k, cos, sin)
                    acts[f"{p}.hook_rot_q"], acts[f"{p}.hook_rot_k"] = q.transpose(1, 2), k.transpose(1, 2)
                acts[f"{p}.hook_attn_scores"] = q @ k.transpose(2, 3) * attn.scaling
                acts[f"{p}.hook_pattern"] = out.attentions[l]
    finally:
        for h in handles:
            h.remove()
    res = {k: v.detach().numpy() for k, v in acts.items()}
    res["logits"] = out.logits.numpy()
    return res


def compare_all(model, hf, tokens, attention_mask=None, valid=None) -> float:
    """Assert every hook point and the logits match transformers; ``valid [B T]`` limits the check to real
    tokens. Returns the largest difference seen."""
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask)
    positions = None if attention_mask is None else np.maximum(np.cumsum(attention_mask, -1) - 1, 0)
    ref = hf_activations(hf, tokens, attention_mask, positions)
    B, T = tokens.shape
    valid = np.ones((B, T), bool) if valid is None else np.asarray(valid, bool)
    worst = 0.0

    def check(name, ours, theirs, scores=False):
        nonlocal worst
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
        if scores:  # [B H T S]: real queries; for scores also real, causal keys
            sel = valid[:, None, :, None]
            if name.endswith("hook_attn_scores"):
                sel = sel & valid[:, None, None, :] & np.tril(np.ones((T, T), bool))[None, None]
        else:  # [B T ...]: real tokens only
            sel = valid.reshape(valid.shape + (1,) * (ours.ndim - 2))
        sel = np.broadcast_to(sel, ours.shape)
        diff = np.abs(ours - theirs)[sel]
        err = float(diff.max()) if diff.size else 0.0
        worst = max(worst, err)
        bound = model_bound(theirs[sel], n_layers=model.n_layers)
        assert err <= bound, f"{name}: max abs diff {err:.3g} > {bound:.3g}"

    def norm_input(name):
        if name.startswith("ln_final"):
            return cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
        block, ln = name.rsplit(".", 2)[:2]
        if ln == "ln2" and f"{block}.hook_resid_mid" in cache:
            return cache[f"{block}.hook_resid_mid"]
        return cache[f"{block}.hook_resid_pre"]  # ln1, and ln2 of a parallel block

    for name in model.hook_names:
        ours = np.asarray(cache[name])
        if name.endswith("hook_scale"):
            # (x - mean) / scale must be the normalized value, itself checked against the reference below
            x = np.asarray(norm_input(name))
            check(name, (x - x.mean(-1, keepdims=True)) / ours, cache[name.replace("hook_scale", "hook_normalized")])
        elif name.endswith("hook_normalized"):
            prefix = name[: -len(".hook_normalized")]
            ln = model.ln_final if prefix == "ln_final" else getattr(model.blocks[int(prefix.split(".")[1])],
                                                                    prefix.split(".")[2])
            check(name, ours * np.asarray(ln.weight) + np.asarray(ln.bias), ref[prefix + ".normed"])
        else:
            check(name, ours, ref[name], scores=name.endswith(("hook_attn_scores", "hook_pattern")))
    check("logits", logits, ref["logits"])
    return worst


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_hook_and_logits_match_transformers(variant, checkpoints):
    hf, folder = checkpoints(variant)
    model = interp.load(folder)
    family = neox if variant.startswith("neox") else gpt2
    assert isinstance(model.config, family.Config)
    tokens = random_tokens(model.d_vocab, (2, 9), seed=1)
    worst = compare_all(model, hf, tokens)
    print(f"{variant}: max abs diff {worst:.3g}")


@pytest.mark.parametrize("variant", ["gpt2", "neox_parallel"])
def test_left_padded_batch_matches_transformers(variant, checkpoints):
    """Positions count real tokens (``cumsum(mask) - 1``, clipped at 0): transformers gets them explicitly."""
    hf, folder = checkpoints(variant)
    model = interp.load(folder)
    lengths = [10, 6, 3]
    T = max(lengths)
    mask = np.zeros((3, T), np.int32)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
    tokens = np.where(mask == 1, random_tokens(model.d_vocab, (3, T), seed=2), 0).astype(np.int32)
    worst = compare_all(model, hf, tokens, attention_mask=mask, valid=mask)
    print(f"{variant} left-padded: max abs diff {worst:.3g}")
    # and the real tokens see what they see unpadded
    alone = np.asarray(model(tokens[2:, T - 3:]))
    assert_close(np.asarray(model(tokens, attention_mask=mask))[2:, T - 3:], alone,
                 model_bound(alone, n_layers=model.n_layers), "padded vs unpadded logits")


def test_gpt2_reads_unprefixed_tensor_names(checkpoints, tmp_path):
    """openai-community/gpt2's own files name tensors without the ``transformer.`` prefix."""
    import shutil
    from pathlib import Path

    from safetensors.numpy import save_file

    from interp.weights import SafetensorsReader, safetensor_files

    _, folder = checkpoints("gpt2")
    model = interp.load(folder)
    reader = SafetensorsReader(safetensor_files(folder))
    bare = {name.removeprefix("transformer."): reader(name) for name in reader.keys()}
    other = gpt2.from_hf_weights(model.config, bare.__getitem__)
    tokens = random_tokens(model.d_vocab, (1, 6), seed=3)
    np.testing.assert_array_equal(np.asarray(other(tokens)), np.asarray(model(tokens)))
    # and a folder saved that way loads through interp.load
    save_file({k: np.ascontiguousarray(v) for k, v in bare.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(Path(folder) / "config.json", tmp_path / "config.json")
    np.testing.assert_array_equal(np.asarray(interp.load(tmp_path)(tokens)), np.asarray(model(tokens)))
    with pytest.raises(ValueError, match="learned positions"):
        model(random_tokens(model.d_vocab, (1, model.embed.W_pos.shape[0] + 1)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_round_trip(variant, checkpoints):
    _, folder = checkpoints(variant)
    config = interp.load(folder).config
    assert type(config).from_hf(config.to_hf()) == config


@pytest.mark.parametrize("variant, change, message", [
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),
    ("gpt2", {"activation_function": "quick_gelu"}, "activation_function 'quick_gelu'"),
    ("neox_parallel", {"hidden_act": "quick_gelu"}, "hidden_act 'quick_gelu'"),
    ("neox_parallel", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     "rope type 'dynamic'"),
    ("neox_parallel", {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.375}},
     "odd rotary dim"),
])
def test_unsupported_config_values_raise_clearly(variant, change, message, checkpoints, tmp_path):
    _, folder = checkpoints(variant)
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=message):
        interp.load(copy)


def test_upcast_attention_needs_float32(checkpoints):
    import jax.numpy as jnp

    _, folder = checkpoints("gpt2_layer_scale")
    with pytest.raises(ValueError, match="reorder_and_upcast_attn.*dtype=float32"):
        interp.load(folder, dtype=jnp.bfloat16)
