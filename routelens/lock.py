"""One writer per run folder: an advisory lock on ``RUN/.lock`` while a command writes into the run.

``capture`` (and ``--resume``), ``reroute`` (its output trace), ``analyze`` (``RUN/analysis/``) and
``place`` (a plan written inside a run folder) hold it; readers never take it. A second writer
fails at once with one line naming the first: its command, process id, host and start time.

The lock is ``fcntl.flock`` on ``RUN/.lock``, which holds the owner's details as JSON. The kernel
releases it when the owner's process ends, however it ends, so a killed capture leaves no stale
lock (at most the ``.lock`` file, which the next writer takes over). Within one process the lock is
re-entrant: ``capture_from_path`` takes it before loading the model, ``capture`` again around the
writes. Under ``torchrun`` each rank locks its own file (``.lock`` for rank 0, ``.lock-rank{r}``
otherwise): ranks of one job write disjoint shards, a second job collides with the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import RoutelensError, RunBusyError
from .trace_format import MANIFEST

LOCK_FILE = ".lock"

_held: dict[str, list[int]] = {}  # lock file path -> [fd, depth], this process's locks
_guard = threading.Lock()


def lock_name(rank: int = 0) -> str:
    """The lock file of ``torchrun`` rank ``rank`` (``.lock`` for rank 0 and single processes)."""
    return LOCK_FILE if rank == 0 else f"{LOCK_FILE}-rank{rank}"


def is_lock_file(name: str) -> bool:
    """True for the names of lock files (a folder holding only these holds nothing)."""
    return name == LOCK_FILE or name.startswith(f"{LOCK_FILE}-rank")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str, name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold the write lock of the run folder ``folder`` (created if missing) for the ``with`` block.

    Args:
        folder: the run folder.
        command: what the holder is, for the other writer's message (``"routelens capture"``).
        name: the lock file (see :func:`lock_name`).

    Yields:
        The folder.

    Raises:
        RunBusyError: another process holds the lock (one line naming it).
        RoutelensError: the folder cannot be created or locked (read-only, ``.lock`` a link).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RoutelensError(f"{folder} is a file, not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RoutelensError(f"cannot create {folder}: {exc.strerror or exc}") from None
    path = os.path.join(os.path.realpath(folder), name)
    with _guard:
        entry = _held.get(path)
        if entry is not None:
            entry[1] += 1
        else:
            _held[path] = [_acquire(path, folder, command), 1]
    try:
        yield folder
    finally:
        with _guard:
            entry = _held[path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                _release(path, entry[0])
                if created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only if the writer left it empty


def enclosing_run(path: str | os.PathLike) -> Path | None:
    """The run folder (a folder with a ``manifest.json``) that ``path`` lies in, or None."""
    for parent in Path(os.path.abspath(path)).parents:
        if (parent / MANIFEST).is_file():
            return parent
    return None


def _acquire(path: str, folder: Path, command: str) -> int:
    for _ in range(10):  # retried only if the previous holder removed the file between our open and lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RoutelensError(f"{path} is a symbolic link: refusing to lock {folder} through it") from None
            raise RoutelensError(f"cannot lock {folder} for writing: {exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RoutelensError(f"{path} is not a regular file: refusing to lock {folder} through it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusyError(f"{folder} is being written by {_holder(fd)}: wait for it to finish, "
                                   "or write somewhere else") from None
            try:
                current = os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            owner = {"pid": os.getpid(), "command": command, "host": socket.gethostname(),
                     "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode(), 0)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise RunBusyError(f"{folder} is being locked and unlocked by other processes: try again")


def _release(path: str, fd: int) -> None:
    try:
        if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)  # while still locked: nobody can be holding the file we remove
    except OSError:
        pass
    os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    """The lock owner as one phrase: ``routelens capture (pid 123 on host, since 2025-01-01 12:00:00 UTC)``."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        where = f" on {owner['host']}" if owner.get("host") and owner["host"] != socket.gethostname() else ""
        return f"`{owner['command']}` (pid {owner['pid']}{where}, since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "another routelens process (starting)"
