"""`ictl reproduce --jobs N`: the planned experiments run N at a time, each in its own process.

Why: a quick run spends much of its time tracing and compiling, which happens on one core, so one
experiment at a time leaves the second core of a 2-core machine idle for long stretches (the last
sequential `make run`: 1567 CPU-s in 1103 s wall, 1.4 cores busy on average). Each experiment still
runs alone in its process, with its own seed and XLA's usual thread pool, so its numbers do not
depend on what runs beside it; timings inside an experiment (dt_timing's ratios) see a busier machine.

The parent (`ictl.cli.cmd_reproduce`) holds every workdir's lock and prepares the workdirs; a child
(`python -m ictl.reproduce_jobs NAME WORKDIR fresh|resume`) runs one experiment in its prepared
workdir and writes its output to WORKDIR/reproduce.log.

Order: longest first (`longest_first`, each experiment's QUICK_CPU_S): with N workers taking the next
experiment as one frees up, starting the long ones first keeps a long experiment from running alone at
the end (the longest-processing-time rule; alphabetical order started vonoswald_gd, the longest, fifth).
Measured fresh `make run`s: 628 and 709 s in alphabetical order, 646 s longest first — within the
run-to-run spread, as experiments side by side each take about one core either way.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

LOG_FILE = "reproduce.log"


def longest_first(plans: list, cost) -> list:
    """``plans`` (tuples whose first item is the experiment name) sorted by ``cost(name)``, largest first;
    ties keep their order."""
    return sorted(plans, key=lambda plan: -cost(plan[0]))


def run_parallel(plans: list[tuple[str, pathlib.Path, str]], jobs: int, say) -> list[str]:
    """Runs (name, workdir, "fresh" | "resume") plans ``jobs`` at a time; returns the names that failed."""
    pending = list(plans)
    running: dict[str, tuple[subprocess.Popen, pathlib.Path, float, object]] = {}
    failed = []
    env = {**os.environ, "ICTL_NO_PROGRESS": "1"}
    while pending or running:
        while pending and len(running) < jobs:
            name, workdir, mode = pending.pop(0)
            log = open(workdir / LOG_FILE, "a")
            proc = subprocess.Popen([sys.executable, "-m", "ictl.reproduce_jobs", name, str(workdir), mode],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            running[name] = (proc, workdir, time.time(), log)
            say(f"== {name}: {'resuming' if mode == 'resume' else 'running at quick scale'} in {workdir} "
                f"(log: {workdir / LOG_FILE})")
        time.sleep(0.5)
        for name, (proc, workdir, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode == 0:
                _say_rows(name, workdir, say)
                say(f"   ({time.time() - t0:.0f} s)")
            else:
                failed.append(name)
                tail = (workdir / LOG_FILE).read_text().splitlines()[-5:]
                say(f"== {name}: FAILED (exit {proc.returncode}); last lines of {workdir / LOG_FILE}:")
                for line in tail:
                    say(f"   {line}")
    return failed


def _say_rows(name: str, workdir: pathlib.Path, say) -> None:
    from ictl.cli import summary_line
    from ictl.results import read_results

    say(summary_line(name, (read_results(workdir) or {}).get("rows", [])))


def _child(name: str, workdir: pathlib.Path, mode: str) -> int:
    import ml_collections

    from ictl import cli
    from ictl import workdir as wd

    cli._enable_compile_cache()
    module = cli.load_experiment(name)
    if mode == "resume":   # as `cmd_reproduce` resumes: the saved config
        config = ml_collections.ConfigDict(wd.load_config(workdir)[1])
        if getattr(module, "validate", None):
            module.validate(config)
    else:                  # as `cmd_reproduce` runs a fresh one: the quick config object itself
        config = cli.build_config(module, [])
    rows = cli.execute(name, config, workdir)
    cli._print_rows(name, rows)
    return 0


def _main(argv: list[str]) -> int:
    from ictl.config import ConfigError

    try:
        return _child(argv[0], pathlib.Path(argv[1]), argv[2])
    except ConfigError as e:   # as the `ictl` command: one line, status 2
        print(f"ictl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
