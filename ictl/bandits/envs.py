"""Bandit environments as pure data: a spec (static) and sampled instances (arrays, vmapped).

Every environment here is a linear bandit with A actions whose features x_a ∈ R^d are shown to
the learner; the mean reward of action a is μ_a = ⟨θ, x_a⟩ (multi-armed bandits: x_a = e_a, so
θ = μ). An instance holds the features, θ, μ and its reward noise for the whole horizon, drawn
up front (common random numbers: every policy run on the instance sees the same draws):

    gaussian rewards   r_t = μ_{a_t} + σ ε[t, a_t],   ε ~ N(0, 1)^{T×A}
    bernoulli rewards  r_t = 1[u[t, a_t] < μ_{a_t}],   u ~ U[0, 1]^{T×A}

Named environments (`ENVS`; [paper] Lin, Bai, Mei 2024; [recall] DPT, Lee et al. 2023):
- "linear"     the ICRL paper's stochastic linear bandit: d = 5, A = 10 actions per episode drawn
               U[−1, 1]^d, θ ~ U[0, 1]^d, σ = 1.5, T = 200;
- "bernoulli"  A = 5 arms, μ ~ U[0, 1]^A, Bernoulli rewards, T = 200;
- "gaussian"   DPT's bandit: A = 5 arms, μ ~ U[0, 1]^A, σ = 0.3, T = 500;
- "dpt_linear" DPT's linear bandit: A = 10 arms in R² fixed across episodes (x_a ~ N(0, I/d),
               drawn once from ``arm_seed``), θ ~ N(0, I/2), σ = 0.3, T = 200.

Pseudo-regret of actions a_1..a_T: Σ_t (μ* − μ_{a_t}), μ* = max_a μ_a (`pseudo_regret`).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

REWARDS = ("gaussian", "bernoulli")
#            reward,      A,  d,    σ,  T
_DEFAULTS = {"linear": ("gaussian", 10, 5, 1.5, 200),
             "bernoulli": ("bernoulli", 5, 5, 0.0, 200),
             "gaussian": ("gaussian", 5, 5, 0.3, 500),
             "dpt_linear": ("gaussian", 10, 2, 0.3, 200)}
ENVS = tuple(_DEFAULTS)
MULTI_ARMED = ("bernoulli", "gaussian")  # one-hot features: d must equal A


@dataclasses.dataclass(frozen=True)
class BanditSpec:
    """Static description of an environment family (hashable: safe as a jit static argument)."""

    name: str
    n_actions: int
    d: int
    noise_std: float
    horizon: int
    reward: str
    arm_seed: int = 0           # "dpt_linear": the fixed arms

    @property
    def multi_armed(self) -> bool:
        return self.name in MULTI_ARMED


def make_spec(name: str, *, n_actions: int | None = None, d: int | None = None, noise_std: float | None = None,
              horizon: int | None = None, arm_seed: int = 0) -> BanditSpec:
    """The named environment with the paper's sizes unless given; ValueError on bad values."""
    if name not in _DEFAULTS:
        raise ValueError(f"env: got {name!r}; allowed {ENVS}")
    reward, A0, d0, s0, T0 = _DEFAULTS[name]
    A = A0 if n_actions is None else n_actions
    d = (A if name in MULTI_ARMED else d0) if d is None else d
    s = s0 if noise_std is None else noise_std
    T = T0 if horizon is None else horizon
    for arg, v in (("n_actions", A), ("d", d), ("horizon", T)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{arg}: got {v!r}; allowed an integer >= 1")
    if A < 2:
        raise ValueError(f"n_actions: got {A}; allowed an integer >= 2")
    if name in MULTI_ARMED and d != A:
        raise ValueError(f"n_actions: got {A} with d={d}; allowed n_actions == d for the multi-armed {name!r} "
                         "(one-hot action features)")
    if not s >= 0:
        raise ValueError(f"noise_std: got {s!r}; allowed a number >= 0")
    if reward == "bernoulli" and s != 0:
        raise ValueError(f"noise_std: got {s!r}; allowed 0 for {name!r} (Bernoulli rewards carry their own noise)")
    return BanditSpec(name=name, n_actions=A, d=d, noise_std=float(s), horizon=T, reward=reward, arm_seed=arm_seed)


class Bandit(NamedTuple):
    """One instance (or a batch, with a leading axis B on every field)."""

    feats: Float[Array, "A d"]     # action features x_a
    theta: Float[Array, "d"]
    means: Float[Array, "A"]       # μ_a = ⟨θ, x_a⟩
    noise: Float[Array, "T A"]     # ε (gaussian) or u (bernoulli)


def fixed_arms(spec: BanditSpec, dtype=jnp.float32) -> Float[Array, "A d"]:
    """DPT's fixed arms x_a ~ N(0, I/d) from ``spec.arm_seed`` (the same for every episode)."""
    n = spec.n_actions * spec.d
    z = jax.random.normal(jax.random.key(spec.arm_seed), (n,), dtype)
    return z.reshape(spec.n_actions, spec.d) / jnp.sqrt(jnp.asarray(spec.d, dtype))


def sample_bandit(key: jax.Array, spec: BanditSpec, dtype=jnp.float32) -> Bandit:
    """One instance of ``spec``'s family; `sample_bandits` vmaps it.

    All of an instance's numbers come from ONE flat draw v ~ U[−1, 1)^n (then U[0, 1) = (v + 1)/2,
    N(0, 1) = √2 erf⁻¹(v), as jax.random.normal does): XLA on CPU spends ≈ 0.7 s compiling each
    separate jax.random draw, and several times more for a multi-dimensional one."""
    A, d, T = spec.n_actions, spec.d, spec.horizon
    lo = jnp.nextafter(jnp.asarray(-1.0, dtype), jnp.asarray(0.0, dtype))
    v = jax.random.uniform(key, (A * d + d + T * A,), dtype, lo, 1.0)
    v_x, v_th, v_n = v[:A * d].reshape(A, d), v[A * d:A * d + d], v[A * d + d:].reshape(T, A)
    gauss = lambda u: jnp.sqrt(jnp.asarray(2.0, dtype)) * jax.lax.erf_inv(u)  # noqa: E731
    if spec.name == "linear":
        feats, theta = v_x, (v_th + 1) / 2
    elif spec.name == "dpt_linear":
        feats, theta = fixed_arms(spec, dtype), gauss(v_th) / jnp.sqrt(jnp.asarray(2.0, dtype))
    else:  # multi-armed: one-hot features, θ = μ ~ U[0, 1]^A
        feats, theta = jnp.eye(A, dtype=dtype), (v_th + 1) / 2
    means = feats @ theta
    noise = (v_n + 1) / 2 if spec.reward == "bernoulli" else gauss(v_n)
    return Bandit(feats, theta, means, noise)


def sample_bandits(key: jax.Array, spec: BanditSpec, batch: int, dtype=jnp.float32) -> Bandit:
    """B instances, instance b from fold_in(key, b) (so a batch's first rows do not depend on B).
    Jitted (spec, batch and dtype static); call `sample_bandits_traced` inside a jitted function."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: got {batch!r}; allowed an integer >= 1")
    return _sample_jit(key, spec, batch, jnp.dtype(dtype))


def sample_bandits_traced(key: jax.Array, spec: BanditSpec, batch: int, dtype=jnp.float32) -> Bandit:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    return jax.vmap(lambda k: sample_bandit(k, spec, dtype))(keys)


_sample_jit = jax.jit(sample_bandits_traced, static_argnums=(1, 2, 3))


def reward(spec: BanditSpec, env: Bandit, t: Int[Array, ""], a: Int[Array, ""]) -> Float[Array, ""]:
    """The reward of action a at step t of one instance."""
    eps = env.noise[t, a]
    if spec.reward == "bernoulli":
        return (eps < env.means[a]).astype(env.means.dtype)
    return env.means[a] + spec.noise_std * eps


def pseudo_regret(env: Bandit, actions_T: Int[Array, "T"]) -> Float[Array, "T"]:
    """Per-step pseudo-regret μ* − μ_{a_t} of one instance (cumsum for the cumulative regret)."""
    return jnp.max(env.means) - env.means[actions_T]
