"""The GPICL pipeline shared by the `gpicl_*` experiments (Kirsch et al. 2022): config keys and
their checks, the data set on the device, the models, the training loss, the evaluation curves.

Data: ``config.dataset`` is read through TFDS (`ictl.data`), z-normalised with the train split's
statistics (images: one mean/std over all pixels; tabular sets: per feature) and put on the device once; training sequences come from the train split, evaluation
sequences from the test split (held-out images). Tasks (`ictl.tasks.gpicl`): training draws from a
pool of 2^k tasks (k = ``log2_tasks``) or fresh tasks ("fresh"); *seen* evaluation tasks are pool
ids, *unseen* ones are fresh keys from a separate stream. Models (``kind``): "transformer" —
`models.gpt.GPT` with ``out_dim`` = n_labels and tokens [A x_t, one_hot(y_{t−1})]; "lstm" and
"matrix" — `models.recurrent`. Loss: mean cross-entropy over all B·L positions.
"""
from __future__ import annotations

import functools
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ictl import class_baselines as cb
from ictl import data as idata
from ictl.config import SCALES, ConfigError, check, check_ints_at_least_one, new_config
from ictl.tasks import gpicl as G
from ictl.train import TrainState, config_optimizer, fit, make_train_step, shard_batch
from models import recurrent
from models.gpt import GPT, GPTConfig, num_params
from models.gpt import init_params as gpt_init

KINDS = ("transformer", "lstm", "matrix")
FRESH = "fresh"
LN10 = float(np.log(10.0))


# ----------------------------------------------------------------------------- config
def base_config(scale: str) -> ml_collections.ConfigDict:
    """Keys every gpicl experiment has (quick values; the experiments set their paper values)."""
    c = new_config(scale)
    c.pool_seed = 1234             # the pool's k-bit seeds are folded into key(pool_seed)
    c.dataset = "digits"
    c.data_dir = idata.default_data_dir()
    c.download = True              # prepare scikit-learn's sets into data_dir when missing
    c.seq_len = 100
    c.d_proj = 64                  # D_p, the projected width (digits: = N_x = 64, as in the paper)
    c.n_labels = 10
    c.log2_tasks = FRESH
    c.fixed_perm_frac = 0.0
    c.n_layers = 2
    c.n_heads = 4
    c.width = 32
    c.batch = 64
    c.lr = 3e-3
    c.warmup = 200
    c.lr_end = 0.1
    c.train_steps = 2000
    c.log_every = 100
    c.ckpt_every = 1000
    c.eval_prompts = 256
    c.baseline_positions = "0,1,2,4,9,19,29,49,74,99"   # query positions t (t examples before) for the baselines
    c.gd_steps = 100
    c.gd_lr = 1.0
    c.gd_l2 = 1e-3
    c.knn_k = 1
    if scale == "quick":   # 2 shared CPU cores: a GPT step at B = 64, L = 100 costs ≈ 0.25 s CPU here
        c.seq_len, c.batch, c.train_steps, c.warmup = 50, 32, 600, 60
        c.log_every, c.ckpt_every = 25, 300
        c.baseline_positions = "0,1,2,4,9,19,29,39,49"
    return c


def parse_log2_tasks(text, key: str = "log2_tasks") -> list[int | None]:
    """'fresh' / '4' / '2,4,fresh' → [None] / [4] / [2, 4, None] (None = fresh tasks); else ConfigError."""
    allowed = (f"comma-separated integers in 0..{G.MAX_LOG2_TASKS} (2^k tasks) or 'fresh', e.g. 2,4,8,fresh")
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    check(isinstance(text, str) and text.strip() != "", key, text, allowed)
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part == FRESH:
            out.append(None)
            continue
        check(part.lstrip("-").isdigit(), key, text, allowed)
        k = int(part)
        check(0 <= k <= G.MAX_LOG2_TASKS, key, text, allowed + (" (k must not be negative)" if k < 0 else ""))
        out.append(k)
    check(len(set(out)) == len(out), key, text, allowed + " without repeats")
    return out


def parse_positions(text, seq_len: int, key: str = "baseline_positions") -> np.ndarray:
    allowed = f"comma-separated distinct integers in 0..{seq_len - 1}"
    check(isinstance(text, str) and all(p.strip().isdigit() for p in text.split(",")), key, text, allowed)
    pos = [int(p) for p in text.split(",")]
    check(all(0 <= p < seq_len for p in pos) and len(set(pos)) == len(pos), key, text, allowed)
    return np.asarray(sorted(pos), np.int32)


def check_dataset(config, name: str, key: str = "dataset") -> None:
    """Known name; prepared, or preparable into a writable data_dir when config.download (reads only)."""
    check(name in idata.DATASETS, key, name, f"one of {idata.DATASETS}")
    d = config.data_dir
    check(isinstance(d, str) and d != "", "data_dir", d, "a directory path")
    if idata.is_prepared(name, d):
        return
    if config.download and idata.can_prepare(name):
        check(idata.writable(d), "data_dir", d, "a directory that can be created and written (to prepare "
              f"{name!r} there), or a data_dir where it is already prepared")
        return
    raise ConfigError(f"config.{key}={name!r}: not prepared in {d}; {idata.prepare_hint(name, d)}")


def validate_common(config) -> None:
    """The checks shared by the gpicl experiments (before anything is compiled or written)."""
    check(config.scale in SCALES, "scale", config.scale, str(SCALES))
    check_ints_at_least_one(config, "d_proj", "n_labels", "n_layers", "n_heads", "width", "batch", "train_steps",
                            "eval_prompts", "log_every", "ckpt_every", "gd_steps", "knn_k")
    check(isinstance(config.seq_len, int) and config.seq_len >= 2, "seq_len", config.seq_len, "an integer >= 2")
    check(config.n_labels >= 2, "n_labels", config.n_labels, "an integer >= 2")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(0.0 <= config.fixed_perm_frac <= 1.0, "fixed_perm_frac", config.fixed_perm_frac, "a number in [0, 1]")
    check(config.lr > 0, "lr", config.lr, "a number > 0")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(config.gd_lr > 0 and config.gd_l2 >= 0, "gd_lr", config.gd_lr, "gd_lr > 0 (and gd_l2 >= 0)")
    parse_log2_tasks(config.log2_tasks)
    parse_positions(config.baseline_positions, config.seq_len)
    check_dataset(config, config.dataset)


# ----------------------------------------------------------------------------- data
class Data(NamedTuple):
    x_train: jax.Array     # [P, F] z-normalised with the train statistics
    y_train: jax.Array     # [P] int32
    x_test: jax.Array
    y_test: jax.Array
    n_classes: int
    name: str


def load_data(config, name: str | None = None, *, whole: bool = False) -> Data:
    """``name`` (default config.dataset) through TFDS; ``whole``: train = test = both splits together
    (meta-test-only sets, e.g. the tabular transfer sets)."""
    name = name or config.dataset
    tr = idata.load_split(name, "train", data_dir=config.data_dir, download=config.download)
    te = idata.load_split(name, "test", data_dir=config.data_dir, download=config.download)
    if whole:
        x = np.concatenate([tr.x, te.x])
        y = np.concatenate([tr.y, te.y])
        xz, = G.znormalise(x, per_feature=name not in idata.IMAGES)
        return Data(*(jnp.asarray(a) for a in (xz, y, xz, y)), n_classes=tr.n_classes, name=name)
    xtr, xte = G.znormalise(tr.x, te.x, per_feature=name not in idata.IMAGES)
    return Data(jnp.asarray(xtr), jnp.asarray(tr.y), jnp.asarray(xte), jnp.asarray(te.y), n_classes=tr.n_classes,
                name=name)


def check_lengths(config, data: Data, key: str = "seq_len") -> None:
    rows = min(data.x_train.shape[0], data.x_test.shape[0])
    check(config.seq_len <= rows, key, config.seq_len, f"an integer in 2..{rows} (rows of {data.name!r})")
    check(data.n_classes <= config.n_labels, "n_labels", config.n_labels, f">= {data.n_classes} ({data.name!r})")


# ----------------------------------------------------------------------------- models
def build_model(config, kind: str, *, width: int | None = None):
    """(module, params) for kind ∈ KINDS; tokens [B, L, D_p + V] → logits [B, L, V]."""
    if kind not in KINDS:
        raise ValueError(f"kind: got {kind!r}; allowed {KINDS}")
    d_in = G.token_width(config.d_proj, config.n_labels)
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    w = width or config.width
    if kind == "transformer":
        cfg = GPTConfig(d_in=d_in, max_tokens=config.seq_len, n_layers=config.n_layers, n_heads=config.n_heads,
                        width=w, out_dim=config.n_labels)
        return GPT(cfg), jax.jit(functools.partial(gpt_init, cfg))(key)   # one compile, not op by op
    cfg = recurrent.RecurrentConfig(d_in=d_in, kind=kind, width=w, n_layers=config.n_layers, n_heads=config.n_heads,
                                    out_dim=config.n_labels)
    return recurrent.RecurrentClassifier(cfg), jax.jit(functools.partial(recurrent.init_params, cfg))(key)


def param_count(config, kind: str, width: int) -> int:
    """Parameters of ``kind`` at ``width`` from shapes alone (jax.eval_shape: nothing is allocated)."""
    shapes = jax.eval_shape(lambda: build_model(config, kind, width=width)[1])
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))


def match_width(config, kind: str, target: int, *, hi: int = 1024) -> tuple[int, int]:
    """(width, params) of ``kind`` with the parameter count closest to ``target``, over widths that
    are multiples of n_heads (counts grow with width, so the scan stops once past the target)."""
    best = None
    for w in range(config.n_heads, hi + 1, config.n_heads):
        n = param_count(config, kind, w)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (w, n)
        if n > target:
            break
    return best


def pool_key(config) -> jax.Array:
    return jax.random.key(config.pool_seed)


def make_loss(model, data: Data, config, *, log2_tasks, batch: int, fixed_perm_frac: float):
    """loss_fn(params, key): CE at every position on B fresh sequences from the task distribution."""
    pk = pool_key(config)

    def loss_fn(params, key):
        s = G.sample_sequences(key, pk, data.x_train, data.y_train, batch=batch, seq_len=config.seq_len,
                               d_proj=config.d_proj, n_classes=data.n_classes, n_labels=config.n_labels,
                               log2_tasks=log2_tasks, fixed_perm_frac=fixed_perm_frac)
        tokens, labels = shard_batch((s.tokens, s.labels))
        logits = model.apply(params, tokens)
        ce_BxL = G.cross_entropy(logits, labels)
        metrics = {"acc": jnp.mean(G.accuracy(logits, labels)), "loss_first10": jnp.mean(ce_BxL[:, :10]),
                   "loss_last10": jnp.mean(ce_BxL[:, -10:])}
        n_fixed = int(round(fixed_perm_frac * batch))
        if 0 < n_fixed < batch:   # the loss on the prompts with random permutations (the unbiased part)
            metrics["loss_unbiased"] = jnp.mean(ce_BxL[n_fixed:])
        return jnp.mean(ce_BxL), metrics

    return loss_fn


def train(config, data: Data, workdir: pathlib.Path, *, kind: str = "transformer", log2_tasks=None,
          batch: int | None = None, fixed_perm_frac: float | None = None, width: int | None = None, seed: int = 0,
          desc: str = "gpicl"):
    """Trains (or resumes) one model in ``workdir``; returns (model, params, history, seconds)."""
    model, params = build_model(config, kind, width=width)
    batch = batch or config.batch
    frac = config.fixed_perm_frac if fixed_perm_frac is None else fixed_perm_frac
    tx = config_optimizer(config)
    state = TrainState.create(params=params, tx=tx)
    loss_fn = make_loss(model, data, config, log2_tasks=log2_tasks, batch=batch, fixed_perm_frac=frac)
    t0 = time.time()
    state, history = fit(state, make_train_step(loss_fn, tx), key=jax.random.fold_in(jax.random.key(config.seed), seed),
                         num_steps=config.train_steps, workdir=workdir, log_every=config.log_every,
                         ckpt_every=config.ckpt_every, desc=desc)
    return model, state.params, history, time.time() - t0


# ----------------------------------------------------------------------------- evaluation
class Curve(NamedTuple):
    acc: np.ndarray        # [Q] mean accuracy over prompts at each position
    se: np.ndarray         # [Q] its standard error
    ce: np.ndarray         # [Q] mean cross-entropy (nan where the learner gives no probabilities)
    positions: np.ndarray  # [Q] 0-based positions t (t labelled examples before)


def _curve(acc_BxQ, ce_BxQ, positions) -> Curve:
    acc = np.asarray(acc_BxQ, np.float64)
    B = acc.shape[0]
    se = acc.std(axis=0, ddof=1) / np.sqrt(B) if B > 1 else np.zeros(acc.shape[1])
    ce = np.full(acc.shape[1], np.nan) if ce_BxQ is None else np.asarray(ce_BxQ, np.float64).mean(axis=0)
    return Curve(acc.mean(axis=0), se, ce, np.asarray(positions))


_sequences_jit = jax.jit(G.sequences_from_task_keys, static_argnames=("seq_len", "d_proj", "n_classes", "n_labels",
                                                                     "fixed_perm_frac"))


def eval_sequences(config, data: Data, tkeys, key) -> G.Sequences:
    """Evaluation sequences on the test split under the given task keys (one compile per shape)."""
    return _sequences_jit(key, tkeys, data.x_test, data.y_test, seq_len=config.seq_len, d_proj=config.d_proj,
                          n_classes=data.n_classes, n_labels=config.n_labels)


def unseen_task_keys(config, n: int, stream: int = 0) -> jax.Array:
    """n fresh tasks from a stream no training draw uses (fold_in(key(seed + 10^6), stream))."""
    return jax.random.split(jax.random.fold_in(jax.random.key(config.seed + 10**6), stream), n)


def seen_task_keys(config, log2_tasks: int, n: int) -> jax.Array:
    """n tasks of the training pool: ids 0, 1, ... (cycled) — every pool task when n ≥ 2^k."""
    return jax.jit(G.pool_task_keys)(pool_key(config), jnp.arange(n) % (2**log2_tasks))


@functools.partial(jax.jit, static_argnums=0)
def _acc_ce(model, params, tokens_BxLxT, labels_BxL):
    logits = model.apply(params, tokens_BxLxT)
    return G.accuracy(logits, labels_BxL), G.cross_entropy(logits, labels_BxL)


def model_curve(model, params, seqs: G.Sequences, *, chunk: int = 256) -> Curve:
    """Accuracy / CE of a sequence model at every position of ``seqs`` (model: a hashable flax module)."""
    accs, ces = [], []
    for s in range(0, seqs.tokens.shape[0], chunk):
        acc, ce = _acc_ce(model, params, seqs.tokens[s:s + chunk], seqs.labels[s:s + chunk])
        accs.append(np.asarray(acc))
        ces.append(np.asarray(ce))
    return _curve(np.concatenate(accs), np.concatenate(ces), np.arange(seqs.tokens.shape[1]))


def baseline_curves(config, seqs: G.Sequences, *, gd_grid: bool = False) -> dict[str, Curve]:
    """In-sequence logistic regression (GD) and k-NN at config.baseline_positions on the same sequences."""
    pos = parse_positions(config.baseline_positions, config.seq_len)
    posj = jnp.asarray(pos)
    lab_BxQ = seqs.labels[:, posj]
    gd = cb.logistic_gd(seqs.x, seqs.labels, posj, n_labels=config.n_labels, steps=config.gd_steps,
                        lr=config.gd_lr, l2=config.gd_l2)
    kn = cb.knn(seqs.x, seqs.labels, posj, n_labels=config.n_labels, n_neighbors=config.knn_k)
    return {"logistic regression (GD on the prefix)": _curve(cb.accuracy(gd, lab_BxQ), cb.cross_entropy(gd, lab_BxQ), pos),
            f"{config.knn_k}-NN": _curve(cb.accuracy(kn, lab_BxQ), None, pos)}


def curve_dict(c: Curve) -> dict:
    return {"positions": c.positions.tolist(), "acc": c.acc.tolist(), "se": c.se.tolist(),
            "ce": [None if not np.isfinite(v) else float(v) for v in c.ce]}


def plot_acc(ax, curves: dict[str, Curve], *, title: str = "", chance: float = 0.1) -> None:
    """Accuracy vs number of examples seen, ±2 SE bands, chance dashed."""
    for i, (name, c) in enumerate(curves.items()):
        x = c.positions + 1   # 1-based position: position t + 1 predicts after t examples
        ax.plot(x, c.acc, marker="os^Dv<>p"[i % 8], ms=3, lw=1.2, label=name)
        ax.fill_between(x, c.acc - 2 * c.se, c.acc + 2 * c.se, alpha=0.2)
    ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance {chance:.2g}")
    ax.set(xlabel="position in the sequence (examples seen + 1)", ylabel="accuracy", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


__all__ = ["KINDS", "FRESH", "LN10", "base_config", "parse_log2_tasks", "parse_positions", "check_dataset",
           "validate_common", "Data", "load_data", "check_lengths", "build_model", "make_loss", "train", "Curve",
           "eval_sequences", "unseen_task_keys", "seen_task_keys", "model_curve", "baseline_curves", "curve_dict",
           "plot_acc", "num_params", "param_count", "match_width"]
