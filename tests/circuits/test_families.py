"""Every circuit tool on every model family, against the brute-force references the Llama tests use.

Tiny random-init checkpoints (two layers) of GPT-2 (learned positions), GPT-NeoX with parallel and with sequential
residual, Gemma 2 (post-attention and post-MLP norms, soft-capped scores and logits), Gemma 3 (post norms, QK-norm,
local and global layers) and Qwen3 (QK-norm, a windowed layer). Activation patching equals a loop of single
``run_with_hooks`` patches, attribution patching and edge attribution are the first-order estimates of patching
and path patching, path patching of whole groups equals patching the activations they add up to, and direct logit
attribution and the logit lens sum back to the logits (those before the soft cap, checked against transformers
with the cap turned off).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import interp
import interp.circuits.patching as patching
from interp.circuits import (
    attribute,
    decompose_resid,
    direct_logit_attribution,
    edge_attribution,
    logit_lens,
    metrics,
    patch,
    path_patch,
    senders,
)
from interp.circuits.edges import _out_names
from interp.circuits.patching import LAYOUTS
from tests.conftest import random_tokens, saved_checkpoints
from tests.models import test_gemma_qwen3_parity as gq
from tests.models import test_gpt2_neox_parity as gn
from tests.numerics import assert_close, assert_model_close, f32_bound, model_bound

VARIANTS = ["gpt2", "neox_parallel", "neox_sequential", "gemma2", "gemma3", "qwen3"]
PARALLEL = {"neox_parallel"}  # attention and MLP side by side on resid_pre


def make_hf(variant: str):
    """A two-layer random-init transformers model of ``variant`` (the parity tests' tiny configs)."""
    if variant in gn.VARIANTS:
        return gn.make_hf(variant)
    import transformers

    cls_name, overrides = gq.FAMILIES[variant]
    cfg = getattr(transformers, cls_name)(**{**gq.TINY, **overrides, "num_hidden_layers": 2}, initializer_range=0.1)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    centre = -0.4 if variant.startswith("gemma") else 1.0  # Gemma norms scale by (1 + w), as in gq.make_hf
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(centre + 0.3 * torch.randn_like(p))
    return hf


@dataclasses.dataclass
class Setup:
    hf: object
    model: object
    clean: np.ndarray  # [2 6]
    corrupted: np.ndarray  # differs at positions 1 and 3
    metric: object  # logit difference of the clean run's top two next tokens

    @property
    def bound(self) -> float:
        """Rounding of a metric computed from logits: the logits' magnitude sets it."""
        m = self.model
        return model_bound(m(self.clean), m(self.corrupted), n_layers=m.n_layers)


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    saved = saved_checkpoints(make_hf, tmp_path_factory)
    cache = {}

    def get(variant: str) -> Setup:
        if variant not in cache:
            hf, folder = saved(variant)
            model = interp.load(folder)
            clean = random_tokens(model.d_vocab, (2, 6), seed=11)
            corrupted = clean.copy()
            corrupted[:, 1] = (clean[:, 1] + 7) % model.d_vocab
            corrupted[:, 3] = (clean[:, 3] + 13) % model.d_vocab
            order = np.argsort(-np.asarray(model(clean))[:, -1], axis=-1)
            metric = metrics.logit_diff(order[:, 0].astype(np.int32), order[:, 1].astype(np.int32))
            cache[variant] = Setup(hf, model, clean, corrupted, metric)
        return cache[variant]

    return get


def near_source(s: Setup, names):
    """The corrupted run a tiny step away (at the embedding), captured at ``names``: first-order territory."""
    step = jnp.asarray(1e-3 * np.random.default_rng(1).standard_normal(s.model.d_model), jnp.float32)
    return s.model.run_with_cache(s.corrupted, names, edits=[("hook_embed", interp.edits.add, step)])[1]


# ---------------------------------------------------------------------------------------------- patching
def _one_hot(ndim: int):
    """``one(n, i, axis)``: a boolean mask true at index ``i`` of ``axis`` (of size ``n``), broadcastable."""
    def one(n, i, axis):
        return (np.arange(n) == i).reshape([n if a == axis else 1 for a in range(ndim)])
    return one


@eqx.filter_jit
def _patched_runs(model, tokens, names, srcs, layers, wheres, metric):
    """The metric of one whole forward pass per target ``i``: at hook ``names[layers[i]]`` the activation is
    replaced by ``srcs[layers[i]]`` where ``wheres[i]`` is true."""

    def one(args):
        layer, where = args

        def hk(name, x):
            if name in names:
                j = names.index(name)
                x = jnp.where((layer == j) & where, srcs[j], x).astype(x.dtype)
            return x

        return metric(model.forward(tokens, hk))

    return jax.lax.map(one, (layers, wheres))


def brute_force(model, base, source, metric, short, per):
    """One forward pass per target, patching the source run's activation by hand: ``[L, ...]``."""
    L = model.n_layers
    names = tuple(interp.act_name(short, l) for l in range(L))
    _, cache = model.run_with_cache(source, list(names))
    shape = cache[names[0]].shape
    layout, one = LAYOUTS[short], _one_hot(len(shape))
    if per == "layer":
        wheres = [np.ones(shape, bool)]
    elif per == "pos":  # BTD, BTHE
        wheres = [one(shape[1], p, 1) for p in range(shape[1])]
    elif per == "head":  # heads on axis 2 (BTHE) or 1 (BHTS)
        axis = 2 if layout == "BTHE" else 1
        wheres = [one(shape[axis], h, axis) for h in range(shape[axis])]
    elif layout == "BTHE":  # head_pos: [pos, head]
        wheres = [one(shape[1], p, 1) & one(shape[2], h, 2) for p in range(shape[1]) for h in range(shape[2])]
    else:  # BHTS head_pos: [query pos, head]
        wheres = [one(shape[2], p, 2) & one(shape[1], h, 1) for p in range(shape[2]) for h in range(shape[1])]
    wheres = np.stack([np.broadcast_to(w, shape) for w in wheres] * L)
    layers = np.repeat(np.arange(L, dtype=np.int32), len(wheres) // L)
    srcs = [cache[n] for n in names]
    values = _patched_runs(model, jnp.asarray(base), names, srcs, jnp.asarray(layers), jnp.asarray(wheres), metric)
    return np.asarray(values, np.float64).reshape(L, -1)


# (hook, per) on every family: the hooks whose computation differs between families (a hook a family lacks is
# refused instead, see below), and the rest of patch's target kinds (every layout with every ``per``) spread over
# the families so that each kind runs on at least one
CORE = [("resid_pre", "pos"), ("resid_mid", "layer"), ("attn_out", "pos"), ("pre_linear", "pos"), ("z", "head"),
        ("rot_k", "head"), ("attn_scores", "head_pos")]
EXTRA = [("q", "pos"), ("v", "layer"), ("pattern", "head"), ("pattern", "layer"), ("z", "head_pos"), ("k", "head"),
         ("resid_post", "pos"), ("post", "pos"), ("z", "layer"), ("pattern", "head_pos"), ("mlp_out", "pos"),
         ("pre", "pos")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_patching_sweeps_equal_brute_force(variant, setups):
    s = setups(variant)
    model = s.model
    names = set(model.hook_names)
    i = VARIANTS.index(variant)
    cases = [c for c in CORE + EXTRA[2 * i:2 * i + 2] if interp.act_name(c[0], 0) in names]
    for short, per in cases:
        res = patch(model, s.clean, s.corrupted, s.metric, short, per=per, progress=False)
        expect = brute_force(model, s.corrupted, s.clean, s.metric, short, per)
        assert_close(res.values.reshape(expect.shape), expect, s.bound, f"{variant} {short} per {per}")
        assert np.abs(expect - res.base).max() > 1e-4, (short, per)  # not the base run over and over
    assert len(cases) >= 6, cases


@pytest.mark.parametrize("variant", VARIANTS)
def test_position_sweeps_skipping_earlier_positions_equal_whole_runs(variant, setups, monkeypatch):
    """On 36 tokens (four ranges of positions, past every sliding window) the sweeps that compute each range
    from its start with the base run's keys and values equal whole-sequence runs."""
    monkeypatch.setattr(patching, "SKIP_PREFIX_FROM", 16)  # tiny models: short prompts take the same path
    s = setups(variant)
    model = s.model
    clean = random_tokens(model.d_vocab, (2, 36), seed=12)
    corrupted = clean.copy()
    for p in (2, 17, 33):
        corrupted[:, p] = (clean[:, p] + 11) % model.d_vocab
    bound = model_bound(model(clean), model(corrupted), n_layers=model.n_layers)
    for short, per in (("resid_pre", "pos"), ("attn_out", "pos"), ("z", "head_pos"), ("k", "head_pos")):
        whole = patch(model, clean, corrupted, s.metric, short, per=per, progress=False, skip_prefix=False)
        ranges = patch(model, clean, corrupted, s.metric, short, per=per, progress=False)
        assert_close(ranges.values, whole.values, bound, f"{variant} {short} per {per}")
        assert np.abs(whole.values[:, 27:] - whole.base).max() > 1e-5, (short, per)  # the last range matters


@pytest.mark.parametrize("variant,short,why", [
    ("neox_parallel", "resid_mid", "side by side"), ("gpt2", "pre_linear", "not gated"),
    ("neox_sequential", "pre_linear", "not gated"), ("gpt2", "rot_q", "rotary"), ("gemma2", "foo", "cannot sweep")])
def test_patching_refuses_hooks_a_family_lacks(variant, short, why, setups):
    s = setups(variant)
    for fn in (patch, attribute):
        with pytest.raises(ValueError, match=why):
            fn(s.model, s.clean, s.corrupted, s.metric, short)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attribution_is_first_order_patching(variant, setups):
    s = setups(variant)
    model = s.model
    shorts = ["resid_pre", "attn_out", "mlp_out", "z"]
    near = near_source(s, [interp.act_name(x, l) for x in shorts for l in range(model.n_layers)])
    approx = attribute(model, near, s.corrupted, s.metric, shorts)
    for short in shorts:
        exact = patch(model, near, s.corrupted, s.metric, short, progress=False)
        est = approx[short]
        scale = np.abs(exact.effect).max()
        assert scale > 1e-6, (variant, short)
        np.testing.assert_allclose(est.effect, exact.effect, atol=0.05 * scale, err_msg=f"{variant} {short}")


# ---------------------------------------------------------------------------------------------- edges
def _run_edited(s: Setup, edits):
    return float(s.metric(s.model.run_with_hooks(s.corrupted, edits)))


def _replaced(s: Setup, name: str):
    """The base (corrupted) run with ``name`` replaced by the clean run's."""
    _, cache = s.model.run_with_cache(s.clean, name)
    return _run_edited(s, [(name, interp.edits.replace, cache[name])])


def _heads_directly_into_logits(s: Setup, layer: int, heads) -> float:
    """Reference for path patching ``heads`` of ``layer`` into the logits alone: the clean run's ``z`` of those
    heads in the base run changes that layer's attention output by some delta (through any post-attention
    norm); the delta is then added to the final residual stream of the unchanged base run."""
    model, L = s.model, s.model.n_layers
    z, out = interp.act_name("z", layer), interp.act_name("attn_out", layer)
    _, src = model.run_with_cache(s.clean, z)
    keep = np.zeros(model.blocks[layer].attn.n_heads, bool)
    keep[list(heads)] = True

    def mix(x, name, src, keep):
        return jnp.where(keep[:, None], src, x).astype(x.dtype)

    _, mixed = model.run_with_cache(s.corrupted, out, edits=[(z, mix, src[z], jnp.asarray(keep))])
    _, base = model.run_with_cache(s.corrupted, out)
    delta = mixed[out] - base[out]
    return _run_edited(s, [(interp.act_name("resid_post", L - 1), interp.edits.add, delta)])


@pytest.mark.parametrize("variant", VARIANTS)
def test_path_patching_equals_patching_what_the_paths_add_up_to(variant, setups):
    s = setups(variant)
    model = s.model
    H = model.blocks[0].attn.n_heads
    # every sender into the logits: the clean run itself
    assert_close(path_patch(model, s.clean, s.corrupted, s.metric, senders(model), "logits"),
                 float(s.metric(model(s.clean))), s.bound, f"{variant}: all senders")
    # the embedding into all of layer 0's heads: layer 0's attention input from the clean run
    value = path_patch(model, s.clean, s.corrupted, s.metric, "embed", [f"L0H{h}" for h in range(H)])
    assert_close(value, _replaced(s, "blocks.0.ln1.hook_normalized"), s.bound, f"{variant}: embed into layer 0")
    assert abs(value - float(s.metric(model(s.corrupted)))) > 1e-4
    # everything that reaches MLP1 into it: its output from the clean run (its own heads only when sequential)
    before = ["embed", "MLP0"] + [f"L0H{h}" for h in range(H)]
    before += [] if variant in PARALLEL else [f"L1H{h}" for h in range(H)]
    value = path_patch(model, s.clean, s.corrupted, s.metric, before, "MLP1")
    assert_close(value, _replaced(s, "blocks.1.hook_mlp_out"), s.bound, f"{variant}: into MLP1")
    # one head, and two heads together (a post-attention norm does not add them up), into the logits
    for heads in ([1], [0, H - 1]):
        value = path_patch(model, s.clean, s.corrupted, s.metric, [f"L0H{h}" for h in heads], "logits")
        assert_close(value, _heads_directly_into_logits(s, 0, heads), s.bound, f"{variant}: L0 heads {heads}")
    # the per-sender sweep gives each sender's own value
    grid = path_patch(model, s.clean, s.corrupted, s.metric, "heads", "logits")
    assert_close(grid.values[0, 1], _heads_directly_into_logits(s, 0, [1]), s.bound, f"{variant}: heads grid")


def test_a_parallel_blocks_heads_do_not_reach_its_own_mlp(setups):
    par, seq = setups("neox_parallel"), setups("neox_sequential")
    with pytest.raises(ValueError, match="no hook_resid_mid: its MLP reads blocks.1.hook_resid_pre"):
        path_patch(par.model, par.clean, par.corrupted, par.metric, "L1H0", "MLP1")
    # the sequential block's MLP does read them
    value = path_patch(seq.model, seq.clean, seq.corrupted, seq.metric, "L1H0", "MLP1")
    assert np.isfinite(value)
    for s, reach in ((par, False), (seq, True)):
        eap = edge_attribution(s.model, s.clean, s.corrupted, s.metric)
        assert np.isfinite(eap.score("L1H0", "MLP1")) == reach
        assert np.isfinite(eap.score("L0H0", "MLP1")) and np.isfinite(eap.score("MLP0", "MLP1"))


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_attribution_is_first_order_path_patching(variant, method, setups):
    """With a source run a tiny step from the base run, every edge's score equals the exact effect of path
    patching that edge alone, to first order."""
    s = setups(variant)
    model = s.model
    near = near_source(s, _out_names(model))
    eap = edge_attribution(model, near, s.corrupted, s.metric, method=method)
    checked = 0
    for rec in ("L1H1.q", "L1H0.k", "MLP0", "MLP1", "logits"):
        sweep = path_patch(model, near, s.corrupted, s.metric, senders(model), rec, per_sender=True)
        exact = sweep.values - eap.base
        approx = np.array([eap.score(u, rec) for u in senders(model)])
        ok = ~np.isnan(exact)
        assert np.array_equal(ok, ~np.isnan(approx)), (variant, rec)
        scale = np.abs(exact[ok]).max()
        assert scale > 1e-7, (variant, rec)
        # second-order terms (10% of the largest effect at this step) and the rounding of two metrics of logits
        atol = 0.1 * scale + f32_bound(model(s.corrupted), ulps=8)
        np.testing.assert_allclose(approx[ok], exact[ok], atol=atol, err_msg=f"{variant} {method} {rec}")
        checked += ok.sum()
    assert checked > 20


# ---------------------------------------------------------------------------------------------- DLA and lens
def reference_logits(s: Setup, tokens) -> np.ndarray:
    """transformers' logits before any final soft cap (the cap turned off in its config)."""
    cfg = s.hf.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    try:
        cfg.final_logit_softcapping = None
        with torch.no_grad():
            return s.hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
    finally:
        if cap is not None:
            cfg.final_logit_softcapping = cap


@pytest.mark.parametrize("variant", VARIANTS)
def test_dla_and_lens_sum_to_the_logits(variant, setups):
    s = setups(variant)
    model, tokens, L = s.model, s.clean, s.model.n_layers
    ref = reference_logits(s, tokens)
    logits = np.asarray(model(tokens))
    if model.logit_softcap is not None:  # the model's logits are the capped sum
        c = model.logit_softcap
        assert_model_close(logits, c * np.tanh(ref / c), model, "capped logits")
        assert np.abs(logits - ref).max() > 1e-2
    _, cache = model.run_with_cache(tokens, [interp.act_name(x, l) for x in ("attn_out", "resid_post")
                                             for l in range(L)])
    by_layer, by_head = decompose_resid(model, tokens), decompose_resid(model, tokens, per="head")
    for dec in (by_layer, by_head):
        assert_model_close(dec.components.sum(0), cache["resid_post", L - 1], model, f"{variant} decomposition",
                           terms=dec.components.shape[0])
    for l in range(L):  # a layer's heads (and its bias term) add up to its attention output
        rows = [i for i, lab in enumerate(by_head.labels) if lab.startswith(f"L{l}")]
        assert_model_close(by_head.components[np.array(rows)].sum(0), cache["attn_out", l], model,
                           f"{variant} heads of layer {l}", terms=len(rows))
    targets = np.array([[3, 5, 7], [11, 2, 40]])
    pos = np.array([5, 3])
    expect = np.take_along_axis(ref[np.arange(2), pos], targets, axis=1)
    for per in ("layer", "head"):
        res = direct_logit_attribution(model, tokens, targets, pos=pos, per=per)
        assert_model_close(res.values.sum(0), expect, model, f"{variant} DLA per {per}", terms=res.values.shape[0])
        assert_model_close(res.logits, expect, model, f"{variant} DLA logits")
        assert np.ptp(res.values[:, 0, 0]) > 1e-3
    own, final = logit_lens(model, tokens), logit_lens(model, tokens, scale="final")
    assert_model_close(own.logits[-1], logits, model, f"{variant} own-scale lens, last row")
    assert_model_close(final.logits[-1], ref, model, f"{variant} final-scale lens, last row")
    # with the final scale, consecutive rows differ by exactly what that block writes
    dla = direct_logit_attribution(model, tokens, np.arange(5)[None].repeat(2, 0), pos=-1)
    first = 2 if "pos_embed" in dla.labels else 1
    assert dla.labels[first:-1:2] == tuple(f"attn {l}" for l in range(L))
    per_block = dla.values[first:-1:2] + dla.values[first + 1:-1:2]
    step = np.diff(np.asarray(final.logits[:, :, -1, :5]), axis=0)
    assert_model_close(per_block, step, model, f"{variant} lens steps", terms=2)
