"""TransformerLens habits on Model: return_type and loss, fwd_hooks and `with model.hooks(...)`, the refusal of
hooks that store traced activations, help() on the conveniences, model.cfg, stacked weights and factored
OV/QK circuits, to_str_tokens on batches, test_prompt."""

from __future__ import annotations

import inspect
import pydoc
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interp
from interp import Hooks, edits
from interp.models import FactoredMatrix
from tests.conftest import hf_logits_head_zeroed, make_hf_model, random_tokens
from tests.numerics import EPS32, assert_close, f32_bound, model_bound


@pytest.fixture(scope="module")
def tiny(hf_checkpoints):
    hf, folder = hf_checkpoints("gqa")
    return interp.load(folder), hf


@pytest.fixture(scope="module")
def tokens(tiny):
    return random_tokens(tiny[0].d_vocab, (2, 7), seed=11)


@pytest.fixture(scope="module")
def smol_tokenizer_model(tmp_path_factory):
    """A tiny random model with SmolLM2's real tokenizer (vocabulary 49152), read from the default model's cache."""
    from interp.weights.default import ensure_default

    hf = make_hf_model("gqa", seed=4, vocab_size=49152, hidden_size=16, intermediate_size=24, num_hidden_layers=1)
    folder = tmp_path_factory.mktemp("hf-smol-tok")
    hf.save_pretrained(folder, safe_serialization=True)
    shutil.copy(ensure_default() / "tokenizer.json", folder / "tokenizer.json")
    return interp.load(folder)


# ----------------------------------------------------------------- FactoredMatrix

def _factors(seed=0, lead=(2, 3), l=6, m=4, r=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((*lead, l, m)).astype(np.float32), rng.standard_normal((*lead, m, r)).astype(np.float32)


def test_factored_matrix_products_match_numpy():
    A, B = _factors()
    F, M = FactoredMatrix(A, B), A @ B
    bound = f32_bound(M, ulps=8 * 4)
    assert F.shape == (2, 3, 6, 5) and F.ndim == 4 and F.mdim == 4
    assert_close(F.AB, M, bound, "AB")
    assert_close(F.T.AB, np.swapaxes(M, -1, -2), bound, "T")
    assert_close(F[1, 2].AB, M[1, 2], bound, "index")
    assert_close(F[1, 2, 1:4].AB, M[1, 2, 1:4], bound, "rows")
    assert_close(F[1, 2, 3, 2].AB, M[1, 2, 3:4, 2:3], bound, "row and column")
    x = np.random.default_rng(1).standard_normal(5).astype(np.float32)
    assert_close(F @ x, M @ x, f32_bound(M, x, ulps=64), "F @ vector")
    y = np.random.default_rng(2).standard_normal(6).astype(np.float32)
    assert_close(y @ F, y @ M, f32_bound(M, y, ulps=64), "vector @ F")
    X = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    assert isinstance(F @ X, FactoredMatrix) and isinstance(np.eye(6, dtype=np.float32) @ F, FactoredMatrix)
    assert_close((F @ X).AB, M @ X, f32_bound(M, X, ulps=64), "F @ matrix")
    assert_close((jnp.asarray(X.T) @ F.T).AB, (M @ X).swapaxes(-1, -2), f32_bound(M, X, ulps=64), "matrix @ F")
    C, Dm = _factors(seed=5, lead=(), l=5, m=3, r=6)
    G = F @ FactoredMatrix(C, Dm)
    assert isinstance(G, FactoredMatrix) and G.mdim == 3 and G.shape == (2, 3, 6, 6)
    assert_close(G.AB, M @ (C @ Dm), f32_bound(M, C @ Dm, ulps=256), "F @ G")
    assert_close((F * 2.0).AB, 2 * M, bound * 2, "scalar")
    mapped = jax.tree.map(lambda a: 2 * a, F)
    assert isinstance(mapped, FactoredMatrix)
    assert_close(mapped.AB, 4 * M, bound * 4, "tree.map")


def test_factored_svd_norm_and_eigenvalues_match_numpy():
    A, B = _factors(seed=7)
    F = FactoredMatrix(A, B)
    M = (A.astype(np.float64) @ B.astype(np.float64))
    U, S, V = F.svd()
    assert U.shape == (2, 3, 6, 4) and S.shape == (2, 3, 4) and V.shape == (2, 3, 5, 4)
    bound = f32_bound(M, ulps=256)
    assert_close(S, np.linalg.svd(M, compute_uv=False)[..., :4], bound, "singular values")
    assert_close(U @ (S[..., None] * np.swapaxes(V, -1, -2)), M, bound, "U diag(S) V.T")
    assert_close(np.swapaxes(U, -1, -2) @ U, np.broadcast_to(np.eye(4), (2, 3, 4, 4)), 256 * EPS32, "U orthonormal")
    assert_close(F.norm(), np.linalg.norm(M, axis=(-2, -1)), bound, "Frobenius norm")
    assert_close(F.make_even().AB, M, bound, "make_even")
    A2, B2 = _factors(seed=9, lead=(), l=6, m=3, r=6)
    ev = np.sort_complex(np.asarray(FactoredMatrix(A2, B2).eigenvalues))
    full = np.linalg.eigvals(A2.astype(np.float64) @ B2)
    full = np.sort_complex(full[np.argsort(-np.abs(full))][:3])  # AB has 3 more eigenvalues, all zero
    assert_close(ev.real, full.real, f32_bound(A2 @ B2, ulps=512), "eigenvalues (real)")
    assert_close(ev.imag, full.imag, f32_bound(A2 @ B2, ulps=512), "eigenvalues (imag)")


def test_factored_matrix_refuses_mismatched_shapes():
    A, B = _factors()
    with pytest.raises(ValueError, match="inner sizes differ"):
        FactoredMatrix(A, B[..., :3, :])
    with pytest.raises(ValueError, match="leading axes do not broadcast"):
        FactoredMatrix(A, B[:1, :2])
    with pytest.raises(ValueError, match="cannot multiply"):
        FactoredMatrix(A, B) @ np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(A, B).BA


# ----------------------------------------------------------------- model.cfg, stacked weights, OV / QK

def test_cfg_has_transformer_lens_names_and_reaches_the_config(tiny):
    model, hf = tiny
    cfg = model.cfg
    c = hf.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.hidden_size // c.num_attention_heads,
        c.intermediate_size, c.vocab_size, c.max_position_embeddings)
    assert cfg.n_key_value_heads == 2 and cfg.normalization_type == "RMS" and cfg.act_fn == "silu"
    assert cfg.positional_embedding_type == "rotary" and cfg.gated_mlp and cfg.eps == c.rms_norm_eps
    assert cfg.rope_theta == model.config.rope_theta  # a field of the family's config
    with pytest.raises(AttributeError, match="neither one of TransformerLens's fields"):
        _ = cfg.no_such_field


def test_stacked_weights_have_transformer_lens_shapes_and_repeat_kv_heads(tiny, tokens):
    model, _ = tiny
    Lr, H, D, E, F = model.n_layers, 4, 32, 8, 48
    shapes = {"W_Q": (Lr, H, D, E), "W_K": (Lr, H, D, E), "W_V": (Lr, H, D, E), "W_O": (Lr, H, E, D),
              "W_in": (Lr, D, F), "W_gate": (Lr, D, F), "W_out": (Lr, F, D), "b_Q": (Lr, H, E), "b_K": (Lr, H, E),
              "b_O": (Lr, D), "b_in": (Lr, F), "W_E": (97, D), "W_U": (D, 97)}
    for name, shape in shapes.items():
        assert getattr(model, name).shape == shape, name
    assert not np.any(model.b_Q)  # no biases in this checkpoint: zeros, as TransformerLens holds them
    with pytest.raises(AttributeError, match="no learned W_pos"):
        _ = model.W_pos
    # query head h reads kv head h // 2: W_K[l, h] reproduces the captured keys
    ln1 = [interp.act_name("normalized", l, "ln1") for l in range(model.n_layers)]
    _, cache = model.run_with_cache(tokens, names=ln1 + ["k", "v"])
    for l in range(model.n_layers):
        x = cache["normalized", l, "ln1"] * model.blocks[l].ln1.weight
        for h in range(H):
            for W, key in ((model.W_K, "k"), (model.W_V, "v")):
                got = x @ W[l, h]
                want = cache[key, l][:, :, h // 2]
                assert_close(got, want, model_bound(want, n_layers=1), f"{key} of head {h}")


def test_ov_and_qk_are_factored_per_head(tiny):
    model, _ = tiny
    OV, QK = model.OV, model.QK
    assert OV.shape == QK.shape == (2, 4, 32, 32) and OV.mdim == 8
    WV, WO, WQ, WK = map(np.asarray, (model.W_V, model.W_O, model.W_Q, model.W_K))
    bound = f32_bound(WV @ WO, ulps=32)
    assert_close(OV[1, 3].AB, WV[1, 3] @ WO[1, 3], bound, "OV")
    assert_close(QK[0, 2].AB, WQ[0, 2] @ WK[0, 2].T, f32_bound(WQ[0, 2] @ WK[0, 2].T, ulps=32), "QK")
    assert_close(OV.norm(), np.linalg.norm(WV @ WO, axis=(-2, -1)), f32_bound(WV @ WO, ulps=256), "OV norms")


# ----------------------------------------------------------------- return_type and loss

def test_loss_matches_transformer_lens(tiny, tokens):
    torch = pytest.importorskip("torch")
    from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

    model, _ = tiny
    logits, loss = model(tokens, return_type="both")
    mask = np.ones_like(tokens)
    mask[1, 5:] = 0
    t_logits = torch.tensor(np.asarray(logits))
    for kwargs in ({}, {"attention_mask": mask}):
        t_mask = {k: torch.tensor(v) for k, v in kwargs.items()}
        ref = lm_cross_entropy_loss(t_logits, torch.tensor(tokens, dtype=torch.long), **t_mask).item()
        ref_tok = lm_cross_entropy_loss(t_logits, torch.tensor(tokens, dtype=torch.long), **t_mask,
                                        per_token=True).numpy()
        masked_logits = np.asarray(model(tokens, **kwargs))
        if kwargs:  # the loss of a masked run is that of its own logits
            t_logits_m = torch.tensor(masked_logits)
            ref = lm_cross_entropy_loss(t_logits_m, torch.tensor(tokens, dtype=torch.long), **t_mask).item()
            ref_tok = lm_cross_entropy_loss(t_logits_m, torch.tensor(tokens, dtype=torch.long), **t_mask,
                                            per_token=True).numpy()
        got = float(model(tokens, "loss", **kwargs))
        per_token = np.asarray(model(tokens, "loss", loss_per_token=True, **kwargs))
        assert per_token.shape == (2, 6)
        assert_close(got, ref, f32_bound(ref, ulps=64), f"mean loss {kwargs}")
        assert_close(per_token, ref_tok, f32_bound(ref_tok, ulps=64), f"per-token loss {kwargs}")
    assert_close(loss, float(model(tokens, "loss")), 0.0, "'both' and 'loss' agree")
    assert model(tokens, return_type=None) is None


def test_padded_texts_lose_what_each_text_loses_alone(smol_tokenizer_model):
    model = smol_tokenizer_model
    texts = ["The capital of France is Paris", "Hi there"]
    batch = np.asarray(model(texts, "loss", loss_per_token=True))
    for i, text in enumerate(texts):
        alone = np.asarray(model(text, "loss", loss_per_token=True))[0]
        n = alone.shape[0]
        assert_close(batch[i, :n], alone, model_bound(alone, n_layers=model.n_layers), text)
        assert not np.any(batch[i, n:])  # predictions of padding count zero
    mean = float(model(texts, "loss"))
    assert_close(mean, batch.sum() / sum(len(model.to_str_tokens(t)) - 1 for t in texts), f32_bound(mean, ulps=64),
                 "mean over real predictions")


def test_return_type_errors_name_the_fix(tiny, tokens):
    model, _ = tiny
    with pytest.raises(ValueError, match="return_type must be one of"):
        model(tokens, "probs")
    with pytest.raises(ValueError, match="stop_at_layer returns the residual"):
        model(tokens, "loss", stop_at_layer=1)
    with pytest.raises(ValueError, match="at least two tokens"):
        model(tokens[:, :1], "loss")
    with pytest.raises(ValueError, match="loss_per_token=True needs"):
        model(tokens, loss_per_token=True)


# ----------------------------------------------------------------- hooks with TransformerLens's signature

def test_fwd_hook_zeroing_a_head_matches_transformers(tiny, tokens):
    model, hf = tiny
    names = []

    def zero_head(z, hook):
        names.append(hook.name)  # strings are fine to keep
        assert hook.layer() == 1
        return z.at[:, :, 2].set(0.0)

    got = np.asarray(model.run_with_hooks(tokens, fwd_hooks=[(interp.act_name("z", 1), zero_head)]))
    ref = hf_logits_head_zeroed(hf, tokens, layer=1, head=2)
    assert_close(got, ref, model_bound(ref, n_layers=model.n_layers), "head zeroed through fwd_hooks")
    assert names == ["blocks.1.attn.hook_z"]
    unchanged = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_z"), lambda z, hook: None)])
    plain = np.asarray(model(tokens))
    assert_close(unchanged, plain, model_bound(plain, n_layers=model.n_layers), "a hook returning None")


def test_a_hook_that_stores_activations_is_refused(tiny, tokens):
    model, _ = tiny
    store, by_name = [], {}
    with pytest.raises(RuntimeError, match=r"hook kept an activation.*run_with_cache"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: store.append(a))])
    with pytest.raises(RuntimeError, match="'keep_last' at 'blocks.1.attn.hook_pattern'"):
        def keep_last(act, hook):
            by_name[hook.name] = act[:, :, -1]  # something computed from it leaks just the same
        model.run_with_cache(tokens, names="resid_post", fwd_hooks=[("pattern", keep_last)])
    with (pytest.raises(RuntimeError, match="hook kept an activation"),
          model.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: store.append(a * 2))])):
        model(tokens)


def test_hooks_context_applies_to_calls_on_that_model_only(tiny, tokens, hf_checkpoints):
    model, _ = tiny
    name = "blocks.0.hook_resid_post"

    def halve(x, hook):
        return x * 0.5

    plain = np.asarray(model(tokens))
    hooked = np.asarray(model.run_with_hooks(tokens, fwd_hooks=[(name, halve)]))
    assert np.abs(hooked - plain).max() > 1e-3
    other = interp.load(hf_checkpoints("gqa")[1])
    assert model._context_edits() == ()
    with model.hooks(fwd_hooks=[(name, halve)]):
        assert len(model._context_edits()) == 1 and other._context_edits() == ()
        np.testing.assert_array_equal(model(tokens), hooked)
        _, cache = model.run_with_cache(tokens, names=[name])
        np.testing.assert_array_equal(np.asarray(other(tokens)), plain)
        with model.hooks(edits=[(name, edits.scale, 0.5)]):  # nested blocks add up
            quartered = model.run_with_cache(tokens, names=[name])[1][name]
    np.testing.assert_array_equal(model(tokens), plain)
    _, clean = model.run_with_cache(tokens, names=[name])
    bound = model_bound(clean[name], n_layers=1)  # the runs differ in length bucket, so in rounding
    assert_close(cache[name], clean[name] * 0.5, bound, "captured after the context's hook")
    assert_close(quartered, clean[name] * 0.25, bound, "nested")


def test_context_edits_reach_model_run_once(tiny, tokens):
    """The path Model.run uses: the context's edits are added once however often _with_context_edits runs."""
    model, _ = tiny
    name = "blocks.1.hook_resid_mid"
    with model.hooks(edits=[(name, edits.scale, 2.0)]):
        hooks = model._with_context_edits(model._with_context_edits(Hooks(capture=[name])))
        _, cache = model.run(tokens, hooks)
    _, clean = model.run(tokens, Hooks(capture=[name]))
    assert_close(cache[name], 2 * clean[name], model_bound(2 * clean[name], n_layers=2), "doubled once")


def test_unsupported_transformer_lens_options_say_what_to_do(tiny, tokens):
    model, _ = tiny
    with pytest.raises(ValueError, match="jax.grad"):
        model.run_with_hooks(tokens, bwd_hooks=[("hook_embed", lambda g, hook: g)])
    with pytest.raises(ValueError, match="with model.hooks"):
        model.run_with_hooks(tokens, fwd_hooks=[], reset_hooks_end=False)
    with pytest.raises(TypeError, match=r"forward hook must be \(name, fn\)"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed",)])


# ----------------------------------------------------------------- help() and equinox's method wrapping

def test_help_shows_signatures_and_docs(tiny):
    model, _ = tiny
    for name, phrase in (("run_with_cache", "names=None"), ("run_with_hooks", "fwd_hooks"),
                         ("to_str_tokens", "attention_mask"), ("test_prompt", "answer"), ("hooks", "fwd_hooks")):
        text = pydoc.plain(pydoc.render_doc(getattr(model, name)))
        assert f"{name}(" in text and phrase in text and "BoundMethod" not in text, text[:300]
        assert getattr(type(model), name).__doc__.split()[0] in text
    # the pure forward stays an equinox pytree method, so it can be transformed directly
    assert type(model.forward).__name__ == "BoundMethod"
    out = eqx.filter_jit(model.forward)(jnp.zeros((1, 3), jnp.int32))
    assert out.shape == (1, 3, model.d_vocab)


def test_entry_points_and_private_methods_are_plain(tiny, monkeypatch):
    """Building equinox's pytree method walks every leaf of the model; the calls a forward pass makes on its way to
    the compiled program (``run``, ``check_inputs``, private helpers) must not pay that on each access."""
    model, _ = tiny
    for name in ("run", "check_inputs", "hook_shapes", "_forward", "_with_context_edits"):
        assert inspect.ismethod(getattr(model, name)), name
    walks = []
    leaves = jax.tree_util.tree_leaves
    weight = leaves(model)[0]

    def counting(tree, *a, **k):  # equinox's method wrapper walks the model through `jax.tree_util.tree_leaves`
        out = leaves(tree, *a, **k)
        walks.extend(1 for x in out if x is weight)
        return out

    tokens = jnp.zeros((1, 3), jnp.int32)
    model.run_with_cache(tokens, names=["blocks.0.hook_resid_post"])  # compiled once, outside the count
    monkeypatch.setattr(jax.tree_util, "tree_leaves", counting)
    model.forward  # noqa: B018 -- the pytree method does walk it: the count can see a walk
    assert walks
    walks.clear()
    model.run_with_cache(tokens, names=["blocks.0.hook_resid_post"])
    assert not walks


# ----------------------------------------------------------------- tokenizer conveniences and test_prompt

def test_to_str_tokens_on_batches(smol_tokenizer_model):
    model = smol_tokenizer_model
    hf = model.tokenizer.hf

    def pieces(ids):
        return [hf.decode([i], skip_special_tokens=False) for i in ids]

    texts = ["Hi there", "a"]
    assert model.to_str_tokens(texts) == [pieces(hf.encode(t).ids) for t in texts] == [["Hi", " there"], ["a"]]
    assert model.to_str_tokens("Hi there") == ["Hi", " there"]
    ids, mask = model.to_tokens(texts, return_mask=True)
    pad = model.tokenizer.hf.decode([model.tokenizer.pad_id], skip_special_tokens=False)
    assert model.to_str_tokens(ids) == [["Hi", " there"], ["a", pad]]  # one list per row, pads kept
    assert model.to_str_tokens(ids, attention_mask=mask) == [["Hi", " there"], ["a"]]
    left, left_mask = model.to_tokens(texts, padding_side="left", return_mask=True)
    assert model.to_str_tokens(left, attention_mask=left_mask) == [["Hi", " there"], ["a"]]
    assert model.to_str_tokens(model.to_tokens("Hi there")) == ["Hi", " there"]  # [1, pos]: one list
    assert model.to_str_tokens(np.asarray(ids)[0]) == ["Hi", " there"]
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.to_str_tokens(ids, attention_mask=mask[:, :1])


def test_test_prompt_reports_ranks_as_transformer_lens_prints_them(smol_tokenizer_model, capsys):
    model = smol_tokenizer_model
    prompt = "The capital of France is"
    result = model.test_prompt(prompt, "Paris", top_k=3)
    printed = capsys.readouterr().out
    ids = model.to_tokens(prompt + " Paris")
    n_answer = len(model.to_str_tokens(" Paris"))
    logits = np.asarray(model(ids))[0]
    P = ids.shape[1] - n_answer
    for i in range(n_answer):
        row = logits[P + i - 1]
        target = int(ids[0, P + i])
        rank = int(np.sum(row > row[target]))
        assert result.ranks[i][0][1] == rank
        assert_close(result.logits[i][0], row[target], f32_bound(row, ulps=4), "answer logit")
        top = np.argsort(-row)[:3]
        assert [t for t, _, _ in result.top[i]] == [model.to_string([int(t)]) for t in top]
    lines = printed.splitlines()
    assert lines[0] == f"Tokenized prompt: {model.to_str_tokens(prompt)}"
    assert lines[1] == f"Tokenized answer: {model.to_str_tokens(' Paris')}"
    assert lines[2] == "Performance on answer token:"
    (answer, rank), = result.ranks[0]
    assert lines[3].startswith(f"Rank: {rank: <8} Logit: ") and lines[3].endswith(f"Token: |{answer}|")
    assert lines[4].startswith("Top 0th token. Logit: ")
    assert lines[-1] == f"Ranks of the answer tokens: {[r[0] for r in result.ranks]}"
    several = model.test_prompt(prompt, ["Paris", "London"], print_details=False)
    assert capsys.readouterr().out.strip() == f"Ranks of the answer tokens: {several.ranks}"
    assert [a for a, _ in several.ranks[0]] == [model.to_str_tokens(" Paris")[0], model.to_str_tokens(" London")[0]]


def test_print_model_is_a_short_summary(tiny):
    tiny, _ = tiny
    text = repr(tiny)
    n_params = sum(x.size for x in jax.tree.leaves(eqx.filter(tiny, eqx.is_array)))
    assert text.startswith("Model(") and len(text) < 200 and "\n" not in text
    for part in (f"{tiny.n_layers} layers", f"d_model {tiny.d_model}", "4 heads (2 kv) of 8", f"vocab {tiny.d_vocab}",
                 f"context {tiny.n_ctx}", "float32", f"{n_params / 1e6:.1f}M parameters"):
        assert part in text, (part, text)
    assert "Array" not in text and "f32[" not in text  # no pytree dump
