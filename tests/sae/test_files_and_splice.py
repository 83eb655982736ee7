"""SAELens files both ways, and dictionaries spliced into the model with latents as hook points."""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import sae
from interp.hooks import Splice, edits
from interp.sae.files import saelens_readable
from tests.numerics import assert_close, reduction_bound


def randomized(cfg, seed=0):
    """A dictionary of ``cfg``'s architecture with random biases and random values for the tensors it writes to
    SAELens beyond the affine maps (thresholds), set through its own ``from_saelens``."""
    d = sae.create(cfg, jax.random.PRNGKey(seed))
    k = jax.random.split(jax.random.PRNGKey(seed + 1), 3)
    d = eqx.tree_at(lambda t: (t.b_enc, t.b_dec), d,
                    (0.1 * jax.random.normal(k[0], d.b_enc.shape), jax.random.normal(k[1], d.b_dec.shape)))
    cls = type(d)
    values = np.random.default_rng(seed).uniform(0.05, 0.5, cfg.width).astype(np.float32)
    try:
        extra = cls.from_saelens(cfg, {name: values for name in cls.saelens.tensors}, jnp.float32)
    except ValueError:  # an architecture with a single threshold refuses one per latent
        extra = cls.from_saelens(cfg, {name: np.full_like(values, 0.3) for name in cls.saelens.tensors}, jnp.float32)
    return dataclasses.replace(d, **extra)


HOOK = "blocks.1.hook_resid_post"
# every registered architecture with its defaults (k=32 of 128 latents for the TopK family)
CONFIGS = {name: config_cls(d_in=12, width=128, hook_name=HOOK) for name, (config_cls, _) in sae.REGISTRY.items()}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_save_load_roundtrip(arch, tmp_path):
    d = randomized(CONFIGS[arch])
    sae.save(d, tmp_path / arch)
    back = sae.load(tmp_path / arch)
    assert type(back) is type(d) and back.cfg == d.cfg
    x = jax.random.normal(jax.random.PRNGKey(9), (7, 12))
    np.testing.assert_allclose(back(x), d(x), atol=1e-6)
    np.testing.assert_allclose(back.encode(x), d.encode(x), atol=1e-6)
    cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
    assert cfg["d_sae"] == 128 and cfg["metadata"]["hook_name"] == HOOK
    assert cfg["architecture"] == type(d).saelens.architecture


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_ours_opens_in_saelens(arch, tmp_path):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    d = randomized(CONFIGS[arch])
    sae.save(d, tmp_path / arch)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / arch), device="cpu")
    x = np.random.default_rng(0).normal(size=(7, 12)).astype(np.float32)
    with torch.no_grad():
        z = theirs.encode(torch.tensor(x)).numpy()
        y = theirs.decode(torch.tensor(z)).numpy()
    np.testing.assert_allclose(z, np.asarray(d.encode(jnp.asarray(x))), atol=1e-5)
    np.testing.assert_allclose(y, np.asarray(d(jnp.asarray(x))), atol=1e-5)
    # SAELens reads our metadata as written: the hook, and no claim about facts a bare save does not know
    meta = theirs.cfg.metadata
    assert meta.hook_name == "blocks.1.hook_resid_post"
    assert meta.sae_lens_version == "6.0.0" and meta.sae_lens_training_version is None
    assert meta.prepend_bos is None and meta.model_name is None and meta.context_size is None


def test_metadata_given_to_save_reaches_saelens(tmp_path):
    pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    d = randomized(CONFIGS["jumprelu"])
    facts = {"model_name": "smollm2-135m", "context_size": 64, "prepend_bos": False, "seqpos_slice": [1, None]}
    sae.save(d, tmp_path / "d", metadata=facts)
    meta = sae_lens.SAE.load_from_disk(str(tmp_path / "d"), device="cpu").cfg.metadata
    assert {k: meta[k] for k in facts} == facts and meta.hook_name == CONFIGS["jumprelu"].hook_name
    assert meta["interp"] == CONFIGS["jumprelu"].to_dict()  # our own config travels along


def test_transcoder_files_name_both_hooks(tmp_path):
    cfg = sae.TopKConfig(d_in=12, width=40, k=5, hook_name="blocks.1.ln2.hook_normalized",
                         hook_name_out="blocks.1.hook_mlp_out", d_out=12)
    sae.save(randomized(cfg), tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "cfg.json").read_text())["metadata"]
    assert (meta["hook_name"], meta["hook_name_out"]) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert "hook_name_out" not in json.loads((sae.save(randomized(CONFIGS["topk"]), tmp_path / "s") / "cfg.json")
                                             .read_text())["metadata"]
    raw = json.loads((tmp_path / "t" / "cfg.json").read_text())
    raw["metadata"]["hook_name_out"] = "blocks.2.hook_mlp_out"
    (tmp_path / "t" / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="'metadata.hook_name_out' is 'blocks.2.hook_mlp_out' but the dictionary's "
                                         "config says 'blocks.1.hook_mlp_out'"):
        sae.load(tmp_path / "t")


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_files_written_before_the_saelens_version_field_still_load(arch, tmp_path):
    d = randomized(CONFIGS[arch])
    folder = sae.save(d, tmp_path / arch)
    raw = json.loads((folder / "cfg.json").read_text())
    # the metadata as it was written before: the hook, our config and the training record only
    raw["metadata"] = {"hook_name": raw["metadata"]["hook_name"], "interp": raw["metadata"]["interp"],
                       "train_config": {"total_tokens": 1}}
    (folder / "cfg.json").write_text(json.dumps(raw, indent=2))
    back = sae.load(folder)
    assert back.cfg == d.cfg
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 12))
    np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(d(x)))


def test_a_trained_dictionary_tells_saelens_how_it_was_trained(default_model, corpus_text, tmp_path):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    from interp.sae.store import iter_contexts

    texts = corpus_text[:20000].split("\n\n")
    hook = "blocks.1.hook_resid_post"
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=576, width=64, k=4, hook_name=hook), corpus=texts, total_tokens=512,
                          batch_size=256, context_size=32, buffer_tokens=1024, model_batch=8, lr_warmup_steps=1,
                          out_dir=str(tmp_path))
    result = sae.train(cfg, model=default_model, progress=False)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "final"), device="cpu")
    meta = theirs.cfg.metadata
    assert (meta.hook_name, meta.model_name, meta.context_size) == (hook, "smollm2-135m", 32)
    assert list(meta.seqpos_slice) == [1, None]  # skip_positions=1: training left out each context's first token
    # the contexts it was trained on are the text's tokens with no BOS put in front, which is prepend_bos=False
    assert meta.prepend_bos is False
    tok = default_model.tokenizer
    first = next(iter_contexts(tok, texts, 32))
    joined = [i for t in texts[:40] for i in tok.encode(t, prepend_bos=False) + [tok.eos_id]]  # documents, EOS between
    np.testing.assert_array_equal(first, joined[:32])
    assert first[0] != tok.bos_id and not tok.add_bos  # SmolLM2's tokenizer adds no BOS either
    # and SAELens computes what we compute
    _, cache = default_model.run_with_cache(default_model.to_tokens("The capital of France is Paris."), names=[hook])
    x = np.asarray(cache[hook])[0]
    with torch.no_grad():
        z = theirs.encode(torch.tensor(x)).numpy()
        y = theirs.decode(torch.tensor(z)).numpy()
    ours = result.dictionary
    w_enc, w_dec = np.abs(np.asarray(ours.W_enc)).max(), np.abs(np.asarray(ours.W_dec)).max()
    z_bound = reduction_bound(np.abs(x).max() * w_enc, ours.b_enc, length=576)
    assert_close(z, ours.encode(jnp.asarray(x)), z_bound, "latents")
    y_bound = reduction_bound(np.abs(z).max() * w_dec, ours.b_dec, length=4) + 4 * z_bound * w_dec
    assert_close(y, ours(jnp.asarray(x)), y_bound, "reconstructions")
    assert (z > 0).sum(-1).max() == 4


@pytest.mark.parametrize("arch", saelens_readable())
def test_saelens_file_opens_here(arch, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sae_lens")
    from sae_lens.registry import get_sae_class

    layout = sae.architecture(arch)[1].saelens
    cls, cfg_cls = get_sae_class(layout.architecture)
    torch.manual_seed(0)
    theirs = cls(cfg_cls(d_in=12, d_sae=40, **{name: 5 for name in layout.fields}))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        for name in layout.tensors:  # thresholds: positive, as training leaves them
            getattr(theirs, name).copy_(torch.rand_like(getattr(theirs, name)) * 0.3 + 0.05)
    theirs.save_model(str(tmp_path / arch))
    ours = sae.load(tmp_path / arch)
    assert ours.cfg.arch == arch
    assert all(getattr(ours.cfg, name) == 5 for name in layout.fields)
    x = np.random.default_rng(1).normal(size=(7, 12)).astype(np.float32)
    with torch.no_grad():
        z = theirs.encode(torch.tensor(x)).numpy()
        y = theirs.decode(torch.tensor(z)).numpy()
    np.testing.assert_allclose(np.asarray(ours.encode(jnp.asarray(x))), z, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), y, atol=1e-5)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_without_our_config_a_file_is_its_saelens_architecture(arch, tmp_path):
    """What SAELens reads of a file (its top-level fields and tensors) is the same function: stripped of our config
    it loads as the architecture SAELens names and computes what the dictionary computed."""
    d = randomized(CONFIGS[arch])
    folder = sae.save(d, tmp_path / arch)
    raw = json.loads((folder / "cfg.json").read_text())
    del raw["metadata"]["interp"]
    (folder / "cfg.json").write_text(json.dumps(raw))
    back = sae.load(folder)
    assert back.cfg.arch == type(d).saelens.architecture and back.cfg.hook_name == HOOK
    x = jax.random.normal(jax.random.PRNGKey(3), (7, 12))
    np.testing.assert_allclose(back.encode(x), d.encode(x), atol=1e-6)
    np.testing.assert_allclose(back(x), d(x), atol=1e-6)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json and sae_weights.safetensors"):
        sae.load(tmp_path)


@pytest.fixture(scope="module")
def topk_576():
    cfg = sae.TopKConfig(d_in=576, width=256, k=8, hook_name="blocks.1.hook_resid_post")
    return randomized(cfg, seed=3)


def test_splice_latents_are_hook_points(default_model, topk_576):
    m, d = default_model, topk_576
    ids = m.to_tokens("The capital of France is")
    hook = "blocks.1.hook_resid_post"
    splice = Splice(d, hook, error_term=True)
    clean = np.asarray(m(ids))
    logits, cache = m.run_with_cache(ids, names=[f"{hook}.sae.hook_latents", f"{hook}.sae.hook_error", hook],
                                     splices=[splice])
    # with the error term the model is unchanged, and the latents are the dictionary's codes
    np.testing.assert_allclose(np.asarray(logits), clean, atol=1e-4)
    z = cache[f"{hook}.sae.hook_latents"]
    assert z.shape == (1, ids.shape[1], 256)
    np.testing.assert_allclose(z, d.encode(cache[hook]), atol=1e-5)
    assert int((np.asarray(z) > 0).sum(-1).max()) <= 8
    # edit a feature: zero every latent -> output changes by decode(0) - decode(z), computed inside the model
    ablated = m.run_with_hooks(ids, [(f"{hook}.sae.hook_latents", edits.zero)], splices=[splice])
    assert np.abs(np.asarray(ablated) - clean).max() > 1e-2
    # without the error term the reconstruction replaces the activation
    _, c2 = m.run_with_cache(ids, names=["blocks.2.hook_resid_pre"], splices=[Splice(d, hook)])
    np.testing.assert_allclose(c2["blocks.2.hook_resid_pre"], d(cache[hook]), atol=1e-4)
    with pytest.raises(ValueError, match="cannot splice at unknown hook"):
        m.run_with_hooks(ids, splices=[Splice(d, "blocks.1.hook_resid")])


def test_transcoder_splice_reads_one_hook_and_writes_another(default_model):
    m = default_model
    cfg = sae.TopKConfig(d_in=576, width=128, k=8, hook_name="blocks.3.ln2.hook_normalized",
                         hook_name_out="blocks.3.hook_mlp_out")
    t = randomized(cfg, seed=4)
    ids = m.to_tokens("When Mary and John went to the store")
    _, cache = m.run_with_cache(ids, names=[cfg.hook_name, "blocks.4.hook_resid_pre", "blocks.3.hook_resid_mid"],
                                splices=[Splice(t, cfg.hook_name, cfg.hook_name_out)])
    expect = cache["blocks.3.hook_resid_mid"] + t(cache[cfg.hook_name])
    np.testing.assert_allclose(cache["blocks.4.hook_resid_pre"], expect, atol=1e-3)


def test_evaluate_reports_downstream_metrics(default_model, topk_576):
    m = default_model
    ids = m.to_tokens(["The capital of France is Paris, and the capital of Italy is Rome."] * 2)
    metrics = sae.evaluate(m, topk_576, ids)
    assert metrics.ce_zero_ablation > metrics.ce_clean
    assert 0 <= metrics.dead_fraction <= 1 and metrics.l0 <= 8
    assert metrics.kl_to_clean > 0
    # a dictionary that reproduces its input exactly recovers all of the CE loss
    class Identity(eqx.Module):
        cfg: object = eqx.field(static=True)

        def encode(self, x):
            return x

        def decode(self, z):
            return z

        def __call__(self, x):
            return x

    ident = sae.evaluate(m, Identity(topk_576.cfg), ids)
    assert ident.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert ident.fvu == pytest.approx(0.0, abs=1e-6) and ident.kl_to_clean == pytest.approx(0.0, abs=1e-5)


def test_splice_can_leave_first_positions_to_the_model(default_model, topk_576):
    m, d = default_model, topk_576
    ids = m.to_tokens("The capital of France is")
    hook = "blocks.1.hook_resid_post"
    _, clean = m.run_with_cache(ids, names=[hook, "blocks.2.hook_resid_pre"])
    _, c = m.run_with_cache(ids, names=["blocks.2.hook_resid_pre"], splices=[Splice(d, hook, skip_positions=1)])
    got = np.asarray(c["blocks.2.hook_resid_pre"])
    np.testing.assert_allclose(got[:, 0], np.asarray(clean[hook])[:, 0], atol=1e-5)
    np.testing.assert_allclose(got[:, 1:], np.asarray(d(clean[hook]))[:, 1:], atol=1e-4)
    full = sae.evaluate(m, d, ids)
    skipped = sae.evaluate(m, d, ids, skip_positions=1)
    assert skipped.n_tokens == full.n_tokens and skipped.fvu != full.fvu


def test_attention_sae_reads_the_heads_joined_at_hook_z(default_model):
    """An attention SAE (``d_in`` = heads x head size, as Gemma Scope's ``-att`` ones) spliced at ``attn.hook_z``,
    ``[B T H E]``: it encodes each position's heads joined, and its reconstruction goes back split into heads."""
    m = default_model
    ids = m.to_tokens("The capital of France is")
    hook = "blocks.2.attn.hook_z"
    _, clean = m.run_with_cache(ids, names=[hook])
    z = np.asarray(clean[hook])
    B, T, H, E = z.shape
    d = randomized(sae.TopKConfig(d_in=H * E, width=96, k=8, hook_name=hook), seed=3)
    names = [f"{hook}.sae.hook_latents", f"{hook}.sae.hook_recons", "blocks.2.hook_attn_out", "blocks.2.attn.hook_z"]
    _, c = m.run_with_cache(ids, names=names, splices=[Splice(d, hook)])
    joined = z.reshape(B, T, H * E)
    np.testing.assert_allclose(np.asarray(c[f"{hook}.sae.hook_latents"]), np.asarray(d.encode(joined)), atol=1e-4)
    want = np.asarray(d(joined)).reshape(B, T, H, E)
    np.testing.assert_allclose(np.asarray(c[f"{hook}.sae.hook_recons"]), want, atol=1e-4)
    # with the error term the model's own output is kept until a latent is edited
    _, c = m.run_with_cache(ids, names=["blocks.2.hook_attn_out"], splices=[Splice(d, hook, error_term=True)])
    _, plain = m.run_with_cache(ids, names=["blocks.2.hook_attn_out"])
    np.testing.assert_allclose(np.asarray(c["blocks.2.hook_attn_out"]), np.asarray(plain["blocks.2.hook_attn_out"]),
                               atol=1e-4)
