"""Callbacks: the N curriculum, the adaptive robustness scale c, sample grids.

`ExpCurriculum` and `AdaptiveC` do not write N or c at every batch (under JAX a
callback's mid-epoch writes are lost, see docs/callbacks.md): they set the
*schedule* in the model's state once, at the start of `fit`, and the compiled
training step derives N and c from the model's own step counter. N and c are
therefore right after `steps_per_execution`, after `BackupAndRestore` resumes
mid-run, and after a `.keras` model is saved and loaded.
"""

import os

import keras
import numpy as np

from keras_lct import schedules
from keras_lct._validation import check_seed
from keras_lct._validation import finite_samples
from keras_lct.data.images import images_to_uint8
from keras_lct.models.consistency import ConsistencyModel
from keras_lct.models.schedule_state import MEASURED
from keras_lct.models.schedule_state import check_robustness_constants
from keras_lct.saving import atomic_path
from keras_lct.saving import save_model_atomic


def _require_consistency_model(callback):
    model = callback.model
    if not isinstance(model, ConsistencyModel):
        raise ValueError(
            f"{type(callback).__name__} works with a keras_lct ConsistencyModel; "
            f"it was given a {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"{type(callback).__name__}: build the model before `fit` "
            "(`model.build((None, *data_shape))`)."
        )
    return model


@keras.saving.register_keras_serializable(package="keras_lct")
class ExpCurriculum(keras.callbacks.Callback):
    """iCT's exponential curriculum for the number of discretization steps N.

    N(k) = min(s0 * 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(floor(s1 /
    s0)) + 1)), k the model's training step and K = `total_steps`.

    Args:
        total_steps: K, the planned total number of training steps (optimizer
            updates) of the run, over all `fit` calls, resumed ones included.
            None (the default) reads K from `fit` when training starts:
            `epochs * steps per epoch` (divided by the optimizer's
            `gradient_accumulation_steps`). That is the whole run's length
            also when `fit` resumes with `initial_epoch`, since `epochs` is the
            run's last epoch; pass `total_steps` when a `fit` call trains only
            part of the run (stops before the run's last epoch), or when the
            data has no known length.
        s0: initial number of intervals (10).
        s1: final number of intervals (640).

    Attributes:
        run_total_steps: the K that the last `fit` used (None before).

    Raises:
        ValueError: in `fit`, when `total_steps` is None and the data's
            number of batches per epoch is unknown (a dataset of unknown
            length and no `steps_per_epoch`).

    Example:
    ```python
    model.fit(x, batch_size=batch_size, epochs=epochs,
              callbacks=[ExpCurriculum(), AdaptiveC()])
    # A run trained in pieces: each fit gets the whole run's K.
    steps = epochs * math.ceil(len(x) / batch_size)
    model.fit(x, batch_size=batch_size, epochs=epochs // 2,
              callbacks=[ExpCurriculum(steps), AdaptiveC()])
    ```

    Reference: paper section 4.5, eq. 10.
    """

    def __init__(self, total_steps=None, s0=schedules.CURRICULUM_S0, s1=schedules.CURRICULUM_S1):
        super().__init__()
        # Validates (a planned length of 1 stands in for the one fit will give).
        schedules.curriculum_stage_length(1 if total_steps is None else total_steps, s0, s1)
        self.total_steps = total_steps
        self.s0 = s0
        self.s1 = s1
        self.run_total_steps = None

    def on_train_begin(self, logs=None):
        model = _require_consistency_model(self)
        total_steps = self.total_steps
        if total_steps is None:
            total_steps = self._total_steps_of_fit(model)
        model.set_curriculum(total_steps, self.s0, self.s1)
        self.run_total_steps = total_steps

    def _total_steps_of_fit(self, model):
        """K from fit's parameters: epochs x batches per epoch, in optimizer updates."""
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if steps is None:
            raise ValueError(
                "ExpCurriculum() reads the run's length from `fit` (epochs x steps per epoch), but "
                "this data has no known number of batches per epoch (a dataset of unknown length). "
                "Pass the run's total number of training steps, `ExpCurriculum(total_steps)`, or "
                "`steps_per_epoch` to `fit`."
            )
        updates = (epochs * steps) // model.micro_batches_per_update()
        if updates < 1:
            raise ValueError(
                f"ExpCurriculum(): `fit` plans {epochs} epoch(s) of {steps} batch(es), fewer than one "
                f"optimizer update of {model.micro_batches_per_update()} accumulated batches; pass "
                "`total_steps`."
            )
        return updates

    def get_config(self):
        return {"total_steps": self.total_steps, "s0": self.s0, "s1": self.s1}


@keras.saving.register_keras_serializable(package="keras_lct")
class AdaptiveC(keras.callbacks.Callback):
    """The adaptive robustness scale c of the robust loss.

    c = c0 while N <= s0 + 1 (the curriculum's first stage), then
    c = exp(slope * ln(N - 1) + intercept), following N as it doubles.

    Eq. 11 is an absolute schedule, fitted on the paper's 32x32x4 latents.
    For data of another size d, `scale_with_dim=True` multiplies it by
    sqrt(d / 4096), the ratio of iCT's c0 = 0.00054 sqrt(d) at the two sizes
    (`keras_lct.schedules.dim_scaled_constants`). On the quickstart's
    4x4x4 latents it measured worse than eq. 11 as published
    (docs/results.md), so it is off by default.

    `AdaptiveC("measured")` measures instead of assuming: the training step
    keeps the spread of the TD values (student minus target), the geometric
    mean over samples of each sample's TD RMS (`schedules.td_log_spread_sum`),
    per curriculum stage. c = c0 during the first stage, then c0 times the
    current stage's spread over the first stage's (`schedules.measured_c`),
    the current stage's being that of its updates so far (the previous
    stage's at a stage's first update). Eq. 11 was fitted to follow the TD
    variance this way on one data set and run length; the measured c does it
    for any, and sums over micro-batches and replicas as one batch would.

    Args:
        constants: `"paper"` (eq. 11: -1.18, -0.72), `"authors_code"`
            (-1.15, -0.85), a (slope, intercept) pair, or `"measured"`.
        c0: the initial scale; None for iCT's 0.00054 sqrt(d).
        scale_with_dim: scale eq. 11 to the model's data size d (not with
            `"measured"`, which is relative to c0 already).

    Example:
    ```python
    model.fit(x, callbacks=[ExpCurriculum(steps), AdaptiveC("authors_code")])
    model.fit(small_latents, callbacks=[ExpCurriculum(steps), AdaptiveC(scale_with_dim=True)])
    model.fit(latents, callbacks=[ExpCurriculum(steps), AdaptiveC("measured")])
    ```

    Reference: paper section 4.5, eq. 11 and fig. 4; `docs/callbacks.md`
    "The measured c".
    """

    def __init__(self, constants="paper", c0=None, scale_with_dim=False):
        super().__init__()
        if check_robustness_constants(constants) is None:
            raise ValueError(
                "`constants` must name a c schedule; received None. For c = c0 throughout, train without AdaptiveC."
            )
        if c0 is not None:
            schedules.robustness_c(2, c0)  # validates
        if not isinstance(scale_with_dim, bool):
            raise ValueError(f"`scale_with_dim` must be True or False; received {scale_with_dim!r}.")
        if scale_with_dim and constants == MEASURED:
            raise ValueError(
                "`scale_with_dim=True` scales eq. 11, but `constants=\"measured\"` follows the TD values "
                "relative to c0, which already scales with the data size; drop `scale_with_dim`."
            )
        self.constants = constants
        self.c0 = c0
        self.scale_with_dim = scale_with_dim

    def on_train_begin(self, logs=None):
        model = _require_consistency_model(self)
        constants = self.constants
        if self.scale_with_dim:
            constants = schedules.dim_scaled_constants(model.data_dim, constants)
        model.set_robustness_schedule(self.c0, constants)

    def get_config(self):
        return {"constants": self.constants, "c0": self.c0, "scale_with_dim": self.scale_with_dim}


class _EveryEpochs(keras.callbacks.Callback):
    """Calls `write(epoch)` (counted from 1) every `every_epochs` epochs and after the last one."""

    def __init__(self, every_epochs):
        super().__init__()
        if not isinstance(every_epochs, int) or every_epochs < 1:
            raise ValueError(f"`every_epochs` must be an integer >= 1; received {every_epochs!r}.")
        self.every_epochs = every_epochs
        self._last_epoch = None
        self._written_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.every_epochs == 0:
            self._write_epoch(epoch)

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._written_epoch != self._last_epoch:
            self._write_epoch(self._last_epoch)

    def _write_epoch(self, epoch):
        self.write(epoch + 1)
        self._written_epoch = epoch

    def write(self, epoch):
        raise NotImplementedError


class SampleGrid(_EveryEpochs):
    """Writes PNG grids of samples every `every_epochs` epochs (and after the last).

    Args:
        directory: where `samples_epoch_XXXX.png` files go (created). With
            several `steps`, one file per count: `samples_epoch_XXXX_1step.png`.
        every_epochs: interval between grids (>= 1).
        num_samples: grid size; a square number looks best.
        seed: the sampling seed, the same every time so grids are comparable.
        steps: network evaluations per sample (1 or 2), or a tuple of
            entries, e.g. `(1, 2)` for the paper's 1-step and 2-step samples;
            an entry may also be a list of noise levels (`ts` of
            `ConsistencyModel.sample`), e.g. `(1, [80.0, 0.529])`.
        decode: optional function from a batch of samples (NumPy) to images
            `(n, H, W, 1 or 3)` in [-1, 1], e.g. a VAE decoder for latents
            (see `keras_lct.data.LatentDecoder`). Without it the samples
            themselves are shown: 1 or 3 channels as they are, others by their
            first 3 channels, each in [-1, 1].
        labels: the class labels of a class-conditional model's samples (an
            int, or `num_samples` ints; `ConsistencyModel.sample`); None gives
            the classes in turn, 0, 1, ..., K - 1, 0, ... (with `num_samples`
            a multiple of K, every row of a K-column grid is one class).
            Unconditional models take none.

    Example:
    ```python
    model.fit(x, callbacks=[SampleGrid("runs/samples", every_epochs=5, steps=(1, 2))])
    ```
    """

    def __init__(self, directory, every_epochs=1, num_samples=64, seed=0, steps=1, decode=None, labels=None):
        super().__init__(every_epochs)
        self.directory = directory
        self.num_samples = num_samples
        self.seed = check_seed("seed", seed)
        self.steps = steps
        self.decode = decode
        self.labels = labels
        self.written = []

    def write(self, epoch):
        """Writes the grid(s) of `epoch` now; returns their paths."""
        entries = (self.steps,) if isinstance(self.steps, int) else tuple(self.steps)
        paths = []
        for entry in entries:
            levels = {"steps": entry} if isinstance(entry, int) else {"ts": entry}
            samples = self.model.sample(self.num_samples, seed=self.seed, labels=self._labels(), **levels)
            images = self.decode(samples) if self.decode is not None else samples
            count = entry if isinstance(entry, int) else len(entry)
            suffix = "" if isinstance(self.steps, int) else f"_{count}step"
            path = os.path.join(self.directory, f"samples_epoch_{epoch:04d}{suffix}.png")
            save_image_grid(images, path)
            paths.append(path)
        self.written.extend(paths)
        return paths

    def _labels(self):
        if self.labels is not None or not self.model.num_classes:
            return self.labels
        return np.arange(self.num_samples) % self.model.num_classes


class Checkpoint(_EveryEpochs):
    """Saves the whole model to one `.keras` file every `every_epochs` epochs, atomically.

    The file holds everything `fit` needs to continue exactly: weights, EMA
    weights, the step counter (hence N and c), the optimizer state and the
    compile config. It is written to a temporary file and renamed, so an
    interrupted save leaves the previous checkpoint intact. The last epoch
    is always saved.

    Args:
        path: the `.keras` file.
        every_epochs: interval between saves (>= 1).

    Example:
    ```python
    model.fit(batches, epochs=100, callbacks=[Checkpoint("run/checkpoint.keras", every_epochs=5)])
    model = keras.models.load_model("run/checkpoint.keras")     # resume
    model.fit(batches, epochs=100, initial_epoch=int(model.training_step) // len(batches))
    ```
    """

    def __init__(self, path, every_epochs=1):
        if not str(path).endswith(".keras"):
            raise ValueError(f"A checkpoint path must end in `.keras`; received {path!r}.")
        super().__init__(every_epochs)
        self.path = path

    def write(self, epoch):
        """Saves the model now (`epoch` only names the moment)."""
        save_model_atomic(self.model, self.path)


def save_image_grid(images, path, columns=None):
    """Saves a batch of images in [-1, 1], `(n, H, W, C)`, as one PNG grid.

    Args:
        images: NumPy array `(n, H, W, C)`; C = 1 or 3 shown as they are,
            other C by their first 3 channels (or the first one).
        path: the PNG file to write (its folder is created).
        columns: images per row; default the ceiling of sqrt(n).

    Returns:
        the uint8 grid `(rows * H, columns * W, 3)` that was written.

    Raises:
        ValueError: for a shape other than `(n, H, W, C)`, or NaN/inf values.
    """
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is in every extra
        raise ImportError("Writing PNG grids needs pillow: pip install 'keras-lct[data]'.") from error
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (n, H, W, C); received shape {images.shape}.")
    if images.shape[-1] not in (1, 3):
        images = images[..., :3] if images.shape[-1] > 3 else images[..., :1]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    finite = finite_samples(images)
    if not finite.all():
        raise ValueError(
            f"{int((~finite).sum())} of the {len(images)} images hold NaN or inf values (first: image "
            f"{int(np.argmin(finite))}), which a PNG cannot show; no grid was written. Samples like these "
            "mean the model's weights diverged: check the training loss."
        )
    pixels = images_to_uint8(images)
    count, height, width, _ = pixels.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    grid = np.zeros((rows * height, columns * width, 3), np.uint8)
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    with atomic_path(path) as temporary:
        Image.fromarray(grid).save(temporary, format="PNG")
    return grid
