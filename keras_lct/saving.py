"""Saving files atomically, and loading `.keras` files with errors that say what is wrong.

The files keras-lct writes (models, checkpoints, latent cache shards and
statistics, grids, figures, JSON and text reports) go through `atomic_path`:
each is written to a temporary name beside its target and renamed into place,
so a reader, or a run that was interrupted mid-write, finds the old file or the
whole new one, never a half-written one. `save_model_atomic`, `write_json_atomic`
and `write_text_atomic` are the writes made that way most often. What does not
go through it (TensorBoard's appended event files, a latent cache's joined
array, ...) is listed in docs/architecture.md.

Keras reports a missing file, a truncated archive and a file that is not a
`.keras` archive alike, as "File not found". `load_model` tells them apart
before Keras reads the file, and says what to do.
"""

import contextlib
import json
import os
import zipfile

import keras

@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`, renamed to `path` when the block succeeds.

    The temporary name keeps the extension (Keras requires `.keras`), starts
    with a dot and holds the process id. If the block raises, the temporary
    file is removed and `path` is untouched: it stays the previous file, or
    absent. The folder of `path` is created.

    Args:
        path: the file to write (a string or path-like).

    Yields:
        the temporary path (a string) to write the whole file to.

    Example:
    ```python
    with keras_lct.saving.atomic_path("run/samples.png") as temporary:
        figure.savefig(temporary, format="png")
    ```
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{stem}.{os.getpid()}.tmp{extension}")
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def save_model_atomic(model, path):
    """`model.save(path)` through `atomic_path`: `path` holds the old model or the whole new one.

    Args:
        model: any Keras model (a `ConsistencyModel`, an autoencoder, ...).
        path: the `.keras` file to write (its folder is created).

    Example:
    ```python
    keras_lct.saving.save_model_atomic(model, "runs/mine/lct.keras")
    ```
    """
    with atomic_path(path) as temporary:
        model.save(temporary)


def write_json_atomic(path, value):
    """Writes `value` to `path` as indented JSON with sorted keys, through `atomic_path`.

    Args:
        path: the JSON file to write (its folder is created).
        value: anything `json.dump` takes.

    Example:
    ```python
    keras_lct.saving.write_json_atomic("runs/mine/metrics.json", {"fid": 7.3})
    ```
    """
    with atomic_path(path) as temporary:
        with open(temporary, "w") as file:
            json.dump(value, file, indent=2, sort_keys=True)
            file.write("\n")


def write_text_atomic(path, text):
    """Writes the string `text` to `path` (UTF-8), through `atomic_path`.

    Args:
        path: the text file to write (its folder is created).
        text: the whole content.

    Example:
    ```python
    keras_lct.saving.write_text_atomic("runs/mine/results.md", "| row | FD |\n")
    ```
    """
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)


# The members every Keras 3 `.keras` archive holds.
_REQUIRED_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")


def load_model(path, **kwargs):
    """`keras.models.load_model`, with clear errors for missing and damaged files.

    Args:
        path: a `.keras` file (other formats go to Keras unchecked).
        **kwargs: passed to `keras.models.load_model` (`compile`,
            `safe_mode`, `custom_objects`).

    Returns:
        The model. keras-lct's classes are registered by `import keras_lct`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: a `.keras` file that is not a whole, undamaged archive
            (e.g. cut short by an interrupted copy), naming what is wrong.

    Example:
    ```python
    model = keras_lct.saving.load_model("runs/celeba/checkpoint.keras")
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if path.endswith(".keras"):
        problem = _archive_problem(path)
        if problem:
            raise ValueError(
                f"{path!r} is not a loadable .keras file: {problem}. A copy or save that was cut short "
                "leaves such a file (keras-lct itself writes models through a temporary file and "
                "never leaves one): load an earlier checkpoint, or copy or save the model again."
            )
    return keras.models.load_model(path, **kwargs)


def _archive_problem(path):
    """What is wrong with the `.keras` archive at `path`, or None."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "it is not a zip archive (it is truncated, or not a Keras file)"
    try:
        with zipfile.ZipFile(path) as archive:
            missing = [name for name in _REQUIRED_MEMBERS if name not in archive.namelist()]
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"its archive is damaged ({error})"
    if damaged:
        return f"its member {damaged!r} is damaged (checksum mismatch)"
    if missing:
        return f"it lacks {', '.join(missing)}"
    return None
