"""Pure-jnp probe fits on masked rows, so that folds, layers and restarts are one ``vmap`` each.

Every supervised fit takes ``X [N D]``, labels ``y [N]`` (0/1) and row weights ``m [N]`` (1 = a training row,
0 = left out) and returns ``(weight [D], bias [], mean [D], scale [D])`` with ``logit = ((x - mean) / scale) @
weight + bias``. Axis letters: N rows, D features, R restarts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

_STEPS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)  # Newton step lengths tried at each iteration (0: stay)


def _masked_moments(X, m):
    n = jnp.maximum(m.sum(), 1.0)
    mu = (m[:, None] * X).sum(0) / n
    sd = jnp.sqrt((m[:, None] * (X - mu) ** 2).sum(0) / n)
    # a constant feature carries nothing: leave it unscaled instead of dividing by zero
    return mu, jnp.where(sd > 1e-6 * jnp.maximum(sd.max(), 1e-30), sd, 1.0)


def logistic(X, y, m, l2: float = 1e-2, steps: int = 20):
    """L2-regularised logistic regression on standardised inputs: minimises
    ``mean_m(softplus(z) - y z) + l2/2 |w|^2`` (bias unpenalised) by damped Newton steps (the best of a few step
    lengths, so the loss never rises); deterministic."""
    mu, sd = _masked_moments(X, m)
    Z = jnp.concatenate([(X - mu) / sd, jnp.ones_like(X[:, :1])], axis=1)
    n = jnp.maximum(m.sum(), 1.0)
    pen = jnp.concatenate([jnp.full(X.shape[1], l2, X.dtype), jnp.zeros(1, X.dtype)])

    def loss(theta):
        z = Z @ theta
        return (m * (jax.nn.softplus(z) - y * z)).sum() / n + 0.5 * (pen * theta**2).sum()

    def newton(theta, _):
        p = jax.nn.sigmoid(Z @ theta)
        g = Z.T @ (m * (p - y)) / n + pen * theta
        H = (Z.T * (m * p * (1 - p))) @ Z / n + jnp.diag(pen + 1e-6)  # the jitter moves no fixed point (g = 0)
        delta = jnp.linalg.solve(H, g)
        cands = theta[None] - jnp.asarray(_STEPS, X.dtype)[:, None] * delta[None]
        return cands[jnp.argmin(jax.vmap(loss)(cands))], None

    theta, _ = jax.lax.scan(newton, jnp.zeros(X.shape[1] + 1, X.dtype), None, length=steps)
    return theta[:-1], theta[-1], mu, sd


def _class_means(X, y, m):
    w1, w0 = m * y, m * (1 - y)
    mu1 = (w1[:, None] * X).sum(0) / jnp.maximum(w1.sum(), 1.0)
    mu0 = (w0[:, None] * X).sum(0) / jnp.maximum(w0.sum(), 1.0)
    return mu0, mu1


def diffmeans(X, y, m):
    """Difference of class means in raw space, scaled so that the logit is +-1/2 at the class means and 0 at
    their midpoint."""
    mu0, mu1 = _class_means(X, y, m)
    d = mu1 - mu0
    w = d / jnp.maximum(d @ d, 1e-30)
    return w, -w @ (mu0 + mu1) / 2, jnp.zeros_like(d), jnp.ones_like(d)


def ledoit_wolf(Xc, m):
    """Ledoit-Wolf shrinkage (towards ``trace/D`` times the identity) of the covariance of the centred rows
    ``Xc`` weighted by ``m``: ``(covariance, shrinkage)``, as scikit-learn's ``ledoit_wolf``."""
    n = jnp.maximum(m.sum(), 1.0)
    p = Xc.shape[1]
    Xm = Xc * m[:, None]
    S = Xm.T @ Xc / n
    mu = jnp.trace(S) / p
    delta = ((S - mu * jnp.eye(p, dtype=S.dtype)) ** 2).sum() / p
    beta = ((m * (Xc**2).sum(1) ** 2).sum() / n - (S**2).sum()) / (p * n)
    beta = jnp.minimum(beta, delta)
    shrink = jnp.where(delta > 0, beta / jnp.maximum(delta, 1e-30), 0.0)
    return S, shrink


def lda(X, y, m, shrinkage: float | None = None):
    """Linear discriminant: ``w = C^-1 (mu1 - mu0)`` with ``C`` the pooled within-class covariance shrunk
    towards a multiple of the identity (Ledoit-Wolf when ``shrinkage`` is None, else that fixed weight in
    [0, 1]); equal class priors."""
    mu0, mu1 = _class_means(X, y, m)
    Xc = X - jnp.where(y[:, None] > 0.5, mu1, mu0)
    S, lw = ledoit_wolf(Xc, m)
    a = lw if shrinkage is None else jnp.asarray(shrinkage, X.dtype)
    p = X.shape[1]
    C = (1 - a) * S + a * (jnp.trace(S) / p) * jnp.eye(p, dtype=X.dtype)
    C = C + 1e-6 * jnp.maximum(jnp.trace(S) / p, 1e-30) * jnp.eye(p, dtype=X.dtype)
    w = jnp.linalg.solve(C, mu1 - mu0)
    return w, -w @ (mu0 + mu1) / 2, jnp.zeros_like(w), jnp.ones_like(w)


FITS = {"logistic": logistic, "diffmeans": diffmeans, "lda": lda}


def fit_and_score(kind: str, options: tuple, X, y, m):
    """Fit ``kind`` on the rows ``m`` marks and score every row: ``(params, logits [N])``."""
    w, b, mu, sd = FITS[kind](X, y, m, **dict(options))
    return (w, b, mu, sd), ((X - mu) / sd) @ w + b


def _normalise(X):
    mu = X.mean(0)
    sd = X.std(0)
    return (X - mu) / jnp.where(sd > 0, sd, 1.0), mu, jnp.where(sd > 0, sd, 1.0)


def ccs_loss(theta, Zp, Zn):
    """Contrast-consistent search (Burns et al. 2022): consistency ``(p+ - (1 - p-))^2`` plus confidence
    ``min(p+, p-)^2``, averaged over pairs."""
    pp = jax.nn.sigmoid(Zp @ theta[:-1] + theta[-1])
    pn = jax.nn.sigmoid(Zn @ theta[:-1] + theta[-1])
    return ((pp - (1 - pn)) ** 2).mean() + (jnp.minimum(pp, pn) ** 2).mean()


def ccs(Xp, Xn, key, restarts: int = 10, steps: int = 1000, lr: float = 1e-2, weight_decay: float = 0.0):
    """Fit CCS from ``restarts`` random starts (Adam, full batch) on each side normalised by its own mean and
    standard deviation; returns ``(theta [D+1], loss)`` of the start that ends with the lowest loss, and the
    pooled normalisation ``(mean [D], scale [D])``."""
    Zp, mup, sdp = _normalise(Xp)
    Zn, mun, sdn = _normalise(Xn)
    D = Xp.shape[1]
    opt = optax.adamw(lr, weight_decay=weight_decay) if weight_decay else optax.adam(lr)

    def run(k):
        theta = jnp.concatenate([jax.random.normal(k, (D,), Xp.dtype) / float(np.sqrt(D)), jnp.zeros(1, Xp.dtype)])

        def step(carry, _):
            th, st = carry
            loss, g = jax.value_and_grad(ccs_loss)(th, Zp, Zn)
            upd, st = opt.update(g, st, th)
            return (optax.apply_updates(th, upd), st), loss

        (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), None, length=steps)
        return theta, ccs_loss(theta, Zp, Zn)

    thetas, losses = jax.vmap(run)(jax.random.split(key, restarts))
    best = jnp.argmin(losses)
    return thetas[best], losses[best], (mup + mun) / 2, (sdp + sdn) / 2
