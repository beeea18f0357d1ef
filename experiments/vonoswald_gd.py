"""von Oswald et al. (2022), "Transformers learn in-context by gradient descent", Figs. 2–4 and the
sine-regression experiment, with the LSA-only stack of `models.lsa_stack`.

1. One LSA layer trained on d = N = 10, x ~ U(−0.5, 0.5)^d, w ~ N(0, I) prompts (fresh batch each
   step, Adam) against one GD step with the best rate (closed form `best_one_step_gd`, checked by
   the MC line search `best_gd_step`): loss, preds diff, model cos, model diff and the loss of
   the midpoint of trained (gauge-aligned) and constructed weights over training, plus the full
   interpolation curve at the end.
2. K-layer LSA (weights shared across layers by default) against K steps of GD and of GD++,
   each with its rate(s) tuned by line search.
3. Out of distribution: the trained 1-layer LSA and the GD step at input scale x ~ U(−αa, αa)
   and weight scale w ~ N(0, α²I); the GD curve is closed form.
4. Sine regression y = A sin(x + φ): an MLP feature map + LSA vs the same MLP + GD (rate
   meta-learned), trained end to end.

Command: `ictl run vonoswald_gd` (`--config.scale=paper`: longer training, K ≤ 5, more
prompts). Runtime (quick): 299 CPU-s, 560 s wall on 2 shared cores at load average ≈ 7.7
(docs/vonoswald.md; 347 s wall idle with the former 2000 K-layer / 3000 sine steps).
Expected: trained 1-layer ½MSE = best 1-step GD = 490/2376 ≈ 0.2062 (closed form; the paper
reports ≈ 0.205), model cos ≥ 0.99, η*/N = 20/33 ≈ 0.606; trained K-layer ≈ GD++ < GD.
Measured (quick, seed 0): 0.20626 (paired estimate, SE 2e-5), model cos 0.99993; K = 2, 3 trained
(1500 steps) 0.1190, 0.0789 vs GD++ 0.1101, 0.0771 vs GD 0.1558, 0.1319; sine (2000 steps)
MLP+LSA 0.00167 vs MLP+GD 0.00199. All 10 claims reproduced (with 1000 K-layer steps K = 2 was not:
0.1351).
Claims (`_rows`): 10, each with its tolerance — 4 SE of the run's own Monte Carlo estimates for
everything with an exact answer (1-layer loss, line search η and loss, the interpolation midpoint,
the OOD losses), the paper's model cos ≥ 0.99, and a fidelity target of 5% of the zero predictor's
loss for the trained K-layer and sine models against their tuned counterparts (GD++; MLP + GD).
Informational: the paper's 0.205 (its own MC value of L*; the closed form is the yardstick) and
the preds diff. The quick run meets every claim (1-layer 1.5 SE; K = 2 off by 0.009, K = 3 by 0.002, tolerance
0.021; η 0.5 SE).
"""
from __future__ import annotations

import math
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ictl.config import SCALES, check, check_ints_at_least_one, check_positive, new_config
from ictl.results import new_figure, row, save_figure, write_results
from ictl.tasks.sine import sample_sine_prompts
from ictl.tasks.uniform_linear import sample_uniform_linear_prompts
from ictl.theory import gd_icl
from ictl.train import TrainState, fit, make_train_step
from models.lsa_stack import LSAStack, gd_construction_params, interpolated_params, interpolation_losses
from objectives.regression import half_mse

REPRODUCE = True
QUICK_CPU_S = 254  # CPU seconds of a fresh quick run (2-core EPYC); `reproduce --jobs` starts the longest first
TITLE = "von Oswald et al. 2022: trained linear self-attention = gradient descent in context"
PAPER_LOSS = 0.205  # the paper's trained 1-layer ½MSE (d = N = 10, U(−0.5, 0.5))


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = new_config(scale)
    c.d, c.n_ctx, c.x_range, c.w_scale = 10, 10, 0.5, 1.0
    c.batch, c.lr, c.b2, c.init_scale = 2048, 1e-3, 0.98, 0.1  # the paper: Adam 1e-3, β₂ 0.98
    c.steps = 1500               # 1-layer training (converges in ≈ 1000 steps)
    c.eval_every = 100
    c.eval_batch = 65536         # fixed eval prompts (loss); metrics use the first metric_batch
    c.metric_batch = 4096
    c.layers = (2, 3)            # K-layer comparison (K = 1 is the run above)
    c.layer_steps = 1500         # K = 2 within 0.009 of GD++ (1000 steps: 0.025, over the 0.021 target)
    c.layer_lr, c.layer_batch = 5e-3, 1024  # K = 3 shared reaches GD++ in 1500 steps (lr 1e-3: not in 3000)
    c.shared = True
    c.search_batch = 8192        # prompts of the GD / GD++ line searches
    c.ood_input_scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    c.ood_weight_scales = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
    c.sine_steps = 2000          # 0 skips the sine panel
    c.sine_batch, c.sine_n_ctx, c.sine_hidden, c.sine_features, c.sine_lr = 256, 20, 64, 16, 3e-3
    c.clip = 10.0                # spike guard: grad norms are ≲ 2 in steady state, one K = 3 spike hit 266
    c.ckpt_every = 1000
    if scale == "paper":
        c.steps, c.layer_steps, c.sine_steps, c.layer_batch, c.sine_batch = 20_000, 20_000, 20_000, 2048, 512
        c.layer_lr = 2e-3  # K up to 5: GD++ rates grow with K (η ≈ 20 at K = 3); not run here
        c.layers, c.eval_batch, c.search_batch, c.eval_every = (2, 3, 4, 5), 262_144, 65_536, 500
        c.ckpt_every = 5000
    return c


def validate(c) -> None:
    check(c.scale in SCALES, "scale", c.scale, f"one of {SCALES}")
    check_ints_at_least_one(c, "d", "n_ctx", "batch", "layer_batch", "steps", "eval_every", "search_batch",
                            "ckpt_every", "sine_batch", "sine_n_ctx", "sine_hidden", "sine_features")
    for key in ("layer_steps", "sine_steps"):
        check(isinstance(c[key], int) and c[key] >= 0, key, c[key], "an integer >= 0")
    check_positive(c, "x_range", "w_scale", "lr", "layer_lr", "sine_lr", "init_scale", "clip")
    check(0 < c.b2 < 1, "b2", c.b2, "0 < b2 < 1")
    check(c.eval_batch >= 256, "eval_batch", c.eval_batch, "an integer >= 256")
    check(1 <= c.metric_batch <= c.eval_batch, "metric_batch", c.metric_batch, "1 <= metric_batch <= eval_batch")
    check(all(isinstance(k, int) and 2 <= k <= 12 for k in c.layers) and len(set(c.layers)) == len(c.layers),
          "layers", c.layers, "distinct integers in [2, 12] (K = 1 is always run)")
    for key in ("ood_input_scales", "ood_weight_scales"):
        check(len(c[key]) >= 1 and all(a > 0 for a in c[key]), key, c[key], "a non-empty list of numbers > 0")


class SineLSA(nn.Module):
    """MLP features φ(x) ∈ R^F (1 → hidden → F, gelu), then a K-layer LSA on tokens (φ(x_i), y_i)."""

    hidden: int
    features: int
    num_layers: int = 1

    @nn.compact
    def __call__(self, x_ctx, y_ctx, x_q):
        phi = _Features(self.hidden, self.features)
        return LSAStack(d=self.features, num_layers=self.num_layers, init_scale=0.1,
                        param_dtype=jnp.float32)(phi(x_ctx), y_ctx, phi(x_q))


class SineGD(nn.Module):
    """The same MLP features, then K steps of GD on (φ(x_i), y_i) with a learnt rate η = exp(θ)."""

    hidden: int
    features: int
    num_layers: int = 1

    @nn.compact
    def __call__(self, x_ctx, y_ctx, x_q):
        phi = _Features(self.hidden, self.features)
        log_eta = self.param("log_eta", nn.initializers.zeros, (self.num_layers,), jnp.float32)
        zeros = jnp.zeros((self.num_layers,), jnp.float32)
        return gd_icl.gd_plus_plus_forward(phi(x_ctx), y_ctx, phi(x_q), jnp.exp(log_eta), zeros)


class _Features(nn.Module):
    hidden: int
    features: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden, param_dtype=jnp.float32)(x))
        return nn.Dense(self.features, param_dtype=jnp.float32)(h)


_sample_jit = jax.jit(sample_uniform_linear_prompts, static_argnames=("batch", "n_ctx", "d", "n_query", "dtype"))


def _linear_sampler(c, batch):
    """key, input scale α_x, weight scale α_w ↦ prompts (x ~ U(−α_x a, α_x a), w ~ N(0, (α_w s)² I)); one
    compiled sampler per batch size, the scales traced."""
    def sample(key, x_scale=1.0, w_scale=1.0):
        return _sample_jit(key, batch=batch, n_ctx=c.n_ctx, d=c.d, x_range=jnp.float32(c.x_range * x_scale),
                           w_scale=jnp.float32(c.w_scale * w_scale))
    return sample


def _train(c, model, params, sampler, *, steps, lr, workdir, key, eval_fn=None, eval_every=None, desc=""):
    """Adam (β₂ = c.b2, cosine decay to lr/10, gradients clipped at global norm c.clip) on ½MSE of
    fresh prompts from ``sampler(key)``."""
    def loss_fn(p, k):
        pr = sampler(k)
        return half_mse(model.apply(p, pr.x_ctx, pr.y_ctx, pr.x_q), pr.y_q), {}

    tx = optax.chain(optax.clip_by_global_norm(c.clip),
                     optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1), b2=c.b2))
    state = TrainState.create(params=params, tx=tx)
    every = eval_every or max(steps // 20, 1)
    return fit(state, make_train_step(loss_fn, tx), key=key, num_steps=steps, workdir=workdir, log_every=every,
               eval_every=every, ckpt_every=min(c.ckpt_every, steps), eval_fn=eval_fn, desc=desc)


def _loss_of(model, params, pr):
    return float(jax.jit(lambda p, q: half_mse(model.apply(p, q.x_ctx, q.y_ctx, q.x_q), q.y_q))(params, pr))


def _gdpp_loss(pr, eta, gamma, num_steps):
    y = gd_icl.gdpp_predictions(pr.x_ctx, pr.y_ctx, pr.x_q, eta=eta, gamma=gamma, num_steps=num_steps)
    return float(np.mean(0.5 * (np.asarray(y) - np.asarray(pr.y_q, np.float64)) ** 2))


def _paired_loss(apply, params, pr, y_ref):
    """(½MSE, ½MSE − ½MSE_ref on the same prompts, SE of that difference, SE of the ½MSE itself)."""
    e = np.asarray(apply(params, pr.x_ctx, pr.y_ctx, pr.x_q), np.float64) - np.asarray(pr.y_q, np.float64)
    e_ref = np.asarray(y_ref, np.float64) - np.asarray(pr.y_q, np.float64)
    l, l_ref = 0.5 * np.mean(e**2, axis=1), 0.5 * np.mean(e_ref**2, axis=1)
    return (float(l.mean()), float((l - l_ref).mean()), float((l - l_ref).std(ddof=1) / math.sqrt(l.size)),
            float(l.std(ddof=1) / math.sqrt(l.size)))


def _eta_se(c, pr, eta_star: float) -> float:
    """Standard error of the line search's η̂ (on ``c.search_batch`` prompts): η̂ − η* ≈ −L̂′(η*)/L″ with
    L″ exact (L is quadratic in η: a central difference of the closed form) and the per-prompt spread
    of dℓ/dη = (ŷ − y)·ŷ/η (one step: ŷ ∝ η) taken from the prompts ``pr``."""
    y_hat = np.asarray(gd_icl.gd_predictions(pr.x_ctx, pr.y_ctx, pr.x_q, eta=eta_star, num_steps=1))
    dl = np.mean((y_hat - np.asarray(pr.y_q, np.float64)) * y_hat / eta_star, axis=1)
    h = 0.1 * eta_star
    curv = sum(w * gd_icl.one_step_gd_loss(eta_star + k * h, d=c.d, n_ctx=c.n_ctx, x_range=c.x_range,
                                           w_scale=c.w_scale) for k, w in ((-1, 1), (0, -2), (1, 1))) / h**2
    return float(dl.std(ddof=1) / math.sqrt(c.search_batch) / curv)


def run(config, workdir: pathlib.Path) -> list[dict]:
    c, workdir = config, pathlib.Path(workdir)
    t_start, cpu_start = time.time(), time.process_time()
    # RBG keys (XLA RngBitGenerator): the samplers compile ≈ 5× faster on CPU than with threefry
    # (measured 0.7 s vs 3.4 s), and compiles dominate the quick run.
    key = jax.random.key(c.seed, impl="rbg")
    k_init, k_train, k_eval, k_search, k_layers, k_ood, k_sine = jax.random.split(key, 7)
    timings = {}

    def lap(name):  # CPU seconds per phase (≈ unloaded wall time: the steps are single-threaded)
        timings[name] = round(time.process_time() - cpu_start - sum(timings.values()), 2)

    eta_star, loss_star = gd_icl.best_one_step_gd(d=c.d, n_ctx=c.n_ctx, x_range=c.x_range, w_scale=c.w_scale)
    search1 = gd_icl.best_gd_step(k_search, num_steps=1, d=c.d, n_ctx=c.n_ctx, batch=c.search_batch,
                                  x_range=c.x_range, w_scale=c.w_scale)

    # --- 1. one layer: training, alignment metrics, interpolation --------------------------------
    model = LSAStack(d=c.d, num_layers=1, init_scale=c.init_scale)
    train_sampler = _linear_sampler(c, c.batch)
    ev = _linear_sampler(c, c.eval_batch)(k_eval)
    mt = jax.tree.map(lambda a: a[: c.metric_batch], ev)
    params_gd = gd_construction_params(c.d, eta=eta_star, num_layers=1)
    gd_fn = lambda xc, yc, xq: gd_icl.gd_predictions(xc, yc, xq, eta=eta_star, num_steps=1)  # noqa: E731
    y_gd_ev = gd_fn(ev.x_ctx, ev.y_ctx, ev.x_q)
    apply = jax.jit(model.apply)
    loss_on = jax.jit(lambda p, pr: half_mse(model.apply(p, pr.x_ctx, pr.y_ctx, pr.x_q), pr.y_q))
    eval_loss = lambda p: loss_on(p, ev)  # noqa: E731
    gd_ev_loss = float(np.mean(0.5 * (np.asarray(y_gd_ev) - np.asarray(ev.y_q)) ** 2))
    eta_K = jnp.full((1,), eta_star, jnp.float32)

    @jax.jit
    def eval_metrics(params, ev, mt):  # float32 during training; the final numbers are float64 below
        tf_fn = lambda xc, yc, xq: model.apply(params, xc, yc, xq)  # noqa: E731
        gd32 = lambda xc, yc, xq: gd_icl.gd_plus_plus_forward(xc, yc, xq, eta_K, 0 * eta_K)  # noqa: E731
        m = gd_icl.alignment_metrics(tf_fn, gd32, mt.x_ctx, mt.y_ctx, mt.x_q)
        mid = half_mse(model.apply(interpolated_params(params, params_gd, 0.5), ev.x_ctx, ev.y_ctx, ev.x_q),
                       ev.y_q)
        return {"eval_loss": half_mse(model.apply(params, ev.x_ctx, ev.y_ctx, ev.x_q), ev.y_q), "interp_loss": mid, **m}

    def eval_one_layer(state):
        return {k: float(v) for k, v in eval_metrics(state.params, ev, mt).items()}

    params0 = model.init(k_init, ev.x_ctx[:1], ev.y_ctx[:1], ev.x_q[:1])
    state, hist = _train(c, model, params0, train_sampler, steps=c.steps, lr=c.lr,
                         workdir=workdir / "train" / "one_layer", key=k_train, eval_fn=eval_one_layer,
                         eval_every=c.eval_every, desc="1-layer LSA")
    params_tf = state.params
    tf_fn = lambda xc, yc, xq: model.apply(params_tf, xc, yc, xq)  # noqa: E731
    final = gd_icl.compare_predictors(tf_fn, gd_fn, mt.x_ctx, mt.y_ctx, mt.x_q)
    tf_loss, diff, diff_se, _ = _paired_loss(apply, params_tf, ev, y_gd_ev)
    ts = np.linspace(0.0, 1.0, 11)
    interp = interpolation_losses(eval_loss, params_tf, params_gd, ts)
    # tolerances: the paired SE of (midpoint − GD) on the eval prompts, the SE of the line search's η̂
    mid_se = _paired_loss(apply, interpolated_params(params_tf, params_gd, 0.5), ev, y_gd_ev)[2]
    eta_se = _eta_se(c, jax.tree.map(lambda a: a[: c.search_batch], ev), eta_star)
    lap("one_layer")

    # --- 2. K layers vs K steps of GD / GD++ ------------------------------------------------------
    layer_res = {1: {"tf": tf_loss, "gd": gd_ev_loss, "gdpp": gd_ev_loss}}
    for K in c.layers:
        if c.layer_steps == 0:
            break
        kk = jax.random.fold_in(k_layers, K)
        gd = gd_icl.best_gd_step(kk, num_steps=K, d=c.d, n_ctx=c.n_ctx, batch=c.search_batch,
                                 x_range=c.x_range, w_scale=c.w_scale)
        gdpp = gd_icl.best_gd_step(kk, num_steps=K, gd_plus=True, d=c.d, n_ctx=c.n_ctx, batch=c.search_batch,
                                   x_range=c.x_range, w_scale=c.w_scale)
        mk = LSAStack(d=c.d, num_layers=K, shared=c.shared, init_scale=c.init_scale)
        st, _ = _train(c, mk, mk.init(jax.random.fold_in(k_init, K), ev.x_ctx[:1], ev.y_ctx[:1], ev.x_q[:1]),
                       _linear_sampler(c, c.layer_batch), steps=c.layer_steps, lr=c.layer_lr,
                       workdir=workdir / "train" / f"layers_{K}", key=jax.random.fold_in(k_train, K),
                       desc=f"{K}-layer LSA")
        layer_res[K] = {"tf": _loss_of(mk, st.params, ev),  # all three on the same eval prompts
                        "gd": _gdpp_loss(ev, gd.eta, 0.0, K), "gdpp": _gdpp_loss(ev, gdpp.eta, gdpp.gamma, K), "eta_gd": gd.eta, "eta_gdpp": gdpp.eta,
                        "gamma_gdpp": gdpp.gamma}

    lap("layers")

    # --- 3. out of distribution -------------------------------------------------------------------
    ood, ood_sampler = {}, _linear_sampler(c, c.metric_batch * 4)
    for kind, scales in (("input", c.ood_input_scales), ("weight", c.ood_weight_scales)):
        pts = []
        for i, a in enumerate(scales):
            pr = ood_sampler(jax.random.fold_in(k_ood, 100 * (kind == "input") + i),
                             a if kind == "input" else 1.0, a if kind == "weight" else 1.0)
            y_gd = gd_icl.gd_predictions(pr.x_ctx, pr.y_ctx, pr.x_q, eta=eta_star, num_steps=1)
            l_tf, _, _, l_tf_se = _paired_loss(apply, params_tf, pr, y_gd)
            l_gd = float(np.mean(0.5 * (np.asarray(y_gd) - np.asarray(pr.y_q)) ** 2))
            exact = gd_icl.one_step_gd_loss(eta_star, d=c.d, n_ctx=c.n_ctx, x_range=c.x_range * (a if kind == "input" else 1),
                                            w_scale=c.w_scale * (a if kind == "weight" else 1))
            pts.append((a, l_tf, l_gd, exact, l_tf_se))
        ood[kind] = np.array(pts)

    lap("ood")

    # --- 4. sine regression -----------------------------------------------------------------------
    sine = {}
    if c.sine_steps > 0:
        sampler = lambda k: sample_sine_prompts(k, batch=c.sine_batch, n_ctx=c.sine_n_ctx)  # noqa: E731
        sev = sample_sine_prompts(jax.random.fold_in(k_sine, 1), batch=c.metric_batch * 4, n_ctx=c.sine_n_ctx)
        for name, cls in (("MLP + LSA", SineLSA), ("MLP + GD", SineGD)):
            m = cls(c.sine_hidden, c.sine_features)
            s_loss = jax.jit(lambda p, pr, m=m: half_mse(m.apply(p, pr.x_ctx, pr.y_ctx, pr.x_q), pr.y_q))
            ev_fn = lambda p, f=s_loss: f(p, sev)  # noqa: E731
            st, h = _train(c, m, m.init(k_init, sev.x_ctx[:1], sev.y_ctx[:1], sev.x_q[:1]), sampler,
                           steps=c.sine_steps, lr=c.sine_lr, workdir=workdir / "train" / ("sine_" + name[-3:].strip().lower()),
                           key=k_sine, eval_fn=lambda s, f=ev_fn: {"eval_loss": float(f(s.params))}, desc=name)
            sine[name] = (h, float(ev_fn(st.params)))
        sine["zero"] = float(0.5 * np.mean(np.asarray(sev.y_q) ** 2))

    lap("sine")
    rows = _rows(c, eta_star, loss_star, search1, tf_loss, diff, diff_se, gd_ev_loss, final, interp, layer_res, ood, sine,
                 se={"mid": mid_se, "eta": eta_se})
    _figures(c, workdir, hist, loss_star, gd_ev_loss, eta_star, ts, interp, layer_res, ood, sine)
    lap("figures")
    write_results(workdir, rows, experiment="vonoswald_gd", wall_s=time.time() - t_start,
                  cpu_s=time.process_time() - cpu_start, cpu_s_by_phase=timings, layers=layer_res,
                  gd_line_search={"eta": search1.eta, "loss": search1.loss, "loss_se": search1.loss_se})
    return rows


FIDELITY = 0.05  # trained model vs a tuned learner: within 5% of the zero predictor's loss (garg_linear's 0.05)


def _rows(c, eta_star, loss_star, search1, tf_loss, diff, diff_se, gd_ev_loss, final, interp, layer_res, ood, sine,
          *, se):
    """Claims: the 1-layer LSA against the exact optimum (4 SE of the paired estimate), the line search
    against the closed form (4 SE each), model cos ≥ 0.99 (the paper), the flat interpolation (4 paired
    SE), the K-layer LSA and the sine model against their tuned counterparts (fidelity: 5% of the zero
    predictor's loss), the OOD losses against GD's closed form (4 SE of the trained model's MC loss).
    Informational: the paper's 0.205 (an MC number of the same optimum) and the preds diff."""
    cv = loss_star + diff  # control variate: trained − GD on the same prompts, plus the exact GD loss
    zero = 0.5 * c.w_scale**2 * c.d * c.x_range**2 / 3  # ½E y² for x ~ U(−a, a)^d, w ~ N(0, s²I)
    fid = FIDELITY * zero
    fid_why = f"fidelity target (as garg_linear): within 5% of the zero predictor's ½MSE {zero:.4g}"
    rows = [
        row("1-layer LSA ½MSE vs best 1-step GD (closed form)", loss_star, cv, "theory", tol=4 * diff_se,
            why="4 Monte Carlo SE of the paired estimate L* + (L_TF − L_GD)",
            note=f"paired estimate L* + (L_TF − L_GD) on {c.eval_batch} prompts, SE {diff_se:.1e}; "
                 f"raw eval {tf_loss:.4f} (GD on the same prompts {gd_ev_loss:.4f})"),
        row("1-layer LSA ½MSE vs paper", PAPER_LOSS, cv, "paper",
            note="informational: the paper's ≈ 0.205 is its own Monte Carlo value of the same optimum, 0.6% below "
                 "the exact L* = 490/2376; the claim is the closed-form row above"),
        row("best 1-step GD η (MC line search) vs closed form", eta_star, search1.eta, "theory", tol=4 * se["eta"],
            why="4 SE of the line search's η̂ (delta method: spread of dℓ/dη at η* over the curvature L″)",
            note=f"η on the mean loss; η/N = {eta_star / c.n_ctx:.4f}; search on {c.search_batch} prompts; "
                 f"SE {se['eta']:.2g}"),
        row("best 1-step GD ½MSE (MC) vs closed form", loss_star, search1.loss, "theory", tol=4 * search1.loss_se,
            why="4 Monte Carlo SE (independent prompts)", note=f"MC SE {search1.loss_se:.1e}"),
        row("model cos (trained vs GD, ∂ŷ/∂x_q)", 1.0, final["model_cos"], "paper", tol=0.01, claim="at_least",
            why="the paper: model cos ≥ 0.99 after training", note="paper: ≥ 0.99"),
        row("preds diff mean|ŷ_TF − ŷ_GD|", 0.0, final["preds_diff"], "paper",
            note="informational (the paper plots it, no threshold; the loss rows carry the claim); ŷ scale ≈ 0.6"),
        row("interpolated weights (t = 0.5) ½MSE vs GD", gd_ev_loss, float(interp[5]), "paper", tol=4 * se["mid"],
            why="4 SE of the paired difference (midpoint − GD) on the same eval prompts",
            note="same eval prompts; flat interpolation = trained and constructed weights agree up to gauge"),
    ]
    for K, r in layer_res.items():
        if K > 1:
            rows.append(row(f"{K}-layer LSA ½MSE vs {K}-step GD++", r["gdpp"], r["tf"], "baseline", tol=fid,
                            why=fid_why, note=f"GD {r['gd']:.4f} (η {r['eta_gd']:.2f}); GD++ η {r['eta_gdpp']:.2f}, "
                                              f"γ {r['gamma_gdpp']:.2f}; shared={c.shared}"))
    for kind in ood:
        a, l_tf, l_gd, exact, l_se = ood[kind][-1]
        rows.append(row(f"OOD {kind} scale α={a:g}: 1-layer LSA ½MSE vs GD (closed form)", exact, l_tf, "theory",
                        tol=4 * l_se, why="4 Monte Carlo SE of the trained model's loss (heavy-tailed at large α)",
                        note=f"GD on the same prompts {l_gd:.4g}; MC SE {l_se:.2g}"))
    if sine:
        rows.append(row("sine: MLP + LSA ½MSE vs MLP + GD", sine["MLP + GD"][1], sine["MLP + LSA"][1], "baseline",
                        tol=FIDELITY * sine["zero"], why="fidelity target (as garg_linear): within 5% of the zero "
                                                         f"predictor's ½MSE {sine['zero']:.4g}",
                        note=f"zero predictor {sine['zero']:.4f}"))
    return rows


def _figures(c, workdir, hist, loss_star, gd_ev_loss, eta_star, ts, interp, layer_res, ood, sine):
    ev = [h for h in hist if "eval_loss" in h]
    step = np.array([h["step"] for h in ev])
    fig, ax = new_figure()
    ax = ax[0, 0]
    ax.plot(step, [h["eval_loss"] for h in ev], "o", ms=3, label="trained 1-layer LSA")
    ax.plot(step, [h["interp_loss"] for h in ev], "x", ms=4, label="midpoint of trained & constructed weights")
    ax.axhline(gd_ev_loss, color="k", label=f"best 1-step GD (η/N = {eta_star / c.n_ctx:.3f})")
    ax.axhline(PAPER_LOSS, color="gray", ls=":", label="paper: trained LSA 0.205")
    ax.set(yscale="log", xlabel="training step", ylabel="½ MSE on the eval prompts",
           title=f"d = {c.d}, N = {c.n_ctx}; population L* = {loss_star:.4f}")
    ax.legend(fontsize=8)
    save_figure(fig, workdir, "loss_vs_gd")

    fig, axes = new_figure(4, 1, width=3.6)
    for a, key_, lab, log in zip(axes[0], ("preds_diff", "model_cos", "model_diff"),
                                 ("preds diff mean|ŷ_TF − ŷ_GD|", "model cos", "model diff ‖Δ ∂ŷ/∂x_q‖"),
                                 (True, False, True)):
        a.plot(step, [h[key_] for h in ev], "o-", ms=3)
        a.set(xlabel="training step", ylabel=lab, yscale="log" if log else "linear")
    axes[0, 1].axhline(1.0, color="k", lw=0.8)
    a = axes[0, 3]
    a.plot(ts, interp, "o-", ms=3, label="end of training")
    a.plot(ts[5], interp[5], "s", ms=5)
    a.axhline(gd_ev_loss, color="k", label="best 1-step GD")
    a.set(xlabel="t  (0 = trained, 1 = constructed)", ylabel="½ MSE of interpolated weights")
    a.legend(fontsize=8)
    save_figure(fig, workdir, "alignment")

    fig, ax = new_figure()
    ax = ax[0, 0]
    ks = sorted(layer_res)
    ax.plot(ks, [layer_res[k]["gd"] for k in ks], "-", color="C1", label="K steps GD (tuned η)")
    ax.plot(ks, [layer_res[k]["gdpp"] for k in ks], "--", color="C2", label="K steps GD++ (tuned η, γ)")
    ax.plot(ks, [layer_res[k]["tf"] for k in ks], "o", color="C0", label=f"trained LSA (shared={c.shared})")
    ax.set(xlabel="layers / steps K", ylabel="½ MSE", yscale="log", xticks=ks)
    ax.legend(fontsize=8)
    save_figure(fig, workdir, "layers")

    fig, axes = new_figure(2, 1)
    labels = (f"input scale α: x ~ U(−{c.x_range:g}α, {c.x_range:g}α)", f"weight scale α: w ~ N(0, ({c.w_scale:g}α)² I)")
    for a, kind, lab in zip(axes[0], ("input", "weight"), labels):
        arr = ood[kind]
        fine = np.linspace(arr[0, 0], arr[-1, 0], 100)
        exact = [gd_icl.one_step_gd_loss(eta_star, d=c.d, n_ctx=c.n_ctx,
                                         x_range=c.x_range * (s if kind == "input" else 1),
                                         w_scale=c.w_scale * (s if kind == "weight" else 1)) for s in fine]
        a.plot(fine, exact, "k-", label="1-step GD (closed form)")
        a.plot(arr[:, 0], arr[:, 2], "x", color="C1", label="1-step GD (MC)")
        a.plot(arr[:, 0], arr[:, 1], "o", mfc="none", color="C0", label="trained 1-layer LSA")
        a.set(xlabel=lab, ylabel="½ MSE", yscale="log")
        a.legend(fontsize=8)
    save_figure(fig, workdir, "ood")

    if sine:
        fig, ax = new_figure()
        ax = ax[0, 0]
        for name, col in (("MLP + LSA", "C0"), ("MLP + GD", "C1")):
            h = [r for r in sine[name][0] if "eval_loss" in r]
            ax.plot([r["step"] for r in h], [r["eval_loss"] for r in h], "o-", ms=3, color=col, label=name)
        ax.axhline(sine["zero"], color="gray", ls=":", label="zero predictor")
        ax.set(xlabel="training step", ylabel="½ MSE", yscale="log", title="y = A sin(x + φ)")
        ax.legend(fontsize=8)
        save_figure(fig, workdir, "sine")
