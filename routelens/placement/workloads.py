"""Several workloads: one plan fitted on several runs at once, and plans × runs scored as a matrix.

A production cluster serves a mix (code and prose, several tenants); a plan fitted on one of them
may lose on the others. :func:`place_workloads` fits one plan on the fit tokens of several runs,
mixed in proportion to their weights (:func:`mixed_fit_ids`); :func:`plan_matrix` scores every plan,
and every baseline fitted on the same tokens as that plan, on every run's held-out tokens
(:func:`~routelens.placement.evaluate.eval_token_index`). ``routelens place RUN1 RUN2 ...`` and
``routelens plan-eval PLAN... RUN...`` are thin shells over these.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError, PlanError, RoutelensError
from ..parallel import resolve_workers, run_jobs, shared_path
from ..plan import Plan
from ..trace import as_trace
from .baselines import slots_per_gpu
from .cost import CostModel, score_table
from .evaluate import compare_plans, plan_origins
from .place import PlaceSettings, fit_baselines, layer_job_bytes, layer_table, mean_metrics, place


@dataclass(frozen=True)
class Workload:
    """The fit tokens of one run and its share of the mix.

    Attributes:
        trace: a :class:`~routelens.trace.Trace` with per-token routing.
        fit: ``(start, end)`` its tokens the plan is fitted on.
        weight: its share of the fit tokens (the weights of a mix sum to 1).
    """

    trace: Any
    fit: tuple[int, int]
    weight: float = 1.0

    @property
    def num_fit_tokens(self) -> int:
        return int(self.fit[1] - self.fit[0])

    def origin(self) -> dict[str, Any]:
        """What a plan records of it (``meta["traces"]``)."""
        return {"path": str(self.trace.path), "fingerprint": self.trace.fingerprint(),
                "num_tokens": int(self.trace.num_tokens), "fit_tokens": [int(self.fit[0]), int(self.fit[1])],
                "weight": float(self.weight)}


def make_workloads(traces: Sequence[Any], fits: Sequence[tuple[int, int]],
                   weights: Sequence[float] | None = None) -> list[Workload]:
    """One :class:`Workload` per run, weights normalised to sum 1 (default: in proportion to their fit tokens).

    Raises:
        InputError: as many weights as runs are not given, or one is not a finite number > 0; the runs
            differ in their MoE layers or expert count.
    """
    if not traces:
        raise InputError("give at least one run to fit on")
    first = traces[0]
    for trace in traces[1:]:
        if list(trace.layers) != list(first.layers) or int(trace.num_experts) != int(first.num_experts):
            raise InputError(f"{trace.path} has {len(trace.layers)} MoE layers × {trace.num_experts} experts, "
                             f"{first.path} {len(first.layers)} × {first.num_experts}: one plan cannot fit both")
    sizes = np.array([end - start for start, end in fits], dtype=np.float64)
    if weights is None:
        weights = sizes
    weights = np.asarray(list(weights), dtype=np.float64)
    if weights.size != len(traces):
        raise InputError(f"--run-weights gives {weights.size} weight(s) for {len(traces)} runs")
    if not (np.all(np.isfinite(weights)) and np.all(weights > 0)):
        raise InputError(f"--run-weights must be positive numbers, got {', '.join(f'{w:g}' for w in weights)}")
    weights = weights / weights.sum()
    return [Workload(trace, (int(fit[0]), int(fit[1])), float(w)) for trace, fit, w in zip(traces, fits, weights)]


def mixed_fit_ids(workloads: Sequence[Workload], layer: str, seed: int = 0) -> np.ndarray:
    """``[T, k]`` int64 fit tokens of ``layer`` from every workload, in proportion to the weights, interleaved.

    The mix is as large as the weights allow without repeating a token: ``total = min_i(n_i / w_i)``
    for runs of ``n_i`` fit tokens, and run ``i`` gives ``round(w_i · total)`` of them (all of them when
    the weights follow the token counts, the default; a seeded sample, kept in order, otherwise).
    The runs' tokens are interleaved evenly (run ``i``'s ``j``-th token at ``(j + ½) / m_i``), so every
    stretch of the mix — the GPUs its tokens start on, the optimizer's validation block — holds each
    run in its share. Each run's fit range is read alone (:meth:`~routelens.trace.Trace.layer_range`).
    """
    available = np.array([w.num_fit_tokens for w in workloads], dtype=np.float64)
    weights = np.array([w.weight for w in workloads], dtype=np.float64)
    total = float(np.min(available / weights))
    rng = np.random.default_rng(seed)
    parts, keys = [], []
    for workload, n_available, share in zip(workloads, available, weights):
        take = int(min(n_available, round(share * total)))
        start, end = workload.fit
        ids = np.asarray(as_trace(workload.trace).layer_range(layer, start, end), dtype=np.int64)
        if take < n_available:
            ids = ids[np.sort(rng.choice(int(n_available), take, replace=False))]
        parts.append(ids)
        keys.append((np.arange(take) + 0.5) / max(take, 1))
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate(parts)[order]


def place_workloads(workloads: Sequence[Workload], cost: CostModel, settings: PlaceSettings,
                    progress: bool = True, workers: int | None = 1) -> Plan:
    """Fit one plan on several runs at once (:func:`mixed_fit_ids`); one run is :func:`~.place.place` itself.

    Args:
        workers: processes placing layers at once (None or 0: every core; 1: this process); the plan
            is the same for any count (:mod:`routelens.parallel`).

    Returns:
        A :class:`~routelens.plan.Plan` whose ``meta["traces"]`` lists every run (path, fingerprint,
        fit tokens, weight) and ``meta["metrics"]`` holds the metrics on the mixed fit tokens
        (``mean``, ``layers``) and on each run's own fit tokens (``runs``: path → mean).

    Raises:
        InputError: bad settings; TraceError: a counts-only run among several.
    """
    if len(workloads) == 1:
        only = workloads[0]
        return place(only.trace, cost, settings, fit=only.fit, progress=progress, workers=workers)
    settings.check()
    started = time.perf_counter()
    layers, results = _fit_mixed(workloads, cost, settings, (settings.method,), True, progress, workers)
    tables, per_layer, per_run = {}, {}, {str(w.trace.path): {} for w in workloads}
    for layer, result in zip(layers, results):
        tables[layer], per_layer[layer], own = result[settings.method]
        for workload, metrics in zip(workloads, own):
            per_run[str(workload.trace.path)][layer] = metrics
    meta = _mixed_meta(workloads, cost, settings, time.perf_counter() - started)
    meta["metrics"] = {"on": "fit tokens of every run, mixed by weight", "mean": mean_metrics(per_layer),
                       "layers": per_layer, "runs": {path: mean_metrics(m) for path, m in per_run.items()}}
    return Plan(gpu_experts=tables, num_experts=int(workloads[0].trace.num_experts), num_nodes=cost.topology.num_nodes,
                replica_policy=settings.replica_policy, method=settings.method, meta=meta)


def fit_workload_baselines(workloads: Sequence[Workload], cost: CostModel, methods: Sequence[str],
                           settings: PlaceSettings, layers: Sequence[str] | None = None, progress: bool = False,
                           workers: int | None = 1) -> dict[str, Plan]:
    """Plans of several methods fitted on the same runs (each layer's mix read once for all of them).

    What ``plan-eval`` compares a plan with; one run is :func:`~.place.fit_baselines` itself.
    ``layers``: the MoE layers to fit (default: all of the runs').

    Returns:
        ``method → Plan``, in the order of ``methods`` (no metrics on the fit tokens).
    """
    if not methods:
        return {}
    if len(workloads) == 1:
        only = workloads[0]
        return fit_baselines(only.trace, cost, list(methods), settings, fit=only.fit,
                             layers=None if layers is None else list(layers), progress=progress, workers=workers)
    for method in methods:
        dataclasses.replace(settings, method=method).check()
    started = time.perf_counter()
    layers, results = _fit_mixed(workloads, cost, settings, tuple(methods), False, progress, workers, layers)
    seconds = time.perf_counter() - started
    return {method: Plan(gpu_experts={layer: result[method][0] for layer, result in zip(layers, results)},
                         num_experts=int(workloads[0].trace.num_experts), num_nodes=cost.topology.num_nodes,
                         replica_policy=settings.replica_policy, method=method,
                         meta=_mixed_meta(workloads, cost, dataclasses.replace(settings, method=method), seconds))
            for method in methods}


@dataclass
class _MixedLayerJob:
    """One layer of several runs to place with one or more methods (runs go to a worker by path)."""

    runs: tuple[tuple[Any, tuple[int, int], float], ...]  # (trace or path, fit, weight) per run
    layer: str
    methods: tuple[str, ...]
    settings: PlaceSettings
    cost: CostModel
    num_experts: int
    score: bool
    deadline_wall: float | None  # time.time() by which every layer must be done (the whole budget)
    allowance_s: float | None  # this layer's share of the budget


def place_mixed_layer(job: _MixedLayerJob) -> dict[str, tuple[np.ndarray, dict | None, list | None]]:
    """``method → (table [G, S], metrics on the mix or None, [metrics on each run's own fit tokens] or None)``."""
    workloads = [Workload(as_trace(trace), fit, weight) for trace, fit, weight in job.runs]
    ids = mixed_fit_ids(workloads, job.layer, job.settings.seed)
    deadline = None
    if job.allowance_s is not None:
        deadline = time.perf_counter() + max(0.0, min(job.allowance_s, job.deadline_wall - time.time()))
    out = {}
    for method in job.methods:
        settings = dataclasses.replace(job.settings, method=method)
        table, _ = layer_table(method, ids, job.num_experts, job.cost, settings, deadline)
        mixed = own = None
        if job.score:
            mixed = score_table(ids, table, job.cost, settings.replica_policy)
            own = [score_table(np.asarray(w.trace.layer_range(job.layer, *w.fit), dtype=np.int64), table, job.cost,
                               settings.replica_policy) for w in workloads]
        out[method] = (table, mixed, own)
    return out


def _fit_mixed(workloads: Sequence[Workload], cost: CostModel, settings: PlaceSettings, methods: tuple[str, ...],
               score: bool, progress: bool, workers: int | None,
               layers: Sequence[str] | None = None) -> tuple[list[str], list[dict]]:
    """``(layers, [place_mixed_layer result per layer])``, ``workers`` layers at a time (:func:`~routelens.parallel.run_jobs`)."""
    for workload in workloads:
        workload.trace.require_tokens("place on several runs")
    first = workloads[0].trace
    layers = list(first.layers if layers is None else layers)
    slots_per_gpu(int(first.num_experts), cost.topology.num_gpus, settings.redundant)  # fail before reading
    fit_tokens = sum(w.num_fit_tokens for w in workloads)
    # each run's fit range and the mix made of them are in memory at once: twice one run's job
    count = resolve_workers(workers, len(layers), bytes_per_job=2 * layer_job_bytes(fit_tokens, first.top_k, cost),
                            tokens_per_job=fit_tokens)
    deadline_wall = allowance = None
    if settings.time_budget_s is not None:
        deadline_wall = time.time() + settings.time_budget_s
        allowance = settings.time_budget_s * count / len(layers)
    runs = tuple((w.trace if count == 1 else shared_path(w.trace.path), w.fit, w.weight) for w in workloads)
    jobs = [_MixedLayerJob(runs=runs, layer=layer, methods=methods, settings=settings, cost=cost,
                           num_experts=int(first.num_experts), score=score, deadline_wall=deadline_wall,
                           allowance_s=allowance) for layer in layers]
    desc = f"place ({methods[0]})" if len(methods) == 1 else "fit baselines"
    return layers, run_jobs(place_mixed_layer, jobs, count, progress=progress, desc=desc)


def _mixed_meta(workloads: Sequence[Workload], cost: CostModel, settings: PlaceSettings,
                seconds: float) -> dict[str, Any]:
    first = workloads[0].trace
    config = dict(first.config)
    return {
        "seed": settings.seed,
        "topology": cost.topology.to_json(),
        "cost_model": cost.to_json(),
        "traces": [w.origin() for w in workloads],
        "model": {"id": first.model_id, "family": first.family, "num_layers": config.get("num_layers"),
                  "hidden_size": config.get("hidden_size"), "num_experts": int(first.num_experts),
                  "top_k": int(first.top_k)},
        "seconds": round(seconds, 3),
    }


def plan_workloads(plan: Plan, open_trace: Callable[[str], Any], known: Sequence[Any] = ()) -> list[Workload] | None:
    """The runs a plan was fitted on, or None when one of them is gone or changed.

    A run is one of ``known`` with the recorded fingerprint, else the run at the recorded path if it
    still has that fingerprint (and the plan's layers).
    """
    origins = plan_origins(plan)
    if not origins:
        return None
    found = []
    for origin in origins:
        trace = next((t for t in known if t.fingerprint() == origin.get("fingerprint")), None)
        if trace is None:
            try:
                trace = open_trace(origin["path"])
            except (RoutelensError, KeyError, TypeError, OSError):  # moved, deleted, unreadable: not found
                return None
            if trace.fingerprint() != origin.get("fingerprint"):
                return None
        if list(trace.layers) != plan.layers:
            return None
        fit = tuple(origin.get("fit_tokens") or (0, trace.num_tokens))
        found.append(Workload(trace, (int(fit[0]), int(fit[1])), float(origin.get("weight", 1.0))))
    return found


def baseline_workloads(plan: Plan, traces: Sequence[Any], open_trace: Callable[[str], Any]) -> tuple[list[Workload], str]:
    """What the baselines compared with ``plan`` are fitted on, and a note saying so.

    The very tokens the plan was fitted on whenever they can be found (:func:`plan_workloads`): its
    fit range of a run scored here, or of the runs it names when they are still where it says,
    unchanged, so plan and baselines see the same tokens and are scored on the same unseen ones.
    Otherwise every token of the scored ``traces``, in-sample for the baselines (the note names it).
    """
    found = plan_workloads(plan, open_trace, known=traces)
    if found is not None and len(found) == 1:
        (only,) = found
        where = "" if any(only.trace is t for t in traces) else " own"
        return found, (f"baselines fitted on the plan's{where} fit tokens [{only.fit[0]}, {only.fit[1]})"
                       + ("" if where == "" else f" of {only.trace.path}"))
    if found is not None:
        return found, f"baselines fitted on the plan's own fit tokens of its {len(found)} runs, mixed as the plan's"
    workloads = make_workloads(traces, [(0, int(t.num_tokens)) for t in traces])
    what = "this trace" if len(traces) == 1 else f"the {len(traces)} runs"
    return workloads, (f"baselines fitted on all tokens of {what} (in-sample for them: the plan's own trace is not "
                       "found unchanged)")


# ---------------------------------------------------------------------------- plans × runs
def plan_matrix(plans: dict[str, Plan], traces: Sequence[Any], cost: CostModel, baselines: Sequence[str],
                open_trace: Callable[[str], Any], seed: int = 0, num_groups: int = 1,
                progress: bool = True, workers: int | None = 1) -> dict[str, Any]:
    """Every plan, and every baseline fitted on the same tokens as it, scored on every run.

    Every row is scored on the same tokens of a run (:func:`shared_token_index`: those no plan was
    fitted on), so a column compares like with like. Plans fitted on the same tokens share their baselines.

    Args:
        plans: label → plan (every plan for ``cost``'s GPU count and the runs' layers and experts).
        traces: the runs to score on.
        cost: the cost model all are scored with.
        baselines: baseline method names (:func:`~.methods.baseline_names`).
        open_trace: opens a run by path (finds the runs a plan was fitted on).
        workers: processes working on layers at once, for fitting and scoring (None or 0: every core).

    Returns:
        ``{"runs": [path...], "rows": [{"label", "kind": "plan"|"baseline", "method", "fitted_like",
        "fit": note, "results": {path: {"mean", "layers", "scored_on", "eval_tokens"}}}], "scored_on": {path: note}}``.

    Raises:
        PlanError: a plan does not fit a run or the cluster.
    """
    if not plans or not traces:
        raise InputError("a plan matrix needs at least one plan and one run")
    for label, plan in plans.items():
        if plan.num_gpus != cost.topology.num_gpus:
            raise PlanError(f"{label} is for {plan.num_gpus} GPUs, the cluster has {cost.topology.num_gpus}")
        for trace in traces:
            plan.check_trace(trace)
    rows: list[dict[str, Any]] = []
    fitted: dict[tuple, dict[str, Plan]] = {}
    for label, plan in plans.items():
        workloads, note = baseline_workloads(plan, traces, open_trace)
        key = tuple((str(w.trace.path), w.trace.fingerprint(), w.fit, round(w.weight, 9)) for w in workloads) + (
            plan.num_redundant, plan.replica_policy, tuple(plan.layers))
        if key not in fitted:
            settings = PlaceSettings(method=baselines[0] if baselines else "contiguous", redundant=plan.num_redundant,
                                     replica_policy=plan.replica_policy, seed=seed, num_groups=num_groups)
            fitted[key] = fit_workload_baselines(workloads, cost, list(baselines), settings, layers=plan.layers,
                                                 progress=progress, workers=workers)
        rows.append({"label": label, "kind": "plan", "method": plan.method, "fitted_like": label, "fit": note,
                     "plan": plan})
        rows += [{"label": f"{name} (fit as {label})", "kind": "baseline", "method": name, "fitted_like": label,
                  "fit": note, "plan": made} for name, made in fitted[key].items()]
    scored = {str(trace.path): shared_token_index(trace, list(plans.values())) for trace in traces}
    for trace in traces:
        index, scored_on = scored[str(trace.path)]
        results = compare_plans({str(n): row["plan"] for n, row in enumerate(rows)}, trace, index, cost,
                                progress=progress, workers=workers)
        for n, row in enumerate(rows):
            row.setdefault("results", {})[str(trace.path)] = {**results[str(n)], "scored_on": scored_on,
                                                              "eval_tokens": int(index.size)}
    for row in rows:
        del row["plan"]
    return {"runs": [str(t.path) for t in traces], "rows": rows,
            "scored_on": {path: note for path, (_, note) in scored.items()}}


def shared_token_index(trace, plans: Sequence[Plan]) -> tuple[np.ndarray, str]:
    """``[n]`` tokens of ``trace`` that none of ``plans`` was fitted on, and a note saying which.

    All tokens when no plan was fitted on this run; when the plans' fit ranges cover every token,
    all tokens too, and the note says the scores are in-sample.
    """
    total = int(trace.num_tokens)
    keep = np.ones(total, dtype=bool)
    fingerprint = trace.fingerprint()
    for plan in plans:
        for origin in plan_origins(plan):
            if origin.get("fingerprint") == fingerprint:
                start, end = (origin.get("fit_tokens") or [0, total])[:2]
                keep[int(start):int(end)] = False
    if keep.all():
        return np.arange(total), "all tokens (no plan was fitted on this run)"
    if not keep.any():
        return np.arange(total), "all tokens — IN-SAMPLE: the plans were fitted on every token of this run"
    index = np.flatnonzero(keep)
    return index, f"{index.size:,} tokens no plan was fitted on"


def format_matrix(matrix: dict[str, Any], keys: Sequence[tuple[str, str, str]] = (
        ("layer_us", "layer µs", "{:.1f}"), ("busiest_gpu_recv", "busiest-GPU receive (× T/G)", "{:.3f}"))) -> str:
    """:func:`plan_matrix` as plain-text tables, one per metric: rows = plans and baselines, columns = runs."""
    from pathlib import Path

    names = [Path(p).name or p for p in matrix["runs"]]
    lines = []
    for key, title, fmt in keys:
        table = [[title] + names]
        for row in matrix["rows"]:
            table.append([("  " if row["kind"] == "baseline" else "") + row["label"]]
                         + [fmt.format(row["results"][p]["mean"].get(key, float("nan"))) for p in matrix["runs"]])
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in table]
        lines.insert(len(lines) - len(table) + 1, "  ".join("-" * w for w in widths))
        lines.append("")
    return "\n".join(lines).rstrip()
