"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or a full disk in the middle of a write leaves the previous file (if any) untouched and at
most a stray ``*.tmp`` file behind, never a half-written result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import RoutelensError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then atomically move it to ``path``.

    Raises:
        RoutelensError: the disk is full or the folder is not writable (one-line message).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own 0600 one:
        # results should be readable like any other file the user writes (0644 under the usual umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise RoutelensError(f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def _umask() -> int:
    """The process umask: from /proc on Linux (shard writes run on a thread, and setting the umask to
    read it would briefly change it for every thread), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as JSON text, numpy scalars and arrays and paths included (NaN/inf are refused: they are not JSON).

    Raises:
        ValueError: ``obj`` holds NaN or inf.
    """
    return json.dumps(obj, indent=indent, allow_nan=False, default=_json_default)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (:func:`json_text`)."""
    return atomic_write_text(path, json_text(obj, indent) + "\n")


STDOUT = "-"  # the --json FILE that means standard output


def write_json_output(target: str | None, payload: Any) -> bool:
    """Write ``payload`` where ``--json`` says: nothing for None, stdout for ``-``, else FILE (atomically).

    Returns:
        True when the JSON went to stdout: the caller then prints nothing else there.

    Raises:
        RoutelensError: FILE cannot be written (one line).
    """
    if target is None:
        return False
    if target == STDOUT:
        print(json_text(payload))
        return True
    atomic_write_json(target, payload)
    return False


def atomic_save_npy(path: str | os.PathLike, array) -> Path:
    """Atomically save a numpy array as ``.npy`` (never pickled)."""
    import numpy as np

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)

    return atomic_write(path, _write)


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line RoutelensError."""
    path = Path(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise RoutelensError(f"{what} not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutelensError(f"cannot read {what} {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise RoutelensError(f"{what} {path} is not valid JSON (line {exc.lineno}): corrupt or half-written") from exc
    except (ValueError, RecursionError) as exc:  # integers over 4,300 digits, nesting deeper than the stack
        raise RoutelensError(f"{what} {path} cannot be read as JSON: {str(exc).splitlines()[0][:80]}") from exc


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
