"""The `ictl` command.

    ictl list
    ictl run EXPERIMENT [--workdir DIR] [--overwrite] [--mesh DATA,MODEL] [--config.KEY=VALUE ...]
    ictl resume WORKDIR
    ictl report [WORKDIR ...] [--out FILE]
    ictl reproduce [--root DIR] [--only NAME,... | --all] [--overwrite] [--jobs N]

Bad input (unknown experiment or key, wrong type, invalid value, a workdir in use or not
empty) prints one line and exits with status 2 before anything is compiled or written.

A job of N processes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or
ICTL_DISTRIBUTED=1 on a cluster jax detects) starts the same command on every process: each
validates the config; process 0 alone locks and prepares the shared workdir and the others take
its outcome (`ictl.multihost.primary_decides`), so a refused workdir exits 2 everywhere.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import pathlib
import pkgutil
import sys
import time

import ml_collections

from ictl.config import ConfigError, apply_overrides, check, scale_from
from ictl import workdir as wd

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, status 2
        raise ConfigError(f"{self.prog}: {message}")


def _enable_compile_cache() -> None:
    """JAX's persistent compilation cache (ICTL_CACHE_DIR, default <repo>/.cache/jax): repeated runs skip compiles."""
    import jax

    path = os.environ.get("ICTL_CACHE_DIR", str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    # 0.1 s, not 0.5: tests/test_multiprocess.py's `ictl` processes (same programs) then share zfb_dynamics'
    # second train program (0.18 s) too: 52.7 → 50.3 CPU-s for the file (2 runs each, fresh caches), and a
    # single run with a fresh cache wrote 2 entries, not 1, at no measurable cost (7.35 → 7.39 CPU-s, noise)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def experiment_names() -> list[str]:
    import experiments

    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_"))


def load_experiment(name: str):
    names = experiment_names()
    if name not in names:
        raise ConfigError(f"experiment {name!r}: unknown; allowed: {', '.join(names)}")
    return importlib.import_module(f"experiments.{name}")


def _summary(module) -> str:
    doc = (module.__doc__ or "").strip().splitlines()
    return getattr(module, "TITLE", doc[0] if doc else "")


def build_config(module, overrides) -> ml_collections.ConfigDict:
    scale = scale_from(overrides)
    config = apply_overrides(module.get_config(scale), overrides)
    validate = getattr(module, "validate", None)
    if validate is not None:
        validate(config)
    return config


def _set_mesh_env(mesh: str | None) -> None:
    if mesh is None:
        return
    try:
        data, model = (int(p) for p in mesh.split(","))
    except ValueError:
        raise ConfigError(f"--mesh {mesh!r}: allowed DATA,MODEL integers, e.g. 8,1 or -1,2") from None
    os.environ["ICTL_MESH"] = f"{data},{model}"


def execute(name: str, config, workdir: pathlib.Path) -> list[dict]:
    """Runs one experiment in ``workdir`` (its lock already held by process 0), recording status and
    wall time in run.json (process 0)."""
    from ictl.multihost import is_primary
    from ictl.train.loop import Diverged

    module = load_experiment(name)
    status_path = workdir / "run.json"
    primary = is_primary()
    t0 = time.time()
    if primary:
        status_path.write_text(json.dumps({"status": "running", "started": t0}))
    try:
        rows = module.run(config, workdir)
    except Diverged as e:
        if primary:
            status_path.write_text(json.dumps({"status": "diverged", "step": e.step, "message": str(e)}))
        raise
    if primary:
        status_path.write_text(json.dumps({"status": "done", "seconds": time.time() - t0}))
    return rows


def summary_line(name: str, rows) -> str:
    """"NAME: R results, C of N claims reproduced" (what `ictl run` and `ictl reproduce` print)."""
    from ictl.results import count_verdicts

    c = count_verdicts(rows)
    return f"{name}: {len(rows)} results, {c['reproduced']} of {c['reproduced'] + c['not reproduced']} claims reproduced"


def _print_rows(name: str, rows) -> None:
    from ictl.multihost import is_primary

    if not is_primary():
        return
    print(summary_line(name, rows))
    for r in rows:
        rel = "" if r.get("rel_err") is None else f"  rel_err {r['rel_err']:.3g}"
        print(f"  [{r.get('verdict', 'informational')}] {r['quantity']}: measured {r['measured']:.6g}  "
              f"expected {r['expected']:.6g} ({r['source']}){rel}")


def cmd_list(args) -> int:
    left_out = []
    for name in experiment_names():
        module = load_experiment(name)
        tier = "quick" if getattr(module, "REPRODUCE", True) else "not in reproduce"
        print(f"{name:22s} [{tier}] {_summary(module)}")
        if tier != "quick":
            left_out.append((name, getattr(module, "LEFT_OUT", "")))
    print("\n[quick]: run at quick scale by `ictl reproduce` / `make run` (2 CPU cores).")
    if left_out:
        print("[not in reproduce]: `ictl run NAME` (quick tier) or `ictl reproduce --all`; why each is left out:")
        for name, why in left_out:
            print(f"  {name:20s} {why}")
    return 0


def cmd_run(args, overrides) -> int:
    from ictl.multihost import is_primary, primary_decides

    module = load_experiment(args.experiment)
    config = build_config(module, overrides)  # every process validates (deterministic): bad input exits 2 everywhere
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / args.experiment)
    lock = wd.Lock(workdir)

    def setup():  # process 0; the others get its outcome (a refused workdir: the same one line)
        lock.acquire()  # before the emptiness check: of two runs started together one gets the workdir
        try:
            wd.check_new(workdir, overwrite=args.overwrite)
            wd.prepare(workdir, overwrite=args.overwrite)
            wd.save_config(workdir, args.experiment, config)
        except BaseException:
            lock.release()
            raise

    try:
        primary_decides(setup)
        rows = execute(args.experiment, config, workdir)
    finally:
        lock.release()
    _print_rows(args.experiment, rows)
    if is_primary():
        print(f"wrote {workdir}")
    return 0


def cmd_resume(args) -> int:
    from ictl.multihost import primary_decides

    workdir = pathlib.Path(args.workdir)
    lock = wd.Lock(workdir)

    def setup():
        wd.check_config(workdir)  # before locking: a wrong path is not created
        lock.acquire(create_dir=False)
        try:
            return wd.load_config(workdir)
        except BaseException:
            lock.release()
            raise

    try:
        name, config_dict = primary_decides(setup)
        module = load_experiment(name)
        config = ml_collections.ConfigDict(config_dict)
        if getattr(module, "validate", None):
            module.validate(config)
        rows = execute(name, config, workdir)
    finally:
        lock.release()
    _print_rows(name, rows)
    return 0


def cmd_report(args) -> int:
    from ictl.report import write_report

    dirs = [pathlib.Path(d) for d in args.workdirs] or sorted(
        p for p in pathlib.Path("runs").glob("*") if (p / "results.json").exists())
    for d in dirs:
        if not (d / "results.json").exists():
            raise ConfigError(f"workdir {d}: has no results.json; allowed: finished run workdirs")
    out = pathlib.Path(args.out or (dirs[0].parent / "report.html" if dirs else "runs/report.html"))
    from ictl.multihost import is_primary

    if is_primary():
        write_report(dirs, out)
        print(f"report: {out.resolve()}")
    return 0


def reproduce_names(*, only: str | None = None, all_: bool = False) -> list[str]:
    """The experiments `ictl reproduce` runs: --only's list, every one (--all), or the REPRODUCE ones."""
    if only:
        if all_:
            raise ConfigError("--all: not together with --only (--only names the experiments to run)")
        wanted = list(dict.fromkeys(only.split(",")))  # a name given twice runs once (one workdir, one lock)
        for n in wanted:
            if n not in experiment_names():
                raise ConfigError(f"--only={n!r}: allowed experiment names: {', '.join(experiment_names())}")
        return wanted
    return [n for n in experiment_names() if all_ or getattr(load_experiment(n), "REPRODUCE", True)]


def _reproduce_step(name: str, config, workdir: pathlib.Path, overwrite: bool) -> dict:
    """Process 0: what to do with one experiment's workdir (done / resume / fresh), preparing it."""
    run_json = workdir / "run.json"
    done = (workdir / "results.json").exists() and run_json.exists() and \
        json.loads(run_json.read_text()).get("status") == "done"
    if done and not overwrite:
        return {"action": "done"}
    if (workdir / wd.CONFIG_FILE).exists() and not overwrite:
        return {"action": "resume", "config": wd.load_config(workdir)[1]}
    wd.prepare(workdir, overwrite=overwrite)
    wd.save_config(workdir, name, config)
    return {"action": "fresh"}


def cmd_reproduce(args) -> int:
    from contextlib import ExitStack

    import jax

    from ictl.multihost import is_primary, primary_decides

    if args.jobs < 1:
        raise ConfigError(f"--jobs={args.jobs}: allowed an integer >= 1")
    if args.jobs > 1 and jax.process_count() > 1:
        raise ConfigError(f"--jobs={args.jobs}: allowed 1 in a multi-process job (its processes run one experiment together)")
    root = pathlib.Path(args.root)
    names = reproduce_names(only=args.only, all_=args.all)
    plans = [(name, build_config(load_experiment(name), []), root / name) for name in names]  # validate all first
    primary = is_primary()
    say = functools.partial(print, flush=True) if primary else (lambda *a, **k: None)
    failed = []
    with ExitStack() as locks:
        def lock_all():  # process 0 holds every workdir's lock for the whole reproduction
            for _, _, workdir in plans:
                locks.enter_context(wd.Lock(workdir))

        primary_decides(lock_all)
        t_all = time.time()
        parallel = []
        for name, config, workdir in plans:
            step = primary_decides(lambda: _reproduce_step(name, config, workdir, args.overwrite))
            if step["action"] == "done":
                say(f"== {name}: already done in {workdir} (--overwrite to redo)")
                continue
            if args.jobs > 1:
                parallel.append((name, workdir, step["action"]))
                continue
            if step["action"] == "resume":
                say(f"== {name}: resuming {workdir}")
                config = ml_collections.ConfigDict(step["config"])
            else:
                say(f"== {name}: running at quick scale in {workdir}")
            t0 = time.time()
            rows = execute(name, config, workdir)
            _print_rows(name, rows)
            say(f"   ({time.time() - t0:.0f} s)")
        if parallel:
            from ictl.reproduce_jobs import longest_first, run_parallel

            parallel = longest_first(parallel, lambda n: getattr(load_experiment(n), "QUICK_CPU_S", 0.0))
            say(f"running {len(parallel)} experiments, {args.jobs} at a time, longest first")
            failed = run_parallel(parallel, args.jobs, say)
    if primary:
        from ictl.report import write_report

        dirs = sorted(p for p in root.glob("*") if (p / "results.json").exists())
        out = root / "report.html"
        write_report(dirs, out)
        print(f"reproduced {len(plans) - len(failed)} experiments in {time.time() - t_all:.0f} s; report: {out.resolve()}")
        if failed:
            print(f"ictl: failed: {', '.join(failed)} (`ictl resume {root}/NAME` continues one)", file=sys.stderr)
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ictl", description="In-context learning lab: experiments, theory, report.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="the experiments, and which ones `reproduce` leaves to an accelerator")
    r = sub.add_parser("run", help="run one experiment")
    r.add_argument("experiment")
    r.add_argument("--workdir")
    r.add_argument("--overwrite", action="store_true", help="replace an existing workdir")
    r.add_argument("--mesh", help="DATA,MODEL device-mesh shape (default: all devices on data)")
    s = sub.add_parser("resume", help="continue a run from its last checkpoint")
    s.add_argument("workdir")
    s.add_argument("--mesh")
    rep = sub.add_parser("report", help="one HTML page with every figure and result")
    rep.add_argument("workdirs", nargs="*")
    rep.add_argument("--out")
    a = sub.add_parser("reproduce", help="every quick experiment, then the report")
    a.add_argument("--root", default="runs")
    a.add_argument("--only", help="comma-separated experiment names (any, including those not in reproduce)")
    a.add_argument("--all", action="store_true", help="also the experiments left out of the default reproduction")
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--jobs", type=int, default=1,
                   help="experiments run at once, each in its own process (make run: 2, one per core)")
    a.add_argument("--mesh")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    try:
        args = _parser().parse_args(rest)
        if overrides and args.command != "run":
            raise ConfigError(f"--config.* overrides: only `ictl run` takes them, not `ictl {args.command}`")
        _set_mesh_env(getattr(args, "mesh", None))
        _enable_compile_cache()
        from ictl.train.mesh import maybe_initialize_distributed

        maybe_initialize_distributed()
        if args.command == "list":
            return cmd_list(args)
        if args.command == "run":
            return cmd_run(args, overrides)
        if args.command == "resume":
            return cmd_resume(args)
        if args.command == "report":
            return cmd_report(args)
        return cmd_reproduce(args)
    except ConfigError as e:
        print(f"ictl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        from ictl.train.loop import Diverged

        if isinstance(e, Diverged):
            print(f"ictl: {e}", file=sys.stderr)
            return 1
        raise


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
