"""Raventós, Paul, Chen & Ganguli (2023), "Pretraining task diversity and the emergence of
non-Bayesian in-context learning for regression", Fig. 1/2 (also Panwar et al. 2024, the Bayesian
prism's finite pools): a sweep over the number M = 2^k of pretraining tasks. For each M a small GPT
is trained on noisy linear regression y = wᵀx + σε with w drawn from a fixed pool of M tasks
w_m ~ N(0, I_d), then compared with the two Bayes predictors: the discrete MMSE (posterior mean
under the uniform pool prior, `ictl.bayes.dmmse_posterior_mean`) and ridge with λ = σ² (posterior
mean under N(0, I_d), the prior the pool was drawn from). With few tasks the transformer should
track dMMSE (it memorises the pool and fails on fresh tasks); with many it should track ridge.

Metric (Raventós' ΔPMSE): the mean over prompts and context lengths k = 0..N−1 of
(ŷ_TF − ŷ_B)² / d for B ∈ {dMMSE, ridge}, on fresh tasks w ~ N(0, I); the ridge fraction
f = Δ_dMMSE / (Δ_dMMSE + Δ_ridge) is 0 for a perfect dMMSE copy and 1 for a perfect ridge copy.

Command: `ictl run prism_task_diversity` (`--config.log2_pools=1,2,3,5,7` is the default). Quick
scale: d = 3, σ = 0.5, 8 points, GPT 2L/2H/D = 32 (26k params), 4000 Adam steps (lr 3e-3, batch 64)
per pool, 1000 evaluation prompts. Runtime: 3 min 2 s wall measured on the shared 2-core CPU under
a load average of ≈ 6.5 (23–38 s of training per pool). d = 4 did not fit the budget: with 12
points and D = 64 the M ≥ 2^7 models stayed on the loss plateau (≈ d + σ²) after 2500 steps.
Measured (quick, seed 0), error/d at k = 7 on fresh tasks (transformer / dMMSE / ridge) and the
ridge fraction f: M = 2^1: 1.26 / 1.24 / 0.148, f = 0.07; 2^2: 1.21 / 1.03 / 0.148, f = 0.09;
2^3: 0.49 / 0.63 / 0.148, f = 0.45; 2^5: 0.36 / 0.37 / 0.148, f = 0.62; 2^7: 0.32 / 0.23 / 0.148,
f = 0.54. So the transformer is the dMMSE at M ≤ 2^2 and stops memorising between 2^2 and 2^3
(from 2^5 on its fresh-task error equals its pool error), but the large-M models are under-trained
(error ≈ 2× ridge's at k = 7), so "tracks ridge" is only partial (f ≈ 0.5–0.6). With 12k / 40k steps the
2^7 model reached 0.224 / 0.198 (f = 0.59 / 0.62): a clean ridge match needs ≳ 10^5 steps (an
extrapolation; docs/prism_task_diversity.md).
Claims (`result_rows`): f ≤ ½ at the smallest pool and ≥ ½ at the largest; the transformer within
5% of the zero predictor's error/d of dMMSE (smallest pool: pool and fresh prompts) and of ridge
(largest pool, fresh); fresh = pool error at the largest pool (4 MC SE). Quick (numbers above and
docs/prism_task_diversity.md): 5 of 6 reproduced; M = 2^7 fresh vs ridge is not (0.322 vs 0.148,
tolerance 0.054); f = 0.54 at 2^7 passes the ½ bar narrowly.
Paper scale (`--config.scale=paper`, accelerator; not run here): d = 8, 16 points, σ² = 0.25,
M = 2^1, 2^3, …, 2^15, 8 layers/8 heads/D = 256 (6.3M params), 500k steps of batch 128 (Raventós:
the transition near M ≈ 2^13 for d = 8, [recall]). Runtime estimate (not measured): ≈ 6 · 6.3M ·
128 · 32 tokens ≈ 0.15 TFLOP per step, assumed 3–10 ms per step on one H200 → ≈ 0.4–1.4 h per pool,
≈ 3.5–11 h for the 8 pools; the dMMSE evaluation at M = 2^15 is chunked over prompts (`_bayes_chunk`).
"""
from __future__ import annotations

import functools
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, Float

from experiments import prism_task_pool as ptp
from ictl import bayes
from ictl import evaluation as ev
from ictl.config import SCALES, check
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import function_classes as fc
from ictl.tasks import prism
from ictl.train import TrainState, config_optimizer, fit, make_train_step
from models.gpt import GPT, init_params, num_params

REPRODUCE = False
LEFT_OUT = "time budget: five trainings, ≈ 3 min at quick scale (the paper sweep 2^1…2^15 is an accelerator run)"
TITLE = "Raventós et al. task diversity: GPT on M = 2^k pool tasks, from dMMSE (few tasks) to ridge (many)"

MAX_LOG2_POOL = 20
DMMSE, RIDGE = "dMMSE (pool posterior mean)", "ridge λ=σ² (Gaussian posterior mean)"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    check(scale in SCALES, "scale", scale, f"one of {SCALES}")
    c = ptp.get_config("quick")
    del c["log2_pool"]
    c.scale = scale
    c.d, c.n_points, c.width = 3, 8, 32   # d = 4 / 12 points / D = 64 stayed on the loss plateau (M >= 2^7, 2500 steps)
    c.log2_pools = "1,2,3,5,7"
    c.train_steps = 4000
    c.ckpt_every = 4000
    c.eval_prompts = 1000
    c.n_boot = 200
    if scale == "paper":
        c.d, c.n_points, c.n_layers, c.n_heads, c.width = 8, 16, 8, 8, 256
        c.log2_pools = "1,3,5,7,9,11,13,15"
        c.lr, c.warmup, c.lr_end, c.train_steps, c.batch = 1e-4, 5000, 1.0, 500_000, 128
        c.log_every, c.ckpt_every, c.eval_prompts, c.n_boot = 1000, 10_000, 1280, 1000
    return c


def parse_pools(text) -> tuple[int, ...]:
    """'1,3,5' → (1, 3, 5): distinct integers in 0..MAX_LOG2_POOL, sorted; else ConfigError."""
    allowed = f"comma-separated distinct integers in 0..{MAX_LOG2_POOL}, like 1,3,5,7,9"
    check(isinstance(text, str), "log2_pools", text, allowed)
    parts = [p.strip() for p in text.split(",")]
    check(all(p.lstrip("-").isdigit() for p in parts), "log2_pools", text, allowed)
    ks = [int(p) for p in parts]
    check(all(0 <= k <= MAX_LOG2_POOL for k in ks) and len(set(ks)) == len(ks), "log2_pools", text, allowed)
    return tuple(sorted(ks))


def validate(config) -> None:
    parse_pools(config.log2_pools)
    probe = ml_collections.ConfigDict(config.to_dict())
    probe.log2_pool = 0           # the single-pool checks cover every other key
    ptp.validate(probe)


# ----------------------------------------------------------------------------- metric
def pred_distance(a_BxN: Float[Array, "B N"], b_BxN: Float[Array, "B N"], *, norm: float) -> float:
    """Δ = (1/(B·N)) Σ_b Σ_k (a[b, k] − b[b, k])² / norm: mean squared prediction gap (ΔPMSE)."""
    a, b = np.asarray(a_BxN, np.float64), np.asarray(b_BxN, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a/b: got shapes {a.shape}/{b.shape}; allowed equal [B, N]")
    return float(np.mean(np.square(a - b)) / norm)


def ridge_fraction(dist_dmmse: float, dist_ridge: float) -> float:
    """f = Δ_dMMSE / (Δ_dMMSE + Δ_ridge): 0 = the transformer is dMMSE, 1 = it is ridge."""
    return float(dist_dmmse / (dist_dmmse + dist_ridge))


# ----------------------------------------------------------------------------- pieces
def _bayes_chunk(n_points: int, pool_size: int) -> int:
    """Prompts per prefix_bayes call so the [b, k, M, N] dMMSE residuals stay ≲ 2^26 float64 (0.5 GB)."""
    return max(1, 2**26 // (n_points * n_points * pool_size))


def bayes_predictions(x_BxNxd, y_BxN, pool_Mxd, *, noise_var: float) -> dict[str, np.ndarray]:
    """dMMSE and ridge (λ = σ²) predictions [B, N] after k = 0..N−1 examples, float64."""
    B, N, _ = x_BxNxd.shape
    step = _bayes_chunk(N, pool_Mxd.shape[0])
    dm = [bayes.prefix_bayes(bayes.dmmse_posterior_mean, x_BxNxd[s:s + step], y_BxN[s:s + step],
                             pool_Mxd=pool_Mxd, noise_var=noise_var) for s in range(0, B, step)]
    rd = bayes.prefix_bayes(bayes.gaussian_posterior_mean, x_BxNxd, y_BxN, noise_var=noise_var)
    return {DMMSE: np.concatenate(dm, axis=0), RIDGE: rd}


def train_pool(config, pool_Mxd, log2_M: int, workdir: pathlib.Path):
    """Trains (or resumes) the GPT for one pool; keys fold in log2 M, so each pool is reproducible alone."""
    model = GPT(ptp.model_config(config))
    key = jax.random.fold_in(jax.random.key(config.seed), log2_M)
    params = init_params(model.cfg, jax.random.fold_in(key, 0))
    tx = config_optimizer(config)
    state = TrainState.create(params=params, tx=tx)
    t0 = time.time()
    state, history = fit(state, make_train_step(ptp.make_loss(model, pool_Mxd, config), tx),
                         key=jax.random.fold_in(key, 1), num_steps=config.train_steps, workdir=workdir / "train",
                         log_every=config.log_every, ckpt_every=config.ckpt_every,
                         steps_per_call=config.steps_per_call, desc=f"pool M=2^{log2_M}")
    return model, state.params, history, time.time() - t0


def _summarise(preds, y_BxN, config, key):
    """Error curves of every predictor and the transformer's ΔPMSE to each Bayes predictor."""
    curves = {name: ev.error_curve(jnp.asarray(p, jnp.float32), y_BxN, norm=config.d, key=key, n_boot=config.n_boot)
              for name, p in preds.items()}
    dist = {name: pred_distance(preds["transformer"], preds[name], norm=config.d) for name in (DMMSE, RIDGE)}
    return curves, dist


def _evaluate_pool(model, params, pool_Mxd, fresh, config, key):
    sig2 = config.noise_std**2
    p_pool = prism.sample_pool_prompts(jax.random.fold_in(key, 0), pool_Mxd, batch=config.eval_prompts,
                                       n_points=config.n_points, noise_std=config.noise_std)
    apply = functools.partial(jax.jit(model.apply), params)
    out = {}
    for part, (x, y) in (("pool", (p_pool.x, p_pool.y)), ("fresh", (fresh.x, fresh.y))):
        preds = {"transformer": np.asarray(ev.transformer_predictions(apply, x, y), np.float64),
                 **bayes_predictions(x, y, pool_Mxd, noise_var=sig2)}
        out[part] = _summarise(preds, y, config, jax.random.fold_in(key, 1 if part == "pool" else 2))
    return out


# ----------------------------------------------------------------------------- figures
def _plot(workdir, sweep, curves, config):
    ks = np.array([s["log2_M"] for s in sweep])
    k = config.n_points - 1
    sig2_d = config.noise_std**2 / config.d
    fig, axes = new_figure(3, width=4.4)
    for ax, part, where in ((axes[0, 0], "fresh", "fresh tasks w ~ N(0, I)"), (axes[0, 1], "pool", "pool tasks")):
        for name, mk, col in (("transformer", "o-", "C0"), (DMMSE, "s--", "C1"), (RIDGE, "^--", "C2")):
            ax.plot(ks, [s[part]["err"][name] for s in sweep], mk, color=col, ms=4, label=name)
        ax.axhline(sig2_d, color="k", ls=":", lw=0.8, label="noise floor σ²/d")
        ax.set(xlabel="log2 M (pretraining tasks)", ylabel=f"squared error / d at k = {k}", yscale="log",
               title=f"{where}, d = {config.d}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    for part, ls in (("fresh", "-"), ("pool", ":")):
        ax.plot(ks, [s[part]["dist"][DMMSE] for s in sweep], "s" + ls, color="C1", ms=4, label=f"Δ(TF, dMMSE), {part}")
        ax.plot(ks, [s[part]["dist"][RIDGE] for s in sweep], "^" + ls, color="C2", ms=4, label=f"Δ(TF, ridge), {part}")
    ax.set(xlabel="log2 M (pretraining tasks)", ylabel="mean (ŷ_TF − ŷ_Bayes)² / d over k", yscale="log",
           title="which Bayes predictor the transformer tracks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, workdir, "prism_task_diversity")

    fig, axes = new_figure(len(sweep), 2, width=3.4, height=2.9)
    for j, s in enumerate(sweep):
        for i, part in enumerate(("pool", "fresh")):
            ev.plot_curves(axes[i, j], curves[s["log2_M"]][part], logy=True,
                           title=f"M = 2^{s['log2_M']}, {part} prompts")
            axes[i, j].legend(fontsize=5)
    save_figure(fig, workdir, "prism_task_diversity_curves")


# ----------------------------------------------------------------------------- rows
FIDELITY = 0.05  # trained model vs a Bayes predictor: within 5% of the zero predictor's error (garg_linear)


def result_rows(sweep: list[dict], config) -> list[dict]:
    """Claims at the two ends of the sweep: the ridge fraction on the right side of ½ (the paper's
    regimes), the transformer within the fidelity target (5% of the zero predictor's error/d,
    (d + σ²)/d) of the Bayes predictor it should be (dMMSE for the smallest pool, on pool and fresh
    prompts: a memorising model fails like dMMSE; ridge for the largest), and its fresh-task error
    equal to its pool error for the largest pool (4 MC SE)."""
    k = config.n_points - 1
    tol = FIDELITY * (config.d + config.noise_std**2) / config.d
    fid = f"fidelity target (as garg_linear): within 5% of the zero predictor's error/d, {tol / FIDELITY:.3g}"
    lo, hi = sweep[0], sweep[-1]
    se_gap = 4 * float(np.hypot(hi["fresh"]["sem"]["transformer"], hi["pool"]["sem"]["transformer"]))
    return [
        row(f"M=2^{lo['log2_M']}, fresh tasks: ridge fraction Δ_dMMSE/(Δ_dMMSE+Δ_ridge) (0 = tracks dMMSE)", 0.0,
            lo["fresh"]["ridge_fraction"], "baseline", tol=0.5, claim="at_most",
            why="few tasks: closer to dMMSE than to ridge (f ≤ 0.5), Raventós' memorising regime",
            note=f"Δ(TF, dMMSE) = {lo['fresh']['dist'][DMMSE]:.3g}, Δ(TF, ridge) = {lo['fresh']['dist'][RIDGE]:.3g}; "
            "few tasks: the transformer should be closer to dMMSE (f < 0.5)"),
        row(f"M=2^{hi['log2_M']}, fresh tasks: ridge fraction Δ_dMMSE/(Δ_dMMSE+Δ_ridge) (1 = tracks ridge)", 1.0,
            hi["fresh"]["ridge_fraction"], "baseline", tol=0.5, claim="at_least",
            why="many tasks: closer to ridge than to dMMSE (f ≥ 0.5), Raventós' generalising regime",
            note=f"Δ(TF, dMMSE) = {hi['fresh']['dist'][DMMSE]:.3g}, Δ(TF, ridge) = {hi['fresh']['dist'][RIDGE]:.3g}; "
            "many tasks: the transformer should be closer to ridge (f > 0.5)"),
        row(f"M=2^{lo['log2_M']}, pool prompts: transformer error/d at k={k} vs dMMSE", lo["pool"]["err"][DMMSE],
            lo["pool"]["err"]["transformer"], "baseline", tol=tol, why=fid + " (dMMSE is Bayes on the pool)",
            note=f"ridge {lo['pool']['err'][RIDGE]:.3g}"),
        row(f"M=2^{lo['log2_M']}, fresh tasks: transformer error/d at k={k} vs dMMSE", lo["fresh"]["err"][DMMSE],
            lo["fresh"]["err"]["transformer"], "baseline", tol=tol, why=fid,
            note=f"a pool-memorising model fails like dMMSE; ridge {lo['fresh']['err'][RIDGE]:.3g}"),
        row(f"M=2^{hi['log2_M']}, fresh tasks: transformer error/d at k={k} vs ridge", hi["fresh"]["err"][RIDGE],
            hi["fresh"]["err"]["transformer"], "baseline", tol=tol, why=fid + " (ridge is Bayes for w ~ N(0, I))",
            note=f"dMMSE {hi['fresh']['err'][DMMSE]:.3g}"),
        row(f"M=2^{hi['log2_M']}: transformer error/d at k={k}, fresh tasks vs pool prompts (equal = no memorising)",
            hi["pool"]["err"]["transformer"], hi["fresh"]["err"]["transformer"], "baseline", tol=se_gap,
            why="4 Monte Carlo SE (independent fresh and pool prompts)",
            note=f"at M=2^{lo['log2_M']}: fresh {lo['fresh']['err']['transformer']:.3g} vs pool "
            f"{lo['pool']['err']['transformer']:.3g}"),
    ]


# ----------------------------------------------------------------------------- run
def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    load_start = os.getloadavg()
    key = jax.random.key(config.seed + 1000)
    fresh = fc.sample_prompts(jax.random.fold_in(key, 0), "noisy_linear", batch=config.eval_prompts,
                              n_points=config.n_points, d=config.d, noise_std=config.noise_std)
    k = config.n_points - 1
    sweep, curves = [], {}
    for log2_M in parse_pools(config.log2_pools):
        pool = prism.make_task_pool(config.pool_seed, log2_size=log2_M, d=config.d)
        model, params, history, secs = train_pool(config, pool, log2_M, workdir / f"pool_{log2_M:02d}")
        t0 = time.time()
        res = _evaluate_pool(model, params, pool, fresh, config, jax.random.fold_in(key, 100 + log2_M))
        curves[log2_M] = {part: res[part][0] for part in res}
        losses = [h["loss"] for h in history if "loss" in h]
        entry = {"log2_M": log2_M, "train_seconds": secs, "eval_seconds": time.time() - t0,
                 "last_loss": losses[-1] if losses else None}
        for part, (cs, dist) in res.items():
            entry[part] = {"err": {n: float(c.mean[k]) for n, c in cs.items()},
                           "sem": {n: float(c.sem[k]) for n, c in cs.items()},
                           "dist": dist, "ridge_fraction": ridge_fraction(dist[DMMSE], dist[RIDGE])}
        sweep.append(entry)
    _plot(workdir, sweep, curves, config)

    rows = result_rows(sweep, config)
    crossing = [s["log2_M"] for s in sweep if s["fresh"]["ridge_fraction"] > 0.5]
    write_results(workdir, rows, sweep=sweep, params=num_params(params), wall_seconds=time.time() - t_start,
                  load_average_start=load_start, load_average_end=os.getloadavg(),
                  first_ridge_like_log2_M=crossing[0] if crossing else None,
                  curves={str(m): {part: {n: c.mean.tolist() for n, c in cs.items()} for part, cs in v.items()}
                          for m, v in curves.items()})
    return rows
