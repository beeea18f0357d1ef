"""Panwar, Ahuja & Goyal (2024), "In-context learning through the Bayesian prism", finite task
pools (the task-diversity setting, also Raventós et al. 2023): a small GPT trained on noisy linear
regression whose weight vectors come from a fixed pool of M = 2^k tasks w_m ~ N(0, I_d) is
compared with the two Bayes predictors — the discrete MMSE (the posterior mean under the pool
prior, `ictl.bayes.dmmse_posterior_mean`) and ridge with λ = σ² (the posterior mean under the
Gaussian prior the pool was drawn from).

Command: `ictl run prism_task_pool`. Quick scale: d = 4, M = 4 tasks, σ = 0.5, 12 points, a
2-layer/2-head/D = 64 GPT (`models.gpt`), 16000 Adam steps (lr 3e-3 → 3e-4) of batch 64. Runtime:
640 CPU-s (2026-12-02, 2-core CPU shared with one other job: 9.9 min wall); ≈ 4.5 min on an unloaded
2-core CPU (an estimate: 4× the 61 s of training measured there for 4000 steps, plus evaluation).
Expected: on prompts from the pool the Bayes-optimal error is dMMSE's, which falls to the noise
floor σ²/d = 0.0625 within ≈ 5 examples (identifying 1 of 4 tasks), far below ridge until k ≈ d.
Panwar/Raventós: with few tasks the transformer follows dMMSE (it memorises the pool): on pool
prompts it beats ridge for 1 ≤ k < d, and on fresh tasks w ~ N(0, I) it fails like dMMSE.
Measured (quick, seed 0): pool prompts error/d 0.341 / 0.098 / 0.065 at k = 1 / 3 / 11 (dMMSE 0.336 /
0.089 / 0.064, ridge 0.88 / 0.42 / 0.10); fresh tasks at k = 11: 1.04 (dMMSE 1.12, ridge 0.10): the
pool is memorised and dMMSE reached within 11% at every k; 6 of 6 claims. With 4000 / 8000 steps
the transformer stayed 1.2–2.2× / 1.1–1.3× above dMMSE (1 / 2 of 6 claims; same day, same seed).
Paper scale (`--config.scale=paper`, an
accelerator run): d = 8, 16 points, pools M = 2^1 … 2^15 via --config.log2_pool, 8 layers,
500k steps (Raventós et al.: the transition from dMMSE to ridge around M ≈ 2^13).
"""
from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections

from ictl import bayes
from ictl import evaluation as ev
from ictl.config import SCALES, check, check_ints_at_least_one, check_steps_per_call, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import function_classes as fc
from ictl.tasks import prism
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models.gpt import GPT, GPTConfig, init_params, num_params

REPRODUCE = False
LEFT_OUT = ("time budget: 16000 steps (640 CPU-s, ≈ 4.5 min alone on 2 idle cores) for its 6 of 6 claims; "
            "4000 steps (186 s in `make run`) reproduced 1 of 6; `ictl run prism_task_pool`")
TITLE = "Panwar et al. Bayesian prism: GPT on a finite task pool vs dMMSE and ridge (posterior means)"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.pool_seed = 1234
    c.d = 4
    c.log2_pool = 2
    c.noise_std = 0.5
    c.n_points = 12
    c.n_layers = 2
    c.n_heads = 2
    c.width = 64
    c.batch = 64
    c.lr = 3e-3                   # 1e-3 reached error/d 0.22 at k = 11 after 2500 steps (dMMSE 0.064)
    c.warmup = 200
    c.lr_end = 0.1
    c.train_steps = 16000          # claims reproduced, seed 0: 1 of 6 at 4000 steps, 2 at 8000, 6 at 16000
    c.eval_prompts = 1280
    c.n_boot = 500
    c.log_every = 250
    c.ckpt_every = 4000
    c.steps_per_call = 50         # train steps per dispatch (lax.scan); divides log_every and ckpt_every
    if scale == "paper":
        c.d, c.n_points, c.log2_pool, c.n_layers, c.n_heads, c.width = 8, 16, 10, 8, 8, 256
        c.lr, c.warmup, c.lr_end, c.train_steps, c.batch = 1e-4, 5000, 1.0, 500_000, 64
        c.log_every, c.ckpt_every, c.steps_per_call = 1000, 10_000, 10
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check_ints_at_least_one(config, "d", "n_points", "n_layers", "n_heads", "width", "batch", "train_steps",
                            "eval_prompts")
    check(config.n_points >= 2, "n_points", config.n_points, "an integer >= 2")
    check(isinstance(config.log2_pool, int) and 0 <= config.log2_pool <= 20, "log2_pool", config.log2_pool,
          "an integer in 0..20")
    check(config.noise_std > 0, "noise_std", config.noise_std, "a positive number (the posteriors need σ > 0)")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(config.lr > 0, "lr", config.lr, "a positive number")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(config.eval_prompts >= 2, "eval_prompts", config.eval_prompts, "an integer >= 2")
    check_steps_per_call(config)


def model_config(config) -> GPTConfig:
    return GPTConfig(d_in=config.d, max_tokens=2 * config.n_points, n_layers=config.n_layers,
                     n_heads=config.n_heads, width=config.width)


def make_loss(model: GPT, pool_Mxd, config):
    """Squared error of the predictions at every x token on fresh prompts from the pool."""

    def loss_fn(params, key):
        p = prism.sample_pool_prompts(key, pool_Mxd, batch=config.batch, n_points=config.n_points,
                                      noise_std=config.noise_std)
        x, y = shard_batch((p.x, p.y))
        pred_BxN = model.apply(params, fc.interleave(x, y), x_only=True)
        loss = jnp.mean(jnp.square(pred_BxN - y))
        return loss, {"err_per_d": loss / config.d}

    return loss_fn


def train(config, pool_Mxd, workdir: pathlib.Path):
    model = GPT(model_config(config))
    key = jax.random.key(config.seed)
    params = init_params(model.cfg, jax.random.fold_in(key, 0))
    tx = config_optimizer(config)
    state = TrainState.create(params=params, tx=tx)
    t0 = time.time()
    state, history = fit(state, make_train_step(make_loss(model, pool_Mxd, config), tx),
                         key=jax.random.fold_in(key, 1), num_steps=config.train_steps, workdir=workdir / "train",
                         log_every=config.log_every, ckpt_every=config.ckpt_every,
                         steps_per_call=config.steps_per_call, desc="prism pool")
    return model, state.params, history, time.time() - t0


def evaluate(model, params, pool_Mxd, x_BxNxd, y_BxN, config, key) -> dict[str, ev.Curve]:
    """Error/d curves of the transformer, dMMSE, ridge (λ = σ²) and least squares on given prompts."""
    sig2 = config.noise_std**2
    apply = functools.partial(jax.jit(model.apply), params)
    preds = {
        "transformer": ev.transformer_predictions(apply, x_BxNxd, y_BxN),
        "dMMSE (pool posterior mean)": bayes.prefix_bayes(bayes.dmmse_posterior_mean, x_BxNxd, y_BxN,
                                                          pool_Mxd=pool_Mxd, noise_var=sig2),
        "ridge λ=σ² (Gaussian posterior mean)": bayes.prefix_bayes(bayes.gaussian_posterior_mean, x_BxNxd, y_BxN,
                                                                   noise_var=sig2),
    }
    return {name: ev.error_curve(jnp.asarray(p, jnp.float32), y_BxN, norm=config.d, key=key, n_boot=config.n_boot)
            for name, p in preds.items()}


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pool = prism.make_task_pool(config.pool_seed, log2_size=config.log2_pool, d=config.d)
    model, params, history, secs = train(config, pool, workdir)
    key = jax.random.key(config.seed + 1000)
    p_pool = prism.sample_pool_prompts(jax.random.fold_in(key, 0), pool, batch=config.eval_prompts,
                                       n_points=config.n_points, noise_std=config.noise_std)
    p_new = fc.sample_prompts(jax.random.fold_in(key, 1), "noisy_linear", batch=config.eval_prompts,
                              n_points=config.n_points, d=config.d, noise_std=config.noise_std)
    curves_pool = evaluate(model, params, pool, p_pool.x, p_pool.y, config, jax.random.fold_in(key, 2))
    curves_new = evaluate(model, params, pool, p_new.x, p_new.y, config, jax.random.fold_in(key, 3))

    d, n, M, sig2 = config.d, config.n_points, 2**config.log2_pool, config.noise_std**2
    fig, axes = new_figure(2, width=4.8)
    ev.plot_curves(axes[0, 0], curves_pool, title=f"prompts from the pool (M = {M} tasks, d = {d})", logy=True)
    ev.plot_curves(axes[0, 1], curves_new, title="fresh tasks w ~ N(0, I) (not in the pool)", logy=True)
    for ax in axes[0]:
        ax.axhline(sig2 / d, color="k", ls="--", lw=0.8, label="noise floor σ²/d")
        ax.legend(fontsize=7)
    save_figure(fig, workdir, "prism_task_pool")

    tf, dm, rd = curves_pool["transformer"], curves_pool["dMMSE (pool posterior mean)"], \
        curves_pool["ridge λ=σ² (Gaussian posterior mean)"]
    rows = []
    for k in sorted({1, 2, d // 2 + 1, d, n - 1}):
        rows.append(row(f"pool prompts: transformer error/d at k={k} vs dMMSE", dm.mean[k], tf.mean[k], "theory",
                        tol=0.15, tol_kind="rel",
                        why="few tasks: the transformer should reach the pool's Bayes predictor (dMMSE) within 15% "
                            "(≈ 2–3× the 90% bootstrap half-width at 1280 prompts)",
                        note=f"transformer 90% band [{tf.lo[k]:.3g}, {tf.hi[k]:.3g}]; dMMSE SE {dm.sem[k]:.2g}; "
                             f"ridge {rd.mean[k]:.3g}"))
    k = n - 1
    rows.append(row(f"pool prompts: ridge error/d at k={k} (context)", dm.mean[k], rd.mean[k], "baseline",
                    note="ridge is the Bayes predictor of the Gaussian prior the pool was drawn from, not of the pool; "
                         "shown beside dMMSE, no claim"))
    tfn, rdn = curves_new["transformer"], curves_new["ridge λ=σ² (Gaussian posterior mean)"]
    dmn = curves_new["dMMSE (pool posterior mean)"]
    rows.append(row(f"fresh tasks: transformer error/d at k={k} vs dMMSE", dmn.mean[k], tfn.mean[k], "theory",
                    tol=0.25, tol_kind="rel",
                    why="a pool-memorising model fails on fresh tasks like dMMSE (Panwar/Raventós, few tasks): within "
                        "25%, while ridge is ~10× lower",
                    note=f"transformer band [{tfn.lo[k]:.3g}, {tfn.hi[k]:.3g}]"))
    rows.append(row(f"fresh tasks: ridge error/d at k={k} (context)", rdn.mean[k], rdn.mean[k], "baseline",
                    note=f"ridge is Bayes-optimal for fresh tasks; the experiment's point is that the few-task transformer "
                         f"does NOT match it (transformer {tfn.mean[k]:.3g}): no claim"))
    losses = [h["loss"] for h in history if "loss" in h]
    table = {"pool": ev.curves_table(curves_pool), "fresh": ev.curves_table(curves_new)}
    write_results(workdir, rows, train_seconds=secs, params=num_params(params), pool_size=M,
                  first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                  curves={part: {m: c.mean.tolist() for m, c in cs.items()}
                          for part, cs in (("pool", curves_pool), ("fresh", curves_new))}, table=table)
    return rows
