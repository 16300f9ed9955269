"""Trace → :class:`Analysis`: stream every analysed layer shard by shard and finish its metrics.

Memory is bounded by one shard of one layer (plus its next layer's expert ids, and logits when the
trace has them) and ``O(E^2)`` tables per layer, whatever the trace's length; the only whole-trace
array is ``token_ids`` (4 bytes per token) for token specialization.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, TraceError
from ..formats import ANALYSIS
from ..layer_selection import select_layers
from ..trace import Trace
from . import layer as L
from .analysis import Analysis
from .tokens import TOKEN_CLASSES, class_lookup, load_token_texts


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
            "tokenizer": None if tokenizer_path is None else str(tokenizer_path)}


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
        tokenizer_path: tokenizer folder or ``tokenizer.json`` (default: the model folder named by
            the manifest, if it exists locally).
        top_tokens, min_token_count: tokens listed per expert, and the least times an expert must
            serve a token to list it.

    Returns:
        The :class:`Analysis` (not saved: see :func:`routelens.graphs.save_analysis`).

    Raises:
        TraceError / InputError: unreadable shards, ids out of range, a bad layer selection.
    """
    started = time.perf_counter()
    if trace.num_tokens == 0:
        raise TraceError(f"trace {trace.path} holds no tokens")
    chosen = parse_layers(layers, trace.layers)
    e_max, k = trace.num_experts, trace.top_k
    e_min = min(layer_num_experts(trace, j) for j in chosen)
    if top_t is not None and not 1 <= top_t <= max(e_min - 1, 1):
        raise InputError(f"--group-size {top_t} must lie in [1, {e_min - 1}] for layers of {e_min} experts")
    num_tokens = trace.num_tokens
    token_ids = trace.token_ids
    vocab, freq = np.unique(token_ids, return_counts=True)
    keep = np.sort(np.argsort(-freq, kind="stable")[:max_vocab]) if max_vocab > 0 else np.zeros(0, np.int64)
    col_of_vocab = np.full(vocab.size, keep.size, dtype=np.int64)
    col_of_vocab[keep] = np.arange(keep.size)
    frequent_ids = vocab[keep]
    texts = load_token_texts(vocab, trace.model_id, trace.path, tokenizer_path)
    cls_of_vocab = class_lookup(texts, vocab)
    half = num_tokens // 2

    finisher = LayerFinisher(top_k=k, top_t=top_t, threshold=threshold, seed=seed, resolution=resolution,
                             vocab_ids=frequent_ids, token_texts=texts, top_tokens_limit=top_tokens,
                             min_token_count=min_token_count)
    bar = _bar(progress, len(chosen))
    try:
        for j in chosen:
            e = layer_num_experts(trace, j)
            nxt = j + 1 if j + 1 < len(trace.layers) else None
            acc = L.LayerAccumulator(e)
            # imported runs hold no routing weights (uniform 1/k placeholders): no weight mass then
            streams = [trace.iter_chunks(j, "topk_ids"),
                       trace.iter_chunks(j, "topk_weights") if trace.has_weights else _none_pairs()]
            streams.append(trace.iter_chunks(nxt, "topk_ids") if nxt is not None else _nones())
            streams.append(trace.iter_chunks(j, "router_logits") if trace.has_logits else _nones())
            for (start, ids), (_, weights), nxt_chunk, logit_chunk in zip(*streams):
                where = np.searchsorted(vocab, token_ids[start:start + ids.shape[0]])
                try:
                    acc.add(
                        ids, topk_weights=weights,
                        next_ids=None if nxt_chunk is None else nxt_chunk[1],
                        num_experts_next=None if nxt is None else layer_num_experts(trace, nxt),
                        router_logits=None if logit_chunk is None else logit_chunk[1],
                        token_classes=None if cls_of_vocab is None else cls_of_vocab[where],
                        token_cols=col_of_vocab[where], num_token_cols=keep.size + 1,
                        start=start, half=half,
                    )
                except InputError as exc:
                    raise TraceError(f"layer {j} ({trace.layers[j]}): {exc}") from None
            finisher.submit(acc.total(), on_done=lambda _: bar.update(1))
        results = finisher.results()
    finally:
        finisher.close()
        bar.close()
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


class LayerFinisher:
    """Runs :func:`~routelens.graphs.layer.finish_layer` in one background thread, in order.

    Finishing a layer is mostly Python (Louvain in networkx); counting the next one is numpy, part
    of which (the ufuncs building pair codes, the copies) runs without the GIL, so the two overlap
    in part on a multi-core machine.
    """

    def __init__(self, **finish_kwargs: Any):
        self._kwargs = finish_kwargs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routelens-finish")
        self._futures: list[Future] = []

    def submit(self, totals: L.LayerCounts, on_done=None) -> None:
        future = self._pool.submit(L.finish_layer, totals, **self._kwargs)
        if on_done is not None:
            future.add_done_callback(on_done)
        self._futures.append(future)

    def results(self) -> list[L.LayerResult]:
        """The finished layers, in submission order (re-raises a layer's error)."""
        return [f.result() for f in self._futures]

    def close(self) -> None:
        for f in self._futures:
            f.cancel()
        self._pool.shutdown(wait=True)


def _nones():
    while True:
        yield None


def _none_pairs():
    while True:
        yield None, None


def _bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="analysing layers", unit="layer", disable=not enabled, leave=False)
