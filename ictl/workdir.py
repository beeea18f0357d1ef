"""Workdirs: the saved config, the run lock, and the no-overwrite rule.

The lock is ``workdir/.lock`` held with ``flock`` (exclusive, non-blocking) for the whole run, and taken
BEFORE the emptiness check, so of two `ictl run` started together on one new workdir exactly one runs.
The kernel drops a flock when its holder dies, so a lock left by a killed run is no lock (nothing stale
to clean up). The file holds the holder's pid and host, for the refusal message. On a filesystem
without flock the lock falls back to creating the file with O_EXCL; there a lock whose pid is dead on
this host is stale and is taken over (a lock from another host is respected).

In a job of N processes (`ictl.multihost`) process 0 alone takes the lock and writes here.
"""
from __future__ import annotations

import errno
import fcntl
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


def _read_info(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _in_use(workdir: pathlib.Path, info: dict) -> ConfigError:
    pid = info.get("pid", "unknown")
    host = info.get("host")
    where = "" if host in (None, socket.gethostname()) else f" on {host}"
    return ConfigError(f"workdir {workdir}: in use by another run (pid {pid}{where}); allowed: a workdir no run holds")


class Lock:
    """Exclusive lock on ``workdir/.lock``: `acquire` raises ConfigError naming the holder's pid."""

    def __init__(self, workdir: pathlib.Path | str):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, *, create_dir: bool = True) -> Lock:
        if create_dir:
            self.workdir.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _in_use(self.workdir, _read_info(self.path)) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                return self._acquire_excl(me)
            try:  # a holder releasing unlinks the file: a lock on an unlinked inode locks nothing
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            self.fd = fd
        return self

    def _acquire_excl(self, me: bytes) -> Lock:
        """No flock here: create the file exclusively; take over a lock whose pid is dead on this host."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read_info(self.path)
                if info.get("host") == socket.gethostname() and "pid" in info and not _alive(int(info["pid"])):
                    self.path.unlink(missing_ok=True)  # stale: its holder died
                    continue
                raise _in_use(self.workdir, info) from None
            os.write(fd, me)
            self.fd = fd
            return self
        raise _in_use(self.workdir, _read_info(self.path))

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_new(workdir: pathlib.Path, *, overwrite: bool) -> None:
    """A workdir holding anything but the lock is refused unless ``overwrite``."""
    if workdir.exists() and any(p.name != LOCK_FILE for p in workdir.iterdir()) and not overwrite:
        raise ConfigError(f"workdir {workdir}: exists and is not empty; allowed: a new workdir, "
                          f"--overwrite to replace it, or `ictl resume {workdir}`")


def prepare(workdir: pathlib.Path, *, overwrite: bool) -> None:
    """Creates ``workdir``; with ``overwrite`` empties it first (keeping the lock file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in workdir.iterdir():
            if p.name == LOCK_FILE:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def save_config(workdir: pathlib.Path, experiment: str, config) -> None:
    (workdir / CONFIG_FILE).write_text(json.dumps({"experiment": experiment, "config": config.to_dict()}, indent=2))


def check_config(workdir: pathlib.Path) -> None:
    if not (workdir / CONFIG_FILE).exists():
        raise ConfigError(f"workdir {workdir}: has no {CONFIG_FILE}; allowed: a workdir made by `ictl run`")


def load_config(workdir: pathlib.Path) -> tuple[str, dict]:
    check_config(workdir)
    data = json.loads((workdir / CONFIG_FILE).read_text())
    return data["experiment"], data["config"]
