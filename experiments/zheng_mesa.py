"""Zheng et al. 2024 (arXiv 2405.16845), mesa-optimization in an autoregressively trained LSA.

Command: `ictl run zheng_mesa` (paper scale: `--config.scale=paper`).
Runtime: 3 trainings of 700 SGD steps (τ = 7): 199 CPU-s, 596 s wall under a load average of ≈ 8 on
2 shared cores (1000 steps: 265 s wall on the idle machine); paper scale ≈ an hour.

A one-layer causal LSA (models/causal_lsa.py) is trained with SGD from the paper's
initialisation W^{KQ}[d:, :d] = a0 I, W^{PV}[:, :d] = b0 I on rotation sequences
x_{t+1} = diag(e^{iθ}) x_t (ictl/tasks/rotation.py) for three initial-token distributions:
Rademacher (meets both conditions), Gaussian (symmetric: converges to one-step GD, but
m4² < m2 m6: does not recover x_{t+1}) and N(1, 1) (not symmetric: leaves the GD family).

Expected (ictl/theory/zheng.py, quick config d = 3, T = 32, a0 = b0 = 0.2, lr = 0.01):
ab follows the reduced gradient flow to c* = m4/(m6 + (d−1) m2 m4 H_{T−2}/(T−2)):
c* = 0.790 (Rademacher), 0.190 (Gaussian); the trained LSA's predictions equal one GD step on
the in-context OLS loss with η_t = ab/(t−1) (off-pattern weights stay at MC-noise level); the
relative error E‖ŷ−x‖²/E‖x‖² at position t is c*²(m6 + (d−1)m2m4/(t−1))/m2 − 2c*m4/m2 + 1,
→ 1 − m4²/(m2 m6) as T, t → ∞: 0 for Rademacher, 0.4 for Gaussian; the prediction/label
ratio of one sequence tends to c*|x_{1j}|².
Claims (6 rows per symmetric distribution, tolerances in `_rows`): ab's limit within 4 × its SGD
fluctuation, the half-time within one logging interval, the relative errors and E[ŷx̄]/E|x|²
within 4 Monte Carlo SE (the ratio's SE by the delta method over sequences, plus the ab
fluctuation), and the distance to one-step GD below the error rows' resolution. The documented
quick numbers (docs/zheng.md, 700 steps, seed 0: Gaussian errors 0.9–1.1 SE off, the Gaussian ratio
0.5635 vs 0.5697, SE 0.011) put all 12 claims at "reproduced".
Why 700 steps: the reduced flow is within 3e-4 of c* at τ = 5.4 and 1.2e-5 at τ = 7 (Rademacher, the
slower one; Gaussian < 1e-10 by τ = 4), so the averaging window (the last 10%, τ 6.3–7) sits on the
converged flow, < 5e-5 away against an SGD fluctuation of 4e-4; 1000 steps gave the same verdicts.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks.rotation import X1_DISTS, sample_rotation_sequences, x1_moments
from ictl.theory import zheng
from ictl.train import TrainState, fit, make_train_step, shard_batch
from models.causal_lsa import CausalLSA, ar_loss, one_step_gd_reference, reduced_params

REPRODUCE = True
QUICK_CPU_S = 176  # CPU seconds of a fresh quick run (2-core EPYC); `reproduce --jobs` starts the longest first
TITLE = "Zheng et al. 2024: AR-trained causal LSA → one-step-GD mesa-optimizer; recovery iff m4² = m2·m6"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.dists = ("rademacher", "gaussian", "shifted")
    c.d = 3
    c.length = 32  # T: training sequences x_1 … x_T, loss on positions t = 2 … T−1
    c.batch = 1024
    c.num_steps = 700  # the flow has converged by τ = lr·step ≈ 6 (module docstring)
    c.lr = 0.01  # SGD: gradient-flow time τ = lr · step
    c.a0 = 0.2
    c.b0 = 0.2
    c.log_every = 5
    c.eval_batch = 4096
    c.eval_length = 128  # evaluation runs past the training length
    c.eval_chunk = 256
    if scale == "paper":
        c.d = 5
        c.length = 100
        c.batch = 4096
        c.num_steps = 4000
        c.lr = 0.005
        c.log_every = 10
        c.eval_batch = 16384
        c.eval_length = 400
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, f"one of {SCALES}")
    check(len(config.dists) >= 1 and all(x in X1_DISTS for x in config.dists), "dists", config.dists,
          f"a non-empty subset of {X1_DISTS}")
    check_ints_at_least_one(config, "d", "batch", "num_steps", "log_every", "eval_batch", "eval_chunk")
    check(isinstance(config.length, int) and config.length >= 4, "length", config.length, "an int >= 4")
    check(isinstance(config.eval_length, int) and config.eval_length >= config.length, "eval_length",
          config.eval_length, f"an int >= length = {config.length}")
    check(config.eval_batch % config.eval_chunk == 0, "eval_chunk", config.eval_chunk,
          f"a divisor of eval_batch = {config.eval_batch}")
    check_positive(config, "lr")
    check(config.a0 > 0 and config.b0 > 0, "a0/b0", (config.a0, config.b0), "both > 0 (ab = 0 is a saddle)")
    check(config.log_every <= config.num_steps, "log_every", config.log_every,
          f"<= num_steps = {config.num_steps}")


def _train(config, dist: str, key, workdir: pathlib.Path):
    model = CausalLSA(d=config.d, a0=config.a0, b0=config.b0)
    params = model.init(key, jnp.zeros((1, config.length, config.d), jnp.complex64))

    def loss_fn(p, k):
        x = shard_batch(sample_rotation_sequences(k, batch=config.batch, length=config.length, d=config.d,
                                                  dist=dist).x)
        return ar_loss(model.apply(p, x), x), reduced_params(p)

    tx = optax.sgd(config.lr)
    state = TrainState.create(params=params, tx=tx)
    state, hist = fit(state, make_train_step(loss_fn, tx), key=key, num_steps=config.num_steps,
                      workdir=workdir / f"train_{dist}", log_every=config.log_every,
                      ckpt_every=config.num_steps, desc=f"zheng {dist}")
    # a record at step s holds the params the step-s update started from: s − 1 updates, τ = lr (s − 1)
    tau = config.lr * (np.array([h["step"] for h in hist], np.float64) - 1)
    traj = {k: np.array([h[k] for h in hist], np.float64) for k in ("ab", "off_kq", "off_pv", "loss")}
    return model, state.params, tau, traj


def _evaluate(config, model, params, dist: str, c_star: float, key):
    """Per-position errors over eval sequences (trained and one-step GD with c*), ŷ·x̄, GD distance."""
    ab = reduced_params(params)["ab"]

    @jax.jit
    def chunk(k):
        x = sample_rotation_sequences(k, batch=config.eval_chunk, length=config.eval_length, d=config.d,
                                      dist=dist).x
        y_full = model.apply(params, x)
        y, tgt = y_full[:, 1:-1], x[:, 2:]
        e_BxS = jnp.mean(jnp.abs(y - tgt) ** 2, -1)
        th_BxS = jnp.mean(jnp.abs(one_step_gd_reference(x, c_star)[:, 1:-1] - tgt) ** 2, -1)
        c_B = jnp.sum(jnp.real(y * jnp.conj(tgt)), axis=(1, 2))  # per sequence, for the ratio's SE
        n_B = jnp.sum(jnp.abs(tgt) ** 2, axis=(1, 2))
        sums = {"err": e_BxS.sum(0), "err2": (e_BxS**2).sum(0), "theory": th_BxS.sum(0),
                "cross": jnp.sum(jnp.real(y * jnp.conj(tgt))), "norm": jnp.sum(jnp.abs(tgt) ** 2),
                "gd_dist": jnp.sum(jnp.abs(y - one_step_gd_reference(x, ab)[:, 1:-1]) ** 2)}
        return sums, (c_B, n_B), x, y_full

    acc, per_seq = None, []
    for i in range(config.eval_batch // config.eval_chunk):
        sums, cn, x, y = chunk(jax.random.fold_in(key, i))
        per_seq.append(np.asarray(cn, np.float64))
        sums = jax.tree.map(lambda v: np.asarray(v, np.float64), sums)
        acc = sums if acc is None else jax.tree.map(np.add, acc, sums)
        if i == 0:
            first = (np.asarray(x), np.asarray(y))
    N = config.eval_batch
    mean = acc["err"] / N
    se = np.sqrt(np.maximum(acc["err2"] / N - mean**2, 0) / N)
    # ratio of means R = c̄/n̄ over sequences; delta method: SE(R) ≈ std(c − R n) / (√N n̄)
    c_B, n_B = np.concatenate(per_seq, axis=1)
    r_ = c_B.mean() / n_B.mean()
    ratio_se = float((c_B - r_ * n_B).std(ddof=1) / np.sqrt(N) / n_B.mean())
    return {"err": mean, "err_se": se, "theory_mc": acc["theory"] / N, "ratio": float(acc["cross"] / acc["norm"]),
            "ratio_se": ratio_se, "gd_dist": float(acc["gd_dist"] / acc["norm"]), "first": first}


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(config.seed)
    d, T = config.d, config.length
    t_eval = np.arange(2, config.eval_length)  # positions of the eval errors
    rows, out = [], {}
    for i, dist in enumerate(config.dists):
        m = x1_moments(dist)
        c_star = zheng.mesa_coefficient(m, d=d, length=T)
        model, params, tau, traj = _train(config, dist, jax.random.fold_in(key, i), workdir)
        flow = zheng.solve_flow(config.a0, config.b0, moments=m, d=d, length=T,
                                t1=config.lr * config.num_steps, num_saves=201)
        ev = _evaluate(config, model, params, dist, c_star, jax.random.fold_in(key, 1000 + i))
        theory_err = np.asarray(zheng.position_error(c_star, t_eval, moments=m, d=d)) / m.m2
        out[dist] = dict(m=m, c_star=c_star, tau=tau, traj=traj, flow=flow, ev=ev, theory_err=theory_err,
                         ab=float(reduced_params(params)["ab"]))
        if zheng.symmetric_x1(m):
            rows += _rows(config, dist, m, c_star, tau, traj, flow, ev, theory_err)
    _figures(config, out, t_eval, workdir)
    extra = {d_: {"c_star": o["c_star"], "ab_final": o["ab"], "off_kq_final": float(o["traj"]["off_kq"][-1]),
                  "off_pv_final": float(o["traj"]["off_pv"][-1]), "gd_dist": o["ev"]["gd_dist"],
                  "recovery_gap": zheng.recovery_gap(o["m"]), "symmetric_x1": zheng.symmetric_x1(o["m"])}
             for d_, o in out.items()}
    write_results(workdir, rows, experiment="zheng_mesa", summary=extra)
    return rows


def _crossing(tau, c, level: float) -> float:
    """The first τ where the trajectory c(τ) crosses ``level`` (linear interpolation; nan if never)."""
    side = np.sign(np.asarray(c) - level)
    idx = np.nonzero(side != side[0])[0]
    if idx.size == 0:
        return float("nan")
    j = int(idx[0])
    c0, c1 = c[j - 1], c[j]
    return float(tau[j - 1] + (level - c0) / (c1 - c0) * (tau[j] - tau[j - 1]))


def _rows(config, dist, m, c_star, tau, traj, flow, ev, theory_err) -> list[dict]:
    """The claims for a symmetric x₁ distribution. Tolerances: the SGD fluctuation of ab (std over the
    averaging window: the final weights are one draw around the flow's limit), one logging interval
    for the half-time, 4 Monte Carlo SE over the evaluation sequences (with the ab fluctuation
    propagated for the ratio, ∂/∂c (c m4/m2) = m4/m2), and, for the distance to one-step GD, the
    resolution of the error rows (4 of their SE: an off-GD part δ adds ≈ E‖δ‖²/E‖x‖² to the relative error)."""
    T = config.length
    window = traj["ab"][-max(1, len(tau) // 10):]
    ab_end, ab_sd = float(np.mean(window)), float(np.std(window, ddof=1)) if window.size > 1 else 0.0
    half = 0.5 * (config.a0 * config.b0 + c_star)
    tau_half_th = _crossing(np.asarray(flow.tau), np.asarray(flow.c), half)
    err, se, gd = ev["err"] / m.m2, ev["err_se"] / m.m2, ev["theory_mc"] / m.m2  # relative to E|x_{t+1,j}|² = m2
    law = "c*²(m6+(d−1)m2m4/(t−1))/m2 − 2c*m4/m2 + 1"
    dtau = config.lr * config.log_every
    mc4 = "4 Monte Carlo standard errors over the evaluation sequences"
    ratio_tol = 4 * float(np.hypot(ev["ratio_se"], m.m4 / m.m2 * ab_sd))
    return [
        row(f"ab limit c* ({dist})", c_star, ab_end, "theory", tol=4 * ab_sd if window.size > 1 else None,
            why="4 × the SGD fluctuation of ab (std over the last 10% of logged steps); the flow has converged",
            note=f"mean of the last 10% of logged ab (std {ab_sd:.2g}); c* = m4/(m6 + (d−1)m2m4 H_{{T−2}}/(T−2))"),
        row(f"flow half-time τ½ ({dist})", tau_half_th, _crossing(tau, traj["ab"], half), "theory", tol=dtau,
            why=f"one logging interval lr·log_every = {dtau:g} (ab is read every {config.log_every} steps; "
                "covers Euler's O(lr) time shift)",
            note="τ where ab crosses (a0b0 + c*)/2; τ = lr·step"),
        row(f"rel. error at t={T - 1} ({dist})", theory_err[T - 3], err[T - 3], "theory", tol=4 * se[T - 3], why=mc4,
            note=f"MC SE {se[T - 3]:.2g}; one-step GD (c*) on the same sequences {gd[T - 3]:.4g}; {law}"),
        row(f"rel. error at t={config.eval_length - 1} ({dist})", theory_err[-1], err[-1], "theory", tol=4 * se[-1],
            why=mc4, note=f"past the training length; MC SE {se[-1]:.2g}; one-step GD (c*) on the same sequences "
                          f"{gd[-1]:.4g}"),
        row(f"E[ŷ x̄]/E|x|² ({dist})", zheng.expected_ratio(c_star, m), ev["ratio"], "theory", tol=ratio_tol,
            why=mc4 + " (per-sequence delta method) combined with the SGD fluctuation of ab",
            note=f"= c* m4/m2 at every t; pooled over positions; MC SE {ev['ratio_se']:.2g}"),
        row(f"‖ŷ − ŷ_GD(ab)‖²/‖x‖² ({dist})", 0.0, ev["gd_dist"], "paper", tol=4 * se[T - 3], claim="at_most",
            why=f"below the resolution of the error rows (4 SE of the rel. error at t={T - 1}): an off-GD part "
                "adds ≈ this to the relative error",
            note="trained LSA vs one GD step on the in-context OLS loss with η_t = ab/(t−1)"),
    ]


_COLORS = {"rademacher": "tab:blue", "gaussian": "tab:orange", "shifted": "tab:red"}


def _figures(config, out, t_eval, workdir):
    fig, axes = new_figure(2)
    ax, ax2 = axes[0]
    for dist, o in out.items():
        col, sym = _COLORS[dist], zheng.symmetric_x1(o["m"])
        every = max(1, len(o["tau"]) // 40)
        ax.plot(o["tau"][::every], o["traj"]["ab"][::every], "o", ms=3, color=col, label=f"trained ({dist})")
        ax.plot(o["flow"].tau, o["flow"].c, "-" if sym else ":", color=col,
                label="gradient flow" + ("" if sym else " (family; not valid)"))
        ax.axhline(o["c_star"], color=col, ls="--", lw=0.8)
        ax2.semilogy(o["tau"][::every], np.maximum(o["traj"]["off_kq"][::every], 1e-8), "o", ms=3, color=col,
                     label=f"W^KQ ({dist})")
        ax2.semilogy(o["tau"][::every], np.maximum(o["traj"]["off_pv"][::every], 1e-8), "x", ms=3, color=col,
                     label=f"W^PV ({dist})")
    ax.set(xlabel="gradient-flow time τ = lr·step", ylabel="ab", title="ab: SGD (markers) vs flow (lines); c* dashed")
    ax.legend(fontsize=6)
    ax2.set(xlabel="τ", ylabel="off-pattern ‖·‖ / ‖diag‖", title="distance from the one-step-GD family")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, workdir, "zheng_params")

    sym = [d_ for d_ in out if zheng.symmetric_x1(out[d_]["m"])]
    fig, axes = new_figure(len(sym) + 2)
    for k, dist in enumerate(sym):
        o, ax = out[dist], axes[0][k]
        x, y = o["ev"]["first"]
        idx = [b for b in range(x.shape[0]) if abs(x[b, 0, 0]) > 0.5][:3]
        gd = np.asarray(one_step_gd_reference(jnp.asarray(x[idx]), o["c_star"]))
        ts = np.arange(2, x.shape[1])
        for n_, b in enumerate(idx):
            r_tr = np.real(y[b, 1:-1, 0] / x[b, 2:, 0])
            r_th = np.real(gd[n_, 1:-1, 0] / x[b, 2:, 0])
            every = max(1, len(ts) // 30)
            first = n_ == 0
            ax.plot(ts[::every], r_tr[::every], "o", ms=3, color=f"C{n_}", label="trained LSA" if first else None)
            ax.plot(ts, r_th, "-", lw=0.8, color=f"C{n_}", label="one-step GD, η_t = c*/(t−1)" if first else None)
            ax.axhline(o["c_star"] * x[b, 0, 0].real ** 2, color=f"C{n_}", ls=":", lw=0.8,
                       label=r"limit $c^*|x_{1,1}|^2$" if first else None)
        ax.axhline(1.0, color="k", lw=0.6, label="recovery (ratio 1)")
        ax.axvline(config.length, color="gray", ls="--", lw=0.6, label="training length T")
        ax.set(xlabel="position t", ylabel=r"Re $\hat y_{t+1,1} / x_{t+1,1}$",
               title=f"{dist} $x_1$: 3 sequences (colours)")
        ax.legend(fontsize=6)
    ax = axes[0][-2]
    for dist, o in out.items():
        every = max(1, len(t_eval) // 30)
        ax.errorbar(t_eval[::every], o["ev"]["err"][::every] / o["m"].m2, yerr=2 * o["ev"]["err_se"][::every] / o["m"].m2,
                    fmt="o", ms=3, color=_COLORS[dist], label=f"trained ({dist})")
        is_sym = zheng.symmetric_x1(o["m"])
        ax.plot(t_eval, o["theory_err"], "-" if is_sym else ":", color=_COLORS[dist],
                label=f"theory, c* ({dist})" if is_sym else "family theory (not valid)")
        t_inf = float(zheng.position_error(o["c_star"], np.inf, moments=o["m"], d=config.d)) / o["m"].m2
        ax.axhline(t_inf, color=_COLORS[dist], ls="--", lw=0.6)
        gap = zheng.recovery_gap(o["m"])
        if gap > 0 and is_sym:
            ax.axhline(gap, color=_COLORS[dist], ls=":", lw=0.8)
    ax.axvline(config.length, color="gray", ls="--", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="position t", ylabel="E‖ŷ−x‖² / E‖x‖²",
           title="rel. error; dashed t→∞, dotted T,t→∞ (Rademacher: 0)")
    ax.legend(fontsize=6)

    ax = axes[0][-1]  # capability: the t → ∞ error of the trained mesa-optimizer vs training length
    lengths = np.unique(np.geomspace(4, 1e5, 60).astype(int))
    for dist in sym:
        o = out[dist]
        lim = [float(zheng.position_error(zheng.mesa_coefficient(o["m"], d=config.d, length=int(n)), np.inf,
                                          moments=o["m"], d=config.d)) / o["m"].m2 for n in lengths]
        ax.plot(lengths, lim, "-", color=_COLORS[dist], label=f"theory ({dist})")
        t_inf = float(zheng.position_error(o["c_star"], np.inf, moments=o["m"], d=config.d)) / o["m"].m2
        ax.plot([config.length], [t_inf],
                "s", color=_COLORS[dist], mfc="none", label=f"this run's T ({dist})")
        if zheng.recovery_gap(o["m"]) > 0:
            ax.axhline(zheng.recovery_gap(o["m"]), color=_COLORS[dist], ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="training length T", ylabel="t→∞ E‖ŷ−x‖² / E‖x‖²",
           title="capability: → 1 − m4²/(m2m6) as T → ∞")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, workdir, "zheng_ratio")
