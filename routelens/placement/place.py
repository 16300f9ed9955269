"""Trace → Plan: run a placement method on every MoE layer of a trace.

``place(trace, cost, settings)`` fits one ``[G, S]`` table per layer on the *fit* tokens (a
contiguous part of the trace, snapped to sequence boundaries), scores it there, and returns a
:class:`~routelens.plan.Plan` that records the method, the cluster, the cost model, the fit tokens
and the metrics at creation. ``routelens place`` and ``routelens plan-eval`` are thin shells over
this module and :mod:`.evaluate`.

Layers are independent: each is one job (:func:`routelens.parallel.run_jobs`) that reads its own
fit tokens from the trace, so ``workers`` processes place ``workers`` layers at a time and the plan
is the same as a serial one for the same seed. A time budget is shared out per layer: each layer
gets ``budget × workers / layers`` seconds, and no layer runs past the whole budget.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..graphs import load_counts
from ..parallel import resolve_workers, run_jobs, shared_path
from ..plan import Plan
from ..trace import as_trace
from .baselines import slots_per_gpu
from .cost import CostModel, score_table
from .methods import LayerFit, baseline_names, get_method, load_only_names, method_names
from .objectives import DEFAULT_OBJECTIVE, get_objective
from .optimizer import MAX_FIT_TOKENS, default_kicks, default_seeds
from .traffic import POLICIES

METHODS = method_names()  # registered in .methods
BASELINES = baseline_names()
METRIC_KEYS = ("gpus_per_token", "copies_per_token", "busiest_gpu_recv", "busiest_gpu_send", "compute_imbalance",
               "inter_node_share", "a2a_us", "compute_us", "layer_us")


@dataclass
class PlaceSettings:
    """How to make a plan.

    Attributes:
        method: a registered method (:mod:`.methods`: ``routelens``, ``contiguous``, ``eplb``...).
        redundant: ``R`` extra expert slots per layer (``(E + R) % G == 0``).
        replica_policy: how tokens pick among replicas (:data:`~routelens.placement.traffic.POLICIES`).
        seed: random baseline and optimizer subsample seed.
        time_budget_s: optimizer wall-clock budget for the whole plan (None: run to convergence).
        max_fit_tokens: tokens per layer the optimizer scores on (a seeded subsample above this).
        seeds: optimizer starting placements (None: :func:`~routelens.placement.optimizer.default_seeds`).
        num_groups: expert groups for EPLB's hierarchical policy (1 = the model has none).
        objective: optimizer objective, a name of :mod:`.objectives` (default ``"layer"``: dispatch +
            busiest GPU's expert compute + combine; ``"a2a"``: dispatch + combine).
        kicks: optimizer restarts from the best placement after random swaps (None:
            :func:`~routelens.placement.optimizer.default_kicks`; 0 = plain local search).
    """

    method: str = "routelens"
    redundant: int = 0
    replica_policy: str = "nearest-then-least-loaded"
    seed: int = 0
    time_budget_s: float | None = None
    max_fit_tokens: int | None = MAX_FIT_TOKENS
    seeds: tuple[str, ...] | None = None
    num_groups: int = 1
    objective: str = DEFAULT_OBJECTIVE
    kicks: int | None = None

    def check(self) -> None:
        method = get_method(self.method)  # raises for an unknown name
        if self.redundant and not method.supports_replicas:
            raise InputError(f"placement method '{self.method}' cannot place redundant replicas (--redundant)")
        if self.replica_policy not in POLICIES:
            raise InputError(f"unknown replica policy '{self.replica_policy}' (known: {', '.join(POLICIES)})")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise InputError(f"--time-budget must be positive, got {self.time_budget_s}")
        get_objective(self.objective)  # raises for an unknown name
        if self.kicks is not None and self.kicks < 0:
            raise InputError(f"--kicks must be 0 or more, got {self.kicks}")
        if self.max_fit_tokens is not None and self.max_fit_tokens < 1:
            raise InputError(f"--max-fit-tokens must be positive, got {self.max_fit_tokens}")


def fit_token_range(trace, fit_fraction: float) -> tuple[int, int]:
    """``(0, end)``: the first ``fit_fraction`` of the trace's tokens, cut at a sequence boundary.

    The rest, ``[end, T)``, is held out for :func:`~routelens.placement.evaluate.compare_plans`.

    Raises:
        InputError: the fraction is not in (0, 1] or leaves no fit or no held-out token.
    """
    if not 0 < fit_fraction <= 1:
        raise InputError(f"--fit-fraction must be in (0, 1], got {fit_fraction}")
    total = int(trace.num_tokens)
    if total == 0:
        raise InputError(f"trace {trace.path} holds no tokens")
    if fit_fraction >= 1:
        return 0, total
    cut = int(round(total * fit_fraction))
    seq = np.asarray(trace.seq_ids)
    starts = np.r_[0, np.flatnonzero(np.diff(seq) != 0) + 1, total]
    end = int(starts[np.argmin(np.abs(starts - cut))])
    if end <= 0 or end >= total:
        end = cut  # one long sequence: cut inside it
    if end <= 0 or end >= total:
        raise InputError(f"--fit-fraction {fit_fraction} leaves no fit or no held-out tokens of {total}")
    return 0, end


def layer_table(method: str, topk_ids: np.ndarray, num_experts: int, cost: CostModel, settings: PlaceSettings,
                deadline: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """``[G, S]`` table of one layer by ``method`` (:func:`~.methods.get_method`) on fit tokens ``topk_ids [T, k]``,
    and method info."""
    layer = LayerFit(num_experts, topk_ids=np.asarray(topk_ids, dtype=np.int64))
    return get_method(method).build(layer, cost, settings, deadline)


def load_metrics(table: np.ndarray, load: np.ndarray) -> dict[str, float]:
    """What a placement's expert load alone tells: ``compute_imbalance`` (busiest GPU over the mean).

    Each replica of an expert takes an equal share of its load (what EPLB assumes); the All-to-All
    metrics need per-token routing and are left out.
    """
    table = np.asarray(table, dtype=np.int64)
    load = np.asarray(load, dtype=np.float64)
    replicas = np.bincount(table.ravel(), minlength=load.size)
    per_gpu = (load / np.maximum(replicas, 1))[table].sum(axis=1)
    mean = float(per_gpu.mean()) if per_gpu.size else 0.0
    return {"compute_imbalance": float(per_gpu.max(initial=0)) / mean if mean else 1.0}


def place(trace, cost: CostModel, settings: PlaceSettings, fit: tuple[int, int] | None = None,
          layers: list[str] | None = None, progress: bool = True, workers: int | None = 1) -> Plan:
    """Fit a plan for ``trace`` on its tokens ``fit = (start, end)`` (default: all).

    Args:
        trace: a :class:`~routelens.trace.Trace`.
        cost: cluster (its topology fixes ``G`` and nodes) and token/expert sizes.
        settings: method and its options.
        layers: MoE layers to place (default: all of the trace's).
        workers: processes placing layers at once (None or 0: every core; 1: this process).

    Returns:
        A validated :class:`~routelens.plan.Plan`; ``plan.meta["metrics"]`` holds the metrics on
        the fit tokens (mean over layers and per layer). A counts-only run is placed from its
        recorded counts by a load-only method (:func:`~.methods.load_only_names`), with :func:`load_metrics` only.

    Raises:
        InputError: bad settings; TraceError: a co-activation method on a counts-only run.
    """
    settings.check()
    _require_routing(trace, (settings.method,))
    start, end, layers = _fit_setup(trace, cost, settings.redundant, fit, layers)
    count = _worker_count(trace, workers, layers, end - start, cost)
    deadline_wall = allowance = None
    if settings.time_budget_s is not None:
        deadline_wall = time.time() + settings.time_budget_s
        allowance = settings.time_budget_s * count / len(layers)
    started = time.perf_counter()
    jobs = [_LayerJob(trace=trace if count == 1 else shared_path(trace.path), layer=layer, fit=(start, end),
                      methods=(settings.method,), settings=settings, cost=cost, num_experts=int(trace.num_experts),
                      score=True, deadline_wall=deadline_wall, allowance_s=allowance) for layer in layers]
    results = run_jobs(place_layer, jobs, count, progress=progress, desc=f"place ({settings.method})")
    tables, per_layer, info = {}, {}, {}
    for layer, result in zip(layers, results):
        table, metrics, layer_info = result[settings.method]
        tables[layer], per_layer[layer] = table, metrics
        if layer_info:
            info[layer] = layer_info
    meta = _plan_meta(trace, cost, settings, (start, end), time.perf_counter() - started)
    meta["metrics"] = {"on": "recorded expert counts" if trace.counts_only else "fit tokens",
                       "mean": mean_metrics(per_layer), "layers": per_layer}
    if info:
        num_experts = int(trace.num_experts)
        meta["optimizer"] = {"objective": settings.objective, "seeds": list(settings.seeds or default_seeds(num_experts)),
                             "max_fit_tokens": settings.max_fit_tokens,
                             "kicks": settings.kicks if settings.kicks is not None else default_kicks(num_experts),
                             "time_budget_s": settings.time_budget_s, "layers": info}
    return Plan(gpu_experts=tables, num_experts=int(trace.num_experts), num_nodes=cost.topology.num_nodes,
                replica_policy=settings.replica_policy, method=settings.method, meta=meta)


def fit_baselines(trace, cost: CostModel, methods: list[str], settings: PlaceSettings,
                  fit: tuple[int, int] | None = None, layers: list[str] | None = None, progress: bool = False,
                  workers: int | None = 1) -> dict[str, Plan]:
    """Plans of several methods fitted on the same tokens, each layer's tokens read once for all of them.

    What ``plan-eval`` compares a plan with: like ``place(trace, cost, replace(settings,
    method=m))`` for each ``m`` of ``methods`` (same tables), without the metrics on the fit tokens.

    Returns:
        ``method → Plan``, in the order of ``methods``.
    """
    for method in methods:
        dataclasses.replace(settings, method=method).check()
    _require_routing(trace, methods)
    start, end, layers = _fit_setup(trace, cost, settings.redundant, fit, layers)
    count = _worker_count(trace, workers, layers, end - start, cost)
    started = time.perf_counter()
    jobs = [_LayerJob(trace=trace if count == 1 else shared_path(trace.path), layer=layer, fit=(start, end),
                      methods=tuple(methods), settings=settings, cost=cost, num_experts=int(trace.num_experts),
                      score=False, deadline_wall=None, allowance_s=None) for layer in layers]
    results = run_jobs(place_layer, jobs, count, progress=progress, desc="fit baselines")
    seconds = time.perf_counter() - started
    plans = {}
    for method in methods:
        chosen = dataclasses.replace(settings, method=method)
        plans[method] = Plan(gpu_experts={layer: result[method][0] for layer, result in zip(layers, results)},
                             num_experts=int(trace.num_experts), num_nodes=cost.topology.num_nodes,
                             replica_policy=settings.replica_policy, method=method,
                             meta=_plan_meta(trace, cost, chosen, (start, end), seconds))
    return plans


@dataclass
class _LayerJob:
    """One layer to place with one or more methods (sent to a worker process: the trace goes by path)."""

    trace: Any
    layer: str
    fit: tuple[int, int]
    methods: tuple[str, ...]
    settings: PlaceSettings
    cost: CostModel
    num_experts: int
    score: bool
    deadline_wall: float | None  # time.time() by which every layer must be done (the whole budget)
    allowance_s: float | None  # this layer's share of the budget


def place_layer(job: _LayerJob) -> dict[str, tuple[np.ndarray, dict[str, Any] | None, dict[str, Any]]]:
    """``method → (table [G, S], metrics on the fit tokens or None, method info)`` of one layer.

    The layer is placed by each method's registered ``build`` (:func:`~.methods.get_method`) from a
    :class:`~.methods.LayerFit`: the fit tokens' experts (read by range, checked like every read), or
    for a counts-only run the layer's recorded expert counts (scored by :func:`load_metrics` alone).
    """
    trace = as_trace(job.trace)
    if trace.counts_only:
        ids = None
        layer = LayerFit(job.num_experts, load=trace.expert_counts(job.layer))
    else:
        ids = trace.layer_range(job.layer, *job.fit).astype(np.int64)
        # the load is counted once for every load-based method of the job
        layer = LayerFit(job.num_experts, topk_ids=ids, load=load_counts(ids, job.num_experts))
    deadline = None
    if job.allowance_s is not None:
        left = min(job.allowance_s, job.deadline_wall - time.time())
        deadline = time.perf_counter() + max(0.0, left)
    out = {}
    for method in job.methods:
        settings = dataclasses.replace(job.settings, method=method)
        table, info = get_method(method).build(layer, job.cost, settings, deadline)
        metrics = None
        if job.score:
            metrics = (load_metrics(table, layer.expert_load()) if ids is None
                       else score_table(ids, table, job.cost, settings.replica_policy))
        out[method] = (table, metrics, info)
    return out


def _require_routing(trace, methods) -> None:
    """Refuse, in one line, a co-activation method on a counts-only run (before any layer is read)."""
    for method in methods:
        if trace.counts_only and method not in load_only_names():
            trace.require_tokens(f"place --method {method} (co-activation)")


def _worker_count(trace, workers: int | None, layers: list[str], fit_tokens: int, cost: CostModel) -> int:
    """Processes for the layer jobs; a counts-only run's jobs (a few numbers each) stay in this process
    unless ``workers`` asks for more."""
    if trace.counts_only:
        return resolve_workers(workers, len(layers), tokens_per_job=0)
    return resolve_workers(workers, len(layers), bytes_per_job=layer_job_bytes(fit_tokens, trace.top_k, cost),
                           tokens_per_job=fit_tokens)


def _fit_setup(trace, cost: CostModel, redundant: int, fit, layers) -> tuple[int, int, list[str]]:
    slots_per_gpu(int(trace.num_experts), cost.topology.num_gpus, redundant)  # fail before reading anything
    start, end = fit if fit is not None else (0, int(trace.num_tokens))
    return int(start), int(end), list(trace.layers) if layers is None else list(layers)


def layer_job_bytes(num_tokens: int, top_k: int, cost: CostModel) -> int:
    """Rough peak bytes of one layer job: int64 ids and destinations, masks and ``[T, G]`` presence tables."""
    return int(num_tokens) * (48 * int(top_k) + 2 * cost.topology.num_gpus) + (64 << 20)


def _plan_meta(trace, cost: CostModel, settings: PlaceSettings, fit: tuple[int, int], seconds: float) -> dict[str, Any]:
    config = dict(trace.config)
    return {
        "seed": settings.seed,
        "topology": cost.topology.to_json(),
        "cost_model": cost.to_json(),
        "trace": {"path": str(trace.path), "fingerprint": trace.fingerprint(), "num_tokens": int(trace.num_tokens),
                  "fit_tokens": [int(fit[0]), int(fit[1])]},
        "model": {"id": trace.model_id, "family": trace.family, "num_layers": config.get("num_layers"),
                  "hidden_size": config.get("hidden_size"), "num_experts": int(trace.num_experts),
                  "top_k": int(trace.top_k)},
        "seconds": round(seconds, 3),
    }


def mean_metrics(per_layer: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean over layers of each numeric metric (``layer_us`` also summed as ``total_us``)."""
    out = {key: float(np.mean([m[key] for m in per_layer.values()])) for key in METRIC_KEYS
           if per_layer and all(key in m for m in per_layer.values())}
    if per_layer and all("layer_us" in m for m in per_layer.values()):
        out["total_us"] = float(np.sum([m["layer_us"] for m in per_layer.values()]))
    return out
