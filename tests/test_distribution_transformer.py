"""Distribution Transformer: symmetry (components equivariant, observations invariant and padding-blind),
a valid GMM out for any input, log q against the float64 theory, the meta-prior samplers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import dt_training as dtt
from ictl.config import ConfigError
from ictl.theory import gmm_posterior as gp
from models.distribution_transformer import (GMM, DistributionTransformer, DTConfig, gmm_from_moments, gmm_log_prob,
                                             gmm_to_moments, init_params, solve_lower)

CFG = DTConfig(d=2, obs_dims=(2, 1), width=16, n_layers=2, n_heads=2, mlp_hidden=32, scale=2.0)
MP = dtt.MetaPrior(K=3, d=2)
OBS = (dtt.ObsType(H=((1.0, 0.0), (0.0, 1.0)), R=((1.0, 0.2), (0.2, 0.5)), n_min=1, n_max=4),
       dtt.ObsType(H=((1.0, 1.0),), R=((2.0,),), n_min=0, n_max=2))


def _perturbed(params, seed):
    """params + 0.3·N(0, 1) in every entry, in numpy (a jax draw per leaf compiled 7 s of threefry, one
    flat jax draw 1.8 s)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + 0.3 * rng.standard_normal(a.shape), a.dtype), params)


@pytest.fixture(scope="module")
def meta_prior_batch():
    return dtt.sample_batch(jax.random.key(0), mp=MP, obs_types=OBS, batch=20_000)


@pytest.fixture(scope="module")
def setup(meta_prior_batch):
    """Random parameters everywhere (the read-out too, which starts at zero), a batch of inputs, the
    jitted model (everything compiled once and shared)."""
    # RBG keys: flax's per-leaf initialisers compile several times faster than with threefry
    init = jax.jit(lambda k: init_params(CFG, k, K=3))(jax.random.key(0, impl="rbg"))
    params = _perturbed(init, 1)
    # the first 4 cases of test_meta_prior_samplers' batch: one compiled sampler for both
    prior, theta, ys, masks = jax.tree.map(lambda a: np.asarray(a)[:4], meta_prior_batch)  # numpy: no slice compiles
    f = jax.jit(DistributionTransformer(CFG).apply)
    return f, params, prior, theta, ys, masks, init


def _close(a: GMM, b: GMM, atol=2e-5):
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def test_equivariant_over_components(setup):
    f, params, prior, _, ys, masks, _ = setup
    out = f(params, prior, ys, masks)
    perm = np.array([2, 0, 1])
    out_p = f(params, GMM(prior.logits_BxK[:, perm], prior.means_BxKxd[:, perm], prior.chol_BxKxdxd[:, perm]), ys, masks)
    _close(out_p, GMM(out.logits_BxK[:, perm], out.means_BxKxd[:, perm], out.chol_BxKxdxd[:, perm]))
    assert float(jnp.max(jnp.abs(out.means_BxKxd - prior.means_BxKxd))) > 1e-2  # the map is not trivial


def test_invariant_over_observations_and_padding(setup):
    f, params, prior, _, ys, masks, _ = setup
    out = f(params, prior, ys, masks)
    rng = np.random.default_rng(0)
    ys_p, masks_p = [], []
    for y, m in zip(ys, masks):
        y, m = np.asarray(y), np.asarray(m)
        perm = np.stack([rng.permutation(y.shape[1]) for _ in range(y.shape[0])])  # masks move with their rows
        y, m = np.take_along_axis(y, perm[..., None], 1), np.take_along_axis(m, perm, 1)
        # three padded junk observations appended: masked, so they must not matter
        ys_p.append(np.concatenate([y, 1e3 * rng.normal(size=(y.shape[0], 3, y.shape[2]))], 1))
        masks_p.append(np.concatenate([m, np.zeros((m.shape[0], 3), bool)], 1))
    _close(f(params, prior, ys_p, masks_p), out)
    # and the data matter: dropping every observation changes the posterior
    empty = f(params, prior, ys, [np.zeros_like(m) for m in masks])
    assert float(jnp.max(jnp.abs(empty.means_BxKxd - out.means_BxKxd))) > 1e-2


def test_output_is_a_valid_gmm_for_extreme_inputs(setup):
    f, params, prior, _, ys, masks, _ = setup
    wild = GMM(jnp.array([[0.0, -30.0, 5.0]] * 4), 50 * prior.means_BxKxd, prior.chol_BxKxdxd * jnp.array([1e-3, 1.0, 1e2])[None, :, None, None])
    for p in (prior, wild):
        out = f(params, p, [100 * y for y in ys], masks)
        w, mu, _ = (np.asarray(a, np.float64) for a in gmm_to_moments(out))
        assert np.all(w > 0) and np.allclose(w.sum(-1), 1, atol=1e-6)
        L = np.asarray(out.chol_BxKxdxd, np.float64)
        assert np.all(np.triu(L, 1) == 0) and np.all(np.diagonal(L, axis1=-2, axis2=-1) > 0)
        assert np.all(np.linalg.eigvalsh(L @ np.swapaxes(L, -1, -2)) > 0) and np.all(np.isfinite(mu))
        again = f(params, out, ys, masks)  # output family = input family: feed it back
        assert all(np.all(np.isfinite(np.asarray(a))) for a in again)


def test_untrained_model_returns_the_prior(setup):
    f, _, prior, _, ys, masks, init = setup
    _close(f(init, prior, ys, masks), prior, atol=1e-5)
    with jax.enable_x64(True):
        shapes = jax.eval_shape(lambda k: init_params(CFG, k, K=1), jax.random.key(5))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))  # x64 does not change param dtypes


def test_log_prob_matches_the_float64_theory():
    w, mu, cov = np.array([[0.2, 0.5, 0.3]]), np.array([[[0.0, 1.0], [2.0, -1.0], [-1.0, 0.5]]]), np.stack(
        [np.array([[1.0, 0.3], [0.3, 0.5]]), np.eye(2) * 0.2, np.array([[2.0, -0.5], [-0.5, 1.0]])])[None]
    theta = np.array([[0.7, -0.2]])
    got = float(gmm_log_prob(gmm_from_moments(w, mu, cov), jnp.asarray(theta, jnp.float32))[0])
    assert abs(got - float(gp.gmm_logpdf(w[0], mu[0], cov[0], theta)[0])) < 1e-5
    L = np.linalg.cholesky(cov[0])
    np.testing.assert_allclose(solve_lower(jnp.asarray(L), jnp.asarray(np.ones((3, 2)))),
                               np.linalg.solve(L, np.ones((3, 2, 1)))[..., 0], rtol=1e-6)


def test_wrong_number_of_observation_types(setup):
    _, params, prior, *_ = setup
    with pytest.raises(ValueError, match="^obs: allowed 2 observation types"):
        DistributionTransformer(CFG).apply(params, prior, [jnp.zeros((1, 1, 2))])


def test_meta_prior_samplers(meta_prior_batch):
    """Dir(1): E π_k = 1/K (SE √((K−1)/(K²(K+1)B))); counts in [n_min, n_max]; y − Hθ has covariance R."""
    B = 20_000
    prior, theta, ys, masks = meta_prior_batch
    w = np.exp(np.asarray(prior.logits_BxK))
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(w.mean(0), 1 / 3, atol=5 * np.sqrt(2 / (9 * 4 * B)))
    diag = np.diagonal(np.asarray(prior.chol_BxKxdxd), axis1=-2, axis2=-1)
    assert diag.min() >= MP.std_lo * (1 - 1e-6) and diag.max() <= MP.std_hi * (1 + 1e-6)
    n = np.asarray(masks[1]).sum(-1)
    assert set(np.unique(n)) == {0, 1, 2} and np.asarray(masks[0]).sum(-1).min() == 1
    eps = np.asarray(ys[0][:, 0]) - np.asarray(theta)
    np.testing.assert_allclose(np.cov(eps.T), np.array(OBS[0].R), atol=0.05)  # SE of a (co)variance ≈ 0.01


def test_exact_posterior_chains_the_observation_types():
    """Type 1 then type 2 equals one update with the stacked H = [H₁; H₂], R = blockdiag(R₁, R₂) (n = 1 each)."""
    prior, _, ys, masks = dtt.sample_batch(jax.random.key(0), mp=MP, obs_types=OBS, batch=5, n_fixed=1)
    pm = [np.asarray(a, np.float64) for a in gmm_to_moments(prior)]
    w, mu, cov, le = dtt.exact_posterior(pm, ys, masks, OBS)
    H = np.vstack([np.array(o.H) for o in OBS])
    R = np.zeros((3, 3))
    R[:2, :2], R[2:, 2:] = OBS[0].R, OBS[1].R
    y = np.concatenate([np.asarray(ys[0][:, :1], np.float64), np.asarray(ys[1][:, :1], np.float64)], -1)
    for a, b in zip((w, mu, cov, le), gp.gmm_posterior(*pm, y, H=H, R=R)):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_gmm_config_check():
    import ml_collections

    c = ml_collections.ConfigDict(dict(w=(0.5, 0.5), m=(0.0, 1.0), v=(1.0, 1.0)))
    dtt.check_gmm_config(c, "w", "m", "v")
    for key, bad in (("w", (0.7, 0.7)), ("w", (1.5, -0.5)), ("w", ()), ("m", (0.0,)), ("v", (1.0, 0.0))):
        c2 = ml_collections.ConfigDict(c.to_dict())
        c2[key] = bad
        with pytest.raises(ConfigError, match=f"^config.{key}="):
            dtt.check_gmm_config(c2, "w", "m", "v")


def test_one_query_attention_equals_the_broadcast_path():
    # a single query (1-component prior) takes the einsum path; with the same query twice (Q = 2) the
    # broadcast products run, and attention rows are independent of each other: the same output
    from models.distribution_transformer import Attention

    att = Attention(width=16, n_heads=4, param_dtype=jnp.float32)
    k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
    x, o = jax.random.normal(k1, (8, 1, 16)), jax.random.normal(k2, (8, 5, 16))
    mask = jnp.arange(5)[None, :] < jax.random.randint(k3, (8, 1), 1, 6)
    params = att.init(jax.random.key(0), x, o, mask)
    one = att.apply(params, x, o, mask)
    two = att.apply(params, jnp.concatenate([x, x], axis=1), o, mask)
    np.testing.assert_allclose(one[:, 0], two[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two[:, 1], two[:, 0], rtol=0, atol=0)
    assert float(jnp.std(one)) > 0.1   # a non-trivial output
