"""Float32 error bounds taken from the computation, for tests that compare two computations of the same values.

Two float32 computations of one quantity (ours and transformers', a model before and after an exact weight
transform, a kernel and its reference) differ by rounding: each operation rounds to within an ulp of the values
it works on, and those differences travel to the end with the magnitudes involved. A fair bound is a number of
float32 epsilons times the magnitude of the values compared, with the number growing with the depth of the
computation, never a round figure that one run happened to meet: XLA picks other reduction orders (thread
partitions) when the machine is busy, and the differences move with them.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)

# A transformer block is a chain of a few dozen float32 steps (norm, projections, rotary, scores, softmax,
# weighted sum, MLP); measured differences against transformers stay under ~10 ulps of a hook's magnitude for a
# 2-layer model and ~50 ulps of the logits for the 30-layer default model. 32 ulps per block leaves room for
# the reduction orders a loaded machine picks without hiding a wrong weight (those differ by 1e-2 and more).
ULPS_PER_BLOCK = 32


def magnitude(*values) -> float:
    """The largest absolute value among ``values`` (arrays or numbers)."""
    return max((float(np.abs(np.asarray(v, np.float64)).max()) if np.size(v) else 0.0) for v in values)


def f32_bound(*values, ulps: float) -> float:
    """``ulps`` float32 epsilons of the largest magnitude among ``values``."""
    return ulps * EPS32 * magnitude(*values)


def model_bound(*values, n_layers: int) -> float:
    """The bound for outputs of an ``n_layers``-block model computed two ways: ``ULPS_PER_BLOCK`` ulps per block of
    the values' magnitude."""
    return f32_bound(*values, ulps=ULPS_PER_BLOCK * max(n_layers, 1))


def reduction_bound(*values, length: int, ulps: float = 8) -> float:
    """The bound for a sum of ``length`` products computed in two orders: rounding grows like the square root of the
    number of terms (random-walk accumulation) times the magnitude of the terms, here taken from ``values``."""
    return f32_bound(*values, ulps=ulps * max(1.0, float(np.sqrt(length))))


def assert_close(actual, expected, bound: float, what: str = "values") -> None:
    """``max |actual - expected| <= bound``, with the figures in the message."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shapes {a.shape} and {e.shape} differ"
    err = float(np.abs(a - e).max()) if a.size else 0.0
    assert err <= bound, f"{what}: max abs difference {err:.3g} exceeds the float32 bound {bound:.3g}"


def assert_model_close(actual, expected, model, what: str = "values", *, terms: int = 1) -> None:
    """``actual`` equals ``expected`` up to ``model_bound`` of ``model``'s depth; ``terms`` > 1 when ``actual`` is a
    sum of that many separately rounded contributions (the bound grows with its square root)."""
    bound = model_bound(actual, expected, n_layers=model.n_layers) * max(1.0, float(np.sqrt(terms)))
    assert_close(actual, expected, bound, what)
