"""Slow, obvious reference computations the fast graphs kernels are checked against."""

from __future__ import annotations

import itertools
import math

import numpy as np


def coactivation_direct(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Token by token: every unordered pair of distinct kept experts, both directions; load on the diagonal."""
    out = np.zeros((num_experts, num_experts), dtype=np.int64)
    for row in np.asarray(topk_ids).tolist():
        kept = sorted({e for e in row if e >= 0})
        for e in kept:
            out[e, e] += 1
        for i, j in itertools.combinations(kept, 2):
            out[i, j] += 1
            out[j, i] += 1
    return out


def transitions_direct(ids_from: np.ndarray, ids_to: np.ndarray, e_from: int, e_to: int) -> np.ndarray:
    out = np.zeros((e_from, e_to), dtype=np.int64)
    for a_row, b_row in zip(np.asarray(ids_from).tolist(), np.asarray(ids_to).tolist()):
        for a in a_row:
            for b in b_row:
                if a >= 0 and b >= 0:
                    out[a, b] += 1
    return out


def load_mass_direct(ids: np.ndarray, weights: np.ndarray, num_experts: int) -> np.ndarray:
    out = np.zeros(num_experts)
    for row, w_row in zip(np.asarray(ids).tolist(), np.asarray(weights, dtype=np.float64).tolist()):
        for e, w in zip(row, w_row):
            if e >= 0:
                out[e] += w
    return out


def router_entropy_direct(logits: np.ndarray) -> float:
    """Mean over tokens of -sum p log p of softmax(logits), in float64, token by token."""
    total = 0.0
    for row in np.asarray(logits, dtype=np.float64):
        z = row - row.max()
        p = np.exp(z) / np.exp(z).sum()
        total += -sum(x * math.log(x) for x in p if x > 0)
    return total / len(logits)


def effective_collaborators_direct(counts: np.ndarray, i: int) -> float:
    row = [float(counts[i, j]) for j in range(counts.shape[0]) if j != i]
    s = sum(row)
    h = -sum((c / s) * math.log(c / s) for c in row if c > 0)
    return math.exp(h)


def top_t_share_direct(counts: np.ndarray, i: int, t: int) -> float:
    row = sorted((float(counts[i, j]) for j in range(counts.shape[0]) if j != i), reverse=True)
    return sum(row[:t]) / sum(row)
