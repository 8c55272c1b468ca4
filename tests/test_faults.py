"""Whatever stops `fit`, the model keeps the state of its last completed step.

Faults injected in-process on every backend: an exception or Ctrl-C
(KeyboardInterrupt) from a callback, a Ctrl-C that Python drops in a
garbage-collector callback (as jax's own one did), a batch that fails in the
first step, and a save interrupted mid-file; and a recipe's `--smoke` run
stopped after its first epoch (`--stop-after-epochs 1`), rerun and killed
(SIGKILL) as it trains epoch 2, rerun and stopped by one Ctrl-C (SIGINT) there,
then rerun: it must end at the weights of the uninterrupted run of the same
seed (conftest's `uninterrupted_smoke_run`, whose files test_recipes reads).
"""

import gc
import os
import re
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

import keras_lct
from keras_lct.saving import atomic_path
from keras_lct.saving import save_model_atomic
from keras_lct.saving import write_json_atomic
from test_bad_input import DATA
from test_bad_input import Batches
from test_bad_input import CompletedSteps
from test_bad_input import built_model
from test_bad_input import weights_of
from test_recipes import ROOT
from test_recipes import recipe_environment
from test_recipes import run_recipe

pytestmark = pytest.mark.compiled_step  # what stops fit, stopping the compiled step


class RaiseAt(keras.callbacks.Callback):
    def __init__(self, hook, batch, error):
        super().__init__()
        self.hook = hook
        self.batch = batch
        self.error = error

    def on_train_batch_begin(self, batch, logs=None):
        if self.hook == "begin" and batch == self.batch:
            raise self.error("injected")

    def on_train_batch_end(self, batch, logs=None):
        if self.hook == "end" and batch == self.batch:
            raise self.error("injected")


class WrongShapeAt(Batches):
    def __init__(self, bad_index):
        super().__init__(DATA)
        self.bad_index = bad_index

    def __getitem__(self, index):
        batch = super().__getitem__(index)
        return batch[:, :6, :6] if index == self.bad_index else batch


FAULTS = {
    "error after step 2": (lambda: DATA, RaiseAt("end", 1, RuntimeError), RuntimeError),
    "ctrl-c before step 3": (lambda: DATA, RaiseAt("begin", 2, KeyboardInterrupt), KeyboardInterrupt),
    "ctrl-c after step 1": (lambda: DATA, RaiseAt("end", 0, KeyboardInterrupt), KeyboardInterrupt),
    # ValueError when traced; tensorflow's InvalidArgumentError when its sample shape is known only at run time.
    "bad first batch": (lambda: WrongShapeAt(0), None, Exception),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_model_keeps_its_last_completed_step_after_fit_is_stopped(fault, tmp_path):
    data, callback, error = FAULTS[fault]
    model = built_model()
    completed = CompletedSteps()
    callbacks = [completed] + ([callback] if callback else [])
    with pytest.raises(error, match="injected|built for samples of shape"):
        model.fit(data(), batch_size=4 if isinstance(data(), np.ndarray) else None, epochs=1, verbose=0,
                  callbacks=callbacks, shuffle=False)
    assert int(model.training_step) == completed.count
    state = weights_of(model)
    assert all(np.isfinite(w).all() for w in state)
    # The seed generator's state is set from (seed, step) at every step, not kept.
    kept = [i for i, v in enumerate(model.trainable_variables + model.non_trainable_variables) if "seed_generator" not in v.path]

    # The same model samples, saves (whole), loads and trains on.
    samples = model.sample(2, seed=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras_lct.saving.load_model(path)
    restored = weights_of(loaded)
    for index in kept:
        np.testing.assert_array_equal(state[index], restored[index])
    np.testing.assert_allclose(loaded.sample(2, seed=0), samples, rtol=1e-5, atol=1e-5)
    model.fit(DATA, batch_size=4, epochs=1, verbose=0)
    assert int(model.training_step) == completed.count + 4


class CtrlCInGarbageCollectorAt(keras.callbacks.Callback):
    """Ctrl-C while a gc callback runs: the SIGINT handler raises there, and Python drops the exception."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch != self.batch:
            return
        handled = []

        def interrupt_once(phase, info):
            # The handler runs here as Python runs a pending signal's handler: in whatever code runs next.
            if not handled and threading.current_thread() is threading.main_thread():
                handled.append(phase)
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

        gc.callbacks.append(interrupt_once)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(interrupt_once)
        assert handled


@pytest.fixture
def ctrl_c_raises():
    """SIGINT handled as in a program started from a terminal (a test run in the background ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt, as printed
def test_a_ctrl_c_dropped_by_a_garbage_collector_callback_still_stops_fit(ctrl_c_raises):
    model = built_model()
    completed = CompletedSteps()
    with pytest.raises(KeyboardInterrupt):
        model.fit(DATA, batch_size=4, epochs=2, verbose=0, callbacks=[completed, CtrlCInGarbageCollectorAt(1)])
    assert int(model.training_step) == completed.count == 2  # stopped at the end of the batch it came in
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    model.fit(DATA, batch_size=4, epochs=1, verbose=0)  # and trains on
    assert int(model.training_step) == 6


class CtrlCTurnedIntoAnotherErrorAt(keras.callbacks.Callback):
    """Ctrl-C in code that catches the `KeyboardInterrupt` and raises another error, as tf.data's tracing does."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            try:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            except KeyboardInterrupt:
                raise AttributeError("'list' object has no attribute '_type_spec'") from None


def test_a_ctrl_c_turned_into_another_error_stops_fit_as_an_interrupt(ctrl_c_raises):
    model = built_model()
    completed = CompletedSteps()
    with pytest.raises(KeyboardInterrupt) as raised:
        model.fit(DATA, batch_size=4, epochs=2, verbose=0, callbacks=[completed, CtrlCTurnedIntoAnotherErrorAt(1)])
    assert isinstance(raised.value.__cause__, AttributeError)  # what the interrupted code raised stays readable
    assert int(model.training_step) == completed.count == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(AttributeError):  # without a Ctrl-C the same error is the error
        model.fit(DATA, batch_size=4, epochs=1, verbose=0, callbacks=[RaiseAt("begin", 0, AttributeError)])


def test_a_programs_own_sigint_handler_is_left_alone():
    def handler(signal_number, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        built_model().fit(DATA, batch_size=4, epochs=1, verbose=0, callbacks=[CompletedSteps()])
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.keras")
    model = built_model()
    model.fit(DATA, batch_size=4, epochs=1, verbose=0)
    save_model_atomic(model, path)
    before = open(path, "rb").read()
    model.fit(DATA, batch_size=4, epochs=1, verbose=0)

    def save_half_then_fail(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_model_atomic(model, path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.keras"]  # no temporary left behind
    assert int(keras_lct.saving.load_model(path).training_step) == 4


@pytest.mark.backend_neutral
def test_a_write_that_raises_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "new folder" / "report.json"
    write_json_atomic(path, {"b": 2, "a": [1, 2]})  # the folder is created
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 2\n}\n'
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # json.dump fails half-way through the file
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as temporary:
            assert temporary.endswith(".tmp.json") and os.path.basename(temporary).startswith(".report.")
            open(temporary, "w").write("half")
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["report.json"]  # no temporary left behind
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "never.png"):
            raise RuntimeError("before anything was written")
    assert not (tmp_path / "never.png").exists()


# ---------------------------------------------------------------- a recipe run killed and resumed

def _final_weights(output):
    model = keras_lct.saving.load_model(os.path.join(output, "lct.keras"))
    return int(model.training_step), [keras.ops.convert_to_numpy(v) for v in model.weights if "seed_generator" not in v.path]


def _run_until_then(signal_number, output, ready, unset=()):
    """Starts the smoke recipe, sends `signal_number` once when `ready()`, waits for it; (returncode, stderr)."""
    log = output + ".log"  # files, not pipes: a full pipe would stall the run before its checkpoint
    with open(log, "w") as stdout, open(log + ".stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "recipes", "celeba.py"), "--smoke", "--output", output],
            stdout=stdout, stderr=stderr, env=recipe_environment(unset), cwd=ROOT,
            # As from a terminal: a test run in the background passes SIGINT on ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    deadline = time.monotonic() + 600
    while not ready(log) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        process.send_signal(signal_number)  # once: a Ctrl-C must never need pressing twice
    process.wait(timeout=600)
    with open(log + ".stderr") as file:
        return process.returncode, file.read()


def test_a_stopped_killed_then_interrupted_recipe_resumes_to_the_weights_of_an_uninterrupted_run(
    uninterrupted_smoke_run, tmp_path
):
    output = str(tmp_path / "run")
    checkpoint, compiled_steps = os.path.join(output, "checkpoint.keras"), os.path.join(output, "jax_cache")
    # Without the tests' jax compilation cache: the runs keep their compiled steps in the run folder.
    unset = ["JAX_COMPILATION_CACHE_DIR"]

    def training_epoch_2(log):
        with open(log) as file:
            return "Training epochs 2-2" in file.read()

    # --stop-after-epochs 1 stops cleanly after epoch 1's checkpoint.
    stopped = run_recipe("celeba.py", "--smoke", "--output", output, "--stop-after-epochs", "1", unset=unset)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "Stopped after epoch 1 of 2" in stopped.stdout
    assert not os.path.exists(os.path.join(output, "lct.keras"))
    compiled_after_first = sorted(os.listdir(compiled_steps)) if keras.backend.backend() == "jax" else []

    # SIGKILL as the rerun trains epoch 2: nothing runs after it; epoch 1's checkpoint is whole.
    returncode, stderr = _run_until_then(signal.SIGKILL, output, training_epoch_2, unset)
    assert returncode == -signal.SIGKILL, stderr[-3000:]
    assert not os.path.exists(os.path.join(output, "lct.keras"))
    assert int(keras_lct.saving.load_model(checkpoint).training_step) == 5

    # One Ctrl-C as the next rerun trains epoch 2 stops it with exit 130. It stops in epoch 2's first
    # batch, or at its end when the interrupt landed in a garbage-collector callback, which drops it,
    # and `fit` delivered it again there (keras_lct.backend.fit_guards.interrupts_delivered).
    returncode, stderr = _run_until_then(signal.SIGINT, output, training_epoch_2, unset)
    assert returncode == 130 and re.search(r"Interrupted at step [56];", stderr), stderr[-3000:]
    assert not os.path.exists(os.path.join(output, "lct.keras"))
    assert int(keras_lct.saving.load_model(checkpoint).training_step) == 5

    resumed = run_recipe("celeba.py", "--smoke", "--output", output, unset=unset)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "reused" in resumed.stdout and "Resuming" in resumed.stdout and "at step 5 of 10" in resumed.stdout
    assert not [name for name in os.listdir(output) if name.startswith(".")]  # no temporary files left
    if keras.backend.backend() == "jax":  # the resumed run found the first run's compiled steps
        for run in (stopped, resumed):
            assert f"compiled steps kept in {compiled_steps}" in run.stdout
        assert compiled_after_first and set(compiled_after_first) <= set(os.listdir(compiled_steps))
    else:
        assert not os.path.exists(compiled_steps)
    steps, weights = _final_weights(output)
    uninterrupted, result = uninterrupted_smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    expected_steps, expected_weights = _final_weights(uninterrupted)
    assert steps == expected_steps == 10
    for value, expected in zip(weights, expected_weights):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
