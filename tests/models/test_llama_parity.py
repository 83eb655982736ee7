"""Parity with Hugging Face transformers on tiny random-init configs: logits and every hook point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from tests.conftest import VARIANTS, random_tokens
from tests.numerics import assert_close, model_bound


def hf_activations(hf, tokens: np.ndarray, attention_mask=None, position_ids=None) -> dict[str, np.ndarray]:
    """Every hook point's reference value, read off the transformers model with torch hooks and its own
    rotary / repeat_kv functions. Norm outputs include the weight (ours is compared times the weight)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    cfg = hf.config
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    E = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    B, T = tokens.shape
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(name, reshape=None):
        def f(mod, args, out):
            o = out[0] if isinstance(out, tuple) else out
            acts[name] = o if reshape is None else o.reshape(B, T, *reshape)
        return f

    def in_hook(name, reshape=None):
        def f(mod, args, kwargs=None):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = x if reshape is None else x.reshape(B, T, *reshape)
        return f

    m = hf.model
    handles.append(m.embed_tokens.register_forward_hook(out_hook("hook_embed")))
    handles.append(m.norm.register_forward_hook(out_hook("ln_final.normed")))
    for l, layer in enumerate(m.layers):
        p = f"blocks.{l}"
        handles.append(layer.register_forward_pre_hook(
            lambda mod, args, kwargs, p=p: acts.__setitem__(f"{p}.hook_resid_pre", args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        handles.append(layer.register_forward_hook(out_hook(f"{p}.hook_resid_post")))
        handles.append(layer.input_layernorm.register_forward_hook(out_hook(f"{p}.ln1.normed")))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(in_hook(f"{p}.hook_resid_mid")))
        handles.append(layer.post_attention_layernorm.register_forward_hook(out_hook(f"{p}.ln2.normed")))
        at = layer.self_attn
        handles.append(at.q_proj.register_forward_hook(out_hook(f"{p}.attn.hook_q", (H, E))))
        handles.append(at.k_proj.register_forward_hook(out_hook(f"{p}.attn.hook_k", (K, E))))
        handles.append(at.v_proj.register_forward_hook(out_hook(f"{p}.attn.hook_v", (K, E))))
        handles.append(at.o_proj.register_forward_pre_hook(in_hook(f"{p}.attn.hook_z", (H, E))))
        handles.append(at.register_forward_hook(out_hook(f"{p}.hook_attn_out")))
        handles.append(layer.mlp.gate_proj.register_forward_hook(out_hook(f"{p}.mlp.hook_pre")))
        handles.append(layer.mlp.up_proj.register_forward_hook(out_hook(f"{p}.mlp.hook_pre_linear")))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(in_hook(f"{p}.mlp.hook_post")))
        handles.append(layer.mlp.register_forward_hook(out_hook(f"{p}.hook_mlp_out")))
    t = torch.tensor(tokens, dtype=torch.long)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    pos = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        out = hf(t, position_ids=pos, output_attentions=True, **kw)
        cos, sin = m.rotary_emb(acts["hook_embed"], pos)
        for l in range(cfg.num_hidden_layers):
            p = f"blocks.{l}.attn"
            q = acts[f"{p}.hook_q"].transpose(1, 2)
            k = acts[f"{p}.hook_k"].transpose(1, 2)
            rq, rk = apply_rotary_pos_emb(q, k, cos, sin)
            acts[f"{p}.hook_rot_q"] = rq.transpose(1, 2)
            acts[f"{p}.hook_rot_k"] = rk.transpose(1, 2)
            acts[f"{p}.hook_attn_scores"] = rq @ repeat_kv(rk, H // K).transpose(2, 3) * E**-0.5
            acts[f"{p}.hook_pattern"] = out.attentions[l]
    for h in handles:
        h.remove()
    res = {k: v.detach().numpy() for k, v in acts.items()}
    res["logits"] = out.logits.numpy()
    return res


def compare_all(model, hf, tokens, attention_mask=None, positions=None, valid=None):
    """Assert every hook point and the logits match; ``valid [B T]`` limits the check to real tokens."""
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask, positions=positions)
    if positions is None and attention_mask is not None:
        positions = np.maximum(np.cumsum(attention_mask, -1) - 1, 0)
    ref = hf_activations(hf, tokens, attention_mask, positions)
    B, T = tokens.shape
    valid = np.ones((B, T), bool) if valid is None else np.asarray(valid, bool)
    checked = set()

    def check(name, ours, theirs, bt_axes=(0, 1)):
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
        if bt_axes == (0, 2):  # [B H T S]: valid queries, and keys that are real and causal
            qmask = valid[:, None, :, None]
            kmask = valid[:, None, None, :] & np.tril(np.ones((T, T), bool))[None, None]
            window = hf.config.sliding_window if hf.config.model_type == "mistral" else None
            if window:
                kmask = kmask & (np.arange(T)[:, None] - np.arange(T)[None, :] < window)[None, None]
            sel = np.broadcast_to(qmask & kmask if name.endswith("scores") else qmask, ours.shape)
        else:  # [B T ...]: real tokens only
            sel = np.broadcast_to(valid.reshape(valid.shape + (1,) * (ours.ndim - 2)), ours.shape)
        diff = np.abs(ours - theirs)[sel]
        err = float(diff.max()) if diff.size else 0.0
        bound = model_bound(theirs[sel], n_layers=model.n_layers)
        assert err <= bound, f"{name}: max abs diff {err:.3g} > {bound:.3g}"

    for name in model.hook_names:
        ours = cache[name]
        if name.endswith("hook_scale"):
            # x / scale must be the normalized value, which is checked against the reference below
            base = name[: -len("hook_scale")]
            x = cache[name.replace(".ln1.hook_scale", ".hook_resid_pre").replace(".ln2.hook_scale", ".hook_resid_mid")] \
                if not name.startswith("ln_final") else cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
            check(name, np.asarray(x) / np.asarray(ours), cache[base + "hook_normalized"])
        elif name.endswith("hook_normalized"):
            block = name.split(".hook_normalized")[0]
            ln = model.ln_final if block == "ln_final" else getattr(model.blocks[int(block.split(".")[1])], block.split(".")[2])
            check(name, np.asarray(ours) * np.asarray(ln.weight), ref[block + ".normed"])
        elif name.endswith(("hook_attn_scores", "hook_pattern")):
            check(name, ours, ref[name], bt_axes=(0, 2))
        else:
            check(name, ours, ref[name])
        checked.add(name)
    check("logits", logits, ref["logits"])
    assert checked == set(model.hook_names)
    return ref


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
