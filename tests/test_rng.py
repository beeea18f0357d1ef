"""ictl.rng draws flat and reshapes for compile speed: it must give jax.random's numbers bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import rng

SHAPES = [(7,), (4, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_same_bits_as_jax_random(shape):
    key = jax.random.key(11)
    pairs = [
        (rng.normal(key, shape, jnp.float32), jax.random.normal(key, shape, jnp.float32)),
        (rng.uniform(key, shape, jnp.float32, -2.0, 3.0), jax.random.uniform(key, shape, jnp.float32, -2.0, 3.0)),
        (rng.randint(key, shape, 0, 9), jax.random.randint(key, shape, 0, 9)),
        (rng.bernoulli(key, 0.3, shape), jax.random.bernoulli(key, 0.3, shape)),
        (rng.rademacher(key, shape), jax.random.rademacher(key, shape)),
    ]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_same_bits_under_vmap_and_old_threefry():
    rbg = jax.random.key(2, impl="rbg")  # RngBitGenerator keys (vonoswald_gd) count the flat shape too
    np.testing.assert_array_equal(np.asarray(rng.uniform(rbg, (4, 3, 2))), np.asarray(jax.random.uniform(rbg, (4, 3, 2))))
    keys = jax.random.split(jax.random.key(3), 4)
    ours = jax.vmap(lambda k: rng.normal(k, (5, 3)))(keys)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.vmap(lambda k: jax.random.normal(k, (5, 3)))(keys)))
    old = jax.config.jax_threefry_partitionable
    try:  # the non-partitionable threefry also counts the flattened shape
        jax.config.update("jax_threefry_partitionable", not old)
        key = jax.random.key(5)
        np.testing.assert_array_equal(np.asarray(rng.normal(key, (6, 4))), np.asarray(jax.random.normal(key, (6, 4))))
    finally:
        jax.config.update("jax_threefry_partitionable", old)


def test_eager_draws_share_power_of_two_programs_bitwise():
    key, legacy = jax.random.key(7), jax.random.PRNGKey(7)
    for shape in [(1,), (3, 5), (2, 3, 4, 5), (100,)]:          # lengths 1, 15, 120, 100: buckets 1, 16, 128
        for k in (key, legacy):
            np.testing.assert_array_equal(np.asarray(rng.eager_normal(k, shape)), np.asarray(jax.random.normal(k, shape)))
            np.testing.assert_array_equal(np.asarray(rng.eager_uniform(k, shape)), np.asarray(jax.random.uniform(k, shape)))
    rbg = jax.random.key(2, impl="rbg")                          # no prefix property: jax.random itself
    np.testing.assert_array_equal(np.asarray(rng.eager_normal(rbg, (4, 3))), np.asarray(jax.random.normal(rbg, (4, 3))))
    bf = rng.eager_normal(key, (3, 5), jnp.bfloat16)
    assert bf.dtype == jnp.bfloat16 and np.array_equal(np.asarray(bf), np.asarray(jax.random.normal(key, (3, 5), jnp.bfloat16)))
