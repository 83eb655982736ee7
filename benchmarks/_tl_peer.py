"""TransformerLens peer for the patching benchmark.

``load_tl(folder)`` gives a ``HookedTransformer`` holding exactly the weights of the packaged default model
(SmolLM2-135M-Instruct, the converted checkpoint folder from ``interp.weights.ensure_default()``), in float32
on CPU with no weight processing, checked once against ``transformers`` on the same folder.
TransformerLens does not list SmolLM2 among its official models, so the config is written out here from the
folder's ``config.json`` and the weights go through TransformerLens's own Llama conversion.
``tl_resid_sweep`` and ``tl_head_sweep`` time TransformerLens's own activation-patching helpers.

    python benchmarks/_tl_peer.py    # parity check and both sweeps on a tiny IOI-style pair
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARITY_PROMPT = [1, 504, 2365, 314, 260, 2538, 28, 216, 9397, 30, 17, 30, 33]  # any short id list will do
PARITY_TOL = 1e-3


def _tl_config(hf_config):
    from transformer_lens import HookedTransformerConfig

    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = hf_config.num_key_value_heads
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size, d_head=d_head, n_heads=n_heads, d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers, d_vocab=hf_config.vocab_size,
        n_ctx=min(hf_config.max_position_embeddings, 2048),  # TL keeps an n_ctx x n_ctx mask per layer
        eps=hf_config.rms_norm_eps, act_fn=hf_config.hidden_act,
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        normalization_type="RMS", final_rms=True, gated_mlp=True,
        positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=d_head,
        rotary_base=float(hf_config.rope_parameters["rope_theta"] if getattr(hf_config, "rope_parameters", None)
                          else hf_config.rope_theta),
        original_architecture="LlamaForCausalLM", tokenizer_name=None, default_prepend_bos=False,
        init_weights=False, dtype=torch.float32, device="cpu",
    )


def load_tl(hf_folder: str | Path, dtype: torch.dtype = torch.float32):
    """(HookedTransformer, note) for the checkpoint folder; raises RuntimeError when its logits differ from
    transformers' on the same weights by more than PARITY_TOL. The check runs in float32; with another ``dtype`` the
    checked model is then cast to it (weights and buffers, and the config's dtype)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32).eval()
    cfg = _tl_config(hf.config)
    tl = HookedTransformer(cfg, tokenizer=None, move_to_device=True)
    with torch.no_grad():
        tl.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=False,
                                       refactor_factored_attn_matrices=False)
    tl.eval()
    ids = torch.tensor([PARITY_PROMPT], dtype=torch.long)
    with torch.no_grad():
        ref, got = hf(ids).logits, tl(ids)
    diff = (ref - got).abs().max().item()
    scale = ref.abs().max().item()
    if not diff <= PARITY_TOL:
        raise RuntimeError(f"TransformerLens logits differ from transformers by {diff:.3g} (max |logit| "
                           f"{scale:.3g}, tolerance {PARITY_TOL}) on {len(PARITY_PROMPT)} tokens")
    if dtype != torch.float32:
        tl = tl.to(dtype)
        tl.cfg.dtype = dtype
    note = (f"TransformerLens HookedTransformer built by hand (SmolLM2 is not a TL official model), "
            f"{str(dtype).removeprefix('torch.')} cpu, no weight processing; max |logit diff| vs transformers in "
            f"float32 {diff:.2e} (max |logit| {scale:.1f})")
    return tl, note


@contextlib.contextmanager
def _quiet_tqdm():
    """TL's patching loop wraps its iteration in tqdm; silence it for the duration."""
    from transformer_lens import patching

    saved = patching.tqdm
    patching.tqdm = functools.partial(saved, disable=True)
    try:
        yield
    finally:
        patching.tqdm = saved


def _sweep(fn, tl_model, corrupted_tokens, clean_tokens, metric: Callable[[torch.Tensor], torch.Tensor]):
    with torch.no_grad(), _quiet_tqdm():
        _, clean_cache = tl_model.run_with_cache(clean_tokens)
        return fn(tl_model, corrupted_tokens, clean_cache, metric)


def tl_resid_sweep(tl_model, corrupted_tokens: torch.LongTensor, clean_tokens: torch.LongTensor, metric):
    """[n_layers, pos]: metric after patching clean resid_pre at each (layer, position) into the corrupted run."""
    from transformer_lens.patching import get_act_patch_resid_pre

    return _sweep(get_act_patch_resid_pre, tl_model, corrupted_tokens, clean_tokens, metric)


def tl_head_sweep(tl_model, corrupted_tokens: torch.LongTensor, clean_tokens: torch.LongTensor, metric):
    """[n_layers, n_heads]: metric after patching each head's clean output (z, all positions)."""
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    return _sweep(get_act_patch_attn_head_out_all_pos, tl_model, corrupted_tokens, clean_tokens, metric)


if __name__ == "__main__":
    import time

    from tokenizers import Tokenizer

    from interp.weights import ensure_default

    torch.set_num_threads(2)
    folder = ensure_default()
    t0 = time.perf_counter()
    tl, note = load_tl(folder)
    print(f"loaded in {time.perf_counter() - t0:.1f}s: {note}")

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    clean = [" When Mary and John went to the store, John gave a drink to",
             " When Anna and Peter went to the park, Peter gave a ball to"]
    corrupt = [" When Mary and John went to the store, Mary gave a drink to",
               " When Anna and Peter went to the park, Anna gave a ball to"]
    clean_ids, corrupt_ids = [enc(s) for s in clean], [enc(s) for s in corrupt]
    assert len({len(x) for x in clean_ids + corrupt_ids}) == 1, "prompts must tokenize to equal lengths"
    clean_t, corrupt_t = torch.tensor(clean_ids), torch.tensor(corrupt_ids)
    right = torch.tensor([enc(" Mary")[0], enc(" Anna")[0]])
    wrong = torch.tensor([enc(" John")[0], enc(" Peter")[0]])

    def logit_diff(logits):
        last = logits[:, -1]
        return (last.gather(1, right[:, None]) - last.gather(1, wrong[:, None])).mean()

    with torch.no_grad():
        clean_ld, corrupt_ld = logit_diff(tl(clean_t)).item(), logit_diff(tl(corrupt_t)).item()
        print(f"logit diff clean {clean_ld:.3f}, corrupted {corrupt_ld:.3f}")
        t0 = time.perf_counter()
        tl(corrupt_t)
        print(f"one plain forward: {(time.perf_counter() - t0) * 1e3:.1f} ms")
        for name, fn in [("resid_pre", tl_resid_sweep), ("head_out", tl_head_sweep)]:
            t0 = time.perf_counter()
            out = fn(tl, corrupt_t, clean_t, logit_diff)
            dt = time.perf_counter() - t0
            print(f"{name}: shape {tuple(out.shape)}, batch {tuple(corrupt_t.shape)}, {dt:.2f}s "
                  f"({out.numel()} patched runs, {dt / out.numel() * 1e3:.1f} ms each), max {out.max().item():.3f}")
