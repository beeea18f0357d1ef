"""Guo et al. (2024), "How do transformers learn in-context beyond simple functions? A case study on
learning with representations": prompts y = ⟨w, Φ*(x)⟩ + σε with a fixed random MLP Φ*
(`ictl.tasks.representation`), a GPT (`models.gpt`) trained on them, compared with the Bayes
predictor (ridge on Φ*(x), λ = σ²/τ², `ictl.bayes.gaussian_posterior_mean` on the features) and
ridge on the raw x; plus per-layer linear probes: ridge regressions from the hidden state at the x
tokens after each block onto Φ*(x), R² on held-out prompts.

Command: `ictl run guo_representations`. Quick: d = 4, Φ* 2 layers of width 8, σ = 0.1, 16 points,
GPT 3 layers/2 heads/D = 64, 3000 Adam steps. Runtime ≈ 1.5–2 min on an unloaded 2-core CPU
(measured: 158 s of CPU time; 227 s wall under a load average of ≈ 4).
Expected (Guo et al.): the transformer approaches ridge on Φ*(x) (far below ridge on x), and
Φ*(x) is linearly decodable (R² near 1) from the lower layers' hidden states.
Measured (quick, seed 0; errors / E y², 1024 prompts): transformer 0.22 / 0.11 at k = 4 / 15 vs ridge
on Φ*(x) 0.14 / 0.017 and ridge on x (λ = σ²) 6.9 / 0.96 — it learned the representation but not yet
the Bayes-optimal ridge after 3000 steps; probe R² for Φ*(x) after blocks 1/2/3: 0.87 / 0.91 / 0.91
(a linear map of x reaches 0.56).
Claims: the transformer within 0.05 of ridge on Φ*(x) (error / E y², garg_linear's fidelity
target) at k = 4 and 15, its error at most half of ridge on x at k = 15, probe R² ≥ 0.9. From the
numbers above: at quick scale the two Bayes rows are not reproduced (0.22 vs 0.14, 0.11 vs 0.017:
under-trained), the ridge-on-x ratio (0.11) and the probe (0.91, near the bar) are.
Paper scale: d = 20, Φ* width 20 (depth 4 is Guo's deepest), 41 points, 12 layers, 500k steps.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ictl import baselines as bl
from ictl import bayes
from ictl import evaluation as ev
from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import function_classes as fc
from ictl.tasks import representation as rep
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models.gpt import GPT, GPTConfig, init_params

REPRODUCE = False
FIDELITY = 0.05  # garg_linear's fidelity target on error / E y²
LEFT_OUT = "time budget: ≈ 2 min at quick scale, kept out to hold `make run` near 15 min on 2 cores"
TITLE = "Guo et al. 2024: ICL with a fixed representation Φ* — GPT vs ridge on Φ*(x), per-layer probes"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.phi_seed = 99
    c.d, c.phi_width, c.phi_depth, c.noise_std, c.n_points = 4, 8, 2, 0.1, 16
    c.n_layers, c.n_heads, c.width = 3, 2, 64
    c.batch, c.lr, c.warmup, c.lr_end, c.train_steps = 64, 1e-3, 200, 0.1, 3000
    c.eval_prompts, c.n_boot, c.log_every, c.ckpt_every, c.probe_lam = 1024, 300, 250, 3000, 1e-3
    if scale == "paper":
        c.d, c.phi_width, c.phi_depth, c.n_points, c.n_layers, c.n_heads, c.width = 20, 20, 4, 41, 12, 8, 256
        c.lr, c.warmup, c.lr_end, c.train_steps, c.log_every, c.ckpt_every = 1e-4, 5000, 1.0, 500_000, 1000, 10_000
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check_ints_at_least_one(config, "d", "phi_width", "phi_depth", "n_layers", "n_heads", "width", "batch",
                            "train_steps")
    check(isinstance(config.n_points, int) and config.n_points >= 2, "n_points", config.n_points, "an integer >= 2")
    check_positive(config, "noise_std")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(config.lr > 0 and config.probe_lam > 0, "lr", config.lr, "positive lr and probe_lam")
    check(isinstance(config.eval_prompts, int) and config.eval_prompts >= 4, "eval_prompts", config.eval_prompts,
          "an integer >= 4")


def hidden_states(model: GPT, params, tokens_BxTxd) -> list[jax.Array]:
    """The residual stream after each block 1..L at every token [B, T, D] (Flax capture_intermediates)."""
    _, state = model.apply(params, tokens_BxTxd, capture_intermediates=lambda m, name: m.name is not None
                           and m.name.startswith("block_") and name == "__call__", mutable=["intermediates"])
    inter = state["intermediates"]
    return [inter[f"block_{i}"]["__call__"][0] for i in range(model.cfg.n_layers)]


def probe_r2(h_train, t_train, h_test, t_test, *, lam: float) -> float:
    """R² on the test set of the ridge probe t ≈ [h, 1] A fitted on the training set (float64)."""
    def aug(h):
        return np.concatenate([h, np.ones((h.shape[0], 1))], axis=1)

    a_tr, a_te = aug(h_train), aug(h_test)
    coef = np.linalg.solve(a_tr.T @ a_tr + lam * a_tr.shape[0] * np.eye(a_tr.shape[1]), a_tr.T @ t_train)
    resid = t_test - a_te @ coef
    return float(1 - np.sum(resid**2) / np.sum((t_test - t_test.mean(0)) ** 2))


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    phi = rep.make_phi(config.phi_seed, d=config.d, width=config.phi_width, depth=config.phi_depth)
    model = GPT(GPTConfig(d_in=config.d, max_tokens=2 * config.n_points, n_layers=config.n_layers,
                          n_heads=config.n_heads, width=config.width))
    key = jax.random.key(config.seed)
    tx = config_optimizer(config)

    def loss_fn(params, k):
        p = rep.sample_representation_prompts(k, phi, batch=config.batch, n_points=config.n_points,
                                              noise_std=config.noise_std)
        x, y = shard_batch((p.x, p.y))
        loss = jnp.mean(jnp.square(model.apply(params, fc.interleave(x, y), x_only=True) - y))
        return loss, {}

    state, history = fit(TrainState.create(params=init_params(model.cfg, jax.random.fold_in(key, 0)), tx=tx),
                         make_train_step(loss_fn, tx), key=jax.random.fold_in(key, 1), num_steps=config.train_steps,
                         workdir=workdir / "train", log_every=config.log_every, ckpt_every=config.ckpt_every,
                         desc="guo representations")
    params = state.params
    p = rep.sample_representation_prompts(jax.random.key(config.seed + 1000), phi, batch=config.eval_prompts,
                                          n_points=config.n_points, noise_std=config.noise_std)
    feats = rep.representation_features(phi, p.x)
    sig2 = config.noise_std**2
    preds = {
        "transformer": ev.transformer_predictions(functools.partial(jax.jit(model.apply), params), p.x, p.y),
        "ridge on Φ*(x) (Bayes)": bayes.prefix_bayes(bayes.gaussian_posterior_mean, feats, p.y, noise_var=sig2),
        "ridge on x": bl.prefix_predictions(functools.partial(bl.ridge, lam=sig2), p.x, p.y),
    }
    norm = float(np.mean(np.asarray(p.y, np.float64) ** 2))  # E y²: errors relative to the label power
    curves = {n: ev.error_curve(jnp.asarray(v, jnp.float32), p.y, norm=norm, key=jax.random.key(1),
                                n_boot=config.n_boot) for n, v in preds.items()}

    hs = jax.jit(functools.partial(hidden_states, model))(params, fc.interleave(p.x, p.y))
    half = config.eval_prompts // 2
    t = np.asarray(feats, np.float64)
    r2 = []
    for h in hs:
        hx = np.asarray(h, np.float64)[:, ::2]                      # the x tokens
        r2.append(probe_r2(hx[:half].reshape(-1, hx.shape[-1]), t[:half].reshape(-1, t.shape[-1]),
                           hx[half:].reshape(-1, hx.shape[-1]), t[half:].reshape(-1, t.shape[-1]),
                           lam=config.probe_lam))
    x_np = np.asarray(p.x, np.float64)
    r2_x = probe_r2(x_np[:half].reshape(-1, config.d), t[:half].reshape(-1, t.shape[-1]),
                    x_np[half:].reshape(-1, config.d), t[half:].reshape(-1, t.shape[-1]), lam=config.probe_lam)

    fig, axes = new_figure(2, width=4.8)
    ev.plot_curves(axes[0, 0], curves, title=f"y = ⟨w, Φ*(x)⟩ + ε, d = {config.d}, D = {config.phi_width}",
                   ylabel="squared error / E y²", logy=True)
    ax = axes[0, 1]
    ax.plot(np.arange(1, len(r2) + 1), r2, "o-", label="probe h_l → Φ*(x) (held-out R²)")
    ax.axhline(r2_x, color="gray", ls=":", label="linear probe x → Φ*(x)")
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="perfect decoding")
    ax.set_xticks(np.arange(1, len(r2) + 1))
    ax.set_xlabel("layer l (block output)")
    ax.set_ylabel("R²")
    ax.set_title("per-layer linear probes at the x tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, workdir, "guo_representations")

    n = config.n_points
    tf, rb, rx = curves["transformer"], curves["ridge on Φ*(x) (Bayes)"], curves["ridge on x"]
    rows = [row(f"transformer error/E y² at k={k} vs ridge on Φ*(x)", rb.mean[k], tf.mean[k], "baseline",
                tol=FIDELITY, why="fidelity target (as garg_linear): within 0.05 of the Bayes predictor on "
                                  "error / E y² (the zero predictor scores 1)",
                note=f"ridge on x: {rx.mean[k]:.3g}; band [{tf.lo[k]:.3g}, {tf.hi[k]:.3g}]; MC SE transformer "
                     f"{tf.sem[k]:.2g}, Bayes {rb.sem[k]:.2g}")
            for k in sorted({config.phi_width // 2, n - 1})]
    rows.append(row(f"transformer / ridge on x error at k={n - 1}", 0.0, tf.mean[n - 1] / rx.mean[n - 1], "baseline",
                    tol=0.5, claim="at_most", why="Guo et al.: the transformer learns Φ*, far below ridge on the raw "
                                                  "x (here: at most half its error)",
                    note=f"ratio of the two errors; ridge on x {rx.mean[n - 1]:.3g}"))
    rows.append(row("best-layer probe R² for Φ*(x)", 1.0, max(r2), "paper", tol=0.1, claim="at_least",
                    why="Guo et al.: Φ*(x) is linearly decodable from the lower layers (near-perfect, [recall]); "
                        "bar here: R² ≥ 0.9",
                    note=f"per layer {[round(v, 3) for v in r2]}; linear in x: {r2_x:.3g}"))
    losses = [h["loss"] for h in history if "loss" in h]
    write_results(workdir, rows, probe_r2=r2, probe_r2_x=r2_x, table=ev.curves_table(curves),
                  curves={m: c.mean.tolist() for m, c in curves.items()},
                  first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)
    return rows
