import os
import subprocess
import sys

from routelens.io import atomic_write_json, read_json


def test_atomic_write_leaves_a_file_readable_like_any_other(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "out" / "result.json", {"a": 1})
    finally:
        os.umask(old)
    assert read_json(path) == {"a": 1}
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp file left behind


def test_a_closed_pipe_ends_the_command_quietly(synthetic_trace):
    """``routelens info RUN | head -1``: the reader leaves early; no traceback, exit code 0."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader is already gone: the first flush meets a broken pipe
    writer = subprocess.run([sys.executable, "-m", "routelens.cli", "info", str(synthetic_trace.path)],
                            stdout=write_fd, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_fd)
    assert "Traceback" not in writer.stderr
    assert writer.returncode == 0
