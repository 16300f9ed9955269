"""Counting kernels: expert load, token-level co-activation and layer-to-layer transitions.

Every count here is a histogram of *pair codes*: for a pair of expert ids ``(i, j)`` the code is
``i * B + j`` (``B = E + 1``), and one ``np.bincount`` over all codes of a chunk yields the whole
``[E, E]`` table. A token with ``k`` experts contributes its ``k (k - 1) / 2`` unordered pairs (not
the ``k * k`` of a one-hot outer product), codes are built in ``int16`` when ``B * B`` fits (``E <=
180``), and tokens are processed in sub-chunks small enough for the histogram's input to stay in
cache. On 1M tokens × top-8 × 128 experts this is several times faster than the one-hot matmul
``onehot.T @ onehot`` (``benchmarks/bench_graphs.py`` measures both).

Dropped slots (id ``-1``, written by capacity-aware re-routing) are mapped to a sentinel expert
``E`` whose row and column are discarded, so they count for nothing. Ids ``>= E`` or ``< -1`` are
an error.

The collaboration matrix is the "expert collaboration matrix" of C2R (Zhang et al., "Advancing MoE
Efficiency: A Collaboration-Constrained Routing (C2R) Strategy for Better Expert Parallelism
Design", NAACL 2025, arXiv:2504.01337): ``M[i, j]`` = tokens whose top-k holds both ``i`` and
``j``, exactly what the paper's ``profiling.py`` accumulates with ``M[e[:, None], e] += 1``.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

SUB_CHUNK_TOKENS = 16384  # tokens per histogram call: codes + their intp copy stay in L2


def code_dtype(base: int) -> type:
    """Smallest signed integer dtype holding every pair code ``< base * base``."""
    if base * base <= np.iinfo(np.int16).max:
        return np.int16
    if base * base <= np.iinfo(np.int32).max:
        return np.int32
    return np.int64


def slot_major(topk_ids: np.ndarray, num_experts: int, what: str = "topk_ids") -> np.ndarray:
    """``[k, n]`` contiguous ids in the code dtype, dropped slots (``-1``) mapped to ``num_experts``.

    Raises:
        InputError: not a ``[n, k]`` array, or an id outside ``[-1, num_experts)``.
    """
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise InputError(f"{what} must be a [tokens, k] array, got shape {ids.shape}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if high >= num_experts or low < -1:
            bad = high if high >= num_experts else low
            raise InputError(f"{what} holds expert id {bad}, outside [0, {num_experts}) (and -1 for dropped slots)")
    out = np.ascontiguousarray(ids.T, dtype=code_dtype(num_experts + 1))
    if ids.size and low < 0:
        out[out < 0] = num_experts
    return out


def _pair_hist(slots: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of one chunk: ``(pairs [base*base], load [base])`` from ``slots [k, n]``."""
    k, n = slots.shape
    codes = np.empty((k * (k - 1) // 2, n), dtype=slots.dtype)
    scale, row = slots.dtype.type(base), 0
    for a in range(k - 1):  # codes of (slot a, slot b > a), one broadcast write per a
        np.add((slots[a] * scale)[None, :], slots[a + 1:], out=codes[row:row + k - 1 - a])
        row += k - 1 - a
    pairs = np.bincount(codes.ravel(), minlength=base * base)
    load = np.bincount(slots.ravel(), minlength=base)
    return pairs, load


def coactivation_and_load(topk_ids: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Co-activation counts (symmetric, zero diagonal) and load of one chunk of tokens.

    Args:
        topk_ids: ``[T, k]`` expert ids (``-1`` = dropped slot).
        num_experts: ``E``.

    Returns:
        ``(pairs [E, E] int64, load [E] int64)``: ``pairs[i, j]`` (``i != j``) tokens that chose
        both ``i`` and ``j``; ``load[i]`` tokens that chose ``i``.
    """
    base = num_experts + 1
    pairs = np.zeros(base * base, dtype=np.int64)
    load = np.zeros(base, dtype=np.int64)
    ids = np.asarray(topk_ids)
    for start in range(0, ids.shape[0], SUB_CHUNK_TOKENS):
        slots = slot_major(ids[start:start + SUB_CHUNK_TOKENS], num_experts)
        chunk_pairs, chunk_load = _pair_hist(slots, base)
        pairs += chunk_pairs
        load += chunk_load
    square = pairs.reshape(base, base)[:num_experts, :num_experts]
    square = square + square.T  # each token counted (i, j) in slot order; the union is symmetric
    np.fill_diagonal(square, 0)  # a repeated id in one row (never in top-k) is not a collaboration
    return square, load[:num_experts].copy()


def coactivation_counts(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """Token-level co-activation counts of one MoE layer: the C2R expert collaboration matrix.

    Args:
        topk_ids: ``[T, k]`` expert ids chosen per token (int, ``-1`` = dropped slot, ignored).
        num_experts: ``E``, experts of the layer.

    Returns:
        ``[E, E]`` int64, symmetric. Off the diagonal, ``counts[i, j]`` is the number of tokens
        whose top-k holds both ``i`` and ``j``; the diagonal holds the load ``counts[i, i]`` =
        tokens that chose ``i`` (so ``counts[i, j] / counts[i, i]`` is ``P(j | i)``).

    Raises:
        InputError: ids outside ``[-1, E)`` or not a ``[T, k]`` array.

    References:
        Zhang et al., C2R, NAACL 2025, arXiv:2504.01337, "expert profiling" (their ``profiling.py``
        sets the diagonal to ``-1``; routelens keeps the load there instead).

    Example:
        >>> ids = np.array([[0, 1], [0, 1], [1, 2]])
        >>> coactivation_counts(ids, 3).tolist()
        [[2, 2, 0], [2, 3, 1], [0, 1, 1]]
    """
    pairs, load = coactivation_and_load(topk_ids, num_experts)
    pairs[np.diag_indices(num_experts)] = load
    return pairs


def transition_counts(ids_from: np.ndarray, ids_to: np.ndarray, num_experts_from: int,
                      num_experts_to: int | None = None) -> np.ndarray:
    """Layer-to-layer expert transitions of the same tokens: the basis of inter-layer placement.

    Args:
        ids_from: ``[T, k]`` experts the tokens use at layer ``l``.
        ids_to: ``[T, k']`` experts the same tokens use at layer ``l + 1``.
        num_experts_from, num_experts_to: ``E`` of each layer (``to`` defaults to ``from``).

    Returns:
        ``[E_from, E_to]`` int64: ``counts[a, b]`` = tokens that use ``a`` at layer ``l`` and ``b``
        at layer ``l + 1`` (each token adds its ``k * k'`` pairs).

    Example:
        >>> transition_counts(np.array([[0, 1]]), np.array([[2, 0]]), 3).tolist()
        [[1, 0, 1], [1, 0, 1], [0, 0, 0]]
    """
    num_experts_to = num_experts_from if num_experts_to is None else num_experts_to
    a, b = np.asarray(ids_from), np.asarray(ids_to)
    if a.shape[0] != b.shape[0]:
        raise InputError(f"transition counts need the same tokens at both layers, got {a.shape[0]} and {b.shape[0]}")
    base_from, base_to = num_experts_from + 1, num_experts_to + 1
    dtype = code_dtype(max(base_from, base_to))
    out = np.zeros(base_from * base_to, dtype=np.int64)
    for start in range(0, a.shape[0], SUB_CHUNK_TOKENS // 2):
        end = start + SUB_CHUNK_TOKENS // 2
        src = slot_major(a[start:end], num_experts_from, "ids_from").astype(dtype, copy=False)
        dst = slot_major(b[start:end], num_experts_to, "ids_to").astype(dtype, copy=False)
        codes = src[:, None, :] * dtype(base_to) + dst[None, :, :]
        out += np.bincount(codes.ravel(), minlength=base_from * base_to)
    return out.reshape(base_from, base_to)[:num_experts_from, :num_experts_to].copy()


def load_counts(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """``[E]`` int64 tokens routed to each expert (each token counts once per chosen expert)."""
    slots = slot_major(topk_ids, num_experts)
    return np.bincount(slots.ravel(), minlength=num_experts + 1)[:num_experts].astype(np.int64)


def load_mass(topk_ids: np.ndarray, topk_weights: np.ndarray, num_experts: int) -> np.ndarray:
    """``[E]`` float64 routing-weight mass each expert received (sum of its gate weights)."""
    ids, weights = np.asarray(topk_ids), np.asarray(topk_weights)
    if weights.shape != ids.shape:
        raise InputError(f"topk_weights has shape {weights.shape}, topk_ids {ids.shape}")
    slot_major(ids[:0], num_experts)  # shape check
    flat = ids.ravel()
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= num_experts):
        flat = slot_major(ids, num_experts).T.ravel()  # validates; dropped slots -> sentinel E
    return np.bincount(flat, weights=weights.ravel(), minlength=num_experts + 1)[:num_experts]


def expert_token_counts(topk_ids: np.ndarray, token_cols: np.ndarray, num_experts: int, num_cols: int) -> np.ndarray:
    """``[E, num_cols]`` int64: how often each expert served each token column.

    Args:
        topk_ids: ``[T, k]`` expert ids.
        token_cols: ``[T]`` int column of each token in ``[0, num_cols)`` (a token class, or the
            rank of its vocabulary id among the frequent ones).
    """
    wide = np.int32 if (num_experts + 1) * num_cols < np.iinfo(np.int32).max else np.int64
    slots = slot_major(topk_ids, num_experts).astype(wide)
    cols = np.asarray(token_cols).astype(wide, copy=False)
    codes = slots * wide(num_cols) + cols[None, :]
    hist = np.bincount(codes.ravel(), minlength=(num_experts + 1) * num_cols)
    return hist.reshape(num_experts + 1, num_cols)[:num_experts].copy()


def router_entropy_sum(router_logits: np.ndarray, chunk_tokens: int = 8192) -> tuple[float, int]:
    """Sum over tokens of the entropy (nats) of ``softmax(router_logits)``, and the token count.

    Args:
        router_logits: ``[T, E]`` raw router logits (any float dtype; computed in float32).

    Raises:
        InputError: NaN or inf logits.
    """
    logits = np.asarray(router_logits)
    total = 0.0
    for start in range(0, logits.shape[0], chunk_tokens):
        x = logits[start:start + chunk_tokens].astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise InputError("router logits contain NaN or inf")
        x -= x.max(axis=1, keepdims=True)
        e = np.exp(x)
        s = e.sum(axis=1)
        # H = log(sum e) - sum(p * x) with x shifted by the row max
        total += float(np.sum(np.log(s) - (e * x).sum(axis=1) / s, dtype=np.float64))
    return total, int(logits.shape[0])
