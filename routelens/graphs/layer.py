"""One MoE layer, streamed: additive counts per chunk of tokens, then the layer's metrics.

:func:`count_chunk` turns one chunk (a shard) into :class:`LayerCounts`; counts of chunks add up
(``total += count_chunk(...)``), so a trace of any length is analysed with memory bounded by one
chunk plus ``O(E^2)`` tables. :func:`finish_layer` turns the totals into a :class:`LayerResult`
(scores, communities, token specialization, the summary row).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from . import communities, counts as K, metrics, tokens


@dataclass
class LayerCounts:
    """The sufficient statistics of one layer, as raw histograms (all additive over tokens).

    Histograms are flat and include a sentinel expert ``E`` for dropped slots (``B = E + 1``);
    read them through the properties, which drop the sentinel.

    Attributes:
        num_experts: ``E`` of the layer; num_tokens: tokens counted.
        pair_hist: ``[2, B * B]`` int64 ordered slot pairs of the first and second half of the
            tokens (the halves give Top-T stability).
        load_hist: ``[B]`` int64 slots of chunks counted without token columns (with them, the
            load is the token table's row sums); weight_hist: ``[B]`` float64 routing-weight mass.
        transition_hist: ``[B * B']`` int64 to the next layer (``B' = E' + 1``), or None.
        class_hist: ``[B * C]`` int64 per token class, or None; token_hist: ``[B * V']`` per
            frequent-token column, or None.
        entropy_sum, entropy_tokens: router entropy (nats) summed over the tokens that had logits.
    """

    num_experts: int
    num_tokens: int = 0
    pair_hist: np.ndarray = None  # type: ignore[assignment]
    load_hist: np.ndarray = None  # type: ignore[assignment]
    weight_hist: np.ndarray = None  # type: ignore[assignment]
    transition_hist: np.ndarray | None = None
    num_experts_next: int | None = None
    class_hist: np.ndarray | None = None
    token_hist: np.ndarray | None = None
    num_token_cols: int = 0
    entropy_sum: float = 0.0
    entropy_tokens: int = 0

    def __post_init__(self) -> None:
        b = self.num_experts + 1
        if self.pair_hist is None:
            self.pair_hist = np.zeros((2, b * b), dtype=np.int64)
        if self.load_hist is None:
            self.load_hist = np.zeros(b, dtype=np.int64)
        if self.weight_hist is None:
            self.weight_hist = np.zeros(b, dtype=np.float64)

    def __iadd__(self, other: "LayerCounts") -> "LayerCounts":
        if other.num_experts != self.num_experts:
            raise InputError(f"cannot add counts of {other.num_experts} experts to counts of {self.num_experts}")
        self.num_tokens += other.num_tokens
        self.pair_hist += other.pair_hist
        self.load_hist += other.load_hist
        self.weight_hist += other.weight_hist
        self.entropy_sum += other.entropy_sum
        self.entropy_tokens += other.entropy_tokens
        for name in ("transition_hist", "class_hist", "token_hist"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                if mine is None:
                    setattr(self, name, theirs.copy())
                else:
                    mine += theirs
        self.num_experts_next = self.num_experts_next or other.num_experts_next
        self.num_token_cols = self.num_token_cols or other.num_token_cols
        return self

    def table(self, name: str, width: int) -> np.ndarray:
        """Lazily allocated optional histogram ``name`` of ``(E + 1) * width`` entries."""
        hist = getattr(self, name)
        if hist is None:
            hist = np.zeros((self.num_experts + 1) * width, dtype=np.int64)
            setattr(self, name, hist)
        return hist

    # ------------------------------------------------------------------ read-outs
    @property
    def coactivation_halves(self) -> np.ndarray:
        """``[2, E, E]`` int64 co-activation (zero diagonal) of the first and second half of the tokens."""
        return np.stack([K.fold_pairs(h, self.num_experts) for h in self.pair_hist])

    @property
    def coactivation(self) -> np.ndarray:
        """``[E, E]`` int64 co-activation counts with the load on the diagonal."""
        total = K.fold_pairs(self.pair_hist.sum(axis=0), self.num_experts)
        total[np.diag_indices(self.num_experts)] = self.load
        return total

    @property
    def load(self) -> np.ndarray:
        """``[E]`` int64 tokens per expert (chunks counted with token columns keep it in the token table)."""
        load = self.load_hist[: self.num_experts].copy()
        if self.token_hist is not None:
            load += self.token_counts.sum(axis=1)
        return load

    @property
    def load_weight(self) -> np.ndarray:
        """``[E]`` float64 routing-weight mass per expert."""
        return self.weight_hist[: self.num_experts]

    @property
    def transitions(self) -> np.ndarray | None:
        """``[E, E']`` int64 transitions to the next layer, or None."""
        if self.transition_hist is None:
            return None
        b_next = self.transition_hist.size // (self.num_experts + 1)
        return self.transition_hist.reshape(self.num_experts + 1, b_next)[: self.num_experts, : b_next - 1]

    @property
    def class_counts(self) -> np.ndarray | None:
        """``[E, C]`` int64 slots per token class, or None."""
        return None if self.class_hist is None else self.class_hist.reshape(self.num_experts + 1, -1)[: self.num_experts]

    @property
    def token_counts(self) -> np.ndarray | None:
        """``[E, V']`` int64 slots per frequent-token column (last column: rarer tokens), or None."""
        return None if self.token_hist is None else self.token_hist.reshape(self.num_experts + 1, -1)[: self.num_experts]


def add_chunk(
    into: LayerCounts,
    topk_ids: np.ndarray,
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
) -> LayerCounts:
    """Add one chunk of a layer's tokens to ``into`` (in place, one thread; returns ``into``).

    Args:
        topk_ids: ``[n, k]`` experts of the chunk's tokens; ``topk_weights`` ``[n, k]`` their weights.
        next_ids: ``[n, k']`` the same tokens' experts at the next layer (for transitions).
        router_logits: ``[n, E]`` (router entropy), optional.
        token_classes: ``[n]`` class index of each token (:data:`tokens.TOKEN_CLASSES`), optional.
        token_cols: ``[n]`` frequent-token column of each token in ``[0, num_token_cols)``, optional.
        start: index of the chunk's first token in the whole layer; half: index of the first token
            of the second half (default: all tokens in the first half).
    """
    ids = np.asarray(topk_ids)
    n, e = ids.shape[0], into.num_experts
    base = e + 1
    e_next = e if num_experts_next is None else int(num_experts_next)
    if next_ids is not None:
        into.num_experts_next = e_next
    if token_cols is not None:
        into.num_token_cols = num_token_cols
    split = n if half is None else int(np.clip(half - start, 0, n))
    for h, (seg_lo, seg_hi) in enumerate(((0, split), (split, n))):
        for lo in range(seg_lo, seg_hi, K.SUB_CHUNK_TOKENS):
            hi = min(seg_hi, lo + K.SUB_CHUNK_TOKENS)
            slots = K.slot_major(ids[lo:hi], e)
            K.add_pairs(into.pair_hist[h], slots, base)
            if token_cols is None:  # else the token table's row sums are the load
                K.add_load(into.load_hist, slots)
            if topk_weights is not None:
                K.add_mass(into.weight_hist, slots, np.asarray(topk_weights)[lo:hi])
            if next_ids is not None:
                nxt = K.slot_major(np.asarray(next_ids)[lo:hi], e_next, "next_ids", name="next_slots")
                K.add_transitions(into.table("transition_hist", e_next + 1), slots, nxt, e_next + 1)
            if token_classes is not None:
                K.add_columns(into.table("class_hist", len(tokens.TOKEN_CLASSES)), slots,
                              np.asarray(token_classes)[lo:hi], len(tokens.TOKEN_CLASSES))
            if token_cols is not None:
                K.add_columns(into.table("token_hist", num_token_cols), slots, np.asarray(token_cols)[lo:hi],
                              num_token_cols)
    if router_logits is not None:
        total, count = K.router_entropy_sum(np.asarray(router_logits)[:, :e])
        into.entropy_sum += total
        into.entropy_tokens += count
    into.num_tokens += n
    return into


class LayerAccumulator:
    """Streams one layer's chunks into per-thread :class:`LayerCounts` (no allocation per chunk).

    Large chunks are split into ``workers`` contiguous pieces counted in threads; :meth:`total` sums
    the parts, so the result is the same for any number of workers. numpy releases the GIL in the
    code-building ufuncs and copies but ``np.add.at``'s scatter holds it, so the threads overlap
    only part of the work.

    Example:
        >>> acc = LayerAccumulator(8, workers=1)
        >>> acc.add(np.array([[0, 1], [0, 2]])).total().coactivation[0].tolist()
        [2, 1, 1, 0, 0, 0, 0, 0]
    """

    def __init__(self, num_experts: int, workers: int | None = None):
        self.num_experts = int(num_experts)
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.parts = [LayerCounts(self.num_experts) for _ in range(self.workers)]

    def add(self, topk_ids: np.ndarray, *, start: int = 0, **chunk: Any) -> "LayerAccumulator":
        """Count one chunk (keyword arguments as :func:`add_chunk`)."""
        n = np.asarray(topk_ids).shape[0]
        pieces = min(self.workers, n // MIN_PIECE_TOKENS)
        if pieces <= 1:
            add_chunk(self.parts[0], topk_ids, start=start, **chunk)
            return self
        bounds = np.linspace(0, n, pieces + 1).astype(int)
        per_token = ("topk_weights", "next_ids", "router_logits", "token_classes", "token_cols")

        def piece(i: int) -> None:
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            sliced = {key: (value[lo:hi] if key in per_token and value is not None else value) for key, value in chunk.items()}
            add_chunk(self.parts[i], topk_ids[lo:hi], start=start + lo, **sliced)

        for future in [_pool().submit(piece, i) for i in range(pieces)]:
            future.result()
        return self

    def total(self) -> LayerCounts:
        """The layer's counts so far (a new object; the accumulator can keep going)."""
        total = LayerCounts(self.num_experts)
        for part in self.parts:
            total += part
        return total


def count_chunk(topk_ids: np.ndarray, num_experts: int, *, workers: int | None = None, **chunk: Any) -> LayerCounts:
    """The :class:`LayerCounts` of one chunk (a pure function; keyword arguments as :func:`add_chunk`).

    Counts of chunks add up (``total += count_chunk(...)``); for streaming many chunks,
    :class:`LayerAccumulator` avoids allocating tables per chunk.
    """
    return LayerAccumulator(num_experts, workers).add(topk_ids, **chunk).total()


MIN_PIECE_TOKENS = 16384
_POOL = None


def default_workers() -> int:
    """Counting threads: ``ROUTELENS_NUM_THREADS`` if set, else the CPU count (at most 8)."""
    env = os.environ.get("ROUTELENS_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return min(int(env), 8)
    return max(1, min(os.cpu_count() or 1, 8))


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="routelens-count")
    return _POOL


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
        raise InputError(f"--group-size {t} must lie in [1, {e - 1}] for a layer of {e} experts")
    coact = totals.coactivation
    halves = tuple(totals.coactivation_halves)  # zero diagonals; both needed for Top-T stability
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
