"""Weight transforms (interp.models.transforms): outputs kept up to a per-position constant, purity, validity."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp.models import transforms as T
from interp.models._blocks import (
    MLP,
    Attention,
    Embed,
    LayerNorm,
    ParallelBlock,
    PreNormBlock,
    RMSNorm,
)
from interp.models._model import Model
from tests.conftest import random_tokens
from tests.numerics import assert_close, model_bound, reduction_bound

D, H, E, F, V, P, L = 32, 4, 8, 48, 61, 16, 2


def layernorm_model(*, parallel: bool = False, tied: bool = False, post_norms: bool = False, seed: int = 0) -> Model:
    """A tiny GPT-2-like model built from the shared blocks: LayerNorms with random weights and biases, learned
    positions, biases everywhere, a GELU MLP; grouped-query attention when ``parallel`` (GPT-NeoX-like)."""
    rng = np.random.default_rng(seed)
    K = 2 if parallel else H

    def w(*shape, s=0.2):
        return jnp.asarray(s * rng.standard_normal(shape), jnp.float32)

    def ln():
        return LayerNorm(jnp.asarray(1 + 0.3 * rng.standard_normal(D), jnp.float32), w(D, s=0.1), 1e-5)

    def rms():
        return RMSNorm(jnp.asarray(1 + 0.3 * rng.standard_normal(D), jnp.float32), 1e-5)

    blocks = []
    for _ in range(L):
        attn = Attention(W_Q=w(D, H, E), W_K=w(D, K, E), W_V=w(D, K, E), W_O=w(H, E, D) + w(D), b_Q=w(H, E, s=0.1),
                         b_K=w(K, E, s=0.1), b_V=w(K, E, s=0.3), b_O=w(D, s=0.3), rope=None, sliding_window=None)
        mlp = MLP(W_in=w(D, F), W_out=w(F, D) + w(D), b_in=w(F, s=0.1), b_out=w(D, s=0.3), act="gelu")
        if parallel:
            blocks.append(ParallelBlock(ln(), attn, ln(), mlp))
        else:
            blocks.append(PreNormBlock(ln(), attn, ln(), mlp, ln1_post=rms() if post_norms else None,
                                       ln2_post=rms() if post_norms else None))
    # Offsets give every writer a clear mean over d_model, so that centring does something.
    embed = Embed(W_E=w(V, D, s=1.0) + w(D, s=1.0), W_pos=w(P, D, s=0.5) + w(D, s=0.5))
    return Model(embed=embed, blocks=tuple(blocks), ln_final=ln(), unembed=None if tied else w(D, V, s=0.5),
                 config=("test-layernorm", parallel, tied, post_norms))


def with_attention_biases(model: Model, seed: int = 0) -> Model:
    """``model`` with random query/key/value/output biases added to every layer."""
    rng = np.random.default_rng(seed)
    blocks = []
    for block in model.blocks:
        a = block.attn
        shapes = {"b_Q": a.W_Q.shape[1:], "b_K": a.W_K.shape[1:], "b_V": a.W_V.shape[1:], "b_O": a.W_O.shape[2:]}
        bias = {name: jnp.asarray(0.2 * rng.standard_normal(shape), jnp.float32) for name, shape in shapes.items()}
        attn = eqx.tree_at(lambda x: (x.b_Q, x.b_K, x.b_V, x.b_O), a, tuple(bias.values()), is_leaf=lambda x: x is None)
        blocks.append(eqx.tree_at(lambda b: b.attn, block, attn))
    return eqx.tree_at(lambda m: m.blocks, model, tuple(blocks))


@pytest.fixture(scope="module")
def models(tiny3):
    """name -> model: RMSNorm Llama (untied, tied, with attention biases) and LayerNorm models (pre-norm untied,
    parallel tied)."""
    return {
        "llama": tiny3,
        "llama_tied": eqx.tree_at(lambda m: m.unembed, tiny3, None),
        "llama_biases": with_attention_biases(tiny3),
        "layernorm": layernorm_model(),
        "layernorm_parallel_tied": layernorm_model(parallel=True, tied=True, seed=1),
    }


LLAMAS = ("llama", "llama_tied", "llama_biases")
LAYERNORMS = ("layernorm", "layernorm_parallel_tied")


def tokens_for(model: Model, seed: int = 0) -> np.ndarray:
    return random_tokens(model.d_vocab, (2, 12), seed=seed)


def output_differences(a: Model, b: Model, tokens) -> tuple[float, float]:
    """Max |difference| of log-probabilities and of logits minus their per-position mean."""
    la = np.asarray(a(tokens), np.float64)
    lb = np.asarray(b(tokens), np.float64)
    logprob = np.abs(np.asarray(jax.nn.log_softmax(la)) - np.asarray(jax.nn.log_softmax(lb))).max()
    centred = np.abs((la - la.mean(-1, keepdims=True)) - (lb - lb.mean(-1, keepdims=True))).max()
    return float(logprob), float(centred)


def assert_same_output(a: Model, b: Model, tokens, label: str = ""):
    logprob, centred = output_differences(a, b, tokens)
    # both differences are rounding of logits (log_softmax subtracts a log-sum-exp of the same magnitude)
    bound = model_bound(a(tokens), n_layers=a.n_layers)
    print(f"{label}: max |dlog_softmax| {logprob:.2e}, max |dcentred logits| {centred:.2e}, bound {bound:.2e}")
    assert logprob <= bound, f"{label}: log_softmax differs by {logprob:.3g} > {bound:.3g}"
    assert centred <= bound, f"{label}: centred logits differ by {centred:.3g} > {bound:.3g}"


def assert_hooks_close(a: dict, b: dict, n_layers: int, label: str, keys=None) -> None:
    """Each hook of ``a`` equals ``b``'s up to rounding of its own magnitude."""
    keys = list(a) if keys is None else list(keys)
    assert keys
    for k in keys:
        assert_close(b[k], a[k], model_bound(a[k], n_layers=n_layers), f"{label} {k}")


def assert_zero_mean(w, what: str = "mean") -> None:
    """The mean over the last axis is zero up to the rounding of a sum over that axis."""
    w = np.asarray(w, np.float64)
    assert_close(w.mean(-1), np.zeros(w.shape[:-1]), reduction_bound(w, length=w.shape[-1]), what)


def max_diff(x, y) -> float:
    return float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())


def compose(*fns):
    def run(model):
        for fn in fns:
            model = fn(model)
        return model

    return run


EXACT_EVERYWHERE = {
    "fold_norm_weights": T.fold_norm_weights,
    "center_unembed": T.center_unembed,
    "fold_value_biases": T.fold_value_biases,
    "fold+center_unembed+fold_value_biases": compose(T.fold_norm_weights, T.center_unembed, T.fold_value_biases),
    "analysis_mode": T.analysis_mode,
}
EXACT_FOR_LAYERNORM = {
    "center_writing_weights": T.center_writing_weights,
    "fold+center_writing": compose(T.fold_norm_weights, T.center_writing_weights),
    "center_writing+fold": compose(T.center_writing_weights, T.fold_norm_weights),
    "fold+center_writing+center_unembed": compose(T.fold_norm_weights, T.center_writing_weights, T.center_unembed),
}
CASES = [(m, t) for m in LLAMAS + LAYERNORMS for t in EXACT_EVERYWHERE] + [
    (m, t) for m in LAYERNORMS for t in EXACT_FOR_LAYERNORM]


@pytest.mark.parametrize("name, transform", CASES)
def test_output_is_kept_up_to_a_per_position_constant(models, name, transform):
    model = models[name]
    fn = {**EXACT_EVERYWHERE, **EXACT_FOR_LAYERNORM}[transform]
    assert_same_output(model, fn(model), tokens_for(model), f"{name} {transform}")


@pytest.mark.parametrize("name", LLAMAS + LAYERNORMS)
def test_folded_norms_have_unit_weight_and_zero_bias(models, name):
    model = models[name]
    folded = T.fold_norm_weights(model)
    norms = [n for b in folded.blocks for n in (b.ln1, b.ln2)] + [folded.ln_final]
    for norm in norms:
        np.testing.assert_array_equal(np.asarray(norm.weight), 1.0)
        if getattr(norm, "bias", None) is not None:
            np.testing.assert_array_equal(np.asarray(norm.bias), 0.0)
    # A tied unembedding is untied; the embedding itself is unchanged.
    assert folded.unembed is not None
    np.testing.assert_array_equal(np.asarray(folded.W_E), np.asarray(model.W_E))
    if isinstance(model.ln_final, LayerNorm):
        assert folded.b_U is not None
        assert folded.blocks[0].attn.b_Q is not None and folded.blocks[0].mlp.b_in is not None
    else:
        assert folded.b_U is None  # RMSNorm has no bias to fold


def snapshot(model: Model):
    leaves, treedef = jax.tree_util.tree_flatten(model)
    return [np.array(x) for x in leaves], treedef


@pytest.mark.parametrize("name", ("llama_tied", "llama_biases", "layernorm", "layernorm_parallel_tied"))
def test_transforms_do_not_modify_the_model_passed_in(models, name):
    model = models[name]
    before, treedef = snapshot(model)
    tied = model.unembed is None
    for fn in (T.fold_norm_weights, T.center_unembed, T.fold_value_biases, T.analysis_mode,
               lambda m: T.center_writing_weights(m, force=True)):
        out = fn(model)
        assert out is not model
    after, treedef_after = snapshot(model)
    assert treedef_after == treedef
    assert (model.unembed is None) == tied
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", LLAMAS)
def test_centring_writers_of_an_rmsnorm_model_raises(models, name):
    model = models[name]
    assert not T.centering_is_exact(model)
    with pytest.raises(ValueError, match="RMSNorm does not remove the mean"):
        T.center_writing_weights(model)
    # Forced, it runs and does change the output: the refusal is not overcautious.
    forced = T.center_writing_weights(model, force=True)
    logprob, _ = output_differences(model, forced, tokens_for(model))
    assert logprob > 1e-3


def test_centring_writers_through_post_norms_raises_even_when_forced():
    model = layernorm_model(post_norms=True, seed=2)
    assert not T.centering_is_exact(model)
    for force in (False, True):
        with pytest.raises(ValueError, match="ln1_post/ln2_post"):
            T.center_writing_weights(model, force=force)


def test_post_norms_are_left_alone_by_folding():
    model = layernorm_model(post_norms=True, seed=2)
    folded = T.fold_norm_weights(model)
    for before, after in zip(model.blocks, folded.blocks, strict=True):
        np.testing.assert_array_equal(np.asarray(after.ln1_post.weight), np.asarray(before.ln1_post.weight))
        np.testing.assert_array_equal(np.asarray(after.ln2_post.weight), np.asarray(before.ln2_post.weight))
        np.testing.assert_array_equal(np.asarray(after.ln1.weight), 1.0)
    assert_same_output(model, folded, tokens_for(model), "post-norms fold_norm_weights")
    assert_same_output(model, T.analysis_mode(model), tokens_for(model), "post-norms analysis_mode")


def test_center_unembed_with_logit_softcap_raises_unless_forced(tiny3):
    capped = dataclasses.replace(tiny3, logit_softcap=2.0)
    with pytest.raises(ValueError, match="soft-caps its logits"):
        T.center_unembed(capped)
    forced = T.center_unembed(capped, force=True)
    assert_zero_mean(forced.W_U, "centred W_U over the vocabulary")
    # analysis_mode skips centring the unembedding, so logits are kept exactly, not only up to a constant.
    tokens = tokens_for(capped)
    assert_close(T.analysis_mode(capped)(tokens), capped(tokens), model_bound(capped(tokens), n_layers=capped.n_layers),
                 "softcap analysis_mode logits")


def capture(model: Model, tokens, names):
    _, cache = model.run_with_cache(tokens, names=lambda n: any(n.endswith(s) for s in names))
    return cache


def test_hooks_kept_by_folding_norms(models):
    for name in ("llama_biases", "layernorm"):
        model = models[name]
        tokens = tokens_for(model)
        names = ("hook_pattern", "hook_normalized", "hook_scale", "hook_q", "hook_k", "hook_v", "hook_pre",
                 "hook_resid_post")
        a, b = capture(model, tokens, names), capture(T.fold_norm_weights(model), tokens, names)
        assert set(a) == set(b) and len(a) >= len(names) * model.n_layers
        assert_hooks_close(a, b, model.n_layers, f"{name} fold_norm_weights")


@pytest.mark.parametrize("name", LAYERNORMS)
def test_hooks_after_centring_writers(models, name):
    model = models[name]
    tokens = tokens_for(model)
    centred = T.center_writing_weights(T.fold_norm_weights(model))
    kept = ("hook_pattern", "hook_normalized", "hook_q", "hook_k", "hook_v", "hook_pre", "hook_post")
    a, b = capture(model, tokens, kept + ("hook_resid_post",)), capture(centred, tokens, kept + ("hook_resid_post",))
    assert_hooks_close(a, b, model.n_layers, f"{name} fold+center_writing",
                       [k for k in a if not k.endswith("hook_resid_post")])
    # The residual stream becomes its centred version.
    for k in (k for k in a if k.endswith("hook_resid_post")):
        r = np.asarray(a[k], np.float64)
        centred = r - r.mean(-1, keepdims=True)
        assert_close(b[k], centred, model_bound(r, n_layers=model.n_layers), f"centred {k}")
        assert_zero_mean(b[k], f"mean of {k}")
        assert np.abs(r.mean(-1)).max() > 1e-2  # it was not centred before


def test_hooks_after_centring_unembed_and_folding_value_biases(models):
    model = models["llama_biases"]
    tokens = tokens_for(model)
    names = ("hook_pattern", "hook_normalized", "hook_attn_out", "hook_resid_post", "hook_v")
    a = capture(model, tokens, names)
    b = capture(T.center_unembed(model), tokens, names)
    assert all(max_diff(a[k], b[k]) == 0.0 for k in a)
    c = capture(T.fold_value_biases(model), tokens, names)
    assert_hooks_close(a, c, model.n_layers, "llama_biases fold_value_biases",
                       [k for k in a if not k.endswith("hook_v")])
    # hook_v loses exactly the bias.
    v = a["blocks.0.attn.hook_v"]
    assert_close(c["blocks.0.attn.hook_v"], v - model.blocks[0].attn.b_V, model_bound(v, n_layers=1), "hook_v - b_V")


def test_analysis_mode_applies_only_the_exact_transforms(models):
    llama = T.analysis_mode(models["llama_biases"])
    np.testing.assert_array_equal(np.asarray(llama.W_E), np.asarray(models["llama_biases"].W_E))  # not centred
    assert_zero_mean(llama.W_U, "W_U over the vocabulary")
    assert all(np.all(np.asarray(b.attn.b_V) == 0) for b in llama.blocks)

    ln = T.analysis_mode(models["layernorm"])
    for w in [ln.W_E, ln.embed.W_pos] + [x for b in ln.blocks for x in (b.attn.W_O, b.attn.b_O, b.mlp.W_out,
                                                                           b.mlp.b_out)]:
        assert_zero_mean(w, "writing weights")
    assert_zero_mean(ln.W_U, "W_U over the vocabulary")
    assert_zero_mean(ln.b_U, "b_U")
    assert all(np.all(np.asarray(b.attn.b_V) == 0) for b in ln.blocks)


def test_dla_and_final_lens_account_for_a_folded_unembedding_bias():
    """Folding a LayerNorm bias creates ``b_U``; DLA still sums to the logits and the final-scale lens's last
    row still equals them."""
    from interp.circuits import direct_logit_attribution, logit_lens

    folded = T.fold_norm_weights(layernorm_model())
    assert folded.b_U is not None
    tokens = tokens_for(folded)
    logits = np.asarray(folded(tokens))
    targets = np.argsort(-logits[:, -1], axis=-1)[:, :2]
    res = direct_logit_attribution(folded, tokens, targets)
    bound = model_bound(logits, n_layers=folded.n_layers)
    assert_close(res.values.sum(0), np.take_along_axis(logits[:, -1], targets, 1), bound, "DLA summed over components")
    lens = logit_lens(folded, tokens, scale="final")
    assert_close(lens.logits[-1], logits, bound, "final lens row")
