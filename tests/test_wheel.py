"""A built wheel works on its own: ``pip install routelens`` gives the bundled demo and the dashboard.

The wheel is built from this checkout's files (``pip wheel --no-build-isolation``: nothing is
downloaded) and installed with ``--no-deps`` into a fresh virtual environment; a ``.pth`` file there
makes the dependencies already installed here (torch, transformers, streamlit...) visible, and
nothing else: the environment's own routelens is the wheel's. Every command then runs from a folder
outside the checkout, with ``PYTHONPATH`` cleared.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from routelens.formats import TRACE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from, and where each source folder lands inside it.
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")
SHIPPED = {"routelens": "routelens", "app": "routelens/_app", "data": "routelens/_data"}


def _source_files() -> list[str]:
    """The checkout's files as a commit would hold them (tracked, plus new files git does not ignore)."""
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to tell source files from local leftovers")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (REPO / name).is_file()]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ROUTELENS_APP_DIR", "ROUTELENS_RUNS_DIR")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The routelens wheel built from a copy of the checkout's source files (the checkout stays clean)."""
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel needs setuptools>=77 here")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in _source_files():
        if name in BUILD_FILES or name.split("/")[0] in SHIPPED:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "--wheel-dir", str(root / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = (root / "dist").glob("routelens-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (no download) and this environment's dependencies."""
    folder = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    # A path line in a .pth file is only appended to sys.path: the .pth files over there (such as an editable
    # routelens's finder) are not run, so the wheel's routelens, first on the path, is the one imported.
    (Path(site) / "_routelens_test_dependencies.pth").write_text("".join(f"{p}\n" for p in here))
    return folder


def test_the_wheel_holds_the_package_the_dashboard_and_the_demo_data_and_nothing_else(wheel):
    expected = set()
    for name in _source_files():
        top, _, rest = name.partition("/")
        if top in SHIPPED and rest:
            expected.add(f"{SHIPPED[top]}/{rest}")
    with zipfile.ZipFile(wheel) as archive:
        held = {n for n in archive.namelist() if not n.startswith("routelens-") and not n.endswith("/")}
    assert held == expected, f"missing: {sorted(expected - held)[:5]}, extra: {sorted(held - expected)[:5]}"
    assert {"routelens/_app/main.py", "routelens/_data/demo-moe/model.safetensors",
            "routelens/_data/corpus/train.txt"} <= held


def test_the_installed_wheel_captures_the_bundled_demo_and_serves_the_dashboard(venv, tmp_path):
    env, bin_dir = _clean_env(), venv / "bin"

    def run(*args: str, timeout: int = 600) -> str:
        done = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return done.stdout

    where = run("python", "-c", "import routelens, routelens.bundled as b; print(routelens.__file__); print(b.app_dir())")
    package, app = (Path(line) for line in where.splitlines())
    assert package.is_relative_to(venv) and app.is_relative_to(venv), where

    run("routelens", "capture", "--out", "x", "--max-tokens", "2048", "--no-progress")
    manifest = TRACE.read(tmp_path / "x" / TRACE.file)
    assert manifest["complete"] and manifest["num_tokens"] == 2048
    assert Path(manifest["model"]["id"]).is_relative_to(venv)  # the demo checkpoint inside the installed package
    info = run("routelens", "info", "x")
    assert "64 experts, top-8" in info and "2,048" in info

    with socket.socket() as probe:  # a free port, released just before Streamlit takes it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(bin_dir / "routelens"), "app", str(tmp_path), "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        answer, deadline = None, time.monotonic() + 180
        while answer != "ok" and server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as response:
                    answer = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert answer == "ok", f"the dashboard never answered on port {port} (exit code {server.poll()})"
        if Path(f"/proc/{server.pid}").is_dir():  # routelens app became the Streamlit server: which script it serves
            command = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
            assert str(app / "main.py").encode() in command
    finally:
        server.terminate()
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
