"""Finding runs: every folder below RUNS_DIR that holds a ``manifest.json``.

Pure Python (no Streamlit), so the discovery rules are tested on their own. A manifest is judged by
the library's own rules (:func:`routelens.trace.read_manifest`), without touching its shards.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routelens.errors import RoutelensError
from routelens.formats import PARTS_DIR, SHARD_DIR, TRACE
from routelens.trace import read_manifest

MANIFEST = TRACE.file
# Folders inside a run that hold data files, never runs: not worth walking.
_SKIP_DIRS = {SHARD_DIR, PARTS_DIR, "__pycache__", "node_modules"}
MAX_DEPTH = 6


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the run picker lists it.

    Attributes:
        path: absolute path of the run folder.
        name: path relative to RUNS_DIR (``.`` when RUNS_DIR is itself a run).
        problem: one line saying why the manifest is unusable, or ``""`` when it reads fine.
        model: model id from the manifest ("" when unknown).
        num_tokens: tokens recorded, from the manifest (0 when unknown).
        complete: the manifest marks the capture finished.
    """

    path: str
    name: str
    problem: str = ""
    model: str = ""
    num_tokens: int = 0
    complete: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def detail(self) -> str:
        """One line under the picker: ``demo-moe · 12,288 tokens`` (or ``unreadable manifest``)."""
        if self.problem:
            return "unreadable manifest"
        model = Path(self.model).name if self.model else "unknown model"
        status = "" if self.complete else " · incomplete"
        source = f" · from {self.extra['engine']}" if self.extra.get("engine") else ""
        return f"{model} · {self.num_tokens:,} tokens{status}{source}"


def find_runs(runs_dir: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[RunInfo]:
    """Every folder at or below ``runs_dir`` with a ``manifest.json``, sorted by relative path.

    Hidden folders and the data folders of a run (``shards/``, ``parts/``) are not walked; a
    manifest that is missing fields, is not JSON or is half-written still lists its run, with
    ``problem`` saying what is wrong, so the dashboard can tell the user instead of failing.
    """
    root = Path(runs_dir).resolve()
    if not root.is_dir():
        return []
    runs = []
    for folder, subdirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIP_DIRS and depth < max_depth)
        if MANIFEST in files:
            runs.append(read_run_info(Path(folder), root))
    return sorted(runs, key=lambda r: (r.name.count("/"), r.name))


def read_run_info(folder: Path, root: Path) -> RunInfo:
    """The picker's view of one run folder (never raises: problems go into ``problem``)."""
    name = folder.relative_to(root).as_posix() if folder != root else "."
    try:
        manifest = read_manifest(folder)  # the library's rules: a file inside the run, its fields and types
    except RoutelensError as exc:
        return RunInfo(str(folder), name, problem=str(exc))
    model = str((manifest.get("model") or {}).get("id", "") or "")
    num_tokens = int(manifest.get("num_tokens") or sum(int(shard["num_tokens"]) for shard in manifest["shards"]))
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    extra = {"engine": str(source["engine"])} if source.get("engine") else {}
    return RunInfo(str(folder), name, model=model, num_tokens=num_tokens, complete=bool(manifest.get("complete")),
                   extra=extra)


def runs_dir_from_argv(main_script: str | os.PathLike, argv: list[str] | None = None) -> Path:
    """RUNS_DIR as ``streamlit run main.py -- RUNS_DIR`` passes it, else ``$ROUTELENS_RUNS_DIR``, else ``runs``.

    Streamlit sets ``sys.argv = [main.py, RUNS_DIR]``; under ``AppTest`` argv belongs to pytest,
    so the environment variable is the way tests (and users) point the app elsewhere.
    """
    argv = sys.argv if argv is None else argv
    if len(argv) >= 2 and argv[0] and Path(argv[0]).resolve() == Path(main_script).resolve():
        return Path(argv[1])
    return Path(os.environ.get("ROUTELENS_RUNS_DIR", "runs"))


def find_files(runs_dir: str | os.PathLike, filename: str, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every file called ``filename`` at or below ``runs_dir`` (hidden and data folders skipped), sorted."""
    root = Path(runs_dir).resolve()
    found = []
    for folder, subdirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIP_DIRS and depth < max_depth)
        if filename in files:
            found.append(Path(folder) / filename)
    return sorted(found)


def rank_by_closeness(paths: list[Path], run_path: str | os.PathLike, model: str = "",
                      models: list[str] | None = None) -> list[Path]:
    """Order result files for a run: those inside the run folder first, then those of the same model, then the rest."""
    run = Path(run_path).resolve()
    models = models or [""] * len(paths)

    def rank(item):
        path, file_model = item
        inside = run == path.parent or run in path.parents
        same_model = bool(model) and file_model == model
        return (not inside, not same_model, str(path))

    return [p for p, _ in sorted(zip(paths, models), key=rank)]


def find_json_files(folder: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """``*.json`` files at or below ``folder`` (hidden and data folders skipped; manifests left out)."""
    root = Path(folder).resolve()
    if not root.is_dir():
        return []
    found = []
    for current, subdirs, files in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in _SKIP_DIRS and depth < max_depth)
        found += [Path(current) / f for f in files if f.endswith(".json") and f != MANIFEST]
    return sorted(found)
