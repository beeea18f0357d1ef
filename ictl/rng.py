"""Random draws that compile fast on CPU: the same numbers as ``jax.random``, drawn flat and reshaped.

``jax.random.normal(key, (B, N, d))`` and ``normal(key, (B * N * d,)).reshape(B, N, d)`` are bitwise
equal (threefry counts the elements of the flattened shape in row-major order, partitionable or
not; `tests/test_rng.py` checks it), but XLA:CPU (jax 0.10.2) compiles the multi-dimensional draw
several times slower: the threefry rounds are emitted inside a loop nest over every dimension.
Measured here: bits of shape (1024, 20, 5) took 2.2 s to compile, (102400,) 0.45 s; one sampler of
linear prompts 6.2 s → 2.3 s. The prompt samplers draw through these functions so that a fresh
run (no compilation cache) spends its time training, not compiling.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np

from models.initializers import pow2_length


def _flat(shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(int(s) for s in shape)
    return shape, (math.prod(shape),)


def normal(key: jax.Array, shape=(), dtype=float) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, bitwise."""
    shape, flat = _flat(shape)
    return jax.random.normal(key, flat, dtype).reshape(shape)


def uniform(key: jax.Array, shape=(), dtype=float, minval=0.0, maxval=1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bitwise (scalar bounds)."""
    shape, flat = _flat(shape)
    return jax.random.uniform(key, flat, dtype, minval, maxval).reshape(shape)


def randint(key: jax.Array, shape, minval, maxval, dtype=int) -> jax.Array:
    """``jax.random.randint(key, shape, minval, maxval, dtype)``, bitwise (scalar bounds)."""
    shape, flat = _flat(shape)
    return jax.random.randint(key, flat, minval, maxval, dtype).reshape(shape)


def bernoulli(key: jax.Array, p, shape) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``, bitwise (scalar p)."""
    shape, flat = _flat(shape)
    return jax.random.bernoulli(key, p, flat).reshape(shape)


def rademacher(key: jax.Array, shape, dtype=int) -> jax.Array:
    """``jax.random.rademacher(key, shape, dtype)``, bitwise."""
    shape, flat = _flat(shape)
    return jax.random.rademacher(key, flat, dtype).reshape(shape)


# Eager draws at many shapes (test inputs): each new shape of a jax.random draw compiles its own
# threefry program (test_gla: 54 compiles, 9.9 s of XLA's time); these compile one program per
# power-of-two length and return its first n elements, bitwise the same numbers (with threefry
# partitionable, element i of a flat draw depends only on (key, i); tests/test_rng.py).
@functools.partial(jax.jit, static_argnames=("length", "dtype", "kind"))
def _prefix_draw(key, *, length, dtype, kind):
    return jax.random.normal(key, (length,), dtype) if kind == "normal" else jax.random.uniform(key, (length,), dtype)


def _eager(kind, key, shape, dtype):
    shape, (n,) = _flat(shape)
    dtype = jax.numpy.dtype(dtype)
    if (dtype != jax.numpy.float32 or not jax.config.jax_threefry_partitionable or isinstance(key, jax.core.Tracer)
            or str(jax.random.key_impl(key)) != "threefry2x32"):
        draw = jax.random.normal if kind == "normal" else jax.random.uniform
        return draw(key, shape, dtype)
    flat = np.asarray(_prefix_draw(key, length=pow2_length(n), dtype=dtype, kind=kind))
    return jax.device_put(flat[:n].reshape(shape))   # sliced in numpy: no program per shape


def eager_normal(key: jax.Array, shape=(), dtype=jax.numpy.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, bitwise; float32 threefry draws share one compiled
    program per power-of-two size (other dtypes, keys and traced keys: jax.random itself)."""
    return _eager("normal", key, shape, dtype)


def eager_uniform(key: jax.Array, shape=(), dtype=jax.numpy.float32) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype)`` on [0, 1), bitwise, as `eager_normal`."""
    return _eager("uniform", key, shape, dtype)
