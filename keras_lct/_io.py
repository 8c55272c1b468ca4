"""Atomic file writes: a file the library writes is either the old one or the whole new one."""

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`, renamed to `path` when the block succeeds.

    The temporary name keeps the extension (Keras requires `.keras`), starts
    with a dot and holds the process id. If the block raises, the temporary
    file is removed and `path` is untouched.

    Example:
    ```python
    with atomic_path("run/lct.keras") as temporary:
        model.save(temporary)
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


def write_json_atomic(path, value):
    """Writes `value` as indented JSON to `path`, atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "w") as file:
            json.dump(value, file, indent=2, sort_keys=True)
            file.write("\n")
