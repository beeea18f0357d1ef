"""PFN training: the context-size distribution, the loss at init, a short end-to-end `fit`."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm

from ictl import pfn_training as pt
from ictl.tasks import gp_prior
from ictl.train import TrainState, fit, make_train_step
from models.pfn import PFN, PFNConfig, init_params
from objectives import bar_distribution as bd


def test_context_size_distribution():
    """P(n) = (1/(N − n)) / H_N, n = 0..N−1 (H_N the harmonic number); 40k draws within 4 SE."""
    N, M = 10, 40_000
    w = pt.context_size_weights(N)
    np.testing.assert_allclose(w, 1 / (N - np.arange(N)) / np.sum(1 / np.arange(1, N + 1)), rtol=1e-12)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: pt.sample_context_size(k, N)))(jax.random.split(jax.random.key(0), M)))
    freq = np.bincount(draws, minlength=N) / M
    assert np.all(np.abs(freq - w) <= 4 * np.sqrt(w * (1 - w) / M))
    with pytest.raises(ValueError, match="n_points"):
        pt.context_size_weights(1)


def test_loss_at_init_is_the_prior_marginal_nll():
    """Zero read-out → uniform mass on equal-mass buckets of N(0, s + noise): every query's loss is the
    bar NLL of the prior marginal, ½ ln(2πe·1.0001) + discretisation (≈ 0.006 nats for K = 100 from
    exact quantiles), whatever n is. MC SE ≤ 0.72/√(B·1) per step; 4 steps averaged."""
    K, N, B = 100, 12, 256
    sd = math.sqrt(1.0 + 1e-4 + 1e-6)
    inner = sd * norm.ppf(np.arange(1, K) / K)
    borders = np.concatenate([[inner[0] - (inner[1] - inner[0]) * 4], inner, [inner[-1] + (inner[-1] - inner[-2]) * 4]])
    cfg = PFNConfig(d_in=2, n_layers=1, n_heads=2, width=16, num_buckets=K)
    model = PFN(cfg)
    sample = functools.partial(gp_prior.sample_gp, batch=B, n_points=N, d=2)
    loss_fn = jax.jit(pt.make_loss_fn(model, sample, n_points=N, borders=borders))
    params = _init(cfg)
    losses = [float(loss_fn(params, jax.random.key(i))[0]) for i in range(4)]
    # the exact expectation for these borders (uniform probs 1/K; tails: half-normals)
    y = np.random.default_rng(0).normal(0, sd, 400_000).astype(np.float32)
    expected = -float(jax.jit(lambda b, y: jnp.mean(bd.log_prob(jnp.zeros(K), b, y)))(borders.astype(np.float32), y))
    assert expected == pytest.approx(0.5 * math.log(2 * math.pi * math.e * sd**2), abs=0.02)
    assert np.mean(losses) == pytest.approx(expected, abs=4 * 0.72 / math.sqrt(4 * B))


def test_gaussian_head_loss_is_the_gaussian_nll():
    """The Gaussian-head ablation's loss term: log q(y) = log N(y; mean, exp(log-variance)) (scipy)."""
    rng = np.random.default_rng(1)
    out = rng.normal(size=(3, 5, 2)).astype(np.float32)
    y = rng.normal(size=(3, 5)).astype(np.float32)
    got = jax.jit(functools.partial(pt.head_log_prob, head="gaussian"))(out, y)
    want = norm.logpdf(y, loc=out[..., 0], scale=np.exp(0.5 * out[..., 1].astype(np.float64)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _init(cfg, seed=0):
    """`init_params` in one jitted call (eager flax init compiles one program per op)."""
    return jax.jit(functools.partial(init_params, cfg))(jax.random.key(seed))


@pytest.mark.slow
def test_short_training_learns_from_the_context_without_leaks(tmp_path):
    """1-D RBF prior, N = 11: after 300 steps the NLL at n = 5 falls well below the prior's 1.42,
    and is nowhere below the exact GP's beyond 4 paired MC standard errors."""
    N, K = 11, 64
    prior = functools.partial(gp_prior.sample_gp, n_points=N, d=1, lengthscale=0.6, noise=1e-2)
    draw = jax.jit(functools.partial(prior, batch=256))      # one compile: the border samples and the test datasets
    borders = bd.borders_from_samples(np.asarray(draw(jax.random.key(9)).y), K)   # 2816 prior y's, 44 a bucket
    cfg = PFNConfig(d_in=1, n_layers=2, n_heads=2, width=32, num_buckets=K)
    model = PFN(cfg)
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, 300, 3e-4))
    step = make_train_step(pt.make_loss_fn(model, functools.partial(prior, batch=32), n_points=N, borders=borders), tx)
    state = jax.jit(lambda p: TrainState.create(params=p, tx=tx))(_init(cfg))
    state, hist = fit(state, step, key=jax.random.key(1), num_steps=300, workdir=tmp_path, log_every=100,
                      ckpt_every=300, steps_per_call=100)
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.3
    ev = draw(jax.random.key(5))
    n_list = [0, 5]
    pfn = np.nanmean(pt.nll_over_context_sizes(model, state.params, ev.x, ev.y, n_list, borders=borders), axis=2)
    ex = np.nanmean(pt.exact_nll_over_context_sizes(ev.x, ev.y, n_list, kernel="rbf", lengthscale=0.6,
                                                    outputscale=1.0, noise=ev.noise), axis=2)
    se = (pfn - ex).std(axis=1, ddof=1) / math.sqrt(256)
    assert np.all((pfn - ex).mean(axis=1) > -4 * se)
    assert pfn[1].mean() < 0.5 and ex[1].mean() < pfn[1].mean() + 0.5
