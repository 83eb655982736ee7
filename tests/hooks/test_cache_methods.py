"""Cache methods against TransformerLens's ActivationCache on the same tiny GPT-2-like weights (LayerNorm and
RMSNorm): accumulated_resid, decompose_resid, stack_head_results, apply_ln_to_stack, logit_attrs,
remove_batch_dim, negative layers, and capture of every layer by a bare short name."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import interp
from interp.models import gpt2
from interp.models._blocks import (
    MLP,
    Attention,
    Embed,
    LayerNorm,
    PreNormBlock,
    RMSNorm,
)
from interp.models.transforms import fold_norm_weights
from tests.conftest import random_tokens
from tests.numerics import assert_close, model_bound

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

V, D, H, E, F, L, P = 61, 24, 3, 8, 40, 3, 16
EPS = {"LN": 1e-5, "RMS": 1e-6}


def weights(seed: int, norm: str) -> dict[str, np.ndarray]:
    """TransformerLens state-dict names and layouts; random norm weights and biases so every one shows."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.3, mean=0.0):
        return (mean + scale * rng.standard_normal(shape)).astype(np.float32)

    sd = {"embed.W_E": w(V, D), "pos_embed.W_pos": w(P, D), "unembed.W_U": w(D, V), "unembed.b_U": w(V, scale=0.1)}
    lns = ["ln_final"] + [f"blocks.{l}.ln{i}" for l in range(L) for i in (1, 2)]
    for ln in lns:
        sd[f"{ln}.w"] = w(D, mean=1.0)
        if norm == "LN":
            sd[f"{ln}.b"] = w(D, scale=0.1)
    for l in range(L):
        p = f"blocks.{l}"
        sd.update({f"{p}.attn.W_Q": w(H, D, E), f"{p}.attn.W_K": w(H, D, E), f"{p}.attn.W_V": w(H, D, E),
                   f"{p}.attn.W_O": w(H, E, D), f"{p}.attn.b_Q": w(H, E, scale=0.1),
                   f"{p}.attn.b_K": w(H, E, scale=0.1),
                   f"{p}.attn.b_V": w(H, E, scale=0.1), f"{p}.attn.b_O": w(D, scale=0.1),
                   f"{p}.mlp.W_in": w(D, F), f"{p}.mlp.b_in": w(F, scale=0.1), f"{p}.mlp.W_out": w(F, D),
                   f"{p}.mlp.b_out": w(D, scale=0.1)})
    return sd


def ours(sd: dict, norm: str) -> interp.Model:
    def ln(name):
        if norm == "LN":
            return LayerNorm(sd[f"{name}.w"], sd[f"{name}.b"], EPS[norm])
        return RMSNorm(sd[f"{name}.w"], EPS[norm])

    blocks = []
    for l in range(L):
        a = f"blocks.{l}.attn"
        attn = Attention(W_Q=sd[f"{a}.W_Q"].transpose(1, 0, 2), W_K=sd[f"{a}.W_K"].transpose(1, 0, 2),
                         W_V=sd[f"{a}.W_V"].transpose(1, 0, 2), W_O=sd[f"{a}.W_O"], b_Q=sd[f"{a}.b_Q"],
                         b_K=sd[f"{a}.b_K"], b_V=sd[f"{a}.b_V"], b_O=sd[f"{a}.b_O"], rope=None, sliding_window=None)
        m = f"blocks.{l}.mlp"
        mlp = MLP(sd[f"{m}.W_in"], sd[f"{m}.W_out"], sd[f"{m}.b_in"], sd[f"{m}.b_out"], act="gelu_tanh")
        blocks.append(PreNormBlock(ln1=ln(f"blocks.{l}.ln1"), attn=attn, ln2=ln(f"blocks.{l}.ln2"), mlp=mlp))
    config = gpt2.GPT2Config(vocab_size=V, d_model=D, n_layers=L, n_heads=H, d_mlp=F, n_ctx=P, ln_eps=EPS[norm])
    model = interp.Model(embed=Embed(sd["embed.W_E"], W_pos=sd["pos_embed.W_pos"]), blocks=tuple(blocks),
                         ln_final=ln("ln_final"), unembed=sd["unembed.W_U"], config=config, b_U=sd["unembed.b_U"])
    return jax.tree.map(lambda x: jax.numpy.asarray(x), model)


def transformer_lens(sd: dict, norm: str, fold_ln: bool):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=L, d_model=D, n_ctx=P, d_head=E, n_heads=H, d_mlp=F, d_vocab=V,
                                  act_fn="gelu_new", normalization_type=norm, eps=EPS[norm],
                                  positional_embedding_type="standard", device="cpu", dtype=torch.float32)
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict({k: torch.tensor(v) for k, v in sd.items()}, fold_ln=fold_ln,
                                   center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    return tl.eval()


@pytest.fixture(scope="module", params=["LN", "RMS"])
def pair(request):
    """(our model, our cache, TransformerLens model, its cache, tokens) on the same weights and tokens."""
    norm = request.param
    sd = weights(seed=7 if norm == "LN" else 8, norm=norm)
    model, tl = ours(sd, norm), transformer_lens(sd, norm, fold_ln=False)
    tokens = random_tokens(V, (2, 6), seed=3)
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.tensor(tokens, dtype=torch.long))
    return model, cache, tl, tl_cache, tokens, sd, norm


def close(a, b, model, what):
    a, b = np.asarray(a), b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    assert_close(a, b, model_bound(a, b, n_layers=model.n_layers), what)


def test_the_two_models_compute_the_same_activations(pair):
    model, cache, _, tl_cache, *_ = pair
    for name in tl_cache.cache_dict:
        if name in cache:
            close(cache[name], tl_cache[name], model, name)
    assert {"blocks.2.attn.hook_z", "ln_final.hook_scale", "hook_pos_embed"} <= set(cache)


LABELLED_STACKS = [
    ("accumulated_resid", kw) for kw in (
        {}, {"incl_mid": True}, {"layer": 2, "mlp_input": True}, {"layer": 1, "incl_mid": True, "apply_ln": True},
        {"apply_ln": True}, {"apply_ln": True, "pos_slice": -1}, {"layer": -1, "pos_slice": (1, 4), "apply_ln": True},
        {"layer": 2, "apply_ln": True, "mlp_input": True, "pos_slice": [0, 5]})
] + [
    ("decompose_resid", kw) for kw in (
        {}, {"mode": "attn"}, {"mode": "mlp", "layer": 2}, {"layer": 1, "mlp_input": True}, {"apply_ln": True},
        {"layer": 2, "apply_ln": True, "mlp_input": True, "pos_slice": -1}, {"incl_embeds": False, "layer": 2})
] + [
    ("stack_head_results", kw) for kw in (
        {}, {"incl_remainder": True}, {"layer": 2, "incl_remainder": True, "pos_slice": -1}, {"apply_ln": True},
        {"layer": 1, "apply_ln": True, "pos_slice": (0, 3)})
]


@pytest.mark.parametrize("method, kwargs", LABELLED_STACKS)
def test_labelled_stacks_match_transformer_lens(pair, method, kwargs):
    model, cache, _, tl_cache, *_ = pair
    got, labels = getattr(cache, method)(**kwargs, return_labels=True)
    ref, ref_labels = getattr(tl_cache, method)(**kwargs, return_labels=True)
    assert labels == ref_labels
    close(got, ref, model, f"{method}({kwargs})")


def test_decomposition_sums_to_the_residual_stream(pair):
    model, cache, *_ = pair
    parts = cache.decompose_resid(layer=2)
    close(parts.sum(0), cache["resid_pre", 2], model, "sum of components")


def test_head_results_sum_to_the_attention_output(pair):
    model, cache, *_ = pair
    heads = cache.stack_head_results(layer=2)[H:]  # layer 1's heads
    close(heads.sum(0) + model.b_O[1], cache["attn_out", 1], model, "heads + b_O")


@pytest.mark.parametrize("kwargs", [
    {"layer": 1}, {"layer": 1, "mlp_input": True}, {}, {"batch_slice": 1}, {"batch_slice": [1, 0], "layer": 2},
])
def test_apply_ln_to_stack_matches_transformer_lens(pair, kwargs):
    model, cache, _, tl_cache, *_ = pair
    stack, tl_stack = cache.decompose_resid(layer=2), tl_cache.decompose_resid(layer=2)
    close(cache.apply_ln_to_stack(stack, **kwargs), tl_cache.apply_ln_to_stack(tl_stack, **kwargs), model,
          f"apply_ln_to_stack({kwargs})")


def test_logit_attrs_match_transformer_lens_with_folded_norms(pair):
    """Our attributions include the final norm's weight, so they equal TransformerLens's on its fold_ln model,
    both for our unfolded model and after folding ours."""
    model, cache, _, _, tokens, sd, norm = pair
    tl = transformer_lens(sd, norm, fold_ln=True)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.tensor(tokens, dtype=torch.long))
    folded = fold_norm_weights(model)
    _, folded_cache = folded.run_with_cache(tokens)
    answer, wrong = np.array([5, 17]), np.array([9, 2])
    cases = [({"tokens": answer}, {}), ({"tokens": answer, "incorrect_tokens": wrong}, {}), ({"tokens": 11}, {}),
             ({"tokens": tokens[:, 1:3]}, {"pos_slice": (1, 3)})]
    for tok_kwargs, slice_kwargs in cases:
        pos = slice_kwargs.get("pos_slice", -1)
        ref = tl_cache.logit_attrs(tl_cache.decompose_resid(pos_slice=pos),
                                   **{k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                                      for k, v in tok_kwargs.items()}, pos_slice=pos)
        for c in (cache, folded_cache):
            got = c.logit_attrs(c.decompose_resid(pos_slice=pos), **tok_kwargs, pos_slice=pos)
            close(got, ref, model, f"logit_attrs({tok_kwargs})")


def test_logit_attrs_add_up_to_the_logit(pair):
    """Components of the whole stream: attributions plus the final norm's bias term and b_U give the logit."""
    model, cache, _, _, tokens, *_ = pair
    logits = np.asarray(model(tokens))[:, -1]
    answer = np.array([4, 30])
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), answer, pos_slice=-1)
    bias = model.ln_final.bias if hasattr(model.ln_final, "bias") else None
    rest = model.b_U[answer] + (0.0 if bias is None else (bias @ model.W_U)[answer])
    got = np.asarray(attrs.sum(0) + rest)
    expected = logits[np.arange(2), answer]
    assert_close(got, expected, model_bound(got, logits, n_layers=model.n_layers) * np.sqrt(attrs.shape[0]),
                 "sum of attributions")


def test_negative_layers_count_from_the_end(pair):
    model, cache, *_ = pair
    np.testing.assert_array_equal(cache["resid_post", -1], cache["blocks.2.hook_resid_post"])
    np.testing.assert_array_equal(cache["scale", -2, "ln1"], cache["blocks.1.ln1.hook_scale"])
    assert ("pattern", -3) in cache and ("pattern", -4) not in cache
    with pytest.raises(KeyError, match="out of range"):
        cache["pattern", -4]
    _, only = model.run_with_cache(np.zeros((1, 3), np.int32), names=[("resid_post", -1), "pattern"])
    assert list(only) == [f"blocks.{l}.attn.hook_pattern" for l in range(L)] + ["blocks.2.hook_resid_post"]


def test_bare_short_name_captures_every_layer(pair):
    model, *_ = pair
    _, cache = model.run_with_cache(np.zeros((1, 4), np.int32), names="pattern")
    assert list(cache) == [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    _, cache = model.run_with_cache(np.zeros((1, 4), np.int32), names_filter=["resid_post", "ln_final.hook_scale"],
                                    stop_at_layer=None)
    assert set(cache) == {f"blocks.{l}.hook_resid_post" for l in range(L)} | {"ln_final.hook_scale"}
    _, cache = model.run_with_cache(np.zeros((1, 4), np.int32), names="resid_pre", stop_at_layer=2)
    assert list(cache) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]


def test_a_short_name_without_a_layer_says_how_to_ask(pair):
    _, cache, *_ = pair
    with pytest.raises(KeyError) as e:
        cache["pattern"]
    msg = e.value.args[0]
    assert msg.startswith("cache['pattern'] needs a layer: cache['pattern', 0]") and "cache.stack('pattern')" in msg
    with pytest.raises(KeyError, match="unknown hook name 'patern'"):
        cache["patern"]


def test_remove_batch_dim(pair):
    model, cache, _, _, tokens, *_ = pair
    one = tokens[:1]
    _, c = model.run_with_cache(one, remove_batch_dim=True)
    assert not c.has_batch_dim and c["pattern", 0].shape == (H, 6, 6) and c["resid_post", -1].shape == (6, D)
    _, c2 = model.run_with_cache(one)
    assert c2.remove_batch_dim() is c2 and c2["z", 1].shape == (6, H, E)  # in place, as TransformerLens
    np.testing.assert_array_equal(c2["z", 1], cache["z", 1][0])
    # the methods work without the batch axis
    got = c2.accumulated_resid(apply_ln=True, pos_slice=-1)
    want = cache.accumulated_resid(apply_ln=True, pos_slice=-1)[:, 0]
    close(got, want, model, "accumulated_resid without a batch axis")
    with pytest.raises(ValueError, match="cache of 2 sequences"):
        model.run_with_cache(tokens)[1].remove_batch_dim()


def test_methods_need_a_bound_model(pair):
    model, cache, *_ = pair
    unbound = jax.tree.map(lambda x: x, cache)
    assert unbound.model is None and set(unbound) == set(cache)
    with pytest.raises(ValueError, match=r"accumulated_resid needs the model.*cache.with_model\(model\)"):
        unbound.accumulated_resid()
    with pytest.raises(ValueError, match="negative layer"):
        unbound["resid_post", -1]
    np.testing.assert_array_equal(unbound.with_model(model).accumulated_resid(), cache.accumulated_resid())
    _, partial = model.run_with_cache(np.zeros((1, 3), np.int32), names="resid_pre")
    with pytest.raises(KeyError, match="accumulated_resid needs 'blocks.2.hook_resid_post' in the cache"):
        partial.accumulated_resid()


def test_a_stack_sliced_differently_from_the_scale_is_refused(pair):
    model, cache, *_ = pair
    stack = cache.decompose_resid(pos_slice=-1)  # positions already cut to the last one
    with pytest.raises(ValueError, match=r"pass the pos_slice \(and batch_slice\) the stack was made with"):
        cache.logit_attrs(stack, 5)  # without pos_slice the scale still has every position
    assert cache.logit_attrs(stack, 5, pos_slice=-1).shape == stack.shape[:2]
