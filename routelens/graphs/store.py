"""``RUN/analysis/``: save, load and reuse an :class:`Analysis` without recomputing it.

Layout (all arrays ``.npy``, never pickled; ``L`` analysed layers, ``E`` experts, ``C`` classes)::

    RUN/analysis/
      analysis.json              format, trace fingerprint, parameters, one summary row per layer
      load_tokens.npy            [L, E]    int64   tokens per expert
      load_weight.npy            [L, E]    float64 routing-weight mass per expert
      coactivation.npy           [L, E, E] int64   co-activation counts, load on the diagonal
      transitions.npy            [L, E, E] int64   layer -> next trace layer
      specialization.npy         [L, E]    float64 Top-T share (NaN = unused)
      collaboration.npy          [L, E]    float64 effective collaborators / (E - 1)
      effective_collaborators.npy[L, E]    float64 exp(entropy of the partner distribution)
      stability.npy              [L, E]    float64 Top-T overlap between the two halves of the tokens
      role.npy                   [L, E]    int8    0 unused, 1 collaborative, 2 specialized
      community.npy              [L, E]    int64   Louvain community (-1 = unused)
      token_class_counts.npy     [L, E, C] int64   (only with a tokenizer)
      tokens.json                top tokens per expert and layer (only when computed)
      graphs/layer{j:03d}.{graphml,gexf,json}   (only with --export)

The folder is written next to the old one and swapped in at the end, so an interrupted or failed
analysis leaves the previous results untouched. :func:`ensure_analysis` recomputes only when the
trace's content changed (``Trace.fingerprint()``: the shards' recorded hashes and the manifest, so a
run copied elsewhere stays current) or the parameters did.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ResultFileError, RoutelensError, TraceError
from ..formats import ANALYSIS
from ..io import atomic_save_npy, atomic_write_json, read_json
from ..lock import run_lock
from ..trace import MANIFEST, Trace
from .analysis import SCORE_NAMES, Analysis
from .communities import export_graph
from .pipeline import analysis_params, analyze_trace, parse_layers

SUMMARY_FILE = ANALYSIS.file
TOKENS_FILE = "tokens.json"
ARRAYS = ("load_tokens", "load_weight", "coactivation", "transitions")


def analysis_dir(run_path: str | os.PathLike) -> Path:
    """``RUN/analysis``."""
    return ANALYSIS.folder_in(run_path)


def save_analysis(analysis: Analysis, run_path: str | os.PathLike, exports: Sequence[str] = ()) -> Path:
    """Write ``analysis`` to ``RUN/analysis/`` (replacing the previous one only once complete).

    Args:
        exports: graph formats to also write per layer (``graphml``, ``gexf``, ``json``).

    Returns:
        The ``analysis/`` folder.
    """
    target = analysis_dir(run_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".analysis-", dir=target.parent))
    try:
        for name in ARRAYS:
            atomic_save_npy(staging / f"{name}.npy", getattr(analysis, name))
        for name in SCORE_NAMES:
            atomic_save_npy(staging / f"{name}.npy", analysis.scores[name])
        if analysis.token_class_counts is not None:
            atomic_save_npy(staging / "token_class_counts.npy", analysis.token_class_counts)
        if analysis.tokens is not None:
            atomic_write_json(staging / TOKENS_FILE, analysis.tokens, indent=None)
        write_exports(analysis, staging, exports)
        ANALYSIS.write(staging / SUMMARY_FILE, _summary_json(analysis))
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    analysis.path = target
    return target


def write_exports(analysis: Analysis, folder: str | os.PathLike, exports: Sequence[str]) -> list[Path]:
    """Write each analysed layer's co-activation graph in each format to ``folder/graphs/``."""
    written = []
    for fmt in exports:
        for j in analysis.layers:
            written.append(export_graph(analysis.graph(j), Path(folder) / "graphs" / f"layer{j:03d}.{fmt}", fmt))
    return written


def _summary_json(analysis: Analysis) -> dict[str, Any]:
    return {
        **analysis.meta,
        "layers": analysis.layers,
        "layer_names": analysis.layer_names,
        "num_experts": analysis.num_experts,
        "top_k": analysis.top_k,
        "num_tokens": analysis.num_tokens,
        "has_token_classes": analysis.token_class_counts is not None,
        "has_tokens": analysis.tokens is not None,
        "per_layer": [to_jsonable(row) for row in analysis.layer_summaries],
    }


def to_jsonable(value: Any) -> Any:
    """JSON has no NaN: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _swap_in(staging: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}-old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_analysis(run_path: str | os.PathLike, allow_stale: bool = False) -> Analysis:
    """Load ``RUN/analysis/`` written by ``routelens analyze`` (no recomputation).

    Args:
        run_path: the run folder (the trace), or its ``analysis/`` folder.
        allow_stale: return the analysis even if the trace changed since (else raise).

    Returns:
        The :class:`Analysis`; arrays are read fully (they are ``O(L E^2)``).

    Raises:
        ResultFileError: no analysis, a corrupt or foreign file, an unknown format version, or a
            stale analysis (the trace changed since) unless ``allow_stale``.
    """
    run_path = Path(run_path)
    folder = run_path if (run_path / SUMMARY_FILE).is_file() else analysis_dir(run_path)
    trace_dir = folder.parent
    if not (folder / SUMMARY_FILE).is_file():
        raise ResultFileError(f"no analysis in {trace_dir}: run routelens analyze {trace_dir}")
    meta = ANALYSIS.read(folder / SUMMARY_FILE)
    if not allow_stale and (trace_dir / MANIFEST).is_file():
        current = Trace.open(trace_dir, allow_incomplete=True).fingerprint()
        origin = meta.get("trace")
        if current != (origin.get("fingerprint") if isinstance(origin, dict) else None):
            raise ResultFileError(f"analysis in {folder} is stale: the trace changed since; re-run routelens analyze {trace_dir}")
    layers = [int(j) for j in meta["layers"]]
    e = int(meta["num_experts"])

    def array(name: str, shape: tuple, optional: bool = False):
        path = folder / f"{name}.npy"
        if optional and not path.is_file():
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise ResultFileError(f"analysis in {folder} is incomplete: {name}.npy is missing (re-run routelens analyze)") from None
        except (ValueError, OSError) as exc:
            raise ResultFileError(f"analysis file {path} is corrupt: {str(exc).splitlines()[0]}") from None
        if value.shape[: len(shape)] != shape:
            raise ResultFileError(f"analysis file {path} has shape {value.shape}, expected {shape}: re-run routelens analyze")
        return value

    n = len(layers)
    try:
        tokens = read_json(folder / TOKENS_FILE, what="analysis tokens") if meta.get("has_tokens") else None
    except RoutelensError as exc:
        raise ResultFileError(str(exc)) from exc
    per_layer = meta.get("per_layer", [])
    if len(per_layer) != n:
        raise ResultFileError(f"{folder / SUMMARY_FILE} lists {len(per_layer)} layer rows for {n} layers: corrupt")
    return Analysis(
        layers=layers,
        layer_names=list(meta["layer_names"]),
        num_experts=e,
        top_k=int(meta["top_k"]),
        num_tokens=int(meta["num_tokens"]),
        load_tokens=array("load_tokens", (n, e)),
        load_weight=array("load_weight", (n, e)),
        coactivation=array("coactivation", (n, e, e)),
        transitions=array("transitions", (n, e, e)),
        scores={name: array(name, (n, e)) for name in SCORE_NAMES},
        layer_summaries=per_layer,
        token_class_counts=array("token_class_counts", (n, e), optional=True),
        tokens=tokens,
        meta={k: v for k, v in meta.items() if k not in ("per_layer",)},
        path=folder,
    )


def ensure_analysis(
    run_path: str | os.PathLike,
    layers: str | Sequence[int] | None = None,
    *,
    force: bool = False,
    exports: Sequence[str] = (),
    progress: bool = True,
    **params: Any,
) -> tuple[Analysis, bool]:
    """The analysis of ``RUN``: loaded when current, else computed and saved.

    "Current" means: same trace content (``Trace.fingerprint()``), same parameters (``top_t``, threshold, Louvain seed
    and resolution, ``max_vocab``, tokenizer) and the requested layers among those stored (a
    stored analysis of all layers serves ``--layers 0-11`` through :meth:`Analysis.select`).
    Requested ``exports`` missing from a current analysis are written without recomputing.

    Args:
        params: :func:`routelens.graphs.analyze_trace` keyword arguments.

    Returns:
        ``(analysis, computed)``: ``computed`` is False when the stored one was reused.
    """
    trace = Trace.open(run_path)
    trace.require_tokens("analyze (co-activation)")
    chosen = parse_layers(layers, trace.layers)
    wanted = analysis_params(trace, chosen, params.get("top_t"), params.get("threshold", 0.5), params.get("seed", 0),
                             params.get("resolution", 1.0), params.get("max_vocab", 4096), params.get("tokenizer_path"))
    if not force:
        try:
            stored = load_analysis(run_path)
        except (RoutelensError, TraceError, KeyError, TypeError, ValueError):
            stored = None  # absent, stale, corrupt or of another version: recompute
        if stored is not None and _covers(stored.meta.get("params", {}), to_jsonable(wanted)):
            if stored.layers != chosen:
                stored = stored.select(chosen)
            missing = [f for f in exports if not all((stored.path / "graphs" / f"layer{j:03d}.{f}").is_file()
                                                     for j in stored.layers)]
            if missing:
                with run_lock(run_path, "routelens analyze"):
                    write_exports(stored, stored.path, missing)
            return stored, False
    with run_lock(run_path, "routelens analyze"):  # taken only to write: a current analysis is read lock-free
        analysis = analyze_trace(trace, chosen, progress=progress, **params)
        save_analysis(analysis, run_path, exports=exports)
    return analysis, True


def _covers(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """A stored analysis serves a request with the same parameters and a subset of its layers."""
    same = {k: v for k, v in stored.items() if k != "layers"} == {k: v for k, v in wanted.items() if k != "layers"}
    return same and set(wanted.get("layers", [])) <= set(stored.get("layers", []))
