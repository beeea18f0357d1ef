"""Lee et al. (NeurIPS 2023), "Supervised pretraining can learn in-context reinforcement learning"
(DPT), linear-bandit result: a transformer pretrained to predict the optimal action from contexts
collected by unstructured (per-arm) Thompson sampling learns to exploit the shared linear
structure, reaching about LinUCB's regret online — below the algorithm that produced its data.

Environment (DPT's): 10 arms with features in R² fixed across episodes (x_a ~ N(0, I/2), from
``arm_seed``), θ ~ N(0, I/2), r = ⟨θ, x_a⟩ + N(0, 0.3²). Pretraining data: per-arm Gaussian TS
(prior N(0, 1), σ = 0.3) trajectories, label a* = argmax_a μ_a at every step. Online play samples
from the transformer's own logits (posterior sampling, as DPT does).

Command: `ictl run dpt_linear`. Quick tier: T = 50 (DPT: 200), GPT 3 layers / 2 heads / width 32,
1000 Adam steps of 32 fresh trajectories, 512 evaluation instances. Measured runtime 420 s wall /
172 s CPU (user + sys) on 2 cores at 1-min load ≈ 11, hence REPRODUCE = False. Paper tier (`--config.scale=paper`,
accelerator): T = 200, 8 layers, width 32, 100k trajectories.
Expected (DPT): DPT ≈ LinUCB, below unstructured TS; issue target (quick): DPT's regret at T below
unstructured TS's. Measured (quick, seed 0, regret at T = 50 ± SE): DPT 5.39 ± 0.22 vs per-arm TS
14.43 ± 0.43 (reproduced); LinUCB 4.21 ± 0.10 (DPT 28% above: "≈ LinUCB" not reached at this
scale, informational), linear TS 3.28 ± 0.09, uniform 55.3 ± 1.5.
"""
from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from ictl.bandits import algorithms as alg
from ictl.bandits import envs as benvs
from ictl.bandits import icrl, pretrain, rollout as ro
from ictl.config import SCALES, check, new_config
from ictl.results import new_figure, row, save_figure, write_results

REPRODUCE = False
TITLE = "DPT (Lee et al.) on a linear bandit: pretrained on unstructured-TS data, plays near LinUCB, below its data's TS"
LEFT_OUT = "one transformer training: 420 s wall / 172 s CPU on 2 loaded CPU cores (quick tier), over `make run`'s budget"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.env, c.horizon, c.n_actions, c.d, c.noise_std = "dpt_linear", 50, 10, 2, 0.3
    icrl.add_model_keys(c)
    c.train_steps = 1000
    c.offline = "gauss_ts"
    c.eval_envs = 512
    c.baselines = ("gauss_ts", "linucb", "lin_ts", "uniform")
    if scale == "paper":
        c.horizon, c.n_layers, c.n_heads, c.width = 200, 8, 4, 32
        c.batch, c.train_steps, c.warmup, c.n_trajectories, c.eval_envs = 64, 40_000, 1000, 100_000, 2000
        c.log_every, c.ckpt_every = 500, 5000
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check(config.env == "dpt_linear", "env", config.env, "'dpt_linear' (this experiment's environment)")
    icrl.validate_common(config, algorithm_keys=("offline", "baselines"))
    check(config.offline in config.baselines and "linucb" in config.baselines, "baselines", config.baselines,
          f"a tuple containing the data's algorithm {config.offline!r} and 'linucb'")
    check(config.noise_std > 0, "noise_std", config.noise_std, "a number > 0 (the TS baselines need σ > 0)")


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = icrl.env_spec(config)
    hp = alg.params_for(spec)
    key = jax.random.key(config.seed)
    envs = benvs.sample_bandits(jax.random.fold_in(key, 1000), spec, config.eval_envs)
    data = pretrain.DataSpec(config.offline, "optimal", hp=hp, n_trajectories=config.n_trajectories)
    pc, params, hist, secs = icrl.train(config, spec, data, workdir / "train", seed=config.seed, desc="DPT")
    tf = icrl.transformer_curve(pc, params, spec, envs, jax.random.fold_in(key, 2000))
    base = ro.algorithm_curves(spec, envs, jax.random.fold_in(key, 3000), config.baselines, hp)
    T = spec.horizon
    name = f"DPT ({config.offline} data)"

    fig, axes = new_figure(1, width=5.6, height=4.0)
    ro.plot_regret(axes[0, 0], {f"TF {name}": tf} | base,
                   title=f"DPT linear bandit: {spec.n_actions} fixed arms in R^{spec.d}, σ={spec.noise_std}",
                   styles={b: {"ls": "--"} for b in base})
    save_figure(fig, workdir, "dpt_linear")

    ts, ucb = base[config.offline], base["linucb"]
    se = float(np.hypot(tf.sem[-1], ts.sem[-1]))
    rows = [
        row(f"DPT regret at T={T} vs its data's {config.offline}", ts.mean[-1], tf.mean[-1], "baseline", tol=0.0,
            claim="at_most", why=f"issue/DPT: DPT ends below the algorithm of its data; SE of the difference {se:.2g}",
            note=f"TF 95% CI [{tf.lo[-1]:.3g}, {tf.hi[-1]:.3g}]"),
        row(f"DPT regret at T={T} vs LinUCB", ucb.mean[-1], tf.mean[-1], "paper",
            note=f"DPT paper: ≈ LinUCB (informational at quick scale); LinUCB SE {ucb.sem[-1]:.2g}"),
    ]
    if "lin_ts" in base:
        rows.append(row(f"DPT regret at T={T} vs linear TS (prior N(0, I))", base["lin_ts"].mean[-1], tf.mean[-1],
                        "baseline", note="DPT learns posterior sampling under the true prior N(0, I/2)"))
    write_results(workdir, rows, horizon=T,
                  train={"train_seconds": secs, "last_ce": icrl.last(hist, "loss"), "last_acc": icrl.last(hist, "acc")},
                  final={k: {"mean": float(v.mean[-1]), "sem": float(v.sem[-1])} for k, v in ({name: tf} | base).items()},
                  curves={k: v.mean.tolist() for k, v in ({name: tf} | base).items()})
    return rows
