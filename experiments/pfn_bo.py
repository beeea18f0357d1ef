"""Bayesian optimisation with a PFN surrogate (Müller et al. 2023 "PFNs4BO"; Yu, Picard & Ahmed 2024
"Fast and Accurate Bayesian Optimization with Pre-trained Transformers for Constrained Engineering
Problems", PFN4sBO): PFN expected improvement vs exact-GP EI with the true hyperparameters vs GP-EI
with type-II ML hyperparameters vs random search; simple-regret curves over runs and time per BO step.

The PFN (`models.pfn`, bar head) is trained here on the GP prior through `ictl.train.fit` (or resumed
from ``config.pfn_from``, the workdir of an earlier run), one PFN per (prior, input dimension). The loop
(`ictl.bo.loop`): n_init random points, then per iteration Q random candidates, one surrogate pass,
argmax of the acquisition (`ictl.bo.acquisition`: closed-form EI on the bar distribution, tails
included; constrained EI = EI × Π_j P(g_j ≤ 0) from the same PFN). Problems: functions drawn from
the PFN's own GP prior on a pool of points (``gp``: the exact-GP-EI reference is Bayes-consistent
there), and analytic ones (`ictl.bo.problems`: Branin, Hartmann-6, Ackley, Gramacy's constrained
toy, pressure vessel, welded beam, speed reducer), standardised outputs. Every method sees the same
functions, initial designs and candidate sets (paired runs); `ictl.bo.stats` compares methods by
each run's mean simple regret over the iterations (Wilcoxon signed-rank, bootstrap CI).

Command: `ictl run pfn_bo`. Quick (2 CPU cores): d = 2, RBF ℓ = 0.25, noise 1e-4; PFN 4 layers × 64,
1000 buckets, 2000 steps of 32 datasets of 32 points; 32 runs of 3 initial + 27 BO steps, 1000
candidates; problems gp (pool 1024), Branin, Gramacy (2 constraints). Runtime and measured numbers:
docs/pfn.md (BO section). Expected (issue 9): on GP-prior functions PFN-EI's simple regret is statistically
indistinguishable from exact-GP EI and both are far below random search; PFN steps are cheaper than
ML-II GP steps (PFN4sBO: about an order of magnitude).
Measured (quick, 2488 s wall, 1410 s CPU, load 4.7–11): NOT reproduced. Final regret (mean of 32 runs)
gp: PFN-EI 0.186, GP-EI true 0, GP-EI ML-II 0, random 0.223; Branin: PFN 4.00, ML-II 0.012, random 1.69;
Gramacy: PFN 0.129, ML-II 0.0047, random 0.201. The 2000-step PFN is far from the exact GP (NLL gap
0.49 nats at n = 0, 1.87 at n = 30). Step time (n = 29, Q = 1000): PFN 36 ms, GP 23 ms, ML-II GP 324 ms.
Paper tier (an accelerator run, not run here): the PFN4sBO loop (20 initial points, 100 iterations,
1000 candidates, 30 runs) on all seven problems, PFNs of 6 layers × 512 trained on the Matérn-5/2
hyperprior per input dimension (for the analytic problems) and on the paper's RBF prior (d = 5,
ℓ = 0.6) for the gp problem, 40k steps of 100 datasets.
"""
from __future__ import annotations

import functools
import pathlib
import time

import jax
import ml_collections
import numpy as np

from ictl import pfn_training as pt
from ictl.bo import acquisition as A
from ictl.bo import loop, prior, stats, tasks
from ictl.bo import problems as P
from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks import gp_prior
from ictl.theory import gp
from ictl.train import TrainState, config_optimizer, fit, make_train_step
from models.pfn import PFN, PFNConfig, init_params
from objectives import bar_distribution as bd

REPRODUCE = False
LEFT_OUT = ("time budget: the quick tier took 41 min wall / 23.5 CPU-min (load 4–11 on 2 shared cores; "
            "PFN training 4 CPU-min, ML-II GP-EI loops most of the rest)")
TITLE = "BO with a PFN surrogate: PFN-EI vs exact-GP EI vs ML-II GP-EI vs random search (regret, time per step)"
PRIORS = ("gp", "hyperprior")
ALL_PROBLEMS = ("gp",) + P.PROBLEMS
LABELS = {"pfn": "PFN-EI", "gp_true": "GP-EI (true hyperparameters)", "gp_ml2": "GP-EI (ML-II)",
          "random": "random search"}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.d, c.kernel, c.lengthscale, c.outputscale, c.noise = 2, "rbf", 0.25, 1.0, 1e-4   # the GP prior
    c.test_prior = "gp"          # the PFN prior for the analytic problems: "gp" (above, in their d) or "hyperprior"
    c.n_layers, c.n_heads, c.width, c.mlp_ratio = 4, 4, 64, 2
    c.num_buckets, c.border_samples = 1000, 128_000
    c.cluster_frac = 0.5         # share of training inputs placed next to earlier ones (BO-like designs, ictl.bo.prior)
    c.n_points = 32              # per training dataset: context sizes 0..n_points − 1 (≥ the BO budget − 1)
    c.batch, c.lr, c.warmup, c.lr_end, c.train_steps = 32, 1e-3, 100, 0.05, 2000
    c.log_every, c.ckpt_every, c.eval_datasets = 250, 1000, 256
    c.pfn_from = ""              # workdir of an earlier pfn_bo run: its PFNs are resumed instead of trained here
    c.problems = ("gp", "branin", "gramacy")
    c.methods = ("pfn", "gp_true", "gp_ml2", "random")
    c.acquisition, c.kappa = "ei", 1.0
    c.seeds, c.n_init, c.iterations, c.num_candidates, c.pool_size = 32, 3, 27, 1000, 1024
    c.ml2_kernel, c.ml2_restarts, c.ml2_steps = "matern52", 8, 200
    c.ackley_dim, c.latency_repeats, c.bootstrap = 2, 3, 2000
    if scale == "paper":
        c.d, c.lengthscale, c.test_prior = 5, 0.6, "hyperprior"
        c.n_layers, c.n_heads, c.width = 6, 4, 512
        c.num_buckets, c.border_samples = 1000, 2_000_000
        c.n_points, c.batch, c.lr, c.warmup, c.train_steps = 128, 100, 1e-4, 2000, 40_000
        c.log_every, c.ckpt_every, c.eval_datasets = 1000, 5000, 1000
        c.problems = ALL_PROBLEMS
        c.seeds, c.n_init, c.iterations, c.num_candidates, c.pool_size = 30, 20, 100, 1000, 4096
    return c


def validate(config) -> None:
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check_ints_at_least_one(config, "d", "n_layers", "n_heads", "width", "mlp_ratio", "n_points", "batch",
                            "train_steps", "log_every", "ckpt_every", "eval_datasets", "seeds", "n_init", "iterations",
                            "num_candidates", "pool_size", "ml2_restarts", "ml2_steps", "ackley_dim",
                            "latency_repeats", "bootstrap")
    check_positive(config, "lengthscale", "outputscale", "noise", "lr", "kappa")
    check(0 <= config.cluster_frac <= 1, "cluster_frac", config.cluster_frac, "a number in [0, 1]")
    check(config.kernel in gp.KERNELS, "kernel", config.kernel, str(gp.KERNELS))
    check(config.ml2_kernel in gp.KERNELS, "ml2_kernel", config.ml2_kernel, str(gp.KERNELS))
    check(config.test_prior in PRIORS, "test_prior", config.test_prior, str(PRIORS))
    check(isinstance(config.num_buckets, int) and config.num_buckets >= 2, "num_buckets", config.num_buckets,
          "an integer >= 2")
    check(isinstance(config.border_samples, int) and config.border_samples > config.num_buckets, "border_samples",
          config.border_samples, f"an integer > num_buckets={config.num_buckets}")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(config.seeds >= 2, "seeds", config.seeds, "an integer >= 2 (paired tests over runs)")
    budget = config.n_init + config.iterations
    check(config.n_points >= budget, "n_points", config.n_points,
          f"an integer >= n_init + iterations = {budget} (the PFN must have seen every context size of the loop)")
    probs = tuple(config.problems)
    check(len(probs) > 0 and len(set(probs)) == len(probs) and all(p in ALL_PROBLEMS for p in probs), "problems",
          probs, f"distinct names from {ALL_PROBLEMS}")
    meths = tuple(config.methods)
    check(len(meths) > 0 and len(set(meths)) == len(meths) and all(m in A.METHODS for m in meths), "methods", meths,
          f"distinct names from {A.METHODS}")
    check(config.acquisition in A.ACQUISITIONS, "acquisition", config.acquisition, str(A.ACQUISITIONS))
    constrained = [p for p in probs if p != "gp" and _problem(config, p).num_constraints > 0]
    check(not (config.acquisition == "ucb" and constrained), "acquisition", config.acquisition,
          f"'ei' or 'pi' with constrained problems {constrained}")
    check(config.pfn_from == "" or pathlib.Path(config.pfn_from).is_dir(), "pfn_from", config.pfn_from,
          "'' or the workdir of an earlier pfn_bo run")


def _problem(config, name: str) -> P.Problem:
    return P.get_problem(name, ackley_dim=config.ackley_dim)


def _prior_kind(name: str, config) -> str:
    return "gp" if name == "gp" else config.test_prior


def _sampler(config, kind: str, d: int, batch: int):
    """Training datasets of the PFN (`ictl.bo.prior`: GP prior on BO-like designs)."""
    if kind == "gp":
        return functools.partial(prior.sample_gp_bo, batch=batch, n_points=config.n_points, d=d, kernel=config.kernel,
                                 lengthscale=config.lengthscale, outputscale=config.outputscale, noise=config.noise,
                                 cluster_frac=config.cluster_frac)
    return functools.partial(prior.sample_gp_bo_hyperprior, batch=batch, n_points=config.n_points, d=d,
                             prior=gp.HyperPrior(), cluster_frac=config.cluster_frac)


def train_pfn(config, workdir: pathlib.Path, kind: str, d: int):
    """(PFNConfig, params, borders, info) of the PFN for prior ``kind`` in dimension d (trained or resumed)."""
    root = pathlib.Path(config.pfn_from) if config.pfn_from else workdir
    key = jax.random.fold_in(jax.random.key(config.seed), 1000 + 10 * d + PRIORS.index(kind))
    cfg = PFNConfig(d_in=d, n_layers=config.n_layers, n_heads=config.n_heads, width=config.width,
                    mlp_ratio=config.mlp_ratio, num_buckets=config.num_buckets)
    model = PFN(cfg)
    prior_ys = _sampler(config, kind, d, config.border_samples // config.n_points + 1)(jax.random.fold_in(key, 0)).y
    borders = bd.borders_from_samples(np.asarray(prior_ys), config.num_buckets)
    loss_fn = pt.make_loss_fn(model, _sampler(config, kind, d, config.batch), n_points=config.n_points,
                              borders=borders)
    tx = config_optimizer(config)
    state = TrainState.create(params=init_params(cfg, jax.random.fold_in(key, 1)), tx=tx)
    t0, c0 = time.perf_counter(), time.process_time()
    state, history = fit(state, make_train_step(loss_fn, tx), key=jax.random.fold_in(key, 2),
                         num_steps=config.train_steps, workdir=root / f"pfn_{kind}_d{d}", log_every=config.log_every,
                         ckpt_every=config.ckpt_every, desc=f"pfn {kind} d={d}")
    losses = [h["loss"] for h in history if "loss" in h]
    info = {"train_wall_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
            "last_loss": losses[-1] if losses else None}
    return cfg, state.params, np.asarray(borders), info


def pfn_nll_gap(config, cfg, params, borders, d: int) -> dict[int, tuple[float, float]]:
    """{n: (mean PFN − exact GP NLL of the queries, its SE)} on held-out prior datasets (fixed-hyperparameter prior)."""
    ds = gp_prior.sample_gp(jax.random.fold_in(jax.random.key(config.seed), 7), batch=config.eval_datasets,
                            n_points=config.n_points, d=d, kernel=config.kernel, lengthscale=config.lengthscale,
                            outputscale=config.outputscale, noise=config.noise)   # uniform designs, as in pfn_gp
    ns = sorted({n for n in (0, 5, 15, config.n_points - 2) if 0 <= n < config.n_points})
    a = pt.nll_over_context_sizes(PFN(cfg), params, ds.x, ds.y, ns, borders=borders)
    b = pt.exact_nll_over_context_sizes(ds.x, ds.y, ns, kernel=config.kernel, lengthscale=config.lengthscale,
                                        outputscale=config.outputscale, noise=ds.noise)
    out = {}
    for i, n in enumerate(ns):
        g = (a[i] - b[i])[:, n:].mean(axis=1)                     # per dataset
        out[n] = (float(g.mean()), float(g.std(ddof=1) / np.sqrt(g.size)))
    return out


def _acquisition(config, method: str, task: tasks.Task, pfn):
    kind = config.acquisition
    if method == "pfn":
        cfg, params, borders = pfn
        return A.pfn_acquisition(cfg, params, borders, kind=kind, standardize_y=task.standardize, kappa=config.kappa)
    if method == "gp_true":
        return A.gp_acquisition(kind=kind, kernel=config.kernel, standardize_y=False, lengthscale=config.lengthscale,
                                outputscale=config.outputscale, noise=config.noise, kappa=config.kappa)
    if method == "gp_ml2":
        kernel = config.kernel if task.name == "gp" else config.ml2_kernel
        return A.gp_acquisition(kind=kind, kernel=kernel, standardize_y=task.standardize, kappa=config.kappa,
                                ml2={"restarts": config.ml2_restarts, "steps": config.ml2_steps})
    return A.random_acquisition()


def run_problem(config, name: str, index: int, pfn) -> dict[str, dict]:
    """{method: {"regret": [S, iterations + 1], "step_wall_s", "step_cpu_s", "latency": (wall, cpu), ...}}."""
    key = jax.random.key(config.seed)
    S = config.seeds
    if name == "gp":
        task = tasks.gp_task(d=config.d, noise=config.noise)
        fns64 = tasks.sample_gp_pool(jax.random.fold_in(key, 100 + index), num=S, pool_size=config.pool_size,
                                     d=config.d, kernel=config.kernel, lengthscale=config.lengthscale,
                                     outputscale=config.outputscale)
        fns32 = tasks.GPPool(fns64.x.astype(np.float32), fns64.f.astype(np.float32))
    else:
        task = tasks.problem_task(_problem(config, name))
        fns64, fns32 = np.zeros(S, np.float64), np.zeros(S, np.float32)
    keys = jax.random.split(jax.random.fold_in(key, 200 + index), S)
    out = {}
    for method in config.methods:
        if method == "gp_true" and name != "gp":
            continue  # true hyperparameters exist only for GP-prior functions
        acq = _acquisition(config, method, task, pfn)
        x64 = method != "pfn"
        fns = fns64 if x64 else fns32
        with jax.enable_x64(x64):
            res = loop.run_bo(task, acq, fns, keys, n_init=config.n_init, iterations=config.iterations,
                              num_candidates=config.num_candidates)
            fn0 = jax.tree_util.tree_map(lambda a: a[0], fns)
            st0 = loop.BOState(*(a[0] for a in res.state))
            lat = loop.step_latency(task, acq, fn0, st0, config.n_init + config.iterations - 1, keys[0],
                                    num_candidates=config.num_candidates, repeats=config.latency_repeats)
        out[method] = {"regret": loop.simple_regret(res), "step_wall_s": res.step_wall_s, "step_cpu_s": res.step_cpu_s,
                       "compile_s": res.compile_s, "latency": lat,
                       "feasible_frac": float(np.mean(np.any(res.state.feasible, axis=1)))}
        print(f"pfn_bo: {name} {method}: mean final regret {out[method]['regret'][:, -1].mean():.4g}, "
              f"step {1e3 * lat[0]:.1f} ms", flush=True)
    return out


def _auc(regret_SxT: np.ndarray) -> np.ndarray:
    """Per run: mean simple regret over the BO iterations (after n_init + 1 … T evaluations)."""
    return regret_SxT[:, 1:].mean(axis=1)


def _plot(config, results: dict, workdir: pathlib.Path) -> None:
    probs = list(results)
    fig, axes = new_figure(len(probs) + 1, width=4.2)
    for ax, name in zip(axes[0], probs):
        for method, r in results[name].items():
            band = stats.bootstrap_mean(r["regret"], n_boot=config.bootstrap)
            n = config.n_init + np.arange(band.mean.size)
            floor = 1e-4
            (line,) = ax.plot(n, np.maximum(band.mean, floor), lw=1.5, label=LABELS[method],
                              color=f"C{list(LABELS).index(method)}")   # one colour per method in every panel
            ax.fill_between(n, np.maximum(band.lo, floor), np.maximum(band.hi, floor), color=line.get_color(),
                            alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("simple regret (mean over runs, 95% bootstrap band)")
        ax.set_title(f"{name} (d = {config.d if name == 'gp' else _problem(config, name).d}, {config.seeds} runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0, -1]
    name = probs[0]
    meths = list(results[name])
    ax.bar(range(len(meths)), [1e3 * results[name][m]["latency"][0] for m in meths],
           color=[f"C{list(LABELS).index(m)}" for m in meths])
    ax.set_xticks(range(len(meths)), [LABELS[m] for m in meths], rotation=20, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per BO step (one run, wall)")
    ax.set_title(f"{name}: one step at n = {config.n_init + config.iterations - 1}, Q = {config.num_candidates}")
    save_figure(fig, workdir, "pfn_bo")


def _rows(config, results: dict, gaps: dict) -> list[dict]:
    rows = []
    for d, gap in gaps.items():
        for n, (g, se) in gap.items():
            rows.append(row(f"PFN (d={d}) − exact GP NLL at n={n}", 0.0, g, "theory",
                            note=f"held-out prior datasets, SE {se:.2g}; the surrogate's quality, no claim"))
    if "gp" in results and {"pfn", "gp_true", "random"} <= set(results["gp"]):
        r = results["gp"]
        a_pfn, a_gp, a_rnd = (_auc(r[m]["regret"]) for m in ("pfn", "gp_true", "random"))
        pg = stats.paired_compare(a_pfn, a_gp, n_boot=config.bootstrap)
        rows.append(row("gp: Wilcoxon p, PFN-EI vs exact-GP EI (per-run mean simple regret)", 0.05, pg.p_two_sided,
                        "paper", tol=0.0, claim="at_least",
                        why="issue 9: 'statistically indistinguishable' = the two-sided signed-rank test does not "
                            "reject at 5%",
                        note=f"{pg.runs} paired runs; mean difference {pg.mean_diff:.3g}, 95% bootstrap CI "
                             f"[{pg.lo:.3g}, {pg.hi:.3g}]"))
        gain = float(np.mean(a_rnd - a_gp))
        rows.append(row("gp: 95% CI of PFN − GP mean regret, largest |end| ÷ (random − GP)", 0.0,
                        max(abs(pg.lo), abs(pg.hi)) / gain, "paper", tol=0.1, claim="at_most",
                        why="equivalence margin (this repo's choice): the PFN gives up at most 10% of exact-GP EI's "
                            "gain over random search, with 95% confidence",
                        note=f"random − GP mean regret {gain:.3g}"))
        for m, a in (("pfn", a_pfn), ("gp_true", a_gp)):
            pr = stats.paired_compare(a, a_rnd, n_boot=config.bootstrap)
            rows.append(row(f"gp: {LABELS[m]} mean regret ÷ random search's", 0.2, float(a.mean() / a_rnd.mean()),
                            "paper", tol=0.0, claim="at_most",
                            why="issue 9: 'far below random search', taken as ≥ 5× lower",
                            note=f"one-sided Wilcoxon p = {pr.p_less:.2g}; final regret {r[m]['regret'][:, -1].mean():.3g}"
                                 f" vs random {r['random']['regret'][:, -1].mean():.3g}"))
    for name, r in results.items():
        for m, v in r.items():
            band = stats.bootstrap_mean(v["regret"][:, -1], n_boot=config.bootstrap)
            rows.append(row(f"{name}: {LABELS[m]} final simple regret", 0.0, float(band.mean[0]), "baseline",
                            note=f"95% bootstrap CI [{band.lo[0]:.3g}, {band.hi[0]:.3g}]; feasible runs "
                                 f"{v['feasible_frac']:.2f}"))
        if {"pfn", "gp_ml2"} <= set(r) and name != "gp":
            pc = stats.paired_compare(_auc(r["pfn"]["regret"]), _auc(r["gp_ml2"]["regret"]), n_boot=config.bootstrap)
            rows.append(row(f"{name}: PFN-EI − GP-EI (ML-II) per-run mean regret", 0.0, pc.mean_diff, "baseline",
                            note=f"95% CI [{pc.lo:.3g}, {pc.hi:.3g}], Wilcoxon p = {pc.p_two_sided:.2g}"))
    name = next(iter(results))
    lat = {m: v["latency"] for m, v in results[name].items()}
    for m, (w, c) in lat.items():
        rows.append(row(f"{name}: {LABELS[m]} time per BO step (one run, ms)", 0.0, 1e3 * w, "baseline",
                        note=f"CPU {1e3 * c:.1f} ms; all {config.seeds} runs batched: "
                             f"{1e3 * np.mean(results[name][m]['step_wall_s']):.1f} ms per step"))
    if "pfn" in lat and "gp_ml2" in lat:
        rows.append(row(f"{name}: ML-II GP step time ÷ PFN step time", 10.0, lat["gp_ml2"][0] / lat["pfn"][0], "paper",
                        note="PFN4sBO reports about an order of magnitude; ML-II here: "
                             f"{config.ml2_restarts} restarts × {config.ml2_steps} Adam steps per BO step"))
    return rows


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pfns, infos, gaps = {}, {}, {}
    if "pfn" in config.methods:
        for name in config.problems:
            kind = _prior_kind(name, config)
            d = config.d if name == "gp" else _problem(config, name).d
            if (kind, d) not in pfns:
                cfg, params, borders, info = train_pfn(config, workdir, kind, d)
                pfns[(kind, d)], infos[f"{kind}_d{d}"] = (cfg, params, borders), info
                if kind == "gp":
                    gaps[d] = pfn_nll_gap(config, cfg, params, borders, d)
    results = {}
    for i, name in enumerate(config.problems):
        kind = _prior_kind(name, config)
        d = config.d if name == "gp" else _problem(config, name).d
        results[name] = run_problem(config, name, i, pfns.get((kind, d)))
    _plot(config, results, workdir)
    rows = _rows(config, results, gaps)
    curves = {name: {m: {k: stats.bootstrap_mean(v["regret"], n_boot=config.bootstrap)._asdict()[k].tolist()
                         for k in ("mean", "lo", "hi")} for m, v in r.items()} for name, r in results.items()}
    timing = {name: {m: {"latency_wall_s": v["latency"][0], "latency_cpu_s": v["latency"][1],
                         "batched_step_wall_s": float(np.mean(v["step_wall_s"])),
                         "batched_step_cpu_s": float(np.mean(v["step_cpu_s"])), "compile_s": v["compile_s"]}
                     for m, v in r.items()} for name, r in results.items()}
    write_results(workdir, rows, regret_curves=curves, timing=timing, pfn_training=infos,
                  nll_gap={str(d): {str(n): v for n, v in g.items()} for d, g in gaps.items()})
    return rows
