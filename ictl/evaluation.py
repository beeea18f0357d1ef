"""Error-versus-examples curves with bootstrap bands (Garg et al. 2022, Fig. 2 metric).

For predictions ŷ[b, k] made after k in-context examples and targets y[b, k], the curve is

    e(k) = (1/B) Σ_b (ŷ[b, k] − y[b, k])² / ν          ν = the task's normaliser (d, s, 1)

and its 90% band is the 5th–95th percentile of the mean over ``n_boot`` bootstrap resamples of
the B prompts (Garg: B = 1280, 1000 resamples). `transformer_predictions` feeds interleaved
prompts to any ``apply(tokens_BxTxd) -> out_BxT`` and, for OOD suites with a separate query per
k, swaps x_k for xq_k and reads position k (causality makes this equal to a prompt cut at k).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ictl import rng
from ictl.tasks.function_classes import interleave, predictions_at_x


class Curve(NamedTuple):
    mean: np.ndarray      # [N] e(k)
    lo: np.ndarray        # [N] bootstrap lower band
    hi: np.ndarray        # [N] bootstrap upper band
    sem: np.ndarray       # [N] standard error of the mean over prompts


def error_curve(
    pred_BxN: Float[Array, "B N"],
    target_BxN: Float[Array, "B N"],
    *,
    norm: float,
    key: jax.Array,
    n_boot: int = 1000,
    level: float = 0.9,
) -> Curve:
    """Normalised squared error per k with a ``level`` bootstrap band over prompts."""
    if not 0 < level < 1:
        raise ValueError(f"level: got {level!r}; allowed 0 < level < 1")
    if pred_BxN.shape != target_BxN.shape or pred_BxN.ndim != 2:
        raise ValueError(f"pred/target: got shapes {pred_BxN.shape}/{target_BxN.shape}; allowed equal [B, N]")
    err_BxN = jnp.square(jnp.asarray(pred_BxN, jnp.float32) - jnp.asarray(target_BxN, jnp.float32)) / norm
    B = err_BxN.shape[0]
    idx_RxB = rng.randint(key, (n_boot, B), 0, B)
    boot_RxN = _boot_means(err_BxN, idx_RxB)
    a = (1 - level) / 2
    lo, hi = jnp.quantile(boot_RxN, jnp.array([a, 1 - a]), axis=0)
    mean = jnp.mean(err_BxN, axis=0)
    sem = jnp.std(err_BxN, axis=0, ddof=1) / jnp.sqrt(B) if B > 1 else jnp.zeros_like(mean)
    return Curve(*(np.asarray(v, np.float64) for v in (mean, lo, hi, sem)))


@jax.jit
def _boot_means(err_BxN, idx_RxB):
    return jax.lax.map(lambda idx_B: jnp.mean(err_BxN[idx_B], axis=0), idx_RxB, batch_size=50)


def seed_band(curves: list[Curve]) -> Curve:
    """Several seeds' curves → their mean, with lo/hi = the min and max over seeds (the seed band)
    and sem = the standard error of the seed mean (std over seeds / √S)."""
    m_SxN = np.stack([c.mean for c in curves])
    sem = m_SxN.std(axis=0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros(m_SxN.shape[1])
    return Curve(m_SxN.mean(axis=0), m_SxN.min(axis=0), m_SxN.max(axis=0), sem)


def transformer_predictions(
    apply: Callable[[Float[Array, "B T d"]], Float[Array, "B T"]],
    x_BxNxd: Float[Array, "B N d"],
    y_BxN: Float[Array, "B N"],
    xq_BxNxd: Float[Array, "B N d"] | None = None,
    *,
    batch_size: int = 256,
) -> Float[Array, "B N"]:
    """ŷ[b, k] of a causal model after k examples, in chunks of ``batch_size`` prompts.

    Without ``xq`` one pass reads every x position; with ``xq`` the prompt with x_k := xq_k is
    run for every k (N passes) and position k is read.
    """
    B = x_BxNxd.shape[0]
    outs = []
    for s in range(0, B, batch_size):
        x, y = x_BxNxd[s:s + batch_size], y_BxN[s:s + batch_size]
        if xq_BxNxd is None:
            outs.append(predictions_at_x(apply(interleave(x, y))))
        else:
            outs.append(_swapped(apply, x, y, xq_BxNxd[s:s + batch_size]))
    return jnp.concatenate(outs, axis=0)


def _swapped(apply, x_BxNxd, y_BxN, xq_BxNxd):
    N = x_BxNxd.shape[1]

    def one(k):
        xk = jnp.where((jnp.arange(N) == k)[None, :, None], xq_BxNxd, x_BxNxd)
        return predictions_at_x(apply(interleave(xk, y_BxN)))[:, k]

    return jax.lax.map(one, jnp.arange(N)).T


def curves_table(curves: dict[str, Curve], ks=None) -> str:
    """A markdown table: k and e(k) [lo, hi] per learner (for docs and logs)."""
    names = list(curves)
    n = len(next(iter(curves.values())).mean)
    ks = range(n) if ks is None else ks
    lines = ["| k | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in ks:
        cells = [f"{curves[m].mean[k]:.3g} [{curves[m].lo[k]:.3g}, {curves[m].hi[k]:.3g}]" for m in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(ax, curves: dict[str, Curve], *, theory: np.ndarray | None = None, title: str = "",
                ylabel: str = "squared error / d", logy: bool = False) -> None:
    """Garg Fig. 2 style: mean as markers + line, 90% bootstrap band shaded, theory dashed."""
    markers = "os^Dv<>p"
    for i, (name, c) in enumerate(curves.items()):
        k = np.arange(len(c.mean))
        ax.plot(k, c.mean, marker=markers[i % len(markers)], ms=3.5, lw=1.2, label=name)
        ax.fill_between(k, c.lo, c.hi, alpha=0.25)
    if theory is not None:
        ax.plot(np.arange(len(theory)), theory, "k--", lw=1.0, label="optimum 1 − k/d (theory)")
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    else:  # Garg-style linear axis: clip heavy early spikes (e.g. averaging at k = 1) to the zero-predictor level
        top = max(float(np.nanmax(c.mean[:1])) for c in curves.values())
        ax.set_ylim(0, 1.3 * max(top, 1e-12))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
