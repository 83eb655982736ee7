"""Parity against Hugging Face transformers: tiny random-init models, their activations read off under our hook
names with torch hooks, and one comparison of the logits and every hook point.

Two readers cover the families: :func:`llama_layout_reference` (Llama, Mistral, Qwen 2/3, Gemma 1/2/3, whose
checkpoints share one module layout) and :func:`gpt2_neox_reference` (GPT-2 and GPT-NeoX, fused QKV and
LayerNorm). :func:`compare_all` picks the reader from the checkpoint's ``model_type``.

Every norm gives the reference ``{prefix}.hook_scale`` (from the norm's input, in float64: the root mean square,
of the centred input for a LayerNorm) and ``{prefix}.normed`` (the norm's output, weight and bias applied; ours is
compared as ``hook_normalized * weight + bias``).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from tests.numerics import model_bound

GPT2_NEOX = ("gpt2", "gpt_neox")


def tiny_transformers(cls_name: str, config: dict, seed: int = 0, norm_centre: float = 1.0):
    """A tiny random-init transformers causal LM (eager attention, float32) from ``transformers.<cls_name>``, with
    norm weights ``norm_centre + N(0, 0.3)`` and biases ``N(0, 0.1)``, so that every weight has a visible effect."""
    import transformers

    cfg = getattr(transformers, cls_name)(**config, initializer_range=0.1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    norms = {id(p) for mod in model.modules() if type(mod).__name__.endswith("Norm")
             for p in mod.parameters(recurse=False) if p.ndim == 1 and p is getattr(mod, "weight", None)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in norms:
                p.copy_(norm_centre + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


class Recorder:
    """Torch hooks on a transformers model that keep activations under our hook names; ``heads`` reshapes a
    ``[B T H*E]`` value to ``[B T H E]``."""

    def __init__(self, B: int, T: int):
        self.B, self.T = B, T
        self.acts: dict[str, torch.Tensor] = {}
        self.handles = []

    def _keep(self, name, x, heads=None):
        self.acts[name] = x if heads is None else x.reshape(self.B, self.T, *heads)

    def post(self, mod, name, heads=None):
        """The module's output (the first element of a tuple)."""
        self.tap(mod, lambda m, args, out: self._keep(name, out[0] if isinstance(out, tuple) else out, heads))

    def pre(self, mod, name, heads=None):
        """The module's input (first positional argument, or ``hidden_states``)."""
        self.handles.append(mod.register_forward_pre_hook(
            lambda m, args, kwargs: self._keep(name, args[0] if args else kwargs["hidden_states"], heads),
            with_kwargs=True))

    def tap(self, mod, hook):
        self.handles.append(mod.register_forward_hook(hook))

    def norm(self, mod, prefix, heads_first=False):
        """``{prefix}.hook_scale`` and ``{prefix}.normed``; ``heads_first``: the norm sees ``[B H T E]``."""
        eps = mod.eps if hasattr(mod, "eps") else mod.variance_epsilon
        centred = isinstance(mod, torch.nn.LayerNorm)

        def scale(m, args):
            x = args[0].double()
            x = x.transpose(1, 2) if heads_first else x
            x = x - x.mean(-1, keepdim=True) if centred else x
            self.acts[f"{prefix}.hook_scale"] = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

        self.handles.append(mod.register_forward_pre_hook(scale))
        self.tap(mod, lambda m, args, out: self._keep(f"{prefix}.normed", out.transpose(1, 2) if heads_first else out))

    def run(self, hf, tokens, attention_mask=None, position_ids=None, after=None) -> dict[str, np.ndarray]:
        """Run ``hf`` with attention weights returned; ``after(out, pos)`` adds values computed from what was kept
        (rotary, scores). Removes the hooks; returns every activation and the logits as numpy arrays."""
        kw = {}
        if attention_mask is not None:
            kw["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(self.T), (self.B, self.T))
        pos = torch.tensor(np.asarray(position_ids), dtype=torch.long)
        try:
            with torch.no_grad():
                out = hf(torch.tensor(np.asarray(tokens), dtype=torch.long), position_ids=pos, output_attentions=True,
                         **kw)
                if after is not None:
                    after(out, pos)
        finally:
            for h in self.handles:
                h.remove()
        res = {k: v.detach().numpy() for k, v in self.acts.items()}
        res["logits"] = out.logits.numpy()
        return res


def llama_layout_reference(hf, tokens, attention_mask=None, position_ids=None) -> dict[str, np.ndarray]:
    """Every hook point's reference value for the Llama layout (Llama, Mistral, Qwen 2/3, Gemma 1/2/3), with the
    model's own rotary and ``repeat_kv`` functions for the rotated queries/keys and scores."""
    cfg = hf.config
    mt = cfg.model_type
    modeling = importlib.import_module(f"transformers.models.{mt.removesuffix('_text')}.modeling_"
                                       f"{mt.removesuffix('_text')}")
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    E = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    rec = Recorder(*np.shape(tokens))
    m = hf.model
    post_norms = hasattr(m.layers[0], "pre_feedforward_layernorm")
    rec.post(m.embed_tokens, "hook_embed")
    rec.norm(m.norm, "ln_final")
    for i, layer in enumerate(m.layers):
        p, at = f"blocks.{i}", layer.self_attn
        rec.pre(layer, f"{p}.hook_resid_pre")
        rec.post(layer, f"{p}.hook_resid_post")
        rec.norm(layer.input_layernorm, f"{p}.ln1")
        if post_norms:  # Gemma 2/3: attention and MLP outputs are normed before they join the residual
            rec.norm(layer.post_attention_layernorm, f"{p}.ln1_post")
            rec.norm(layer.pre_feedforward_layernorm, f"{p}.ln2")
            rec.norm(layer.post_feedforward_layernorm, f"{p}.ln2_post")
            rec.post(layer.post_attention_layernorm, f"{p}.hook_attn_out")
            rec.pre(layer.pre_feedforward_layernorm, f"{p}.hook_resid_mid")
            rec.post(layer.post_feedforward_layernorm, f"{p}.hook_mlp_out")
        else:
            rec.norm(layer.post_attention_layernorm, f"{p}.ln2")
            rec.post(at, f"{p}.hook_attn_out")
            rec.pre(layer.post_attention_layernorm, f"{p}.hook_resid_mid")
            rec.post(layer.mlp, f"{p}.hook_mlp_out")
        if hasattr(at, "q_norm"):  # Gemma 3 normalises [B H T E] after the transpose, Qwen3 [B T H E] before it
            rec.norm(at.q_norm, f"{p}.attn.q_norm", heads_first=mt == "gemma3_text")
            rec.norm(at.k_norm, f"{p}.attn.k_norm", heads_first=mt == "gemma3_text")
        rec.post(at.q_proj, f"{p}.attn.hook_q", (H, E))
        rec.post(at.k_proj, f"{p}.attn.hook_k", (K, E))
        rec.post(at.v_proj, f"{p}.attn.hook_v", (K, E))
        rec.pre(at.o_proj, f"{p}.attn.hook_z", (H, E))
        rec.post(layer.mlp.gate_proj, f"{p}.mlp.hook_pre")
        rec.post(layer.mlp.up_proj, f"{p}.mlp.hook_pre_linear")
        rec.pre(layer.mlp.down_proj, f"{p}.mlp.hook_post")

    def rotary_and_scores(out, pos):
        acts = rec.acts
        for i, layer in enumerate(m.layers):
            p, at = f"blocks.{i}.attn", layer.self_attn
            if mt == "gemma3_text":
                cos, sin = m.rotary_emb(acts["hook_embed"], pos, cfg.layer_types[i])
            else:
                cos, sin = m.rotary_emb(acts["hook_embed"], pos)
            q = acts[f"{p}.q_norm.normed" if hasattr(at, "q_norm") else f"{p}.hook_q"].transpose(1, 2)
            k = acts[f"{p}.k_norm.normed" if hasattr(at, "k_norm") else f"{p}.hook_k"].transpose(1, 2)
            rq, rk = modeling.apply_rotary_pos_emb(q, k, cos, sin)
            acts[f"{p}.hook_rot_q"], acts[f"{p}.hook_rot_k"] = rq.transpose(1, 2), rk.transpose(1, 2)
            scores = rq @ modeling.repeat_kv(rk, H // K).transpose(2, 3) * at.scaling
            if mt == "gemma2":
                scores = torch.tanh(scores / at.attn_logit_softcapping) * at.attn_logit_softcapping
            acts[f"{p}.hook_attn_scores"] = scores
            acts[f"{p}.hook_pattern"] = out.attentions[i]

    return rec.run(hf, tokens, attention_mask, position_ids, after=rotary_and_scores)


def gpt2_neox_reference(hf, tokens, attention_mask=None, position_ids=None) -> dict[str, np.ndarray]:
    """Every hook point's reference value for GPT-2 and GPT-NeoX (fused QKV split as each model reads it; for NeoX,
    its own rotary function)."""
    cfg = hf.config
    neox = cfg.model_type == "gpt_neox"
    H = cfg.num_attention_heads
    E = cfg.hidden_size // H
    B, T = np.shape(tokens)
    rec = Recorder(B, T)

    def split_qkv(p):
        def f(mod, args, out):
            if neox:  # rows per head as [q, k, v][head_dim], as GPTNeoXAttention reads them
                q, k, v = out.view(B, T, H, 3 * E).chunk(3, dim=-1)
            else:  # [q | k | v], each heads x head_dim, as GPT2Attention reads them
                q, k, v = (x.reshape(B, T, H, E) for x in out.split(cfg.hidden_size, dim=2))
            rec.acts[f"{p}.hook_q"], rec.acts[f"{p}.hook_k"], rec.acts[f"{p}.hook_v"] = q, k, v
        return f

    if neox:
        m = hf.gpt_neox
        rec.post(m.embed_in, "hook_embed")
        rec.norm(m.final_layer_norm, "ln_final")
        layers = [(layer, layer.input_layernorm, layer.attention, layer.attention.query_key_value,
                   layer.attention.dense, layer.post_attention_layernorm, layer.mlp, layer.mlp.dense_h_to_4h,
                   layer.mlp.dense_4h_to_h) for layer in m.layers]
        sequential = not cfg.use_parallel_residual
    else:
        m = hf.transformer
        rec.post(m.wte, "hook_embed")
        rec.post(m.wpe, "hook_pos_embed")
        rec.norm(m.ln_f, "ln_final")
        layers = [(layer, layer.ln_1, layer.attn, layer.attn.c_attn, layer.attn.c_proj, layer.ln_2, layer.mlp,
                   layer.mlp.c_fc, layer.mlp.c_proj) for layer in m.h]
        sequential = True
    for l, (layer, ln1, attn, qkv, out_proj, ln2, mlp, mlp_in, mlp_out) in enumerate(layers):
        p = f"blocks.{l}"
        rec.pre(layer, f"{p}.hook_resid_pre")
        rec.post(layer, f"{p}.hook_resid_post")
        rec.norm(ln1, f"{p}.ln1")
        rec.norm(ln2, f"{p}.ln2")
        if sequential:
            rec.pre(ln2, f"{p}.hook_resid_mid")
        rec.tap(qkv, split_qkv(f"{p}.attn"))
        rec.pre(out_proj, f"{p}.attn.hook_z", (H, E))
        rec.post(attn, f"{p}.hook_attn_out")
        rec.post(mlp_in, f"{p}.mlp.hook_pre")
        rec.pre(mlp_out, f"{p}.mlp.hook_post")
        rec.post(mlp, f"{p}.hook_mlp_out")

    def rotary_and_scores(out, pos):
        acts = rec.acts
        if neox:
            from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

            cos, sin = m.rotary_emb(acts["hook_embed"], pos)
        for l, (_, _, attn, *_rest) in enumerate(layers):
            p = f"blocks.{l}.attn"
            q, k = acts[f"{p}.hook_q"].transpose(1, 2), acts[f"{p}.hook_k"].transpose(1, 2)
            if neox:
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                acts[f"{p}.hook_rot_q"], acts[f"{p}.hook_rot_k"] = q.transpose(1, 2), k.transpose(1, 2)
            acts[f"{p}.hook_attn_scores"] = q @ k.transpose(2, 3) * attn.scaling
            acts[f"{p}.hook_pattern"] = out.attentions[l]

    return rec.run(hf, tokens, attention_mask, position_ids, after=rotary_and_scores)


def _module(model, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _attention_layers(hf):
    return hf.gpt_neox.layers if hf.config.model_type == "gpt_neox" else (
        [b.attn for b in hf.transformer.h] if hf.config.model_type == "gpt2"
        else [layer.self_attn for layer in hf.model.layers])


def compare_all(model, hf, tokens, attention_mask=None, valid=None, positions=None) -> float:
    """Assert that the logits and every hook point of ``model`` match ``hf`` within :func:`model_bound` of the
    reference values: on real tokens (``valid [B T]``, default all) and, for attention scores, on real causal keys
    inside the layer's window. Returns the largest difference seen."""
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask, positions=positions)
    if positions is None and attention_mask is not None:
        positions = np.maximum(np.cumsum(attention_mask, -1) - 1, 0)
    reference = gpt2_neox_reference if hf.config.model_type in GPT2_NEOX else llama_layout_reference
    ref = reference(hf, tokens, attention_mask, positions)
    B, T = np.shape(tokens)
    valid = np.ones((B, T), bool) if valid is None else np.asarray(valid, bool)
    causal = np.tril(np.ones((T, T), bool))
    attention = _attention_layers(hf)
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
        real = valid.reshape(B, T, *([1] * (ours.ndim - 2)))
        if name.endswith("hook_normalized"):
            prefix = name.removesuffix(".hook_normalized")
            ln = _module(model, prefix)
            bias = getattr(ln, "bias", None)
            ours = ours * np.asarray(ln.weight) + (0.0 if bias is None else np.asarray(bias))
            check(name, ours, ref[f"{prefix}.normed"], real)
        elif name.endswith(("hook_attn_scores", "hook_pattern")):  # [B H T S]
            attn = attention[int(name.split(".")[1])]
            window = getattr(attn, "sliding_window", getattr(hf.config, "sliding_window", None))
            queries = valid[:, None, :, None]
            keys = valid[:, None, None, :] & causal[None, None]
            if window is not None:
                keys = keys & (np.arange(T)[:, None] - np.arange(T)[None, :] < window)[None, None]
            check(name, ours, ref[name], queries & keys if name.endswith("scores") else queries)
        else:
            check(name, ours, ref[name], real)
    check("logits", logits, ref["logits"], valid[:, :, None])
    return worst
