"""Strict JAX settings for every test, and the persistent compilation cache."""
import os
import pathlib

# XLA's CPU fusion emitters (the default in jaxlib 0.10) compile each fusion through MLIR; the older
# elemental emitters compile the suite's tiny programs much faster: with them the CPU time of
# test_gla + test_dt_experiments + theory/test_zfb fell from 334 to 193 s (run side by side, fresh
# compile caches, all 88 tests passing either way). Set before jax creates its CPU client; only on the
# jaxlib series where it was measured (an unknown XLA flag aborts the process). ICTL_TEST_XLA_OPT=1 runs
# with XLA's defaults. Subprocesses that tests start inherit the flag.
import jaxlib

if os.environ.get("ICTL_TEST_XLA_OPT", "0") != "1" and jaxlib.__version__.startswith("0.10."):
    _flag = "--xla_cpu_use_fusion_emitters=false"
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_numpy_rank_promotion", "raise")
_CACHE = os.environ.get("ICTL_TEST_CACHE_DIR", str(_ROOT / ".cache" / "jax"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
os.environ["ICTL_CACHE_DIR"] = _CACHE   # `ictl` subprocesses that tests start share the suite's cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
os.environ.setdefault("ICTL_NO_PROGRESS", "1")  # no progress bars in test logs
os.environ.setdefault("ICTL_DRAFT_FIGURES", "1")  # figures as 20-dpi drafts (ictl.results.save_figure)

# Tests compile with XLA's backend optimisations off (jax_disable_most_optimizations): the suite's
# programs are tiny and compiling dominates, and this cut the CPU time of the GPT and experiment tests by
# 25–36% (measured side by side, fresh compile caches). Same float semantics, different code generation;
# tests marked `xla_optimized` (bitwise properties of the compiled train step) and every subprocess a test
# starts turn them back on (the subprocesses keep the emitter flag above). ICTL_TEST_XLA_OPT=1 runs the whole suite optimised.
_FAST_COMPILE = os.environ.get("ICTL_TEST_XLA_OPT", "0") != "1"
jax.config.update("jax_disable_most_optimizations", _FAST_COMPILE)


@pytest.fixture(autouse=True)
def _xla_optimisations(request):
    if _FAST_COMPILE and request.node.get_closest_marker("xla_optimized"):
        jax.config.update("jax_disable_most_optimizations", False)
        try:
            yield
        finally:
            jax.config.update("jax_disable_most_optimizations", True)
    else:
        yield


# ICTL_TEST_COMPILE_REPORT=1: after the run, the tests that used the most CPU time, and how much of it
# went into tracing and compiling (a developer's tool for keeping the suite fast: compile time dominates
# most tests on CPU; CPU seconds, unlike --durations, do not depend on what else the machine runs).
_COMPILE_S: dict[str, float] = {}
_CPU_S: dict[str, float] = {}
_RSS_JUMP: dict[str, float] = {}  # GB the process's peak RSS grew during the test
_CURRENT = {"test": None}
_REPORT = os.environ.get("ICTL_TEST_COMPILE_REPORT", "")  # "1", or a folder for one JSON file per process
if _REPORT:
    import jax.monitoring

    def _on_duration(name, secs, **_):
        if name.startswith("/jax/core/compile/") and _CURRENT["test"]:
            _COMPILE_S[_CURRENT["test"]] = _COMPILE_S.get(_CURRENT["test"], 0.0) + secs

    jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _cpu_seconds() -> float:
    """This process's CPU time and that of the subprocesses it has waited for (CLI runs, jobs)."""
    import resource

    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


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


def pytest_sessionfinish(session):
    """With a folder in ICTL_TEST_COMPILE_REPORT (and pytest-xdist), each process writes its numbers there."""
    if _REPORT and _REPORT != "1":
        import json

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        out = pathlib.Path(_REPORT)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{worker}.json").write_text(json.dumps(
            {"cpu_s": _CPU_S, "compile_s": _COMPILE_S, "rss_jump_gb": _RSS_JUMP, "peak_rss_gb": _peak_rss_gb()}))


def pytest_terminal_summary(terminalreporter):
    if _COMPILE_S and _REPORT == "1":
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


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops jax's in-memory caches of compiled programs after each test module: they are rarely shared
    across modules and otherwise pile up (peak RSS of the suite 9 GB without this). Clearing only
    above 2 GB resident was tried: the whole suite then took 1522 instead of 1355 CPU-s (every file
    slower: the kept programs are many Python objects for the garbage collector to walk)."""
    yield
    jax.clear_caches()


# Test files that take the longest (CPU seconds in `ICTL_TEST_COMPILE_REPORT`) carry `pytestmark =
# pytest.mark.heavy` and are handed to the pytest-xdist workers first, so that the end of the run is
# short files on both workers rather than one long file on one of them.
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)   # stable: file order kept

