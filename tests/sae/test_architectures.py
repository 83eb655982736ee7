"""Each architecture's forward, loss and gradient against small cases derived by hand."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import sae
from interp.sae._base import LossContext

CTX = LossContext(dead=jnp.zeros(3, bool), sparsity_scale=jnp.float32(1.0))


def make(cls, cfg, **weights):
    base = dict(W_skip=None, cfg=cfg)
    base.update({k: jnp.asarray(v, jnp.float32) for k, v in weights.items()})
    return cls(**base)


def test_standard_loss_and_gradient_by_hand():
    cfg = sae.StandardConfig(d_in=2, width=2, l1_coeff=0.5)
    d = make(sae.StandardSAE, cfg, W_enc=np.eye(2), b_enc=[0, 0], W_dec=[[2, 0], [0, 1]], b_dec=[0, 0])
    x = jnp.asarray([[1.0, -1.0]])
    # pre = [1, -1] -> z = [1, 0]; y_hat = [2, 0]; mse = 1 + 1 = 2; l1 = z0 * ||W_dec[0]|| = 2
    np.testing.assert_allclose(d.encode(x), [[1, 0]])
    np.testing.assert_allclose(d(x), [[2, 0]])
    loss, m = d.loss(x, x, LossContext(dead=jnp.zeros(2, bool), sparsity_scale=jnp.float32(1.0)))
    assert float(m["mse"]) == pytest.approx(2.0)
    assert float(m["l1"]) == pytest.approx(2.0)
    assert float(loss) == pytest.approx(2.0 + 0.5 * 2.0)
    g = eqx.filter_grad(lambda d: d.loss(x, x, LossContext(jnp.zeros(2, bool), jnp.float32(1.0)))[0])(d)
    # dL/dW_dec[0] = z0 * 2 (y_hat - y) + c * z0 * W_dec[0] / ||W_dec[0]|| = 2*[1, 1] + 0.5*[1, 0]
    np.testing.assert_allclose(g.W_dec, [[2.5, 2.0], [0.0, 0.0]], atol=1e-6)
    # dL/db_dec: -dL/dpre @ W_enc.T (through the encoder input) + 2 (y_hat - y) (through the output);
    # dL/dpre0 = 2 (y_hat - y) . W_dec[0] + c ||W_dec[0]|| = 2*[1,1].[2,0] + 1 = 5, pre1 inactive
    np.testing.assert_allclose(g.b_dec, [-5 + 2, 0 + 2], atol=1e-6)


def test_topk_forward_loss_gradient_by_hand():
    cfg = sae.TopKConfig(d_in=2, width=3, k=1, normalize_decoder=True)
    d = make(sae.TopKSAE, cfg, W_enc=[[1, 0, 1], [0, 1, 1]], b_enc=[0, 0, 0],
             W_dec=[[1, 0], [0, 1], [0.6, 0.8]], b_dec=[0, 0])
    x = jnp.asarray([[3.0, 1.0], [1.0, 3.0]])
    # pre rows [3,1,4] and [1,3,4]: latent 2 wins with 4 in both; y_hat = 4 [0.6, 0.8] = [2.4, 3.2]
    np.testing.assert_allclose(d.encode(x), [[0, 0, 4], [0, 0, 4]])
    np.testing.assert_allclose(d(x), [[2.4, 3.2], [2.4, 3.2]], atol=1e-6)
    loss, m = d.loss(x, x, CTX)
    # errors [0.6,-2.2], [-1.4,-0.2]: mse = (5.2 + 2.0)/2 = 3.6; variance of x about its mean = 2
    assert float(m["mse"]) == pytest.approx(3.6, rel=1e-6)
    assert float(loss) == pytest.approx(1.8, rel=1e-6)
    assert float(m["l0"]) == 1.0
    np.testing.assert_array_equal(m["fired"], [False, False, True])
    g = eqx.filter_grad(lambda d: d.loss(x, x, CTX)[0])(d)
    # d fvu / d W_dec[2] = sum_n z_n * 2 (y_hat_n - x_n) / (N * tv) = 4*2*([-0.6,2.2]+[1.4,0.2]) / 4
    np.testing.assert_allclose(g.W_dec[2], [1.6, 4.8], atol=1e-5)
    np.testing.assert_allclose(g.W_dec[:2], 0.0, atol=1e-7)
    # only the selected latent's encoder column gets gradient: dL/dpre2 = (2 (y_hat - x) . W_dec[2]) / (N tv)
    dpre = [2 * np.dot([-0.6, 2.2], [0.6, 0.8]) / 4, 2 * np.dot([1.4, 0.2], [0.6, 0.8]) / 4]
    np.testing.assert_allclose(g.b_enc, [0, 0, sum(dpre)], atol=1e-5)
    np.testing.assert_allclose(g.W_enc[:, 2], dpre[0] * np.array([3, 1]) + dpre[1] * np.array([1, 3]), atol=1e-5)
    np.testing.assert_allclose(g.W_enc[:, :2], 0.0, atol=1e-7)


def test_topk_gradient_matches_dense_reference():
    """The sparse custom gradient equals autodiff through a dense top-k formulation."""
    cfg = sae.TopKConfig(d_in=8, width=32, k=4)
    d = sae.create(cfg, jax.random.PRNGKey(1))
    d = eqx.tree_at(lambda t: (t.b_enc, t.b_dec), d, (jax.random.normal(jax.random.PRNGKey(2), (32,)),
                                                      jax.random.normal(jax.random.PRNGKey(3), (8,))))
    x = jax.random.normal(jax.random.PRNGKey(4), (16, 8))

    def dense_loss(d):
        pre = (x - d.b_dec) @ d.W_enc + d.b_enc
        vals, idx = jax.lax.top_k(pre, 4)
        z = jnp.zeros_like(pre).at[jnp.arange(16)[:, None], idx].set(jax.nn.relu(vals))
        y_hat = z @ d.W_dec + d.b_dec
        return jnp.mean(jnp.sum(jnp.square(y_hat - x), -1)) / sae._base.total_variance(x)

    ctx = LossContext(dead=jnp.zeros(32, bool), sparsity_scale=jnp.float32(1.0))
    ours = eqx.filter_grad(lambda d: d.loss(x, x, ctx)[0])(d)
    ref = eqx.filter_grad(dense_loss)(d)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_batchtopk_selects_over_the_batch():
    cfg = sae.BatchTopKConfig(d_in=3, width=3, k=1, apply_b_dec_to_input=False)
    d = make(sae.BatchTopKSAE, cfg, W_enc=np.eye(3), b_enc=[0, 0, 0], W_dec=np.eye(3), b_dec=[0, 0, 0],
             threshold=0.0)
    x = jnp.asarray([[5.0, 4.0, -1.0], [1.0, 0.0, 0.0]])
    # k * N = 2 activations kept over the batch: both from row 0; row 1 reconstructs to zero
    loss, m = d.loss(x, x, CTX)
    assert float(m["batch_threshold"]) == 4.0
    np.testing.assert_allclose(m["error"], [[0, 0, -1], [1, 0, 0]], atol=1e-6)
    assert float(m["l0"]) == 1.0  # 2 active over 2 rows
    d2 = d.after_step(m)
    assert float(d2.threshold) == 4.0  # the first step sets the running threshold
    np.testing.assert_allclose(d2.encode(x), [[5, 0, 0], [0, 0, 0]])  # inference: pre > 4 only
    d3 = d2.after_step({"batch_threshold": jnp.float32(2.0)})
    assert float(d3.threshold) == pytest.approx(0.99 * 4 + 0.01 * 2)


def test_matryoshka_averages_prefix_losses():
    cfg = sae.MatryoshkaConfig(d_in=2, width=2, k=1, prefixes=(1, 2), apply_b_dec_to_input=False)
    d = make(sae.MatryoshkaSAE, cfg, W_enc=np.eye(2), b_enc=[0, 0], W_dec=np.eye(2), b_dec=[0, 0], threshold=0.0)
    x = jnp.asarray([[2.0, 1.0], [0.0, 3.0]])
    loss, m = d.loss(x, x, LossContext(jnp.zeros(2, bool), jnp.float32(1.0)))
    # k*N = 2 activations kept over the batch: 3 (row 1, latent 1) and 2 (row 0, latent 0)
    # prefix (latent 0): recon [2,0],[0,0]: errors [0,1],[0,3] -> mse 5; variance about the mean [1,2] is 2
    # full: recon [2,0],[0,3]: errors [0,1],[0,0] -> mse 0.5; loss = (2.5 + 0.25) / 2
    assert float(m["fvu_prefix0"]) == pytest.approx(2.5)
    assert float(m["fvu"]) == pytest.approx(0.25)
    assert float(loss) == pytest.approx(1.375)


def test_jumprelu_forward_and_straight_through_gradients():
    cfg = sae.JumpReLUConfig(d_in=2, width=2, l0_coeff=0.5, bandwidth=1.0, apply_b_dec_to_input=False)
    d = make(sae.JumpReLUSAE, cfg, W_enc=np.eye(2), b_enc=[0, 0], W_dec=[[0, 0], [1, 0]], b_dec=[0, 0],
             log_threshold=[0.0, 0.0])  # thresholds 1
    x = jnp.asarray([[0.8, 2.0]])
    np.testing.assert_allclose(d.encode(x), [[0, 2]])  # 0.8 < 1 is cut, 2 > 1 passes
    loss, m = d.loss(x, x, LossContext(jnp.zeros(2, bool), jnp.float32(1.0)))
    # y_hat = 2 * [1, 0] = [2, 0]; mse = (1.2)^2 + 2^2 = 5.44; l0 = 1
    assert float(m["l0"]) == 1.0
    assert float(loss) == pytest.approx(5.44 + 0.5)
    g = eqx.filter_grad(lambda d: d.loss(x, x, LossContext(jnp.zeros(2, bool), jnp.float32(1.0)))[0])(d)
    # latent 0: u = (0.8 - 1)/1 inside the rectangle; its decoder row is zero, so only the L0 term acts:
    # dL/dtheta0 = 0.5 * (-1/eps) = -0.5, and d theta / d log_theta = theta = 1
    # latent 1: u = 1 is outside the rectangle -> no threshold gradient
    np.testing.assert_allclose(g.log_threshold, [-0.5, 0.0], atol=1e-6)
    # the output's gradient wrt the active latent passes straight through: dL/dpre1 = 2 (y_hat-x).W_dec[1]
    np.testing.assert_allclose(g.b_enc, [0.0, 2 * 1.2], atol=1e-5)


def test_transcoder_with_skip():
    cfg = sae.TopKConfig(d_in=3, width=8, k=2, hook_name="a", hook_name_out="b", d_out=2, skip=True)
    d = sae.create(cfg, jax.random.PRNGKey(0))
    assert d.W_enc.shape == (3, 8) and d.W_dec.shape == (8, 2) and d.W_skip.shape == (3, 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    d = eqx.tree_at(lambda t: t.W_skip, d, jnp.ones((3, 2)))
    np.testing.assert_allclose(d(x), d.decode(d.encode(x)) + x @ jnp.ones((3, 2)), atol=1e-5)
    with pytest.raises(ValueError, match="skip=True needs a transcoder"):
        sae.TopKConfig(d_in=3, width=8, k=2, skip=True)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="k=64 must be between 1 and width-1=63"):
        sae.TopKConfig(d_in=8, width=64, k=64)
    with pytest.raises(ValueError, match="unknown dictionary architecture 'gated'"):
        sae.architecture("gated")
    with pytest.raises(ValueError, match="prefixes must be strictly ascending"):
        sae.MatryoshkaConfig(d_in=8, width=64, k=4, prefixes=(32, 16, 64))
    with pytest.raises(ValueError, match="positive"):
        sae.StandardConfig(d_in=0, width=4)
    assert math.isclose(sae.TopKConfig(d_in=576, width=4096).k_aux, 288)


@pytest.mark.parametrize("n_dead", [3, 12])
def test_auxk_loss_and_gradient_match_a_numpy_reading(n_dead):
    """AuxK against its definition, with fewer dead latents than k_aux (every dead one is used) and with more (the
    top k_aux of them per row): value from numpy, gradient from autodiff of a dense top-k written here."""
    from interp.sae.topk import auxk_loss

    cfg = sae.TopKConfig(d_in=8, width=32, k=4, aux_k=6)
    d = sae.create(cfg, jax.random.PRNGKey(5))
    d = eqx.tree_at(lambda t: t.b_enc, d, jax.random.normal(jax.random.PRNGKey(6), (32,)))
    x = jax.random.normal(jax.random.PRNGKey(7), (16, 8))
    error = jax.random.normal(jax.random.PRNGKey(8), (16, 8))
    dead = jnp.zeros(32, bool).at[jnp.arange(0, 2 * n_dead, 2)].set(True)

    def reference(d):
        pre = (x - d.b_dec) @ d.W_enc + d.b_enc
        masked = jnp.where(dead, pre, -jnp.inf)
        vals, idx = jax.lax.top_k(masked, 6)
        z = jnp.zeros_like(pre).at[jnp.arange(16)[:, None], idx].set(jnp.where(jnp.isfinite(vals),
                                                                               jax.nn.relu(vals), 0.0))
        scale = min(n_dead / 6, 1.0)
        return scale * jnp.mean(jnp.sum(jnp.square(z @ d.W_dec - error), -1)) / sae._base.total_variance(x)

    pre = np.asarray((x - d.b_dec) @ d.W_enc + d.b_enc, np.float64)
    z = np.zeros_like(pre)
    for n, row in enumerate(np.where(np.asarray(dead), pre, -np.inf)):
        top = np.argsort(-row)[:6]
        top = top[np.isfinite(row[top])]
        z[n, top] = np.maximum(row[top], 0.0)
    xs = np.asarray(x, np.float64)
    want = min(n_dead / 6, 1.0) * np.mean(np.sum((z @ np.asarray(d.W_dec) - np.asarray(error)) ** 2, -1)) / \
        np.sum(np.var(xs, axis=0))
    ours = lambda d: auxk_loss(d, x, x, error, dead, 6)  # noqa: E731
    assert float(ours(d)) == pytest.approx(want, rel=1e-5)
    for a, b in zip(jax.tree.leaves(eqx.filter_grad(ours)(d)), jax.tree.leaves(eqx.filter_grad(reference)(d))):
        np.testing.assert_allclose(a, b, atol=1e-6)
