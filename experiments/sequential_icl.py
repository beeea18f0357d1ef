"""Sequential function classes in context ("Can Transformers Learn Sequential Function Classes In
Context?", 2023, a GPT-2-style toy study built on Garg et al. 2022): linear dynamics, a
sliding-window ReLU task, and prompts with a fraction of randomized labels.

(a) Linear dynamics x_{t+1} = W x_t, ‖W‖₂ ≤ 0.8 (`ictl.tasks.sequential.sample_linear_dynamics`).
    Prompt = the trajectory x_1..x_N as N tokens of width d; a GPT with a vector read-out
    (``out_dim`` = d) predicts x_{t+1} at token t, so prediction k (0-based) has seen k transitions.
    Noiseless by default: with noise s the error floor is d·s² while the states settle at
    E‖x‖² ≈ d·s²/(1 − ρ²), so the floor is most of the signal (s = 0.1, d = 3: even least squares
    stays at 0.8 of the zero predictor's error); without noise least squares on the transitions is
    exact from k = d, a sharp target. Because ‖x_t‖ contracts (E‖x_{t+1}‖² falls ≈ 90× over
    the first 5 steps), errors are reported relative to the zero predictor, e(k) = E‖x̂ − x_{k+1}‖² /
    ν_k with ν_k = E‖x_{k+1}‖² (Monte Carlo over ``norm_prompts`` fresh trajectories), and the
    training loss weights position k by 1/ν_k the same way. Baselines: transition least squares
    (`ictl.baselines.dynamics_least_squares`, in float64), "copy last state" x̂ = x_t, zero.
    Copy-last has the closed form E‖x_{t+1} − x_t‖² = ν_t + ν_{t−1} (ν_{−1} = E‖x_1‖² = d): the
    sampler's law is invariant under W → −W, and E x_tᵀ W x_t is odd in W, so it vanishes; copy-last
    is therefore *worse* than zero here (relative error 1 + ν_{t−1}/ν_t > 1).
(b) Sliding window: x_t ~ N(0, I_d), y_t = √(2/h) aᵀ relu(W u_t), u_t = (x_{t−w+1}, …, x_t);
    interleaved (x_t, y_t) tokens as in Garg; error/(d·w) (= 1 for the zero predictor once t ≥ w,
    1/w at k = 0). Baselines: least squares on the window features with an intercept (the best
    affine learner) and without (`ictl.baselines.window_least_squares`), 3-NN on the window features,
    least squares on x_t alone (Garg's learner, blind to the window: it shows whether the sequence is
    used), zero. With relu(g) = g/2 + |g|/2 and E|g| = σ√(2/π), y splits into a per-function constant
    C (share 1/π of E y²), a linear part L (share ½) and a rest (½ − 1/π ≈ 0.18): so the intercept
    matters, and affine least squares tends to 0.18 of E y² as k → ∞.
(c) Randomized labels: the (b) model, trained on clean prompts, is evaluated on prompts where each
    in-context label is replaced with probability p by N(0, d·w) noise (same marginal scale, so
    not detectable by size; `randomize_labels`), the target staying the clean y_k; next to the same
    baselines on the same prompts. For least squares E[y'|u] = (1 − p) y, so as k → ∞ the affine fit
    tends to (1 − p)(C + L) with relative error (½ − 1/π) + p²(½ + 1/π) (`affine_ls_limit`; plus an
    estimation term at finite k that grows with p). The paper (abstract) reports that performance
    deteriorates with the randomized fraction "though not to the extent one might expect"; with
    p = 1 no predictor can beat zero (E[y | context] = 0 when every label is noise).

Command: `ictl run sequential_icl`. Quick scale: 2-layer/2-head/D = 64 GPTs (≈ 0.1M parameters
each), 2000 Adam steps each (lr 3e-3, warmup 200, cosine to 3e-4, batch 64); dynamics d = 3 with
10 states; window d = 2, w = 2, h = 100 with 12 points; p ∈ {0, 0.25, 0.5, 1}; 1280 test prompts.
Runtime (`time ictl run`, the shared 2-core CPU with other jobs running): 1 min 58 s wall under a
load average of 5–6.5 (training 29 s + 63 s, ≈ 14 and 31 ms/step), 2 min 42 s under 7.8 (41 s +
93 s); not measured on an idle machine. Both runs gave bitwise the same numbers.
Measured (quick, seed 0; error relative to the zero predictor, k = examples/transitions seen):
  dynamics  transformer 0.86 / 0.62 / 0.44 / 0.17 at k = 1 / 2 / 3 / 9; least squares 0.54 / 0.12 /
            3e-15 / 2e-15 (exact from k = d = 3); copy-last 4.0 / 3.5 / 3.3 / 3.3; zero 0.95–1.06.
            The transformer learns in context (monotone in k, 6× below zero at k = 9) but is far
            from the exact least-squares solution after 2000 steps.
  window    transformer 0.78 / 0.59 / 0.51 / 0.53 at k = 1 / 3 / 6 / 11; it is the best learner (or
            tied) for 1 ≤ k ≤ 7 (k = 3: affine least squares 0.67, 3-NN 0.77), but at k = 11 affine
            least squares (0.31) and 3-NN (0.41) are better; least squares without intercept 0.73,
            on x_t only 0.85, zero 0.87.
  labels    at k = 11, p = 0 / 0.25 / 0.5 / 1: transformer 0.53 / 0.61 / 0.78 / 1.19, affine least
            squares 0.31 / 0.67 / 1.08 / 1.96, 3-NN 0.41 / 0.54 / 0.76 / 1.21 (zero 0.87). The
            transformer degrades less than least squares (+0.25 vs +0.77 from p = 0 to 0.5), as the
            paper reports, but it also used the clean labels less; at p = 1 all learners are ≥ zero.
  The affine least-squares limit was checked by Monte Carlo (k = 250): 0.183 / 0.413 / 1.045 for
  p = 0 / 0.5 / 1 against 0.182 / 0.386 / 1.000 plus ≈ 5/250 of the residual variance.
Claims (`_rows`; trained-model tolerances 5% of the zero predictor's error, garg_linear's target):
  dynamics transformer ≤ exact least squares at k = d and N − 1 (k < d informational: least squares
  is underdetermined there, not the optimum); least squares exact from d (float64 round-off, 1e-9);
  copy-last = ν_k + ν_(k−1) (4 MC SE); window transformer ≤ the best baseline at k = d·w, N/2, N − 1;
  labels: p = 0 informational (the reference), 0 < p < 1: the transformer's error ≤ its p = 0 error +
  affine least squares' increase (the paper's "not to the extent one might expect"; these rows used
  to take affine least squares' error itself as the target), p = 1: not below the zero predictor (the
  Bayes predictor when every label is noise). From the quick numbers above: 7 of 10 claims
  reproduced; not reproduced: dynamics at k = 3 (0.44) and 9 (0.17) against exact least squares, and
  the window at k = 11 (0.53 vs affine least squares 0.31). The window claim at k = 4 was not in the
  documented table (expected reproduced: at k = 3 the transformer led, 0.59 vs 0.67).
Paper scale (`--config.scale=paper`, our choice — the paper's exact sizes were not available here):
Garg's "small" GPT (6L/4H/128), dynamics d = 5 with 20 states, window d = 5, w = 3 with 40 points,
100k steps each at lr 1e-4 — an accelerator run. Estimated from FLOPs (6·params·tokens per step:
4e10 window, 1e10 dynamics, vs 1e9 / 4e8 at quick scale, i.e. 40× and 25×) and the measured quick
step times: ≈ 1.2–1.9 s and 0.35–0.5 s per step on this loaded CPU, ≈ 2–3 days in all; an estimate,
not a measurement.
"""
from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ictl import baselines as bl
from ictl import evaluation as ev
from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import function_classes as fc
from ictl.tasks import sequential as sq
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models.gpt import GPT, GPTConfig, init_params, num_params

REPRODUCE = False
LEFT_OUT = "time budget: two trainings, ≈ 2 min at quick scale; `make run` is already ≈ 13 min"
AFFINE_LS = "window least squares + intercept"
TITLE = "Sequential function classes: GPT on linear dynamics and sliding-window ReLU tasks, randomized labels"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.n_layers, c.n_heads, c.width = 2, 2, 64
    c.batch = 64
    c.lr, c.warmup, c.lr_end = 3e-3, 200, 0.1
    # (a) linear dynamics
    c.dyn_d = 3
    c.dyn_points = 10
    c.dyn_max_radius = 0.8
    c.dyn_noise_std = 0.0
    c.dyn_steps = 2000
    c.norm_prompts = 16384
    # (b) sliding-window ReLU, (c) randomized labels
    c.win_d = 2
    c.win_window = 2
    c.win_hidden = 100
    c.win_points = 12
    c.win_steps = 2000
    c.label_fractions = (0.0, 0.25, 0.5, 1.0)
    c.eval_prompts = 1280
    c.n_boot = 500
    c.log_every = 250
    c.ckpt_every = 2000
    if scale == "paper":
        c.n_layers, c.n_heads, c.width = 6, 4, 128
        c.lr, c.warmup, c.lr_end = 1e-4, 1000, 1.0
        c.dyn_d, c.dyn_points, c.dyn_steps = 5, 20, 100_000
        c.win_d, c.win_window, c.win_points, c.win_steps = 5, 3, 40, 100_000
        c.n_boot, c.log_every, c.ckpt_every = 1000, 1000, 10_000
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    for k in ("seed", "dyn_noise_std", "warmup"):
        check(config[k] >= 0, k, config[k], "a number >= 0")
    check_ints_at_least_one(config, "n_layers", "n_heads", "width", "batch", "dyn_d", "dyn_steps", "win_d",
                            "win_window", "win_hidden", "win_steps", "n_boot", "log_every", "ckpt_every")
    check_positive(config, "lr")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(config.warmup < min(config.dyn_steps, config.win_steps), "warmup", config.warmup,
          "an integer < dyn_steps and < win_steps")
    check(0 < config.dyn_max_radius < 1, "dyn_max_radius", config.dyn_max_radius, "a number in (0, 1)")
    check(config.dyn_points >= config.dyn_d + 2, "dyn_points", config.dyn_points,
          f"an integer >= dyn_d + 2 = {config.dyn_d + 2} (least squares is exact from d transitions)")
    check(config.win_points >= config.win_window * config.win_d + 2, "win_points", config.win_points,
          f"an integer >= win_window·win_d + 2 = {config.win_window * config.win_d + 2}")
    check(config.eval_prompts >= 2, "eval_prompts", config.eval_prompts, "an integer >= 2")
    check(config.norm_prompts >= 2, "norm_prompts", config.norm_prompts, "an integer >= 2")
    fr = tuple(config.label_fractions)
    check(0 in fr and all(0 <= p <= 1 for p in fr), "label_fractions", fr,
          "numbers in [0, 1], 0 among them (the clean evaluation)")


# ----------------------------------------------------------------------------- training
def _gpt(config, *, d_in: int, max_tokens: int, out_dim: int) -> GPT:
    return GPT(GPTConfig(d_in=d_in, max_tokens=max_tokens, n_layers=config.n_layers, n_heads=config.n_heads,
                         width=config.width, out_dim=out_dim))


def _dynamics(key, config, batch: int) -> sq.SeqPrompts:
    return sq.sample_linear_dynamics(key, batch=batch, n_points=config.dyn_points, d=config.dyn_d,
                                     max_radius=config.dyn_max_radius, noise_std=config.dyn_noise_std)


def _window(key, config, batch: int) -> sq.SeqPrompts:
    return sq.sample_window_relu(key, batch=batch, n_points=config.win_points, d=config.win_d,
                                 window=config.win_window, hidden=config.win_hidden)


def state_scale(config, key) -> np.ndarray:
    """ν_k = E‖x_{k+1}‖², k = 0..N−1 (the zero predictor's error), Monte Carlo over ``norm_prompts``."""
    p = _dynamics(key, config, config.norm_prompts)
    return np.asarray(jnp.mean(jnp.sum(jnp.square(p.y), axis=-1), axis=0), np.float64)


def dynamics_loss(model: GPT, config, nu_N):
    """Squared error of x̂_{t+1} at every token, position k weighted by 1/ν_k (error relative to zero)."""
    inv_nu_N = jnp.asarray(1.0 / nu_N, jnp.float32)

    def loss_fn(params, key):
        p = _dynamics(key, config, config.batch)
        x, y = shard_batch((p.x, p.y))
        se_BxN = jnp.sum(jnp.square(model.apply(params, x) - y), axis=-1)
        loss = jnp.mean(se_BxN * inv_nu_N[None, :])
        return loss, {"err_per_d": jnp.mean(se_BxN) / config.dyn_d}

    return loss_fn


def window_loss(model: GPT, config):
    """Garg's loss: squared error of the predictions at every x token, divided by d·w."""

    def loss_fn(params, key):
        p = _window(key, config, config.batch)
        x, y = shard_batch((p.x, p.y))
        pred_BxN = model.apply(params, fc.interleave(x, y), x_only=True)
        loss = jnp.mean(jnp.square(pred_BxN - y)) / (config.win_d * config.win_window)
        return loss, {}

    return loss_fn


def train(model: GPT, loss_fn, config, steps: int, key, workdir: pathlib.Path, desc: str):
    """Trains (or resumes from ``workdir``) and returns (params, history, seconds)."""
    tx = config_optimizer(config, total_steps=steps)
    state = TrainState.create(params=init_params(model.cfg, jax.random.fold_in(key, 0)), tx=tx)
    t0 = time.time()
    state, history = fit(state, make_train_step(loss_fn, tx), key=jax.random.fold_in(key, 1), num_steps=steps,
                         workdir=workdir, log_every=config.log_every, ckpt_every=config.ckpt_every, desc=desc)
    return state.params, history, time.time() - t0


# ----------------------------------------------------------------------------- evaluation
def dynamics_predictions(apply, x_BxNxd, y_BxNxd, *, batch_size: int = 256) -> dict[str, np.ndarray]:
    """x̂_{k+1} of the transformer (``apply`` may be None), transition least squares (float64),
    copy-last and zero, each [B, N, d]."""
    x64 = np.asarray(x_BxNxd, np.float64)
    with jax.enable_x64(True):
        ls = np.asarray(bl.dynamics_least_squares(jnp.asarray(x64), jnp.asarray(y_BxNxd, jnp.float64)))
    preds = {"transition least squares": ls, "copy last state x̂ = x_t": x64, "zero": np.zeros_like(x64)}
    if apply is not None:
        tf = [np.asarray(apply(x_BxNxd[s:s + batch_size])) for s in range(0, x_BxNxd.shape[0], batch_size)]
        preds = {"transformer": np.concatenate(tf, axis=0), **preds}
    return preds


def vector_curve(pred_BxNxd, target_BxNxd, *, norm_N, key, n_boot: int) -> ev.Curve:
    """e(k) = mean_b ‖pred − target‖² / ν_k with the bootstrap band of `ev.error_curve`, which takes
    scalar predictions: it is fed √(per-prompt error) against 0, so its square is the error itself."""
    err_BxN = np.sum(np.square(np.asarray(pred_BxNxd, np.float64) - np.asarray(target_BxNxd, np.float64)), -1)
    err_BxN = err_BxN / np.asarray(norm_N, np.float64)[None, :]
    return ev.error_curve(jnp.sqrt(jnp.asarray(err_BxN, jnp.float32)), jnp.zeros(err_BxN.shape, jnp.float32),
                          norm=1.0, key=key, n_boot=n_boot)


def window_predictions(apply, x_BxNxd, y_ctx_BxN, window: int) -> dict[str, np.ndarray]:
    """ŷ_k of the transformer (``apply`` may be None) and the baselines from context labels ``y_ctx``."""
    u_BxNxU = sq.window_features(x_BxNxd, window)
    u1_BxNxU1 = jnp.concatenate([u_BxNxU, jnp.ones(u_BxNxU.shape[:2] + (1,), u_BxNxU.dtype)], axis=-1)
    preds = {"window least squares": bl.window_least_squares(x_BxNxd, y_ctx_BxN, window),
             AFFINE_LS: bl.prefix_predictions(bl.least_squares, u1_BxNxU1, y_ctx_BxN),
             "3-NN on windows": bl.prefix_predictions(bl.knn, u_BxNxU, y_ctx_BxN),
             "least squares on x_t only": bl.prefix_predictions(bl.least_squares, x_BxNxd, y_ctx_BxN),
             "zero": jnp.zeros_like(y_ctx_BxN)}
    if apply is not None:
        preds = {"transformer": ev.transformer_predictions(apply, x_BxNxd, y_ctx_BxN), **preds}
    return {k: np.asarray(v, np.float64) for k, v in preds.items()}


def _plot_floor(curves: dict[str, ev.Curve], floor: float) -> dict[str, ev.Curve]:
    return {m: ev.Curve(*(np.maximum(a, floor) for a in (c.mean, c.lo, c.hi)), c.sem) for m, c in curves.items()}


# ----------------------------------------------------------------------------- run
def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(config.seed)
    k_norm, k_train_a, k_train_b, k_eval = (jax.random.fold_in(key, i) for i in range(4))
    d, n = config.dyn_d, config.dyn_points
    dw = config.win_d * config.win_window
    t_start = time.time()

    # (a) linear dynamics
    nu_N = state_scale(config, k_norm)
    dyn_model = _gpt(config, d_in=d, max_tokens=n, out_dim=d)
    dyn_params, dyn_hist, dyn_secs = train(dyn_model, dynamics_loss(dyn_model, config, nu_N), config,
                                           config.dyn_steps, k_train_a, workdir / "train_dynamics", "dynamics")
    p = _dynamics(jax.random.fold_in(k_eval, 0), config, config.eval_prompts)
    preds = dynamics_predictions(functools.partial(jax.jit(dyn_model.apply), dyn_params), p.x, p.y)
    kb = jax.random.fold_in(k_eval, 1)
    dyn_rel = {m: vector_curve(pr, p.y, norm_N=nu_N, key=kb, n_boot=config.n_boot) for m, pr in preds.items()}
    dyn_raw = {m: vector_curve(pr, p.y, norm_N=np.full(n, float(d)), key=kb, n_boot=config.n_boot)
               for m, pr in preds.items()}

    # (b) sliding window, (c) randomized labels (the same model, clean targets)
    win_model = _gpt(config, d_in=config.win_d, max_tokens=2 * config.win_points, out_dim=1)
    win_params, win_hist, win_secs = train(win_model, window_loss(win_model, config), config, config.win_steps,
                                           k_train_b, workdir / "train_window", "window relu")
    win_apply = functools.partial(jax.jit(win_model.apply), win_params)
    q = _window(jax.random.fold_in(k_eval, 2), config, config.eval_prompts)
    kb = jax.random.fold_in(k_eval, 3)
    label_curves = {}
    for i, frac in enumerate(config.label_fractions):
        y_ctx, _ = sq.randomize_labels(jax.random.fold_in(k_eval, 10 + i), q.y, fraction=float(frac),
                                       label_std=float(np.sqrt(dw)))
        pr = window_predictions(win_apply, q.x, y_ctx, config.win_window)
        label_curves[float(frac)] = {m: ev.error_curve(v, q.y, norm=dw, key=kb, n_boot=config.n_boot)
                                     for m, v in pr.items()}
    win_curves = label_curves[0.0]
    secs = time.time() - t_start

    # figures
    fig, axes = new_figure(2, 2, width=5.0, height=3.6)
    ev.plot_curves(axes[0, 0], _plot_floor(dyn_rel, 1e-6), logy=True, ylabel="error / E‖x_{k+1}‖² (zero = 1)",
                   title=f"linear dynamics d = {d}, ‖W‖₂ ≤ {config.dyn_max_radius} (floor 1e-6)")
    axes[0, 0].set_xlabel("observed transitions k")
    axes[0, 0].axvline(d, color="gray", lw=0.8, ls=":")
    ev.plot_curves(axes[0, 1], _plot_floor(dyn_raw, 1e-9), logy=True, ylabel="‖x̂ − x_{k+1}‖² / d",
                   title="the same, absolute (states contract)")
    axes[0, 1].set_xlabel("observed transitions k")
    ev.plot_curves(axes[1, 0], win_curves, ylabel="squared error / (d·w)",
                   title=f"sliding-window ReLU, d = {config.win_d}, w = {config.win_window}")
    axes[1, 0].set_ylim(0, 1.5)   # least squares spikes where k ≈ its number of coefficients
    axes[1, 0].axvline(dw, color="gray", lw=0.8, ls=":")
    ax = axes[1, 1]
    for j, (frac, cs) in enumerate(label_curves.items()):
        for m, style in (("transformer", "-"), (AFFINE_LS, "--")):
            c = cs[m]
            ax.plot(np.arange(len(c.mean)), c.mean, style, color=f"C{j}", marker="o" if style == "-" else None,
                    ms=3, label=f"{m}, p = {frac:g}")
            ax.fill_between(np.arange(len(c.mean)), c.lo, c.hi, color=f"C{j}", alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_ylim(0, 2.0)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / (d·w), clean targets")
    ax.set_title("randomized in-context labels (fraction p)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, workdir, "sequential_icl")

    rows = _rows(config, dyn_rel, dyn_raw, nu_N, win_curves, label_curves)
    def losses(history):
        return [r["loss"] for r in history if "loss" in r]

    write_results(
        workdir, rows, seconds=secs, train_seconds={"dynamics": dyn_secs, "window": win_secs},
        params={"dynamics": num_params(dyn_params), "window": num_params(win_params)},
        first_loss={"dynamics": losses(dyn_hist)[0], "window": losses(win_hist)[0]},
        last_loss={"dynamics": losses(dyn_hist)[-1], "window": losses(win_hist)[-1]},
        state_scale=nu_N.tolist(),
        curves={"dynamics_relative": {m: c.mean.tolist() for m, c in dyn_rel.items()},
                "dynamics_per_d": {m: c.mean.tolist() for m, c in dyn_raw.items()},
                "labels": {f"{fr:g}": {m: c.mean.tolist() for m, c in cs.items()} for fr, cs in label_curves.items()}},
        table={"dynamics_relative": ev.curves_table(dyn_rel),
               **{f"window p={fr:g}": ev.curves_table(cs) for fr, cs in label_curves.items()}})
    return rows


FIDELITY = 0.05  # trained model vs a target learner: within 5% of the zero predictor's error (garg_linear)


def _se4(*curves_k) -> float:
    """4 × the combined Monte Carlo SE of several curve values (unpaired: an upper bound here, the
    values come from the same prompts and are positively correlated)."""
    return 4 * float(np.sqrt(sum(c.sem[k] ** 2 for c, k in curves_k)))


def _rows(config, dyn_rel, dyn_raw, nu_N, win_curves, label_curves) -> list[dict]:
    """Claims: the dynamics transformer against exact least squares once it is exact (k ≥ d; below d
    least squares is a baseline, not the optimum: informational), least squares exact from d
    (float64 round-off), copy-last against its closed form (4 SE); the window transformer no worse
    than the best baseline; with randomized labels, degrading less than affine least squares, and at
    p = 1 not beating the zero predictor (the Bayes predictor there). Trained-model tolerances: 5% of
    the zero predictor's error at that k (garg_linear's 0.05)."""
    d, n, dw = config.dyn_d, config.dyn_points, config.win_d * config.win_window
    tf, ls, cp = dyn_rel["transformer"], dyn_rel["transition least squares"], dyn_rel["copy last state x̂ = x_t"]
    zero = dyn_rel["zero"]
    rows = []
    for k in sorted({1, d - 1, d, n - 1} - {0}):
        exact = ls.mean[k] < 1e-9   # round-off (float64): compare with 0 so that rel_err is the absolute error
        claim = dict(tol=FIDELITY * zero.mean[k], claim="at_most",
                     why="fidelity target (as garg_linear): within 5% of the zero predictor's error of the exact "
                         "learner") if k >= d else {}
        rows.append(row(f"dynamics: transformer error / E‖x_(k+1)‖² at k={k} vs transition least squares",
                        0.0 if exact else ls.mean[k], tf.mean[k], "baseline", **claim,
                        note=f"transformer 90% band [{tf.lo[k]:.3g}, {tf.hi[k]:.3g}]; copy-last {cp.mean[k]:.3g}; "
                        f"zero {zero.mean[k]:.3g}" + (f"; least squares exact (measured {ls.mean[k]:.1e})" if exact
                                                      else "") + ("" if k >= d else
                        "; informational: below d transitions least squares is underdetermined, not the optimum")))
    noiseless = config.dyn_noise_std == 0
    rows.append(row(f"dynamics: least squares error / E‖x_(k+1)‖², k = {d}..{n - 1} (max)", 0.0,
                    float(np.max(ls.mean[d:])), "theory", tol=1e-9 if noiseless else None, claim="at_most",
                    why="float64 round-off of the transition solve (≈ eps·cond², measured ≤ 1e-12)" if noiseless else "",
                    note="noiseless: exact from d transitions (float64)" if noiseless
                    else "noisy run: not 0 (noise floor); informational"))
    raw_cp, raw_zero = dyn_raw["copy last state x̂ = x_t"].mean * d, dyn_raw["zero"].mean * d
    k = d
    rows.append(row(f"dynamics: copy-last error E‖x_(k+1) − x_k‖² at k={k} vs ν_k + ν_(k−1)",
                    raw_zero[k] + raw_zero[k - 1], raw_cp[k], "theory",
                    tol=d * _se4((dyn_raw["copy last state x̂ = x_t"], k), (dyn_raw["zero"], k), (dyn_raw["zero"], k - 1)),
                    why="4 Monte Carlo SE (the three means combined)",
                    note="W → −W symmetry: E x_kᵀ W x_k = 0 (same eval prompts)"))
    cb = {m: c for m, c in win_curves.items() if m not in ("transformer", "zero")}
    tfw = win_curves["transformer"]
    for k in sorted({dw, config.win_points // 2, config.win_points - 1}):
        best = min(cb, key=lambda m: cb[m].mean[k])
        rows.append(row(f"window: transformer error/(d·w) at k={k} vs {best}", cb[best].mean[k], tfw.mean[k],
                        "baseline", tol=FIDELITY * win_curves["zero"].mean[k], claim="at_most",
                        why="no worse than the best baseline at this k, within 5% of the zero predictor's error "
                            "(the fidelity target of garg_linear)",
                        note=f"band [{tfw.lo[k]:.3g}, {tfw.hi[k]:.3g}]; "
                        + "; ".join(f"{m} {c.mean[k]:.3g}" for m, c in cb.items())))
    k = config.win_points - 1
    t0, l0 = label_curves[0.0]["transformer"], label_curves[0.0][AFFINE_LS]
    for frac, cs in label_curves.items():
        t, lsq, z = cs["transformer"], cs[AFFINE_LS], cs["zero"]
        common = (f"band [{t.lo[k]:.3g}, {t.hi[k]:.3g}]; {AFFINE_LS} {lsq.mean[k]:.3g} (p=0: {l0.mean[k]:.3g}); "
                  f"zero {z.mean[k]:.3g}; 3-NN {cs['3-NN on windows'].mean[k]:.3g}; affine least squares k→∞ "
                  f"limit {affine_ls_limit(frac):.3g} (+ an estimation term at finite k)")
        if frac == 0:
            rows.append(row(f"labels p=0: transformer error/(d·w) at k={k} (clean level)", lsq.mean[k], t.mean[k],
                            "baseline", note="informational: the reference for p > 0 (its claim is the window row); "
                            + common))
        elif frac < 1:
            rows.append(row(f"labels p={frac:g}: transformer error/(d·w) at k={k} vs its p=0 error + "
                            f"{AFFINE_LS}'s increase", t0.mean[k] + lsq.mean[k] - l0.mean[k], t.mean[k], "baseline",
                            tol=_se4((t, k), (t0, k), (lsq, k), (l0, k)), claim="at_most",
                            why="the paper: performance deteriorates 'not to the extent one might expect', read as "
                                "less than least squares' own increase; 4 Monte Carlo SE",
                            note="rewritten: affine least squares' error is not a target for the transformer at p > 0; "
                                 "its increase from p = 0 is. " + common))
        else:
            rows.append(row(f"labels p=1: transformer error/(d·w) at k={k} vs the zero predictor", z.mean[k],
                            t.mean[k], "baseline", tol=_se4((t, k), (z, k)), claim="at_least",
                            why="every label is noise: E[y | context] = 0, so nothing beats the zero predictor "
                                "(the Bayes predictor here); 4 Monte Carlo SE",
                            note="rewritten from 'vs affine least squares'. " + common))
    return rows


def affine_ls_limit(fraction: float) -> float:
    """k → ∞ relative error of affine least squares on window-ReLU prompts with a fraction p of labels
    replaced by zero-mean noise: y = C + L(u) + R(u) with C = E_u y (share 1/π of E y²: E|g| = σ√(2/π)),
    L the linear part (share ½: relu(g) = g/2 + |g|/2) and R the rest; E[y'|u] = (1 − p) y, so the fit
    tends to (1 − p)(C + L) and the error to (½ − 1/π) + p² (½ + 1/π) (t ≥ w)."""
    return (0.5 - 1 / np.pi) + fraction**2 * (0.5 + 1 / np.pi)
