"""interp.wrap on models built here: a Flax NNX transformer, a Flax Linen MLP and an equinox MLP, each checked
against the same computation written by hand in jnp from the module's own parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

flax = pytest.importorskip("flax")
import equinox as eqx  # noqa: E402
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import interp  # noqa: E402
import interp.circuits  # noqa: E402
from interp import edits, probes, sae  # noqa: E402

V, D, H, F, T = 16, 16, 2, 32, 6  # vocabulary, model width, heads, MLP width, positions
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 sums of a few dozen O(1) terms


# ----------------------------------------------------------------- a small NNX transformer
class Attention(nnx.Module):
    def __init__(self, rngs):
        self.q, self.k, self.v, self.o = (nnx.Linear(D, D, rngs=rngs) for _ in range(4))

    def __call__(self, x):
        B, T_, _ = x.shape
        q, k, v = (f(x).reshape(B, T_, H, D // H) for f in (self.q, self.k, self.v))
        scores = jnp.einsum("BTHE,BSHE->BHTS", q, k) / jnp.sqrt(D // H)
        scores = jnp.where(jnp.tril(jnp.ones((T_, T_), bool)), scores, -1e9)
        z = jnp.einsum("BHTS,BSHE->BTHE", jax.nn.softmax(scores, -1), v)
        return self.o(z.reshape(B, T_, D))


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.up, self.down = nnx.Linear(D, F, rngs=rngs), nnx.Linear(F, D, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.relu(self.up(x)))


class Block(nnx.Module):
    def __init__(self, rngs):
        self.attn, self.mlp = Attention(rngs), MLP(rngs)

    def __call__(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class Transformer(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(V, D, rngs=rngs)
        self.blocks = nnx.List([Block(rngs), Block(rngs)])
        self.unembed = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


def linear(p, x):
    return x @ p.kernel[...] + p.bias[...]


def hand_attention(a, x):
    B, T_, _ = x.shape
    q, k, v = (linear(f, x).reshape(B, T_, H, D // H) for f in (a.q, a.k, a.v))
    s = jnp.einsum("bthe,bshe->bhts", q, k) / np.sqrt(D // H)
    s = jnp.where(np.tril(np.ones((T_, T_), bool)), s, -1e9)
    return linear(a.o, jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(s, -1), v).reshape(B, T_, D))


def hand_transformer(m, tokens, mlp0_delta=0.0, zero_attn0=False):
    """The transformer by hand from its parameters; returns logits and the activations checked below."""
    acts = {}
    x = m.embed.embedding[...][tokens]
    for l, b in enumerate(m.blocks):
        a = hand_attention(b.attn, x)
        if l == 0 and zero_attn0:
            a = jnp.zeros_like(a)
        x = x + a
        acts[f"blocks.{l}.mlp.up"] = linear(b.mlp.up, x)
        out = linear(b.mlp.down, jax.nn.relu(acts[f"blocks.{l}.mlp.up"]))
        if l == 0:
            out = out + mlp0_delta
        x = x + out
        acts[f"blocks.{l}"] = x
    return linear(m.unembed, x), acts


def reversal_batch(key, n):
    """Toy task: copy the first token to every position (a job for attention)."""
    tokens = jax.random.randint(key, (n, T), 0, V)
    return tokens, jnp.broadcast_to(tokens[:, :1], (n, T))


def train_nnx(model, steps=30):
    graphdef, state = nnx.split(model)
    opt = optax.adam(1e-2)
    opt_state = opt.init(state)

    def loss(state, tokens, target):
        logits = nnx.merge(graphdef, state)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()

    @jax.jit
    def step(state, opt_state, key):
        tokens, target = reversal_batch(key, 32)
        value, g = jax.value_and_grad(loss)(state, tokens, target)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(state, updates), opt_state, value

    losses = []
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
        for i in range(steps):
            state, opt_state, value = step(state, opt_state, jax.random.key(i))
            losses.append(float(value))
    assert losses[-1] < losses[0]
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def transformer():
    return train_nnx(Transformer(nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tokens():
    return reversal_batch(jax.random.key(100), 4)[0]


def test_nnx_hook_names_follow_module_paths_and_leave_the_module_alone(transformer, tokens):
    wrapped = interp.wrap(transformer, example=tokens)
    assert wrapped.hook_names == [
        "embed",
        "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.o", "blocks.0.attn",
        "blocks.0.mlp.up", "blocks.0.mlp.down", "blocks.0.mlp", "blocks.0",
        "blocks.1.attn.q", "blocks.1.attn.k", "blocks.1.attn.v", "blocks.1.attn.o", "blocks.1.attn",
        "blocks.1.mlp.up", "blocks.1.mlp.down", "blocks.1.mlp", "blocks.1",
        "unembed",
    ]
    assert type(transformer.blocks[0].mlp) is MLP and type(transformer.blocks[0].mlp.up) is nnx.Linear
    with_inputs = interp.wrap(transformer, inputs=True, example=tokens)
    assert with_inputs.hook_names[:3] == ["embed.input", "embed", "blocks.0.input"]


def test_nnx_capture_equals_the_hand_computation(transformer, tokens):
    wrapped = interp.wrap(transformer)
    logits, cache = wrapped.run_with_cache(tokens, names=["blocks.0.mlp.up", "blocks.1.mlp.up", "blocks.1"])
    want_logits, want = hand_transformer(transformer, tokens)
    np.testing.assert_allclose(logits, want_logits, **TOL)
    np.testing.assert_allclose(logits, transformer(tokens), **TOL)
    assert list(cache) == ["blocks.0.mlp.up", "blocks.1.mlp.up", "blocks.1"]
    for name in cache:
        np.testing.assert_allclose(cache[name], want[name], **TOL)
    with pytest.raises(ValueError, match="did you mean 'blocks.1.mlp.up'"):
        wrapped.run_with_cache(tokens, names=["blocks.1.mlp.upp"])


def test_nnx_edits_gradients_and_no_recompilation(transformer, tokens):
    wrapped = interp.wrap(transformer)
    zeroed = wrapped.run_with_hooks(tokens, edits=[("blocks.0.attn", edits.zero)])
    np.testing.assert_allclose(zeroed, hand_transformer(transformer, tokens, zero_attn0=True)[0], **TOL)
    assert not np.allclose(zeroed, transformer(tokens), atol=1e-3)

    def through_hook(delta):
        return wrapped.run_with_hooks(tokens, edits=[("blocks.0.mlp", edits.add, delta)])[:, -1, 3].sum()

    def by_hand(delta):
        return hand_transformer(transformer, tokens, mlp0_delta=delta)[0][:, -1, 3].sum()

    delta = jnp.linspace(-1.0, 1.0, D)
    np.testing.assert_allclose(through_hook(delta), by_hand(delta), **TOL)
    grad = jax.grad(through_hook)(delta)
    np.testing.assert_allclose(grad, jax.grad(by_hand)(delta), **TOL)
    assert np.abs(grad).max() > 1e-3

    values = [jnp.full((D,), v, jnp.float32) for v in (0.5, 1.0, 2.0)]
    wrapped.run_with_hooks(tokens, edits=[("blocks.0.mlp", edits.add, values[0])]).block_until_ready()
    before = interp.compile_count()
    outs = [wrapped.run_with_hooks(tokens, edits=[("blocks.0.mlp", edits.add, v)]) for v in values[1:]]
    assert interp.compile_count() == before
    np.testing.assert_allclose(outs[1], hand_transformer(transformer, tokens, mlp0_delta=2.0)[0], **TOL)


def test_patching_a_wrapped_module(transformer, tokens):
    wrapped = interp.wrap(transformer)
    source = reversal_batch(jax.random.key(7), 4)[0]

    def metric(logits):
        return logits[:, -1, 0].mean()

    sweep = wrapped.patch(tokens, source, metric, names=["blocks.0.attn", "unembed"])
    assert sweep.base == pytest.approx(float(metric(transformer(tokens))), rel=1e-5)
    assert sweep.source == pytest.approx(float(metric(transformer(source))), rel=1e-5)
    assert sweep.values[1] == pytest.approx(sweep.source, rel=1e-5)  # the output itself, patched
    # the unembedding acts position by position: patching the last block's output at the last position
    # gives the source's metric, and at any other position leaves the base's
    by_pos = wrapped.patch(tokens, source, metric, names=["blocks.1"], axis=1)
    assert by_pos.values.shape == (1, T)
    np.testing.assert_allclose(by_pos.values[0, :-1], sweep.base, rtol=1e-5)
    assert by_pos.values[0, -1] == pytest.approx(sweep.source, rel=1e-5)
    assert "activation patching of a wrapped module" in repr(by_pos)


def test_dictionary_trains_on_wrapped_activations(transformer):
    wrapped = interp.wrap(transformer)
    batch = reversal_batch(jax.random.key(3), 128)[0]
    acts = wrapped.activations("blocks.1.mlp", batch)
    assert acts.shape == (128 * T, D)
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=D, width=32, k=4, hook_name="blocks.1.mlp"), total_tokens=128 * 40,
                          batch_size=128, lr=3e-3, lr_warmup_steps=2, eval_every=10, seed=0)
    result = sae.train(cfg, store=sae.ArrayActivationStore(acts, batch_size=128, chunk_size=768), progress=False)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    x = np.asarray(acts[:512])
    fvu = ((result.dictionary(x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.5


# ----------------------------------------------------------------- a Flax Linen MLP
class Hidden(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(self.features)(x))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="out")(Hidden(F, name="hidden")(x))


def quadrants(key, n):
    """Toy task: is x0 * x1 > 0 (not linearly separable in x)."""
    x = jax.random.normal(key, (n, 2))
    return x, (x[:, 0] * x[:, 1] > 0).astype(jnp.int32)


@pytest.fixture(scope="module")
def linen_mlp():
    module = LinenMLP()
    x, y = quadrants(jax.random.key(0), 512)
    params = module.init(jax.random.key(1), x)
    opt = optax.adam(3e-2)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, g = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(module.apply(p, x), y).mean())(params)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
        for _ in range(150):
            params, opt_state, loss = step(params, opt_state)
    assert float(loss) < 0.3
    return module, params


def hand_mlp(params, x, scale=1.0, delta=0.0):
    p = params["params"]
    hidden = jax.nn.relu(x @ p["hidden"]["Dense_0"]["kernel"] + p["hidden"]["Dense_0"]["bias"]) * scale + delta
    return hidden @ p["out"]["kernel"] + p["out"]["bias"], hidden


def test_linen_capture_edit_and_gradient(linen_mlp):
    module, params = linen_mlp
    x, _ = quadrants(jax.random.key(5), 64)
    wrapped = interp.wrap(module, params, example=x)
    assert wrapped.hook_names == ["hidden.Dense_0", "hidden", "out"]
    out, cache = wrapped.run_with_cache(x)
    want_out, want_hidden = hand_mlp(params, x)
    np.testing.assert_allclose(out, want_out, **TOL)
    np.testing.assert_allclose(cache["hidden"], want_hidden, **TOL)
    p = params["params"]["hidden"]["Dense_0"]
    np.testing.assert_allclose(cache["hidden.Dense_0"], x @ p["kernel"] + p["bias"], **TOL)

    scaled = wrapped.run_with_hooks(x, edits=[("hidden", edits.scale, 0.25)])
    np.testing.assert_allclose(scaled, hand_mlp(params, x, scale=0.25)[0], **TOL)

    def through_hook(delta):
        return wrapped.run_with_hooks(x, edits=[("hidden", edits.add, delta)])[:, 1].sum()

    delta = jnp.zeros(F)
    np.testing.assert_allclose(jax.grad(through_hook)(delta),
                               jax.grad(lambda d: hand_mlp(params, x, delta=d)[0][:, 1].sum())(delta), **TOL)
    before = interp.compile_count()
    wrapped.run_with_hooks(x, edits=[("hidden", edits.scale, 3.0)])
    assert interp.compile_count() == before


def test_probe_reads_the_task_from_the_hidden_layer(linen_mlp):
    module, params = linen_mlp
    wrapped = interp.wrap(module, params)
    x, y = quadrants(jax.random.key(9), 512)
    hidden = wrapped.activations("hidden", x)

    def accuracy(acts):
        probe = probes.fit(np.asarray(acts), np.asarray(y), "logistic", steps=50)
        return float(((np.asarray(probe.score(acts)) > 0) == np.asarray(y)).mean())

    assert accuracy(hidden) > 0.9
    assert accuracy(x) < 0.7  # the inputs themselves do not separate the classes linearly


# ----------------------------------------------------------------- an equinox MLP
def test_equinox_mlp():
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3,))
    wrapped = interp.wrap(mlp, example=x)
    assert wrapped.hook_names == ["layers.0", "layers.1", "layers.2"]
    assert type(mlp.layers[0]) is eqx.nn.Linear
    out, cache = wrapped.run_with_cache(x)
    l0, l1, l2 = mlp.layers
    h0 = l0.weight @ x + l0.bias
    np.testing.assert_allclose(cache["layers.0"], h0, **TOL)
    np.testing.assert_allclose(out, mlp(x), **TOL)
    edited = wrapped.run_with_hooks(x, edits=[("layers.1", edits.zero)])
    np.testing.assert_allclose(edited, l2.weight @ jax.nn.relu(jnp.zeros(8)) + l2.bias, **TOL)

    def through_hook(delta):
        return wrapped.run_with_hooks(x, edits=[("layers.0", edits.add, delta)]).sum()

    def by_hand(delta):
        h = jax.nn.relu(l1.weight @ jax.nn.relu(h0 + delta) + l1.bias)
        return (l2.weight @ h + l2.bias).sum()

    delta = jnp.full((8,), 0.1)
    np.testing.assert_allclose(jax.grad(through_hook)(delta), jax.grad(by_hand)(delta), **TOL)
    first, second = jnp.full((8,), -0.3), jnp.full((8,), 0.7)
    wrapped.run_with_hooks(x, edits=[("layers.0", edits.add, first)])
    before = interp.compile_count()
    wrapped.run_with_hooks(x, edits=[("layers.0", edits.add, second)])
    assert interp.compile_count() == before


class Twice(eqx.Module):
    f: eqx.nn.Linear

    def __call__(self, x):
        return self.f(jnp.tanh(self.f(x)))


def test_a_submodule_called_twice_has_a_hook_point_per_call():
    twice = Twice(eqx.nn.Linear(3, 3, key=jax.random.key(2)))
    x = jnp.arange(3.0)
    wrapped = interp.wrap(twice, example=x, inputs=True)
    assert wrapped.hook_names == ["f.input", "f", "f.input@1", "f@1"]
    _, cache = wrapped.run_with_cache(x, names=lambda n: not n.endswith("input"))
    first = twice.f.weight @ x + twice.f.bias
    np.testing.assert_allclose(cache["f"], first, **TOL)
    np.testing.assert_allclose(cache["f@1"], twice(x), **TOL)
    edited = wrapped.run_with_hooks(x, edits=[("f.input@1", edits.zero)])
    np.testing.assert_allclose(edited, twice.f.bias, **TOL)


# ----------------------------------------------------------------- refusals
class Inner(eqx.Module):
    c: eqx.nn.Linear

    def __call__(self, x):
        return self.c(x)


class Colliding(eqx.Module):
    a: dict

    def __call__(self, x):
        return self.a["b"](x) + self.a["b.c"](x)


def test_modules_without_submodules_or_with_colliding_names_are_refused():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="no submodules"):
        interp.wrap(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no submodules"):
        interp.wrap(eqx.nn.Linear(2, 2, key=key))
    dense = nn.Dense(2)
    x = jnp.ones((1, 2))
    with pytest.raises(ValueError, match="no hook points"):
        interp.wrap(dense, dense.init(key, x), example=x)
    with pytest.raises(TypeError, match="pass its variables"):
        interp.wrap(LinenMLP())
    colliding = Colliding({"b": Inner(eqx.nn.Linear(2, 2, key=key)), "b.c": eqx.nn.Linear(2, 2, key=key)})
    with pytest.raises(ValueError, match="'a.b.c'"):
        interp.wrap(colliding)


def test_transformer_only_tools_refuse_a_wrapped_model(transformer, tokens):
    wrapped = interp.wrap(transformer)
    with pytest.raises(AttributeError, match="not a transformer language model"):
        interp.circuits.logit_lens(wrapped, tokens)
    with pytest.raises(AttributeError, match="not a transformer language model"):
        interp.circuits.patch(wrapped, tokens, tokens, lambda logits: logits.sum())
    _, cache = wrapped.run_with_cache(tokens, names=["blocks.1"])
    with pytest.raises(AttributeError, match="not a transformer language model"):
        cache.accumulated_resid()
    with pytest.raises(KeyError, match="module path"):
        cache["resid_post", 1]
