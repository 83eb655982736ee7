"""Published dictionaries opened with ``from_pretrained``: files written by SAELens and sparsify themselves and
Gemma Scope's ``params.npz`` compute here what they compute in their own libraries."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from interp import sae
from interp.sae import pretrained

RTOL, ATOL = 1e-5, 1e-5  # float32 matmuls of width <= 64 on values of order 1


def close(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ sparsify
def sparsify_coder(d_in=16, latents=48, k=5, transcode=False, skip=False, seed=0):
    torch = pytest.importorskip("torch")
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(seed)
    cfg = sparsify.SparseCoderConfig(num_latents=latents, k=k, transcode=transcode, skip_connection=skip)
    coder = sparsify.SparseCoder(d_in, cfg)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return coder


def sparsify_outputs(coder, x):
    import torch

    with torch.no_grad():
        xt = torch.tensor(x)
        acts, idx, _ = coder.encode(xt)
        dense = torch.zeros(x.shape[0], coder.num_latents).scatter(1, idx, acts)
        return dense.numpy(), coder.decode(acts, idx).numpy(), coder(xt).sae_out.numpy()


def test_sparsify_sae_matches_sparsify(tmp_path):
    coder = sparsify_coder()
    coder.save_to_disk(tmp_path / "layers.3")
    d = sae.from_pretrained(tmp_path / "layers.3")
    assert isinstance(d, sae.TopKSAE) and d.cfg.k == 5 and d.cfg.width == 48
    assert d.cfg.hook_name == "blocks.3.hook_resid_post" and not d.cfg.is_transcoder
    x = np.random.default_rng(1).normal(size=(9, 16)).astype(np.float32)
    z, y, out = sparsify_outputs(coder, x)
    close(d.encode(jnp.asarray(x)), z)
    close(d.decode(jnp.asarray(z)), y)
    close(d(jnp.asarray(x)), out)


def test_sparsify_skip_transcoder_matches_sparsify(tmp_path):
    coder = sparsify_coder(transcode=True, skip=True, seed=1)
    coder.save_to_disk(tmp_path / "layers.2.mlp")
    d = sae.from_pretrained(tmp_path / "layers.2.mlp")
    assert (d.cfg.hook_name, d.cfg.hook_name_out) == ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")
    assert d.cfg.is_transcoder and d.cfg.skip
    x = np.random.default_rng(2).normal(size=(9, 16)).astype(np.float32)
    z, _, out = sparsify_outputs(coder, x)
    close(d.encode(jnp.asarray(x)), z)
    close(d(jnp.asarray(x)), out)


def test_several_sparsify_hookpoints_need_path(tmp_path):
    sparsify_coder(seed=2).save_to_disk(tmp_path / "layers.0")
    sparsify_coder(seed=3).save_to_disk(tmp_path / "layers.1.mlp")
    with pytest.raises(ValueError, match=r"holds 2 dictionaries; pass path=.*'layers.0', 'layers.1.mlp'"):
        sae.from_pretrained(tmp_path)
    assert sae.from_pretrained(tmp_path, "layers.1.mlp").cfg.hook_name == "blocks.1.hook_mlp_out"
    with pytest.raises(FileNotFoundError, match=r"has no 'layers.7'; dictionaries it holds: 'layers.0'"):
        sae.from_pretrained(tmp_path, "layers.7")


def test_sparsify_shape_mismatch_and_unknown_hook_point(tmp_path):
    sparsify_coder().save_to_disk(tmp_path / "embed_tokens")
    with pytest.raises(ValueError, match=r"no hook name is known for this SAE.*pass hook="):
        sae.from_pretrained(tmp_path / "embed_tokens")
    d = sae.from_pretrained(tmp_path / "embed_tokens", hook="hook_embed")
    assert d.cfg.hook_name == "hook_embed"
    with pytest.raises(ValueError, match=r"names two hooks, but .* is an SAE, which reads and writes one hook"):
        sae.from_pretrained(tmp_path / "embed_tokens", hook=("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"))
    with pytest.raises(TypeError, match="hook must be a hook name or a"):
        sae.from_pretrained(tmp_path / "embed_tokens", hook=["hook_embed"])
    cfg = json.loads((tmp_path / "embed_tokens" / "cfg.json").read_text())
    (tmp_path / "embed_tokens" / "cfg.json").write_text(json.dumps({**cfg, "num_latents": 64}))
    with pytest.raises(ValueError, match=r"encoder.weight has shape \(48, 16\), but cfg.json .* implies \(64, 16\)"):
        sae.from_pretrained(tmp_path / "embed_tokens", hook="hook_embed")


# ------------------------------------------------------------------ SAELens
@pytest.mark.parametrize("arch", ["jumprelu", "topk", "standard"])
def test_saelens_files_in_subfolders_match_saelens(arch, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sae_lens")
    from sae_lens.registry import get_sae_class

    cls, cfg_cls = get_sae_class(arch)
    for layer in (2, 5):
        torch.manual_seed(layer)
        extra = {"k": 6} if arch == "topk" else {}
        theirs = cls(cfg_cls(d_in=16, d_sae=40, **extra))
        with torch.no_grad():
            for p in theirs.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
            if arch == "jumprelu":
                theirs.threshold.copy_(torch.rand_like(theirs.threshold) * 0.3 + 0.05)
        theirs.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
        theirs.save_model(str(tmp_path / f"blocks.{layer}.hook_resid_post"))
    with pytest.raises(ValueError, match="holds 2 dictionaries; pass path="):
        sae.from_pretrained(tmp_path)
    d = sae.from_pretrained(tmp_path, "blocks.5.hook_resid_post")
    assert d.cfg.arch == arch and d.cfg.hook_name == "blocks.5.hook_resid_post"
    x = np.random.default_rng(3).normal(size=(9, 16)).astype(np.float32)
    with torch.no_grad():
        z = theirs.encode(torch.tensor(x)).numpy()
        y = theirs.decode(torch.tensor(z)).numpy()
    close(d.encode(jnp.asarray(x)), z)
    close(d.decode(jnp.asarray(z)), y)
    assert sae.from_pretrained(tmp_path, "blocks.5.hook_resid_post", hook="blocks.5.hook_mlp_out").cfg.hook_name \
        == "blocks.5.hook_mlp_out"


def test_dictionaries_from_a_hub_repo_equal_the_same_files_from_a_folder(hub, tmp_path):
    """A repo on a (fake) Hub holding a SAELens and a sparsify dictionary in subfolders, both written by those
    libraries: ``from_pretrained(repo, path)`` downloads that subfolder only and equals loading it from a folder."""
    pytest.importorskip("sae_lens")
    from sae_lens.registry import get_sae_class

    cls, cfg_cls = get_sae_class("topk")
    theirs = cls(cfg_cls(d_in=16, d_sae=40, k=6))
    theirs.cfg.metadata.hook_name = "blocks.4.hook_resid_post"
    theirs.save_model(str(tmp_path / "repo" / "saelens" / "blocks.4"))
    sparsify_coder(seed=4).save_to_disk(tmp_path / "repo" / "sparsify" / "layers.3")
    root = tmp_path / "repo"
    hub.add_repo("org/dictionaries", {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})
    x = jnp.asarray(np.random.default_rng(5).normal(size=(7, 16)).astype(np.float32))
    for path in ("saelens/blocks.4", "sparsify/layers.3"):
        got = sae.from_pretrained("org/dictionaries", path)
        local = sae.from_pretrained(root / path)
        assert got.cfg.hook_name == local.cfg.hook_name
        np.testing.assert_array_equal(np.asarray(got.encode(x)), np.asarray(local.encode(x)))
        np.testing.assert_array_equal(np.asarray(got.decode(got.encode(x))), np.asarray(local.decode(local.encode(x))))
    fetched = hub.downloads()
    assert fetched and all(f.startswith(("org/dictionaries/saelens/", "org/dictionaries/sparsify/")) for f in fetched)
    with pytest.raises(ValueError, match="holds no dictionary at its top level; pass path=.*'saelens/blocks.4'"):
        sae.from_pretrained("org/dictionaries")
    with pytest.raises(FileNotFoundError, match="no repo 'org/missing'"):
        sae.from_pretrained("org/missing", "layers.0")


# ------------------------------------------------------------------ Gemma Scope
def gemma_scope_params(folder, d_in=24, width=40, d_out=None, seed=0, **extra):
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    params = {"W_enc": rng.normal(size=(d_in, width)) * 0.3, "W_dec": rng.normal(size=(width, d_out)) * 0.3,
              "b_enc": rng.normal(size=width) * 0.1, "b_dec": rng.normal(size=d_out),
              "threshold": rng.uniform(0.05, 0.4, size=width)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{**params, **extra})
    return params


def jumprelu_np(p, x):
    """Gemma Scope's JumpReLU: pre = x W_enc + b_enc (b_dec not subtracted); keep pre where it exceeds threshold."""
    pre = x.astype(np.float64) @ p["W_enc"] + p["b_enc"]
    return np.where(pre > p["threshold"], np.maximum(pre, 0), 0.0)


GEMMA = "layer_12/width_16k/average_l0_82"


def test_gemma_scope_npz_is_jumprelu(tmp_path):
    root = tmp_path / "gemma-scope-2b-pt-res"
    p = gemma_scope_params(root / GEMMA)
    x = np.random.default_rng(4).normal(size=(9, 24)).astype(np.float32)
    for d in (sae.from_pretrained(root, GEMMA), sae.from_pretrained(root / GEMMA / "params.npz")):
        assert isinstance(d, sae.JumpReLUSAE) and (d.cfg.d_in, d.cfg.width) == (24, 40)
        assert d.cfg.hook_name == "blocks.12.hook_resid_post" and not d.cfg.apply_b_dec_to_input
        z = jumprelu_np(p, x)
        assert 0 < (z > 0).mean() < 1  # the threshold cuts some latents and keeps others
        close(d.encode(jnp.asarray(x)), z)
        close(d(jnp.asarray(x)), z @ p["W_dec"] + p["b_dec"])


def test_gemma_scope_embedding_reads_scaled_embeddings(tmp_path):
    root = tmp_path / "gemma-scope-2b-pt-res"
    p = gemma_scope_params(root / "embedding/width_4k/average_l0_6")
    d = sae.from_pretrained(root, "embedding/width_4k/average_l0_6")
    assert d.cfg.hook_name == "hook_embed"
    x = np.random.default_rng(5).normal(size=(9, 24)).astype(np.float32)
    scale = np.sqrt(24)
    z = jumprelu_np(p, x)
    close(d.encode(jnp.asarray(x * scale)), z)
    close(d(jnp.asarray(x * scale)), (z @ p["W_dec"] + p["b_dec"]) * scale)


@pytest.mark.parametrize("kind, hooks", [
    ("res", ("blocks.3.hook_resid_post", None)),
    ("mlp", ("blocks.3.hook_mlp_out", None)),
    ("att", ("blocks.3.attn.hook_z", None)),
    ("transcoders", ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")),
])
def test_repo_id_downloads_only_the_folder(kind, hooks, tmp_path, monkeypatch):
    path = "layer_3/width_16k/average_l0_10"
    p = gemma_scope_params(tmp_path / "snapshot" / path, seed=6)
    calls = []
    monkeypatch.setattr(pretrained, "_download", lambda *a: calls.append(a) or tmp_path / "snapshot")
    d = sae.from_pretrained(f"google/gemma-scope-2b-pt-{kind}", path, revision="abc")
    assert calls == [(f"google/gemma-scope-2b-pt-{kind}", path, "abc")]
    assert (d.cfg.hook_name, d.cfg.hook_name_out) == hooks and d.cfg.is_transcoder == (kind == "transcoders")
    x = np.random.default_rng(7).normal(size=(5, 24)).astype(np.float32)
    close(d.encode(jnp.asarray(x)), jumprelu_np(p, x))


def test_repo_id_errors(tmp_path, monkeypatch):
    (tmp_path / "snapshot").mkdir()
    monkeypatch.setattr(pretrained, "_download", lambda *a: tmp_path / "snapshot")
    listing = ["README.md", "layer_0/width_16k/average_l0_5/params.npz", "layer_1/width_16k/average_l0_9/params.npz"]
    monkeypatch.setattr(pretrained, "_hub_files", lambda *a: listing)
    with pytest.raises(FileNotFoundError, match=r"has no files under 'layer_9'; .*'layer_0/width_16k/average_l0_5'"):
        sae.from_pretrained("google/gemma-scope-2b-pt-res", "layer_9")
    with pytest.raises(ValueError, match=r"no dictionary at its top level; pass path=.*'layer_1/width_16k/"):
        sae.from_pretrained("google/gemma-scope-2b-pt-res")
    with pytest.raises(FileNotFoundError, match="neither an existing file or folder nor a Hub repo id"):
        sae.from_pretrained(str(tmp_path / "missing" / "deeper"))


def test_saelens_release_resolves_through_its_registry(tmp_path, monkeypatch):
    pytest.importorskip("sae_lens")
    path = "layer_12/width_16k/average_l0_82"
    p = gemma_scope_params(tmp_path / "snapshot" / path, seed=8)
    calls = []
    monkeypatch.setattr(pretrained, "_download", lambda *a: calls.append(a) or tmp_path / "snapshot")
    d = sae.from_pretrained(release="gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")
    assert calls == [("google/gemma-scope-2b-pt-res", path, None)]
    assert d.cfg.hook_name == "blocks.12.hook_resid_post"
    x = np.random.default_rng(9).normal(size=(5, 24)).astype(np.float32)
    close(d.encode(jnp.asarray(x)), jumprelu_np(p, x))


def test_release_errors(monkeypatch):
    registry = {"my-release": SimpleNamespace(repo_id="me/saes", saes_map={"a": "a", "b": "b"}, conversion_func=None),
                "odd-release": SimpleNamespace(repo_id="me/odd", saes_map={"a": "a"}, conversion_func="llama_scope")}
    monkeypatch.setattr(pretrained, "_saelens_registry", lambda: registry)
    with pytest.raises(ValueError, match=r"no release 'my-relase'; did you mean 'my-release'"):
        sae.from_pretrained(release="my-relase", sae_id="a")
    with pytest.raises(ValueError, match=r"has no sae_id 'c'; it has 'a', 'b'"):
        sae.from_pretrained(release="my-release", sae_id="c")
    with pytest.raises(ValueError, match=r"'llama_scope' format, which interp does not read; load it in SAELens"):
        sae.from_pretrained(release="odd-release", sae_id="a")
    with pytest.raises(ValueError, match="needs both release= and sae_id="):
        sae.from_pretrained(release="my-release")


def test_release_without_saelens(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", None)
    with pytest.raises(ImportError, match=r"install sae-lens .* or pass the repo id and path"):
        sae.from_pretrained(release="gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")


# ------------------------------------------------------------------ bad files
def test_folder_matching_no_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"matches no dictionary layout: looked for cfg.json \+ "
                                         r"sae_weights.safetensors \(SAELens\).*params.npz \(Gemma Scope\); "
                                         r"it holds \['weights.bin'\]"):
        sae.from_pretrained(tmp_path)


def test_npz_needing_pickle_is_refused(tmp_path):
    gemma_scope_params(tmp_path / "gemma-scope-2b-pt-res" / GEMMA, note=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"holds pickled Python objects, which are not read .*np.savez"):
        sae.from_pretrained(tmp_path / "gemma-scope-2b-pt-res", GEMMA)


def test_npz_shape_mismatch_and_unknown_kind(tmp_path):
    root = tmp_path / "gemma-scope-2b-pt-res"
    p = gemma_scope_params(root / GEMMA)
    np.savez(root / GEMMA / "params.npz", **{**p, "threshold": p["threshold"][:30]})
    with pytest.raises(ValueError, match=r"threshold has shape \(30,\), but W_enc's shape .* implies \(40,\)"):
        sae.from_pretrained(root, GEMMA)
    gemma_scope_params(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="no hook name is known for this SAE"):
        sae.from_pretrained(tmp_path / "elsewhere")
    d = sae.from_pretrained(tmp_path / "elsewhere", hook="blocks.1.hook_resid_post")
    assert d.cfg.hook_name == "blocks.1.hook_resid_post"
    t = sae.from_pretrained(tmp_path / "elsewhere", hook=("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"))
    assert t.cfg.is_transcoder and t.cfg.hook_name_out == "blocks.1.hook_mlp_out"
    x = np.random.default_rng(10).normal(size=(5, 24)).astype(np.float32)
    close(t.encode(jnp.asarray(x)), d.encode(jnp.asarray(x)))


def test_published_hooks_table_is_the_docstring_table():
    """The module docstring's table and ``PUBLISHED_HOOKS`` state one mapping."""
    doc = pretrained.__doc__
    for names in sae.PUBLISHED_HOOKS.values():
        for hook_in, hook_out in names.values():
            for h in (hook_in, hook_out):
                assert h is None or f"``{h.replace('{L}', 'L')}``" in doc


def test_other_refusals(tmp_path):
    sparsify_coder().save_to_disk(tmp_path / "layers.1")
    cfg = json.loads((tmp_path / "layers.1" / "cfg.json").read_text())
    (tmp_path / "layers.1" / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(ValueError, match="sparsify activation 'groupmax' is not supported; only 'topk' is"):
        sae.from_pretrained(tmp_path / "layers.1")
    (tmp_path / "layers.1" / "cfg.json").write_text(json.dumps({**cfg, "skip_connection": True}))
    with pytest.raises(ValueError, match="skip_connection without transcode"):
        sae.from_pretrained(tmp_path / "layers.1")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="is not a dictionary file; pass its folder, or a Gemma Scope params.npz"):
        sae.from_pretrained(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="pass either source"):
        sae.from_pretrained(tmp_path, release="r", sae_id="a")
    p = gemma_scope_params(tmp_path / "g", W_skip=np.zeros((24, 24), np.float32))
    with pytest.raises(ValueError, match=r"holds \['W_skip'\], which Gemma Scope's JumpReLU does not use"):
        sae.from_pretrained(tmp_path / "g", hook="blocks.0.hook_resid_post")
    np.savez(tmp_path / "g" / "params.npz", **p, scaling_factor=np.full(40, 2.0, np.float32))
    with pytest.raises(ValueError, match="holds a scaling_factor other than 1"):
        sae.from_pretrained(tmp_path / "g", hook="blocks.0.hook_resid_post")


# ------------------------------------------------------------------ a transcoder folded into the model it reads
@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_transcoder_with_model_folds_the_norm_and_matches_sparsify_on_the_transformers_mlp_input(variant, tmp_path):
    """sparsify's skip transcoder of ``h.1.mlp`` / ``layers.1.mlp`` applied (in torch) to the MLP input of the
    transformers model, which passes through the norm's multiplier (and GPT-2's LayerNorm bias), against the same
    files opened with ``model=`` and spliced into interp's model from ``ln2.hook_normalized`` to ``hook_mlp_out``."""
    torch = pytest.importorskip("torch")
    import interp
    from interp.hooks import Splice
    from tests.conftest import make_hf_model
    from tests.models import test_gpt2_neox_parity as gpt2_neox

    hf = gpt2_neox.make_hf("gpt2") if variant == "gpt2" else make_hf_model("gqa")
    with torch.no_grad():  # norms far from the identity, so that an unfolded transcoder would be far off
        for name, p in hf.named_parameters():
            if ("ln_2" in name or "post_attention_layernorm" in name):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    folder = tmp_path / "model"
    hf.save_pretrained(folder, safe_serialization=True)
    model = interp.load(folder)
    site = "h.1.mlp" if variant == "gpt2" else "layers.1.mlp"
    coder = sparsify_coder(d_in=model.d_model, transcode=True, skip=True, seed=4)
    coder.save_to_disk(tmp_path / site)

    tokens = np.random.default_rng(0).integers(0, model.d_vocab, (2, 7))
    mlp = hf.transformer.h[1].mlp if variant == "gpt2" else hf.model.layers[1].mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    with torch.no_grad():
        hf(torch.tensor(tokens))
        want = coder(seen["x"].reshape(-1, model.d_model)).sae_out.reshape(2, 7, -1).numpy()
    handle.remove()

    d = sae.from_pretrained(tmp_path / site, model=model)
    assert (d.cfg.hook_name, d.cfg.hook_name_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    recons = "blocks.1.hook_mlp_out.sae.hook_recons"
    _, cache = model.run_with_cache(tokens, [recons], splices=[Splice(d, d.cfg.hook_name, d.cfg.hook_name_out)])
    np.testing.assert_allclose(np.asarray(cache[recons]), want, rtol=1e-4, atol=1e-4)
    # unfolded, the same files read the wrong numbers there
    raw = sae.from_pretrained(tmp_path / site)
    _, cache = model.run_with_cache(tokens, [recons], splices=[Splice(raw, raw.cfg.hook_name, raw.cfg.hook_name_out)])
    assert float(np.abs(np.asarray(cache[recons]) - want).max()) > 0.1


def test_model_checks_and_fold_refusals(tmp_path):
    import interp
    from tests.tiny_chat import tiny_chat_folder

    model = interp.load(tiny_chat_folder(tmp_path / "toy"))
    sparsify_coder(d_in=model.d_model, seed=5).save_to_disk(tmp_path / "layers.7")
    with pytest.raises(ValueError, match=r"uses hook 'blocks.7.hook_resid_post', which the model does not have"):
        sae.from_pretrained(tmp_path / "layers.7", model=model)
    sparsify_coder(d_in=model.d_model + 1, seed=6).save_to_disk(tmp_path / "layers.0")
    with pytest.raises(ValueError, match=rf"reads {model.d_model + 1} numbers per token and the model's stream has "
                                         rf"{model.d_model}: it was trained on another model"):
        sae.from_pretrained(tmp_path / "layers.0", model=model)
    plain = sae.from_pretrained(tmp_path / "layers.7")
    with pytest.raises(ValueError, match="this one reads 'blocks.7.hook_resid_post'"):
        sae.fold_input_norm(plain, model)
    at_norm = sae.from_pretrained(tmp_path / "layers.7", hook="blocks.0.ln2.hook_normalized")
    with pytest.raises(ValueError, match="an SAE at 'blocks.0.ln2.hook_normalized' reconstructs the norm's output"):
        sae.fold_input_norm(at_norm, model)
