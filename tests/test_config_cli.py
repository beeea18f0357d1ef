"""Config overrides and the CLI's bad-input contract: one line, exit status 2, nothing written."""
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from ictl import cli
from ictl.cli import main
from ictl.config import ConfigError, apply_overrides
from ictl.workdir import Lock


def test_overrides_types():
    c = ml_collections.ConfigDict(dict(a=1, b=0.5, s="x", t=(1, 2), names=("p", "q"), nested=dict(f=True)))
    out = apply_overrides(c, ["--config.a=3", "--config.b=2", "--config.t=4,5,6", "--config.nested.f=false",
                              "--config.s=hello", "--config.names=rademacher,gaussian"])
    assert (out.a, out.b, out.t, out.nested.f, out.s) == (3, 2.0, (4, 5, 6), False, "hello")
    assert out.names == ("rademacher", "gaussian")
    assert c.a == 1  # the original is not changed
    for bad, word in [("--config.zz=1", "unknown key"), ("--config.a=x", "integer"), ("--config.nested.f=maybe", "true or false"),
                      ("--config.b=abc", "number")]:
        with pytest.raises(ConfigError, match=word):
            apply_overrides(c, [bad])


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_every_experiment_config_opens_with_scale_and_seed():
    """`ictl.config.new_config` in every experiment: the scale is kept, seed 0, a bad scale is one ConfigError."""
    for name in cli.experiment_names():
        module = cli.load_experiment(name)
        for scale in ("quick", "paper"):
            c = module.get_config(scale)
            assert (c.scale, c.seed) == (scale, 0), name
        with pytest.raises(ConfigError, match=r"^config\.scale='huge': allowed one of \('quick', 'paper'\)$"):
            module.get_config("huge")


@pytest.mark.parametrize("args, needle", [
    (["run", "no_such_experiment"], "experiment 'no_such_experiment': unknown"),
    (["run", "zfb_dynamics", "--config.nope=1"], "config.nope: unknown key"),
    (["run", "zfb_dynamics", "--config.d=five"], "config.d='five': allowed an integer"),
    (["run", "zfb_dynamics", "--config.d=0"], "config.d=0: allowed an integer >= 1"),
    (["run", "zfb_dynamics", "--config.N=0"], "config.N=0: allowed an integer >= 1"),
    (["run", "zfb_dynamics", "--config.lam=1,-1,1,1,1"], "lam: must be symmetric positive definite"),
    (["run", "zfb_dynamics", "--config.lam=((1,2),(0,1))", "--config.d=2"], "lam: must be symmetric"),
    (["run", "zfb_dynamics", "--config.scale=huge"], "config.scale='huge'"),
    (["run", "zfb_shifts", "--config.M=0,5"], "config.M="),
    (["resume", "/nonexistent/dir"], "has no config.json"),
    (["list", "--config.d=3"], "only `ictl run` takes them"),
    (["reproduce", "--only", "zfb_dynamics,nope"], "--only='nope': allowed experiment names"),
    (["reproduce", "--only", "zfb_dynamics", "--all"], "--all: not together with --only"),
    (["reproduce", "--only", "zfb_dynamics", "--jobs", "0"], "--jobs=0: allowed an integer >= 1"),
    (["reproduce", "--jobs", "two"], "argument --jobs: invalid int value: 'two'"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    wd = tmp_path / "w"
    if args[0] == "run":
        args = args + ["--workdir", str(wd)]
    code, err = _run(args, capsys)
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert not wd.exists()


def test_existing_workdir_is_not_overwritten(tmp_path, capsys):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "keep.txt").write_text("precious")
    code, err = _run(["run", "zfb_dynamics", "--workdir", str(wd)], capsys)
    assert code == 2 and "exists and is not empty" in err[0] and len(err) == 1
    assert (wd / "keep.txt").read_text() == "precious" and sorted(os.listdir(wd)) == ["keep.txt"]


HOLDER = ("import sys, time; from ictl.workdir import Lock; Lock(sys.argv[1]).acquire(); "
          "print('held', flush=True); time.sleep(60)")


def test_workdir_in_use_is_refused(tmp_path, capsys):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"experiment": "zfb_dynamics", "config": {}}))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(wd)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1])))
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["resume", str(wd)], ["run", "zfb_dynamics", "--workdir", str(wd), "--overwrite"]):
            code, err = _run(args, capsys)
            assert code == 2 and len(err) == 1 and f"in use by another run (pid {holder.pid})" in err[0], err
        assert sorted(os.listdir(wd)) == [".lock", "config.json"]
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file stays, but the kernel dropped its flock
    lock = Lock(wd).acquire(create_dir=False)
    assert json.loads((wd / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(os.listdir(wd)) == ["config.json"]


def test_lock_without_flock_takes_over_a_dead_pid_only(tmp_path, monkeypatch):
    """Where flock is not supported (ENOLCK): O_EXCL, a lock whose pid is dead on this host is stale."""
    import errno
    import fcntl
    import socket

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = Lock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
        Lock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_list_names_experiments_and_tiers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "zfb_dynamics" in out and "zfb_shifts" in out and "[quick]" in out and "[not in reproduce]" in out
    # every experiment left out of `make run` says why (the LEFT_OUT line is printed under the list)
    for name in cli.experiment_names():
        module = cli.load_experiment(name)
        if not getattr(module, "REPRODUCE", True):
            assert len(getattr(module, "LEFT_OUT", "")) > 10, name
            assert f"  {name:20s} {module.LEFT_OUT}" in out


def test_reproduce_selection():
    default, every = cli.reproduce_names(), cli.reproduce_names(all_=True)
    assert every == cli.experiment_names() and set(default) < set(every)
    left_out = {n for n in every if not getattr(cli.load_experiment(n), "REPRODUCE", True)}
    assert left_out and set(default) == set(every) - left_out
    assert cli.reproduce_names(only="zfb_shifts,garg_tasks") == ["zfb_shifts", "garg_tasks"]


def test_parallel_reproduce_starts_the_longest_first():
    from ictl.reproduce_jobs import longest_first

    costs = {}
    for name in cli.reproduce_names():  # every experiment of the default reproduction says what it costs
        costs[name] = cli.load_experiment(name).QUICK_CPU_S
        assert isinstance(costs[name], (int, float)) and costs[name] > 0, name
    plans = [(n, f"runs/{n}", "fresh") for n in sorted(costs)]
    ordered = [p[0] for p in longest_first(plans, costs.__getitem__)]
    assert sorted(ordered) == sorted(costs) and [costs[n] for n in ordered] == sorted(costs.values(), reverse=True)
    assert [p[0] for p in longest_first([("a", 1), ("b", 2), ("c", 3)], {"a": 5, "b": 7, "c": 5}.get)] == ["b", "a", "c"]


def test_parallel_reproduce_reports_a_failed_child(tmp_path):
    """`reproduce --jobs N` runs each experiment in a child process; one that fails is named with the
    end of its log, and the others go on."""
    from ictl.reproduce_jobs import LOG_FILE, run_parallel

    work = tmp_path / "no_such_experiment"
    work.mkdir()
    said = []
    assert run_parallel([("no_such_experiment", work, "fresh")], 2, said.append) == ["no_such_experiment"]
    assert any("no_such_experiment: FAILED (exit 2)" in s for s in said)
    assert "ictl: error: experiment 'no_such_experiment': unknown" in (work / LOG_FILE).read_text()


def test_console_script_exit_status(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "ictl")
    r = subprocess.run([exe, "run", "zfb_dynamics", "--config.d=-3", "--workdir", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "config.d=-3" in r.stderr
