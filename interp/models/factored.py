"""A matrix kept as the product of two factors, ``M = A @ B``, as TransformerLens's ``FactoredMatrix``.

Circuits such as a head's OV matrix ``W_V @ W_O`` (``[D D]`` of rank at most ``E``) are cheap as factors and large
when multiplied out. :class:`FactoredMatrix` keeps the factors and computes what analysis needs from them: the SVD,
the Frobenius norm and the eigenvalues use matrices of the inner size only.

Shapes: ``A [*lead l m]``, ``B [*lead m r]`` (leading axes broadcast, e.g. ``[layer head]``); the matrix is
``[*lead l r]`` with inner size ``m``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

__all__ = ["FactoredMatrix"]


def _at_least_f32(x: Array) -> Array:
    return x if jnp.finfo(x.dtype).bits >= 32 else x.astype(jnp.float32)


def _mT(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


@jax.tree_util.register_pytree_node_class
class FactoredMatrix:
    """``A @ B`` kept as its two factors (a pytree of ``A`` and ``B``).

    ``AB`` materialises the product and ``BA`` the small ``[m m]`` one; ``svd()``, ``norm()`` and ``eigenvalues``
    never form ``AB``. ``@`` works with arrays (on either side) and with other factored matrices, keeping the
    result factored with the smaller inner size; a vector on the right gives an array. Indexing applies to the
    leading axes (``OV[layer, head]``); one or two further indices slice the rows of ``A`` and the columns of
    ``B``, keeping the matrix axes.
    """

    __array_ufunc__ = None  # so that numpy_array @ factored defers to __rmatmul__

    def __init__(self, A: Float[Array, "*lead l m"], B: Float[Array, "*lead m r"]):
        A, B = jnp.asarray(A), jnp.asarray(B)
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"both factors must be matrices (at least 2 axes), got shapes {A.shape} and {B.shape}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"the factors' inner sizes differ: A {A.shape} has {A.shape[-1]} columns, "
                             f"B {B.shape} has {B.shape[-2]} rows")
        try:
            lead = tuple(jnp.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
        except ValueError:
            raise ValueError(f"the factors' leading axes do not broadcast: A {A.shape}, B {B.shape}") from None
        self.A = jnp.broadcast_to(A, lead + A.shape[-2:])
        self.B = jnp.broadcast_to(B, lead + B.shape[-2:])

    # ----------------------------------------------------------------- pytree
    def tree_flatten(self):
        return (self.A, self.B), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)  # leaves may be tracers, None or sentinels under transforms: no checks
        obj.A, obj.B = children
        return obj

    # ----------------------------------------------------------------- sizes
    @property
    def ldim(self) -> int:
        return self.A.shape[-2]

    @property
    def mdim(self) -> int:
        return self.A.shape[-1]

    @property
    def rdim(self) -> int:
        return self.B.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.A.shape[:-1]) + (self.rdim,)

    @property
    def ndim(self) -> int:
        return self.A.ndim

    @property
    def pair(self) -> tuple[Array, Array]:
        return self.A, self.B

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={self.shape}, mdim={self.mdim}, dtype={self.A.dtype})"

    # ----------------------------------------------------------------- products
    @property
    def AB(self) -> Float[Array, "*lead l r"]:
        """The matrix itself, ``A @ B`` (materialised)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Array, "*lead m m"]:
        """``B @ A`` (needs ``l == r``): the same nonzero eigenvalues as ``AB``, at the inner size."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square matrix; this one is {self.ldim}x{self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose ``B.T @ A.T`` (of the last two axes)."""
        return FactoredMatrix(_mT(self.B), _mT(self.A))

    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            inner = self.B @ other.A  # [m1 m2]: keep the smaller inner size
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, inner @ other.B)
            return FactoredMatrix(self.A @ inner, other.B)
        other = jnp.asarray(other)
        if other.ndim == 1:  # a vector: collapse to an array (kept as a column so the leading axes broadcast)
            return (self.A @ (self.B @ other[:, None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise ValueError(f"cannot multiply a factored {self.shape} matrix by an array of shape {other.shape}")
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other):
        other = jnp.asarray(other)
        if other.ndim == 1:
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        if other.shape[-1] != self.ldim:
            raise ValueError(f"cannot multiply an array of shape {other.shape} by a factored {self.shape} matrix")
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar) -> FactoredMatrix:
        scalar = jnp.asarray(scalar)
        if scalar.ndim:
            raise ValueError(f"a factored matrix multiplies by scalars only, got shape {scalar.shape}; use @")
        return FactoredMatrix(self.A * scalar.astype(self.A.dtype), self.B)

    __rmul__ = __mul__

    def __neg__(self) -> FactoredMatrix:
        return FactoredMatrix(-self.A, self.B)

    # ----------------------------------------------------------------- indexing
    def __getitem__(self, idx) -> FactoredMatrix:
        """Leading axes: ``OV[3]``, ``OV[3, 5]``; then rows of ``A`` and columns of ``B`` (an integer there is kept
        as a length-1 axis, so the result stays a matrix)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis or i is None for i in idx):
            raise IndexError("a FactoredMatrix is indexed by its leading axes, then rows, then columns; "
                             "'...' and None are not supported")
        n = self.ndim - 2

        def keep(i):
            return slice(i, i + 1 if i != -1 else None) if isinstance(i, int) else i

        if len(idx) <= n:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if len(idx) == n + 1:
            lead, rows = idx[:n], keep(idx[n])
            return FactoredMatrix(self.A[lead + (rows,)], self.B[lead])
        if len(idx) == n + 2:
            lead, rows, cols = idx[:n], keep(idx[n]), keep(idx[n + 1])
            return FactoredMatrix(self.A[lead + (rows,)], self.B[lead + (slice(None), cols)])
        raise IndexError(f"index {idx} is too long for a factored matrix of shape {self.shape}")

    # ----------------------------------------------------------------- analysis (never forms AB)
    def norm(self) -> Float[Array, "*lead"]:
        """Frobenius norm of ``AB`` from the inner-size Gram matrices: ``|AB|² = sum((AᵀA) ∘ (BBᵀ))``."""
        A, B = _at_least_f32(self.A), _at_least_f32(self.B)
        sq = jnp.sum((_mT(A) @ A) * (B @ _mT(B)), axis=(-2, -1))
        return jnp.sqrt(jnp.maximum(sq, 0.0))

    @functools.cached_property
    def _svd(self):
        A, B = _at_least_f32(self.A), _at_least_f32(self.B)
        Ua, Sa, Vha = jnp.linalg.svd(A, full_matrices=False)
        Ub, Sb, Vhb = jnp.linalg.svd(B, full_matrices=False)
        middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]  # Ua and Vhb have orthonormal columns / rows
        Um, Sm, Vhm = jnp.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, Sm, _mT(Vhb) @ _mT(Vhm)

    def svd(self) -> tuple[Float[Array, "*lead l k"], Float[Array, "*lead k"], Float[Array, "*lead r k"]]:
        """``(U, S, V)`` with ``U @ diag(S) @ V.T == AB`` — note ``V``, not ``Vh``, as TransformerLens returns it.

        ``k = min(l, m, r)``; singular values descending; computed in at least float32 from the factors' SVDs.
        """
        return self._svd

    @property
    def U(self) -> Float[Array, "*lead l k"]:
        return self._svd[0]

    @property
    def S(self) -> Float[Array, "*lead k"]:
        return self._svd[1]

    @property
    def V(self) -> Float[Array, "*lead r k"]:
        """Right singular vectors: ``AB == U @ diag(S) @ V.T``."""
        return self._svd[2]

    @property
    def eigenvalues(self) -> Complex[Array, "*lead m"]:
        """Eigenvalues of ``BA`` (``[m m]``): those of ``AB`` apart from its ``l - m`` extra zeros (if ``BAv = λv``
        then ``AB(Av) = λ(Av)``). Computed on the CPU (XLA's eigendecomposition exists only there), in complex64 or
        wider."""
        BA = _at_least_f32(self.BA)
        with jax.default_device(jax.devices("cpu")[0]):
            return jnp.linalg.eigvals(jax.device_put(BA, jax.devices("cpu")[0]))

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U √S) @ (√S Vᵀ)``: both factors carry half of each singular value."""
        root = jnp.sqrt(self.S)
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _mT(self.V))

    def collapse_l(self) -> Float[Array, "*lead k r"]:
        """``diag(S) @ V.T``: the matrix with its left singular basis collapsed."""
        return self.S[..., :, None] * _mT(self.V)

    def collapse_r(self) -> Float[Array, "*lead l k"]:
        """``U @ diag(S)``: the matrix with its right singular basis collapsed."""
        return self.U * self.S[..., None, :]
