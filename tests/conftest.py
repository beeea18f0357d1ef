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


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled (theory checks)."""
    with jax.enable_x64(True):
        yield
