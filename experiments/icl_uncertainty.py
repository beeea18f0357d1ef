"""In-context uncertainty quantification: a GPT with a second read-out for log σ² (`models.gpt_uq`),
trained with the Gaussian NLL (`objectives.gaussian_nll`) on noisy linear regression
y = wᵀx + σε, w ~ N(0, I_d), x ~ N(0, I_d), against the exact posterior predictive
(`ictl.bayes.gaussian_predictive`):

    y_q | D_k ~ N(x_qᵀμ_post, σ² + x_qᵀ Σ_post x_q),
    Σ_post = (I + XᵀX/σ²)⁻¹,  μ_post = Σ_post Xᵀy/σ².

Metrics per k (examples before the query): the NLL of y_q (exact predictive = the Bayes
optimum), the mean of σ̂²/σ*² (1 if the variance read-out is exact), the squared distance of μ̂
to μ* relative to σ*², and the coverage of the ±1.96 σ̂ interval (95% if calibrated).

Command: `ictl run icl_uncertainty`. Quick: d = 3, σ = 0.5, 10 points, GPT 3 layers/2 heads/D = 64,
16000 Adam steps (lr 1e-3 → 1e-4) of batch 64 on MSE(μ̂) + NLL(stop_grad(μ̂), log σ̂²) (`detach_mean`).
Runtime: 763 CPU-s (2026-12-02, 2-core CPU shared with one other job: 12.3 min wall); ≈ 5.5 min on an
unloaded 2-core CPU (an estimate: 4× the 86 s measured there for 4000 steps).
Expected (theory): exact-predictive coverage 0.95 at every k; the trained model's NLL approaches
the exact NLL and its coverage ≈ 0.95 in distribution (in-context UQ papers: near Bayes-optimal in
distribution). Measured (quick, seed 0, 2048 prompts): NLL 1.674 / 1.373 / 0.980 at k = 1 / 3 / 9
(exact 1.664 / 1.339 / 0.936); coverage 0.952 / 0.944 / 0.951 (SE 0.005); σ̂²/σ*² 1.04 / 1.10 / 1.13,
of which the mean's own error explains most (σ̂²/(σ*² + (μ̂ − μ*)²) = 1.06 at k = 9); 10 of 10 claims.
With 4000 steps (same day, same seed): NLL 1.69 / 1.45 / 1.15, σ̂²/σ*² 1.11 / 1.35 / 1.77, 6 of 10:
the variance read-out was calibrated to a mean that was not yet Bayes-optimal.
Paper scale: d = 20, 41 points, the standard 12-layer model, 500k steps.
"""
from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ictl import bayes
from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, check_steps_per_call, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import function_classes as fc
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models.gpt import GPT, GPTConfig
from models.gpt_uq import apply_uq, init_uq_params
from objectives import gaussian_nll

REPRODUCE = False
LEFT_OUT = ("time budget: 16000 steps (763 CPU-s, ≈ 5.5 min alone on 2 idle cores) for its 10 of 10 claims; "
            "4000 steps (209 s in `make run`) reproduced 6 of 10; `ictl run icl_uncertainty`")
TITLE = "In-context UQ: GPT mean + log-variance read-outs vs the exact Gaussian posterior predictive"
Z95 = 1.959963984540054


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.d, c.n_points, c.noise_std = 3, 10, 0.5
    c.n_layers, c.n_heads, c.width = 3, 2, 64
    # 2000-step sweep (error of μ̂ vs μ* at k = 9, in units of σ*²): 2L lr 1e-3 2.8, 3L lr 1e-3 1.4,
    # 2L lr 1e-3 batch 128 1.8; 2L lr 3e-3 3000 steps stayed on the plateau (4.5)
    c.batch, c.lr, c.warmup, c.lr_end, c.train_steps = 64, 1e-3, 200, 0.1, 16000
    # claims reproduced, seed 0: 6 of 10 at 4000 steps, 10 of 10 at 16000
    # True: loss = MSE(μ̂) + NLL(stop_grad(μ̂), log σ̂²) — the mean learns as in Garg, the variance
    # read-out by the Gaussian NLL. False: the joint NLL (its 1/σ̂² scaling slowed the mean so
    # much that the quick run stayed on the plateau: NLL flat ≈ 1.67 over k, exact 1.87 → 0.94).
    c.detach_mean = True
    c.eval_prompts, c.log_every, c.ckpt_every = 2048, 250, 4000
    c.steps_per_call = 50         # train steps per dispatch (lax.scan); divides log_every and ckpt_every
    if scale == "paper":
        c.d, c.n_points, c.n_layers, c.n_heads, c.width = 20, 41, 12, 8, 256
        c.lr, c.warmup, c.lr_end, c.train_steps, c.log_every, c.ckpt_every = 1e-4, 5000, 1.0, 500_000, 1000, 10_000
        c.steps_per_call = 10
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check_ints_at_least_one(config, "d", "n_layers", "n_heads", "width", "batch", "train_steps")
    check(isinstance(config.n_points, int) and config.n_points >= 2, "n_points", config.n_points, "an integer >= 2")
    check_positive(config, "noise_std")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check_positive(config, "lr")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(isinstance(config.eval_prompts, int) and config.eval_prompts >= 2, "eval_prompts", config.eval_prompts,
          "an integer >= 2")
    check_steps_per_call(config)


def coverage(mean, var, y, *, z: float = Z95):
    """Fraction of y inside mean ± z √var, per column (k) of [B, N] arrays."""
    return np.mean(np.abs(np.asarray(y) - np.asarray(mean)) <= z * np.sqrt(np.asarray(var)), axis=0)


def nll(mean, var, y):
    """Mean Gaussian NLL per column: ½ log 2πσ² + (y − μ)²/2σ²."""
    mean, var, y = (np.asarray(a, np.float64) for a in (mean, var, y))
    return np.mean(0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var), axis=0)


def _prompts(key, config, batch):
    return fc.sample_prompts(key, "noisy_linear", batch=batch, n_points=config.n_points, d=config.d,
                             noise_std=config.noise_std)


def train(config, workdir: pathlib.Path):
    model = GPT(GPTConfig(d_in=config.d, max_tokens=2 * config.n_points, n_layers=config.n_layers,
                          n_heads=config.n_heads, width=config.width))
    key = jax.random.key(config.seed)
    tx = config_optimizer(config)
    state = TrainState.create(params=init_uq_params(model.cfg, jax.random.fold_in(key, 0)), tx=tx)

    def loss_fn(params, k):
        p = _prompts(k, config, config.batch)
        x, y = shard_batch((p.x, p.y))
        mean, log_var = apply_uq(model, params, fc.interleave(x, y), x_only=True)
        mse = jnp.mean(jnp.square(mean - y))
        if config.detach_mean:
            nll_ = gaussian_nll(jax.lax.stop_gradient(mean), log_var, y)
            return mse + nll_, {"mse": mse, "nll": nll_}
        nll_ = gaussian_nll(mean, log_var, y)
        return nll_, {"mse": mse, "nll": nll_}

    t0 = time.time()
    state, history = fit(state, make_train_step(loss_fn, tx), key=jax.random.fold_in(key, 1),
                         num_steps=config.train_steps, workdir=workdir / "train", log_every=config.log_every,
                         ckpt_every=config.ckpt_every, steps_per_call=config.steps_per_call, desc="icl uq")
    return model, state.params, history, time.time() - t0


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, params, history, secs = train(config, workdir)
    p = _prompts(jax.random.key(config.seed + 1000), config, config.eval_prompts)
    f = jax.jit(functools.partial(apply_uq, model))
    outs = [f(params, fc.interleave(p.x[s:s + 512], p.y[s:s + 512])) for s in range(0, config.eval_prompts, 512)]
    mean_tf = np.concatenate([np.asarray(fc.predictions_at_x(o[0])) for o in outs]).astype(np.float64)
    var_tf = np.exp(np.concatenate([np.asarray(fc.predictions_at_x(o[1])) for o in outs]).astype(np.float64))
    mean_ex, var_ex = bayes.prefix_bayes(bayes.gaussian_predictive, p.x, p.y, noise_var=config.noise_std**2)
    y = np.asarray(p.y, np.float64)
    B, n, d = y.shape[0], config.n_points, config.d
    nll_tf, nll_ex = nll(mean_tf, var_tf, y), nll(mean_ex, var_ex, y)
    cov_tf, cov_ex = coverage(mean_tf, var_tf, y), coverage(mean_ex, var_ex, y)
    var_ratio = np.mean(var_tf / var_ex, axis=0)
    mean_gap = np.mean((mean_tf - mean_ex) ** 2 / var_ex, axis=0)
    # for its own mean μ̂ the NLL-optimal variance is E[(y − μ̂)² | D] = σ*² + (μ̂ − μ*)²
    self_ratio = np.mean(var_tf / (var_ex + (mean_tf - mean_ex) ** 2), axis=0)
    nll_se = np.std(0.5 * (np.log(2 * np.pi * var_tf) + (y - mean_tf) ** 2 / var_tf), axis=0, ddof=1) / np.sqrt(B)
    cov_se = np.sqrt(0.95 * 0.05 / B)

    ks = np.arange(n)
    fig, axes = new_figure(3, width=4.2)
    ax = axes[0, 0]
    ax.plot(ks, nll_ex, "k-", lw=1.2, label="exact posterior predictive (theory)")
    ax.plot(ks, nll_tf, "o", ms=4, label="transformer (NLL read-outs)")
    ax.set_ylabel("NLL of y_q")
    ax = axes[0, 1]
    ax.axhline(1.0, color="k", lw=1.2, label="exact (theory)")
    ax.plot(ks, var_ratio, "o", ms=4, label="mean σ̂² / σ*²")
    ax.plot(ks, 1 + mean_gap, "s", ms=4, label="1 + mean (μ̂ − μ*)² / σ*²")
    ax.set_yscale("log")
    ax.set_ylabel("ratio to the exact predictive")
    ax = axes[0, 2]
    ax.axhline(0.95, color="k", lw=1.2, label="nominal 95%")
    ax.axhspan(0.95 - 2 * cov_se, 0.95 + 2 * cov_se, color="gray", alpha=0.2, label="± 2 MC SE")
    ax.set_ylim(0.9, 1.0)
    ax.plot(ks, cov_ex, "^", ms=4, label="exact predictive (MC)")
    ax.plot(ks, cov_tf, "o", ms=4, label="transformer")
    ax.set_ylabel("coverage of ±1.96σ interval")
    for ax in axes[0]:
        ax.set_xlabel("in-context examples k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(f"noisy linear regression, d = {d}, σ = {config.noise_std}")
    save_figure(fig, workdir, "icl_uncertainty")

    rows = []
    for k in sorted({1, d, n - 1}):
        rows.append(row(f"transformer NLL at k={k}", nll_ex[k], nll_tf[k], "theory",
                        tol=max(0.05, 4 * nll_se[k]),
                        why="near Bayes-optimal: within 0.05 nats of the exact predictive (or 4 MC SE if larger)",
                        note=f"exact posterior predictive NLL; transformer SE {nll_se[k]:.2g}"))
        rows.append(row(f"transformer coverage of ±1.96σ̂ at k={k}", 0.95, cov_tf[k], "theory", tol=4 * cov_se,
                        why="4 MC standard errors of a coverage over the evaluation prompts",
                        note=f"MC SE {cov_se:.2g}; exact predictive: {cov_ex[k]:.3f}"))
        rows.append(row(f"transformer mean σ̂²/σ*² at k={k}", 1.0, var_ratio[k], "theory", tol=0.15,
                        why="a variance off by 15% costs ½(r − 1 − log r) ≈ 0.01 nats of NLL",
                        note=f"mean (μ̂ − μ*)²/σ*² = {mean_gap[k]:.3g}"))
    rows.append(row(f"transformer σ̂² / (σ*² + (μ̂ − μ*)²) at k={n - 1}", 1.0, self_ratio[n - 1], "theory",
                    note="diagnostic: 1 when the variance read-out is optimal for the model's own mean"))
    rows.append(row(f"exact predictive coverage at k={n - 1}", 0.95, cov_ex[n - 1], "theory", tol=4 * cov_se,
                    why="4 MC standard errors (checks the closed form)", note=f"MC SE {cov_se:.2g}"))
    losses = [h["nll"] for h in history if "nll" in h]
    write_results(workdir, rows, train_seconds=secs, nll_transformer=nll_tf.tolist(), nll_exact=nll_ex.tolist(),
                  coverage_transformer=cov_tf.tolist(), coverage_exact=cov_ex.tolist(),
                  var_ratio=var_ratio.tolist(), mean_gap=mean_gap.tolist(), self_ratio=self_ratio.tolist(),
                  first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)
    return rows
