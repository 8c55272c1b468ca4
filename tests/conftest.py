"""Shared pytest setup: one pytest run per KERAS_BACKEND (see the Makefile)."""

import gc
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

import keras_lct.layers.core


# Tests marked backend_neutral exercise code that never reaches Keras' backend (NumPy-only math,
# argument parsing, --help, file formats); tests marked recipe_bookkeeping exercise a recipe's own
# Python (its rows, run folders, resumes, refusals and messages) around training that other tests
# run on every backend. `make test` runs both kinds once, on this backend; a plain `pytest` (the
# variable unset) runs them on every backend.
NEUTRAL_BACKEND = os.environ.get("KERAS_LCT_NEUTRAL_BACKEND")
ONCE_MARKERS = ("backend_neutral", "recipe_bookkeeping")


def once_tests_run_here():
    """Whether this run runs the backend_neutral and recipe_bookkeeping tests (always, outside `make test`)."""
    return NEUTRAL_BACKEND in (None, keras.backend.backend())


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backend_neutral: the test's subject never reaches Keras' backend; it runs once, on "
        "KERAS_LCT_NEUTRAL_BACKEND, when that is set (by `make test`)",
    )
    config.addinivalue_line(
        "markers",
        "recipe_bookkeeping: the test's subject is a recipe's own Python around training that other tests run "
        "on every backend (the quickstart's, the smoke run's); it runs once, like backend_neutral",
    )
    config.addinivalue_line(
        "markers",
        "compiled_step: the test's subject is the compiled training step; on tensorflow it runs in graph "
        "mode, every other test runs its tf.functions eagerly",
    )


def pytest_report_header(config):
    where = f"on {NEUTRAL_BACKEND}" if NEUTRAL_BACKEND else "here"
    neutral = f"backend_neutral and recipe_bookkeeping tests run {where}"
    return f"keras {keras.__version__}, backend {keras.backend.backend()}; {neutral}"


def pytest_collection_finish(session):
    """The frameworks' and test modules' objects, all imported now, leave the garbage collector's view.

    A full collection then scans only what the tests create: ~1 s -> milliseconds per collection here.
    """
    gc.collect()
    gc.freeze()


# Under pytest-xdist (`make test`: `-n 2`) each group of tests runs whole on one worker: a module's
# tests share its fixtures, and the recipe and fault tests share the session's smoke run.
SHARED_GROUPS = {"test_recipes": "smoke_run", "test_faults": "smoke_run"}
# The longest groups (docs/testing.md's durations) start first, so that none starts last.
LONGEST_GROUPS = ("smoke_run", "test_quickstart", "test_distribute", "test_evaluate_recipe", "test_analysis",
                  "test_bad_input", "test_consistency", "test_backend_ops", "test_scale_out", "test_unet")


def worker_group(nodeid):
    """The group of the test `nodeid` ("tests/test_x.py::test_y[...]"): its module, or a shared group."""
    module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    return SHARED_GROUPS.get(module, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # Not `--dist loadgroup`: xdist 3.8 marks its groups in a node attribute pytest 9 no longer reads.
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return worker_group(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if not once_tests_run_here():
        neutral = [item for item in items if any(item.get_closest_marker(name) for name in ONCE_MARKERS)]
        if neutral:
            config.hook.pytest_deselected(items=neutral)
            items[:] = [item for item in items if item not in neutral]
    if hasattr(config, "workerinput"):  # an xdist worker: the order its controller schedules the groups in

        def start_rank(item):
            group = worker_group(item.nodeid)
            return LONGEST_GROUPS.index(group) if group in LONGEST_GROUPS else len(LONGEST_GROUPS)

        items.sort(key=start_rank)  # stable: each group keeps its order


@pytest.fixture(scope="session")
def uninterrupted_smoke_run(tmp_path_factory):
    """One `recipes/celeba.py --smoke` run, start to end: (run folder, its CompletedProcess).

    Its files serve the recipe tests; its final weights, those a resumed run must end at (test_faults).
    """
    from test_recipes import run_recipe

    output = tmp_path_factory.mktemp("uninterrupted") / "run"
    return output, run_recipe("celeba.py", "--smoke", "--output", output)


@pytest.fixture
def zero_initializers(monkeypatch):
    """Zeros for the layers' fan-in initializers, where a test needs shapes or files, not values.

    JAX compiles a random initializer for every weight shape (~1 s each on this CPU). The UNet's and
    the VAE's layers all take theirs from `keras_lct.layers.core.conv2d` / `dense`, which look
    `fan_in_initializer` up in `keras_lct.layers.core` when they make a layer.
    """
    monkeypatch.setattr(keras_lct.layers.core, "fan_in_initializer", lambda fan_in, zero=False: "zeros")


@pytest.fixture(autouse=True)
def _tensorflow_eager_unless_compiled_step(request):
    """On tensorflow, a test runs a few steps eagerly sooner than it traces them into a graph.

    The compiled step (graph mode, steps_per_execution, faults, resumes, parity) keeps its own tests,
    marked `compiled_step`; the recipes' subprocesses always run compiled.
    """
    if keras.backend.backend() != "tensorflow" or request.node.get_closest_marker("compiled_step"):
        yield
        return
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the same seed, float32 and no global policy."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)  # the garbage collector runs on its own schedule
