"""BO tasks: where candidates come from and what they return, for GP-prior functions and analytic problems.

A task works in the unit cube [0, 1]^d and, for a per-run function instance ``fn`` (a pytree, vmapped
over runs), draws candidates with their noise-free outputs ``out`` [Q, O], O = 1 + m:
``out[:, 0]`` is the value to *maximise* and ``out[:, 1:]`` the constraints g_j (feasible iff all ≤ 0).
The BO loop shows a surrogate only the outputs of points it has chosen (plus observation noise on
output 0), and scores runs by the simple regret

    r_t = v* − max_{i ≤ t, x_i feasible} out_0(x_i)        (v* − v_worst while nothing is feasible)

- **GP-prior functions** (`gp_task`): f ~ GP(0, k) drawn jointly on a pool of P uniform points (float64
  Cholesky, jitter 1e-8·s), the domain being the pool: candidates are Q random pool points not yet
  evaluated (sampling without replacement: GP-EI gives an evaluated point EI ≈ 0 anyway, while a
  surrogate whose σ does not collapse at its context would re-evaluate its incumbent forever),
  v* = max of f over the pool (exact), observations y = f + N(0, noise). Needs Q ≤ P − T.
- **Analytic problems** (`problem_task`, `ictl.bo.problems`): candidates uniform in the box, out_0 = −f,
  v* = −f_opt (best known), v_worst = −max f over 2^14 uniform points (seed 0), no observation noise.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ictl.bo import problems as P
from ictl.theory import gp


class Task(NamedTuple):
    name: str
    d: int
    num_outputs: int            # O = 1 + number of constraints
    noise_std: float            # observation noise on output 0
    standardize: bool           # surrogates see standardised outputs (analytic problems) or raw ones (GP prior)
    candidates: Callable        # (fn, key, Q, x_done [T, d], mask [T]) -> (u [Q, d], out [Q, O]), noise-free
    opt_value: Callable         # fn -> v* (scalar)
    worst_value: Callable       # fn -> v_worst (scalar)

    @property
    def constrained(self) -> bool:
        return self.num_outputs > 1


class GPPool(NamedTuple):
    x: Float[Array, "*S P d"]
    f: Float[Array, "*S P"]


def sample_gp_pool(key: jax.Array, *, num: int, pool_size: int, d: int, kernel: str, lengthscale: float,
                   outputscale: float) -> GPPool:
    """``num`` functions f ~ GP(0, k) on their own pools of ``pool_size`` uniform points (float64 numpy)."""
    gp.check_kernel(kernel)
    for name, v in (("num", num), ("pool_size", pool_size), ("d", d)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")
    with jax.enable_x64(True):
        k_x, k_z = jax.random.split(key)
        x = jax.random.uniform(k_x, (num, pool_size, d), jnp.float64)
        z = jax.random.normal(k_z, (num, pool_size), jnp.float64)

        @jax.jit
        def one(x_Pxd, z_P):
            k = gp.kernel_matrix(x_Pxd, x_Pxd, kernel=kernel, lengthscale=lengthscale, outputscale=outputscale)
            eye = jnp.eye(pool_size, dtype=jnp.float64)
            chol = jnp.linalg.cholesky(k + 1e-8 * outputscale * eye)
            chol = jnp.where(jnp.all(jnp.isfinite(chol)), chol, jnp.linalg.cholesky(k + 1e-6 * outputscale * eye))
            return chol @ z_P

        f = jnp.stack([one(x[i], z[i]) for i in range(num)])
        return GPPool(np.asarray(x), np.asarray(f))


def _pool_candidates(fn: GPPool, key, q: int, x_done_Txd, mask_T):
    """q distinct pool points, the not-yet-evaluated ones first (sampling without replacement)."""
    done_P = jnp.any(jnp.all(fn.x[:, None, :] == x_done_Txd[None, :, :], axis=-1) & (mask_T[None, :] > 0), axis=1)
    score_P = jax.random.uniform(key, done_P.shape, jnp.float32) + 2.0 * done_P   # float32: same draw in x64
    idx = jnp.argsort(score_P)[:q]
    return fn.x[idx], fn.f[idx][:, None]


def gp_task(*, d: int, noise: float) -> Task:
    """Maximise a GP-prior function on its pool (``fn`` = `GPPool` of one run)."""
    return Task(name="gp", d=d, num_outputs=1, noise_std=float(np.sqrt(noise)), standardize=False,
                candidates=_pool_candidates, opt_value=lambda fn: jnp.max(fn.f), worst_value=lambda fn: jnp.min(fn.f))


def problem_task(problem: P.Problem, *, worst_samples: int = 2**14) -> Task:
    """Minimise an analytic problem (out_0 = −f); ``fn`` is a per-run scalar whose dtype sets the precision."""
    u = jax.random.uniform(jax.random.key(0), (worst_samples, problem.d))
    f_worst = float(jnp.max(problem.objective(P.from_unit(problem, u))))

    def candidates(fn, key, q, x_done_Txd=None, mask_T=None):
        # float32 draws in every precision mode: the x64 (GP) and float32 (PFN) loops see the same points
        u = jax.random.uniform(key, (q, problem.d), jnp.float32).astype(fn.dtype)
        return u, P.evaluate(problem, u)

    return Task(name=problem.name, d=problem.d, num_outputs=1 + problem.num_constraints, noise_std=0.0,
                standardize=True, candidates=candidates, opt_value=lambda fn: jnp.asarray(-problem.f_opt),
                worst_value=lambda fn: jnp.asarray(-f_worst))
