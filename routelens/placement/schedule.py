"""Placement over time: re-place the experts every N tokens, pay for the weights that move, compare with a static plan.

Serving engines re-place experts periodically: SGLang's and vLLM's EPLB rebalance every N steps on the
expert loads of a recent window. Whether that pays depends on how fast routing drifts along the text
and on what a re-placement costs: the weights of every expert that lands on a GPU that did not hold it
cross the links. :func:`replay_schedules` answers it on a trace, for any registered placement method
(:mod:`.methods`):

1. **The stream.** The trace's tokens in serving order (token order; only the tokens of one phase
   with ``phase``, :func:`stream_index`), cut into forward passes of ``B`` tokens (``batch_tokens``:
   the tokens one All-to-All of the expert-parallel group carries).
2. **The static plan** is fitted on the first ``W`` tokens (``fit_tokens``) and serves every later
   token. Scoring starts at token ``W``, for every schedule alike.
3. **A schedule** re-fits at tokens ``W, W + N, W + 2N, ...`` on the ``W`` tokens just before
   (a sliding window; its first plan *is* the static plan) and serves the next ``N`` tokens with it.
4. **Scoring.** Each forward pass is one All-to-All, scored by the cost model
   (:func:`~routelens.placement.cost.score_table`: busiest-GPU receive, dispatch + combine, busiest
   GPU's expert compute, layer time = dispatch + compute + combine) and averaged over the window's
   passes and the MoE layers.
5. **Moves** (:func:`weight_moves`, :func:`move_seconds`). A re-placement copies each expert to
   every GPU that holds it now and did not before (an *(expert, GPU) copy*, what SGLang's and vLLM's
   weight updaters send; a slot reshuffle inside a GPU and a dropped replica cost nothing on the
   links). One copy is :func:`expert_bytes`: ``3 × hidden × moe_intermediate × weight bytes`` for a
   SwiGLU expert (gate, up and down projections). Every layer's copies go at once; each GPU sends and
   receives over its intra- and inter-node links at once, so the moves take as long as the busiest
   (GPU, link class): ``latency + max(sent, received) × expert bytes / bandwidth``, the cost model's
   own link formula (:func:`~routelens.placement.cost.estimate_time`). The move time is charged in
   full (no overlap with serving) and **amortised** over the layer executions of the window the new
   plan serves: ``(N / B) passes × L layers``, so a window's layer time with moves is
   ``layer_us + move_s / (passes × L)``.

Re-fits are cached by the token they happen at, so the schedules of a sweep share their fits and
scores (the plan fitted at token ``W + 4N`` is the same for every ``N`` that re-fits there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ..errors import InputError
from ..parallel import resolve_workers, run_jobs
from .cost import CostModel, estimate_time, score_table, traffic_from_hits
from .methods import get_method
from .place import PlaceSettings, layer_job_bytes, layer_table
from .topology import Topology
from .traffic import expert_holders

WINDOW_METRICS = ("busiest_gpu_recv", "layer_us", "a2a_us", "compute_us", "gpus_per_token")
"""What each forward pass is scored by (keys of :func:`~routelens.placement.cost.layer_metrics`)."""

DEFAULT_EVERY_TOKENS = (4096, 16384, 65536)
DEFAULT_FIT_TOKENS = 16384
DEFAULT_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class ScheduleConfig:
    """A sweep of re-placement schedules.

    Attributes:
        methods: placement methods to re-fit with (registered in :mod:`.methods`).
        every_tokens: re-placement periods ``N`` to try (tokens; multiples of ``batch_tokens``). The
            static plan (never re-placed) is always compared.
        fit_tokens: ``W``, the window every plan is fitted on: the first ``W`` tokens for the static
            plan, the ``W`` tokens before each re-placement for a schedule.
        batch_tokens: ``B``, tokens of one forward pass over the expert-parallel group (one All-to-All).
        max_tokens: replay only the first this many tokens of the stream (None: all).
        weight_bytes: bytes per expert weight moved (2: bf16; 1: fp8 weights).
        phase: replay only the tokens of this phase (``trace.phases``: ``prefill``, ``decode``...; None: all).
        relabel: renumber each re-placement's GPUs to keep the most experts in place (:func:`relabel_gpus`);
            False moves what a from-scratch fit changes, as SGLang's and vLLM's EPLB do.
        place: how each plan is fitted (redundant slots, replica policy, seed, time budget *per
            re-fit*...); its ``method`` is replaced by each of ``methods``.
    """

    methods: tuple[str, ...] = ("routelens", "eplb")
    every_tokens: tuple[int, ...] = DEFAULT_EVERY_TOKENS
    fit_tokens: int = DEFAULT_FIT_TOKENS
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_tokens: int | None = None
    weight_bytes: float = 2.0
    phase: str | None = None
    relabel: bool = True
    place: PlaceSettings = field(default_factory=PlaceSettings)

    def check(self) -> None:
        """Raise :class:`~routelens.errors.InputError` for a setting no replay can use."""
        if not self.methods:
            raise InputError("give at least one placement method to re-place with")
        for name in self.methods:
            method = get_method(name)  # raises for an unknown name
            if not method.is_available():
                raise InputError(f"placement method '{name}' needs an optional package that is not installed")
            dataclasses.replace(self.place, method=name).check()
        if not self.every_tokens:
            raise InputError("give at least one re-placement period (--every)")
        for value, what in ((self.fit_tokens, "--fit-tokens"), (self.batch_tokens, "--batch-tokens")):
            if value < 1:
                raise InputError(f"{what} must be >= 1, got {value}")
        for every in self.every_tokens:
            if every < self.batch_tokens or every % self.batch_tokens:
                raise InputError(f"--every {every} is not a whole number of forward passes of --batch-tokens "
                                 f"{self.batch_tokens}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InputError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if not (self.weight_bytes > 0 and np.isfinite(self.weight_bytes)):
            raise InputError(f"--weight-bytes must be a positive number, got {self.weight_bytes}")


# ---------------------------------------------------------------------------- the stream
def stream_index(trace, phase: str | None = None, max_tokens: int | None = None) -> np.ndarray:
    """``[T']`` trace token indices in serving order: all tokens, or those of ``phase``, at most ``max_tokens``.

    Token order is serving order for a capture (the text as it was fed) and for an SGLang
    ``per_token`` import (forward passes in order); a vLLM request collection is in request order
    (each request's prompt, then its output), which is not the engine's step order.

    Raises:
        InputError: ``phase`` is given and the trace records no phases, or none of that name.
        TraceError: the trace holds expert counts only (:meth:`~routelens.trace.Trace.require_tokens`).
    """
    trace.require_tokens("schedule-eval (replays tokens in order)")
    if phase is None:
        index = np.arange(int(trace.num_tokens), dtype=np.int64)
    else:
        if not trace.phases:
            raise InputError(f"--phase {phase}: trace {trace.path} records no phases (only engine imports do)")
        if phase not in trace.phases:
            raise InputError(f"--phase {phase}: trace {trace.path} has phases {', '.join(trace.phases)}")
        index = np.flatnonzero(np.asarray(trace.phase) == trace.phases.index(phase)).astype(np.int64)
    return index if max_tokens is None else index[:max_tokens]


# ---------------------------------------------------------------------------- moves
@dataclass(frozen=True)
class WeightMoves:
    """The expert weights one re-placement of one layer copies between GPUs.

    Attributes:
        matrix: ``[G, G]`` int64, expert copies GPU ``a`` sends GPU ``b`` (diagonal 0).
        experts_changed: experts whose set of GPUs changed.
        copies: (expert, GPU) pairs held now and not before (= ``matrix.sum()``).
    """

    matrix: np.ndarray
    experts_changed: int
    copies: int


def weight_moves(old_table: np.ndarray, new_table: np.ndarray, num_experts: int,
                 topology: Topology) -> WeightMoves:
    """What re-placing one layer from ``old_table`` to ``new_table`` copies, and from where.

    Each (expert, GPU) pair of the new table that the old one lacks is one copy of the expert's
    weights to that GPU, sent by a GPU that held the expert before: one in the receiver's node when
    there is one (NVLink rather than the network), the one that has sent least so far on ties, then
    the lowest index. Slots reshuffled inside a GPU and replicas dropped move nothing.

    Args:
        old_table, new_table: ``[G, S]`` expert id in each GPU slot (one layer of two plans).
        num_experts: ``E``.
        topology: the cluster (which GPUs share a node).

    Returns:
        :class:`WeightMoves`. Without replicas ``copies == experts_changed`` (an expert that changes
        GPU lands on exactly one new one).

    Raises:
        InputError: the tables differ in shape.

    Example:
        >>> from routelens.placement.topology import Topology
        >>> moves = weight_moves(np.array([[0, 1], [2, 3]]), np.array([[1, 0], [3, 2]]), 4, Topology(1, 2))
        >>> moves.experts_changed, moves.copies, moves.matrix.tolist()
        (0, 0, [[0, 0], [0, 0]])
        >>> moves = weight_moves(np.array([[0, 1], [2, 3]]), np.array([[0, 2], [1, 3]]), 4, Topology(1, 2))
        >>> moves.experts_changed, moves.copies, moves.matrix.tolist()
        (2, 2, [[0, 1], [1, 0]])
    """
    old_table, new_table = np.asarray(old_table, np.int64), np.asarray(new_table, np.int64)
    if old_table.shape != new_table.shape:
        raise InputError(f"cannot move from a {old_table.shape} placement to a {new_table.shape} one")
    old, new = expert_holders(old_table, num_experts), expert_holders(new_table, num_experts)  # [E, G]
    num_gpus = old_table.shape[0]
    node = topology.node_of_gpu()
    matrix = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    sent = np.zeros(num_gpus, dtype=np.int64)
    for expert, receiver in zip(*np.nonzero(new & ~old)):
        holders = np.flatnonzero(old[expert])
        near = holders[node[holders] == node[receiver]]
        pool = near if near.size else holders
        sender = int(pool[np.argmin(sent[pool])])  # argmin: the first (lowest index) of the least-sent
        matrix[sender, receiver] += 1
        sent[sender] += 1
    return WeightMoves(matrix, int((old != new).any(axis=1).sum()), int(matrix.sum()))


def relabel_gpus(old_table: np.ndarray, new_table: np.ndarray, num_experts: int, topology: Topology) -> np.ndarray:
    """``new_table`` with its GPUs renumbered so that as many experts as possible stay where ``old_table`` has them.

    A placement's cost does not depend on which physical GPU gets which row, as long as the rows of a
    node stay in one node: tokens start evenly on every GPU and the links are the same between any
    two GPUs of a class. So a re-placement may hand node ``a``'s rows to node ``b`` and permute the
    rows inside a node freely. This picks, for every (new node, old node) pair, the one-to-one
    matching of their GPUs keeping the most (expert, GPU) pairs (Hungarian method,
    :func:`scipy.optimize.linear_sum_assignment`), then the matching of nodes that keeps the most in
    total. Serving engines re-run EPLB from scratch and move what changes; relabelling first is free.

    Args:
        old_table, new_table: ``[G, S]`` one layer of the plan in place and of the new plan.
        num_experts: ``E``; topology: the cluster.

    Returns:
        ``[G, S]`` int64: ``new_table``'s rows, reordered.

    Example:
        >>> from routelens.placement.topology import Topology
        >>> relabel_gpus(np.array([[0, 1], [2, 3]]), np.array([[2, 3], [1, 0]]), 4, Topology(1, 2)).tolist()
        [[1, 0], [2, 3]]
    """
    from scipy.optimize import linear_sum_assignment

    old_table, new_table = np.asarray(old_table, np.int64), np.asarray(new_table, np.int64)
    per_node, nodes = topology.gpus_per_node, topology.num_nodes
    # shared[g_new, g_old]: experts both GPUs hold
    shared = expert_holders(new_table, num_experts).T.astype(np.int64) @ expert_holders(old_table, num_experts).astype(np.int64)
    value = np.zeros((nodes, nodes))
    inner: dict[tuple[int, int], np.ndarray] = {}
    for a in range(nodes):
        for b in range(nodes):
            block = shared[a * per_node:(a + 1) * per_node, b * per_node:(b + 1) * per_node]
            rows, cols = linear_sum_assignment(block, maximize=True)
            inner[a, b] = cols[np.argsort(rows)]
            value[a, b] = block[rows, cols].sum()
    aligned = np.empty_like(new_table)
    for a, b in zip(*linear_sum_assignment(value, maximize=True)):
        for i, j in enumerate(inner[int(a), int(b)]):
            aligned[b * per_node + j] = new_table[a * per_node + i]
    return aligned


def expert_bytes(cost: CostModel, weight_bytes: float = 2.0) -> float:
    """Bytes of one expert's weights: ``3 × hidden × moe_intermediate × weight_bytes`` (a SwiGLU expert).

    The cost model's ``expert_flops_per_token`` is ``6 × hidden × moe_intermediate`` (three GEMMs,
    two FLOPs per weight), so the weights are ``expert_flops_per_token / 2`` — the same expert size
    (a ``--hidden-size`` what-if included) as the compute term.

    Raises:
        InputError: the cost model has no expert size (``expert_flops_per_token`` 0).
    """
    if not cost.expert_flops_per_token > 0:
        raise InputError("the cost model has no expert size (expert_flops_per_token is 0): cannot cost weight moves")
    return cost.expert_flops_per_token / 2.0 * float(weight_bytes)


def move_seconds(matrix: np.ndarray, topology: Topology, bytes_per_copy: float) -> float:
    """Seconds the copies of ``matrix`` (``[G, G]`` expert copies a → b) take on the cluster's links.

    The cost model's link formula (:func:`~routelens.placement.cost.estimate_time` with one expert as
    the "token"): every GPU sends and receives at once over its intra- and inter-node links, a
    (GPU, link class) is busy ``latency + max(sent, received) × bytes / bandwidth``, and the moves end
    with the busiest one. 0 when nothing moves.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    if not matrix.any():
        return 0.0
    traffic = traffic_from_hits(matrix, np.zeros(matrix.shape[0], np.int64), 1, topology)
    return float(estimate_time(traffic, CostModel(topology, token_bytes=float(bytes_per_copy)))["dispatch_s"])


# ---------------------------------------------------------------------------- the replay
class _Replay:
    """One trace's stream, with the fits and forward-pass scores every schedule of a sweep shares."""

    def __init__(self, trace, cost: CostModel, config: ScheduleConfig, progress: bool):
        self.trace, self.cost, self.config = trace, cost, config
        self.layers = list(trace.layers)
        self.index = stream_index(trace, config.phase, config.max_tokens)
        self.start = config.fit_tokens
        self.num_batches = (self.index.size - self.start) // config.batch_tokens if self.index.size > self.start else 0
        if self.num_batches < 1:
            raise InputError(f"{self.index.size:,} tokens to replay: need --fit-tokens {config.fit_tokens:,} to fit the "
                             f"first plan and at least one forward pass of --batch-tokens {config.batch_tokens:,} after")
        self.end = self.start + self.num_batches * config.batch_tokens
        # int16 as stored (a long stream of a large model stays small); int64 per fit and per pass
        self.ids = {layer: np.asarray(trace.topk_ids(layer))[self.index[:self.end]] for layer in self.layers}
        self.fits: dict[tuple[str, int], tuple[dict[str, np.ndarray], float]] = {}
        self.scores: dict[tuple[bytes, int], np.ndarray] = {}
        self.progress = progress

    def tokens(self, layer: str, start: int, end: int) -> np.ndarray:
        return self.ids[layer][start:end].astype(np.int64)

    def fit_points(self, method: str, everies: list[int]) -> list[int]:
        """Stream positions where ``method`` is fitted: the static plan's and every period's re-fits."""
        points = {self.start}
        for every in everies:
            points.update(range(self.start, self.end, every))
        return sorted(points)

    def prefetch(self, wanted: list[tuple[str, int]], workers: int | None) -> None:
        """Fit every ``(method, at)`` of ``wanted`` not cached yet, one job per layer, on ``workers`` processes.

        Every fit of a sweep is known before scoring starts, so the (fit, layer) jobs run at once
        (:func:`~routelens.parallel.run_jobs`); a job carries its window of stored expert ids (a
        view, pickled only when sent). With a time budget each layer job gets ``budget / L``.
        """
        wanted = [key for key in dict.fromkeys(wanted) if key not in self.fits]
        if not wanted:
            return
        settings = self.config.place
        allowance = None if settings.time_budget_s is None else settings.time_budget_s / len(self.layers)
        jobs = [_FitJob(dataclasses.replace(settings, method=method),
                        self.ids[layer][at - self.config.fit_tokens:at], int(self.trace.num_experts), self.cost,
                        allowance)
                for method, at in wanted for layer in self.layers]
        count = resolve_workers(workers, len(jobs), bytes_per_job=layer_job_bytes(self.config.fit_tokens,
                                                                                  int(self.trace.top_k), self.cost),
                                tokens_per_job=self.config.fit_tokens)
        results = run_jobs(fit_layer, jobs, count, progress=self.progress, desc="re-fit", unit="layer")
        for n, key in enumerate(wanted):
            chunk = results[n * len(self.layers):(n + 1) * len(self.layers)]
            self.fits[key] = ({layer: table for layer, (table, _) in zip(self.layers, chunk)},
                              float(sum(seconds for _, seconds in chunk)))

    def fit(self, method: str, at: int) -> dict[str, np.ndarray]:
        """``layer → [G, S]`` fitted by ``method`` on stream tokens ``[at - W, at)`` (cached)."""
        self.prefetch([(method, at)], workers=1)
        return self.fits[(method, at)][0]

    def score(self, tables: dict[str, np.ndarray], batch: int) -> np.ndarray:
        """``[L, K]`` :data:`WINDOW_METRICS` of forward pass ``batch`` under the plan ``tables`` (cached by content)."""
        key = (hashlib.sha1(b"".join(np.ascontiguousarray(tables[layer]).tobytes() for layer in self.layers)).digest(),
               batch)
        if key not in self.scores:
            first = self.start + batch * self.config.batch_tokens
            rows = []
            for layer in self.layers:
                metrics = score_table(self.tokens(layer, first, first + self.config.batch_tokens), tables[layer],
                                      self.cost, self.config.place.replica_policy)
                rows.append([metrics[k] for k in WINDOW_METRICS])
            self.scores[key] = np.asarray(rows, dtype=np.float64)
        return self.scores[key]

    def window_metrics(self, tables: dict[str, np.ndarray], batches: range) -> dict[str, float]:
        """Mean over the passes ``batches`` and the layers of each metric, under the plan ``tables``."""
        mean = np.mean([self.score(tables, j).mean(axis=0) for j in batches], axis=0)
        return {k: float(v) for k, v in zip(WINDOW_METRICS, mean)}

    def relabel(self, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``new`` with each layer's GPUs renumbered to keep the most experts of ``old`` in place (:func:`relabel_gpus`)."""
        return {layer: relabel_gpus(old[layer], new[layer], int(self.trace.num_experts), self.cost.topology)
                for layer in self.layers}

    def moves(self, old: dict[str, np.ndarray], new: dict[str, np.ndarray], bytes_per_copy: float) -> dict[str, Any]:
        """Every layer's copies from plan ``old`` to ``new``, moved at once: counts, bytes, seconds."""
        num_gpus = self.cost.topology.num_gpus
        total = np.zeros((num_gpus, num_gpus), dtype=np.int64)
        changed = 0
        for layer in self.layers:
            layer_moves = weight_moves(old[layer], new[layer], int(self.trace.num_experts), self.cost.topology)
            total += layer_moves.matrix
            changed += layer_moves.experts_changed
        copies = int(total.sum())
        return {"experts_changed": changed, "copies": copies, "bytes": copies * bytes_per_copy,
                "seconds": move_seconds(total, self.cost.topology, bytes_per_copy)}


@dataclass
class _FitJob:
    """One layer of one re-fit (sent to a worker process with its window of expert ids)."""

    settings: PlaceSettings
    topk_ids: np.ndarray  # [W, k] as stored (int16/int32): the fit window
    num_experts: int
    cost: CostModel
    allowance_s: float | None  # this layer's share of the per-re-fit time budget


def fit_layer(job: _FitJob) -> tuple[np.ndarray, float]:
    """``(table [G, S], seconds)`` of one layer fitted by ``job.settings.method`` on its window."""
    started = time.perf_counter()
    deadline = None if job.allowance_s is None else started + job.allowance_s
    table, _ = layer_table(job.settings.method, np.asarray(job.topk_ids, dtype=np.int64), job.num_experts, job.cost,
                           job.settings, deadline)
    return table, time.perf_counter() - started


NO_MOVES = {"experts_changed": 0, "copies": 0, "bytes": 0.0, "seconds": 0.0}


def _schedule(replay: _Replay, method: str, every: int | None, granularity: int, bytes_per_copy: float) -> dict[str, Any]:
    """One schedule: ``method`` re-fitted every ``every`` tokens (None: the static plan, in windows of ``granularity``)."""
    config = replay.config
    step = every or granularity
    static = replay.fit(method, replay.start)
    windows = []
    previous = None
    for start in range(replay.start, replay.end, step):
        end = min(start + step, replay.end)
        at = start if every else replay.start
        tables = replay.fit(method, at)
        moves = dict(NO_MOVES)
        if previous is not None and every:
            if config.relabel:
                tables = replay.relabel(previous, tables)
            moves = replay.moves(previous, tables, bytes_per_copy)
        previous = tables
        batches = range((start - replay.start) // config.batch_tokens, (end - replay.start) // config.batch_tokens)
        window = {"start": start, "end": end, "batches": len(batches), "fit": [at - config.fit_tokens, at],
                  **replay.window_metrics(tables, batches), "move": moves}
        window["move_us_per_layer"] = moves["seconds"] * 1e6 / (len(batches) * len(replay.layers))
        window["layer_us_with_moves"] = window["layer_us"] + window["move_us_per_layer"]
        window["static"] = replay.window_metrics(static, batches)
        window["gain_vs_static"] = 1.0 - window["layer_us_with_moves"] / window["static"]["layer_us"]
        windows.append(window)
    fits = {w["fit"][1] for w in windows}
    return {"method": method, "every_tokens": every, "windows": windows, **summarize(windows, len(replay.layers)),
            "fit_seconds": float(sum(replay.fits[(method, at)][1] for at in fits))}


def summarize(windows: list[dict[str, Any]], num_layers: int) -> dict[str, Any]:
    """A schedule's means over its forward passes (each pass weighs the same) and its moves in total.

    Returns:
        ``{"mean": metric → value (``layer_us_with_moves`` included), "static": the static plan's
        means on the same passes, "moves": totals, ``replacements`` (re-fits after the first plan) and
        ``moved`` (those that copied something),
        "gain_vs_static": 1 - layer time with moves / the static plan's layer time}``.
    """
    weights = np.array([w["batches"] for w in windows], dtype=np.float64)
    mean = {k: float(np.average([w[k] for w in windows], weights=weights)) for k in WINDOW_METRICS}
    static = {k: float(np.average([w["static"][k] for w in windows], weights=weights)) for k in WINDOW_METRICS}
    move_s = float(sum(w["move"]["seconds"] for w in windows))
    mean["move_us_per_layer"] = float(move_s * 1e6 / (weights.sum() * num_layers))
    mean["layer_us_with_moves"] = mean["layer_us"] + mean["move_us_per_layer"]
    refits = sum(1 for before, after in zip(windows, windows[1:]) if after["fit"] != before["fit"])
    moves = {"replacements": refits, "moved": sum(1 for w in windows if w["move"]["copies"]),
             **{k: sum(w["move"][k] for w in windows) for k in ("experts_changed", "copies", "bytes", "seconds")}}
    return {"mean": mean, "static": static, "moves": moves,
            "gain_vs_static": 1.0 - mean["layer_us_with_moves"] / static["layer_us"] if static["layer_us"] else 0.0,
            "break_even_tokens": break_even_tokens(windows, num_layers)}


def break_even_tokens(windows: list[dict[str, Any]], num_layers: int) -> float | None:
    """The re-placement period (tokens) at which a schedule's moves would cost what its re-fitted plans save.

    ``move seconds per re-placement / (L × layer time saved per execution) × B``, from the windows
    served by a re-fitted plan (all but the first): a longer period spreads the same moves over more
    passes. The saving measured at this period is kept, though older plans save less, so the true
    break-even lies a little above. None when the re-fitted plans save nothing (or never re-fit).

    Args:
        windows: a schedule's windows (:func:`replay_schedules`); num_layers: ``L``.
    """
    served = windows[1:]
    if not served:
        return None
    passes = sum(w["batches"] for w in served)
    saved_us = sum((w["static"]["layer_us"] - w["layer_us"]) * w["batches"] for w in served) / passes
    if saved_us <= 0:
        return None
    move_s = sum(w["move"]["seconds"] for w in served) / len(served)
    batch_tokens = (windows[0]["end"] - windows[0]["start"]) / windows[0]["batches"]
    return float(move_s * 1e6 / (num_layers * saved_us) * batch_tokens)


def best_schedules(schedules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, the schedule (a period, or ``None`` = static) with the lowest mean layer time, moves paid."""
    best: dict[str, dict[str, Any]] = {}
    for entry in schedules:
        value = entry["mean"]["layer_us_with_moves"]
        if entry["method"] not in best or value < best[entry["method"]]["layer_us_with_moves"]:
            best[entry["method"]] = {"every_tokens": entry["every_tokens"], "layer_us_with_moves": value,
                                     "layer_us": entry["mean"]["layer_us"],
                                     "busiest_gpu_recv": entry["mean"]["busiest_gpu_recv"],
                                     "gain_vs_static": entry["gain_vs_static"],
                                     "static_layer_us": entry["static"]["layer_us"]}
    return best


def replay_schedules(trace, cost: CostModel, config: ScheduleConfig, progress: bool = True,
                     workers: int | None = 1) -> dict[str, Any]:
    """Replay ``trace`` under every schedule of ``config`` and the static plan of each method.

    Args:
        trace: a :class:`~routelens.trace.Trace` with per-token routing.
        cost: the cluster (its topology fixes ``G``) and token/expert sizes; also sizes the moved weights.
        config: methods, periods, windows (:class:`ScheduleConfig`).
        workers: processes fitting plans at once, one (re-fit, layer) job each (None or 0: every
            core; 1: this process). The same result for any count: every fit is seeded.

    Returns:
        The body of a :data:`routelens.formats.SCHEDULE` file: the stream and cluster, and
        ``schedules``: per method the static plan (``every_tokens`` None, in windows of the smallest
        period) then one entry per period, each with its ``windows`` (``start``/``end`` stream
        positions, ``fit`` window, :data:`WINDOW_METRICS` under the schedule's plan and under the
        static plan, ``move`` counts/bytes/seconds, the amortised ``move_us_per_layer``) and
        :func:`summarize`'s means; ``best`` per method (:func:`best_schedules`).

    Raises:
        InputError: bad config, too few tokens; TraceError: a counts-only run; PlanError: bad slot counts.
    """
    config.check()
    started = time.perf_counter()
    bytes_per_copy = expert_bytes(cost, config.weight_bytes)
    replay = _Replay(trace, cost, config, progress)
    everies = sorted(set(config.every_tokens))
    replay.prefetch([(method, at) for method in config.methods for at in replay.fit_points(method, everies)], workers)
    schedules = []
    for method in config.methods:
        schedules.append(_schedule(replay, method, None, everies[0], bytes_per_copy))
        schedules += [_schedule(replay, method, every, everies[0], bytes_per_copy) for every in everies]
    topo = cost.topology
    place = config.place
    return {
        "trace": {"path": str(trace.path), "fingerprint": trace.fingerprint(), "num_tokens": int(trace.num_tokens),
                  "model": trace.model_id, "num_layers": len(replay.layers), "num_experts": int(trace.num_experts),
                  "top_k": int(trace.top_k)},
        "phase": config.phase,
        "stream_tokens": int(replay.index.size),
        "scored_tokens": [int(replay.start), int(replay.end)],
        "num_gpus": topo.num_gpus, "num_nodes": topo.num_nodes, "gpus_per_node": topo.gpus_per_node,
        "redundant": int(place.redundant), "replica_policy": place.replica_policy,
        "topology": topo.to_json(), "cost_model": cost.to_json(),
        "fit_tokens": int(config.fit_tokens), "batch_tokens": int(config.batch_tokens),
        "weight_bytes": float(config.weight_bytes), "expert_bytes": float(bytes_per_copy),
        "methods": list(config.methods), "every_tokens": everies, "relabel": bool(config.relabel),
        "settings": {"seed": place.seed, "time_budget_s": place.time_budget_s, "max_fit_tokens": place.max_fit_tokens,
                     "starts": list(place.seeds) if place.seeds else None, "num_groups": place.num_groups,
                     "objective": place.objective, "kicks": place.kicks},
        "schedules": schedules,
        "best": best_schedules(schedules),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---------------------------------------------------------------------------- report
def format_schedules(result: dict[str, Any]) -> str:
    """The text report of :func:`replay_schedules`: one row per method and period, then the best period per method."""
    topo = result["topology"]
    start, end = result["scored_tokens"]
    lines = [
        f"stream  {result['stream_tokens']:,} tokens" + (f" of phase {result['phase']}" if result["phase"] else "")
        + f" of {result['trace']['path']}; scored [{start:,}, {end:,}) in forward passes of {result['batch_tokens']:,}",
        f"cluster {topo['num_nodes']}×{topo['gpus_per_node']} GPUs, {topo['intra_link']} {topo['intra_gbps']:g} GB/s "
        f"inside nodes, {topo['inter_link']} {topo['inter_gbps']:g} GB/s between; {result['redundant']} redundant slots",
        f"moves   {result['expert_bytes'] / 1e6:.2f} MB per expert copy; every plan fitted on the "
        f"{result['fit_tokens']:,} tokens before it; move time charged in full, spread over the window's layer executions",
        "",
    ]
    header = ("method", "every", "layer µs", "+moves", "= µs", "max recv", "static µs", "vs static", "re-placed",
              "copies", "GB moved", "move ms", "pays from")
    rows = [header]
    for entry in result["schedules"]:
        mean, moves = entry["mean"], entry["moves"]
        every = entry["every_tokens"]
        rows.append((entry["method"], "static" if every is None else f"{every:,}", f"{mean['layer_us']:.1f}",
                     f"{mean['move_us_per_layer']:.1f}", f"{mean['layer_us_with_moves']:.1f}",
                     f"{mean['busiest_gpu_recv']:.3f}", f"{entry['static']['layer_us']:.1f}",
                     f"{-100 * entry['gain_vs_static']:+.1f}%", f"{moves['moved']}/{moves['replacements']}",
                     f"{moves['copies']:,}", f"{moves['bytes'] / 1e9:.2f}", f"{moves['seconds'] * 1e3:.2f}",
                     "" if every is None else "never" if entry["break_even_tokens"] is None
                     else f"{entry['break_even_tokens']:,.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    table = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    lines += table + ["(pays from: the period, in tokens, from which that schedule's moves would cost less than its "
                      "re-fitted plans save)", ""]
    best = result["best"]
    for method, choice in best.items():
        every = "never re-place (static)" if choice["every_tokens"] is None else f"every {choice['every_tokens']:,} tokens"
        lines.append(f"best    {method}: {every}, {choice['layer_us_with_moves']:.1f} µs/layer with moves "
                     f"({-100 * choice['gain_vs_static']:+.1f}% vs static)")
    others = [m for m in best if m != "routelens"]
    if "routelens" in best and others:
        mine = best["routelens"]["layer_us_with_moves"]
        lines.append("vs      routelens' best schedule: " + ", ".join(
            f"{100 * (mine / best[m]['layer_us_with_moves'] - 1):+.1f}% layer time vs {m}'s" for m in others))
    return "\n".join(lines)
