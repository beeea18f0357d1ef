"""Summaries of simple-regret curves over runs: bootstrap bands and paired tests between methods.

Runs of different methods share their function, initial design and candidate sets (common random
numbers, `ictl.bo.loop`), so methods are compared *paired by run*: the statistic per run is its mean
simple regret over the BO iterations (the normalised area under its regret curve; the final regret
alone is 0 for most GP runs on a discrete pool), the test is Wilcoxon's signed-rank test on the
paired differences (scipy, zero differences split between ranks) and the interval a percentile
bootstrap of the mean difference over runs.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.stats


class Band(NamedTuple):
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def bootstrap_mean(values_SxT: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Band:
    """Mean over runs (axis 0) and its percentile-bootstrap ``level`` band (resampling runs)."""
    v = np.asarray(values_SxT, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
    boot = v[idx].mean(axis=1)                                   # [n_boot, T]
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a], axis=0)
    return Band(v.mean(axis=0), lo, hi)


class Paired(NamedTuple):
    mean_diff: float      # mean over runs of (a − b)
    lo: float             # bootstrap 95% interval of the mean difference
    hi: float
    p_two_sided: float    # Wilcoxon signed-rank, H0: the differences are symmetric about 0
    p_less: float         # one-sided, H1: a < b
    runs: int


def paired_compare(a_S: np.ndarray, b_S: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> Paired:
    """Paired comparison of per-run statistics a vs b (same runs)."""
    a, b = np.asarray(a_S, np.float64), np.asarray(b_S, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"a_S/b_S: got shapes {a.shape}/{b.shape}; allowed equal 1-D shapes with >= 2 runs")
    diff = a - b
    band = bootstrap_mean(diff, n_boot=n_boot, seed=seed)
    if np.all(diff == 0):
        p2 = pl = 1.0
    else:
        p2 = float(scipy.stats.wilcoxon(diff, zero_method="zsplit").pvalue)
        pl = float(scipy.stats.wilcoxon(diff, zero_method="zsplit", alternative="less").pvalue)
    return Paired(float(diff.mean()), float(band.lo[0]), float(band.hi[0]), p2, pl, int(a.size))
