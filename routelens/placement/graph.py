"""Expert load and co-activation counts for placement (uses ``routelens.graphs`` when present)."""

from __future__ import annotations

import numpy as np


def coactivation(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """``[E, E]`` int64 tokens that chose both ``i`` and ``j``; the diagonal holds each expert's load.

    The C2R "expert collaboration matrix" (Zhang et al., NAACL 2025, arXiv:2504.01337). Delegates
    to :func:`routelens.graphs.coactivation_counts`; the fallback below counts the same pairs.
    """
    try:
        from ..graphs import coactivation_counts
    except ImportError:
        try:
            from ..graphs.counts import coactivation_counts
        except ImportError:
            coactivation_counts = None
    if coactivation_counts is not None:
        return np.asarray(coactivation_counts(topk_ids, num_experts), dtype=np.int64)
    ids = np.asarray(topk_ids, dtype=np.int64)
    k = ids.shape[1]
    first, second = np.triu_indices(k, 1)
    a, b = ids[:, first].ravel(), ids[:, second].ravel()
    ok = (a >= 0) & (b >= 0)
    pairs = np.bincount(a[ok] * num_experts + b[ok], minlength=num_experts * num_experts).reshape(num_experts, num_experts)
    pairs = pairs + pairs.T
    np.fill_diagonal(pairs, np.bincount(ids[ids >= 0], minlength=num_experts))
    return pairs


def expert_load(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """``[E]`` int64 tokens routed to each expert (dropped slots ``-1`` ignored)."""
    ids = np.asarray(topk_ids, dtype=np.int64)
    return np.bincount(ids[ids >= 0], minlength=num_experts).astype(np.int64)
