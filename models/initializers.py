"""Parameter initialisers that compile fast: flax's `normal(std)` and `variance_scaling(scale,
"fan_in", "uniform")`, bitwise (tests/test_model_init.py).

A model's `init` runs each initialiser eagerly once per parameter, and with flax's initialisers each
new shape compiled its own threefry draw and scaling: the tiny GPT's init (3 layers, width 64, XLA's
default options) took 7.3 CPU-s in `lazy_init`, 4.8 with these. Here one jitted program per
(distribution, power-of-two length) draws a flat vector and scales it; the parameter is its first n
elements, reshaped. Bitwise because with threefry partitionable (jax's default) element i of a flat
draw depends only on (key, i), so the first n elements of a longer draw are the n-element draw, and
the multi-dimensional draw equals the flat one reshaped (row-major counting); an optimisation barrier
keeps XLA from folding the scale into the draw's own constants (which changes the last bit). Flax
has no such option, hence hand-written.

Under a transformation (a traced key: `jit`, `vmap`) flax's initialiser itself runs, so a jitted or
vmapped init gives exactly the numbers it gave before (XLA may fold the scale there, and runs that
jit their init — gpicl's GPT, tests — keep their documented numbers).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def pow2_length(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the draw length that n-element draws share."""
    return 1 << max(n - 1, 0).bit_length()


@functools.partial(jax.jit, static_argnames=("kind", "length", "dtype"))
def _scaled_draw(key, scale, *, kind: str, length: int, dtype):
    if kind == "normal":
        draw = jax.random.normal(key, (length,), dtype)
    else:
        draw = jax.random.uniform(key, (length,), dtype, -1)
    return jax.lax.optimization_barrier(draw) * scale


def _init_draw(kind, key, shape, dtype, scale):
    n = math.prod(shape)
    flat = np.asarray(_scaled_draw(key, scale, kind=kind, length=pow2_length(n), dtype=jnp.dtype(dtype)))
    return jax.device_put(flat[:n].reshape(shape))   # sliced in numpy: no slice/reshape program per shape


def _use_flax(key) -> bool:
    """Flax's own initialiser: under a transformation, or for keys without the prefix property (it
    needs partitionable threefry: not RBG keys, not the older threefry counting)."""
    return (isinstance(key, jax.core.Tracer) or not jax.config.jax_threefry_partitionable
            or str(jax.random.key_impl(key)) != "threefry2x32")


def normal_init(stddev: float, dtype=None):
    """``flax.linen.initializers.normal(stddev, dtype)``, bitwise."""
    flax_init = nn.initializers.normal(stddev, dtype)

    def init(key, shape, dtype=dtype):
        if _use_flax(key):
            return flax_init(key, shape, dtype)
        dtype = jnp.float32 if dtype is None else dtype
        shape = tuple(int(s) for s in shape)
        return _init_draw("normal", key, shape, dtype, jnp.array(stddev, dtype))
    return init


def fan_in_uniform_init(scale: float, dtype=None):
    """``flax.linen.initializers.variance_scaling(scale, "fan_in", "uniform", dtype=dtype)``, bitwise:
    U(−a, a) with a = √(3·scale/fan_in), fan_in = shape[-2] × receptive field."""
    flax_init = nn.initializers.variance_scaling(scale, "fan_in", "uniform", dtype=dtype)

    def init(key, shape, dtype=dtype):
        if _use_flax(key):
            return flax_init(key, shape, dtype)
        dtype = jnp.float32 if dtype is None else dtype
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"shape: got {shape}; allowed a kernel of rank >= 2")
        fan_in = shape[-2] * (math.prod(shape) / shape[-2] / shape[-1])
        variance = jnp.array(scale / fan_in, dtype)
        return _init_draw("uniform", key, shape, dtype, jnp.sqrt(3 * variance))
    return init


def constant_init(value: float, dtype=None):
    """``flax.linen.initializers.constant(value, dtype)`` (zeros_init, ones_init), bitwise, made in numpy:
    eagerly ``jnp.full`` compiled a program per shape."""
    flax_init = nn.initializers.constant(value, dtype)

    def init(key, shape, dtype=dtype):
        if isinstance(key, jax.core.Tracer):
            return flax_init(key, shape, dtype)
        dtype = jnp.float32 if dtype is None else dtype
        return jax.device_put(np.full(tuple(int(s) for s in shape), value, jnp.dtype(dtype)))
    return init


class Declare(nn.Module):
    """Declares parameters alone, without a forward pass: ``specs`` holds ``(name, init, shape)`` for a
    parameter of this scope and ``(name, specs)`` for a child scope, in the order the model makes them.
    Flax draws a parameter's key from the root key, its scope path and its rank among its scope's
    parameters, so the model's names in the model's order give its parameters bit for bit (tested per
    model); ``Declare(specs).init(key)`` has the tree of ``model.init(key, ...)``."""

    specs: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self):
        for spec in self.specs:
            if len(spec) == 2:
                Declare(spec[1], self.dtype, name=spec[0])()
            else:
                self.param(spec[0], spec[1], spec[2], self.dtype)
