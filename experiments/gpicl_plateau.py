"""Kirsch et al. (2022), "General-purpose in-context learning by meta-learning transformers",
Sec. 4.4 / Fig. 9–10: meta-training a GPT on many digits tasks (`ictl.tasks.gpicl`) starts with a
loss plateau at the chance level ln 10; a larger meta-batch shortens it, and biasing the task
distribution — the identity label permutation for a fraction ``bias_frac`` of every batch —
removes it.

Runs: one training per batch size of ``batch_sizes`` at a fixed task distribution
(``log2_tasks``), plus one at ``bias_batch`` with the biased distribution. Plateau length = the
first logged step at which the training loss (for the biased run: the loss on its prompts with
random permutations, ``loss_unbiased``) falls below ln 10 − ``plateau_delta`` and stays below it
for the rest of the run; a run that never does is censored at ``train_steps`` (reported as ≥).

Command: `ictl run gpicl_plateau`. Quick scale: 2^8 tasks, batch 8 / 32 / 128 and the biased
run at 32 (25 % identity permutation), L = 50, GPT 2 layers / D = 32, 600 steps, loss logged
every 25; measured 2026-12-01: 7 min 47 s wall, 238 s CPU (load ≈ 7).
Expected (paper): plateau length decreasing monotonically in the batch size (32 → 128 → 512),
no plateau with the biased distribution. Measured (quick): plateau 500 / 175 / 125 steps at
batch 8 / 32 / 128 (monotone: reproduced); biased run 250 steps on its unbiased prompts vs 175
without bias (removal NOT reproduced at quick scale: the 2^8-task plateau is short anyway).
Paper scale (`--config.scale=paper`, accelerator, not run here): batch 32/128/512, bias at 128,
GPT 4 layers / D = 256, L = 100, 2^16 tasks, 30k steps each.
"""
from __future__ import annotations

import os
import pathlib
import time

import ml_collections
import numpy as np

from ictl import gpicl as gp
from ictl.config import check
from ictl.results import new_figure, row, save_figure, write_results

REPRODUCE = False
LEFT_OUT = "time budget: four trainings, the largest batch 16× the smallest (quick tier 8 min wall / 238 s CPU)"
TITLE = "Kirsch et al. GPICL: loss plateau vs meta-batch size, and the biased task distribution that removes it"


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    c = gp.base_config(scale)
    c.log2_tasks = "8"             # quick: 2^8 tasks leave ln 10 after ≈ 200 steps at batch 32 (gpicl_transition)
    c.batch_sizes = "8,32,128"
    c.bias_frac = 0.25
    c.bias_batch = 32
    c.plateau_delta = 0.1
    if scale == "paper":
        c.batch_sizes, c.bias_batch, c.log2_tasks = "32,128,512", 128, "16"
        c.n_layers, c.n_heads, c.width = 4, 8, 256
        c.lr, c.warmup, c.lr_end, c.train_steps = 1e-3, 500, 1.0, 30_000
        c.log_every, c.ckpt_every, c.eval_prompts = 100, 5000, 1024
    return c


def parse_batches(text) -> list[int]:
    allowed = "comma-separated distinct integers >= 1, e.g. 32,128,512"
    check(isinstance(text, str) and all(p.strip().isdigit() for p in text.split(",")), "batch_sizes", text, allowed)
    bs = [int(p) for p in text.split(",")]
    check(all(b >= 1 for b in bs) and len(set(bs)) == len(bs), "batch_sizes", text, allowed)
    return sorted(bs)


def validate(config) -> None:
    gp.validate_common(config)
    parse_batches(config.batch_sizes)
    check(0 < config.bias_frac < 1, "bias_frac", config.bias_frac, "a number in (0, 1)")
    check(isinstance(config.bias_batch, int) and config.bias_batch >= 2 and 0 < round(config.bias_frac * config.bias_batch)
          < config.bias_batch, "bias_batch", config.bias_batch, "an integer with 0 < round(bias_frac·bias_batch) < bias_batch")
    check(config.plateau_delta > 0, "plateau_delta", config.plateau_delta, "a number > 0")
    check(len(gp.parse_log2_tasks(config.log2_tasks)) == 1, "log2_tasks", config.log2_tasks, "one value (k or fresh)")


def plateau_length(steps, losses, *, level: float, delta: float, total: int) -> tuple[int, bool]:
    """(first logged step from which every loss is ≤ level − delta, escaped?); (total, False) if never."""
    steps, losses = np.asarray(steps), np.asarray(losses, np.float64)
    below = losses <= level - delta
    if below.size == 0 or not below[-1]:
        return int(total), False
    last_above = np.flatnonzero(~below)
    i = 0 if last_above.size == 0 else int(last_above[-1]) + 1
    return int(steps[i]), True


def run(config, workdir: pathlib.Path) -> list[dict]:
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0, cpu0, load0 = time.time(), time.process_time(), os.getloadavg()
    data = gp.load_data(config)
    gp.check_lengths(config, data)
    k = gp.parse_log2_tasks(config.log2_tasks)[0]
    level = float(np.log(config.n_labels))
    runs = [(f"batch {b}", b, 0.0) for b in parse_batches(config.batch_sizes)]
    runs.append((f"batch {config.bias_batch}, identity permutation for {config.bias_frac:.0%}", config.bias_batch,
                 config.bias_frac))
    out = []
    for i, (name, b, frac) in enumerate(runs):
        _, _, hist, secs = gp.train(config, data, workdir / f"run_{i}_b{b}_bias{frac:g}", log2_tasks=k, batch=b,
                                    fixed_perm_frac=frac, seed=700, desc=name)
        metric = "loss_unbiased" if frac > 0 else "loss"
        st = [h["step"] for h in hist if metric in h]
        ls = [h[metric] for h in hist if metric in h]
        length, escaped = plateau_length(st, ls, level=level, delta=config.plateau_delta, total=config.train_steps)
        out.append({"name": name, "batch": b, "bias_frac": frac, "metric": metric, "steps": st, "losses": ls,
                    "loss": [h["loss"] for h in hist if "loss" in h], "plateau_steps": length, "escaped": escaped,
                    "final_loss": ls[-1] if ls else None, "train_seconds": secs})

    fig, axes = new_figure(2, width=5.0)
    ax = axes[0, 0]
    for i, r in enumerate(out):
        ax.plot(r["steps"], r["losses"], color=f"C{i}", lw=1.2, label=f"{r['name']} ({r['metric']})")
        if r["escaped"]:
            ax.axvline(r["plateau_steps"], color=f"C{i}", ls=":", lw=0.8)
    ax.axhline(level, color="k", ls="--", lw=0.8, label="ln 10 (chance)")
    ax.axhline(level - config.plateau_delta, color="0.5", ls=":", lw=0.8, label=f"ln 10 − {config.plateau_delta}")
    ax.set(xlabel="step", ylabel="training loss (CE per position)", title=f"meta-training on {'fresh' if k is None else f'2^{k}'} tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    plain = [r for r in out if r["bias_frac"] == 0]
    ax.plot([r["batch"] for r in plain], [r["plateau_steps"] for r in plain], "o-", label="plateau length")
    for r in plain:
        if not r["escaped"]:
            ax.annotate("≥ (never left)", (r["batch"], r["plateau_steps"]), fontsize=6)
    rb = out[-1]
    ax.plot([rb["batch"]], [rb["plateau_steps"]], "r*", ms=10, label="biased distribution")
    ax.set(xscale="log", xlabel="meta-batch size", ylabel="steps on the plateau", title="plateau length vs batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, workdir, "gpicl_plateau")

    rows = []
    lens = [r["plateau_steps"] for r in plain]
    mono = all(a > b for a, b in zip(lens, lens[1:]))
    rows.append(row("plateau length strictly decreasing in batch size (1 = yes)", 1.0, float(mono), "paper", tol=0.0,
                    why="a yes/no claim; lengths " + ", ".join(f"{r['batch']}: {r['plateau_steps']}"
                                                             f"{'' if r['escaped'] else ' (censored)'}" for r in plain),
                    note="censored runs (never left the plateau) count at train_steps"))
    same_b = next((r for r in plain if r["batch"] == rb["batch"]), None)
    if same_b is not None:
        rows.append(row(f"biased distribution: plateau steps at batch {rb['batch']} (removed: ≈ 0)", 0.0,
                        float(rb["plateau_steps"]), "paper", tol=float(3 * config.log_every), claim="at_most",
                        why=f"within 3 logging intervals ({config.log_every} steps each) of the start",
                        note=f"unbiased run at the same batch: {same_b['plateau_steps']}"
                             f"{'' if same_b['escaped'] else ' (censored)'}"))
    write_results(workdir, rows, runs=out, level=level, wall_seconds=time.time() - t0,
                  cpu_seconds=time.process_time() - cpu0, load_average_start=load0, load_average_end=os.getloadavg())
    return rows
