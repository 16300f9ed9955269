"""One MoE layer, streamed: additive counts per chunk of tokens, then the layer's metrics.

:func:`count_chunk` turns one chunk (a shard) into :class:`LayerCounts`; counts of chunks add up
(``total += count_chunk(...)``), so a trace of any length is analysed with memory bounded by one
chunk plus ``O(E^2)`` tables. :func:`finish_layer` turns the totals into a :class:`LayerResult`
(scores, communities, token specialization, the summary row).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from . import communities, counts as K, metrics, tokens


@dataclass
class LayerCounts:
    """The sufficient statistics of one layer (all additive over tokens).

    Attributes:
        num_experts: ``E`` of the layer.
        num_tokens: tokens counted.
        coactivation_halves: ``[2, E, E]`` int64 co-activation (zero diagonal) of the first and
            second half of the tokens (their sum is the layer's; the halves give Top-T stability).
        load: ``[E]`` int64 tokens per expert; load_weight: ``[E]`` float64 routing-weight mass.
        transitions: ``[E, E_next]`` int64 to the next layer, or None (last layer).
        entropy_sum, entropy_tokens: router entropy (nats) summed over the tokens that had logits.
        class_counts: ``[E, C]`` int64 slots per token class, or None (no tokenizer).
        token_counts: ``[E, V + 1]`` int64 slots per frequent token column (last = rare), or None.
    """

    num_experts: int
    num_tokens: int = 0
    coactivation_halves: np.ndarray = None  # type: ignore[assignment]
    load: np.ndarray = None  # type: ignore[assignment]
    load_weight: np.ndarray = None  # type: ignore[assignment]
    transitions: np.ndarray | None = None
    entropy_sum: float = 0.0
    entropy_tokens: int = 0
    class_counts: np.ndarray | None = None
    token_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        e = self.num_experts
        if self.coactivation_halves is None:
            self.coactivation_halves = np.zeros((2, e, e), dtype=np.int64)
        if self.load is None:
            self.load = np.zeros(e, dtype=np.int64)
        if self.load_weight is None:
            self.load_weight = np.zeros(e, dtype=np.float64)

    def __iadd__(self, other: "LayerCounts") -> "LayerCounts":
        if other.num_experts != self.num_experts:
            raise InputError(f"cannot add counts of {other.num_experts} experts to counts of {self.num_experts}")
        self.num_tokens += other.num_tokens
        self.coactivation_halves += other.coactivation_halves
        self.load += other.load
        self.load_weight += other.load_weight
        self.entropy_sum += other.entropy_sum
        self.entropy_tokens += other.entropy_tokens
        for name in ("transitions", "class_counts", "token_counts"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs.copy() if mine is None else mine + theirs)
        return self

    @property
    def coactivation(self) -> np.ndarray:
        """``[E, E]`` int64 co-activation counts with the load on the diagonal."""
        total = self.coactivation_halves.sum(axis=0)
        total[np.diag_indices(self.num_experts)] = self.load
        return total


def count_chunk(
    topk_ids: np.ndarray,
    num_experts: int,
    *,
    topk_weights: np.ndarray | None = None,
    next_ids: np.ndarray | None = None,
    num_experts_next: int | None = None,
    router_logits: np.ndarray | None = None,
    token_classes: np.ndarray | None = None,
    token_cols: np.ndarray | None = None,
    num_token_cols: int = 0,
    start: int = 0,
    half: int | None = None,
    workers: int | None = None,
) -> LayerCounts:
    """Count one chunk of a layer's tokens (split over ``workers`` threads when it is large).

    Args:
        topk_ids: ``[n, k]`` experts of the chunk's tokens; ``topk_weights`` ``[n, k]`` their weights.
        next_ids: ``[n, k]`` the same tokens' experts at the next layer (for transitions).
        router_logits: ``[n, E]`` (router entropy), optional.
        token_classes: ``[n]`` class index of each token (:data:`tokens.TOKEN_CLASSES`), optional.
        token_cols: ``[n]`` frequent-token column of each token in ``[0, num_token_cols)``, optional.
        start: index of the chunk's first token in the whole layer; half: index of the first token
            of the second half (default: all tokens in the first half).
        workers: threads (default :func:`default_workers`); the histograms release the GIL, and
            the result is the same for any number of threads.
    """
    n = np.asarray(topk_ids).shape[0]
    workers = default_workers() if workers is None else max(1, int(workers))
    pieces = min(workers, n // MIN_PIECE_TOKENS)
    arrays = dict(topk_weights=topk_weights, next_ids=next_ids, router_logits=router_logits,
                  token_classes=token_classes, token_cols=token_cols)
    scalars = dict(num_experts_next=num_experts_next, num_token_cols=num_token_cols)
    if pieces <= 1:
        return _count_piece(topk_ids, num_experts, start=start, half=half, **arrays, **scalars)
    bounds = np.linspace(0, n, pieces + 1).astype(int)

    def piece(lo: int, hi: int) -> LayerCounts:
        sliced = {key: None if value is None else value[lo:hi] for key, value in arrays.items()}
        return _count_piece(topk_ids[lo:hi], num_experts, start=start + lo, half=half, **sliced, **scalars)

    futures = [_pool().submit(piece, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    total = futures[0].result()
    for future in futures[1:]:
        total += future.result()
    return total


MIN_PIECE_TOKENS = 16384
_POOL = None


def default_workers() -> int:
    """Counting threads: ``ROUTELENS_NUM_THREADS`` if set, else the CPU count (at most 8)."""
    env = os.environ.get("ROUTELENS_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(os.cpu_count() or 1, 8))


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="routelens-count")
    return _POOL


def _count_piece(topk_ids, num_experts, *, topk_weights, next_ids, num_experts_next, router_logits, token_classes,
                 token_cols, num_token_cols, start, half) -> LayerCounts:
    ids = np.asarray(topk_ids)
    n = ids.shape[0]
    out = LayerCounts(num_experts, num_tokens=n)
    split = n if half is None else int(np.clip(half - start, 0, n))
    for h, (lo, hi) in enumerate(((0, split), (split, n))):
        if hi > lo:
            pairs, load = K.coactivation_and_load(ids[lo:hi], num_experts)
            out.coactivation_halves[h] = pairs
            out.load += load
    if topk_weights is not None:
        out.load_weight = K.load_mass(ids, topk_weights, num_experts)
    if next_ids is not None:
        out.transitions = K.transition_counts(ids, next_ids, num_experts, num_experts_next)
    if router_logits is not None:
        out.entropy_sum, out.entropy_tokens = K.router_entropy_sum(np.asarray(router_logits)[:, :num_experts])
    if token_classes is not None:
        out.class_counts = K.expert_token_counts(ids, token_classes, num_experts, len(tokens.TOKEN_CLASSES))
    if token_cols is not None:
        out.token_counts = K.expert_token_counts(ids, token_cols, num_experts, num_token_cols)
    return out


@dataclass
class LayerResult:
    """Everything the analysis keeps of one layer (see :class:`routelens.graphs.Analysis`)."""

    coactivation: np.ndarray          # [E, E] int64, load on the diagonal
    load_weight: np.ndarray           # [E] float64
    transitions: np.ndarray | None    # [E, E_next] int64
    scores: dict[str, np.ndarray]     # specialization, collaboration, effective_collaborators, stability, role, community
    summary: dict[str, Any]           # the layer's row of analysis.json
    class_counts: np.ndarray | None = None
    top_tokens: list | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def finish_layer(
    totals: LayerCounts,
    top_k: int,
    *,
    top_t: int | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    resolution: float = 1.0,
    vocab_ids: np.ndarray | None = None,
    token_texts: dict[int, str] | None = None,
    top_tokens_limit: int = 10,
    min_token_count: int = 5,
) -> LayerResult:
    """Metrics of one layer from its totals: scores, roles, communities, load, entropy, tokens."""
    e = totals.num_experts
    t = metrics.default_top_t(e, top_k) if top_t is None else int(top_t)
    if not 1 <= t <= max(e - 1, 1):
        raise InputError(f"--top-t {t} must lie in [1, {e - 1}] for a layer of {e} experts")
    coact = totals.coactivation
    halves = tuple(h.copy() for h in totals.coactivation_halves)
    for h in halves:
        h[np.diag_indices(e)] = 0
    roles = metrics.expert_roles(coact, t, threshold, counts_halves=halves if all(h.any() for h in halves) else None)
    labels, modularity = communities.detect_communities(coact, seed=seed, resolution=resolution)
    scores = {**roles, "community": labels}
    load = totals.load
    row: dict[str, Any] = {
        "tokens": int(totals.num_tokens),
        "num_experts": e,
        "top_t": t,
        "specialization_chance": t / max(e - 1, 1),
        **{f"load_{k}": v for k, v in metrics.load_imbalance(load).items()},
        "weight_max_over_mean": metrics.load_imbalance(totals.load_weight)["max_over_mean"],
        "busiest_expert": int(load.argmax()) if load.any() else None,
        **metrics.summarize_roles(roles),
        "num_communities": int(labels.max() + 1) if (labels >= 0).any() else 0,
        "modularity": modularity,
        "router_entropy": totals.entropy_sum / totals.entropy_tokens if totals.entropy_tokens else None,
        "router_entropy_normalized": (totals.entropy_sum / totals.entropy_tokens / np.log(e))
        if totals.entropy_tokens and e > 1 else None,
        "next_layer": metrics.transition_predictability(totals.transitions, top_k) if totals.transitions is not None else None,
    }
    result = LayerResult(coactivation=coact, load_weight=totals.load_weight.copy(), transitions=totals.transitions,
                         scores=scores, summary=row, class_counts=totals.class_counts)
    if totals.token_counts is not None and vocab_ids is not None:
        table = totals.token_counts
        result.top_tokens = tokens.top_tokens(table, table.sum(axis=0), vocab_ids, token_texts,
                                              limit=top_tokens_limit, min_count=min_token_count)
    return result
