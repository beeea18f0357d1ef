"""Zhang, Frei & Bartlett (2023), training dynamics of the one-layer LSA (their Thm. 4.1 / Fig. 1).

The LSA trained from the paper's initialisation on fresh prompts (SGD) and by gradient descent
on the exact population loss, beside the gradient-flow ODE of (u, U) solved in float64, the
minimum L* and ‖uU − Γ⁻¹‖/‖Γ⁻¹‖ over time t = lr · step.

Command: `ictl run zfb_dynamics` (`--config.scale=paper` for the long, large-batch run;
`--config.theory=false`: the two trainings and their SGD rows only).
Runtime: ≈ 30 s quick on 2 CPU cores.
Expected: L* = d(d+1)/(2(N+d+1)) = 0.576923 for d = 5, N = 20, Λ = I; the trained population
loss within 2% of it; GD on the population loss on top of the ODE (O(lr) apart); uU → Γ⁻¹.
Claims (`result_rows`): the closed forms (float64), the MC value of L* (4 SE), the SGD-trained loss
(2%) and its V error (2%, the preconditioner target of mahankali_onestep), GD vs the ODE (twice the
Richardson estimate of Euler's error, lr vs lr/2; the crossing time also to one logging interval),
the ODE's invariant (100 × rtol); the SGD run's off-subspace weight is informational.
Measured (quick, seed 0; 35 s CPU, 6 min 43 s wall under a load average of 14): L* MC
0.58249 ± 0.0039 (1.4 SE); SGD loss 0.577055 (+0.02%), V error 0.0083, off-subspace 0.010; GD vs
ODE max 0.0221 (Richardson 0.0224, tolerance 0.045), at t1 1.8e-7 (float32 floor 4.4e-6); time to
ε 1.900 vs 1.857 (tolerance 0.101); drift 8.8e-14. All 8 claims reproduced.
"""
from __future__ import annotations

import pathlib
import time

import jax
import ml_collections
import numpy as np
import optax

from ictl import lsa_training as lt
from ictl.config import ConfigError, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.theory import zfb
from ictl.train import TrainState, fit, make_train_step
from models.lsa import INITS, reduced_params

REPRODUCE = True
QUICK_CPU_S = 41  # CPU seconds of a fresh quick run (2-core EPYC); `reproduce --jobs` starts the longest first
TITLE = "ZFB 2023: LSA training dynamics vs the gradient-flow ODE and L*"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.d = 5
    c.N = 20
    c.lam = ()            # () = identity, d numbers = diagonal, or a d×d nested tuple
    c.init_scheme = "paper"
    c.sigma = 0.1
    c.lr = 0.01
    c.t1 = 6.0            # gradient-flow time; steps = t1 / lr
    c.batch = 2048
    c.eval_every = 10
    c.eps_frac = 0.01     # time to reach L* (1 + eps_frac)
    c.theory = True       # False: the two trainings and the SGD rows only, no ODE, Monte Carlo or figure
                          # (tests/test_multiprocess.py: the training machinery across processes)
    if scale == "paper":
        c.lr, c.batch, c.t1, c.eval_every = 0.002, 16384, 8.0, 25
    return c


def validate(c) -> None:
    check_ints_at_least_one(c, "d", "N")
    check(c.init_scheme in INITS, "init_scheme", c.init_scheme, f"one of {INITS}")
    check_positive(c, "sigma", "lr")
    check(c.t1 > 0 and round(c.t1 / c.lr) >= 1, "t1", c.t1, "a number > 0 with t1/lr >= 1 steps")
    check_ints_at_least_one(c, "batch", "eval_every")
    check(0 < c.eps_frac < 1, "eps_frac", c.eps_frac, "a number in (0, 1)")
    check(isinstance(c.theory, bool), "theory", c.theory, "true or false")
    try:
        zfb.validate_cov(lt.lam_from_config(c.lam, c.d), name="lam")
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def _ode_at(traj, t):
    return np.interp(t, traj.t, traj.loss), np.interp(t, traj.t, traj.V_err)


LOSS_TARGET = 0.02   # the trained population loss within 2% of L* (the module docstring's target)
V_TARGET = 0.02      # ‖uU − Γ⁻¹‖/‖Γ⁻¹‖ (mahankali_onestep's 2% for the same preconditioner, A = V/N)
F32_ULPS = 64        # float32 round-off floor of a float32 loss value, in units of ε₃₂·L


def result_rows(c, lam, l_star, mc, sgd, gd, traj, ode_on_gd, t_eps, euler, euler_t_eps) -> list[dict]:
    """Claims with their tolerances: the closed forms (float64 round-off), the MC value of L* (4 SE),
    the SGD-trained LSA against L* (the 2% loss target) and Γ⁻¹ (2%, as in mahankali_onestep),
    GD on the population loss against the ODE
    (twice the Richardson estimate of Euler's error, at least the float32 round-off of the loss;
    the time to ε also to one logging interval), and the ODE's invariant (100 × the solver's rtol).
    The SGD run's weight off the (u, U) subspace is informational (ZFB's zero is for the flow)."""
    d, N = c.d, c.N
    mc_mean, mc_se, mc_n = mc
    t_eps_ode, t_eps_gd = t_eps
    f32 = F32_ULPS * float(np.finfo(np.float32).eps) * l_star
    res = c.lr * c.eval_every
    rows = []
    if np.allclose(lam, np.eye(d)):
        rows.append(row("L* closed form vs d(d+1)/(2(N+d+1)) (Λ = I)", d * (d + 1) / (2 * (N + d + 1)), l_star, "paper",
                        tol=1e-12, tol_kind="rel", why="two closed forms of one number: float64 round-off"))
    rows.append(row("L* by Monte Carlo: LSA at (u, U) = (1, Γ⁻¹) on sampled prompts", l_star, mc_mean, "theory",
                    tol=4 * mc_se, why="4 Monte Carlo standard errors",
                    note=f"MC standard error {mc_se:.2g} ({mc_n * c.batch} prompts)"))
    rows += sgd_rows(l_star, sgd)
    rows += [
        row("GD on population loss: L at t1 vs ODE", float(traj.loss[-1]), gd["pop"][-1], "theory",
            tol=max(2 * float(euler[-1]), f32),
            why=f"2 × Euler's error at t1 (Richardson, lr vs lr/2) or the float32 round-off {F32_ULPS}·ε₃₂·L*, "
                "whichever is larger", note=f"Euler error estimate at t1 {euler[-1]:.2g}"),
        row("GD on population loss: max_k |L_GD(k·lr) − L_ODE(k·lr)|", 0.0, float(np.max(np.abs(gd["pop"] - ode_on_gd))),
            "theory", tol=max(2 * float(np.max(euler)), f32), claim="at_most",
            why="2 × the Richardson estimate of Euler's global error (GD at lr vs lr/2, float64; first order)",
            note=f"Euler discretisation error, O(lr = {c.lr}); Richardson estimate {np.max(euler):.3g}"),
        row(f"time to reach L*·(1+{c.eps_frac:g}): GD vs ODE", t_eps_ode, t_eps_gd, "theory",
            tol=res + 2 * euler_t_eps,
            why=f"one logging interval lr·eval_every = {res:g} (GD's crossing is read off logged losses) + 2 × "
                "Euler's shift of the crossing (Richardson)",
            note=f"GD time resolution {res:g}; Euler shift estimate {euler_t_eps:.2g}"),
        row("ODE: drift of the conserved u² − ‖U‖_F² over [0, t1], relative to u(t1)²", 0.0,
            float(np.max(np.abs(traj.conserved - traj.conserved[0])) / traj.u[-1] ** 2), "theory", tol=1e-8,
            claim="at_most", why="100 × the solver's rtol 1e-10 (dopri5, float64)"),
    ]
    return rows


def sgd_rows(l_star: float, sgd) -> list[dict]:
    """The SGD-trained LSA against L* (the 2% loss target) and Γ⁻¹ (2%); its off-subspace weight (informational)."""
    return [
        row("SGD-trained LSA: population loss at t1", l_star, sgd["pop"][-1], "theory", tol=LOSS_TARGET, tol_kind="rel",
            why="the experiment's target: the trained population loss within 2% of L*"),
        row("SGD-trained LSA: ‖uU − Γ⁻¹‖/‖Γ⁻¹‖ at t1", 0.0, sgd["v_err"][-1], "theory", tol=V_TARGET,
            claim="at_most", why="the project's target for a trained preconditioner: within 2% (as mahankali_onestep's "
                                 "‖A − A*‖/‖A*‖; A ∝ V)"),
        row("SGD-trained LSA: weight off the (u, U) subspace at t1", 0.0, sgd["off"][-1], "theory",
            note="informational: ZFB's zero holds along the gradient flow (exact gradients); SGD noise leaves a little"),
    ]


def _curves(c, runs) -> dict:
    curves = {}
    for name, r in runs.items():
        h = [x for x in r["hist"] if "pop_loss" in x]
        curves[name] = dict(t=np.array([x["step"] for x in h]) * c.lr, pop=np.array([x["pop_loss"] for x in h]),
                            v_err=np.array([x["V_err"] for x in h]),
                            off=np.array([x["off_subspace"] for x in h]),
                            batch=np.array([x.get("loss", np.nan) for x in h]))
    return curves


def run(c, workdir: pathlib.Path) -> list[dict]:
    workdir = pathlib.Path(workdir)
    lam = lt.lam_from_config(c.lam, c.d)
    key = jax.random.key(c.seed)
    k_init, k_train, k_mc = jax.random.split(key, 3)
    model, params = lt.init_params(k_init, d=c.d, init_scheme=c.init_scheme, sigma=c.sigma)
    steps = int(round(c.t1 / c.lr))
    tx = optax.sgd(c.lr)
    evaluate = lt.eval_fn(Lam=lam, N=c.N)
    runs = {}
    for name, loss_fn in [("sgd", lt.prompt_loss_fn(model, d=c.d, N=c.N, batch=c.batch, Lam=lam)),
                          ("population_gd", lt.population_loss_fn(Lam=lam, N=c.N))]:
        t0 = time.time()
        state, hist = fit(TrainState.create(params=params, tx=tx), make_train_step(loss_fn, tx), key=k_train,
                          num_steps=steps, workdir=workdir / name, log_every=c.eval_every,
                          ckpt_every=max(steps // 4, 1), eval_fn=evaluate, desc=f"zfb {name}")
        runs[name] = dict(state=state, hist=hist, seconds=time.time() - t0)
    curves = _curves(c, runs)
    train_s = {f"train_{k}_s": v["seconds"] for k, v in runs.items()}
    if not c.theory:
        rows = sgd_rows(zfb.min_loss(lam, c.N), curves["sgd"])
        write_results(workdir, rows, timings=train_s, steps=steps)
        return rows

    u0, U0 = (np.asarray(a, np.float64) for a in reduced_params(params))
    t0 = time.time()
    traj = zfb.gradient_flow(float(u0), U0, lam, c.N, t1=c.t1, num_saves=401)
    ode_seconds = time.time() - t0
    l_star = zfb.min_loss(lam, c.N)
    eps = c.eps_frac * l_star

    # Monte Carlo from the sampler: the LSA set to the optimum (u, U) = (1, Γ⁻¹) on fresh prompts.
    p_star = jax.tree.map(np.asarray, params)
    p_star["params"]["W_PV"] = np.zeros_like(p_star["params"]["W_PV"]); p_star["params"]["W_PV"][-1, -1] = 1.0
    p_star["params"]["W_KQ"] = np.zeros_like(p_star["params"]["W_KQ"])
    p_star["params"]["W_KQ"][:-1, :-1] = zfb.optimal_V(lam, c.N)
    mc_loss_fn = jax.jit(lt.prompt_loss_fn(model, d=c.d, N=c.N, batch=c.batch, Lam=lam))
    mc = np.array([float(mc_loss_fn(p_star, jax.random.fold_in(k_mc, i))[0]) for i in range(50)])
    mc_mean, mc_se = mc.mean(), mc.std(ddof=1) / np.sqrt(mc.size)

    # Euler's error of GD on the flow, estimated (float64) by Richardson: GD at lr and lr/2 on the same
    # t grid; first order, so e(lr) ≈ 2 |L_lr − L_{lr/2}| (and likewise for the time to ε).
    gd64 = zfb.gd_on_population(float(u0), U0, lam, c.N, lr=c.lr, num_steps=steps)
    gd64_half = zfb.gd_on_population(float(u0), U0, lam, c.N, lr=c.lr / 2, num_steps=2 * steps, save_every=2)
    euler = 2 * np.abs(np.asarray(gd64.loss) - np.asarray(gd64_half.loss))
    shift = zfb.time_to_eps(gd64, eps) - zfb.time_to_eps(gd64_half, eps)
    euler_t_eps = 2 * abs(shift) if np.isfinite(shift) else 0.0  # never reached: the row fails on inf anyway

    gd, sgd = curves["population_gd"], curves["sgd"]
    ode_on_gd, _ = _ode_at(traj, gd["t"])
    t_eps_ode = zfb.time_to_eps(traj, eps)
    hit = np.nonzero(gd["pop"] - l_star <= eps)[0]
    t_eps_gd = float(gd["t"][hit[0]]) if hit.size else float("inf")

    fig, axes = new_figure(2, 1, width=5.2)
    ax = axes[0, 0]
    ax.plot(traj.t, traj.loss, "k-", lw=1.5, label="gradient-flow ODE (float64)")
    ax.plot(gd["t"], gd["pop"], "o", ms=3, mfc="none", color="tab:blue", label="GD on exact population loss")
    ax.plot(sgd["t"], sgd["pop"], "s", ms=3, color="tab:orange", label=f"SGD, batch {c.batch} (population loss)")
    ax.plot(sgd["t"], sgd["batch"], "-", lw=0.6, alpha=0.5, color="tab:orange", label="SGD batch loss")
    ax.axhline(l_star, ls="--", color="tab:green", label=f"L* = {l_star:.4f}")
    ax.set(xlabel="t = lr · step", ylabel="½ E(ŷ − y)²", yscale="log", title=f"LSA training, d={c.d}, N={c.N}")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.plot(traj.t, traj.V_err, "k-", lw=1.5, label="ODE")
    ax.plot(gd["t"], gd["v_err"], "o", ms=3, mfc="none", color="tab:blue", label="GD on population loss")
    ax.plot(sgd["t"], sgd["v_err"], "s", ms=3, color="tab:orange", label="SGD on prompts")
    ax.plot(sgd["t"], sgd["off"], ":", color="tab:red", label="SGD: weight off the (u, U) subspace")
    ax.set(xlabel="t = lr · step", ylabel="‖uU − Γ⁻¹‖_F / ‖Γ⁻¹‖_F", yscale="log", title="convergence to Γ⁻¹")
    ax.legend(fontsize=7)
    save_figure(fig, workdir, "dynamics")

    rows = result_rows(c, lam, l_star, (mc_mean, mc_se, mc.size), sgd, gd, traj, ode_on_gd, (t_eps_ode, t_eps_gd),
                       euler, euler_t_eps)
    write_results(workdir, rows, timings={"ode_solve_s": ode_seconds, **train_s}, steps=steps)
    return rows
