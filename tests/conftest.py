"""Shared pytest setup: one pytest run per KERAS_BACKEND (see the Makefile)."""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX keeps every compiled program on disk (here and in the recipes' subprocesses): tests build
# many models of the same shapes, which then compile once per machine instead of once per test.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "keras-lct-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import keras
import pytest


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the same seed, float32 and no global policy."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
