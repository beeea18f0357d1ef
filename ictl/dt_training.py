"""Training the Distribution Transformer (`models.distribution_transformer`) by prior-data NLL.

Each step draws, inside the jitted step (from the step's key):
  the prior   π ~ Dir(α·1_K), μ_k = c + u_k with c ~ N(0, center²I), u_k ~ N(0, spread²I),
              Σ_k = L_kL_kᵀ, L_k lower-triangular with diagonal s_j log-uniform in [std_lo, std_hi]
              and entries below it N(0, (½ s_i)²) (row i);
  the state   θ ~ Σ_k π_k N(μ_k, Σ_k);
  the data    per observation type t: n_t ~ U{n_min_t..n_max_t} observations y = H_tθ + N(0, R_t),
              padded to n_max_t and masked (or Student-t noise chol(R_t)·t_df when df > 0);
and the loss is E[−log q(θ | prior, data)] = E_data[KL(p(θ | data) ‖ q)] + E[H(p(θ | data))], so it
is minimised by the exact posterior (the second term does not depend on the model).

`exact_posterior` gives the reference: the observation types update the GMM one after the other
(`ictl.theory.gmm_posterior.gmm_posterior`, exact because the likelihood factorises over types).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ictl import rng
from ictl.config import check
from ictl.theory import gmm_posterior as gp
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models.distribution_transformer import GMM, DistributionTransformer, DTConfig, gmm_log_prob, init_params


OFF_DIAG = 0.5  # sd of a below-diagonal Cholesky entry relative to its row's diagonal


@dataclasses.dataclass(frozen=True)
class MetaPrior:
    K: int
    d: int
    center: float = 0.0      # sd of the common shift of all component means
    spread: float = 3.0      # sd of each component mean around the shift
    std_lo: float = 0.3      # diagonal of the components' Cholesky factors, log-uniform
    std_hi: float = 2.0
    alpha: float = 1.0       # Dirichlet concentration of the weights


@dataclasses.dataclass(frozen=True)
class ObsType:
    H: tuple                 # m × d, nested tuples (hashable: it is part of the jitted closure)
    R: tuple                 # m × m
    n_min: int = 1
    n_max: int = 1
    df: float = 0.0          # > 0: noise chol(R)·t_df (Student-t, no closed-form posterior); 0: Gaussian


def sample_prior(key: jax.Array, mp: MetaPrior, batch: int) -> GMM:
    """``batch`` priors from the meta-prior (float32 GMM tokens)."""
    kw, kc, km, ks, ko = jax.random.split(key, 5)
    if mp.alpha == 1.0:  # Dir(1, …, 1) = normalised Exp(1) draws (no gamma rejection loop)
        g = jax.random.exponential(kw, (batch, mp.K))
    else:
        g = jax.random.gamma(kw, mp.alpha, (batch, mp.K))
    logw = jnp.log(jnp.maximum(g, 1e-30))
    mu = mp.center * rng.normal(kc, (batch, 1, mp.d)) + mp.spread * rng.normal(km, (batch, mp.K, mp.d))
    s = jnp.exp(rng.uniform(ks, (batch, mp.K, mp.d), minval=math.log(mp.std_lo), maxval=math.log(mp.std_hi)))
    off = OFF_DIAG * rng.normal(ko, (batch, mp.K, mp.d, mp.d)) * s[..., :, None]
    k = jnp.arange(mp.d)
    chol = jnp.tril(off, -1).at[..., k, k].set(s)
    return GMM(jax.nn.log_softmax(logw, -1), mu, chol)


def sample_theta(key: jax.Array, prior: GMM) -> jax.Array:
    kc, kz = jax.random.split(key)
    comp_B = jax.random.categorical(kc, prior.logits_BxK)
    B, d = prior.means_BxKxd.shape[0], prior.means_BxKxd.shape[-1]
    L = prior.chol_BxKxdxd[jnp.arange(B), comp_B]
    return prior.means_BxKxd[jnp.arange(B), comp_B] + jnp.einsum("bij,bj->bi", L, rng.normal(kz, (B, d)))


def sample_obs(key: jax.Array, theta_Bxd, obs_types, *, n_fixed: int | None = None):
    """Per type: (y [B, n_max, m], mask [B, n_max]); n_fixed (<= every n_max) replaces the random count
    (the arrays keep n_max columns, so every count shares one compiled model call)."""
    ys, masks = [], []
    B = theta_Bxd.shape[0]
    for t, ot in enumerate(obs_types):
        kn, ke = jax.random.split(jax.random.fold_in(key, t))
        H = jnp.asarray(ot.H, jnp.float32)
        cR = jnp.asarray(np.linalg.cholesky(np.asarray(ot.R, np.float64)), jnp.float32)
        n_max = ot.n_max
        shape = (B, n_max, H.shape[0])
        eps = (jax.random.t(ke, ot.df, shape) if ot.df > 0 else rng.normal(ke, shape)) @ cR.T
        ys.append((theta_Bxd @ H.T)[:, None, :] + eps)
        n_B = (rng.randint(kn, (B,), ot.n_min, ot.n_max + 1) if n_fixed is None
               else jnp.full((B,), n_fixed))
        masks.append(jnp.arange(n_max)[None, :] < n_B[:, None])
    return ys, masks


@functools.partial(jax.jit, static_argnames=("mp", "obs_types", "batch", "n_fixed"))
def sample_batch(key: jax.Array, *, mp: MetaPrior, obs_types, batch: int, n_fixed: int | None = None):
    """(prior, θ, ys, masks) for ``batch`` cases, jitted as one program (held-out sets)."""
    kp, kt, ko = jax.random.split(key, 3)
    prior = sample_prior(kp, mp, batch)
    theta = sample_theta(kt, prior)
    ys, masks = sample_obs(ko, theta, obs_types, n_fixed=n_fixed)
    return prior, theta, ys, masks


def nll_loss_fn(model: DistributionTransformer, mp: MetaPrior, obs_types, batch: int):
    """loss_fn(params, key) → (mean −log q(θ_true), metrics) on a fresh batch drawn from ``key``."""

    def loss_fn(params, key):
        kp, kt, ko = jax.random.split(key, 3)
        prior = sample_prior(kp, mp, batch)
        theta = sample_theta(kt, prior)
        ys, masks = sample_obs(ko, theta, obs_types)
        prior, theta, ys, masks = shard_batch((prior, theta, ys, masks))
        q = model.apply(params, prior, ys, masks)
        nll = -jnp.mean(gmm_log_prob(q, theta))
        return nll, {"nll_prior": -jnp.mean(gmm_log_prob(prior, theta))}

    return loss_fn


def train_dt(cfg: DTConfig, mp: MetaPrior, obs_types, config, workdir: pathlib.Path, *, desc: str):
    """Trains with `ictl.train.fit` (config: seed, batch, lr, warmup, lr_end, train_steps, log_every,
    ckpt_every); returns (model, params, history, seconds)."""
    model = DistributionTransformer(cfg)
    key = jax.random.key(config.seed)
    tx = config_optimizer(config)
    params = jax.jit(functools.partial(init_params, cfg, K=mp.K))(jax.random.fold_in(key, 0))  # one compile
    state = TrainState.create(params=params, tx=tx)
    t0 = time.time()
    state, history = fit(state, make_train_step(nll_loss_fn(model, mp, obs_types, config.batch), tx),
                         key=jax.random.fold_in(key, 1), num_steps=config.train_steps, workdir=workdir,
                         log_every=config.log_every, ckpt_every=config.ckpt_every, desc=desc)
    return model, state.params, history, time.time() - t0


def exact_posterior(prior_moments, ys, masks, obs_types):
    """Float64 exact posterior (weights, means, covs, log evidence) of a batch of priors; masked
    observations are dropped, so every row of a batch must use the same count per type, valid ones
    first (as `sample_obs` makes them)."""
    w, mu, cov = (np.asarray(a, np.float64) for a in prior_moments)
    log_ev = np.zeros(w.shape[0])
    for y, mask, ot in zip(ys, masks, obs_types):
        if ot.df > 0:
            raise ValueError(f"obs_types: allowed Gaussian noise (df = 0) for the exact posterior; got df={ot.df}")
        mask = np.asarray(mask)
        n = mask.sum(-1)
        if not np.all(n == n[0]) or not np.all(mask[:, :int(n[0])]):
            raise ValueError("masks: allowed one observation count per type across the batch, valid ones first")
        w, mu, cov, le = gp.gmm_posterior(w, mu, cov, np.asarray(y, np.float64)[:, :int(n[0])],
                                          H=np.asarray(ot.H), R=np.asarray(ot.R))
        log_ev = log_ev + le
    return w, mu, cov, log_ev


def check_gmm_config(config, weights_key: str, means_key: str, vars_key: str) -> None:
    """ConfigError for a bad 1-D GMM in the config: K >= 1, weights >= 0 summing to 1, variances > 0,
    matching lengths."""
    w, mu, var = config[weights_key], config[means_key], config[vars_key]
    check(len(w) >= 1, weights_key, w, "K >= 1 weights")
    check(all(x >= 0 for x in w) and abs(sum(w) - 1) <= 1e-6, weights_key, w, "non-negative weights summing to 1")
    check(len(mu) == len(w), means_key, mu, f"{len(w)} means (one per weight in {weights_key})")
    check(len(var) == len(w), vars_key, var, f"{len(w)} variances (one per weight in {weights_key})")
    check(all(v > 0 for v in var), vars_key, var, "variances > 0 (a 1×1 covariance must be positive definite)")


def to_moments64(gmm: GMM):
    """GMM tokens → float64 NumPy (weights, means, covs = LLᵀ formed in float64) for the theory functions."""
    logits, means, L = (np.asarray(a, np.float64) for a in gmm)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True), means, L @ np.swapaxes(L, -1, -2)


def evaluate(apply, params, prior: GMM, theta, ys, masks, obs_types, *, key: jax.Array, kl_samples: int) -> dict:
    """Per held-out case (one observation count per type across the batch): KL(q‖p), KL(prior‖p) and
    KL(p‖q) by Monte Carlo, and −log of the true θ under q, the exact posterior p and the prior."""
    q = apply(params, prior, ys, masks)
    qm, pm = to_moments64(q), to_moments64(prior)
    ex = exact_posterior(pm, ys, masks, obs_types)[:3]
    k1, k2, k3 = jax.random.split(key, 3)
    th = np.asarray(theta, np.float64)[:, None, :]
    return {"kl_q": gp.kl_mc(k1, qm, ex, n_samples=kl_samples)[0],
            "kl_prior": gp.kl_mc(k2, pm, ex, n_samples=kl_samples)[0],
            "kl_fwd": gp.kl_mc(k3, ex, qm, n_samples=kl_samples)[0],
            "nll_q": -gp.gmm_logpdf(*qm, th)[:, 0], "nll_exact": -gp.gmm_logpdf(*ex, th)[:, 0],
            "nll_prior": -gp.gmm_logpdf(*pm, th)[:, 0], "q": qm, "exact": ex}


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))
