"""The routelens placement optimizer: minimise the estimated time of a layer.

For one MoE layer with ``E`` experts, ``G`` GPUs of ``S`` slots (``G·S = E + R``, ``R`` redundant),
minimise the cost model's estimate on the fit tokens (:func:`~routelens.placement.cost.placement_objective`,
the mean over consecutive batches of them, step 0):
by default (``objective="layer"``) dispatch + the busiest GPU's expert compute + combine, the time
the layer waits for; ``objective="a2a"`` leaves the compute straggler out. A small tie-breaker (the
mean GPU busy time) prefers fewer copies among placements with the same bottlenecks, but no step
may raise the estimated layer time itself.

0. **Batches.** Routing drifts along the text, and experts that are used together drift together:
   a placement that balances the fit tokens' totals exactly, grouping co-activated experts, finds
   their drift added up on one GPU on new tokens. So the fit tokens are cut, in text order, into
   :func:`default_batches` consecutive batches, each scored as its own All-to-All and expert compute
   (tokens spread evenly over the GPUs), and the search minimises the **mean over batches** of the
   estimate: a GPU that is the straggler in some batches costs there even when the totals balance.
   With one batch this is the estimate on all fit tokens at once.

1. **Base slots.** The swap search places each expert once, plus the fewest replicas that give every
   GPU the same number of slots (:func:`base_replicas`; usually none), with EPLB's replica counts.
2. **Seeds.** Several starting placements, each a ``[G, S]`` table:

   - ``"coact"`` — co-activation-aware greedy packing: physical experts from heaviest to
     lightest, each onto the GPU (with a free slot) where it adds the least receive time *given
     the experts already there* — a token already sent to that GPU costs nothing more — plus its
     compute (the longest-processing-time rule, made co-activation aware);
   - ``"lpt"`` — plain load-balanced packing (:func:`~routelens.placement.baselines.greedy_table`);
   - ``"kahypar"`` — Mt-KaHyPar km1 with load weights (tokens as hyperedges), tried first by
     default when installed and ``E <= 128`` (:func:`default_seeds`);
   - ``"mincut"`` — ``coact`` improved by the swap search with the mean receive volume weighted
     :data:`FANOUT_WEIGHT` × (fan-out first, balance later); only when asked for.

3. **Local search** (:mod:`.search`) from each seed: rounds of swaps of physical experts
   between GPUs, chosen on exact incremental receive/compute tables and kept only when the full
   cost model's estimate (send side, topology and replica choice included) improves and the
   estimated layer time does not rise.

4. **Seed selection on a validation block.** Routing drifts along the text, and a search that
   balances the fit tokens perfectly can overfit them. With several seeds, each is searched on the
   first 75% of the fit tokens and scored (same cost model) on the last 25%; the seed whose
   result holds up best there is rebuilt and searched again on all fit tokens.

5. **Kicks** (iterated local search). A swap search stops in a local minimum of a bottleneck
   objective: no single swap lowers the busiest GPU. ``kicks`` times, the best placement so far
   gets a few random swaps and is searched again; the result is kept when the cost model's estimate
   on the fit tokens improves (default :data:`DEFAULT_KICKS` when ``E <= 128``, none above, where a
   layer's search is costly and the scale budget matters).

6. **Replicas by the cost model.** The other ``R - base`` redundant slots (a multiple of ``G``) are
   filled one replica at a time by :func:`~routelens.placement.replica_search.add_replicas`: the
   ``(expert, GPU)`` that most lowers the estimated layer time, which under ``nearest-then-least-loaded``
   puts replicas where their tokens already are (next to the experts they are used with). A swap
   search with the replica policy re-run follows; EPLB's table on the same tokens is the floor
   (kept instead when its estimated layer time is lower; plans record which, ``replicas``).

Everything is deterministic for a given
``seed`` (it draws the fit-token subsample and the kicks); a time budget can cut the search short (then the
result depends on the machine's speed).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..graphs import load_counts
from .baselines import eplb_table, greedy_table, replica_counts, slots_per_gpu
from .cost import CostModel, estimate_time, placement_objective, traffic_from_hits
from .objectives import DEFAULT_OBJECTIVE, get_objective
from .replica_search import EXACT_CANDIDATES, add_replicas
from .replicas import fill_slots
from .search import SwapState, local_search
from .traffic import assign_replicas, token_source_gpu

DEFAULT_SEEDS = ("coact", "lpt")
SEEDS = ("coact", "lpt", "mincut", "kahypar")
KAHYPAR_SEED_MAX_EXPERTS = 128  # above this the Mt-KaHyPar start costs more than the whole search
VALIDATION_FRACTION = 0.25  # last part of the fit tokens that picks among the seeds
MIN_VALIDATION_TOKENS = 512  # fewer validation tokens than this: no selection, the first seed is searched
SELECTION_SHARE = 0.6  # of a time budget, spent on trying the seeds
BASE_SHARE = 0.7  # of a time budget, spent on the base placement when replicas follow
FANOUT_WEIGHT = 20.0  # mean-volume weight of the "mincut" seed's search: fan-out first, balance later
MAX_FIT_TOKENS = 32768
DEFAULT_BATCHES = 8  # consecutive batches the fit tokens are scored in (step 0), E <= BATCHES_MAX_EXPERTS
BATCHES_MAX_EXPERTS = 128  # above: one batch (each batch multiplies the [n, n] swap tables)
MIN_BATCH_TOKENS = 128  # and 4 G: below, a batch's loads are sampling noise that hides even planted groups
DEFAULT_KICKS = 16  # random restarts of the local search from the best placement (E <= KICKS_MAX_EXPERTS)
KICKS_MAX_EXPERTS = 128
KICK_SWAPS = 12  # random swaps per kick
EXACT_CANDIDATES_LARGE = 3  # replica search: candidates scored exactly per step above EXACT_MAX_EXPERTS
EXACT_MAX_EXPERTS = 128


def default_batches(num_experts: int) -> int:
    """Consecutive batches the fit tokens are scored in by default: :data:`DEFAULT_BATCHES` up to
    ``E = BATCHES_MAX_EXPERTS``, one above (there every batch multiplies the ``[n, n]`` swap tables,
    and the scale budget matters). A batch never has fewer than ``max(4 G, 128)`` tokens (:class:`_Problem`):
    200 fit tokens of 4 planted groups scored in 8 batches of 25 split the groups for the noise in each
    batch's compute balance.

    Measured on held-out tokens (docs/placement.md, "Benchmark"): with 8 batches instead of one the
    plan's compute max/mean on new tokens fell on the demo model and the tiny models at hidden size
    4096, and its layer time with it.
    """
    return DEFAULT_BATCHES if num_experts <= BATCHES_MAX_EXPERTS else 1


def default_exact_candidates(num_experts: int) -> int:
    """Replica candidates scored with the full cost model per step (:func:`~.replica_search.add_replicas`):
    :data:`~.replica_search.EXACT_CANDIDATES` up to ``E = 128``, :data:`EXACT_CANDIDATES_LARGE` above.

    Each exact score re-runs the replica policy on every fit token, the replica search's main cost;
    on a DeepSeek-V3-shaped trace (256 experts, 64 GPUs, 64 replicas) 3 instead of 6 changed no plan
    and placed 3 layers of 131k fit tokens in 55 s instead of 86 s on one core.

        >>> default_exact_candidates(64), default_exact_candidates(256)
        (6, 3)
    """
    return EXACT_CANDIDATES if num_experts <= EXACT_MAX_EXPERTS else EXACT_CANDIDATES_LARGE


def default_seeds(num_experts: int) -> tuple[str, ...]:
    """Starts tried by default: Mt-KaHyPar's load-weighted min-cut partition first when installed and
    ``E <= KAHYPAR_SEED_MAX_EXPERTS``, then ``coact`` and ``lpt``."""
    from .hypergraph import mtkahypar_available

    if num_experts <= KAHYPAR_SEED_MAX_EXPERTS and mtkahypar_available():
        return ("kahypar",) + DEFAULT_SEEDS
    return DEFAULT_SEEDS


@dataclass
class LayerResult:
    """The optimizer's answer for one layer."""

    table: np.ndarray
    objective_s: float
    seed_name: str
    seeds: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    swaps: int = 0
    seconds: float = 0.0
    converged: bool = True
    kicks: int = 0
    kicks_kept: int = 0
    replicas: str | None = None  # who placed the replicas the base search left out: "cost model" or "eplb"
    batches: int = 1  # consecutive batches of the fit tokens the estimate is the mean over

    def info(self) -> dict[str, Any]:
        info = {"objective_us": self.objective_s * 1e6, "seed": self.seed_name,
                "validation_us": {k: v * 1e6 for k, v in self.seeds.items()}, "rounds": self.rounds,
                "swaps": self.swaps, "kicks": self.kicks, "kicks_kept": self.kicks_kept,
                "seconds": round(self.seconds, 3), "converged": self.converged, "batches": self.batches}
        if self.replicas is not None:
            info["replicas"] = self.replicas
        return info


def subsample_tokens(num_tokens: int, max_tokens: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_tokens`` tokens drawn without replacement (all if fewer)."""
    if max_tokens is None or num_tokens <= max_tokens:
        return np.arange(num_tokens)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_tokens, size=max_tokens, replace=False))


class _Problem:
    """One layer's fit tokens and the cost model, shared by every seed's search."""

    def __init__(self, topk_ids, num_experts, num_gpus, redundant, cost: CostModel, policy: str, num_batches: int):
        self.ids = np.asarray(topk_ids, dtype=np.int64)
        self.num_experts, self.num_gpus = int(num_experts), int(num_gpus)
        self.slots = slots_per_gpu(num_experts, num_gpus, redundant)
        self.replicated = redundant > 0
        self.cost, self.policy = cost, policy
        self.topology = cost.topology
        num_tokens = self.ids.shape[0]
        self.num_batches = int(max(1, min(num_batches, num_tokens // max(4 * num_gpus, MIN_BATCH_TOKENS) or 1)))
        self.batch = (np.arange(num_tokens) * self.num_batches) // max(num_tokens, 1)
        self.bounds = np.searchsorted(self.batch, np.arange(self.num_batches + 1))
        # each batch is its own All-to-All: its tokens start evenly over the GPUs
        self.source = np.concatenate([token_source_gpu(int(b - a), num_gpus)
                                      for a, b in zip(self.bounds[:-1], self.bounds[1:])])
        self.valid = self.ids >= 0
        link = self.topology.link_class()
        self.link_seconds = cost.token_bytes * self.topology.seconds_per_byte()[link]
        np.fill_diagonal(self.link_seconds, 0.0)
        self.pair_seconds = cost.expert_flops_per_token / (self.topology.gpu_tflops * 1e12)
        self.load = load_counts(self.ids, num_experts).astype(np.float64)

    def destinations(self, table: np.ndarray) -> np.ndarray:
        return np.concatenate([assign_replicas(self.ids[a:b], self.source[a:b], table, self.policy, self.topology)
                               for a, b in zip(self.bounds[:-1], self.bounds[1:])])

    def state(self, table: np.ndarray) -> SwapState:
        """A search state for ``table``: physical expert = slot, tokens assigned by the replica policy."""
        table = np.asarray(table, dtype=np.int64)
        item_expert = table.ravel()
        gpu_of_item = np.repeat(np.arange(self.num_gpus), self.slots)
        item_at = np.full((self.num_experts, self.num_gpus), -1, dtype=np.int64)
        item_at[item_expert, gpu_of_item] = np.arange(item_expert.size)
        dest = self.destinations(table)
        item_of = np.where(self.valid, item_at[np.maximum(self.ids, 0), np.maximum(dest, 0)], -1)
        return SwapState(item_of, self.source, self.batch, gpu_of_item, item_expert, self.num_experts,
                         self.link_seconds, self.pair_seconds)

    def objective(self, state: SwapState) -> float:
        """Mean over batches of :func:`placement_objective` under the state's token→replica assignment.

        The state's hit counts are exactly what :func:`layer_traffic` counts for that assignment;
        for a state built by :meth:`state` (the replica policy's own choice) this is the true estimate.
        """
        spans = zip(self.bounds[:-1], self.bounds[1:])
        hits, pairs = state.batch_hits(), state.batch_compute_pairs()
        traffic = [traffic_from_hits(hits[i], pairs[i], b - a, self.topology) for i, (a, b) in enumerate(spans)]
        return float(np.mean([placement_objective(t, self.cost, state.mean_weight) for t in traffic]))

    def layer_seconds(self, state: SwapState) -> float:
        """Mean over batches of the estimated layer time (``layer_s``) under the state's assignment: the bound
        a search step may not raise (the objective adds a tie-breaker that could trade it away)."""
        spans = zip(self.bounds[:-1], self.bounds[1:])
        hits, pairs = state.batch_hits(), state.batch_compute_pairs()
        return float(np.mean([estimate_time(traffic_from_hits(hits[i], pairs[i], b - a, self.topology), self.cost)["layer_s"]
                              for i, (a, b) in enumerate(spans)]))

    def table_objective(self, table: np.ndarray) -> tuple[float, float]:
        """``(objective, layer seconds)`` of a ``[G, S]`` table, tokens assigned by the replica policy."""
        state = self.state(table)
        return self.objective(state), self.layer_seconds(state)

    def refresh(self, state: SwapState) -> SwapState:
        fresh = self.state(state.table())
        fresh.mean_weight = state.mean_weight
        return fresh


def coact_seed(problem: _Problem) -> np.ndarray:
    """``[G, S]`` co-activation-aware greedy packing (see the module docstring)."""
    ids, num_gpus, slots = problem.ids, problem.num_gpus, problem.slots
    counts = replica_counts(problem.load, num_gpus * slots, max_replicas=num_gpus) if problem.replicated else \
        np.ones(problem.num_experts, dtype=np.int64)
    # which replica serves a token before anything is placed: split by where the token starts,
    # so a replica ends up serving one block of GPUs (a node, when the replicas are spread over nodes)
    first_item = np.r_[0, np.cumsum(counts)[:-1]]
    safe = np.maximum(ids, 0)
    replica = (problem.source[:, None] * counts[safe]) // num_gpus
    item_of = np.where(problem.valid, first_item[safe] + replica, -1)
    item_expert = np.repeat(np.arange(problem.num_experts), counts)
    item_load = np.bincount(item_of[problem.valid], minlength=item_expert.size).astype(np.float64)
    rows, cols = np.nonzero(problem.valid)
    by_item = np.argsort(item_of[rows, cols], kind="stable")
    bounds = np.searchsorted(item_of[rows, cols][by_item], np.arange(item_expert.size + 1))
    presence = np.zeros((ids.shape[0], num_gpus), dtype=bool)
    recv = np.zeros(num_gpus)
    compute = np.zeros(num_gpus)
    filled = np.zeros(num_gpus, dtype=np.int64)
    holds = np.zeros((problem.num_experts, num_gpus), dtype=bool)
    table = np.full((num_gpus, slots), -1, dtype=np.int64)
    deferred: list[int] = []
    # experts with several replicas first (they need distinct GPUs), then heaviest first
    for i in np.lexsort((-item_load, -counts[item_expert])):
        tokens = rows[by_item[bounds[i]:bounds[i + 1]]]
        seconds = problem.link_seconds[problem.source[tokens]]  # [a, G]
        added = (seconds * ~presence[tokens]).sum(0)
        pair = item_load[i] * problem.pair_seconds
        score = 2 * (recv + added) + compute + pair
        score[(filled >= slots) | holds[item_expert[i]]] = np.inf
        g = int(np.argmin(score))
        if not np.isfinite(score[g]):  # every GPU with room holds this expert: fill_slots makes room at the end
            deferred.append(int(item_expert[i]))
            continue
        table[g, filled[g]] = item_expert[i]
        filled[g] += 1
        holds[item_expert[i], g] = True
        presence[tokens, g] = True
        recv[g] += added[g]
        compute[g] += pair
    return fill_slots(table, np.asarray(deferred, dtype=np.int64), problem.load / counts) if deferred else table


def seed_table(name: str, problem: _Problem, seed: int) -> np.ndarray:
    if name == "coact":
        return coact_seed(problem)
    if name == "lpt":
        return greedy_table(problem.load, problem.num_gpus, problem.num_gpus * problem.slots - problem.num_experts)
    if name == "mincut":
        # fan-out first: swap search on (almost) only the mean receive volume, from the greedy seed
        state = problem.state(coact_seed(problem))
        state.mean_weight = FANOUT_WEIGHT
        table, _, _ = local_search(state, problem.objective, refresh=problem.refresh if problem.replicated else None)
        return table
    if name == "kahypar":
        from .hypergraph import KAHYPAR_MAX_TOKENS, kahypar_table

        # the partition only starts the search: the same token cap as the kahypar baseline keeps it to a
        # few seconds a layer (the search itself then scores every fit token)
        ids = problem.ids[subsample_tokens(problem.ids.shape[0], KAHYPAR_MAX_TOKENS, seed)]
        return kahypar_table(ids, problem.num_experts, problem.num_gpus,
                             problem.num_gpus * problem.slots - problem.num_experts, weights="load", seed=seed)
    raise InputError(f"unknown optimizer seed '{name}' (known: {', '.join(SEEDS)})")


def optimize_layer(topk_ids: np.ndarray, num_experts: int, num_gpus: int, cost: CostModel, redundant: int = 0,
                   policy: str = "nearest-then-least-loaded", seed: int = 0, seeds=None,
                   max_fit_tokens: int | None = MAX_FIT_TOKENS, num_batches: int | None = None,
                   objective: str = DEFAULT_OBJECTIVE, deadline: float | None = None,
                   kicks: int | None = None) -> LayerResult:
    """Optimise one layer's placement on its fit tokens.

    Args:
        topk_ids: ``[T, k]`` expert ids of the fit tokens (``-1`` = dropped slot).
        num_experts, num_gpus, redundant: ``E``, ``G``, ``R`` (``(E + R) % G == 0``).
        cost: the cluster and token/expert sizes; its topology must have ``G`` GPUs.
        policy: replica policy the plan will be served with.
        seed: draws the subsample of at most ``max_fit_tokens`` tokens the search scores on.
        seeds: starting placements (see :data:`SEEDS`; default :func:`default_seeds`). With several,
            each is searched on the first 75% of the fit tokens and the one scoring best on the
            last 25% is searched again on all of them.
        num_batches: consecutive batches of the fit tokens, each scored as its own layer; the search
            minimises the mean over batches (None: :func:`default_batches`; 1 = all fit tokens at once).
        objective: ``"layer"`` (default) minimises the estimated layer time: dispatch + the busiest
            GPU's expert compute + combine; ``"a2a"`` only the dispatch + combine bottleneck.
        deadline: ``time.perf_counter()`` value by which to stop searching (None: converge).
        kicks: random restarts of the search from the best placement (None: :func:`default_kicks`).

    Returns:
        :class:`LayerResult` with the ``[G, S]`` table and the objective on the (subsampled) fit tokens.
        No step raises the estimated layer time (``objective="layer"``; the All-to-All time for
        ``"a2a"``), mean over the batches, of the placement it starts from on those tokens.
    """
    started = time.perf_counter()
    if cost.topology.num_gpus != num_gpus:
        raise InputError(f"the cost model's topology has {cost.topology.num_gpus} GPUs, the placement {num_gpus}")
    cost = get_objective(objective).cost_model(cost)  # raises for an unknown name
    ids = np.asarray(topk_ids, dtype=np.int64)
    ids = ids[subsample_tokens(ids.shape[0], max_fit_tokens, seed)]
    seeds = tuple(seeds) if seeds else default_seeds(num_experts)
    kicks = default_kicks(num_experts) if kicks is None else int(kicks)
    num_batches = default_batches(num_experts) if num_batches is None else int(num_batches)
    if num_batches < 1:
        raise InputError(f"num_batches must be 1 or more, got {num_batches}")
    base_redundant = base_replicas(num_experts, num_gpus, redundant)
    search_deadline = _share(deadline, BASE_SHARE) if base_redundant < redundant else deadline
    result = _search(ids, num_experts, num_gpus, cost, base_redundant, policy, seed, seeds, num_batches,
                     search_deadline, kicks)
    if base_redundant < redundant:
        result = _place_replicas(result, ids, num_experts, num_gpus, cost, redundant, policy, num_batches, deadline)
    result.seconds = time.perf_counter() - started
    return result


def base_replicas(num_experts: int, num_gpus: int, redundant: int) -> int:
    """Redundant slots the swap search places with the experts (EPLB's replica counts): the fewest
    that give every GPU the same number of slots; the other ``redundant - base`` (a multiple of
    ``G``) are added afterwards by :func:`~routelens.placement.replica_search.add_replicas`.

    Example: 64 experts, 16 GPUs, 16 redundant slots: 0 here, 16 by the replica search.
        >>> base_replicas(64, 16, 16), base_replicas(60, 8, 12), base_replicas(6, 8, 10)
        (0, 4, 2)
    """
    base = (-num_experts) % num_gpus
    return min(base, int(redundant))


def _search(ids, num_experts, num_gpus, cost, redundant, policy, seed, seeds, num_batches, deadline,
            kicks) -> LayerResult:
    """Starts, seed selection on the validation block, swap search and kicks (steps 2-5 of the module docstring)."""
    problem = _Problem(ids, num_experts, num_gpus, redundant, cost, policy, num_batches)
    refresh = problem.refresh if problem.replicated else None
    cut = int(round(ids.shape[0] * (1 - VALIDATION_FRACTION)))
    scores: dict[str, float] = {}
    if len(seeds) > 1 and min(cut, ids.shape[0] - cut) >= MIN_VALIDATION_TOKENS:
        # seed selection on tokens the search did not see: routing drifts along the text, so the
        # start that holds up on the last block of the fit tokens is the one to trust
        train = _Problem(ids[:cut], num_experts, num_gpus, redundant, cost, policy, num_batches)
        check = _Problem(ids[cut:], num_experts, num_gpus, redundant, cost, policy, 1)
        selection_end = _share(deadline, SELECTION_SHARE)
        for n, name in enumerate(seeds):
            share = _share(selection_end, 1.0 / (len(seeds) - n))  # what is left of the selection time, evenly
            table, _, _ = local_search(train.state(seed_table(name, train, seed)), train.objective, deadline=share,
                                       refresh=train.refresh if train.replicated else None, bound=train.layer_seconds)
            scores[name] = check.objective(check.state(table))
        chosen = min(scores, key=scores.get)
    else:
        chosen = seeds[0]
    start = seed_table(chosen, problem, seed)  # the chosen start, rebuilt on all fit tokens
    table, value, stats = local_search(problem.state(start), problem.objective, deadline=deadline, refresh=refresh,
                                       bound=problem.layer_seconds)
    kept = 0
    if kicks > 0:
        table, value, kept = kick_search(problem, table, value, kicks, np.random.default_rng(seed), deadline)
    return LayerResult(table, value, chosen, seeds=scores, rounds=stats.rounds, swaps=stats.swaps,
                       converged=stats.converged, kicks=kicks, kicks_kept=kept, batches=problem.num_batches)


def _place_replicas(base: LayerResult, ids, num_experts, num_gpus, cost, redundant, policy, num_batches,
                    deadline) -> LayerResult:
    """Step 6 of the module docstring: the replicas the base placement left out, greedily by the cost
    model, a swap search with the replica policy re-run, and EPLB's table as the floor."""
    problem = _Problem(ids, num_experts, num_gpus, redundant, cost, policy, num_batches)
    extra = problem.slots - base.table.shape[1]
    partial = np.concatenate([base.table, np.full((num_gpus, extra), -1, dtype=np.int64)], axis=1)
    table = add_replicas(partial, ids, cost, policy, source_gpu=problem.source, num_experts=num_experts,
                         exact_candidates=default_exact_candidates(num_experts), deadline=deadline)
    table, value, stats = local_search(problem.state(table), problem.objective, deadline=deadline,
                                       refresh=problem.refresh, bound=problem.layer_seconds)
    layer_s = problem.layer_seconds(problem.state(table))
    floor = eplb_table(problem.load, num_gpus, redundant, cost.topology.num_nodes)
    floor_value, floor_layer_s = problem.table_objective(floor)
    replicas = "cost model"
    if floor_layer_s < layer_s:  # never worse than EPLB's replicas on the fit tokens
        table, value, replicas = floor, floor_value, "eplb"
    return dataclasses.replace(base, table=table, objective_s=value, rounds=base.rounds + stats.rounds,
                               swaps=base.swaps + stats.swaps, converged=base.converged and stats.converged,
                               replicas=replicas)


def default_kicks(num_experts: int) -> int:
    """Kicks tried by default: :data:`DEFAULT_KICKS` up to ``E = 128``, none above."""
    return DEFAULT_KICKS if num_experts <= KICKS_MAX_EXPERTS else 0


def kick_search(problem: _Problem, table: np.ndarray, value: float, kicks: int, rng: np.random.Generator,
                deadline: float | None = None) -> tuple[np.ndarray, float, int]:
    """Iterated local search: ``kicks`` times, perturb the best ``[G, S]`` table by :data:`KICK_SWAPS`
    random swaps of experts between GPUs (never two replicas of one expert on a GPU), search again,
    keep it if ``problem.objective`` improves and the estimated layer time does not rise.

    Returns:
        ``(best table, its objective, kicks that improved it)``.
    """
    refresh = problem.refresh if problem.replicated else None
    best_table, best, kept = table, value, 0
    best_layer_s = problem.layer_seconds(problem.state(table))
    for _ in range(kicks):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        state = problem.state(best_table)
        for _ in range(KICK_SWAPS):
            i, j = (int(x) for x in rng.choice(state.num_items, size=2, replace=False))
            p, q = int(state.gpu_of_item[i]), int(state.gpu_of_item[j])
            a, b = int(state.item_expert[i]), int(state.item_expert[j])
            if p == q or a == b or state.holds[a, q] or state.holds[b, p]:
                continue
            state.apply([(i, j)])
        if refresh is not None:
            state = refresh(state)
        candidate, candidate_value, _ = local_search(state, problem.objective, deadline=deadline, refresh=refresh,
                                                    bound=problem.layer_seconds)
        if candidate_value < best - 1e-12 * max(1.0, abs(best)):
            candidate_layer_s = problem.layer_seconds(problem.state(candidate))
            if candidate_layer_s <= best_layer_s:  # the tie-breaker may not buy a slower layer
                best_table, best, best_layer_s, kept = candidate, candidate_value, candidate_layer_s, kept + 1
    return best_table, best, kept


def _share(deadline: float | None, fraction: float) -> float | None:
    """A deadline ``fraction`` of the way from now to ``deadline``."""
    if deadline is None:
        return None
    now = time.perf_counter()
    return now + max(0.0, deadline - now) * fraction
