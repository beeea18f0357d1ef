"""Lin, Bai & Mei (ICLR 2024): the pretrained transformer degrades as the offline data's distribution
drifts from the expert's. Bernoulli bandit (5 arms, μ ~ U[0, 1]^5), expert = Beta-Bernoulli
Thompson sampling (labels: a fresh TS draw on each history), offline data = TS mixed per step
with uniform play at rates 0 (Thompson data), 0.5 (50/50) and 0.9 (90/10 uniform/TS).

Distribution ratio: for each offline mixture the per-trajectory KL(P_TS ‖ P_data) =
E_{τ ~ TS} Σ_t Σ_a π(a|h_t) log[π(a|h_t) / (s/A + (1 − s) π(a|h_t))], π = TS's action
probabilities (estimated from ``ratio_draws`` Beta draws per step), s = the uniform share. It is 0
for Thompson data and grows with s; the figure plots the transformers' final regret against it,
and their imitation error on TS's own histories, E_{τ ~ TS} Σ_t KL(π_TS(·|h_t) ‖ π_TF(·|h_t)).

Command: `ictl run icrl_distribution_ratio`. Quick tier: T = 50, GPT 3 layers / 2 heads / width
32, 800 Adam steps of 32 fresh trajectories per transformer (three), 512 evaluation instances.
Measured runtime 996 s wall / 521 s CPU (user + sys) on 2 cores at 1-min load ≈ 10, hence
REPRODUCE = False. Paper tier
(`--config.scale=paper`, accelerator): T = 200, 8 layers, width 32, ReLU attention, 100k
trajectories. Expected (paper, and the issue's quick target): final regret ordered Thompson
data < 50/50 < 90/10.
Measured (quick, seed 0, regret at T = 50 ± SE, 512 instances): Thompson data 7.29 ± 0.15, 50/50
6.86 ± 0.14, 90/10 6.38 ± 0.13 — the ordering is NOT reproduced (reversed; differences −0.43 ± 0.20
and −0.47 ± 0.19); Beta-TS 6.18, greedy 4.97, UCB 10.45, uniform 16.55. KL(P_TS ‖ P_data) = 0,
9.4, 25.9 nats/trajectory; imitation error Σ_t KL(π_TS ‖ π_TF) on TS histories 2.78, 2.38, 1.91
(± 0.09): also decreasing. Why (docs/icrl.md): at T = 50 greedy beats TS here, and labels drawn
by TS on near-uniform histories (many pulls of every arm) concentrate on the empirically best arm.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ictl.bandits import algorithms as alg
from ictl.bandits import envs as benvs
from ictl.bandits import icrl, policy, pretrain, rollout as ro
from ictl.config import SCALES, check, new_config
from ictl.results import new_figure, row, save_figure, write_results

REPRODUCE = False
TITLE = "Lin/Bai/Mei ICRL: TS-imitating transformers on Bernoulli bandits, final regret vs the offline data's distribution ratio"
LEFT_OUT = "three transformer trainings on Beta-TS data: 996 s wall / 521 s CPU on 2 loaded CPU cores (quick tier), over `make run`'s budget"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.env, c.horizon, c.n_actions, c.d, c.noise_std = "bernoulli", 50, 5, 5, 0.0
    icrl.add_model_keys(c)
    c.train_steps = 800
    c.expert = "beta_ts"
    c.uniform_shares = (0.0, 0.5, 0.9)
    c.eval_envs = 512
    c.ratio_envs, c.ratio_draws = 128, 256
    c.baselines = ("beta_ts", "ucb", "greedy", "uniform")
    if scale == "paper":
        c.horizon, c.n_layers, c.n_heads, c.width, c.attention = 200, 8, 4, 32, "relu"
        c.batch, c.train_steps, c.warmup, c.n_trajectories, c.eval_envs = 64, 40_000, 1000, 100_000, 2000
        c.log_every, c.ckpt_every = 500, 5000
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check(config.env == "bernoulli", "env", config.env, "'bernoulli' (this experiment's environment)")
    icrl.validate_common(config, algorithm_keys=("expert", "baselines"))
    shares = config.uniform_shares
    check(len(shares) >= 2 and all(0 <= s < 1 for s in shares) and list(shares) == sorted(set(shares)),
          "uniform_shares", shares, "at least two increasing numbers in [0, 1)")
    check(isinstance(config.ratio_envs, int) and config.ratio_envs >= 2, "ratio_envs", config.ratio_envs,
          "an integer >= 2")
    check(isinstance(config.ratio_draws, int) and config.ratio_draws >= 1, "ratio_draws", config.ratio_draws,
          "an integer >= 1")


@functools.partial(jax.jit, static_argnames=("spec", "expert", "draws", "hp"))
def expert_probs(spec, envs, key, *, expert: str, draws: int, hp):
    """Expert trajectories (actions, rewards [B, T]) and the expert's action probabilities at every
    step, π̂(·|h_t) [B, T, A], estimated from ``draws`` independent draws of the expert."""
    tr = ro.trajectories(spec, envs, key, offline=expert, hp=hp)
    A = spec.n_actions

    def one(env, a_T, r_T, k):
        def step(st, t):
            keys = jax.random.split(jax.random.fold_in(k, t), draws)
            acts = jax.vmap(lambda kk: alg.act(expert, st, env.feats, kk, hp))(keys)
            return alg.observe(st, env.feats, a_T[t], r_T[t]), jnp.mean(jax.nn.one_hot(acts, A), axis=0)

        return jax.lax.scan(step, alg.init_stats(spec), jnp.arange(spec.horizon))[1]

    keys = jax.vmap(lambda b: jax.random.fold_in(jax.random.fold_in(key, 1), b))(jnp.arange(envs.feats.shape[0]))
    return tr.actions, tr.rewards, jax.vmap(one)(envs, tr.actions, tr.rewards, keys)


def kl_sum(p_BxTxA, q_BxTxA):
    """Σ_t KL(p_t ‖ q_t) per trajectory [B] (terms with p = 0 vanish)."""
    safe = jnp.where(p_BxTxA > 0, p_BxTxA, 1.0)
    return jnp.sum(jnp.where(p_BxTxA > 0, p_BxTxA * (jnp.log(safe) - jnp.log(q_BxTxA)), 0.0), axis=(1, 2))


def data_kl(p_BxTxA, share: float):
    """KL(P_expert ‖ P_data) per trajectory: the data's policy is s/A + (1 − s)·π̂."""
    return kl_sum(p_BxTxA, share / p_BxTxA.shape[-1] + (1 - share) * p_BxTxA)


def _mean_se(x):
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = icrl.env_spec(config)
    hp = alg.params_for(spec)
    key = jax.random.key(config.seed)
    envs = benvs.sample_bandits(jax.random.fold_in(key, 1000), spec, config.eval_envs)
    ratio_envs = benvs.sample_bandits(jax.random.fold_in(key, 1001), spec, config.ratio_envs)
    names = {s: "Thompson data" if s == 0 else f"{round(100 * s)}/{round(100 * (1 - s))} uniform/TS"
             for s in config.uniform_shares}
    a_ex, r_ex, p_ex = expert_probs(spec, ratio_envs, jax.random.fold_in(key, 4000), expert=config.expert,
                                    draws=config.ratio_draws, hp=hp)
    curves, kls, imit, extra = {}, {}, {}, {}
    for i, s in enumerate(config.uniform_shares):
        data = pretrain.DataSpec(config.expert, config.expert, uniform_share=float(s), hp=hp,
                                 n_trajectories=config.n_trajectories)
        pc, params, hist, secs = icrl.train(config, spec, data, workdir / f"train_{i}", seed=config.seed + i,
                                           desc=names[s])
        curves[names[s]] = icrl.transformer_curve(pc, params, spec, envs, jax.random.fold_in(key, 2000 + i))
        kls[names[s]] = _mean_se(data_kl(p_ex, float(s)))
        p_tf = jax.nn.softmax(jax.jit(policy.action_logits, static_argnums=0)(
            pc, params, policy.tokens(ratio_envs.feats, a_ex, r_ex), ratio_envs.feats), axis=-1)
        imit[names[s]] = _mean_se(kl_sum(p_ex, p_tf))
        extra[names[s]] = {"train_seconds": secs, "last_ce": icrl.last(hist, "loss"), "last_acc": icrl.last(hist, "acc"),
                           "data_kl": kls[names[s]], "imitation_kl": imit[names[s]]}
    base = ro.algorithm_curves(spec, envs, jax.random.fold_in(key, 3000), config.baselines, hp)
    T = spec.horizon

    fig, axes = new_figure(3, width=4.6, height=3.6)
    ro.plot_regret(axes[0, 0], {f"TF ({k})": v for k, v in curves.items()} | base,
                   title=f"Bernoulli bandit, A={spec.n_actions}, expert {config.expert}",
                   styles={b: {"ls": "--"} for b in base})
    ax = axes[0, 1]
    x = [kls[n][0] for n in curves]
    y = [c.mean[-1] for c in curves.values()]
    ax.errorbar(x, y, yerr=[1.96 * c.sem[-1] for c in curves.values()], xerr=[1.96 * kls[n][1] for n in curves],
                fmt="o-", capsize=3, label="transformer (95% CI)")
    for n, xi, yi in zip(curves, x, y):
        ax.annotate(n, (xi, yi), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(base[config.expert].mean[-1], color="k", ls="--", lw=1, label=f"{config.expert} (expert)")
    ax.set_xlabel("KL(P_TS ‖ P_data) per trajectory (nats)")
    ax.set_ylabel(f"cumulative regret at T={T}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    ax.errorbar(x, [imit[n][0] for n in curves], yerr=[1.96 * imit[n][1] for n in curves], fmt="s-", capsize=3)
    ax.set_xlabel("KL(P_TS ‖ P_data) per trajectory (nats)")
    ax.set_ylabel("Σ_t KL(π_TS ‖ π_TF) on TS trajectories (nats)")
    ax.set_title("imitation error on the expert's histories", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, workdir, "icrl_distribution_ratio")

    rows = []
    order = list(curves)
    for lo, hi in zip(order[:-1], order[1:]):
        a, b = curves[lo], curves[hi]
        se = float(np.hypot(a.sem[-1], b.sem[-1]))
        rows.append(row(f"regret at T={T}: TF({hi}) − TF({lo})", 0.0, b.mean[-1] - a.mean[-1], "paper", tol=0.0,
                        claim="at_least", why=f"the paper's ordering (difference > 0); SE of the difference {se:.2g}",
                        note=f"{lo}: {a.mean[-1]:.3g}, {hi}: {b.mean[-1]:.3g}"))
    for n in order:
        rows.append(row(f"TF({n}) regret at T={T} vs {config.expert}", base[config.expert].mean[-1],
                        curves[n].mean[-1], "baseline",
                        note=f"KL(P_TS‖P_data) = {kls[n][0]:.3g} ± {kls[n][1]:.2g} nats; TF SE {curves[n].sem[-1]:.2g}"))
    for lo, hi in zip(order[:-1], order[1:]):
        rows.append(row(f"imitation error Σ_t KL(π_TS‖π_TF) on TS histories: TF({hi}) − TF({lo})", 0.0,
                        imit[hi][0] - imit[lo][0], "paper",
                        note=f"{lo}: {imit[lo][0]:.3g} ± {imit[lo][1]:.2g}, {hi}: {imit[hi][0]:.3g} ± {imit[hi][1]:.2g} "
                        "nats; the quantity Lin et al.'s bound scales with the distribution ratio (informational)"))
    write_results(workdir, rows, horizon=T, train=extra,
                  final={k: {"mean": float(v.mean[-1]), "sem": float(v.sem[-1])} for k, v in (curves | base).items()},
                  curves={k: v.mean.tolist() for k, v in (curves | base).items()})
    return rows
