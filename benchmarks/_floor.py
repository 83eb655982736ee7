"""The matmul floor of a computation: the same matrix products, with the same shapes, dtypes and dimension numbers,
run alone in one jitted function.

    dots = matmuls(fn, *args)   # every dot_general that tracing ``fn(*args)`` issues, inside jits, scans and calls
    run = floor(dots)           # a callable that runs exactly those products on fixed random operands and blocks

Everything else the computation does (norms, softmax, rotary, element-wise work, copies) is left out, so the time of
``run`` is the least the computation can take on the machine with the same matmul library: a forward pass's time
over it says how much of the forward is not matmul. Each product gets its own operands, so that XLA cannot merge two
products of equal shape into one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dot:
    lhs: tuple[tuple[int, ...], str]  # (shape, dtype)
    rhs: tuple[tuple[int, ...], str]
    params: dict
    count: int = 1

    @property
    def flops(self) -> int:
        (lhs, _), (rhs, _) = self.lhs, self.rhs
        (_, rhs_contract), (_, rhs_batch) = self.params["dimension_numbers"]
        rhs_free = [n for i, n in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
        return 2 * math.prod(lhs) * math.prod(rhs_free) * self.count


def _sub_jaxprs(eqn):
    """(jaxpr, repeat) pairs nested in ``eqn``: the body of a scan runs ``length`` times; a jit or a custom rule's
    function once. Loops of unknown length and branches are refused: their matmul count is not static."""
    from jax.extend import core

    name = eqn.primitive.name
    for key, value in eqn.params.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            inner = getattr(v, "jaxpr", v)
            if not isinstance(inner, core.Jaxpr):
                continue
            if name in ("while", "cond"):
                raise ValueError(f"a {name} holds matmuls; their number is not static, so there is no fixed floor")
            yield inner, int(eqn.params["length"]) if name == "scan" and key == "jaxpr" else 1


def matmuls(fn, *args) -> list[Dot]:
    """Every ``dot_general`` that ``fn(*args)`` runs, in order, with how many times it runs."""
    import jax

    out: list[Dot] = []

    def walk(jaxpr, repeat: int):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                a, b = (v.aval for v in eqn.invars)
                out.append(Dot((tuple(a.shape), str(a.dtype)), (tuple(b.shape), str(b.dtype)), dict(eqn.params),
                               repeat))
            for inner, n in _sub_jaxprs(eqn):
                walk(inner, repeat * n)

    walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
    return out


def floor(dots: list[Dot], seed: int = 0):
    """A callable that runs the products of ``dots`` (each as many times as it counts) on random operands and blocks
    until they are done. The operands are made once, outside the timed call."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(seed)
    operands, params = [], []
    for d in dots:
        for _ in range(d.count):
            pair = []
            for shape, dtype in (d.lhs, d.rhs):
                x = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(max(shape[-1], 1))
                pair.append(jnp.asarray(x, dtype=dtype))
            operands.append(tuple(pair))
            params.append(d.params)

    @jax.jit
    def run(operands):
        return [lax.dot_general_p.bind(a, b, **p) for (a, b), p in zip(operands, params)]

    def call():
        jax.block_until_ready(run(operands))

    return call
