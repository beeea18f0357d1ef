"""Panwar, Ahuja & Goyal (2024), "In-context learning through the Bayesian prism": a small GPT
trained on three task priors follows each prior's Bayes posterior mean (BPM), not a generic
regression algorithm. One panel per family, error vs in-context examples k, 90% bootstrap bands:

    fourier  1-d x ~ U[−5, 5], f(x) = cᵀφ(x) with Fourier features of frequencies ≤ n_max,
             c ~ N(0, s² I), s² = 1/(1 + n_max), y = f(x) + σε (`ictl.tasks.prism.sample_fourier`).
             BPM = ridge on φ(x) with λ = σ²/s²; the "linear fit" is ridge (λ = linear_lam) on
             (1, x): a transformer doing linear regression would sit on it. Error: squared error
             (norm 1; E f² = 1, so the zero predictor scores 1 + σ²).
    gmm      x ~ N(0, I_d), w ~ ½N(+3e₁, I) + ½N(−3e₁, I) (Panwar's Gaussian-mixture prior).
             BPM = `ictl.bayes.gmm_posterior_mean`; compared with ridge λ = σ² (the posterior
             mean of N(0, I)) and with the moment-matched Gaussian N(0, diag(1 + 9, 1, …)) — the
             best predictor linear in y. Error: squared error / d.
    mixture  half the prompts dense regression w ~ N(0, I_d), half w ~ N(0, (d/s)·diag(1_s, 0))
             on the first s coordinates (same E y²). BPM = `ictl.bayes.family_posterior_mean`,
             the family-posterior-weighted mix of the two families' posterior means (closed-form
             Gaussian marginal likelihoods); each single-family posterior mean is a baseline.
             Error: squared error / d.

Expected (theory): each BPM is the minimum-error predictor on its own prompts, so a transformer
that has learned the prior matches it and beats the single-prior baselines where they differ
(small k for gmm and mixture, all k ≥ 2 for the linear fit on Fourier series).

Command: `ictl run prism_families` (`--config.families=gmm` runs one family). Quick scale: a
2-layer/2-head/D = 64 GPT per family, 4000 Adam steps (lr 3e-3, cosine to 3e-4) of batch 64;
fourier n_max = 2, 12 points, σ = 0.1; gmm and mixture d = 2, 8 points, σ = 0.5, support s = 1.
Runtime: 3.9 min wall for all three trainings + evaluation (train 90 / 64 / 65 s; a second run
4.3 min, bitwise-equal curves), measured on the shared 2-core CPU at load average 2–5.
Measured (quick, seed 0; 1280 prompts; docs/prism_families.md has the full tables):
  fourier  error at k = 1 / 3 / 11: transformer 0.81 / 0.57 / 0.14, Bayes 0.79 / 0.47 / 0.021,
           linear fit 1.38 / 1.08 / 0.62 — the transformer is far from linear regression;
  gmm      error/d at k = 1 / 2 / 3: transformer 2.02 / 1.41 / 1.03, Bayes 1.68 / 0.73 / 0.35,
           ridge 3.17 / 1.48 / 0.75 — below ridge at k = 1 only, then stuck near 1;
  mixture  error/d at k = 1 / 2 / 7: transformer 0.71 / 0.51 / 0.52, Bayes 0.66 / 0.40 / 0.16,
           dense-only 0.74 / 0.44 / 0.17, support-only 0.76 / 0.61 / 0.43.
At this scale the transformers are still training: they track the Bayes curve over the first
one to three examples only.
Claims (`family_rows`): the transformer within 5% of the zero predictor's error of the BPM at
k ∈ {1, 2, 3, N/2, N − 1} (garg_linear's fidelity target; 0.05 for fourier, 0.28 for gmm, 0.056 for
mixture), and for fourier at most half the linear fit's error at k = N − 1. From the numbers above
4 of 16 reproduced at quick scale: fourier k = 1 (0.81 vs 0.79), k = 2 (not tabulated; "near the BPM
for k ≤ 2" in docs/prism_families.md) and the linear-fit ratio (0.23), mixture k = 1 (0.706 vs 0.657);
every later k and every gmm row are not reproduced (e.g. gmm k = 1: 2.02 vs 1.68). Paper scale (`--config.scale=paper`, an accelerator run, not run
here): Garg's 12-layer/8-head/256 GPT, n_max = 10 (Panwar's maximum frequency), d = 10, 41
points, Adam 1e-4, 500k steps per family; the sizes other than n_max and the ±3e₁ prior are an
assumption ([recall], not in REFERENCES.md). Estimated ≈ 1–2 h per family on one H100/H200
(the docs/garg.md estimate for this model, not measured).
"""
from __future__ import annotations

import functools
import pathlib
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ictl import bayes
from ictl import evaluation as ev
from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import function_classes as fc
from ictl.tasks import prism
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models.gpt import GPT, GPTConfig, init_params, num_params

REPRODUCE = False
LEFT_OUT = "time budget: three trainings, ≈ 4 min at quick scale; `make run` is already ≈ 13 min"
TITLE = "Panwar et al. Bayesian prism: GPT on Fourier series, a GMM task prior and a family mixture vs Bayes"
FAMILIES = ("fourier", "gmm", "mixture")


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.families = "fourier,gmm,mixture"
    c.fourier_n_max = 2             # n_max = 3 stayed at error 0.76 after 1500 steps (linear fit 0.71)
    c.fourier_points = 12
    c.fourier_noise_std = 0.1
    c.linear_lam = 1.0            # ridge λ of the linear fit on (1, x); λ = σ² = 0.01 blew up at k = 2
    c.d = 2                       # d = 3, 3000 steps: gmm/mixture still on the plateau (error/d ≈ 1.5/1.0)
    c.n_points = 8                # gmm and mixture prompts
    c.noise_std = 0.5             # gmm and mixture
    c.gmm_shift = 3.0
    c.support = 1                 # mixture: the second family lives on the first `support` coordinates
    c.dense_prob = 0.5            # mixture: P(dense family)
    c.n_layers = 2
    c.n_heads = 2
    c.width = 64
    c.batch = 64
    c.lr = 3e-3
    c.warmup = 200
    c.lr_end = 0.1
    c.train_steps = 4000          # per family
    c.eval_prompts = 1280
    c.n_boot = 500
    c.log_every = 250
    c.ckpt_every = 4000
    if scale == "paper":
        c.fourier_n_max, c.fourier_points, c.d, c.n_points = 10, 41, 10, 41
        c.n_layers, c.n_heads, c.width = 12, 8, 256
        c.lr, c.warmup, c.lr_end, c.train_steps = 1e-4, 5000, 1.0, 500_000
        c.log_every, c.ckpt_every = 1000, 10_000
    return c


def family_list(config) -> list[str]:
    return [f.strip() for f in str(config.families).split(",") if f.strip()]


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    fams = family_list(config)
    check(len(fams) >= 1 and all(f in FAMILIES for f in fams) and len(set(fams)) == len(fams), "families",
          config.families, f"a comma-separated subset of {','.join(FAMILIES)}")
    check_ints_at_least_one(config, "fourier_points", "d", "n_points", "support", "n_layers", "n_heads", "width",
                            "batch", "train_steps", "eval_prompts", "n_boot")
    check(isinstance(config.fourier_n_max, int) and 1 <= config.fourier_n_max <= prism.FOURIER_MAX_FREQ,
          "fourier_n_max", config.fourier_n_max, f"an integer in 1..{prism.FOURIER_MAX_FREQ}")
    check(config.fourier_points >= 2, "fourier_points", config.fourier_points, "an integer >= 2")
    check(config.n_points >= 2, "n_points", config.n_points, "an integer >= 2")
    check(config.support <= config.d, "support", config.support, f"an integer in 1..d={config.d}")
    check_positive(config, "fourier_noise_std", "noise_std", "linear_lam", "lr", "gmm_shift")
    check(0 < config.dense_prob < 1, "dense_prob", config.dense_prob, "a number in (0, 1)")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(config.eval_prompts >= 2, "eval_prompts", config.eval_prompts, "an integer >= 2")


# ----------------------------------------------------------------------------- the three families
class Family(NamedTuple):
    d_in: int
    n_points: int
    norm: float                                   # error normaliser (1 for fourier, d otherwise)
    sample: Callable                              # (key, batch) -> (x_BxNxd, y_BxN)
    predictors: Callable                          # (x, y) -> {name: ŷ [B, N] float64}, BPM first
    title: str


def _x64(a):
    return jnp.asarray(np.asarray(a), jnp.float64)


def fourier_family(config) -> Family:
    n_max, sig = config.fourier_n_max, config.fourier_noise_std
    s2 = prism.fourier_coef_std(n_max) ** 2

    def sample(key, batch):
        p = prism.sample_fourier(key, batch=batch, n_points=config.fourier_points, n_max=n_max, noise_std=sig)
        return p.x, p.y

    def predictors(x, y):
        with jax.enable_x64(True):
            x64 = _x64(x)
            phi = np.asarray(prism.fourier_features(x64, n_max=n_max))
            lin = np.asarray(jnp.concatenate([jnp.ones_like(x64), x64], axis=-1))
        p = 2 * n_max + 1
        return {
            "Bayes: ridge on Fourier features": bayes.prefix_bayes(
                bayes.gaussian_posterior_mean, phi, y, noise_var=sig**2, prior_cov_dxd=s2 * np.eye(p)),
            f"linear fit: ridge on (1, x), λ={config.linear_lam:g}": bayes.prefix_bayes(
                bayes.gaussian_posterior_mean, lin, y, noise_var=config.linear_lam),
        }

    return Family(1, config.fourier_points, 1.0, sample, predictors,
                  f"Fourier series, n_max = {n_max}, σ = {sig:g} (error, norm 1)")


def gmm_family(config) -> Family:
    d, sig, shift = config.d, config.noise_std, config.gmm_shift

    def sample(key, batch):
        p = prism.sample_gmm_linear(key, batch=batch, n_points=config.n_points, d=d, shift=shift, noise_std=sig)
        return p.x, p.y

    def predictors(x, y):
        matched = np.diag([1 + shift**2] + [1.0] * (d - 1))
        return {
            "Bayes: GMM posterior mean": bayes.prefix_bayes(
                bayes.gmm_posterior_mean, x, y, means_Cxd=np.asarray(prism.gmm_means(d, shift=shift)),
                noise_var=sig**2),
            "ridge λ=σ² (N(0, I) posterior mean)": bayes.prefix_bayes(
                bayes.gaussian_posterior_mean, x, y, noise_var=sig**2),
            "moment-matched Gaussian posterior mean": bayes.prefix_bayes(
                bayes.gaussian_posterior_mean, x, y, noise_var=sig**2, prior_cov_dxd=matched),
        }

    return Family(d, config.n_points, float(d), sample, predictors,
                  f"GMM prior ½N(±{shift:g}e₁, I), d = {d}, σ = {sig:g} (error / d)")


def mixture_covs(config) -> np.ndarray:
    """[2, d, d]: the dense family's I_d and the support family's (d/s)·diag(1_s, 0)."""
    v = np.asarray(prism.support_prior_var(config.d, config.support), np.float64)
    return np.stack([np.eye(config.d), np.diag(v)])


def mixture_family(config) -> Family:
    d, sig, n = config.d, config.noise_std, config.n_points
    v_d = prism.support_prior_var(d, config.support)
    samplers = {"dense": functools.partial(prism.sample_gaussian_linear, n_points=n, d=d, noise_std=sig),
                "support": functools.partial(prism.sample_gaussian_linear, n_points=n, d=d, prior_var=v_d,
                                             noise_std=sig)}
    probs = [config.dense_prob, 1 - config.dense_prob]

    def sample(key, batch):
        p, _ = prism.sample_family_mixture(key, samplers, probs, batch=batch)
        return p.x, p.y

    def predictors(x, y):
        covs, means = mixture_covs(config), np.zeros((2, d))
        fam = functools.partial(bayes.prefix_bayes, bayes.family_posterior_mean, x, y, noise_var=sig**2)
        return {
            "Bayes: family-mixture posterior mean": fam(means_Cxd=means, covs_CxDxD=covs,
                                                        log_weights_C=np.log(np.asarray(probs))),
            "dense family only (ridge λ=σ²)": fam(means_Cxd=means[:1], covs_CxDxD=covs[:1]),
            f"support-{config.support} family only": fam(means_Cxd=means[1:], covs_CxDxD=covs[1:]),
        }

    return Family(d, n, float(d), sample, predictors,
                  f"mixture: dense N(0, I) + support-{config.support} family, d = {d} (error / d)")


BUILDERS = {"fourier": fourier_family, "gmm": gmm_family, "mixture": mixture_family}


# ----------------------------------------------------------------------------- training and evaluation
def make_loss(model: GPT, fam: Family, config):
    """Squared error of the predictions at every x token on fresh prompts of the family."""

    def loss_fn(params, key):
        x, y = shard_batch(fam.sample(key, config.batch))
        pred_BxN = model.apply(params, fc.interleave(x, y), x_only=True)
        loss = jnp.mean(jnp.square(pred_BxN - y))
        return loss, {"err_norm": loss / fam.norm}

    return loss_fn


def train(name: str, fam: Family, config, workdir: pathlib.Path):
    cfg = GPTConfig(d_in=fam.d_in, max_tokens=2 * fam.n_points, n_layers=config.n_layers,
                    n_heads=config.n_heads, width=config.width)
    model = GPT(cfg)
    key = jax.random.fold_in(jax.random.key(config.seed), FAMILIES.index(name))
    params = init_params(cfg, jax.random.fold_in(key, 0))
    tx = config_optimizer(config)
    state = TrainState.create(params=params, tx=tx)
    t0 = time.time()
    state, history = fit(state, make_train_step(make_loss(model, fam, config), tx), key=jax.random.fold_in(key, 1),
                         num_steps=config.train_steps, workdir=workdir / f"train_{name}",
                         log_every=config.log_every, ckpt_every=config.ckpt_every, desc=f"prism {name}")
    return model, state.params, history, time.time() - t0


def evaluate(model, params, fam: Family, config, key) -> dict[str, ev.Curve]:
    """Curves of the transformer, the BPM and the baselines on fresh prompts of the family."""
    x, y = jax.jit(fam.sample, static_argnums=1)(jax.random.fold_in(key, 0), config.eval_prompts)
    apply = functools.partial(jax.jit(model.apply), params)
    preds = {"transformer": ev.transformer_predictions(apply, x, y), **fam.predictors(x, y)}
    kb = jax.random.fold_in(key, 1)
    return {m: ev.error_curve(jnp.asarray(p, jnp.float32), y, norm=fam.norm, key=kb, n_boot=config.n_boot)
            for m, p in preds.items()}


def report_ks(n: int) -> list[int]:
    return sorted({1, 2, 3, n // 2, n - 1})


FIDELITY = 0.05  # trained model vs the BPM: within 5% of the zero predictor's error (garg_linear's 0.05)


def zero_error(name: str, config) -> float:
    """The zero predictor's error in the family's units (E y² / norm): fourier 1 + σ² (E f² = 1),
    gmm (shift² + d + σ²)/d (E‖w‖² = shift² + d), mixture (d + σ²)/d (E‖w‖² = d in both families)."""
    if name == "fourier":
        return 1.0 + config.fourier_noise_std**2
    shift2 = config.gmm_shift**2 if name == "gmm" else 0.0
    return (shift2 + config.d + config.noise_std**2) / config.d


def family_rows(name: str, curves: dict[str, ev.Curve], n: int, zero_err: float = 1.0) -> list[dict]:
    """The transformer against the family's Bayes posterior mean at a few k (fidelity target: within
    5% of the zero predictor's error ``zero_err``); for Fourier series also its ratio to the linear fit
    (Panwar et al.: the transformer does not regress linearly, here: at most half the linear fit's error)."""
    names = list(curves)
    tf, bpm_name = curves["transformer"], names[1]
    bpm, others = curves[bpm_name], names[2:]
    tol = FIDELITY * zero_err
    rows = []
    for k in report_ks(n):
        other = "; ".join(f"{o} {curves[o].mean[k]:.3g}" for o in others)
        rows.append(row(f"{name}: transformer error at k={k} vs Bayes posterior mean", bpm.mean[k], tf.mean[k],
                        "baseline", tol=tol, why=f"fidelity target (as garg_linear): within 5% of the zero "
                                                 f"predictor's error {zero_err:.3g}",
                        note=f"transformer 90% band [{tf.lo[k]:.3g}, {tf.hi[k]:.3g}]; "
                        f"Bayes SE {bpm.sem[k]:.2g}; {other}"))
    if name == "fourier":
        lin = curves[others[0]]
        rows.append(row(f"{name}: transformer / linear fit error at k={n - 1}", 0.0, tf.mean[n - 1] / lin.mean[n - 1],
                        "baseline", tol=0.5, claim="at_most",
                        why="Panwar et al.: the transformer follows the Fourier BPM, not linear regression "
                            "(here: at most half the linear fit's error)", note=f"{others[0]} {lin.mean[n - 1]:.3g}"))
    return rows


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fams = family_list(config)
    fig, axes = new_figure(len(fams), width=4.8)
    rows, extra = [], {"train_seconds": {}, "first_loss": {}, "last_loss": {}, "curves": {}, "table": {}}
    t_all = time.time()
    for i, name in enumerate(fams):
        fam = BUILDERS[name](config)
        model, params, history, secs = train(name, fam, config, workdir)
        curves = evaluate(model, params, fam, config, jax.random.fold_in(jax.random.key(config.seed + 1000), i))
        ev.plot_curves(axes[0, i], curves, title=fam.title, logy=True,
                       ylabel="squared error" if fam.norm == 1 else "squared error / d")
        rows += family_rows(name, curves, fam.n_points, zero_error(name, config))
        losses = [h["loss"] for h in history if "loss" in h]
        extra["train_seconds"][name] = secs
        extra["first_loss"][name] = losses[0] if losses else None
        extra["last_loss"][name] = losses[-1] if losses else None
        extra["curves"][name] = {m: {"mean": c.mean.tolist(), "lo": c.lo.tolist(), "hi": c.hi.tolist(),
                                     "sem": c.sem.tolist()} for m, c in curves.items()}
        extra["table"][name] = ev.curves_table(curves)
        extra.setdefault("params", {})[name] = num_params(params)
    save_figure(fig, workdir, "prism_families")
    write_results(workdir, rows, families=fams, total_seconds=time.time() - t_all, **extra)
    return rows
