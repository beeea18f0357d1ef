"""models.initializers give flax's initial parameters bit for bit, and the parameters-only inits
(`gpt.init_params` on `initializers.Declare`, `pfn.init_params`' `lazy_init`) the same parameters as a
full `init` (so the numbers of every run stay as they were)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gpt, initializers, pfn

SHAPES = [(1, 1), (6, 64), (82, 64), (3, 4, 5)]   # lengths 1, 384, 5248, 60: exact and padded buckets


def _same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))


def test_initializers_equal_flax_bitwise():
    key = jax.random.key(5)
    for shape, std, dtype in zip(SHAPES, (0.02, 1.0, 0.3, 0.02), (jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32)):
        assert _same(initializers.normal_init(std)(key, shape, dtype), nn.initializers.normal(std)(key, shape, dtype))
        assert _same(initializers.fan_in_uniform_init(std)(key, shape, dtype),
                     nn.initializers.variance_scaling(std, "fan_in", "uniform")(key, shape, dtype))


def test_initializers_equal_flax_in_float64(x64):
    key = jax.random.key(2)
    for shape in SHAPES[1:3]:
        assert _same(initializers.normal_init(0.5, jnp.float64)(key, shape),
                     nn.initializers.normal(0.5, jnp.float64)(key, shape))
        assert _same(initializers.fan_in_uniform_init(1 / 3, jnp.float64)(key, shape),
                     nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", dtype=jnp.float64)(key, shape))


def test_traced_keys_run_flax_itself():
    """Under jit the initialisers are flax's (whose scale XLA may fold: not the eager bits), so a
    jitted init gives the numbers it gave before this module existed."""
    key = jax.random.key(3)
    for ours, theirs in ((initializers.normal_init(0.02), nn.initializers.normal(0.02)),
                         (initializers.fan_in_uniform_init(1 / 3), nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"))):
        assert _same(jax.jit(lambda k: ours(k, (6, 64)))(key), jax.jit(lambda k: theirs(k, (6, 64)))(key))


def test_without_partitionable_threefry_the_plain_draw_is_used():
    key = jax.random.key(3)
    with jax.threefry_partitionable(False):
        assert _same(initializers.normal_init(0.02)(key, (6, 64)), nn.initializers.normal(0.02)(key, (6, 64)))
    rbg = jax.random.key(3, impl="rbg")          # no prefix property assumed: flax's draw
    assert _same(initializers.fan_in_uniform_init(1 / 3)(rbg, (6, 64)),
                 nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")(rbg, (6, 64)))


def test_rank_one_fan_in_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        initializers.fan_in_uniform_init(1.0)(jax.random.key(0), (5,))


@pytest.mark.parametrize("kw", [dict(d_in=3, max_tokens=8, n_layers=1, n_heads=2, width=8),
                                dict(d_in=5, max_tokens=12, n_layers=2, n_heads=3, width=12, mlp_ratio=2,
                                     out_dim=3, attention_backend="lawcat")])   # gate and conv filters too
def test_gpt_init_params_equals_full_init_and_vmap(kw):
    """The forward-free init gives `init`'s parameters bit for bit: the softmax GPT (also vmapped over
    seeds: seed stacks), and a vector read-out with the `models.attention` module (lawcat's parameters
    are a superset of the other backends'; all seven, both configs, were checked once by hand)."""
    cfg = gpt.GPTConfig(**kw)
    key = jax.random.key(4)
    lazy = gpt.init_params(cfg, key)
    assert all(type(x) is type(jnp.zeros(1)) for x in jax.tree_util.tree_leaves(lazy))   # device arrays (`.at`, sharding)
    full = gpt.GPT(cfg).init(key, jnp.zeros((1, cfg.max_tokens, cfg.d_in)))   # runs the forward pass
    assert jax.tree_util.tree_structure(lazy) == jax.tree_util.tree_structure(full)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(_same, lazy, full)))
    if cfg.attention_backend == "softmax":   # under vmap flax's initialisers run: one case is enough
        stacked = jax.vmap(lambda k: gpt.init_params(cfg, k))(jnp.stack([jax.random.key(0), key]))
        assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda s, a: _same(s[1], a), stacked, lazy)))


def test_constant_init_equals_flax():
    for value, dtype in ((0.0, jnp.float32), (1.0, jnp.float32), (1.0, jnp.bfloat16)):
        ours = initializers.constant_init(value)(jax.random.key(0), (3, 4), dtype)
        assert _same(ours, nn.initializers.constant(value)(jax.random.key(0), (3, 4), dtype))
        assert type(ours) is type(jnp.zeros(1))


def test_pfn_lazy_init_equals_full_init():
    cfg = pfn.PFNConfig(d_in=2, n_layers=1, n_heads=2, width=8, mlp_ratio=1, num_buckets=4, positional=True,
                        max_tokens=8)
    key = jax.random.key(6)
    lazy = pfn.init_params(cfg, key)
    full = pfn.PFN(cfg).init(key, jnp.zeros((1, 2, cfg.d_in)), jnp.zeros((1, 2)), 1)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(_same, lazy, full)))
