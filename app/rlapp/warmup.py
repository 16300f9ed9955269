"""Import the heavy libraries in the background once per server, so the first visit to a page is not slow.

The Overview needs only numpy and the analysis files; Re-routing and Placement call into modules
that import torch (seconds on a small CPU). Importing them in a daemon thread while the user looks
at the first page makes every later page load as fast as a warm one.
"""

from __future__ import annotations

import importlib
import threading

MODULES = ("networkx", "routelens.graphs", "torch", "routelens.reroute.evaluate", "routelens.placement")
_started = threading.Event()


def warm_imports(modules: tuple[str, ...] = MODULES) -> None:
    """Start (once per process) a daemon thread that imports ``modules``; failures are ignored here
    (the page that needs a module reports a missing one itself)."""
    if _started.is_set():
        return
    _started.set()

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a page that needs it will say what is wrong
                pass

    threading.Thread(target=run, name="routelens-warm-imports", daemon=True).start()
