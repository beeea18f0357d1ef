"""Rollouts with `lax.scan` over time, vmapped over environments; expert labels; regret curves.

`trajectories` runs the offline algorithm (optionally mixed with uniform play) on B instances and
labels every step t with the expert's action on the same history h_{t−1}:

    expert = "same"     the offline action itself            (algorithm distillation, AD)
    expert = "optimal"  a* = argmax_a μ_a                     (decision-pretrained transformer, DPT)
    expert = <name>     act(name, stats(h_{t−1}), key'_t)      (the general case of Lin et al.)

Step t of instance b uses the key fold_in(fold_in(key, b), t) for the offline action and
fold_in(that, 1) for the expert, so a trajectory does not depend on the batch it is drawn in.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ictl.bandits import algorithms as alg
from ictl.bandits.envs import Bandit, BanditSpec, pseudo_regret, reward

EXPERTS_SPECIAL = ("same", "optimal")


class Trajectories(NamedTuple):
    actions: Int[Array, "B T"]
    rewards: Float[Array, "B T"]
    labels: Int[Array, "B T"]      # expert actions (= actions when expert = "same")


class RegretCurve(NamedTuple):
    mean: np.ndarray   # [T] mean cumulative pseudo-regret after t + 1 steps
    lo: np.ndarray     # [T] 95% normal CI over instances
    hi: np.ndarray
    sem: np.ndarray


def check_expert(expert: str, spec: BanditSpec, hp: alg.AlgoParams | None = None) -> None:
    if expert not in EXPERTS_SPECIAL:
        try:
            alg.check_algorithm(expert, spec, hp)
        except ValueError as e:
            raise ValueError(f"expert: got {expert!r}; allowed {EXPERTS_SPECIAL} or an algorithm ({e})") from None


def trajectory(spec: BanditSpec, env: Bandit, key, offline: str, share: float, expert: str, hp: alg.AlgoParams):
    """One instance: (actions [T], rewards [T], labels [T]); step t uses fold_in(key, t). Unchecked."""
    def step(st, t):
        k_t = jax.random.fold_in(key, t)
        a = alg.mixture(offline, share, st, env.feats, k_t, hp)
        if expert == "same":
            label = a
        elif expert == "optimal":
            label = jnp.argmax(env.means).astype(jnp.int32)
        else:
            label = alg.act(expert, st, env.feats, jax.random.fold_in(k_t, 1), hp)
        r = reward(spec, env, t, a)
        return alg.observe(st, env.feats, a, r), (a, r, label)

    _, (a_T, r_T, lab_T) = jax.lax.scan(step, alg.init_stats(spec, env.feats.dtype), jnp.arange(spec.horizon))
    return a_T, r_T, lab_T


def trajectories(spec: BanditSpec, envs: Bandit, key: jax.Array, *, offline: str, uniform_share: float = 0.0,
                 expert: str = "same", hp: alg.AlgoParams | None = None) -> Trajectories:
    """Trajectories of ``offline`` (mixed with uniform play at rate ``uniform_share``) on a batch of
    instances, with the ``expert``'s labels. Pure; jit it with spec/offline/expert/hp static."""
    hp = alg.params_for(spec) if hp is None else hp
    alg.check_algorithm(offline, spec, hp)
    check_expert(expert, spec, hp)
    if not 0 <= uniform_share <= 1:
        raise ValueError(f"uniform_share: got {uniform_share!r}; allowed a number in [0, 1]")
    if envs.feats.shape[-2:] != (spec.n_actions, spec.d):
        raise ValueError(f"envs: got features of shape {envs.feats.shape[-2:]}; allowed (n_actions, d) = "
                         f"{(spec.n_actions, spec.d)} of env {spec.name!r}")
    B = envs.feats.shape[0]
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(B))
    a, r, lab = jax.vmap(lambda e, k: trajectory(spec, e, k, offline, uniform_share, expert, hp))(envs, keys)
    return Trajectories(a, r, lab)


def run_algorithm(spec: BanditSpec, envs: Bandit, key: jax.Array, name: str,
                  hp: alg.AlgoParams | None = None) -> Trajectories:
    """Online play of one classic algorithm on every instance (labels = its own actions)."""
    return trajectories(spec, envs, key, offline=name, hp=hp)


trajectories_jit = jax.jit(trajectories, static_argnames=("spec", "offline", "uniform_share", "expert", "hp"))


def regret_of(envs: Bandit, actions_BxT: Int[Array, "B T"]) -> Float[Array, "B T"]:
    """Per-step pseudo-regret of each instance."""
    return jax.vmap(pseudo_regret)(envs, actions_BxT)


def regret_curve(regret_BxT) -> RegretCurve:
    """Mean cumulative pseudo-regret with a 95% normal CI over instances (float64 on the host)."""
    cum = np.cumsum(np.asarray(regret_BxT, np.float64), axis=1)
    B = cum.shape[0]
    mean = cum.mean(0)
    sem = cum.std(0, ddof=1) / np.sqrt(B) if B > 1 else np.zeros_like(mean)
    return RegretCurve(mean, mean - 1.96 * sem, mean + 1.96 * sem, sem)


def algorithm_curves(spec: BanditSpec, envs: Bandit, key: jax.Array, names, hp: alg.AlgoParams | None = None
                     ) -> dict[str, RegretCurve]:
    """Regret curves of several classic algorithms on the same instances (common random numbers)."""
    hp = alg.params_for(spec) if hp is None else hp
    out = {}
    for i, name in enumerate(names):
        tr = trajectories_jit(spec, envs, jax.random.fold_in(key, i), offline=name, hp=hp)
        out[name] = regret_curve(regret_of(envs, tr.actions))
    return out


def plot_regret(ax, curves: dict[str, RegretCurve], *, title: str = "", styles: dict | None = None) -> None:
    """Cumulative regret vs t with 95% CI bands."""
    styles = styles or {}
    for name, c in curves.items():
        t = np.arange(1, len(c.mean) + 1)
        (line,) = ax.plot(t, c.mean, lw=1.4, label=name, **styles.get(name, {}))
        ax.fill_between(t, c.lo, c.hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("step t")
    ax.set_ylabel("cumulative pseudo-regret")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
