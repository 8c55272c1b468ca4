"""Shared pytest setup: one pytest run per KERAS_BACKEND (see the Makefile)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

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
