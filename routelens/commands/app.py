"""``routelens app RUNS_DIR``: serve the Streamlit dashboard over every run found below RUNS_DIR.

The dashboard's scripts ship with routelens: the ``app/`` folder of a source checkout, or its copy
inside an installed wheel (:func:`routelens.bundled.app_dir`). ``ROUTELENS_APP_DIR`` points the
command at another copy of that folder.

The server binds 127.0.0.1 unless ``--host`` says otherwise: routing traces reveal what text a
model was run on, so sharing them on a network is an explicit choice.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..bundled import app_dir as bundled_app_dir
from ..errors import InputError, RoutelensError

MAIN_SCRIPT = "main.py"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "app",
        help="serve the dashboard (Streamlit) over every run folder below RUNS_DIR",
        description="Serve the routelens dashboard: overview, layer explorer, experts, cross-layer flow, "
        "re-routing, placement, runs compared and runner results, over every run folder (a folder with "
        "a manifest.json) found below RUNS_DIR. Binds 127.0.0.1 unless --host says otherwise.",
    )
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run folders (e.g. runs/)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 shares it on your network)")
    parser.add_argument("--port", type=_port, default=8501, help="port to serve on (default 8501)")
    parser.set_defaults(func=run)


def app_dir() -> Path:
    """The folder holding the dashboard's ``main.py`` (``ROUTELENS_APP_DIR``, else the bundled one).

    Raises:
        RoutelensError: the folder is not there (a broken install, or a wrong ``ROUTELENS_APP_DIR``).
    """
    override = os.environ.get("ROUTELENS_APP_DIR")
    folder = Path(override) if override else bundled_app_dir()
    if not (folder / MAIN_SCRIPT).is_file():
        raise RoutelensError(
            f"dashboard scripts not found at {folder}: reinstall routelens (pip install 'routelens[app]') "
            "or set ROUTELENS_APP_DIR to its app/ folder"
        )
    return folder


def streamlit_command(runs_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The ``python -m streamlit run ...`` command line that serves the dashboard over ``runs_dir``."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_dir() / MAIN_SCRIPT),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        # Nothing to reload on a served dashboard; the watcher only costs CPU.
        "--server.fileWatcherType", "none",
        # A dashboard for users, not an app under development: no "Deploy" button or developer menu.
        "--client.toolbarMode", "viewer",
        "--theme.base", "light",
        "--theme.primaryColor", "#3b5bdb",  # the charts' accent colour
        "--", str(Path(runs_dir).resolve()),
    ]


def run(args) -> int:
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise InputError(f"runs folder {runs_dir} does not exist (make a run with: routelens capture --out {runs_dir}/demo)")
    missing = [name for name in ("streamlit", "plotly") if importlib.util.find_spec(name) is None]
    if missing:
        raise RoutelensError(f"the dashboard needs streamlit and plotly ({', '.join(missing)} missing): "
                             "pip install 'routelens[app]'")
    command = streamlit_command(runs_dir, args.host, args.port)
    print(f"routelens dashboard: http://{args.host}:{args.port}  (runs below {runs_dir.resolve()}; Ctrl-C stops it)",
          flush=True)
    if os.name == "posix":
        # Become the Streamlit server: Ctrl-C and SIGTERM reach it directly and no orphan is left behind.
        os.execv(sys.executable, command)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the console sent Ctrl-C to Streamlit too; let it shut down cleanly
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
        return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got '{text}'") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in 1..65535, got {port}")
    return port
