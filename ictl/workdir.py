"""Workdirs: the saved config, the run lock, and the no-overwrite rule."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket

from ictl.config import ConfigError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(workdir: pathlib.Path) -> int | None:
    """The pid of a live process on this host holding the workdir's lock, else None."""
    lock = workdir / LOCK_FILE
    try:
        info = json.loads(lock.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if info.get("host") == socket.gethostname() and info.get("pid") != os.getpid() and _alive(int(info["pid"])):
        return int(info["pid"])
    return None


def check_free(workdir: pathlib.Path) -> None:
    pid = holder(workdir)
    if pid is not None:
        raise ConfigError(f"workdir {workdir}: in use by another run (pid {pid}); allowed: a workdir no run holds")


def check_new(workdir: pathlib.Path, *, overwrite: bool) -> None:
    """A workdir holding anything is refused unless ``overwrite`` (and then only if unlocked)."""
    check_free(workdir)
    if workdir.exists() and any(workdir.iterdir()) and not overwrite:
        raise ConfigError(f"workdir {workdir}: exists and is not empty; allowed: a new workdir, "
                          f"--overwrite to replace it, or `ictl resume {workdir}`")


def prepare(workdir: pathlib.Path, *, overwrite: bool) -> None:
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)


class Lock:
    """Holds workdir/.lock (pid and host) while a run writes into the workdir."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / LOCK_FILE

    def __enter__(self):
        self.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def save_config(workdir: pathlib.Path, experiment: str, config) -> None:
    (workdir / CONFIG_FILE).write_text(json.dumps({"experiment": experiment, "config": config.to_dict()}, indent=2))


def load_config(workdir: pathlib.Path) -> tuple[str, dict]:
    path = workdir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"workdir {workdir}: has no {CONFIG_FILE}; allowed: a workdir made by `ictl run`")
    data = json.loads(path.read_text())
    return data["experiment"], data["config"]
