"""Strict JAX settings for every test, and the persistent compilation cache."""
import os
import pathlib

import jax
import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", str(_ROOT / ".cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
os.environ.setdefault("ICTL_NO_PROGRESS", "1")  # no progress bars in test logs


# ICTL_TEST_COMPILE_REPORT=1: after the run, the tests that used the most CPU time, and how much of it
# went into tracing and compiling (a developer's tool for keeping the suite fast: compile time dominates
# most tests on CPU; CPU seconds, unlike --durations, do not depend on what else the machine runs).
_COMPILE_S: dict[str, float] = {}
_CPU_S: dict[str, float] = {}
_RSS_JUMP: dict[str, float] = {}  # GB the process's peak RSS grew during the test
_CURRENT = {"test": None}
if os.environ.get("ICTL_TEST_COMPILE_REPORT") == "1":
    import jax.monitoring

    def _on_duration(name, secs, **_):
        if name.startswith("/jax/core/compile/") and _CURRENT["test"]:
            _COMPILE_S[_CURRENT["test"]] = _COMPILE_S.get(_CURRENT["test"], 0.0) + secs

    jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT["test"] = item.nodeid
    c0, r0 = _cpu_seconds(), _peak_rss_gb()
    try:
        return (yield)
    finally:
        _CPU_S[item.nodeid] = _cpu_seconds() - c0
        _RSS_JUMP[item.nodeid] = _peak_rss_gb() - r0
        _CURRENT["test"] = None


def pytest_terminal_summary(terminalreporter):
    if _COMPILE_S:
        tr = terminalreporter
        tr.section(f"CPU seconds {sum(_CPU_S.values()):.1f} in all, of which compiling "
                   f"(trace + lower + XLA, wall) {sum(_COMPILE_S.values()):.1f}")
        for name, secs in sorted(_CPU_S.items(), key=lambda kv: -kv[1])[:60]:
            tr.write_line(f"{secs:8.2f} CPU s {_COMPILE_S.get(name, 0.0):8.2f} compile s  {name}")
        tr.section(f"peak RSS {_peak_rss_gb():.2f} GB; the tests that raised it most")
        for name, gb in sorted(_RSS_JUMP.items(), key=lambda kv: -kv[1])[:15]:
            tr.write_line(f"{gb:6.2f} GB  {name}")


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled (theory checks)."""
    with jax.enable_x64(True):
        yield
