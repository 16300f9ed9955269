"""``routelens import ENGINE FILES --model M --out RUN``: an engine's records → a routelens run.

One :class:`Importer` per engine in :data:`IMPORTERS`; :func:`import_records` resolves the model's
layout from its config, reads every file (all checks happen before anything is written) and writes a
per-token trace or, for counts-only records, a counts-only run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..trace import Trace
from .imported import describe_files, write_counts_trace, write_routing_trace
from .layout import ModelLayout, model_layout


@dataclass(frozen=True)
class ImportSettings:
    """What to import and where.

    Attributes:
        engine: a key of :data:`IMPORTERS`.
        files: record files (folders: every record file inside, see :attr:`Importer.folder_glob`).
        model: hub id or local folder of the model that served them (only ``config.json`` is read).
        out: the new run folder.
        ranks: SGLang rank layout (:data:`routelens.engines.sglang_dump.RANK_LAYOUTS`).
        engine_version: the engine version that recorded them, stored as given (files do not say).
        trust_remote_code: let transformers run the checkpoint's own config code.
    """

    engine: str
    files: tuple[Path, ...]
    model: str
    out: Path
    ranks: str = "auto"
    engine_version: str | None = None
    trust_remote_code: bool = False


@dataclass
class ImportResult:
    """The written run and what was read."""

    trace: Trace
    mode: str
    files: list[Path]
    num_passes: int
    details: dict[str, Any] = field(default_factory=dict)


def _import_sglang(paths: list[Path], layout: ModelLayout, settings: ImportSettings) -> tuple[str, Any, dict, list[str]]:
    from .sglang_dump import FORMAT_READ, read_sglang_dumps

    result = read_sglang_dumps(paths, layout, settings.ranks)
    data = result.routing if result.routing is not None else result.logical_count
    details = {"format_read": FORMAT_READ, "ranks": result.ranks, "rank_layout": result.rank_layout,
               "num_passes": result.num_passes}
    return result.mode, data, details, result.caveats


def _import_vllm(paths: list[Path], layout: ModelLayout, settings: ImportSettings) -> tuple[str, Any, dict, list[str]]:
    from .vllm_routed import FORMAT_READ, read_vllm_collections

    result = read_vllm_collections(paths, layout)
    return "routed_experts", result.routing, {"format_read": FORMAT_READ, "num_requests": result.num_requests,
                                              "num_passes": result.num_requests}, result.caveats


@dataclass(frozen=True)
class Importer:
    """How one engine's records are read: the reader and, for folders given as FILES, which files to take."""

    name: str
    read: Callable[[list[Path], ModelLayout, ImportSettings], tuple[str, Any, dict, list[str]]]
    folder_glob: str
    description: str


IMPORTERS: dict[str, Importer] = {
    i.name: i for i in (
        Importer("sglang", _import_sglang, "expert_distribution_recorder_*.pt",
                 "SGLang expert-distribution recorder dumps (.pt; per_token, per_pass or stat mode)"),
        Importer("vllm", _import_vllm, "*.jsonl",
                 "vLLM routed experts per request (.jsonl, .npz or .pt; --enable-return-routed-experts)"),
    )
}


def expand_files(files: tuple[Path, ...], importer: Importer) -> list[Path]:
    """The record files: folders expanded to their ``folder_glob`` files, duplicates refused.

    Raises:
        InputError: a missing path, an empty folder, a file given twice.
    """
    out: list[Path] = []
    for path in files:
        if path.is_dir():
            found = sorted(path.glob(importer.folder_glob))
            if not found:
                raise InputError(f"folder {path} holds no {importer.folder_glob} files")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise InputError(f"record file not found: {path}")
    resolved = [p.resolve() for p in out]
    if len(set(resolved)) != len(resolved):
        raise InputError("a record file is given twice")
    return out


def import_records(settings: ImportSettings) -> ImportResult:
    """Read an engine's records and write them as a run in ``settings.out``.

    Raises:
        RoutelensError: an unknown engine, a bad file, records of another model, an occupied ``out``.
    """
    importer = IMPORTERS.get(settings.engine)
    if importer is None:
        raise InputError(f"unknown engine '{settings.engine}' (known: {', '.join(IMPORTERS)})")
    out = Path(settings.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output folder {out} is not empty; choose another --out")
    paths = expand_files(tuple(Path(f) for f in settings.files), importer)
    layout = model_layout(settings.model, trust_remote_code=settings.trust_remote_code)
    mode, data, details, caveats = importer.read(paths, layout, settings)
    source = {"kind": "engine", "engine": importer.name, "mode": mode, "version": settings.engine_version,
              **details, "files": describe_files(paths), "caveats": caveats}
    run_settings = {"model": layout.model_id, "engine": importer.name, "mode": mode,
                    "files": [p.name for p in paths]}
    if hasattr(data, "chunks"):
        trace = write_routing_trace(out, layout, data, run_settings, source)
        _copy_local_tokenizer(settings.model, out)
    else:
        trace = write_counts_trace(out, layout, data, run_settings, source)
    return ImportResult(trace=trace, mode=mode, files=paths, num_passes=int(details.get("num_passes", 0)),
                        details=details)


def _copy_local_tokenizer(model: str, out: Path) -> None:
    """The model's tokenizer into the run (token strings for the analysis), when it loads without a
    download or remote code; an import never fails for want of one (tokens are then shown by id)."""
    from ..capture.engine import save_tokenizer
    from ..capture.load import load_tokenizer
    from ..errors import RoutelensError

    try:
        tokenizer = load_tokenizer(model, trust_remote_code=False, local_files_only=True)
    except RoutelensError:
        return
    save_tokenizer(out, tokenizer)
