"""Classic bandit algorithms as pure functions of sufficient statistics, one action per call.

Every algorithm here depends on the history only through the statistics `Stats` (the same
for all of them, updated by `observe`), so an expert can label the history of any other
algorithm: the labels of the pretraining data come from `act(expert, stats_t, ...)`. With
t steps taken, n_a pulls and s_a reward sums of action a, G = Σ x_{a_s} x_{a_s}ᵀ and
g = Σ r_s x_{a_s}:

    linucb      V = λI + G, θ̂ = V⁻¹g;  argmax_a ⟨θ̂, x_a⟩ + α‖x_a‖_{V⁻¹}      (λ = ridge, α = bonus)
    lin_greedy  argmax_a ⟨θ̂, x_a⟩                                          (ridge estimate, λ)
    lin_ts      P = I/v₀ + G/σ², μ = P⁻¹g/σ², θ̃ = μ + L⁻ᵀz (P = LLᵀ, z ~ N(0, I_d));  argmax ⟨θ̃, x_a⟩
    ucb         argmax s_a/n_a + c·√(2 log t / n_a)     (unpulled actions first; c = ucb_scale)
    greedy      argmax s_a/n_a                          (unpulled actions first)
    beta_ts     argmax p̃_a,  p̃_a ~ Beta(1 + s_a, 1 + n_a − s_a)   (Bernoulli rewards; `beta_sample`)
    gauss_ts    per-arm ("unstructured") TS: prior N(m₀, v₀), precision 1/v₀ + n_a/σ²,
                mean (m₀/v₀ + s_a/σ²)/precision;  argmax of one posterior draw per arm
    uniform     a = ⌊U·A⌋, U ~ U[0, 1)

Ties go to the lowest index (jnp.argmax). The per-call randomness is the key handed in (the
rollout passes fold_in(key, t)); `mixture` plays uniform with probability ``uniform_share``
and the named algorithm otherwise (the offline data of Lin et al.'s distribution-ratio study).
These are small d×d problems per step; there is no library for jitted, vmapped bandit
policies in JAX, hence the hand-written module.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float, Int

from ictl.bandits.envs import BanditSpec

ALGORITHMS = ("linucb", "lin_greedy", "lin_ts", "ucb", "greedy", "beta_ts", "gauss_ts", "uniform")


class Stats(NamedTuple):
    t: Int[Array, ""]            # steps taken
    n: Float[Array, "A"]         # pulls per action
    s: Float[Array, "A"]         # reward sums per action
    xx: Float[Array, "d d"]      # Σ x xᵀ over pulled features
    xr: Float[Array, "d"]        # Σ r x


@dataclasses.dataclass(frozen=True)
class AlgoParams:
    """Hyper-parameters (hashable). ``noise_std`` is the σ the Thompson samplers assume."""

    ridge: float = 1.0
    bonus: float = 2.0
    prior_var: float = 1.0
    prior_mean: float = 0.0
    noise_std: float = 1.0
    ucb_scale: float = 1.0


def params_for(spec: BanditSpec, **kw) -> AlgoParams:
    """Defaults for an environment: σ from the spec (1 for Bernoulli), UCB scale σ (1 for Bernoulli)."""
    sigma = spec.noise_std if spec.reward == "gaussian" else 1.0
    kw.setdefault("noise_std", sigma)
    kw.setdefault("ucb_scale", sigma)
    return AlgoParams(**kw)


def check_algorithm(name: str, spec: BanditSpec, hp: AlgoParams | None = None) -> None:
    """ValueError unless ``name`` is an algorithm that can run on ``spec``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm: got {name!r}; allowed {ALGORITHMS}")
    if name == "beta_ts" and spec.reward != "bernoulli":
        raise ValueError(f"algorithm: got 'beta_ts' for the {spec.reward}-reward env {spec.name!r}; "
                         "allowed only with Bernoulli rewards")
    if hp is not None and name in ("lin_ts", "gauss_ts") and not hp.noise_std > 0:
        raise ValueError(f"noise_std: got {hp.noise_std!r} for {name!r}; allowed a number > 0")


def init_stats(spec: BanditSpec, dtype=jnp.float32) -> Stats:
    A, d = spec.n_actions, spec.d
    return Stats(jnp.zeros((), jnp.int32), jnp.zeros(A, dtype), jnp.zeros(A, dtype), jnp.zeros((d, d), dtype),
                 jnp.zeros(d, dtype))


def observe(st: Stats, feats_Axd: Float[Array, "A d"], a: Int[Array, ""], r: Float[Array, ""]) -> Stats:
    """Statistics after playing a and seeing r."""
    x_d = feats_Axd[a]
    one_A = jax.nn.one_hot(a, feats_Axd.shape[0], dtype=st.n.dtype)
    return Stats(st.t + 1, st.n + one_A, st.s + r * one_A, st.xx + jnp.outer(x_d, x_d), st.xr + r * x_d)


def _ridge(st: Stats, lam: float):
    d = st.xr.shape[0]
    V_dxd = lam * jnp.eye(d, dtype=st.xr.dtype) + st.xx
    return V_dxd, jnp.linalg.solve(V_dxd, st.xr)


def _means_first_unpulled(st: Stats):
    return jnp.where(st.n > 0, st.s / jnp.maximum(st.n, 1), jnp.inf), st.n > 0


def scores(name: str, st: Stats, feats_Axd: Float[Array, "A d"], key: jax.Array, hp: AlgoParams) -> Float[Array, "A"]:
    """The index each algorithm maximises (uniform: i.i.d. U[0,1] scores, i.e. a uniform action)."""
    A, d = feats_Axd.shape
    dt = feats_Axd.dtype
    if name == "uniform":
        return jax.nn.one_hot(uniform_action(key, A), A, dtype=dt)
    if name in ("linucb", "lin_greedy"):
        V_dxd, theta_d = _ridge(st, hp.ridge)
        mean_A = feats_Axd @ theta_d
        if name == "lin_greedy":
            return mean_A
        vinv_x_dxA = jnp.linalg.solve(V_dxd, feats_Axd.T)
        width_A = jnp.sqrt(jnp.maximum(jnp.sum(feats_Axd.T * vinv_x_dxA, axis=0), 0.0))
        return mean_A + hp.bonus * width_A
    if name == "lin_ts":
        s2 = hp.noise_std ** 2
        P_dxd = jnp.eye(d, dtype=dt) / hp.prior_var + st.xx / s2
        mu_d = jnp.linalg.solve(P_dxd, st.xr / s2)
        L_dxd = jnp.linalg.cholesky(P_dxd)
        z_d = jax.random.normal(key, (d,), dt)
        return feats_Axd @ (mu_d + solve_triangular(L_dxd.T, z_d, lower=False))
    mean_A, pulled_A = _means_first_unpulled(st)
    if name == "greedy":
        return mean_A
    if name == "ucb":
        logt = jnp.log(jnp.maximum(st.t, 1).astype(dt))
        return jnp.where(pulled_A, mean_A + hp.ucb_scale * jnp.sqrt(2 * logt / jnp.maximum(st.n, 1)), jnp.inf)
    if name == "beta_ts":
        return beta_sample(key, 1 + st.s, 1 + st.n - st.s)
    if name == "gauss_ts":
        s2 = hp.noise_std ** 2
        prec_A = 1 / hp.prior_var + st.n / s2
        post_A = (hp.prior_mean / hp.prior_var + st.s / s2) / prec_A
        return post_A + jax.random.normal(key, (A,), dt) / jnp.sqrt(prec_A)
    raise ValueError(f"algorithm: got {name!r}; allowed {ALGORITHMS}")


def uniform_action(key: jax.Array, n_actions: int) -> Int[Array, ""]:
    """⌊U·A⌋ with U ~ U[0, 1) from ``key`` (cheaper to compile than jax.random.randint)."""
    return jnp.minimum(jnp.floor(jax.random.uniform(key) * n_actions), n_actions - 1).astype(jnp.int32)


def beta_sample(key: jax.Array, a_A: Float[Array, "A"], b_A: Float[Array, "A"], *,
                proposals: int = 8) -> Float[Array, "A"]:
    """Beta(a, b) draws for shapes a, b ≥ 1 as G_a / (G_a + G_b), G ~ Gamma by Marsaglia–Tsang with
    ``proposals`` parallel proposals and the first accepted one kept (no while loop).

    Per proposal: d = a − 1/3, c = 1/√(9d), x ~ N(0, 1), v = (1 + cx)³, accept iff v > 0 and
    log u < x²/2 + d − dv + d log v; then d·v ~ Gamma(a). The acceptance probability is ≥ 0.95
    for a ≥ 1, so all 8 proposals fail with probability ≤ 0.05⁸ ≈ 4e-11 (then the first proposal
    is kept). jax.random.beta's rejection loops, vmapped inside a scan inside the train step, took
    ≈ 3 min to compile on 2 CPU cores; this takes seconds.
    """
    dt = a_A.dtype
    shape_S = jnp.concatenate([a_A, b_A])                       # S = 2A shapes
    S, K = shape_S.shape[0], proposals
    k_x, k_u = jax.random.split(key)
    x_SxK = jax.random.normal(k_x, (S * K,), dt).reshape(S, K)
    u_SxK = jax.random.uniform(k_u, (S * K,), dt).reshape(S, K)
    d_S = shape_S - 1.0 / 3.0
    c_S = 1.0 / jnp.sqrt(9.0 * d_S)
    v_SxK = (1.0 + c_S[:, None] * x_SxK) ** 3
    v_pos = jnp.where(v_SxK > 0, v_SxK, 1.0)
    ok_SxK = (v_SxK > 0) & (jnp.log(u_SxK) < 0.5 * x_SxK**2 + d_S[:, None] * (1.0 - v_pos + jnp.log(v_pos)))
    first_S = jnp.argmax(ok_SxK, axis=1)
    g_S = d_S * jnp.take_along_axis(v_pos, first_S[:, None], axis=1)[:, 0]
    A = a_A.shape[0]
    return g_S[:A] / (g_S[:A] + g_S[A:])


def act(name: str, st: Stats, feats_Axd: Float[Array, "A d"], key: jax.Array, hp: AlgoParams) -> Int[Array, ""]:
    """The action of algorithm ``name`` given the statistics of the history."""
    return jnp.argmax(scores(name, st, feats_Axd, key, hp)).astype(jnp.int32)


def mixture(name: str, uniform_share: float, st: Stats, feats_Axd, key, hp: AlgoParams) -> Int[Array, ""]:
    """Uniform with probability ``uniform_share``, else ``name``: (k_mix, k_alg) = split(key),
    (u₀, u₁) ~ U[0, 1)² from k_mix; uniform when u₀ < share, action ⌊u₁A⌋; else ``name`` with k_alg."""
    if uniform_share == 0:
        return act(name, st, feats_Axd, key, hp)
    A = feats_Axd.shape[0]
    k_mix, k_alg = jax.random.split(key)
    u_2 = jax.random.uniform(k_mix, (2,))
    a_unif = jnp.minimum(jnp.floor(u_2[1] * A), A - 1).astype(jnp.int32)
    return jnp.where(u_2[0] < uniform_share, a_unif, act(name, st, feats_Axd, k_alg, hp))
