"""Bandit environments and classic algorithms vs an independent plain-numpy loop; exact uniform regret.

The reference loop below recomputes every statistic from the raw history at every step (the
library updates sufficient statistics incrementally), uses np.linalg (inv, solve, cholesky) in
float64, and draws the same random numbers as the library by calling jax.random on the same keys
(fold_in(fold_in(key, b), t) for step t of instance b; fold_in(·, 1) for the expert).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.bandits import algorithms as alg
from ictl.bandits import envs, rollout as ro, theory


@functools.partial(jax.jit, static_argnums=1)
def _normal(key, n):
    return jax.random.normal(key, (n,), jnp.float64)


_uniform = jax.jit(lambda key: jax.random.uniform(key, dtype=jnp.float64))
_beta = jax.jit(alg.beta_sample)  # its distribution is tested against scipy below
_uniform2 = jax.jit(lambda key: jax.random.uniform(key, (2,), jnp.float64))
_split2 = jax.jit(lambda key: tuple(jax.random.split(key)))
_fold = jax.jit(jax.random.fold_in)


def _np_scores(name, X_nxd, r_n, a_n, feats_Axd, key, hp):
    A, d = feats_Axd.shape
    if name == "uniform":
        u = float(_uniform(key))
        return np.eye(A)[min(int(np.floor(u * A)), A - 1)]
    if name in ("linucb", "lin_greedy"):
        V = hp.ridge * np.eye(d) + X_nxd.T @ X_nxd
        Vinv = np.linalg.inv(V)
        theta = Vinv @ (X_nxd.T @ r_n)
        mean = feats_Axd @ theta
        if name == "lin_greedy":
            return mean
        return mean + hp.bonus * np.sqrt(np.einsum("ad,de,ae->a", feats_Axd, Vinv, feats_Axd))
    if name == "lin_ts":
        s2 = hp.noise_std ** 2
        P = np.eye(d) / hp.prior_var + X_nxd.T @ X_nxd / s2
        mu = np.linalg.solve(P, X_nxd.T @ r_n / s2)
        L = np.linalg.cholesky(P)
        z = np.asarray(_normal(key, d))
        return feats_Axd @ (mu + np.linalg.solve(L.T, z))
    n = np.array([np.sum(a_n == a) for a in range(A)], float)
    s = np.array([np.sum(r_n[a_n == a]) for a in range(A)])
    if name in ("greedy", "ucb"):
        if np.any(n == 0):
            return (n == 0).astype(float)  # the first unpulled action
        bonus = hp.ucb_scale * np.sqrt(2 * np.log(len(a_n)) / n) if name == "ucb" else 0.0
        return s / n + bonus
    if name == "beta_ts":
        return np.asarray(_beta(key, 1 + s, 1 + n - s))
    if name == "gauss_ts":
        s2 = hp.noise_std ** 2
        prec = 1 / hp.prior_var + n / s2
        return (hp.prior_mean / hp.prior_var + s / s2) / prec + np.asarray(
            _normal(key, A)) / np.sqrt(prec)
    raise AssertionError(name)


def np_rollout(spec, env, key, offline, share, expert, hp):
    """One instance, plain loop over t; returns actions, rewards, labels, per-step regret."""
    feats, means, noise = (np.asarray(v, np.float64) for v in (env.feats, env.means, env.noise))
    A, d = feats.shape
    acts, rews, labels = [], [], []
    for t in range(spec.horizon):
        k_t = _fold(key, t)
        hist = (feats[np.array(acts, int)].reshape(-1, d), np.array(rews, float), np.array(acts, int))
        if share == 0:
            a = int(np.argmax(_np_scores(offline, *hist, feats, k_t, hp)))
        else:
            k_mix, k_alg = _split2(k_t)
            u = np.asarray(_uniform2(k_mix))
            if u[0] < share:
                a = min(int(np.floor(u[1] * A)), A - 1)
            else:
                a = int(np.argmax(_np_scores(offline, *hist, feats, k_alg, hp)))
        if expert == "same":
            lab = a
        elif expert == "optimal":
            lab = int(np.argmax(means))
        else:
            lab = int(np.argmax(_np_scores(expert, *hist, feats, _fold(k_t, 1), hp)))
        r = float(noise[t, a] < means[a]) if spec.reward == "bernoulli" else means[a] + spec.noise_std * noise[t, a]
        acts.append(a)
        rews.append(r)
        labels.append(lab)
    acts = np.array(acts)
    return acts, np.array(rews), np.array(labels), means.max() - means[acts]


CASES = [  # (env, offline, uniform_share, expert): every algorithm, every env, the three label kinds
    ("linear", "linucb", 0.0, "lin_ts"),
    ("linear", "lin_greedy", 0.5, "optimal"),
    ("bernoulli", "beta_ts", 0.0, "ucb"),
    ("gaussian", "gauss_ts", 0.0, "greedy"),
    ("dpt_linear", "uniform", 0.0, "same"),
]


@pytest.mark.parametrize("env_name, offline, share, expert", CASES)
def test_algorithms_match_a_plain_numpy_loop(env_name, offline, share, expert):
    with jax.enable_x64(True):
        spec = envs.make_spec(env_name, horizon=24)
        hp = alg.params_for(spec)
        batch = envs.sample_bandits(jax.random.key(3), spec, 3, dtype=jnp.float64)
        key = jax.random.key(7)
        tr = ro.trajectories_jit(spec, batch, key, offline=offline, uniform_share=share, expert=expert, hp=hp)
        reg = np.asarray(ro.regret_of(batch, tr.actions))
        for b in range(3):
            env_b = jax.tree_util.tree_map(lambda v: v[b], batch)
            a, r, lab, rg = np_rollout(spec, env_b, jax.random.fold_in(key, b), offline, share, expert, hp)
            np.testing.assert_array_equal(np.asarray(tr.actions[b]), a)
            np.testing.assert_array_equal(np.asarray(tr.labels[b]), lab)
            np.testing.assert_allclose(np.asarray(tr.rewards[b]), r, rtol=0, atol=1e-12)
            np.testing.assert_allclose(reg[b], rg, rtol=0, atol=1e-12)
        # the run is not degenerate: several distinct actions, some exploited
        assert len(np.unique(np.asarray(tr.actions))) >= 2


def test_beta_sampler_matches_scipy():
    from scipy import stats

    n = 40_000
    a = jnp.repeat(jnp.array([1.0, 1.0, 3.0, 40.0]), n)
    b = jnp.repeat(jnp.array([1.0, 7.0, 2.0, 160.0]), n)
    x = np.asarray(jax.jit(alg.beta_sample)(jax.random.key(0), a, b)).reshape(4, n)
    for i, (ai, bi) in enumerate([(1, 1), (1, 7), (3, 2), (40, 160)]):
        ks = stats.kstest(x[i], stats.beta(ai, bi).cdf)
        assert ks.statistic < 1.63 / np.sqrt(n)  # the KS 1% critical value
    assert np.all((x > 0) & (x < 1))


def test_env_samplers_and_bad_specs():
    spec = envs.make_spec("dpt_linear")
    b = envs.sample_bandits(jax.random.key(0), spec, 4)
    assert b.feats.shape == (4, 10, 2) and b.noise.shape == (4, 200, 10)
    np.testing.assert_array_equal(b.feats[0], b.feats[3])  # fixed arms across episodes
    np.testing.assert_allclose(b.means, jnp.einsum("bad,bd->ba", b.feats, b.theta), rtol=1e-6)
    lin = envs.sample_bandits(jax.random.key(0), envs.make_spec("linear"), 4)
    assert not np.allclose(lin.feats[0], lin.feats[1])  # a fresh action set per episode
    assert np.all(np.abs(lin.feats) <= 1) and np.all((lin.theta >= 0) & (lin.theta <= 1))
    # a batch's instances do not depend on the batch size
    np.testing.assert_array_equal(envs.sample_bandits(jax.random.key(0), envs.make_spec("linear"), 2).theta,
                                  lin.theta[:2])
    for kw, word in [(dict(name="nope"), "env"), (dict(name="linear", horizon=0), "horizon"),
                     (dict(name="linear", noise_std=-1.0), "noise_std"),
                     (dict(name="bernoulli", n_actions=7, d=5), "n_actions"),
                     (dict(name="bernoulli", noise_std=0.3), "noise_std")]:
        with pytest.raises(ValueError, match=word):
            envs.make_spec(**kw)
    with pytest.raises(ValueError, match="algorithm"):
        alg.check_algorithm("beta_ts", envs.make_spec("gaussian"))
    with pytest.raises(ValueError, match="algorithm"):
        alg.check_algorithm("nope", envs.make_spec("gaussian"))
    with pytest.raises(ValueError, match="n_actions"):
        ro.trajectories(envs.make_spec("linear", n_actions=8), lin, jax.random.key(0), offline="uniform")


def test_uniform_regret_exact_value_quadrature_and_rollouts():
    spec = envs.make_spec("linear")
    exact = theory.uniform_regret(spec)
    coarse = theory.uniform_regret(spec, n_theta=4, n_y=32)
    assert abs(exact - coarse) < 1e-3  # the tensor Gauss–Legendre rule has converged
    assert 215 < exact < 230  # Lin et al. quote ≈ 230 for uniform play at T = 200
    # Rollouts of uniform play: per-step regret is stationary, E = exact/200 at every t, so 200k
    # one-step rollouts (fresh instance each, the sampler's distribution) check it to ≈ 0.7%.
    one = envs.make_spec("linear", horizon=1)
    batch = envs.sample_bandits(jax.random.key(11), one, 200_000)
    reg = 200 * np.asarray(ro.regret_of(batch, ro.trajectories_jit(one, batch, jax.random.key(12),
                                                                     offline="uniform").actions), np.float64)[:, 0]
    se = reg.std() / np.sqrt(reg.size)
    assert 0.3 < se < 0.45  # per-rollout std ≈ 163 (in units of 200 steps)
    assert abs(reg.mean() - exact) < 4 * se  # 4 SE ≈ 1.5, 0.7% of the value
    # multi-armed: T (A/(A+1) − 1/2)
    assert theory.uniform_regret(envs.make_spec("bernoulli")) == pytest.approx(200 * (5 / 6 - 0.5))
