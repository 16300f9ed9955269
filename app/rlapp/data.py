"""Cached loaders: each calls one routelens library function and caches what it returns.

Every loader takes the run folder and a *stamp* (modification time and size of the files it reads),
so a re-captured or re-analysed run is read again while clicks and page switches hit the cache.
Loaders raise :class:`routelens.errors.RoutelensError` on bad input; pages turn that into a message.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from routelens.formats import ANALYSIS, BENCH, PLAN, SCHEDULE, TRACE, TRADEOFF, FileFormat
from routelens.trace import Trace

from .runs import RunInfo, find_runs


def stamp(*paths: str | os.PathLike) -> tuple:
    """``(mtime_ns, size)`` of each existing path (files or folders' direct files): a cache key part.

    Links are not followed (``lstat``): a run's files are judged by the library, which refuses links
    that leave the run, and a key needs nothing outside it.
    """
    parts = []
    for path in paths:
        path = Path(path)
        try:
            info = path.lstat()
        except OSError:
            parts.append((path.name, None))
            continue
        if path.is_dir() and not path.is_symlink():
            for p in sorted(path.iterdir()):
                with contextlib.suppress(OSError):
                    entry = p.lstat()
                    parts.append((p.name, entry.st_mtime_ns, entry.st_size))
        else:
            parts.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(parts)


@st.cache_data(ttl=5, show_spinner=False)
def runs_below(runs_dir: str) -> list[RunInfo]:
    """The runs below ``runs_dir`` (re-walked at most every 5 s, so new runs appear on their own)."""
    return find_runs(runs_dir)


def open_trace(run_path: str) -> Trace:
    """Open a run's trace (cheap: reads the manifest only); incomplete captures open too."""
    return Trace.open(run_path, allow_incomplete=True)


def trace_stamp(run_path: str) -> tuple:
    return stamp(Path(run_path) / TRACE.file)


@st.cache_data(show_spinner="Reading the trace…", max_entries=16)
def trace_summary(run_path: str, key: tuple) -> dict[str, Any]:
    """``routelens info``'s summary of a run (model, E, k, tokens, capture speed, per-layer load)."""
    from routelens.capture.summary import summarize_trace

    return summarize_trace(open_trace(run_path))


@st.cache_data(show_spinner="Counting expert load…", max_entries=16)
def expert_loads(run_path: str, key: tuple) -> np.ndarray:
    """``[L, E]`` int64 tokens each expert received, per MoE layer."""
    from routelens.capture.summary import expert_load

    trace = open_trace(run_path)
    return np.stack([expert_load(trace, j) for j in range(len(trace.layers))]) if trace.layers else np.zeros((0, trace.num_experts), np.int64)


@st.cache_data(ttl=5, show_spinner=False)
def reroute_tradeoffs(runs_dir: str) -> list[dict[str, Any]]:
    """Every trade-off file (``tradeoff.json``) written by ``routelens reroute-eval`` below ``runs_dir``.

    Each item: ``path``, and either the file's content (:data:`routelens.formats.TRADEOFF`: ``rows``...)
    or ``problem`` (a one-line reason the file cannot be shown).
    """
    from .runs import find_files

    return [item for item in _read_results(find_files(runs_dir, TRADEOFF.file), TRADEOFF)
            if item.get("problem") or item.get("rows")]


def best_setting(rows: list[dict[str, Any]], max_perplexity_change: float = 0.01) -> dict[str, Any] | None:
    """The re-routing setting with the fewest GPUs per token within ``max_perplexity_change`` (library rule)."""
    from routelens.reroute.evaluate import best_within

    return best_within(rows, max_perplexity_change)


def _read_results(paths: list[Path], fmt: FileFormat) -> list[dict[str, Any]]:
    """Read result files with ``fmt``'s reader: each item is ``path`` plus the content, or ``problem``."""
    from routelens.errors import RoutelensError

    found = []
    for path in paths:
        try:
            found.append({"path": str(path), **fmt.read(path)})
        except RoutelensError as exc:  # missing, half-written, of another format or version
            found.append({"path": str(path), "problem": str(exc)})
    return found


def bench_stamp(run_path: str) -> tuple:
    """Cache key part of the run's bench reports folder (``RUN/bench/``)."""
    return stamp(BENCH.folder_in(run_path))


@st.cache_data(max_entries=32, show_spinner=False)
def bench_reports(run_path: str, key: tuple) -> list[dict[str, Any]]:
    """``routelens bench`` reports in ``RUN/bench/`` (newest first); ``key`` is :func:`bench_stamp`."""
    folder = BENCH.folder_in(run_path)
    paths = sorted(folder.glob(BENCH.pattern()), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    return _read_results(paths, BENCH)


def schedule_stamp(run_path: str) -> tuple:
    """Cache key part of the run's schedule files folder (``RUN/schedules/``)."""
    return stamp(SCHEDULE.folder_in(run_path))


@st.cache_data(max_entries=32, show_spinner=False)
def schedule_reports(run_path: str, key: tuple) -> list[dict[str, Any]]:
    """``routelens schedule-eval`` results in ``RUN/schedules/`` (newest first); ``key`` is :func:`schedule_stamp`."""
    folder = SCHEDULE.folder_in(run_path)
    paths = sorted(folder.glob(SCHEDULE.pattern()), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    return _read_results(paths, SCHEDULE)


# ---------------------------------------------------------------------------- analysis (routelens analyze)
def analysis_stamp(run_path: str) -> tuple:
    """Cache key part of ``RUN/analysis/`` (its summary file and the trace manifest)."""
    return stamp(ANALYSIS.path_in(run_path), Path(run_path) / TRACE.file)


def has_analysis(run_path: str) -> bool:
    return ANALYSIS.path_in(run_path).is_file()


@st.cache_data(max_entries=8, show_spinner="Loading the analysis…")
def analysis(run_path: str, key: tuple):
    """The run's :class:`routelens.graphs.Analysis`, read from ``RUN/analysis/`` (never recomputed here)."""
    from routelens.graphs import load_analysis

    return load_analysis(run_path)


@st.cache_data(max_entries=64, show_spinner=False)
def layer_matrix(run_path: str, key: tuple, layer: int, kind: str) -> np.ndarray:
    """``[E, E]`` of one layer: ``counts`` (co-activations), ``conditional`` (P(j | i)) or ``lift``."""
    result = analysis(run_path, key)
    if kind == "counts":
        return result.counts(layer)
    if kind == "conditional":
        return result.conditional(layer)
    if kind == "lift":
        return result.lift(layer)
    raise ValueError(f"unknown matrix kind {kind!r}")


@st.cache_data(max_entries=64, show_spinner="Laying out the graph…")
def graph_layout(run_path: str, key: tuple, layer: int, min_lift: float, seed: int = 0) -> dict[str, Any]:
    """Node positions and the drawn edges of a layer's co-activation graph.

    Edges are the pairs with ``lift >= min_lift`` (co-activated more often than chance), from the
    library's :meth:`Analysis.graph`; positions come from networkx's spring layout over those edges
    (weighted by lift), started from one circle per community so communities stay together.
    """
    import networkx as nx

    result = analysis(run_path, key)
    graph = result.graph(layer)
    community = result.score(layer, "community")
    strong = nx.Graph()
    strong.add_nodes_from(graph.nodes)
    strong.add_edges_from((i, j, {"weight": d["lift"]}) for i, j, d in graph.edges(data=True) if d["lift"] >= min_lift)
    start = {}
    groups = sorted(set(community.tolist()))
    for g_index, g in enumerate(groups):
        members = [int(i) for i in np.flatnonzero(community == g)]
        cx, cy = np.cos(2 * np.pi * g_index / max(len(groups), 1)), np.sin(2 * np.pi * g_index / max(len(groups), 1))
        for m_index, m in enumerate(members):
            angle = 2 * np.pi * m_index / max(len(members), 1)
            start[m] = (2 * cx + 0.5 * np.cos(angle), 2 * cy + 0.5 * np.sin(angle))
    positions = nx.spring_layout(strong, pos=start, weight="weight", seed=seed, iterations=60)
    xy = np.array([positions[i] for i in range(len(positions))])
    edges = [(i, j, d["weight"]) for i, j, d in strong.edges(data=True)]
    return {"xy": xy, "edges": edges}


@st.cache_data(max_entries=16, show_spinner="Comparing the runs…")
def comparison(run_a: str, key_a: tuple, run_b: str, key_b: tuple, top_experts: int = 15) -> dict[str, Any]:
    """:func:`routelens.graphs.compare_analyses` of two runs' stored analyses."""
    from routelens.graphs import compare_analyses

    return compare_analyses(analysis(run_a, key_a), analysis(run_b, key_b), top_experts=top_experts)


@st.cache_data(ttl=5, show_spinner=False)
def runs_table(runs_dir: str) -> list[dict[str, Any]]:
    """One row per run below ``runs_dir``: manifest facts plus its analysis summary when there is one."""
    from routelens.errors import RoutelensError

    rows = []
    for info in find_runs(runs_dir):
        row: dict[str, Any] = {"run": info.name, "path": info.path, "problem": info.problem}
        if not info.problem:
            try:
                trace = open_trace(info.path)
            except RoutelensError as exc:
                row["problem"] = str(exc)
                rows.append(row)
                continue
            stats = trace.manifest.get("stats", {}) or {}
            row.update(model=trace.model_id, family=trace.family, layers=len(trace.layers), experts=trace.num_experts,
                       top_k=trace.top_k, tokens=trace.num_tokens, complete=bool(trace.manifest.get("complete")),
                       tokens_per_s=stats.get("tokens_per_s"), analysed=has_analysis(info.path))
            if row["analysed"]:
                try:
                    result = analysis(info.path, analysis_stamp(info.path))
                    summaries = result.layer_summaries
                    row["load_max_over_mean"] = float(np.median([s["load_max_over_mean"] for s in summaries]))
                    row["share_specialized"] = float(np.mean([s["share_specialized"] or 0 for s in summaries]))
                    row["modularity"] = float(np.median([s["modularity"] or 0 for s in summaries]))
                except RoutelensError as exc:
                    row["analysed"] = False
                    row["problem"] = str(exc)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- placement plans
def _looks_like_plan(path: Path) -> bool:
    """Cheap filter before parsing: a plan file starts with its format name (Plan.to_json puts it first)."""
    if not path.is_file():  # a FIFO or device named *.json would block the page
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(200)
    except OSError:
        return False
    return b'"routelens-plan"' in head


@st.cache_data(ttl=5, show_spinner=False)
def plan_files(runs_dir: str, run_path: str) -> list[str]:
    """Plan files (``format: routelens-plan``) inside the run folder and below RUNS_DIR, sorted by path."""
    from .runs import find_json_files

    found = {str(p) for p in find_json_files(run_path) + find_json_files(runs_dir) if PLAN.sniff(p)}
    return sorted(found)


@st.cache_data(max_entries=32, show_spinner=False)
def plan(path: str, key: tuple):
    """Read and validate a plan file (:meth:`routelens.plan.Plan.load`)."""
    from routelens.plan import Plan

    return Plan.load(path)


def _plan_cost(plan, trace):
    """The cost model a plan was made with (stored in the plan), as ``routelens plan-eval`` rebuilds it."""
    from routelens.placement.cost import CostModel
    from routelens.placement.topology import Topology

    topology = (Topology.from_json(plan.meta["topology"]) if plan.meta.get("topology")
                else Topology(num_nodes=plan.num_nodes, gpus_per_node=plan.gpus_per_node))
    stored = plan.meta.get("cost_model") or {}
    if stored:
        return CostModel(topology, float(stored.get("token_bytes", 8192)), float(stored.get("expert_flops_per_token", 0)))
    return CostModel.for_model(trace.config, topology)


def _fit_range(plan, trace) -> tuple[int, int]:
    origin = plan.meta.get("trace") or {}
    if origin.get("fingerprint") == trace.fingerprint():
        start, end = (origin.get("fit_tokens") or (0, trace.num_tokens))[:2]
        return int(start), int(end)
    return 0, int(trace.num_tokens)


@st.cache_data(max_entries=16, show_spinner="Scoring the plan and the baselines on held-out tokens…")
def plan_vs_baselines(run_path: str, trace_key: tuple, plan_path: str, plan_key: tuple,
                      baselines: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``routelens plan-eval``: the plan and each baseline (fitted on the plan's fit tokens), scored on held-out tokens.

    ``baselines`` default: every registered baseline whose optional dependency is installed (the Mt-KaHyPar
    ones, the strongest, when ``mtkahypar`` is), as ``routelens plan-eval`` does.

    Returns ``{"results": name → {"mean", "layers"}, "note": which tokens, "label": the plan's row name}``.
    """
    from routelens.placement import PlaceSettings, baseline_names, compare_plans, eval_token_index, fit_baselines

    trace = open_trace(run_path)
    baselines = baseline_names(available_only=True) if baselines is None else baselines
    chosen = plan(plan_path, plan_key)
    chosen.check_trace(trace)
    cost = _plan_cost(chosen, trace)
    held, note = eval_token_index(trace, chosen)
    fit = _fit_range(chosen, trace)
    settings = PlaceSettings(redundant=chosen.num_redundant, replica_policy=chosen.replica_policy)
    plans = fit_baselines(trace, cost, list(baselines), settings, fit=fit, layers=chosen.layers) if baselines else {}
    label = f"this plan ({chosen.method})"
    plans[label] = chosen
    return {"results": compare_plans(plans, trace, held, cost, progress=False), "note": note, "label": label}


@st.cache_data(ttl=5, show_spinner=False)
def runs_like(runs_dir: str, run_path: str) -> list[str]:
    """Runs below ``runs_dir`` a plan for ``run_path`` fits (same MoE layers and experts, per-token routing)."""
    from routelens.errors import RoutelensError

    reference = open_trace(run_path)
    found = []
    for info in find_runs(runs_dir):
        if info.problem:
            continue
        try:
            trace = open_trace(info.path)
        except RoutelensError:
            continue
        if trace.layers == reference.layers and trace.num_experts == reference.num_experts and not trace.counts_only:
            found.append(info.path)
    return found


@st.cache_data(max_entries=16, show_spinner="Scoring every plan and its baselines on every run…")
def plan_matrix(plan_paths: tuple[str, ...], plan_keys: tuple, run_paths: tuple[str, ...], run_keys: tuple,
                labels: tuple[str, ...]) -> dict[str, Any]:
    """``routelens plan-eval PLAN... RUN...``: every plan and each quick baseline fitted like it, scored on every run.

    The cost model is the first plan's (:func:`_plan_cost`); every row of a run is scored on the tokens
    no plan was fitted on (:func:`routelens.placement.workloads.plan_matrix`).
    """
    from routelens.placement import baseline_names
    from routelens.placement.workloads import plan_matrix as matrix

    plans = {label: plan(path, key) for label, path, key in zip(labels, plan_paths, plan_keys)}
    traces = [open_trace(path) for path in run_paths]
    cost = _plan_cost(next(iter(plans.values())), traces[0])
    return matrix(plans, traces, cost, baseline_names(core_only=True), open_trace, progress=False)


@st.cache_data(max_entries=32, show_spinner="Placing the experts…")
def what_if(run_path: str, trace_key: tuple, num_gpus: int, num_nodes: int, redundant: int, method: str,
            time_budget_s: float = 3.0) -> dict[str, Any]:
    """A plan for another cluster, made and scored with the library in seconds (``routelens place``).

    The plan is fitted on the first half of the trace (``fit_token_range(trace, 0.5)``) within
    ``time_budget_s``; it and the contiguous baseline are scored on the other half.
    Returns ``{"plan": Plan, "results": name → metrics, "note": ...}``.
    """
    from routelens.placement import CostModel, PlaceSettings, compare_plans, eval_token_index, make_topology, place
    from routelens.placement.methods import REFERENCE
    from routelens.placement.place import fit_token_range

    trace = open_trace(run_path)
    topology = make_topology(num_gpus=num_gpus, num_nodes=num_nodes)
    cost = CostModel.for_model(trace.config, topology)
    fit = fit_token_range(trace, 0.5)
    made = place(trace, cost, PlaceSettings(method=method, redundant=redundant, time_budget_s=time_budget_s),
                 fit=fit, progress=False)
    plans = {REFERENCE: place(trace, cost, PlaceSettings(method=REFERENCE, redundant=redundant), fit=fit,
                              progress=False)}
    label = f"what-if ({method})"
    plans[label] = made
    held, note = eval_token_index(trace, made)
    return {"plan": made, "results": compare_plans(plans, trace, held, cost, progress=False), "note": note,
            "label": label}


@st.cache_data(max_entries=32, show_spinner=False)
def plan_export(plan_path: str, plan_key: tuple, fmt: str, suffix: str, num_layers: int | None) -> bytes:
    """The bytes of ``routelens place --format fmt`` for a plan (written to a temporary file by the library)."""
    return export_bytes(plan(plan_path, plan_key), fmt, suffix, num_layers)


def export_bytes(chosen, fmt: str, suffix: str, num_layers: int | None) -> bytes:
    """Export ``chosen`` with :func:`routelens.placement.export_plan` and return the file's bytes."""
    import tempfile

    from routelens.placement import export_plan

    with tempfile.TemporaryDirectory(prefix="routelens-export-") as folder:
        path = export_plan(chosen, Path(folder) / f"plan{suffix}", fmt, num_layers=num_layers)
        return Path(path).read_bytes()
