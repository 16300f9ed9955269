"""Synthetic routing with known structure, for tests and benchmarks (never for results).

Real traces come from ``routelens capture``; these stand in where a test needs a known answer or a
benchmark needs a size no bundled model produces (1M tokens × 48 layers × 128 experts).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def synthetic_topk_ids(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    num_groups: int = 8,
    in_group: float = 0.8,
    skew: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Draw ``[T, k]`` distinct expert ids per token with planted co-activation groups.

    Experts are split into ``num_groups`` contiguous-by-permutation groups; each token picks a group
    and draws each of its ``k`` experts from it with probability ``in_group`` (else from all experts).
    ``skew`` > 0 makes expert popularity Zipf-like, so load is imbalanced as in trained models.

    Returns:
        ``[T, k]`` int16 expert ids, distinct within each row.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_experts)
    groups = np.array_split(perm, num_groups)
    popularity = 1.0 / np.arange(1, num_experts + 1) ** skew
    popularity = popularity[rng.permutation(num_experts)]
    # Gumbel-top-k over log-scores gives k distinct experts per token without a Python loop.
    token_group = rng.integers(0, num_groups, size=num_tokens)
    member = np.zeros((num_groups, num_experts), dtype=bool)
    for g, members in enumerate(groups):
        member[g, members] = True
    group_share = in_group / np.array([len(g) for g in groups])[token_group]  # [T]
    base = np.log(popularity)[None, :] + np.where(
        member[token_group], np.log(group_share[:, None] + (1 - in_group) / num_experts), np.log((1 - in_group) / num_experts + 1e-12)
    )
    scores = base + rng.gumbel(size=(num_tokens, num_experts))
    top = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
    return top.astype(np.int16)


def synthetic_trace_arrays(
    num_tokens: int = 4096,
    num_layers: int = 4,
    num_experts: int = 16,
    top_k: int = 2,
    seq_len: int = 128,
    vocab_size: int = 1000,
    with_logits: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything ``routelens.trace.write_trace`` needs for a synthetic trace.

    Returns a dict with ``header`` and the arrays ``token_ids``, ``seq_ids``, ``positions``,
    ``topk_ids``, ``topk_weights`` (lists over layers) and ``router_logits`` (or None).
    """
    rng = np.random.default_rng(seed)
    layers = [f"model.layers.{i}.mlp.gate" for i in range(num_layers)]
    topk_ids, topk_weights, logits = [], [], []
    for i in range(num_layers):
        ids = synthetic_topk_ids(num_tokens, num_experts, top_k, num_groups=max(2, num_experts // 8), seed=seed * 1000 + i)
        w = rng.random((num_tokens, top_k)).astype(np.float32) + 0.1
        w = -np.sort(-w, axis=1)
        topk_ids.append(ids)
        topk_weights.append(w / w.sum(1, keepdims=True))
        if with_logits:
            lg = rng.normal(size=(num_tokens, num_experts)).astype(np.float32)
            np.put_along_axis(lg, ids.astype(np.int64), 4.0 + np.sort(rng.random((num_tokens, top_k)))[:, ::-1], axis=1)
            logits.append(lg)
    positions = np.arange(num_tokens) % seq_len
    header = {
        "model": {"id": "synthetic", "family": "synthetic", "architecture": "none",
                  "config": {"num_experts": num_experts, "top_k": top_k, "num_hidden_layers": num_layers,
                             "hidden_size": 64, "vocab_size": vocab_size}},
        "layers": layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "has_logits": with_logits,
        "dtype": "float32",
        "settings": {"model": "synthetic", "seed": seed, "seq_len": seq_len},
        "source": {"kind": "synthetic"},
    }
    return {
        "header": header,
        "token_ids": rng.integers(0, vocab_size, size=num_tokens).astype(np.int32),
        "seq_ids": (np.arange(num_tokens) // seq_len).astype(np.int32),
        "positions": positions.astype(np.int32),
        "topk_ids": topk_ids,
        "topk_weights": topk_weights,
        "router_logits": logits if with_logits else None,
    }
