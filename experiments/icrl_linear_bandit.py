"""Lin, Bai & Mei (ICLR 2024), "Transformers as decision makers", linear-bandit regret curves: a GPT
pretrained by algorithm distillation (AD: labels = the data algorithm's own actions) on LinUCB
and on linear Thompson-sampling trajectories, and by DPT (labels = the optimal action), played
online on fresh instances beside LinUCB, Thompson sampling, ridge-greedy and uniform play.

Environment (the paper's): d = 5, 10 actions per episode drawn U[−1, 1]^5 and shown to the
learner, θ ~ U[0, 1]^5, r = ⟨θ, x_a⟩ + N(0, 1.5²); LinUCB λ = 1, bonus 2‖x‖_{V⁻¹}; TS prior N(0, I).

Command: `ictl run icrl_linear_bandit`. Quick tier: horizon T = 50 (paper 200), GPT 3 layers / 2
heads / width 32 with the quadratic read-out, 1000 Adam steps of 32 fresh trajectories, three
transformers, 256 evaluation instances. Measured runtime 836 s wall / 469 s CPU (user + sys) on 2
cores at 1-min load ≈ 7, hence REPRODUCE = False. Paper tier (`--config.scale=paper`, an accelerator run):
T = 200, 8 layers, width 32, ReLU attention, 100k fixed trajectories, 40k steps of 64.

Expected (paper): AD-LinUCB tracks LinUCB, AD-TS tracks TS, DPT ≈ TS; uniform play ≈ 230 at
T = 200 (exact from the sampler: 221.77, `ictl.bandits.theory`). Issue targets (quick): AD-LinUCB
within 15% of LinUCB at T and far below uniform (≤ half).
Measured (quick, seed 0, regret at T = 50 ± SE): AD-LinUCB 20.43 ± 0.69 vs LinUCB 18.92 ± 0.70
(+8%, reproduced), AD-LinUCB / uniform 0.36 (reproduced), uniform 57.32 ± 1.39 vs exact 55.44
(reproduced); AD-TS 26.98 vs linear TS 25.19; DPT 10.08 (trained under the true U[0, 1]^5
prior; linear TS uses N(0, I)); ridge greedy 20.18. Details in docs/icrl.md.
"""
from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from ictl.bandits import algorithms as alg
from ictl.bandits import envs as benvs
from ictl.bandits import icrl, pretrain, rollout as ro, theory
from ictl.config import SCALES, check, new_config
from ictl.results import new_figure, row, save_figure, write_results

REPRODUCE = False
TITLE = "Lin/Bai/Mei ICRL: AD-LinUCB, AD-TS and DPT transformers vs LinUCB/TS/greedy/uniform on a linear bandit"
LEFT_OUT = "three transformer trainings: 836 s wall / 469 s CPU on 2 loaded CPU cores (quick tier), over `make run`'s 2-min budget"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.env, c.horizon, c.n_actions, c.d, c.noise_std = "linear", 50, 10, 5, 1.5
    icrl.add_model_keys(c)
    c.readout = "quadratic"
    c.train_steps = 1000
    c.ad_algorithms = ("linucb", "lin_ts")   # one AD transformer per algorithm
    c.dpt_offline = "lin_ts"                 # DPT's context data ("" = no DPT transformer)
    c.baselines = ("linucb", "lin_ts", "lin_greedy", "uniform")
    if scale == "paper":
        c.horizon, c.n_layers, c.n_heads, c.width, c.attention = 200, 8, 4, 32, "relu"
        c.batch, c.train_steps, c.warmup, c.n_trajectories, c.eval_envs = 64, 40_000, 1000, 100_000, 1000
        c.log_every, c.ckpt_every = 500, 5000
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check(config.env == "linear", "env", config.env, "'linear' (this experiment's environment)")
    spec = icrl.validate_common(config, algorithm_keys=("ad_algorithms", "baselines"))
    check(config.dpt_offline == "" or config.dpt_offline in alg.ALGORITHMS, "dpt_offline", config.dpt_offline,
          f"'' or one of {alg.ALGORITHMS}")
    check("linucb" in config.ad_algorithms and "linucb" in config.baselines, "ad_algorithms", config.ad_algorithms,
          "a tuple containing 'linucb' (and baselines containing 'linucb'): the experiment's claim")
    check("uniform" in config.baselines, "baselines", config.baselines, "a tuple containing 'uniform'")
    del spec


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = icrl.env_spec(config)
    hp = alg.params_for(spec)
    learners = [(f"AD-{a}", pretrain.DataSpec(a, "same", hp=hp, n_trajectories=config.n_trajectories))
                for a in config.ad_algorithms]
    if config.dpt_offline:
        learners.append((f"DPT ({config.dpt_offline} data)",
                         pretrain.DataSpec(config.dpt_offline, "optimal", hp=hp, n_trajectories=config.n_trajectories)))
    key = jax.random.key(config.seed)
    envs = benvs.sample_bandits(jax.random.fold_in(key, 1000), spec, config.eval_envs)
    curves, extra = {}, {}
    for i, (name, data) in enumerate(learners):
        pc, params, hist, secs = icrl.train(config, spec, data, workdir / f"train_{i}", seed=config.seed + i,
                                           desc=name)
        curves[name] = icrl.transformer_curve(pc, params, spec, envs, jax.random.fold_in(key, 2000 + i))
        extra[name] = {"train_seconds": secs, "last_ce": icrl.last(hist, "loss"), "last_acc": icrl.last(hist, "acc")}
    base = ro.algorithm_curves(spec, envs, jax.random.fold_in(key, 3000), config.baselines, hp)
    T = spec.horizon
    exact_unif = theory.uniform_regret(spec)

    fig, axes = new_figure(1, width=6.0, height=4.2)
    ax = axes[0, 0]
    ro.plot_regret(ax, {f"TF {k}": v for k, v in curves.items()} | base,
                   title=f"linear bandit d={spec.d}, A={spec.n_actions}, σ={spec.noise_std}, {config.eval_envs} envs",
                   styles={b: {"ls": "--"} for b in base})
    ax.plot([0, T], [0, exact_unif], "k:", lw=1, label="uniform, exact")
    ax.legend(fontsize=7)
    save_figure(fig, workdir, "icrl_linear_bandit")

    tf, ucb, unif = curves["AD-linucb"], base["linucb"], base["uniform"]
    se = float(np.hypot(tf.sem[-1], ucb.sem[-1]))
    rows = [
        row(f"AD-LinUCB transformer regret at T={T} vs LinUCB", ucb.mean[-1], tf.mean[-1], "baseline",
            tol=0.15, tol_kind="rel", claim="equal", why=f"issue's quick target 15%; SE of the difference {se:.2g}",
            note=f"TF 95% CI [{tf.lo[-1]:.3g}, {tf.hi[-1]:.3g}]"),
        row(f"AD-LinUCB regret / uniform regret at T={T}", 0.5, tf.mean[-1] / unif.mean[-1], "baseline",
            tol=0.0, claim="at_most", why="'far below uniform' read as at most half of uniform play's regret",
            note=f"uniform {unif.mean[-1]:.3g}"),
        row(f"uniform play regret at T={T} vs the exact value", exact_unif, unif.mean[-1], "theory",
            tol=4 * float(unif.sem[-1]), claim="equal", why="4 MC standard errors over the evaluation instances"),
    ]
    for name, c in curves.items():
        ref = name.split("-", 1)[1] if name.startswith("AD-") else "lin_ts"
        if ref in base and name != "AD-linucb":
            rows.append(row(f"{name} transformer regret at T={T} vs {ref}", base[ref].mean[-1], c.mean[-1],
                            "baseline", note=f"TF SE {c.sem[-1]:.2g}; paper: tracks {ref} (informational here)"))
    write_results(workdir, rows, horizon=T, exact_uniform=exact_unif, train=extra,
                  final={k: {"mean": float(v.mean[-1]), "sem": float(v.sem[-1])} for k, v in (curves | base).items()},
                  curves={k: v.mean.tolist() for k, v in (curves | base).items()})
    return rows
