"""Metrics of one MoE layer, from its counts: normalised co-activation, collaboration vs
specialization, load imbalance, and how predictable the next layer's experts are.

All functions are pure, take numpy arrays and return numpy arrays or floats.

Collaboration and specialization
--------------------------------
C2R (Zhang, Li, Peng, Qiu, Chen, "Advancing MoE Efficiency: A Collaboration-Constrained Routing
(C2R) Strategy for Better Expert Parallelism Design", NAACL 2025, arXiv:2504.01337) profiles each
layer's *expert collaboration matrix* ``M[i, j]`` (tokens that chose both ``i`` and ``j``) and calls
an expert *collaborative* when it co-activates broadly with many others and *specialized* when it
co-activates with a specific small group; its routing then restricts every token to the ``Top-T(i)``
experts that collaborate most with its top-1 expert ``i``. The paper characterises the two roles
from the matrix but its text (as far as routelens could retrieve it, together with the official
code github.com/UNITES-Lab/c2r-moe, whose ``profiling.py`` only builds ``M`` and ``Top-T``) gives no
closed per-expert formula. routelens therefore defines, from ``M`` and C2R's ``Top-T``:

* ``specialization[i]`` = **Top-T share**: the fraction of expert ``i``'s co-activations that fall on
  its ``T`` most frequent partners, ``sum_{j in Top-T(i)} M[i, j] / sum_{j != i} M[i, j]``. It is 1
  when ``i`` only ever works with the same ``T`` experts (C2R's constraint would cost it nothing)
  and ``T / (E - 1)`` when it spreads evenly over all others. Default ``T = k - 1``: the size of
  one token's team besides ``i``.
* ``effective_collaborators[i]`` = ``exp(H(p_i))``, the perplexity of ``i``'s partner distribution
  ``p_i(j) = M[i, j] / sum_{j' != i} M[i, j']`` (Hill number of order 1): the number of partners
  ``i`` behaves as if it had, equally often. ``collaboration[i]`` = that number ``/ (E - 1)``.
* an expert is **specialized** when its Top-T share is at least ``threshold`` (default 0.5: the
  majority of its co-activations go to a fixed team of ``T``), else **collaborative**; experts no
  token chose are **unused**.
* ``stability[i]``: overlap ``|Top-T_A(i) ∩ Top-T_B(i)| / T`` of the Top-T sets measured on the
  first and second half of the tokens, the "stable" in "a small, stable set".
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROLE_NAMES = ("unused", "collaborative", "specialized")
UNUSED, COLLABORATIVE, SPECIALIZED = 0, 1, 2


# ---------------------------------------------------------------------------------------- normalised forms
def _load_of(counts: np.ndarray) -> np.ndarray:
    return np.diag(counts).astype(np.float64)


def conditional_probability(counts: np.ndarray) -> np.ndarray:
    """``P(j | i)`` ``[E, E]``: the share of expert ``i``'s tokens that also chose ``j``.

    Args:
        counts: ``[E, E]`` co-activation counts with the load on the diagonal
            (:func:`routelens.graphs.coactivation_counts`).

    Returns:
        float64, row ``i`` divided by ``counts[i, i]`` (diagonal 1; rows of unused experts 0).
        Not symmetric. Rows sum to ``k`` when every token has ``k`` distinct experts.

    Example:
        >>> conditional_probability(np.array([[2, 1], [1, 4]])).tolist()
        [[1.0, 0.5], [0.25, 1.0]]
    """
    counts = np.asarray(counts, dtype=np.float64)
    load = np.diag(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(load[:, None] > 0, counts / load[:, None], 0.0)
    return out


def jaccard(counts: np.ndarray) -> np.ndarray:
    """Jaccard similarity ``[E, E]`` of the token sets of two experts: ``|i ∧ j| / |i ∨ j|``.

    Example:
        >>> jaccard(np.array([[2, 1], [1, 4]])).round(3).tolist()
        [[1.0, 0.2], [0.2, 1.0]]
    """
    counts = np.asarray(counts, dtype=np.float64)
    load = np.diag(counts)
    union = load[:, None] + load[None, :] - counts
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, counts / union, 0.0)


def lift(counts: np.ndarray, num_tokens: int) -> np.ndarray:
    """Lift ``[E, E]``: ``P(i ∧ j) / (P(i) P(j))`` over tokens; 1 = as often as by chance.

    The diagonal follows from ``counts[i, i] = load`` (it is ``1 / P(i)``); pairs with an unused
    expert are 0.

    Example:
        >>> lift(np.array([[2, 1], [1, 4]]), num_tokens=8).tolist()
        [[4.0, 1.0], [1.0, 2.0]]
    """
    counts = np.asarray(counts, dtype=np.float64)
    load = np.diag(counts)
    expected = load[:, None] * load[None, :] / max(int(num_tokens), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, counts / expected, 0.0)


def pmi(counts: np.ndarray, num_tokens: int) -> np.ndarray:
    """Pointwise mutual information ``log(lift)`` (nats) ``[E, E]``; ``-inf`` where never together."""
    with np.errstate(divide="ignore"):
        return np.log(lift(counts, num_tokens))


# ---------------------------------------------------------------------------------------- per-expert scores
def partner_distribution(counts: np.ndarray) -> np.ndarray:
    """``p_i(j)`` ``[E, E]``: row ``i`` of the off-diagonal counts normalised to sum 1 (0 rows stay 0)."""
    off = np.asarray(counts, dtype=np.float64).copy()
    np.fill_diagonal(off, 0.0)
    total = off.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, off / total, 0.0)


def effective_collaborators(counts: np.ndarray) -> np.ndarray:
    """``[E]`` float64 ``exp(entropy)`` of each expert's partner distribution (NaN if it has none).

    Between 1 (always the same single partner) and ``E - 1`` (all others equally often). For a
    top-k layer an expert that always works with the same team has ``k - 1``.

    Example:
        >>> effective_collaborators(np.array([[2, 2, 2], [2, 2, 0], [2, 0, 2]])).round(3).tolist()
        [2.0, 1.0, 1.0]
    """
    p = partner_distribution(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(axis=1)
    has = p.sum(axis=1) > 0
    return np.where(has, np.exp(entropy), np.nan)


def top_t_partners(counts: np.ndarray, top_t: int) -> np.ndarray:
    """``Top-T(i)`` ``[E, T]`` int64: the ``T`` experts that co-activate most with each expert.

    Ties go to the lower expert id (stable sort); the expert itself is never its own partner (the
    C2R paper's ``profiling.py`` sets the diagonal to -1 before ``argsort``).
    """
    ranked = np.asarray(counts, dtype=np.float64).copy()
    np.fill_diagonal(ranked, -1.0)
    return np.argsort(-ranked, axis=1, kind="stable")[:, :top_t].astype(np.int64)


def top_t_share(counts: np.ndarray, top_t: int) -> np.ndarray:
    """``[E]`` specialization score: share of each expert's co-activations on its ``Top-T`` partners.

    NaN for experts with no co-activation. See the module docstring for the definition.

    Example:
        >>> top_t_share(np.array([[9, 6, 2], [6, 9, 0], [2, 0, 9]]), 1).round(2).tolist()
        [0.75, 1.0, 1.0]
    """
    p = partner_distribution(counts)
    top = -np.sort(-p, axis=1)[:, :top_t].sum(axis=1)
    return np.where(p.sum(axis=1) > 0, top, np.nan)


def top_t_stability(counts_a: np.ndarray, counts_b: np.ndarray, top_t: int) -> np.ndarray:
    """``[E]`` overlap ``|Top-T_A(i) ∩ Top-T_B(i)| / T`` of two measurements of the same layer.

    NaN where an expert has no co-activation in either measurement.
    """
    a, b = top_t_partners(counts_a, top_t), top_t_partners(counts_b, top_t)
    e = a.shape[0]
    member_a = np.zeros((e, e), dtype=bool)
    member_a[np.arange(e)[:, None], a] = True
    overlap = member_a[np.arange(e)[:, None], b].sum(axis=1) / float(top_t)
    off_a, off_b = np.asarray(counts_a).copy(), np.asarray(counts_b).copy()
    np.fill_diagonal(off_a, 0)
    np.fill_diagonal(off_b, 0)
    valid = (off_a.sum(axis=1) > 0) & (off_b.sum(axis=1) > 0)
    return np.where(valid, overlap, np.nan)


def default_top_t(num_experts: int, top_k: int) -> int:
    """C2R's group size used for the scores unless given: ``k - 1`` (one token's team), within ``[1, E - 1]``."""
    return int(min(max(top_k - 1, 1), max(num_experts - 1, 1)))


def expert_roles(counts: np.ndarray, top_t: int, threshold: float = 0.5, counts_halves: tuple | None = None) -> dict[str, np.ndarray]:
    """Collaboration and specialization scores of every expert of one layer.

    Args:
        counts: ``[E, E]`` co-activation counts (load on the diagonal).
        top_t: ``T`` of C2R's ``Top-T`` (see :func:`default_top_t`).
        threshold: Top-T share from which an expert counts as specialized.
        counts_halves: optional ``(first_half, second_half)`` counts for :func:`top_t_stability`.

    Returns:
        ``{"specialization", "collaboration", "effective_collaborators", "stability"}`` ``[E]``
        float64 (NaN for unused experts) and ``"role"`` ``[E]`` int8 (:data:`ROLE_NAMES`).
    """
    counts = np.asarray(counts)
    e = counts.shape[0]
    share = top_t_share(counts, top_t)
    n_eff = effective_collaborators(counts)
    used = np.diag(counts) > 0
    role = np.full(e, UNUSED, dtype=np.int8)
    has = used & ~np.isnan(share)
    role[has] = np.where(share[has] >= threshold, SPECIALIZED, COLLABORATIVE)
    stability = (top_t_stability(*counts_halves, top_t) if counts_halves is not None
                 else np.full(e, np.nan))
    return {
        "specialization": share,
        "collaboration": n_eff / max(e - 1, 1),
        "effective_collaborators": n_eff,
        "stability": stability,
        "role": role,
    }


# ---------------------------------------------------------------------------------------- load
def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = all equal, ``1 - 1/n`` = one holds everything).

    Example:
        >>> round(gini(np.array([1, 1, 1, 1])), 3), round(gini(np.array([0, 0, 0, 4])), 3)
        (0.0, 0.75)
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * x) / (n * total) - (n + 1.0) / n)


def load_imbalance(load: np.ndarray) -> dict[str, float | None]:
    """``max_over_mean`` (the straggler ratio), ``cv`` (std / mean) and ``gini`` of an ``[E]`` load.

    ``max / mean`` is what sets an expert-parallel layer's latency (the straggler effect of
    capacity-aware inference); all three are None for an all-zero load.
    """
    x = np.asarray(load, dtype=np.float64)
    mean = float(x.mean()) if x.size else 0.0
    if mean <= 0:
        return {"max_over_mean": None, "cv": None, "gini": None}
    return {"max_over_mean": float(x.max() / mean), "cv": float(x.std() / mean), "gini": gini(x)}


# ---------------------------------------------------------------------------------------- cross-layer
def next_layer_probability(transitions: np.ndarray) -> np.ndarray:
    """``P(b at l+1 | a at l)`` ``[E, E']``: rows of the transition counts normalised to 1."""
    t = np.asarray(transitions, dtype=np.float64)
    total = t.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, t / total, 0.0)


def transition_predictability(transitions: np.ndarray, top_k: int) -> dict[str, float | None]:
    """How predictable a token's experts at layer ``l + 1`` are from its experts at layer ``l``.

    Args:
        transitions: ``[E, E']`` counts from :func:`routelens.graphs.transition_counts`.
        top_k: ``k`` at layer ``l + 1``.

    Returns:
        ``nmi``: mutual information between an expert of the token at ``l`` and one at ``l + 1``,
        divided by the entropy of the latter (0 = independent, 1 = fully determined);
        ``topk_coverage``: share of transitions ``a -> b`` where ``b`` is among the ``k`` most
        frequent successors of ``a`` (how often "prefetch the k likeliest next experts" is right);
        ``chance_coverage``: ``k / E'``, its value without any structure.
    """
    t = np.asarray(transitions, dtype=np.float64)
    total = t.sum()
    if total <= 0:
        return {"nmi": None, "topk_coverage": None, "chance_coverage": None}
    joint = t / total
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(joint > 0, joint / (pa[:, None] * pb[None, :]), 1.0)
        mutual = float(np.sum(np.where(joint > 0, joint * np.log(ratio), 0.0)))
        h_b = float(-np.sum(np.where(pb > 0, pb * np.log(pb), 0.0)))
    k = int(min(max(top_k, 1), t.shape[1]))
    covered = -np.sort(-t, axis=1)[:, :k].sum()
    return {
        "nmi": mutual / h_b if h_b > 0 else None,
        "topk_coverage": float(covered / total),
        "chance_coverage": k / t.shape[1],
    }


def summarize_roles(roles: dict[str, np.ndarray]) -> dict[str, Any]:
    """Layer-level shares and means of :func:`expert_roles` (over used experts)."""
    role = roles["role"]
    used = role != UNUSED
    n_used = int(used.sum())

    def mean(name: str) -> float | None:
        vals = roles[name][used]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else None

    return {
        "experts_used": n_used,
        "share_specialized": float((role == SPECIALIZED).sum() / n_used) if n_used else None,
        "share_collaborative": float((role == COLLABORATIVE).sum() / n_used) if n_used else None,
        "mean_specialization": mean("specialization"),
        "mean_collaboration": mean("collaboration"),
        "mean_effective_collaborators": mean("effective_collaborators"),
        "mean_stability": mean("stability"),
    }
