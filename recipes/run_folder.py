"""A recipe's run folder, held by one live run: `hold_run_folder` (standard library only).

Imported before a recipe imports a framework, so that a second run started on a folder that a live
run is writing to is refused at once. `recipes/common.py` re-exports it.
"""

import datetime
import json
import os
import shlex
import socket
import sys
import time

RUN_LOCK = "run.lock"  # the file of a run folder that its live run holds locked (hold_run_folder)
_held_run_folders = {}  # {absolute folder: its open, locked run.lock}, kept open for the process's life


def hold_run_folder(folder):
    """Holds the run folder `folder` for the rest of this process; refuses it while another live process holds it.

    Two runs writing one folder overwrite each other's files. The hold is an exclusive
    `fcntl.flock` on `folder/run.lock`, taken without waiting and kept until the process ends,
    however it ends: the kernel drops it with the process, so a killed run leaves no hold
    behind (its run.lock stays, and the next run takes it over). The file records who holds
    the folder (pid, host, command line, start time, as JSON), for the refusal's message. A
    process that holds `folder` already gets its hold back. Call it before writing anything
    into `folder`; under data parallelism only the process that writes files (the chief)
    holds it. Where `fcntl` does not exist (Windows) nothing is held.

    Args:
        folder: the run folder (created if absent), e.g. the recipe's `--output`.

    Returns:
        The open, locked run.lock file (closing it ends the hold), or None without `fcntl`.

    Raises:
        SystemExit: "error: FOLDER is in use by a live run (pid ..., `command`, started ...)",
            when another process holds `folder`; nothing in `folder` is changed.
    """
    try:
        import fcntl
    except ImportError:
        return None
    key = os.path.abspath(folder)
    held = _held_run_folders.get(key)
    if held is not None and not held.closed:
        return held
    os.makedirs(folder, exist_ok=True)
    lock = open(os.path.join(folder, RUN_LOCK), "a+", encoding="utf-8")  # created empty, or left as it is
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: another open file of it holds the lock
        holder = _run_folder_holder(lock)
        lock.close()
        raise SystemExit(f"error: {folder} is in use by a live run ({holder}); wait for it to end or pass another "
                         "--output.") from None
    lock.seek(0)
    lock.truncate()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.orig_argv),
               "started": started}, lock)
    lock.flush()
    _held_run_folders[key] = lock
    return lock


def _run_folder_holder(lock, attempts=20):
    """Who holds `lock` (an open run.lock), from its record: "pid 1234, `command`, started ...".

    The holder writes its record right after taking the lock: a record read empty in between is
    read again, `attempts` times 0.05 s at most.
    """
    for _ in range(attempts):
        lock.seek(0)
        try:
            record = json.loads(lock.read())
            started = datetime.datetime.fromisoformat(record["started"])
            host = "" if record["host"] == socket.gethostname() else f" on {record['host']}"
            return f"pid {record['pid']}{host}, `{record['command']}`, started {started:%Y-%m-%d %H:%M:%S} UTC"
        except (ValueError, TypeError, KeyError):
            time.sleep(0.05)
    return f"its record in {lock.name} is unreadable"
