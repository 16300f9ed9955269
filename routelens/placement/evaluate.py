"""Score plans on held-out tokens and compare them with the baselines, on the same tokens.

Routing drifts with the text, so a plan is judged on tokens it was not fitted on: by default the
trace's tokens after the plan's fit range. Every plan (the one under test and each baseline,
fitted on the same fit tokens) is scored on the same held-out tokens with the same cost model.

Scoring is one job per layer (:func:`routelens.parallel.run_jobs`): a job reads its layer's
scored tokens once and scores every plan on them, so memory holds one layer per worker, never
the whole trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, PlanError
from ..parallel import resolve_workers, run_jobs, shared_path
from ..plan import Plan
from ..trace import as_trace
from .cost import CostModel, score_table
from .methods import REFERENCE
from .place import METRIC_KEYS, mean_metrics

MAX_RANGES = 64  # a token selection of more contiguous runs than this is read as whole layers, then indexed

COLUMNS = (
    ("gpus_per_token", "GPUs/token", "{:.2f}"),
    ("busiest_gpu_recv", "max recv", "{:.3f}"),
    ("busiest_gpu_send", "max send", "{:.3f}"),
    ("compute_imbalance", "compute max/mean", "{:.3f}"),
    ("inter_node_share", "inter-node", "{:.2f}"),
    ("a2a_us", "a2a µs/layer", "{:.1f}"),
    ("layer_us", "layer µs", "{:.1f}"),
)


def plan_origins(plan: Plan) -> list[dict[str, Any]]:
    """The runs a plan was fitted on: ``meta["traces"]`` (a plan fitted on several runs), else ``[meta["trace"]]``."""
    several = plan.meta.get("traces")
    if isinstance(several, list):
        return [o for o in several if isinstance(o, dict)]
    origin = plan.meta.get("trace")
    return [origin] if isinstance(origin, dict) else []


def eval_token_index(trace, plan: Plan) -> tuple[np.ndarray, str]:
    """Token indices to score ``plan`` on, and a note saying which and why.

    Tokens outside the plan's fit range when the plan was fitted on this very trace (one of its runs,
    :func:`plan_origins`); all tokens when it was fitted on another trace (then everything here is held out).
    """
    total = int(trace.num_tokens)
    fingerprint = trace.fingerprint()
    origin = next((o for o in plan_origins(plan) if o.get("fingerprint") == fingerprint), None)
    if origin is None:
        return np.arange(total), "all tokens (the plan was fitted on another trace)"
    start, end = (origin.get("fit_tokens") or [0, total])[:2]
    held = np.r_[np.arange(0, int(start)), np.arange(int(end), total)].astype(np.int64)
    if held.size == 0:
        return np.arange(total), "all tokens — IN-SAMPLE: the plan was fitted on every token of this trace"
    return held, f"held-out tokens {held.size:,} (fit on [{start}, {end}))"


def score_plan(plan: Plan, trace, token_index: np.ndarray, cost: CostModel, layers: list[str] | None = None,
               topk_cache: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics of ``plan`` on the trace tokens ``token_index``: ``{"mean": ..., "layers": {...}}``.

    Tokens start evenly over the GPUs (:func:`~routelens.placement.cost.token_source_gpu`).
    ``topk_cache`` (layer → ``[n, k]`` ids of those tokens) is filled and reused when given.
    """
    _check_plans({"plan": plan}, trace, token_index, cost)
    per_layer = {}
    for layer in layers or plan.layers:
        if topk_cache is not None and layer in topk_cache:
            ids = topk_cache[layer]
        else:
            ids = read_rows(trace, layer, token_selection(token_index))
            if topk_cache is not None:
                topk_cache[layer] = ids
        per_layer[layer] = score_table(ids, plan.gpu_experts[layer], cost, plan.replica_policy)
    return {"mean": mean_metrics(per_layer), "layers": per_layer}


def compare_plans(plans: dict[str, Plan], trace, token_index: np.ndarray, cost: CostModel,
                  progress: bool = True, workers: int | None = 1) -> dict[str, dict[str, Any]]:
    """:func:`score_plan` of every plan on the same tokens: ``name → {"mean", "layers"}``.

    One job per layer scores every plan on that layer's tokens, read once (``workers`` processes:
    None or 0 = every core, 1 = this process).
    """
    _check_plans(plans, trace, token_index, cost)
    layers = [layer for layer in trace.layers if any(layer in plan.gpu_experts for plan in plans.values())]
    selection = token_selection(token_index)
    scored = int(np.asarray(token_index).size)
    count = resolve_workers(workers, len(layers), bytes_per_job=scored * (48 * trace.top_k + 2 * cost.topology.num_gpus),
                            tokens_per_job=scored)
    jobs = [_ScoreJob(trace=trace if count == 1 else shared_path(trace.path), layer=layer, selection=selection,
                      tables={name: (plan.gpu_experts[layer], plan.replica_policy) for name, plan in plans.items()
                              if layer in plan.gpu_experts}, cost=cost) for layer in layers]
    scored = run_jobs(score_layer, jobs, count, progress=progress, desc="score plans")
    results = {}
    for name, plan in plans.items():
        per_layer = {layer: metrics[name] for layer, metrics in zip(layers, scored) if name in metrics}
        results[name] = {"mean": mean_metrics(per_layer), "layers": per_layer}
    return results


@dataclass
class _ScoreJob:
    """One layer's tables of every plan, to score on the selected tokens (the trace goes by path)."""

    trace: Any
    layer: str
    selection: Any  # list of (start, end) runs, or a [n] token index
    tables: dict[str, tuple[np.ndarray, str]]  # plan name -> ([G, S] table, replica policy)
    cost: CostModel


def score_layer(job: _ScoreJob) -> dict[str, dict[str, Any]]:
    """``plan name → metrics`` of one layer on the job's tokens (read once for all plans)."""
    ids = read_rows(as_trace(job.trace), job.layer, job.selection)
    return {name: score_table(ids, table, job.cost, policy) for name, (table, policy) in job.tables.items()}


def token_selection(token_index: np.ndarray):
    """``token_index`` as its contiguous runs ``[(start, end), ...]`` when there are few, else itself."""
    index = np.asarray(token_index, dtype=np.int64)
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    if breaks.size >= MAX_RANGES:
        return index
    starts, ends = np.r_[0, breaks], np.r_[breaks, index.size]
    return [(int(index[a]), int(index[b - 1]) + 1) for a, b in zip(starts, ends)]


def read_rows(trace, layer: str, selection) -> np.ndarray:
    """``[n, k]`` int64 expert ids of ``layer`` at the selected tokens (runs or an index), in selection order."""
    if isinstance(selection, list):
        parts = [trace.layer_range(layer, start, end) for start, end in selection]
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros((0, trace.top_k), np.int16)
    else:
        ids = trace.topk_ids(layer)[selection]
    return ids.astype(np.int64)


def _check_plans(plans: dict[str, Plan], trace, token_index: np.ndarray, cost: CostModel) -> None:
    for plan in plans.values():
        plan.check_trace(trace)
        if plan.num_gpus != cost.topology.num_gpus:
            raise PlanError(f"plan is for {plan.num_gpus} GPUs, the cost model's cluster has {cost.topology.num_gpus}")
    if np.asarray(token_index).size == 0:
        raise InputError("no tokens to score the plan on")


def ratios(results: dict[str, dict[str, Any]], baseline: str = REFERENCE) -> dict[str, dict[str, float]]:
    """Each plan's mean metrics divided by the baseline's (``name → metric → ratio``)."""
    if baseline not in results:
        return {}
    base = results[baseline]["mean"]
    return {name: {k: r["mean"][k] / base[k] for k in METRIC_KEYS if k in r["mean"] and base.get(k)}
            for name, r in results.items()}


def format_comparison(results: dict[str, dict[str, Any]], baseline: str = REFERENCE) -> str:
    """A plain-text table: one row per plan, mean over layers, ``(×ratio)`` to the baseline."""
    rel = ratios(results, baseline)
    header = ["plan"] + [title for _, title, _ in COLUMNS]
    rows = [header]
    for name, result in results.items():
        row = [name]
        for key, _, fmt in COLUMNS:
            value = result["mean"].get(key, float("nan"))
            cell = fmt.format(value)
            if name != baseline and key in rel.get(name, {}) and key not in ("inter_node_share",):
                cell += f" ({rel[name][key]:.2f}×)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


VERSUS_BEST = (
    ("busiest_gpu_recv", "busiest-GPU receive", "{:.3f}", "T/G"),
    ("a2a_us", "est. All-to-All", "{:.2f}", "µs/layer"),
    ("layer_us", "est. layer time", "{:.2f}", "µs/layer"),
)
"""The numbers a plan is judged by against its strongest rival: traffic (receive, All-to-All) and the layer."""


def versus_best(results: dict[str, dict[str, Any]], label: str) -> dict[str, dict[str, Any]]:
    """For each metric of :data:`VERSUS_BEST`: the baseline with the lowest mean, and the plan ``label`` against it.

    Args:
        results: ``name → {"mean": metrics}`` (:func:`compare_plans`), the plan under ``label`` and the baselines.

    Returns:
        ``metric → {"plan", "best_baseline", "best", "change"}`` (``change`` = plan / best - 1); empty
        when there is no baseline.
    """
    out: dict[str, dict[str, Any]] = {}
    rivals = {name: r["mean"] for name, r in results.items() if name != label}
    for key, _, _, _ in VERSUS_BEST:
        values = {name: mean[key] for name, mean in rivals.items() if key in mean}
        if not values or key not in results[label]["mean"]:
            continue
        best = min(values, key=values.get)
        mine = float(results[label]["mean"][key])
        out[key] = {"plan": mine, "best_baseline": best, "best": float(values[best]),
                    "change": mine / values[best] - 1 if values[best] else float("nan")}
    return out


def format_versus_best(results: dict[str, dict[str, Any]], label: str) -> str:
    """Plain-text lines of :func:`versus_best`: one per metric, the plan, the best baseline on it and the change."""
    rows = versus_best(results, label)
    lines = []
    for key, title, fmt, unit in VERSUS_BEST:
        if key in rows:
            row = rows[key]
            lines.append(f"{title:20s} plan {fmt.format(row['plan'])} vs best baseline {row['best_baseline']} "
                         f"{fmt.format(row['best'])} {unit} ({100 * row['change']:+.1f}%)")
    return "\n".join(lines)
