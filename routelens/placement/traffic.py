"""Traffic of one expert-parallel MoE layer: where tokens start, which replica serves them, which GPUs they visit.

The one definition of who sends what to whom. The cost model (:mod:`routelens.placement.cost`),
the re-routing metrics (:mod:`routelens.reroute.metrics`) and the replay's host-side routes
(:mod:`routelens.runner.routing`) all call these functions, so their destinations, dispatch
matrices and bytes are equal by construction (tests/placement/test_traffic.py checks it).

Under expert parallelism (GShard, DeepSpeed-MoE, DeepEP) every token starts on one GPU and is sent
once to every *distinct* other GPU that serves one of its top-k experts (the dispatch All-to-All),
and comes back the same way (the combine). The C2R paper (Zhang et al., NAACL 2025,
arXiv:2504.01337) counts traffic the same way: one copy per device, not per expert. Every function
here is a pure, deterministic function of numpy arrays:

- :func:`token_source_gpu` — ``[T]`` where tokens start: token ``t`` of ``T`` on GPU ``t·G // T``;
- :func:`assign_replicas` — ``[T, k]`` the GPU serving each ``(token, slot)`` under a
  :class:`ReplicaPolicy` of :data:`REPLICA_POLICIES`;
- :func:`route_tokens` — both at once for one batch (the All-to-All of one forward pass);
  :func:`plan_topology` — the nodes a plan's replica policy sees;
- :func:`hit_matrix` — ``[G, G]`` tokens starting on GPU ``a`` that GPU ``b`` serves;
- :func:`dispatch_matrix_from_dest` — the same without the diagonal: copies ``a`` sends ``b``;
- :func:`gpus_visited`, :func:`gpus_per_token` — the GPUs a token visits and their mean count.

Worked example: 2 GPUs, expert 0 replicated on both, one token starting on each GPU. Each token's
expert 0 is served at home, and each sends one copy to the other GPU for its other expert:

>>> table = np.array([[0, 1], [2, 0]])      # GPU 0 holds experts 0, 1; GPU 1 holds 2, 0
>>> topk_ids = np.array([[0, 2], [0, 1]])
>>> source = token_source_gpu(2, 2)
>>> dest = assign_replicas(topk_ids, source, table)
>>> source.tolist(), dest.tolist()
([0, 1], [[0, 1], [1, 0]])
>>> dispatch_matrix_from_dest(source, dest, 2).tolist()
[[0, 1], [1, 0]]
>>> gpus_per_token(dest)
2.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError, PlanError
from ..plan import Plan
from .topology import Topology, as_topology

REPLICA_BLOCK_TOKENS = 256
"""Tokens whose replica choices see the same GPU loads (``nearest-then-least-loaded``).

Part of the policy's definition: loads are refreshed after every block of this many tokens and
slot, so any caller that passes the same arrays gets the same destinations."""

TRAFFIC_CHUNK_TOKENS = 65536
"""Tokens per chunk in :func:`hit_matrix` / :func:`gpus_visited`: bounds their scratch memory."""

DEFAULT_REPLICA_POLICY = "nearest-then-least-loaded"


# --------------------------------------------------------------------------- where tokens are
def token_source_gpu(num_tokens: int, num_gpus: int) -> np.ndarray:
    """``[T]`` GPU each token starts on: token ``t`` on GPU ``t·G // T``.

    Contiguous blocks whose sizes differ by at most one: rank ``r`` holds tokens
    ``[⌈r·T/G⌉, ⌈(r+1)·T/G⌉)`` (:func:`rank_token_range`).

    Raises:
        InputError: fewer than one GPU.

    Example:
        >>> token_source_gpu(10, 4).tolist()
        [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    """
    if num_gpus < 1:
        raise InputError(f"need at least one GPU, got {num_gpus}")
    return (np.arange(num_tokens, dtype=np.int64) * num_gpus) // max(int(num_tokens), 1)


def rank_token_range(num_tokens: int, num_gpus: int, rank: int) -> tuple[int, int]:
    """``(start, end)`` of the tokens GPU ``rank`` holds under :func:`token_source_gpu`.

    Example:
        >>> [rank_token_range(10, 4, r) for r in range(4)]
        [(0, 3), (3, 5), (5, 8), (8, 10)]
    """
    start = -(-rank * num_tokens // num_gpus)
    end = -(-(rank + 1) * num_tokens // num_gpus)
    return start, end


def expert_holders(table: np.ndarray, num_experts: int | None = None) -> np.ndarray:
    """``[E, G]`` bool: ``holders[e, g]`` is True when GPU ``g`` holds a replica of expert ``e``.

    Args:
        table: ``[G, S]`` expert id in each GPU slot (a plan layer's ``gpu_experts``).
        num_experts: ``E`` (default: largest id + 1).

    Raises:
        PlanError: ``table`` is not two-dimensional.
    """
    table = np.asarray(table, dtype=np.int64)
    if table.ndim != 2:
        raise PlanError(f"a placement table must be [GPUs, slots], got shape {table.shape}")
    num_experts = int(table.max()) + 1 if num_experts is None else int(num_experts)
    holders = np.zeros((num_experts, table.shape[0]), dtype=bool)
    holders[table.ravel(), np.repeat(np.arange(table.shape[0]), table.shape[1])] = True
    return holders


def replica_lists(holders: np.ndarray) -> np.ndarray:
    """``[E, R]`` GPUs holding each expert, ascending, padded with ``G`` (R = most replicas of an expert).

    Args:
        holders: ``[E, G]`` bool (:func:`expert_holders`).
    """
    num_gpus = holders.shape[1]
    counts = holders.sum(1)
    width = max(int(counts.max(initial=0)), 1)
    lists = np.full((holders.shape[0], width), num_gpus, dtype=np.int64)
    experts, gpus = np.nonzero(holders)  # row-major: GPUs ascending within an expert
    rank = np.arange(experts.size) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)
    lists[experts, rank] = gpus
    return lists


def plan_topology(plan: Plan) -> Topology:
    """The nodes a plan's replica policy sees: its stored topology, else ``num_nodes × gpus_per_node``.

    Raises:
        PlanError: the stored topology is malformed.
    """
    if plan.topology is not None:
        return Topology.from_json(plan.topology)
    return Topology(num_nodes=plan.num_nodes, gpus_per_node=plan.gpus_per_node)


def _check_ids(topk_ids, num_experts: int) -> np.ndarray:
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise InputError(f"topk_ids must be a [tokens, k] array, got shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.max() >= num_experts or ids.min() < -1):
        bad = int(ids.max()) if ids.max() >= num_experts else int(ids.min())
        raise PlanError(f"topk_ids holds expert {bad}, outside the plan's [0, {num_experts}) (and -1 = dropped)")
    return ids


# --------------------------------------------------------------------------- replica policies
@dataclass(frozen=True)
class ReplicaChoice:
    """What a replica policy decides from (one layer, one batch).

    Attributes:
        dest: ``[T, k]`` int64, each slot's lowest-numbered replica (``-1`` = dropped slot).
        ids: ``[T, k]`` int64 expert ids.
        flexible: ``[T, k]`` bool, slots whose expert has several replicas (the ones to decide).
        replicas: ``[E, R]`` GPUs holding each expert, ascending, padded with ``G``
            (:func:`replica_lists`).
        source_gpu: ``[T]`` GPU each token starts on.
        node_of_gpu: ``[G]`` node of each GPU.
    """

    dest: np.ndarray
    ids: np.ndarray
    flexible: np.ndarray
    replicas: np.ndarray
    source_gpu: np.ndarray
    node_of_gpu: np.ndarray


@dataclass(frozen=True)
class ReplicaPolicy:
    """How a token picks among the replicas of an expert (a plan's ``replica_policy``).

    Attributes:
        name: the name plans store (:data:`routelens.plan.REPLICA_POLICIES`).
        summary: one line for help texts.
        choose: ``(ReplicaChoice) -> [T, k]`` int64 serving GPU of every slot (``-1`` where dropped).
    """

    name: str
    summary: str
    choose: Callable[[ReplicaChoice], np.ndarray]


def _first(choice: ReplicaChoice) -> np.ndarray:
    """``first``: every slot keeps its expert's lowest-numbered replica."""
    return choice.dest


def _round_robin(choice: ReplicaChoice) -> np.ndarray:
    """``round-robin``: the ``r``-th use of an expert (token-major) goes to its ``r mod n``-th replica."""
    dest, ids = choice.dest.copy(), choice.ids
    rows, cols = np.nonzero(choice.flexible)  # row-major: token-major order
    experts = ids[rows, cols]
    order = np.argsort(experts, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(experts[order])) + 1]
    rank = np.empty(experts.size, dtype=np.int64)
    rank[order] = np.arange(experts.size) - np.repeat(starts, np.diff(np.r_[starts, experts.size]))
    num_gpus = choice.node_of_gpu.size
    count = (choice.replicas < num_gpus).sum(1)  # replicas per expert (the lists are padded with G)
    dest[rows, cols] = choice.replicas[experts, rank % count[experts]]
    return dest


def _nearest_then_least_loaded(choice: ReplicaChoice) -> np.ndarray:
    """``nearest-then-least-loaded`` (defined in :func:`assign_replicas`), one (block, slot) step at a time."""
    num_gpus = choice.node_of_gpu.size
    fixed = (choice.dest >= 0) & ~choice.flexible
    load = np.bincount(choice.dest[fixed], minlength=num_gpus + 1)  # [G + 1]: entry G (the padding) stays unused
    sent_by_fixed = np.where(fixed, choice.dest, num_gpus)  # [T, k] GPUs single-replica experts send a token to
    rows, cols = np.nonzero(choice.flexible)
    block = rows // REPLICA_BLOCK_TOKENS
    order = np.lexsort((rows, cols, block))  # steps: (block, slot), tokens ascending inside
    rows, cols, block = rows[order], cols[order], block[order]
    picks = np.empty(rows.size, dtype=np.int64)
    # a few blocks at a time keeps the per-slot arrays of _nearest_steps small (they are [slots, R])
    chunk = block // NEAREST_CHUNK_BLOCKS
    edges = np.r_[0, np.flatnonzero(np.diff(chunk)) + 1, rows.size].tolist()
    for start, end in zip(edges[:-1], edges[1:]):
        picks[start:end] = _nearest_steps(choice, rows[start:end], cols[start:end], block[start:end],
                                          sent_by_fixed, load)
    dest = choice.dest.copy()
    dest[rows, cols] = picks
    return dest


NEAREST_CHUNK_BLOCKS = 64  # blocks whose slots _nearest_steps prepares at once (memory, not semantics)


def _nearest_steps(choice: ReplicaChoice, rows: np.ndarray, cols: np.ndarray, block: np.ndarray,
                   sent_by_fixed: np.ndarray, load: np.ndarray) -> np.ndarray:
    """``[F]`` GPU picked for the flexible slots ``(rows, cols)`` of whole blocks, in step order; updates ``load``.

    Args:
        rows, cols, block: ``[F]`` the slots, sorted by (block, slot, token).
        sent_by_fixed: ``[T, k]`` GPU of each single-replica slot, ``G`` elsewhere.
        load: ``[G + 1]`` token-expert pairs per GPU so far (updated in place).
    """
    num_gpus = choice.node_of_gpu.size
    # what does not change from step to step: each slot's candidates and their tier (0 own GPU,
    # 1 already sent to, 2 same node, 3 elsewhere) as a key that any lower tier beats whatever the loads
    candidates = choice.replicas[choice.ids[rows, cols]]  # [F, R]
    source = choice.source_gpu[rows]
    big = np.int64(choice.ids.size + 1)  # larger than any load
    tier = np.where(np.append(choice.node_of_gpu, -1)[candidates] == choice.node_of_gpu[source][:, None], 2, 3)
    tier[candidates == source[:, None]] = 0
    padding = candidates == num_gpus
    tier[padding] = 4
    new_key = tier * big  # the token is not yet sent to this candidate
    sent_key = np.where(padding, new_key, np.minimum(new_key, big))  # it is: tier 1, unless it is home
    # GPUs each token of the current block is sent to so far, flat [B, G + 1] (column G absorbs the
    # padding); flat indices because one-dimensional takes are the cheapest numpy calls in the loop
    width = num_gpus + 1
    sent = np.zeros(REPLICA_BLOCK_TOKENS * width, dtype=bool)
    lane = (rows - block * REPLICA_BLOCK_TOKENS) * width  # flat offset of the token's row in ``sent``
    sent_index = lane[:, None] + candidates  # [F, R]
    flat_candidates = candidates.ravel()
    first_candidate = np.arange(rows.size) * candidates.shape[1]  # flat index of each slot's first candidate
    picks = np.empty(rows.size, dtype=np.int64)
    step = block * choice.ids.shape[1] + cols
    bounds = np.r_[0, np.flatnonzero(np.diff(step)) + 1, rows.size]
    block_starts = np.r_[True, block[bounds[1:-1]] != block[bounds[:-2]]]
    for start, end, new_block in zip(bounds[:-1].tolist(), bounds[1:].tolist(), block_starts.tolist()):
        if new_block:
            first = int(block[start]) * REPLICA_BLOCK_TOKENS
            tokens = sent_by_fixed[first:first + REPLICA_BLOCK_TOKENS]
            sent[:] = False
            sent[(np.arange(tokens.shape[0]) * width)[:, None] + tokens] = True
        cand = candidates[start:end]
        key = np.where(sent[sent_index[start:end]], sent_key[start:end], new_key[start:end]) + load[cand]
        pick = flat_candidates[first_candidate[start:end] + key.argmin(1)]
        picks[start:end] = pick
        sent[lane[start:end] + pick] = True
        load += np.bincount(pick, minlength=width)
    return picks


REPLICA_POLICIES: dict[str, ReplicaPolicy] = {p.name: p for p in (
    ReplicaPolicy(
        "nearest-then-least-loaded",
        "the token's own GPU, else one it is already sent to, else one in its node, else any; "
        "ties to the least-loaded GPU",
        _nearest_then_least_loaded),
    ReplicaPolicy("round-robin", "the r-th use of an expert goes to its (r mod n)-th replica", _round_robin),
    ReplicaPolicy("first", "always the lowest-numbered replica", _first),
)}
"""The replica policies by name (the registry every caller looks names up in). Definitions: :func:`assign_replicas`."""

POLICIES = tuple(REPLICA_POLICIES)


def replica_policy(name: str) -> ReplicaPolicy:
    """The :class:`ReplicaPolicy` called ``name``.

    Raises:
        PlanError: no policy has that name.
    """
    try:
        return REPLICA_POLICIES[name]
    except KeyError:
        raise PlanError(f"unknown replica policy '{name}' (known: {', '.join(REPLICA_POLICIES)})") from None


def assign_replicas(
    topk_ids: np.ndarray,
    source_gpu: np.ndarray,
    plan_layer_table: np.ndarray,
    policy: str = DEFAULT_REPLICA_POLICY,
    topology: Topology | dict | None = None,
) -> np.ndarray:
    """``[T, k]`` GPU that serves each ``(token, slot)``; ``-1`` where the slot was dropped.

    Experts with one replica are served by their owner. For an expert with several replicas the
    ``policy`` (a name of :data:`REPLICA_POLICIES`) decides:

    - ``"nearest-then-least-loaded"``: the token's own GPU if it holds a replica; else a GPU the
      token is already sent to (for an expert decided earlier: single-replica experts first, then
      slots left to right), which costs no extra copy; else a GPU in the token's node; else any.
      Ties go to the GPU with the least expert-compute load so far (token-expert pairs assigned,
      refreshed every :data:`REPLICA_BLOCK_TOKENS` tokens per slot), then to the lowest index.
      It is not a minimum cover of the token's experts: a token whose two replicated experts share
      a GPU other than its own may still be served by two GPUs.
    - ``"round-robin"``: the ``r``-th use of an expert (token-major order) goes to its
      ``r mod n``-th replica (ascending GPU), ignoring locality.
    - ``"first"``: always the lowest-numbered replica.

    Args:
        topk_ids: ``[T, k]`` expert ids (``-1`` = dropped slot).
        source_gpu: ``[T]`` GPU each token starts on (:func:`token_source_gpu`).
        plan_layer_table: ``[G, S]`` expert id in each GPU slot.
        policy: a name of :data:`REPLICA_POLICIES`.
        topology: :class:`~routelens.placement.topology.Topology` or its JSON dict (only its
            nodes matter here); None = one node.

    Returns:
        ``[T, k]`` int64 GPU ids.

    Raises:
        PlanError: an expert of ``topk_ids`` is on no GPU or outside the table, the policy is
            unknown, or the topology has another number of GPUs.
        InputError: ``topk_ids`` is not ``[T, k]`` or ``source_gpu`` not ``[T]``.

    Example:
        >>> table = np.array([[0, 1], [2, 0]])          # expert 0 on GPUs 0 and 1
        >>> assign_replicas(np.array([[0, 2], [0, 1]]), np.array([1, 0]), table).tolist()
        [[1, 1], [0, 0]]
    """
    rule = replica_policy(policy)
    holders = expert_holders(plan_layer_table)
    num_experts, num_gpus = holders.shape
    ids = _check_ids(topk_ids, num_experts)
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    if source_gpu.shape != (ids.shape[0],):
        raise InputError(f"source_gpu has shape {source_gpu.shape}, expected ({ids.shape[0]},)")
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    count = holders.sum(1)
    unplaced = (np.bincount(ids[valid], minlength=num_experts) > 0) & (count == 0)
    if unplaced.any():
        raise PlanError(f"expert {int(np.argmax(unplaced))} is chosen by tokens but placed on no GPU")
    replicas = replica_lists(holders)
    dest = np.where(valid, replicas[safe, 0], -1)
    flexible = valid & (count[safe] > 1)
    if not flexible.any():
        return dest
    node_of_gpu = as_topology(topology, num_gpus).node_of_gpu()
    return rule.choose(ReplicaChoice(dest, ids, flexible, replicas, source_gpu, node_of_gpu))


def route_tokens(topk_ids: np.ndarray, plan_layer_table: np.ndarray, policy: str = DEFAULT_REPLICA_POLICY,
                 topology: Topology | dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where one batch's tokens start and which GPU serves each slot: one All-to-All.

    The tokens start evenly over the GPUs (:func:`token_source_gpu`) and the replicas are chosen
    by :func:`assign_replicas`.

    Args:
        topk_ids: ``[T, k]`` expert ids of the batch (``-1`` = dropped slot).
        plan_layer_table: ``[G, S]`` expert id in each GPU slot.
        policy, topology: as in :func:`assign_replicas`.

    Returns:
        ``(source_gpu [T], dest_gpu [T, k])`` int64.
    """
    table = np.asarray(plan_layer_table, dtype=np.int64)
    source = token_source_gpu(np.asarray(topk_ids).shape[0], table.shape[0])
    return source, assign_replicas(topk_ids, source, table, policy, topology)


# --------------------------------------------------------------------------- visits and copies
def hit_matrix(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G, G]`` int64 tokens starting on GPU ``a`` that GPU ``b`` serves (for at least one slot).

    The diagonal counts tokens served (also) at home, which travel nowhere; off the diagonal is
    the dispatch (:func:`dispatch_matrix_from_dest`). ``hits.sum() / T`` is the mean number of
    GPUs a token visits (:func:`gpus_per_token`).

    Args:
        source_gpu: ``[T]`` GPU each token starts on.
        dest_gpu: ``[T, k]`` GPU serving each slot (``-1`` = dropped slot, ignored).
        num_gpus: ``G``.

    Example:
        >>> hit_matrix(np.array([0, 1]), np.array([[0, 1], [1, 1]]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    matrix = np.zeros(num_gpus * num_gpus, dtype=np.int64)
    for start in range(0, source_gpu.size, TRAFFIC_CHUNK_TOKENS):
        end = start + TRAFFIC_CHUNK_TOKENS
        dest = dest_gpu[start:end]
        # one key per (source, destination) pair; sorting each token's keys puts repeats side by side
        key = np.where(dest >= 0, source_gpu[start:end, None] * num_gpus + dest, -1)
        key.sort(axis=1)
        first = key >= 0
        first[:, 1:] &= key[:, 1:] != key[:, :-1]
        matrix += np.bincount(key[first], minlength=num_gpus * num_gpus)
    return matrix.reshape(num_gpus, num_gpus)


def dispatch_matrix_from_dest(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G, G]`` int64 token copies GPU ``a`` sends GPU ``b`` in the dispatch (diagonal 0).

    A token counts once per distinct destination GPU other than its own source; the combine sends
    the same copies back (``matrix.T``).

    Args:
        source_gpu: ``[T]``; dest_gpu: ``[T, k]`` (``-1`` = dropped slot, ignored); num_gpus: ``G``.

    Example:
        >>> dispatch_matrix_from_dest(np.array([0]), np.array([[1, 1, 2, -1]]), 3).tolist()
        [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    """
    matrix = hit_matrix(source_gpu, dest_gpu, num_gpus)
    np.fill_diagonal(matrix, 0)
    return matrix


def dispatch_matrix(
    topk_ids: np.ndarray,
    source_gpu: np.ndarray,
    plan_layer_table: np.ndarray,
    policy: str = DEFAULT_REPLICA_POLICY,
    topology: Topology | dict | None = None,
) -> np.ndarray:
    """``[G, G]`` token copies GPU ``a`` sends GPU ``b`` in one layer's dispatch.

    :func:`assign_replicas` then :func:`dispatch_matrix_from_dest`.
    """
    table = np.asarray(plan_layer_table, dtype=np.int64)
    dest = assign_replicas(topk_ids, source_gpu, table, policy, topology)
    return dispatch_matrix_from_dest(source_gpu, dest, table.shape[0])


def gpus_visited(dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[T, G]`` bool: GPU ``g`` serves at least one slot of token ``t``.

    Args:
        dest_gpu: ``[T, k]`` (``-1`` = dropped slot, ignored); num_gpus: ``G``.
    """
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    visited = np.zeros((dest_gpu.shape[0], num_gpus + 1), dtype=bool)  # column G collects dropped slots
    for start in range(0, dest_gpu.shape[0], TRAFFIC_CHUNK_TOKENS):
        dest = dest_gpu[start:start + TRAFFIC_CHUNK_TOKENS]
        rows = np.arange(start, start + dest.shape[0])[:, None]
        visited[rows, np.where(dest >= 0, dest, num_gpus)] = True
    return visited[:, :num_gpus]


def gpus_per_token(dest_gpu: np.ndarray) -> float:
    """Mean number of distinct GPUs serving a token (its dispatch fan-out, own GPU included); 0 for no tokens.

    Args:
        dest_gpu: ``[T, k]`` GPU serving each slot (:func:`assign_replicas`; ``-1`` = dropped).

    Example:
        >>> gpus_per_token(np.array([[0, 0], [0, 1], [1, -1]]))
        1.3333333333333333
    """
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    if dest_gpu.shape[0] == 0:
        return 0.0
    num_tokens, num_gpus = dest_gpu.shape[0], max(int(dest_gpu.max()) + 1, 1)
    everyone_home = np.zeros(num_tokens, dtype=np.int64)  # the count of distinct GPUs does not depend on it
    return float(hit_matrix(everyone_home, dest_gpu, num_gpus).sum()) / num_tokens
