"""Attribution graphs find a known circuit in a model trained here.

The task: ``[BOS, n, n, n, n, a, b, =]`` -> ``(a + b) mod 6``. The operands ``a`` and ``b`` come from two
disjoint token ranges, the distractors ``n`` from a third and the answer from a fourth. The answer is a
nonlinear function of both operands: for an even modulus no sum of a function of ``a`` and one of ``b`` picks
it out (with ``a' = a + 3`` and ``b' = b + 3``, ``(a, b)`` and ``(a', b')`` share one answer, ``(a, b')`` and
``(a', b)`` another, and summed over each pair the two answers' logits would have to rank both ways), so
attention has to bring the operands together and the MLPs have to combine them. The distractors come before
the operands, so nothing computed at their positions can carry information about the answer.

A two-layer model learns the task in about ten seconds and a transcoder per layer is trained on its MLPs. The
graph of a prompt must then show that mechanism: the answer is the top logit; the operand embeddings carry far
more influence than the distractors; every feature kept by pruning sits at an operand or the answer position,
although the transcoders have active features at the distractor positions that the second layer's attention
could carry to the answer; each operand reaches the answer's logit through a kept feature at the answer
position; the strongest of those features fires for that answer and hardly otherwise; ablating the kept
features lowers the answer's logit, while ablating as many distractor features barely moves it.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interp import sae
from interp.circuits import graph as G
from interp.models.llama import LlamaConfig, from_hf_weights, hf_weight_names
from tests.numerics import assert_model_close

MOD = 6
A0, B0, NOISE0, ANS0 = 0, MOD, 2 * MOD, 2 * MOD + 16  # token ranges: operand a, operand b, distractors, answers
EQ = ANS0 + MOD
BOS = EQ + 1
VOCAB = BOS + 1
T = 8
NOISE_POS = [1, 2, 3, 4]
POS_A, POS_B, LAST = 5, 6, 7
N_PROMPTS = 4


def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences ``[n T]`` and their answer tokens ``[n]``."""
    a, b = rng.integers(0, MOD, n), rng.integers(0, MOD, n)
    tokens = rng.integers(NOISE0, ANS0, (n, T))
    tokens[:, 0], tokens[:, POS_A], tokens[:, POS_B], tokens[:, LAST] = BOS, A0 + a, B0 + b, EQ
    return tokens.astype(np.int32), (ANS0 + (a + b) % MOD).astype(np.int32)


def init_model(seed: int = 0, d_model: int = 32, n_heads: int = 4, d_mlp: int = 64, n_layers: int = 2):
    """A randomly initialised Llama (unit norm weights, fan-in scaled matrices) built from numpy arrays."""
    cfg = LlamaConfig(vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
                      d_mlp=d_mlp, rms_eps=1e-5, max_position=64)
    rng = np.random.default_rng(seed)
    hd = n_heads * cfg.d_head
    shapes = {"embed_tokens": (VOCAB, d_model), "lm_head": (VOCAB, d_model), "q_proj": (hd, d_model),
              "k_proj": (hd, d_model), "v_proj": (hd, d_model), "o_proj": (d_model, hd), "gate_proj": (d_mlp, d_model),
              "up_proj": (d_mlp, d_model), "down_proj": (d_model, d_mlp)}
    weights = {}
    for name in hf_weight_names(cfg):
        if name.endswith("norm.weight"):
            weights[name] = np.ones(d_model, np.float32)
            continue
        shape = next(s for key, s in shapes.items() if f"{key}." in name)
        scale = 1.0 if "embed_tokens" in name else 1.0 / np.sqrt(shape[1])
        weights[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return from_hf_weights(cfg, weights.__getitem__)


def train_model(model, steps: int = 400, batch: int = 256, lr: float = 3e-3, seed: int = 0):
    """Cross-entropy on the answer at the last position, AdamW."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, 50, steps, lr / 30), weight_decay=0.01)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = opt.init(params)

    def loss(p, tokens, answers):
        logits = eqx.combine(p, static).forward(tokens)[:, -1].astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), answers[:, None], axis=1))

    @jax.jit
    def step(p, s, tokens, answers):
        value, grads = jax.value_and_grad(loss)(p, tokens, answers)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
            updates, s = opt.update(grads, s, p)
            p = optax.apply_updates(p, updates)
        return p, s, value

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, *sample(rng, batch))
    return eqx.combine(params, static)


@dataclasses.dataclass
class Toy:
    model: object
    tc: G.Transcoders
    tokens: np.ndarray  # held-out sequences [N T]
    answers: np.ndarray


@pytest.fixture(scope="module")
def toy() -> Toy:
    model = train_model(init_model(seed=0), seed=0)
    corpus, _ = sample(np.random.default_rng(7), 8192)
    # every position but the BOS (an attention sink, left to the error nodes as in a real model)
    tc, _ = sae.train_transcoders(model, width=64, k=4, total_tokens=600 * 256 * (T - 1), corpus=corpus,
                                  context_size=T, model_batch=256, lr=5e-3, skip_positions=1, seed=0, progress=False)
    tokens, answers = sample(np.random.default_rng(1), 2000)
    return Toy(model, tc, tokens, answers)


@pytest.fixture(scope="module")
def graphs(toy):
    """(prompt, answer, graph, pruned graph) for the first held-out prompts."""
    out = []
    for prompt, answer in zip(toy.tokens[:N_PROMPTS], toy.answers[:N_PROMPTS]):
        g = G.trace(toy.model, toy.tc, prompt, max_logits=5, max_feature_nodes=1000, batch_size=16)
        out.append((prompt, int(answer), g, G.prune(g, node_threshold=0.8, edge_threshold=0.98)))
    return out


def accuracy(logits, answers) -> float:
    return float((np.asarray(logits)[:, -1].argmax(-1) == answers).mean())


def fvu(model, tc, tokens, positions) -> list[float]:
    """Per layer: the fraction of the MLP output's variance (over sequences and ``positions``) that the
    transcoder leaves unexplained."""
    L = model.n_layers
    _, cache = model.run_with_cache(tokens, [tc.hook_in.format(layer=l) for l in range(L)]
                                    + [tc.hook_out.format(layer=l) for l in range(L)])
    out = []
    for l, d in enumerate(tc.dictionaries):
        x = np.asarray(cache[tc.hook_in.format(layer=l)])[:, positions].reshape(-1, model.d_model)
        y = np.asarray(cache[tc.hook_out.format(layer=l)])[:, positions].reshape(-1, model.d_model)
        r = np.asarray(d(jnp.asarray(x)))
        out.append(float(((r - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()))
    return out


def _mean_out(x, name, mean):
    return jnp.broadcast_to(mean, x.shape).astype(x.dtype)


def _logit_node(graph, answer: int) -> int:
    return graph.slices()["logit"].start + int(np.flatnonzero(graph.logit_tokens == answer)[0])


def _kept_features(graph) -> list[int]:
    return [int(j) for j in graph.kept() if graph.kind(int(j)) == "feature"]


def test_the_model_solves_the_task_and_needs_its_mlps(toy):
    model, tokens, answers = toy.model, toy.tokens, toy.answers
    assert accuracy(model(tokens), answers) >= 0.99
    # every MLP output replaced by its mean: attention alone is left to combine the operands, and mostly fails
    names = [f"blocks.{l}.hook_mlp_out" for l in range(model.n_layers)]
    _, cache = model.run_with_cache(tokens, names)
    edits = [(n, _mean_out, jnp.asarray(np.asarray(cache[n]).mean(0))) for n in names]
    assert accuracy(model.run_with_hooks(tokens, edits), answers) < 0.65


def test_transcoders_reconstruct_the_mlps(toy):
    assert max(fvu(toy.model, toy.tc, toy.tokens[:500], list(range(1, T)))) < 0.2
    # spliced in with their error terms they leave the model unchanged
    real = G.intervene(toy.model, toy.tc, toy.tokens[0], [], mode="real")
    assert_model_close(real.after, real.before, toy.model, "spliced model")


def test_the_graph_explains_the_answer(graphs):
    for _, answer, g, p in graphs:
        assert g.logit_tokens[0] == answer and g.logit_probs[0] > 0.9
        # features, not error nodes, carry most of the path from the tokens to the answer, before and after pruning
        for scores in (g.scores(pruned=False), p.scores()):
            assert scores["replacement"] > 0.6 and scores["completeness"] > 0.8, scores


def test_operands_carry_the_influence_and_distractors_do_not(graphs):
    for prompt, _, g, _ in graphs:
        emb = g.influence()[g.slices()["embed"]]
        a, b, noise = emb[POS_A], emb[POS_B], emb[NOISE_POS]
        assert min(a, b) > noise.max() and a + b > 3 * noise.max() and a + b > noise.sum(), (prompt, emb)


def _reach(edge_mask: np.ndarray, start: int, forward: bool) -> np.ndarray:
    """Nodes reachable from ``start`` along kept edges (``edge_mask[t, s]``: s -> t), or that reach it."""
    seen = np.zeros(len(edge_mask), bool)
    seen[start] = True
    while True:
        new = seen | (edge_mask[:, seen].any(axis=1) if forward else edge_mask[seen].any(axis=0))
        if np.array_equal(new, seen):
            return seen
        seen = new


def test_the_pruned_graph_keeps_the_known_path_and_no_distractor_features(graphs):
    for prompt, answer, g, p in graphs:
        kept = _kept_features(p)
        assert {int(p.feature_pos[j]) for j in kept} <= {POS_A, POS_B, LAST}, (prompt, [p.label(j) for j in kept])
        # features at the distractor positions were active and traced (the second layer's attention reaches
        # them), and pruning dropped them all
        at_noise = np.flatnonzero(np.isin(g.feature_pos, NOISE_POS))
        assert len(at_noise) >= len(NOISE_POS) and g.influence()[at_noise].max() > 0
        # each operand's embedding reaches the answer's logit through a kept feature at the answer position
        logit = _logit_node(p, answer)
        to_logit = _reach(p.edge_mask, logit, forward=False)
        last = [j for j in kept if p.feature_pos[j] == LAST and to_logit[j]]
        assert any(p.edge_mask[logit, j] for j in last), (prompt, [p.label(j) for j in kept])
        for pos in (POS_A, POS_B):
            from_operand = _reach(p.edge_mask, p.slices()["embed"].start + pos, forward=True)
            assert any(from_operand[j] for j in last), (prompt, pos)


def test_ablating_the_kept_features_lowers_the_answer_and_distractor_features_do_not(toy, graphs):
    model, tc = toy.model, toy.tc
    L = model.n_layers
    for prompt, answer, _g, p in graphs:
        kept = _kept_features(p)
        ablate = G.feature_changes(p, kept, 0.0)
        frozen = G.intervene(model, tc, prompt, ablate, mode="frozen")
        real = G.intervene(model, tc, prompt, ablate, mode="real")
        margin = real.before[answer] - real.before.mean()
        assert real.before.argmax() == answer
        # with everything else held fixed the kept features carry a large part of the answer's logit
        assert frozen.change(answer) < -0.3 * margin
        # the most active features at the distractor positions, as many as were kept
        _, cache = model.run_with_cache(prompt[None], [tc.hook_in.format(layer=l) for l in range(L)])
        candidates = []
        for l in range(L):
            z = np.asarray(tc.dictionaries[l].encode(cache[tc.hook_in.format(layer=l)][0]))
            candidates += [(z[pos, f], (l, pos, int(f), 0.0)) for pos in NOISE_POS for f in np.flatnonzero(z[pos] > 0)]
        assert len(candidates) >= len(kept)
        candidates.sort(key=lambda c: -c[0])
        noise = G.intervene(model, tc, prompt, [c for _, c in candidates[: len(kept)]], mode="real")
        assert abs(noise.change(answer)) < 0.05 * margin
        assert real.change(answer) < -10 * abs(noise.change(answer)), (real.change(answer), noise.change(answer))


def test_the_strongest_answer_feature_is_specific_to_that_answer(toy, graphs):
    """The kept feature at the answer position with the largest edge into the answer's logit fires for
    sequences with that answer (whatever the operands) and hardly for the others."""
    model, tc = toy.model, toy.tc
    for _, answer, _g, p in graphs:
        logit = _logit_node(p, answer)
        j = max((j for j in _kept_features(p) if p.feature_pos[j] == LAST), key=lambda i: p.adjacency[logit, i])
        assert p.adjacency[logit, j] > 0
        layer, feature = int(p.feature_layer[j]), int(p.feature_id[j])
        _, cache = model.run_with_cache(toy.tokens[:1000], [tc.hook_in.format(layer=layer)])
        acts = np.asarray(tc.dictionaries[layer].encode(cache[tc.hook_in.format(layer=layer)][:, LAST]))[:, feature]
        match = toy.answers[:1000] == answer
        assert acts[match].mean() > 3 * acts[~match].mean(), (p.label(j), acts[match].mean(), acts[~match].mean())
