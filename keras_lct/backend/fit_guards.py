"""The backend-specific parts of a reliable training step and `fit`.

- `state_kept_through_fit` (jax): the model's state survives a failed first step;
- `interrupts_delivered` (jax): a Ctrl-C is not lost in a garbage-collector callback;
- `after` (tensorflow): state updates run only once the loss exists, so a
  batch that never arrived leaves the step counter and EMA alone;
- `check_sample_shape` (tensorflow): a run-time shape check that gates the
  batch, for sample shapes unknown when the step is traced;
- `optimizer_built_before_tracing` (tensorflow): the step is traced once, not twice;
- `after_update`: state updates that read the weights the optimizer has just
  updated (the EMA), in jax's functional step as in the others.

Each is a no-op (or the plain answer) on the backends that need nothing.
"""

import contextlib
import signal
import threading

import keras


def after(tensors):
    """Context whose (stateful) ops run only once `tensors` are computed.

    On tensorflow, a graph runs every op whose inputs are ready, so a step
    whose batch fails to arrive (an error in the input pipeline) would still
    apply the state updates that do not read the batch, such as the step
    counter. On jax and torch the step does not start without its batch, and
    this is a no-op.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.control_dependencies(tensors)


def after_update(model, keras_train_step, args, kwargs, update):
    """Runs Keras' `train_step`, then `update()`, which reads the updated weights and assigns model state.

    torch and tensorflow update the variables in place, so `update` runs
    after the step (on tensorflow, `tf.function`'s automatic control
    dependencies order it after the optimizer's assignments). jax's step is
    functional: `train_step(state, data)` returns the new state, and
    `update` then runs in a `StatelessScope` over it, its assignments
    written back into the state's non-trainable variables.
    """
    if keras.backend.backend() != "jax":
        logs = keras_train_step(*args, **kwargs)
        update()
        return logs
    logs, state = keras_train_step(*args, **kwargs)
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    mapping = list(zip(model.trainable_variables, trainable)) + list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        update()
    non_trainable = [
        value if (updated := scope.get_current_value(variable)) is None else updated
        for variable, value in zip(model.non_trainable_variables, non_trainable)
    ]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def optimizer_built_before_tracing(model):
    """Builds the optimizer of a built model before `fit` traces the step (tensorflow).

    Outside a distribution strategy, Keras' tensorflow trainer leaves the
    optimizer to build its variables inside the first trace of the step, and
    `tf.function` then traces the whole step a second time, since variables
    were created in the first (about 40% of a small model's first step). jax
    and torch build the optimizer before the step (Keras' symbolic build).
    """
    if keras.backend.backend() != "tensorflow" or not model.built or model.optimizer is None or model.optimizer.built:
        return
    with model.distribute_strategy.scope():
        model.optimizer.build(model.trainable_variables)


@contextlib.contextmanager
def state_kept_through_fit(model):
    """Context around `fit` that keeps the model's state when the first step fails (jax).

    Keras' jax `fit` takes the state out of the variables for the compiled
    step and puts back that of the last completed step however `fit` ends;
    but when the first step failed (a bad batch, Ctrl-C while compiling)
    there is no such state and the variables stayed empty. This keeps
    references to the arrays `fit` starts from (no copies: they stay alive
    until a step completes) and puts them back then. Other backends keep
    their variables and need nothing.
    """
    if keras.backend.backend() != "jax" or not model.built:
        yield  # an unbuilt model has no state yet: fit creates it
        return
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # as fit would, so its state is kept too
    optimizer_variables = list(model.optimizer.variables) if model.optimizer is not None else []
    variables = model.trainable_variables + model.non_trainable_variables + optimizer_variables + model.metrics_variables
    kept = [(variable, variable.value) for variable in variables]
    try:
        yield
    except BaseException:
        for variable, value in kept:
            if variable._value is None and not value.is_deleted():
                variable.assign(value)
        raise


class _DeliverLostInterrupt(keras.callbacks.Callback):
    """Raises, after the batch, a Ctrl-C whose `KeyboardInterrupt` was swallowed."""

    def __init__(self, pending):
        super().__init__()
        self.pending = pending

    def on_train_batch_end(self, batch, logs=None):
        if self.pending:
            self.pending.clear()
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_delivered(callbacks):
    """Context around `fit` in which every Ctrl-C stops it; yields the callbacks to pass.

    Python raises `KeyboardInterrupt` in whatever Python code runs next, and
    when that is a garbage-collector callback or a `__del__` the exception is
    printed ("Exception ignored in ...") and dropped. jax registers such a
    callback (`_xla_gc_callback`) that runs on every collection, so during
    `fit` a Ctrl-C was often lost and training went on. Here the interrupt is
    raised as usual and also noted; one that was dropped is raised again at
    the end of the current batch (by a callback appended to `callbacks`), or
    as `fit` returns. An error raised by the code the interrupt landed in
    (tf.data's dataset tracing turns it into an `AttributeError`) is raised
    as `KeyboardInterrupt` from that error. A SIGINT handler set by the
    program, or `fit` outside the main thread, is left alone.
    """
    callbacks = list(callbacks or [])
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield callbacks
        return
    pending = []

    def note_and_raise(signal_number, frame):
        pending.append(signal_number)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note_and_raise)
    try:
        yield callbacks + [_DeliverLostInterrupt(pending)]
    except KeyboardInterrupt:
        pending.clear()
        raise
    except Exception as error:
        if not pending:
            raise
        pending.clear()
        raise KeyboardInterrupt from error
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def check_sample_shape(batch, sample_shape, message):
    """`batch`, checked to hold samples of `sample_shape` when the step runs; raises `message` if not.

    For a batch traced with unknown sample dimensions (tensorflow reading a
    PyDataset whose first batches differ in shape): the returned batch
    depends on the check, so the error names the batch's shape before any
    layer sees it. Elsewhere the shapes are known when the step is traced
    and checked then; the batch is returned as it is.
    """
    if keras.backend.backend() != "tensorflow":
        return batch
    import tensorflow as tf

    check = tf.debugging.assert_equal(tf.shape(batch)[1:], tf.constant(sample_shape), message=message.replace(
        f"{tuple(batch.shape[1:])} (batch shape {tuple(batch.shape)})", "(given below)"))
    with tf.control_dependencies([check]):
        return tf.identity(batch)
