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

import math

import jax


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
