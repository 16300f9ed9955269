"""Swap local search over physical experts, scored by the cost model.

The search state is the *presence* of every token on every GPU: ``C[t, g]`` = how many of token
``t``'s experts GPU ``g`` serves. GPU ``g`` receives token ``t`` (from another GPU) exactly when
``C[t, g] > 0``, so its receive time is ``recv[g] = Σ_t w[t, g]·[C[t, g] > 0]`` with ``w`` the
seconds one token takes over the link from the token's GPU (0 on its own GPU). Swapping physical
experts ``i`` (on GPU ``p``) and ``j`` (on GPU ``q``) changes only ``recv[p]`` and ``recv[q]``:

    Δrecv[p] = -U[i] + W[i, j] + N[j, p]

with ``U[i]`` the receive time of the tokens for which ``i`` is their only expert on ``p``,
``N[j, p]`` that of ``j``'s tokens not yet on ``p``, and ``W[i, j]`` the part of ``U[i]`` whose
tokens also use ``j`` (they stay on ``p`` through ``j``). These three tables give the change of
every possible swap at once (``[n, n]`` arrays); after a swap only the tokens of the two experts
need their share of the tables recomputed. Swaps on disjoint GPU pairs add up exactly, so one
round applies many of them.

The tables score receive time and compute (the straggler terms); every round is then checked
against the full cost model (:func:`routelens.placement.cost.estimate_time`, send side and replica
choice included) and undone if the true estimate got worse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

MEAN_WEIGHT = 1.0  # weight of the mean receive time next to the bottleneck: prefers fewer copies on ties
TOLERANCE = 1e-12
MAX_STALE_REFRESHES = 3  # replica re-assignments in a row that did not beat the best: stop


@dataclass
class SearchStats:
    """What a local search did."""

    rounds: int = 0
    swaps: int = 0
    rejected_rounds: int = 0
    seconds: float = 0.0
    converged: bool = False
    history: list[float] = field(default_factory=list)


class SwapState:
    """Token-presence state of a placement of ``n`` physical experts on ``G`` GPUs.

    Tokens come in ``B`` batches (contiguous blocks of the fit tokens, each spread evenly over the
    GPUs; ``B = 1`` by default); each batch is its own All-to-All, so every table is kept per
    batch and the score is the mean over batches of each batch's bottleneck.

    Args:
        item_of: ``[T, k]`` physical expert serving each (token, slot), ``-1`` = dropped.
        source: ``[T]`` GPU each token starts on.
        batch: ``[T]`` batch of each token (``0 .. B-1``).
        gpu_of_item: ``[n]`` GPU of each physical expert.
        item_expert: ``[n]`` logical expert of each physical expert.
        link_seconds: ``[G, G]`` seconds to send one token from GPU ``a`` to GPU ``b`` (0 diagonal).
        pair_seconds: seconds of expert compute per token-expert pair.

    Attributes:
        hits: ``[B, G, G]`` tokens of batch ``b`` starting on GPU ``s`` that GPU ``g`` serves
            (diagonal: served at home); the off-diagonal part is the dispatch matrix.
        recv: ``[B, G]`` seconds each GPU spends receiving (``Σ_s hits·link_seconds``).
        compute: ``[B, G]`` seconds of expert compute per GPU.
    """

    def __init__(self, item_of, source, batch, gpu_of_item, item_expert, num_experts, link_seconds, pair_seconds):
        self.item_of = np.asarray(item_of, dtype=np.int64)
        self.source = np.asarray(source, dtype=np.int64)
        self.batch = np.asarray(batch, dtype=np.int64)
        self.num_batches = int(self.batch.max(initial=0)) + 1
        self.gpu_of_item = np.array(gpu_of_item, dtype=np.int64, copy=True)
        self.item_expert = np.asarray(item_expert, dtype=np.int64)
        self.num_items = self.item_expert.size
        self.num_experts = int(num_experts)
        self.link_seconds = np.asarray(link_seconds, dtype=np.float64)
        self.num_gpus = self.link_seconds.shape[0]
        self.pair_seconds = float(pair_seconds)
        self.mean_weight = MEAN_WEIGHT
        self.valid = self.item_of >= 0
        self.safe = np.maximum(self.item_of, 0)
        self.keyed = self.safe + (self.batch * self.num_items)[:, None]  # batch-major physical expert
        self.item_load = np.bincount(self.keyed[self.valid], minlength=self.num_batches * self.num_items).reshape(
            self.num_batches, self.num_items).astype(np.float64)  # [B, n]
        self._tokens_of = _tokens_of_items(self.item_of, self.num_items)
        self.build()

    # ------------------------------------------------------------------ tables
    def build(self) -> None:
        B, n, G = self.num_batches, self.num_items, self.num_gpus
        rows = np.arange(self.item_of.shape[0])
        self.presence = self._presence(rows)
        if not hasattr(self, "N_all"):
            # N[i, g] = Σ_{t ∋ i} link[src t, g] - (the part where t is already on g); the first sum
            # does not depend on where experts are, the second is kept with U and W
            codes = (self.keyed * G + self.source[:, None])[self.valid]
            per_source = np.bincount(codes, minlength=B * n * G).reshape(B * n, G).astype(np.float64)
            self.N_all = per_source @ self.link_seconds
        self.U = np.zeros(B * n)
        self.N_on = np.zeros(B * n * G)
        self.W = np.zeros(B * n * n)
        self.hits = np.zeros(B * G * G)
        self._add(rows, +1.0)
        self.holds = np.zeros((self.num_experts, G), dtype=bool)
        self.holds[self.item_expert, self.gpu_of_item] = True
        self._update_compute()

    @property
    def N(self) -> np.ndarray:
        """``[B·n, G]`` receive seconds of expert ``i``'s tokens (batch ``b``) not yet on GPU ``g``."""
        return self.N_all - self.N_on.reshape(self.N_all.shape)

    def _gpus(self, rows: np.ndarray) -> np.ndarray:
        return np.where(self.valid[rows], self.gpu_of_item[self.safe[rows]], -1)

    def _presence(self, rows: np.ndarray) -> np.ndarray:
        gpu = self._gpus(rows)
        G = self.num_gpus
        codes = (np.arange(rows.size)[:, None] * G + gpu)[gpu >= 0]
        return np.bincount(codes, minlength=rows.size * G).reshape(rows.size, G).astype(np.int16)

    def _update_compute(self) -> None:
        onehot = np.zeros((self.num_items, self.num_gpus))
        onehot[np.arange(self.num_items), self.gpu_of_item] = 1.0
        self.compute = self.item_load @ onehot * self.pair_seconds  # [B, G]
        hits = self.hits.reshape(self.num_batches, self.num_gpus, self.num_gpus)
        self.recv = np.einsum("bsg,sg->bg", hits, self.link_seconds)

    def _add(self, rows: np.ndarray, sign: float) -> None:
        """Add (``sign=+1``) or remove (``-1``) the share of tokens ``rows`` in U, N, W and hits."""
        if rows.size == 0:
            return
        n, G = self.num_items, self.num_gpus
        valid, safe, keyed = self.valid[rows], self.safe[rows], self.keyed[rows]
        gpu = np.where(valid, self.gpu_of_item[safe], 0)
        src = self.source[rows][:, None]
        on_gpu = np.take_along_axis(self.presence[rows], gpu, axis=1)  # token's experts on that GPU
        own = self.link_seconds[src, gpu]
        own *= (on_gpu == 1) & valid  # [a, k] receive seconds that leave with this expert
        self.U += sign * np.bincount(keyed.ravel(), weights=own.ravel(), minlength=self.U.size)
        # the GPUs each token visits: its experts' GPUs, sorted, first of each run
        visited = np.sort(np.where(valid, gpu, G), axis=1)
        first = np.empty(visited.shape, dtype=bool)
        first[:, 0] = True
        np.not_equal(visited[:, 1:], visited[:, :-1], out=first[:, 1:])
        first &= visited < G
        visited = np.minimum(visited, G - 1)
        visit = self.link_seconds[src, visited] * first  # [a, k]
        k = gpu.shape[1]
        code_type = np.int32 if max(self.N_on.size, self.W.size, self.hits.size) < 2 ** 31 else np.int64
        keyed = keyed.astype(code_type)
        if not valid.all():
            keyed = np.where(valid, keyed, 0)
        # every (expert of the token, GPU the token is on) pair: [a, k, k]
        weight = visit[:, None, :] if valid.all() else visit[:, None, :] * valid[:, :, None]
        codes = keyed[:, :, None] * G + visited.astype(code_type)[:, None, :]
        self.N_on += sign * np.bincount(codes.ravel(), weights=np.broadcast_to(weight, codes.shape).ravel(),
                                        minlength=self.N_on.size)
        if k > 1:
            # every ordered pair of distinct slots (x, y): W[x's expert, y's expert] += own[x]
            x, y = np.nonzero(~np.eye(k, dtype=bool))
            partner = safe.astype(code_type)
            codes = keyed[:, x] * n + partner[:, y]
            weight = own[:, x] if valid.all() else own[:, x] * valid[:, y]
            self.W += sign * np.bincount(codes.ravel(), weights=weight.ravel(), minlength=self.W.size)
        hit_codes = ((self.batch[rows][:, None] * G + src) * G + visited)[first]
        self.hits += sign * np.bincount(hit_codes, minlength=self.hits.size)

    # ------------------------------------------------------------------ scoring
    def surrogate(self, recv: np.ndarray | None = None, compute: np.ndarray | None = None) -> float:
        """Mean over batches of ``2·max recv + max compute + mean_weight·2·mean recv`` (seconds)."""
        recv = self.recv if recv is None else recv
        compute = self.compute if compute is None else compute
        return float(np.mean(2 * recv.max(1) + compute.max(1) + self.mean_weight * 2 * recv.mean(1)))

    def _deltas(self) -> np.ndarray:
        """``[B, n, n]`` change of ``recv[b, gpu[i]]`` when ``i`` and ``j`` swap GPUs."""
        B, n, gpu = self.num_batches, self.num_items, self.gpu_of_item
        U = self.U.reshape(B, n)
        W = self.W.reshape(B, n, n)
        N = self.N.reshape(B, n, self.num_gpus)
        return -U[:, :, None] + W + np.transpose(N[:, :, gpu], (0, 2, 1))

    def swap_gains(self) -> np.ndarray:
        """``[n, n]`` surrogate improvement of swapping physical experts ``i < j`` (``-inf`` = not allowed)."""
        n, gpu = self.num_items, self.gpu_of_item
        delta_p = self._deltas()
        new_p = self.recv[:, gpu][:, :, None] + delta_p
        p, q = gpu[:, None], gpu[None, :]
        bottleneck = np.maximum(new_p, np.transpose(new_p, (0, 2, 1)))
        lt = self.item_load * self.pair_seconds  # [B, n]
        comp_p = self.compute[:, gpu][:, :, None] - lt[:, :, None] + lt[:, None, :]
        compute = np.maximum(comp_p, np.transpose(comp_p, (0, 2, 1)))
        total = 0.0
        for b in range(self.num_batches):
            peak = np.maximum(bottleneck[b], _max_excluding(self.recv[b], p, q))
            busy = np.maximum(compute[b], _max_excluding(self.compute[b], p, q))
            mean = (self.recv[b].sum() + delta_p[b] + delta_p[b].T) / self.num_gpus
            total = total + 2 * peak + busy + self.mean_weight * 2 * mean
        gains = self.surrogate() - total / self.num_batches
        expert = self.item_expert
        allowed = (p != q) & (expert[:, None] != expert[None, :])
        allowed &= ~self.holds[expert[None, :], gpu[:, None]]  # j's expert already on i's GPU
        allowed &= ~self.holds[expert[:, None], gpu[None, :]]
        allowed &= np.triu(np.ones((n, n), dtype=bool), 1)
        return np.where(allowed, gains, -np.inf)

    def pick_round(self, gains: np.ndarray, max_swaps: int) -> list[tuple[int, int]]:
        """Improving swaps on pairwise-disjoint GPUs, best first, each kept only if the round still improves."""
        flat = gains.ravel()
        count = int(min(np.count_nonzero(flat > TOLERANCE), 4 * self.num_gpus + 16))
        if count == 0:
            return []
        best = np.argpartition(-flat, count - 1)[:count]
        best = best[np.argsort(-flat[best], kind="stable")]
        n, B, gpu = self.num_items, self.num_batches, self.gpu_of_item
        U = self.U.reshape(B, n)
        W = self.W.reshape(B, n, n)
        N = self.N.reshape(B, n, self.num_gpus)
        lt = self.item_load * self.pair_seconds
        recv, compute = self.recv.copy(), self.compute.copy()
        used: set[int] = set()
        chosen: list[tuple[int, int]] = []
        score = self.surrogate()
        for code in best:
            i, j = divmod(int(code), n)
            p, q = int(gpu[i]), int(gpu[j])
            if p in used or q in used:
                continue
            trial_recv, trial_comp = recv.copy(), compute.copy()
            trial_recv[:, p] += -U[:, i] + W[:, i, j] + N[:, j, p]
            trial_recv[:, q] += -U[:, j] + W[:, j, i] + N[:, i, q]
            trial_comp[:, p] += lt[:, j] - lt[:, i]
            trial_comp[:, q] += lt[:, i] - lt[:, j]
            trial = self.surrogate(trial_recv, trial_comp)
            if trial < score - TOLERANCE:
                recv, compute, score = trial_recv, trial_comp, trial
                chosen.append((i, j))
                used.update((p, q))
                if len(chosen) >= max_swaps:
                    break
        return chosen

    def apply(self, swaps: list[tuple[int, int]]) -> None:
        """Swap the GPUs of each pair of physical experts, updating the tables incrementally."""
        if not swaps:
            return
        moved = np.array([x for pair in swaps for x in pair], dtype=np.int64)
        rows = np.unique(np.concatenate([self._tokens_of[i] for i in moved]))
        rebuild = 2 * rows.size > self.item_of.shape[0]  # one full pass beats removing and re-adding most tokens
        if not rebuild:
            self._add(rows, -1.0)
        for i, j in swaps:
            p, q = self.gpu_of_item[i], self.gpu_of_item[j]
            self.holds[self.item_expert[i], p] = False
            self.holds[self.item_expert[j], q] = False
            self.gpu_of_item[i], self.gpu_of_item[j] = q, p
            self.holds[self.item_expert[i], q] = True
            self.holds[self.item_expert[j], p] = True
        if rebuild:
            self.build()
            return
        self.presence[rows] = self._presence(rows)
        self._add(rows, +1.0)
        self._update_compute()

    def batch_hits(self) -> np.ndarray:
        """``[B, G, G]`` hit counts (see the class docstring), rounded to integers."""
        return np.rint(self.hits.reshape(self.num_batches, self.num_gpus, self.num_gpus)).astype(np.int64)

    def batch_compute_pairs(self) -> np.ndarray:
        """``[B, G]`` token-expert pairs each GPU serves per batch."""
        onehot = np.zeros((self.num_items, self.num_gpus))
        onehot[np.arange(self.num_items), self.gpu_of_item] = 1.0
        return np.rint(self.item_load @ onehot).astype(np.int64)

    def table(self) -> np.ndarray:
        """``[G, S]`` expert ids per GPU (physical experts in index order)."""
        order = np.lexsort((np.arange(self.num_items), self.gpu_of_item))
        return self.item_expert[order].reshape(self.num_gpus, -1)


def _max_excluding(values: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Max of ``values [G]`` over GPUs other than ``p`` and ``q`` (broadcast), from its three largest."""
    order = np.argsort(-values, kind="stable")[:3]
    top = values[order]
    if top.size < 3:
        top = np.r_[top, np.full(3 - top.size, -np.inf)]
        order = np.r_[order, np.full(3 - order.size, -1)]
    first_ok = (p != order[0]) & (q != order[0])
    second_ok = (p != order[1]) & (q != order[1])
    return np.where(first_ok, top[0], np.where(second_ok, top[1], top[2]))


def _tokens_of_items(item_of: np.ndarray, num_items: int) -> list[np.ndarray]:
    """For each physical expert, the (sorted) tokens it serves."""
    rows, cols = np.nonzero(item_of >= 0)
    items = item_of[rows, cols]
    order = np.argsort(items, kind="stable")
    bounds = np.searchsorted(items[order], np.arange(num_items + 1))
    return [rows[order[bounds[i]:bounds[i + 1]]] for i in range(num_items)]


def local_search(state: SwapState, objective, deadline: float | None = None, max_rounds: int = 100000,
                 refresh=None, bound=None) -> tuple[np.ndarray, float, SearchStats]:
    """Improve ``state`` by rounds of swaps until no swap helps, the deadline, or ``max_rounds``.

    Each round takes the improving swaps on disjoint GPU pairs (:meth:`SwapState.pick_round`) and
    keeps them if ``objective`` improves; otherwise it tries the best single swaps.

    Args:
        state: the placement to improve (changed in place).
        objective: ``f(state) -> float``, the cost model's estimate under the state's current
            token-to-replica assignment (lower is better).
        deadline: ``time.perf_counter()`` value to stop at (None: run to convergence).
        refresh: optional ``f(state) -> SwapState`` called after each kept round: re-runs the
            replica policy (which replica serves which token) and rebuilds the tables. Only
            refreshed values count as true; after :data:`MAX_STALE_REFRESHES` refreshes in a row
            that do not beat the best true value the search stops.
        bound: optional ``f(state) -> float`` that no kept round may raise (the estimated layer time,
            where ``objective`` adds a tie-breaker that could otherwise trade some of it away), so
            the result's bound is never above the start's.

    Returns:
        ``(best [G, S] table, its objective, stats)``.
    """
    started = time.perf_counter()
    stats = SearchStats()
    limit = bound if bound is not None else (lambda _: 0.0)
    best = objective(state)
    best_limit = current_limit = limit(state)
    best_table = state.table()
    stats.history.append(best)
    current = best
    stale = 0
    while stats.rounds < max_rounds:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        gains = state.swap_gains()
        stats.rounds += 1
        first = state.pick_round(gains, state.num_gpus)
        if not first:
            stats.converged = True
            break
        improved = False
        for attempt in range(4):
            swaps = first if attempt == 0 else state.pick_round(gains, 1)
            if not swaps:
                break
            state.apply(swaps)
            value = objective(state)
            if value < current - TOLERANCE * max(1.0, abs(current)):
                value_limit = limit(state)
                if value_limit <= current_limit:  # exact: the bound may tie, never rise
                    current, current_limit = value, value_limit
                    stats.swaps += len(swaps)
                    improved = True
                    break
            state.apply(list(reversed(swaps)))
            stats.rejected_rounds += 1
            if len(swaps) == 1:
                i, j = swaps[0]
                gains[min(i, j), max(i, j)] = -np.inf  # not offered again this round
        if not improved:
            stats.converged = True
            break
        if refresh is not None:
            state = refresh(state)
            current, current_limit = objective(state), limit(state)
            if current >= best - TOLERANCE * max(1.0, abs(best)) or current_limit > best_limit:
                stale += 1
                if stale >= MAX_STALE_REFRESHES:
                    stats.converged = True
                    break
                continue
            stale = 0
        best, best_limit, best_table = current, current_limit, state.table()
        stats.history.append(best)
    stats.seconds = time.perf_counter() - started
    return best_table, best, stats
