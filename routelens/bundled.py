"""Where the files routelens ships beside its code lie: the dashboard and the demo checkpoint and corpus.

Their sources are the repository's top-level ``app/`` (the Streamlit dashboard) and ``data/``
(``demo-moe/``, the trained demo checkpoint, and ``corpus/``, its training and held-out text). A
wheel carries them inside the package, as ``routelens/_app/`` and ``routelens/_data/`` (``setup.py``
maps the folders there); a source checkout (``pip install -e .``, or ``PYTHONPATH`` on the checkout)
keeps them where they are, next to the ``routelens/`` package. Both layouts are decided by where the
imported ``routelens`` package lies, never by what else is installed: a checkout on ``PYTHONPATH``
uses its own ``app/`` even when another copy of routelens is installed.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    """``routelens/_<name>`` in an installed wheel, else ``<checkout>/<name>``."""
    inside = PACKAGE_DIR / f"_{name}"
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


def app_dir() -> Path:
    """The dashboard's folder (it holds ``main.py``, ``rlapp/``, ``views/``, ``assets/``)."""
    return _bundled("app")


def data_dir() -> Path:
    """The bundled data folder (it holds ``demo-moe/`` and ``corpus/``)."""
    return _bundled("data")
