"""Loading `.keras` files, with errors that say what is wrong with a file.

Keras reports a missing file, a truncated archive and a file that is not a
`.keras` archive alike, as "File not found". `load_model` tells them apart
before Keras reads the file, and says what to do.
"""

import os
import zipfile

import keras

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
