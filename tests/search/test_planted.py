"""A planted answer: a tiny model trained here to emit token X only when the two-token trigger (A, B) appears
anywhere in its input; the search recovers the trigger from the objective alone (raise log p(X))."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import optax
import pytest

from interp import search
from tests.conftest import numpy_checkpoint

A, B, X, NO, L = 11, 42, 7, 8, 10


def examples(rng, n):
    """Random sequences of length L; 40% hold the trigger, the rest hold it reversed, A or B alone, or neither."""
    t = rng.integers(12, 97, (n, L)).astype(np.int32)
    kind = rng.choice(5, n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    p, q = rng.integers(0, L - 1, n), rng.integers(0, L, n)
    for i in range(n):
        if kind[i] == 0:
            t[i, p[i]], t[i, p[i] + 1] = A, B
        elif kind[i] == 1:
            t[i, p[i]], t[i, p[i] + 1] = B, A
        elif kind[i] == 2:
            t[i, q[i]] = A
        elif kind[i] == 3:
            t[i, q[i]] = B
    return t, np.where(kind == 0, X, NO).astype(np.int32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import interp

    folder = numpy_checkpoint(tmp_path_factory.mktemp("planted"), seed=0, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    model = interp.load(folder)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adam(3e-3)

    @eqx.filter_jit
    def step(params, state, t, y):
        def loss(p):
            logits = eqx.combine(p, static).forward(t)[:, -1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grad = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grad, state, params)
        return optax.apply_updates(params, updates), state, value

    rng = np.random.default_rng(0)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes a Python float and an int count
        state = opt.init(params)
        for _ in range(400):
            params, state, _ = step(params, state, *examples(rng, 128))
    model = eqx.combine(params, static)
    t, y = examples(np.random.default_rng(1), 500)
    accuracy = float((np.asarray(model(t))[:, -1].argmax(-1) == y).mean())
    assert accuracy > 0.97, f"the planted model learned the trigger only to accuracy {accuracy}"
    return model


@pytest.mark.heavy
def test_search_recovers_the_planted_trigger(planted):
    prompt = np.random.default_rng(5).integers(12, 97, 6).tolist()
    assert planted.top_next(prompt + [20, 30, 40, 50], 1)[0][0] != X
    obj = search.logprob(planted, [X])
    found = []
    for seed in range(10):
        # a confident X (p > 0.95) rather than a bare argmax, so that a near miss does not end the search
        res = search.gcg(planted, obj, prompt, span="suffix:4", steps=100, topk=16, batch=64, seed=seed,
                         stop_on_success=False, stop_loss=0.05, progress=False)
        span = res.tokens.tolist()
        found.append(res.loss <= 0.05 and any(span[i:i + 2] == [A, B] for i in range(3)))
    assert sum(found) >= 9, found
