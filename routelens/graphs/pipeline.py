"""Trace → :class:`Analysis`: stream every analysed layer shard by shard and finish its metrics.

Each layer is one job (:func:`routelens.parallel.run_jobs`): it streams its layer shard by shard
(expert ids and weights, the next layer's ids, logits when the trace has them, the tokens' ids),
counts, and finishes the layer's metrics, so ``workers`` processes analyse ``workers`` layers at
once. Memory is bounded by one shard per running job and ``O(E^2)`` tables per layer, whatever the
trace's length: no whole-trace array is ever built (the vocabulary is counted shard by shard too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, TraceError
from ..formats import ANALYSIS
from ..io import file_sha256
from ..layer_selection import select_layers
from ..parallel import resolve_workers, run_jobs, shared_path, thread_budget
from ..trace import Trace, as_trace
from . import layer as L
from .analysis import Analysis
from .tokens import TOKEN_CLASSES, class_lookup, load_token_texts, tokenizer_file


def parse_layers(spec: str | Sequence[int | str] | None, layers: Sequence[str] | int) -> list[int]:
    """Layer selection ``"0-11"``, ``"0,2,5-7"``, ``"-4--1"`` (from the end), router paths or None (all) → indices.

    The syntax is :mod:`routelens.layer_selection`'s, shared by every command's ``--layers``.

    Args:
        spec: the selection; layers: the trace's router paths (or their number).

    Raises:
        InputError: malformed, empty, or out of ``[0, num_layers)`` (one line naming the range).
    """
    return select_layers(spec, layers)


def layer_num_experts(trace: Trace, j: int) -> int:
    """``E`` of trace layer ``j`` (``num_experts_per_layer`` when the manifest has it)."""
    return trace.layer_experts[j]


def analysis_params(trace: Trace, layers: list[int], top_t: int | None, threshold: float, seed: int,
                    resolution: float, max_vocab: int, tokenizer_path: str | None) -> dict[str, Any]:
    """The parameters that, with the trace fingerprint, decide whether a stored analysis is current."""
    return {"layers": layers, "top_t": top_t, "threshold": float(threshold), "seed": int(seed),
            "resolution": float(resolution), "max_vocab": int(max_vocab),
            "tokenizer": tokenizer_key(trace.path, tokenizer_path)}


def tokenizer_key(trace_path, tokenizer_path: str | None) -> str | None:
    """What the token strings come from, for the cache: the named path, or the content hash of the
    run's own ``tokenizer.json`` (a run that gains one is analysed again), or None (ids only)."""
    if tokenizer_path is not None:
        return str(tokenizer_path)
    source = tokenizer_file(trace_path)
    return None if source is None else "sha256:" + file_sha256(source)[0]


def analyze_trace(
    trace: Trace,
    layers: str | Sequence[int] | None = None,
    *,
    top_t: int | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    resolution: float = 1.0,
    max_vocab: int = 4096,
    tokenizer_path: str | None = None,
    top_tokens: int = 10,
    min_token_count: int = 5,
    progress: bool = True,
    workers: int | None = 1,
) -> Analysis:
    """Analyse ``trace``'s routing, layer by layer, shard by shard.

    Args:
        trace: an opened :class:`~routelens.trace.Trace`.
        layers: selection (see :func:`parse_layers`); None = all.
        top_t: C2R's ``T`` for the specialization score (default ``k - 1``); threshold: Top-T share
            from which an expert counts as specialized.
        seed, resolution: Louvain parameters.
        max_vocab: the most frequent token ids tracked per expert for top tokens (rarer ids still
            count in totals and classes).
        tokenizer_path: tokenizer folder or ``tokenizer.json`` (default: the copy the capture wrote
            into the run, ``RUN/tokenizer.json``; the model folder the manifest names is never opened).
        top_tokens, min_token_count: tokens listed per expert, and the least times an expert must
            serve a token to list it.
        workers: processes analysing layers at once (None or 0: every core; 1: this process). The
            result does not depend on it.

    Returns:
        The :class:`Analysis` (not saved: see :func:`routelens.graphs.save_analysis`).

    Raises:
        TraceError / InputError: a counts-only run, unreadable shards, ids out of range, a bad layer selection.
    """
    started = time.perf_counter()
    trace.require_tokens("analyze (co-activation)")
    if trace.num_tokens == 0:
        raise TraceError(f"trace {trace.path} holds no tokens")
    chosen = parse_layers(layers, trace.layers)
    e_max, k = trace.num_experts, trace.top_k
    e_min = min(layer_num_experts(trace, j) for j in chosen)
    if top_t is not None and not 1 <= top_t <= max(e_min - 1, 1):
        raise InputError(f"--group-size {top_t} must lie in [1, {e_min - 1}] for layers of {e_min} experts")
    num_tokens = trace.num_tokens
    vocab, freq = vocabulary_counts(trace)
    keep = np.sort(np.argsort(-freq, kind="stable")[:max_vocab]) if max_vocab > 0 else np.zeros(0, np.int64)
    col_of_vocab = np.full(vocab.size, keep.size, dtype=np.int64)
    col_of_vocab[keep] = np.arange(keep.size)
    frequent_ids = vocab[keep]
    texts = load_token_texts(vocab, trace.path, tokenizer_path)
    cls_of_vocab = class_lookup(texts, vocab)
    # dense lookups by token id: a chunk's columns and classes are one gather, in any worker
    id_span = int(vocab[-1]) + 1 if vocab.size else 1
    col_of_id = np.full(id_span, keep.size, dtype=np.int32)
    col_of_id[vocab] = col_of_vocab
    cls_of_id = None
    if cls_of_vocab is not None:
        cls_of_id = np.zeros(id_span, dtype=np.int8)
        cls_of_id[vocab] = cls_of_vocab
    finish = dict(top_k=k, top_t=top_t, threshold=threshold, seed=seed, resolution=resolution,
                  vocab_ids=frequent_ids, top_tokens_limit=top_tokens, min_token_count=min_token_count,
                  token_texts=None if texts is None else {int(t): texts.get(int(t), "") for t in frequent_ids})
    count = resolve_workers(workers, len(chosen), tokens_per_job=num_tokens)
    jobs = []
    for j in chosen:
        nxt = j + 1 if j + 1 < len(trace.layers) else None
        jobs.append(_LayerJob(trace=trace if count == 1 else shared_path(trace.path), layer=j,
                              num_experts=layer_num_experts(trace, j), next_layer=nxt,
                              num_experts_next=None if nxt is None else layer_num_experts(trace, nxt),
                              half=num_tokens // 2, col_of_id=col_of_id, cls_of_id=cls_of_id,
                              num_token_cols=keep.size + 1, finish=finish))
    results = run_jobs(analyze_layer, jobs, count, progress=progress, desc="analysing layers")
    analysis = assemble(results, chosen, [trace.layers[j] for j in chosen], e_max, k, num_tokens,
                        has_classes=cls_of_vocab is not None)
    analysis.meta = {
        **ANALYSIS.header(),
        "trace": {"path": str(trace.path), "fingerprint": trace.fingerprint(), "model": trace.model_id,
                  "family": trace.family, "num_layers": len(trace.layers), "num_experts": e_max, "top_k": k,
                  "num_tokens": num_tokens, "has_logits": trace.has_logits},
        "params": analysis_params(trace, chosen, top_t, threshold, seed, resolution, max_vocab, tokenizer_path),
        "tokenizer": texts is not None,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return analysis


def assemble(results: list[L.LayerResult], layers: list[int], names: list[str], num_experts: int, top_k: int,
             num_tokens: int, has_classes: bool) -> Analysis:
    """Stack per-layer results (zero-padded to ``num_experts``) into an :class:`Analysis`."""
    n, e = len(results), num_experts

    def pad2(a: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros((e, e), dtype=dtype)
        out[: a.shape[0], : a.shape[1]] = a
        return out

    def pad1(a: np.ndarray, fill, dtype) -> np.ndarray:
        out = np.full(e, fill, dtype=dtype)
        out[: a.shape[0]] = a
        return out

    coact = np.stack([pad2(r.coactivation, np.int64) for r in results]) if n else np.zeros((0, e, e), np.int64)
    trans = np.stack([pad2(r.transitions if r.transitions is not None else np.zeros((0, 0)), np.int64) for r in results]) \
        if n else np.zeros((0, e, e), np.int64)
    scores = {}
    for name, fill, dtype in (("specialization", np.nan, np.float64), ("collaboration", np.nan, np.float64),
                              ("effective_collaborators", np.nan, np.float64), ("stability", np.nan, np.float64),
                              ("role", 0, np.int8), ("community", -1, np.int64)):
        scores[name] = np.stack([pad1(r.scores[name], fill, dtype) for r in results]) if n else np.zeros((0, e), dtype)
    summaries = []
    for j, name, r in zip(layers, names, results):
        summaries.append({"index": int(j), "layer": name, **r.summary,
                          "communities": [np.flatnonzero(r.scores["community"] == c).tolist()
                                          for c in range(r.summary["num_communities"])]})
    classes = None
    if has_classes and n:
        classes = np.stack([np.pad(r.class_counts, ((0, e - r.class_counts.shape[0]), (0, 0))) for r in results])
    token_info = None
    if n and results[0].top_tokens is not None:
        token_info = {"classes": list(TOKEN_CLASSES) if has_classes else None,
                      "layers": [{"index": int(j), "top_tokens": r.top_tokens} for j, r in zip(layers, results)]}
    return Analysis(
        layers=list(layers), layer_names=list(names), num_experts=e, top_k=top_k, num_tokens=num_tokens,
        load_tokens=np.ascontiguousarray(np.diagonal(coact, axis1=1, axis2=2)).astype(np.int64),
        load_weight=np.stack([pad1(r.load_weight, 0.0, np.float64) for r in results]) if n else np.zeros((0, e)),
        coactivation=coact, transitions=trans, scores=scores, layer_summaries=summaries,
        token_class_counts=classes, tokens=token_info,
    )


def vocabulary_counts(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """The distinct token ids of the trace (sorted) and how often each occurs, counted shard by shard.

    Returns:
        ``(ids [V], counts [V])`` as ``np.unique(trace.token_ids, return_counts=True)`` gives them.
    """
    counts = np.zeros(0, dtype=np.int64)
    for _, ids in trace.iter_token_chunks("token_ids"):
        if ids.size and ids.min() < 0:
            raise TraceError(f"trace {trace.path} holds negative token ids")
        chunk = np.bincount(ids, minlength=counts.size) if ids.size else np.zeros(counts.size, np.int64)
        if chunk.size > counts.size:
            counts = np.concatenate([counts, np.zeros(chunk.size - counts.size, np.int64)])
        counts += chunk
    vocab = np.flatnonzero(counts)
    return vocab.astype(np.int32), counts[vocab]


@dataclass
class _LayerJob:
    """One layer to analyse (sent to a worker process: the trace goes by path, lookups are small)."""

    trace: Any
    layer: int
    num_experts: int
    next_layer: int | None
    num_experts_next: int | None
    half: int
    col_of_id: np.ndarray  # [max id + 1] frequent-token column of each token id
    cls_of_id: np.ndarray | None  # [max id + 1] token class of each id, or None
    num_token_cols: int
    finish: dict[str, Any]  # finish_layer's keyword arguments


def analyze_layer(job: _LayerJob) -> L.LayerResult:
    """Count one layer shard by shard and finish its metrics (a job of :func:`analyze_trace`)."""
    trace = as_trace(job.trace)
    j, nxt = job.layer, job.next_layer
    acc = L.LayerAccumulator(job.num_experts, workers=min(thread_budget(), 8))
    # imported runs hold no routing weights (uniform 1/k placeholders): no weight mass then
    streams = [trace.iter_chunks(j, "topk_ids"),
               trace.iter_chunks(j, "topk_weights") if trace.has_weights else _none_pairs(),
               trace.iter_chunks(nxt, "topk_ids") if nxt is not None else _nones(),
               trace.iter_chunks(j, "router_logits") if trace.has_logits else _nones(),
               trace.iter_token_chunks("token_ids")]
    for (start, ids), (_, weights), nxt_chunk, logit_chunk, (_, token_ids) in zip(*streams):
        try:
            acc.add(
                ids, topk_weights=weights,
                next_ids=None if nxt_chunk is None else nxt_chunk[1],
                num_experts_next=job.num_experts_next,
                router_logits=None if logit_chunk is None else logit_chunk[1],
                token_classes=None if job.cls_of_id is None else job.cls_of_id[token_ids],
                token_cols=job.col_of_id[token_ids], num_token_cols=job.num_token_cols,
                start=start, half=job.half,
            )
        except InputError as exc:
            raise TraceError(f"layer {j} ({trace.layers[j]}): {exc}") from None
    return L.finish_layer(acc.total(), **job.finish)


def _nones():
    while True:
        yield None


def _none_pairs():
    while True:
        yield None, None
