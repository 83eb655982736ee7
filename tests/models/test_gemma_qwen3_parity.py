"""Gemma 1/2/3 and Qwen3 against Hugging Face transformers on tiny random-init configs: logits and every hook point.

Sequences are longer than the sliding window, so local layers are checked where the window cuts. Each tiny config
turns on what its family adds: Gemma 2 soft-caps scores and logits hard enough to matter, Gemma 3 gives local layers
another rotary base and its global layers linear rope scaling, Qwen3 windows only its upper layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import interp
from interp.models import gemma, llama
from tests.conftest import random_tokens, saved_checkpoints
from tests.numerics import model_bound

WINDOW = 4

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=64)

# name -> (transformers config class, overrides)
FAMILIES = {
    "gemma": ("GemmaConfig", {"num_key_value_heads": 1}),
    "gemma2": ("Gemma2Config", {"sliding_window": WINDOW, "query_pre_attn_scalar": 6,
                                "attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.0}),
    "gemma3": ("Gemma3TextConfig", {"sliding_window": WINDOW, "sliding_window_pattern": 2, "query_pre_attn_scalar": 6,
                                    "rope_local_base_freq": 100.0, "rope_theta": 10000.0,
                                    "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "qwen3": ("Qwen3Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
}


def make_hf(family: str, seed: int = 0):
    """A tiny random-init transformers causal LM (eager attention, float32) with random norm weights."""
    import transformers

    cls_name, overrides = FAMILIES[family]
    cfg = getattr(transformers, cls_name)(**{**TINY, **overrides}, initializer_range=0.1)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    # Gemma norms scale by (1 + w): w around -0.4 keeps the residual stream O(1) through the post-norms, as in
    # trained checkpoints.
    centre = -0.4 if family.startswith("gemma") else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(centre + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """family -> (transformers model, our model loaded from its saved folder, folder)."""
    saved = saved_checkpoints(make_hf, tmp_path_factory)
    cache = {}

    def get(family: str):
        if family not in cache:
            hf, folder = saved(family)
            cache[family] = (hf, interp.load(folder), folder)
        return cache[family]

    return get


def hf_reference(hf, tokens, attention_mask=None, position_ids=None) -> dict[str, np.ndarray]:
    """Every hook point's reference value under our names, read off the transformers model with torch hooks and its
    own rotary functions. Norms give ``{prefix}.hook_scale`` (from the norm's input) and ``{prefix}.out`` (the
    weighted output, compared with our ``hook_normalized`` times the weight)."""
    import importlib

    cfg = hf.config
    mt = cfg.model_type
    name = mt.removesuffix("_text")
    modeling = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    H, K, E = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    B, T = tokens.shape
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def first(x):
        return x[0] if isinstance(x, tuple) else x

    def out_hook(name, shape=None):
        def f(mod, args, out):
            acts[name] = first(out) if shape is None else first(out).reshape(B, T, *shape)
        return f

    def in_hook(name, shape=None):
        def f(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            acts[name] = x if shape is None else x.reshape(B, T, *shape)
        return f

    def norm(mod, prefix, heads_first=False):
        eps = mod.eps if hasattr(mod, "eps") else mod.variance_epsilon

        def pre(m, args):
            x = args[0].double()
            x = x.transpose(1, 2) if heads_first else x
            acts[f"{prefix}.hook_scale"] = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

        def post(m, args, out):
            acts[f"{prefix}.out"] = out.transpose(1, 2) if heads_first else out

        handles.extend([mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)])

    m = hf.model
    post_norms = hasattr(m.layers[0], "pre_feedforward_layernorm")
    handles.append(m.embed_tokens.register_forward_hook(out_hook("hook_embed")))
    norm(m.norm, "ln_final")
    for i, layer in enumerate(m.layers):
        p = f"blocks.{i}"
        at = layer.self_attn
        handles.append(layer.register_forward_pre_hook(in_hook(f"{p}.hook_resid_pre"), with_kwargs=True))
        handles.append(layer.register_forward_hook(out_hook(f"{p}.hook_resid_post")))
        norm(layer.input_layernorm, f"{p}.ln1")
        if post_norms:
            norm(layer.post_attention_layernorm, f"{p}.ln1_post")
            norm(layer.pre_feedforward_layernorm, f"{p}.ln2")
            norm(layer.post_feedforward_layernorm, f"{p}.ln2_post")
            handles.append(layer.post_attention_layernorm.register_forward_hook(out_hook(f"{p}.hook_attn_out")))
            handles.append(layer.pre_feedforward_layernorm.register_forward_pre_hook(
                in_hook(f"{p}.hook_resid_mid"), with_kwargs=True))
            handles.append(layer.post_feedforward_layernorm.register_forward_hook(out_hook(f"{p}.hook_mlp_out")))
        else:
            norm(layer.post_attention_layernorm, f"{p}.ln2")
            handles.append(at.register_forward_hook(out_hook(f"{p}.hook_attn_out")))
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(
                in_hook(f"{p}.hook_resid_mid"), with_kwargs=True))
            handles.append(layer.mlp.register_forward_hook(out_hook(f"{p}.hook_mlp_out")))
        if hasattr(at, "q_norm"):  # Gemma 3 normalises [B H T E] after the transpose, Qwen3 [B T H E] before it
            norm(at.q_norm, f"{p}.attn.q_norm", heads_first=mt == "gemma3_text")
            norm(at.k_norm, f"{p}.attn.k_norm", heads_first=mt == "gemma3_text")
        handles.append(at.q_proj.register_forward_hook(out_hook(f"{p}.attn.hook_q", (H, E))))
        handles.append(at.k_proj.register_forward_hook(out_hook(f"{p}.attn.hook_k", (K, E))))
        handles.append(at.v_proj.register_forward_hook(out_hook(f"{p}.attn.hook_v", (K, E))))
        handles.append(at.o_proj.register_forward_pre_hook(in_hook(f"{p}.attn.hook_z", (H, E)), with_kwargs=True))
        handles.append(layer.mlp.gate_proj.register_forward_hook(out_hook(f"{p}.mlp.hook_pre")))
        handles.append(layer.mlp.up_proj.register_forward_hook(out_hook(f"{p}.mlp.hook_pre_linear")))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(in_hook(f"{p}.mlp.hook_post"), with_kwargs=True))
    t = torch.tensor(np.asarray(tokens), dtype=torch.long)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(T), (B, T))
    pos = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    try:
        with torch.no_grad():
            out = hf(t, position_ids=pos, output_attentions=True, **kw)
            for i, layer in enumerate(m.layers):
                p, at = f"blocks.{i}.attn", layer.self_attn
                if mt == "gemma3_text":
                    cos, sin = m.rotary_emb(acts["hook_embed"], pos, cfg.layer_types[i])
                else:
                    cos, sin = m.rotary_emb(acts["hook_embed"], pos)
                q = acts[f"{p}.q_norm.out" if hasattr(at, "q_norm") else f"{p}.hook_q"].transpose(1, 2)
                k = acts[f"{p}.k_norm.out" if hasattr(at, "k_norm") else f"{p}.hook_k"].transpose(1, 2)
                rq, rk = modeling.apply_rotary_pos_emb(q, k, cos, sin)
                acts[f"{p}.hook_rot_q"] = rq.transpose(1, 2)
                acts[f"{p}.hook_rot_k"] = rk.transpose(1, 2)
                scores = rq @ modeling.repeat_kv(rk, H // K).transpose(2, 3) * at.scaling
                if mt == "gemma2":
                    scores = torch.tanh(scores / at.attn_logit_softcapping) * at.attn_logit_softcapping
                acts[f"{p}.hook_attn_scores"] = scores
                acts[f"{p}.hook_pattern"] = out.attentions[i]
    finally:
        for h in handles:
            h.remove()
    res = {k: v.detach().numpy() for k, v in acts.items()}
    res["logits"] = out.logits.numpy()
    return res


def _module(model, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def compare_all(model, hf, tokens, attention_mask=None, valid=None) -> float:
    """Assert the logits and every hook point match (on real tokens; on scores, real causal keys inside the
    window). Returns the largest difference seen."""
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask)
    positions = None if attention_mask is None else np.maximum(np.cumsum(attention_mask, -1) - 1, 0)
    ref = hf_reference(hf, tokens, attention_mask, positions)
    B, T = tokens.shape
    valid = np.ones((B, T), bool) if valid is None else np.asarray(valid, bool)
    worst = 0.0

    def check(name, ours, theirs, sel):
        nonlocal worst
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
        sel = np.broadcast_to(sel, ours.shape)
        diff = np.abs(ours - theirs)[sel]
        err = float(diff.max()) if diff.size else 0.0
        bound = model_bound(theirs[sel], n_layers=model.n_layers)
        assert err <= bound, f"{name}: max abs diff {err:.3g} > {bound:.3g}"
        worst = max(worst, err)

    for name in model.hook_names:
        ours = np.asarray(cache[name])
        sel_bt = valid.reshape(B, T, *([1] * (ours.ndim - 2)))
        if name.endswith("hook_normalized"):
            prefix = name.removesuffix(".hook_normalized")
            check(name, ours * np.asarray(_module(model, prefix).weight), ref[f"{prefix}.out"], sel_bt)
        elif name.endswith(("hook_attn_scores", "hook_pattern")):
            layer = int(name.split(".")[1])
            window = getattr(hf.model.layers[layer].self_attn, "sliding_window", None)
            keys = valid[:, None, None, :] & np.tril(np.ones((T, T), bool))[None, None]
            if window is not None:
                keys = keys & (np.arange(T)[:, None] - np.arange(T)[None, :] < window)[None, None]
            queries = valid[:, None, :, None]
            check(name, ours, ref[name], queries & keys if name.endswith("scores") else queries)
        else:
            check(name, ours, ref[name], sel_bt)
    check("logits", logits, ref["logits"], valid[:, :, None])
    return worst


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_hook_and_logits_match_transformers(family, checkpoint):
    hf, model, _ = checkpoint(family)
    tokens = random_tokens(model.d_vocab, (2, 11), seed=1)  # 11 tokens: longer than the window of 4
    compare_all(model, hf, tokens)
    names = set(model.hook_names)
    has = lambda part: any(part in n for n in names)  # noqa: E731
    assert has(".ln1_post.") == has(".ln2_post.") == (family in ("gemma2", "gemma3"))
    assert has(".q_norm.") == has(".k_norm.") == (family in ("gemma3", "qwen3"))


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_left_padded_batch_matches_transformers(family, checkpoint):
    hf, model, _ = checkpoint(family)
    lengths = [11, 7, 3]
    T = max(lengths)
    tokens = random_tokens(model.d_vocab, (3, T), seed=2)
    mask = np.zeros((3, T), np.int32)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
    tokens = np.where(mask == 1, tokens, 0).astype(np.int32)
    compare_all(model, hf, tokens, attention_mask=mask, valid=mask)


def test_local_and_global_layers_are_set_up_as_configured(checkpoint):
    _, g2, _ = checkpoint("gemma2")
    _, g3, _ = checkpoint("gemma3")
    _, q3, _ = checkpoint("qwen3")
    assert [b.attn.sliding_window for b in g2.blocks] == [WINDOW, None, WINDOW]  # every other layer local
    assert [b.attn.sliding_window for b in g3.blocks] == [WINDOW, None, WINDOW]  # sliding_window_pattern 2
    assert [b.attn.rope.theta for b in g3.blocks] == [100.0, 10000.0, 100.0]
    assert [b.attn.rope.scaling for b in g3.blocks] == [None, ("linear", 2.0), None]
    assert [b.attn.sliding_window for b in q3.blocks] == [None, WINDOW, WINDOW]  # from max_window_layers on
    assert g2.blocks[0].attn.scale == g3.blocks[0].attn.scale == 6**-0.5
    assert (g2.blocks[0].attn.softcap, g2.logit_softcap) == (0.5, 1.0)
    assert g3.blocks[0].attn.softcap is None and g3.logit_softcap is None
    assert g3.embed.scale == 32**0.5


@pytest.mark.parametrize(
    "family, change",
    [
        ("gemma2", {"sliding_window": None}),
        ("gemma2", {"attn_softcap": None}),
        ("gemma2", {"final_softcap": None}),
        ("gemma3", {"sliding_window": None}),
        ("gemma3", {"rope_local_theta": None}),
        ("gemma3", {"rope_scaling": None}),
        ("gemma3", {"query_pre_attn_scalar": None}),
        ("gemma", {"norm_offset": 0.0}),
        ("qwen3", {"sliding_window": None}),
        ("qwen3", {"qk_norm": False}),
    ],
    ids=lambda v: v if isinstance(v, str) else "no-" + next(iter(v)),
)
def test_each_feature_changes_the_logits(family, change, checkpoint):
    """The parity above is not vacuous: dropping any one feature moves the logits well past the tolerance."""
    from interp.weights.hf import SafetensorsReader, safetensor_files

    hf, model, folder = checkpoint(family)
    module = llama if family == "qwen3" else gemma
    altered = module.from_hf_weights(dataclasses.replace(model.config, **change),
                                     SafetensorsReader(safetensor_files(folder)))
    tokens = random_tokens(model.d_vocab, (1, 11), seed=3)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    bound = model_bound(ref, n_layers=model.n_layers)
    assert np.abs(np.asarray(model(tokens)) - ref).max() <= bound
    assert np.abs(np.asarray(altered(tokens)) - ref).max() > 10 * bound


def test_configs_from_transformers_4_and_5_agree():
    """config.json as transformers 4.x wrote it (rope_theta, rope_local_base_freq, rope_scaling,
    sliding_window_pattern) reads as the 5.x form (rope_parameters per layer type, layer_types)."""
    import transformers

    legacy = {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **TINY, "num_hidden_layers": 7,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "sliding_window": 512,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 8, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    current = transformers.Gemma3TextConfig(**{k: v for k, v in legacy.items() if k != "architectures"}).to_dict()
    current["architectures"] = ["Gemma3ForCausalLM"]
    assert "rope_parameters" in current and "rope_local_base_freq" not in current
    a, b = gemma.GemmaConfig.from_hf(legacy), gemma.GemmaConfig.from_hf(current)
    assert a == b
    assert a.sliding_layers == (True,) * 5 + (False, True)
    assert (a.rope_theta, a.rope_scaling, a.rope_local_theta, a.rope_local_scaling) == (
        1e6, ("linear", 8.0), 1e4, None)
    assert gemma.GemmaConfig.from_hf(a.to_hf()) == a
    legacy_qwen3 = {"architectures": ["Qwen3ForCausalLM"], **TINY, "use_sliding_window": False, "sliding_window": 4096}
    assert llama.LlamaConfig.from_hf(legacy_qwen3).sliding_window is None
    assert llama.LlamaConfig.from_hf(legacy_qwen3).qk_norm
