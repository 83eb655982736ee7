"""Length buckets: a prompt runs padded at its end to the next of a few lengths, so that a prompt of a new
length reuses a compiled program instead of compiling one more.

Padding is safe because the attention is causal: a real position never attends to a later one, so the padded
positions (also hidden from every query by the attention mask) change nothing at the real ones. Results are
sliced back to the prompt's length. The sizes grow by about 1.5x, so the padding costs at most about half the
prompt's compute, and most prompts far less; :func:`set_length_buckets` changes them or turns bucketing off.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import jax
import numpy as np

from interp.hooks import Pending

DEFAULT_BUCKETS: tuple[int, ...] = (
    16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384,
)
_SIZES: list[tuple[int, ...] | None] = [DEFAULT_BUCKETS]


def length_buckets() -> tuple[int, ...] | None:
    """The bucket lengths in use (None: every prompt runs at its exact length)."""
    return _SIZES[0]


def set_length_buckets(sizes: Sequence[int] | None = DEFAULT_BUCKETS) -> tuple[int, ...] | None:
    """Use ``sizes`` (increasing positive lengths) as buckets, or None to run every prompt at its exact
    length; returns the previous setting so that it can be restored. Prompts longer than the largest size
    run at their exact length."""
    previous = _SIZES[0]
    if sizes is not None:
        sizes = tuple(int(s) for s in sizes)
        if not sizes or any(s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
            raise ValueError(f"bucket lengths must be increasing positive integers, got {sizes}; "
                             "pass None to turn bucketing off")
    _SIZES[0] = sizes
    return previous


def bucket_length(length: int, limit: int | None = None) -> int:
    """The padded length a prompt of ``length`` positions runs at (``length`` itself when no bucket fits;
    never more than ``limit``, a model's context, unless ``length`` is)."""
    sizes = _SIZES[0]
    if not sizes:
        return length
    i = bisect.bisect_left(sizes, length)
    if i == len(sizes):
        return length
    out = sizes[i]
    if limit is not None and out > limit:
        out = max(length, limit)
    return out


def slice_positions(a, axes: Sequence[int], length: int):
    """``a`` cut to ``length`` along each of ``axes`` (the position axes that were padded).

    A concrete array in host memory is cut by NumPy and put back on its device, which compiles nothing; a
    traced one (under ``jax.grad`` or ``jax.jit``) is cut by a traced slice."""
    axes = [ax for ax in axes if a.shape[ax] != length]
    if not axes:
        return a
    index = tuple(slice(0, length) if ax in axes else slice(None) for ax in range(a.ndim))
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
        devices = a.devices()
        if len(devices) == 1 and next(iter(devices)).platform == "cpu":
            return jax.device_put(np.asarray(a)[index], next(iter(devices)))
    return a[index]


class _Cut(Pending):
    """A host array still to be cut to the prompt's length: the cut (a NumPy view, then one copy onto the device)
    happens when the cache entry is first read, and many are put on their device in one call."""

    __slots__ = ("array", "index", "device")

    def __init__(self, array, axes: Sequence[int], length: int, device):
        shape = list(array.shape)
        for ax in axes:
            shape[ax] = length
        super().__init__(shape, array.dtype)
        self.array, self.device = array, device
        self.index = tuple(slice(0, length) if ax in axes else slice(None) for ax in range(array.ndim))

    def resolve(self):
        return jax.device_put(np.asarray(self.array)[self.index], self.device)

    def _release(self):
        self.array = None  # resolved once (Pending.value keeps the result): the padded array can go

    @staticmethod
    def resolve_all(pending):
        out = [None] * len(pending)
        by_device: dict = {}
        for i, p in enumerate(pending):
            by_device.setdefault(p.device, []).append(i)
        for device, rows in by_device.items():
            for i, a in zip(rows, jax.device_put([np.asarray(pending[i].array)[pending[i].index] for i in rows],
                                                 device)):
                out[i] = a
        for p in pending:
            p._release()
        return out


class _CutLater(Pending):
    """A :class:`Pending` entry cut to the prompt's length once it is resolved."""

    __slots__ = ("inner", "axes", "length")

    def __init__(self, inner: Pending, axes: Sequence[int], length: int):
        shape = list(inner.shape)
        for ax in axes:
            shape[ax] = length
        super().__init__(shape, inner.dtype)
        self.inner, self.axes, self.length = inner, tuple(axes), length

    def resolve(self):
        return slice_positions(self.inner.value(), self.axes, self.length)

    @staticmethod
    def resolve_all(pending):
        Pending.resolve_many([p.inner for p in pending if p._value is None])  # the entries to cut, by kind
        return [p.value() for p in pending]

    def _release(self):
        self.inner = None


def cut_positions(a, axes: Sequence[int], length: int):
    """As :func:`slice_positions`, but a concrete array in host memory comes back as a :class:`Pending` entry of a
    cache, cut when it is first read: a run that captures every hook point pays only for the entries looked at. A
    :class:`Pending` entry (one computed when read) is cut after it is computed."""
    axes = [ax for ax in axes if a.shape[ax] != length]
    if not axes:
        return a
    if isinstance(a, Pending):
        return _CutLater(a, axes, length)
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
        devices = a.devices()
        if len(devices) == 1 and next(iter(devices)).platform == "cpu":
            return _Cut(a, axes, length, next(iter(devices)))
    return slice_positions(a, axes, length)


def pad_positions(a, axes: Sequence[int], length: int, value=0):
    """``a`` padded at the end to ``length`` along each of ``axes`` with ``value`` (NumPy for host arrays)."""
    widths = [(0, 0)] * a.ndim
    for ax in axes:
        widths[ax] = (0, length - a.shape[ax])
    if all(w == (0, 0) for w in widths):
        return a
    if isinstance(a, jax.core.Tracer) or (isinstance(a, jax.Array) and next(iter(a.devices())).platform != "cpu"):
        import jax.numpy as jnp

        return jnp.pad(a, widths, constant_values=value)
    return jax.device_put(np.pad(np.asarray(a), widths, constant_values=value))
