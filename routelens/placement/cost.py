"""Cost model of one expert-parallel MoE layer: who sends what to whom, and how long it takes.

Under expert parallelism (GShard, DeepSpeed-MoE, DeepEP) every token starts on one GPU, is sent
once to every *distinct* other GPU that serves one of its top-k experts (the dispatch All-to-All),
is processed there, and comes back the same way (the combine). The C2R paper (Zhang et al., NAACL
2025, arXiv:2504.01337) counts traffic the same way: one copy per device, not per expert. The
All-to-All ends when the busiest GPU has sent and received its share over its slowest link, so a
placement is scored by its bottleneck, not by its average.

Every function here is a pure, deterministic function of numpy arrays, so the distributed runner
(:mod:`routelens.runner`) reproduces the cost model's bytes exactly:

- :func:`token_source_gpu` — where tokens start: token ``t`` of ``T`` on GPU ``t·G // T``;
- :func:`assign_replicas` — which GPU serves each ``(token, slot)`` under a replica policy;
- :func:`dispatch_matrix` — ``[G, G]`` token copies GPU ``a`` sends GPU ``b``;
- :func:`layer_traffic` — per-GPU send / receive volume per link class, compute load, fan-out;
- :func:`estimate_time` — estimated dispatch + combine time (bottleneck link) and compute time;
- :func:`gpus_per_token` — mean number of distinct GPUs a token's experts live on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, PlanError
from .topology import INTER, INTRA, LINK_CLASSES, Topology, as_topology

REPLICA_BLOCK_TOKENS = 256
"""Tokens whose replica choices see the same GPU loads (``nearest-then-least-loaded``).

Part of the policy's definition: loads are refreshed after every block of this many tokens and
slot, so any caller that passes the same arrays gets the same destinations."""

TRAFFIC_CHUNK_TOKENS = 65536  # tokens per [T, G] mask in layer_traffic: bounds memory at 64 MB for G=1024

POLICIES = ("nearest-then-least-loaded", "round-robin", "first")


# --------------------------------------------------------------------------- where tokens are
def token_source_gpu(num_tokens: int, num_gpus: int) -> np.ndarray:
    """``[T]`` GPU each token starts on: token ``t`` on GPU ``t·G // T``.

    Contiguous blocks whose sizes differ by at most one, the same rule as the runner (rank ``r``
    holds tokens ``[⌈r·T/G⌉, ⌈(r+1)·T/G⌉)``).
    """
    if num_gpus < 1:
        raise InputError(f"need at least one GPU, got {num_gpus}")
    return (np.arange(num_tokens, dtype=np.int64) * num_gpus) // max(int(num_tokens), 1)


def expert_holders(table: np.ndarray, num_experts: int | None = None) -> np.ndarray:
    """``[E, G]`` bool: ``holders[e, g]`` is True when GPU ``g`` holds a replica of expert ``e``.

    Args:
        table: ``[G, S]`` expert id in each GPU slot (a plan layer's ``gpu_experts``).
        num_experts: ``E`` (default: largest id + 1).
    """
    table = np.asarray(table, dtype=np.int64)
    if table.ndim != 2:
        raise PlanError(f"a placement table must be [GPUs, slots], got shape {table.shape}")
    num_experts = int(table.max()) + 1 if num_experts is None else int(num_experts)
    holders = np.zeros((num_experts, table.shape[0]), dtype=bool)
    holders[table.ravel(), np.repeat(np.arange(table.shape[0]), table.shape[1])] = True
    return holders


def _check_ids(topk_ids: Any, num_experts: int) -> np.ndarray:
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise InputError(f"topk_ids must be a [tokens, k] array, got shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.max() >= num_experts or ids.min() < -1):
        bad = int(ids.max()) if ids.max() >= num_experts else int(ids.min())
        raise PlanError(f"topk_ids holds expert {bad}, outside the plan's [0, {num_experts}) (and -1 = dropped)")
    return ids


# --------------------------------------------------------------------------- replica choice
def assign_replicas(
    topk_ids: np.ndarray,
    source_gpu: np.ndarray,
    plan_layer_table: np.ndarray,
    policy: str = "nearest-then-least-loaded",
    topology: Topology | dict | None = None,
) -> np.ndarray:
    """``[T, k]`` GPU that serves each ``(token, slot)``; ``-1`` where the slot was dropped.

    Experts with one replica are served by their owner. For an expert with several replicas the
    ``policy`` decides:

    - ``"nearest-then-least-loaded"``: the token's own GPU if it holds a replica; else a GPU the
      token is already sent to (for an expert decided earlier: single-replica experts first, then
      slots left to right), which costs no extra copy; else a GPU in the token's node; else any.
      Ties go to the GPU with the least expert-compute load so far (token-expert pairs assigned,
      refreshed every :data:`REPLICA_BLOCK_TOKENS` tokens per slot), then to the lowest index.
    - ``"round-robin"``: the ``r``-th use of an expert (token-major order) goes to its
      ``r mod n``-th replica (ascending GPU), ignoring locality.
    - ``"first"``: always the lowest-numbered replica.

    Args:
        topk_ids: ``[T, k]`` expert ids (``-1`` = dropped slot).
        source_gpu: ``[T]`` GPU each token starts on (:func:`token_source_gpu`).
        plan_layer_table: ``[G, S]`` expert id in each GPU slot.
        policy: one of :data:`POLICIES`.
        topology: :class:`Topology` or its JSON dict (nodes); None = one node.

    Returns:
        ``[T, k]`` int64 GPU ids.

    Raises:
        PlanError: an expert of ``topk_ids`` is on no GPU, or the policy is unknown.

    Example:
        >>> table = np.array([[0, 1], [2, 0]])          # expert 0 on GPUs 0 and 1
        >>> assign_replicas(np.array([[0, 2], [0, 1]]), np.array([1, 0]), table).tolist()
        [[1, 1], [0, 0]]
    """
    table = np.asarray(plan_layer_table, dtype=np.int64)
    holders = expert_holders(table)
    num_experts, num_gpus = holders.shape
    ids = _check_ids(topk_ids, num_experts)
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    if source_gpu.shape != (ids.shape[0],):
        raise InputError(f"source_gpu has shape {source_gpu.shape}, expected ({ids.shape[0]},)")
    if policy not in POLICIES:
        raise PlanError(f"unknown replica policy '{policy}' (known: {', '.join(POLICIES)})")
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    replicas = holders.sum(1)
    used = np.unique(ids[valid])
    if used.size and np.any(replicas[used] == 0):
        raise PlanError(f"expert {int(used[replicas[used] == 0][0])} is chosen by tokens but placed on no GPU")
    dest = np.where(valid, np.argmax(holders, axis=1)[safe], -1)
    flexible = valid & (replicas[safe] > 1)
    if policy == "first" or not flexible.any():
        return dest
    if policy == "round-robin":
        return _round_robin(dest, ids, flexible, holders)
    return _nearest_then_least_loaded(dest, ids, flexible, holders, source_gpu, as_topology(topology, num_gpus))


def _round_robin(dest: np.ndarray, ids: np.ndarray, flexible: np.ndarray, holders: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(flexible)  # row-major: token-major order
    experts = ids[rows, cols]
    order = np.argsort(experts, kind="stable")
    sorted_experts = experts[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_experts)) + 1]
    rank = np.empty(experts.size, dtype=np.int64)
    rank[order] = np.arange(experts.size) - np.repeat(starts, np.diff(np.r_[starts, experts.size]))
    replicas = holders.sum(1)
    choice = rank % replicas[experts]
    # the choice-th True of holders[e]: cumulative count along GPUs
    position = np.cumsum(holders, axis=1) - 1  # [E, G]
    match = (position[experts] == choice[:, None]) & holders[experts]
    dest[rows, cols] = np.argmax(match, axis=1)
    return dest


def _nearest_then_least_loaded(dest, ids, flexible, holders, source_gpu, topology: Topology) -> np.ndarray:
    num_tokens, num_gpus = ids.shape[0], holders.shape[1]
    node = topology.node_of_gpu()
    fixed = (dest >= 0) & ~flexible
    load = np.bincount(dest[fixed], minlength=num_gpus).astype(np.int64)
    visited = np.zeros((num_tokens, num_gpus), dtype=bool)
    visited[np.arange(num_tokens), source_gpu] = True
    rows, cols = np.nonzero(fixed)
    visited[rows, dest[rows, cols]] = True
    rows, cols = np.nonzero(flexible)
    block = rows // REPLICA_BLOCK_TOKENS
    order = np.lexsort((rows, cols, block))  # steps: (block, slot), tokens ascending inside
    rows, cols, block = rows[order], cols[order], block[order]
    step_key = block * ids.shape[1] + cols
    bounds = np.r_[0, np.flatnonzero(np.diff(step_key)) + 1, rows.size]
    big = np.int64(ids.size + 1)  # larger than any load: a better tier always wins
    gpu = np.arange(num_gpus)
    for start, end in zip(bounds[:-1], bounds[1:]):
        t, j = rows[start:end], cols[start:end]
        src = source_gpu[t]
        tier = np.where(node[None, :] == node[src][:, None], 2, 3)
        tier[visited[t]] = 1
        tier[gpu[None, :] == src[:, None]] = 0
        key = tier * big + load[None, :]
        key[~holders[ids[t, j]]] = np.iinfo(np.int64).max
        choice = np.argmin(key, axis=1)
        dest[t, j] = choice
        visited[t, choice] = True
        load += np.bincount(choice, minlength=num_gpus)
    return dest


# --------------------------------------------------------------------------- traffic
def dispatch_matrix_from_dest(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G, G]`` int64 token copies GPU ``a`` sends GPU ``b`` in the dispatch (diagonal 0).

    A token counts once per distinct destination GPU other than its own source.

    Args:
        source_gpu: ``[T]``; dest_gpu: ``[T, k]`` (``-1`` = dropped slot, ignored).
    """
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    matrix = np.zeros(num_gpus * num_gpus, dtype=np.int64)
    for start in range(0, source_gpu.size, TRAFFIC_CHUNK_TOKENS):
        hit = _hit_mask(dest_gpu[start:start + TRAFFIC_CHUNK_TOKENS], num_gpus)
        src = source_gpu[start:start + TRAFFIC_CHUNK_TOKENS]
        hit[np.arange(src.size), src] = False
        r, c = np.nonzero(hit)
        matrix += np.bincount(src[r] * num_gpus + c, minlength=num_gpus * num_gpus)
    return matrix.reshape(num_gpus, num_gpus)


def _hit_mask(dest: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[n, G]`` bool: token ``t`` is served (for some slot) on GPU ``g``."""
    hit = np.zeros((dest.shape[0], num_gpus), dtype=bool)
    rows = np.broadcast_to(np.arange(dest.shape[0])[:, None], dest.shape)
    ok = dest >= 0
    hit[rows[ok], dest[ok]] = True
    return hit


def dispatch_matrix(
    topk_ids: np.ndarray,
    source_gpu: np.ndarray,
    plan_layer_table: np.ndarray,
    policy: str = "nearest-then-least-loaded",
    topology: Topology | dict | None = None,
) -> np.ndarray:
    """``[G, G]`` token copies GPU ``a`` sends GPU ``b`` in one layer's dispatch.

    :func:`assign_replicas` then :func:`dispatch_matrix_from_dest`; the combine sends the same
    copies back (``matrix.T``).
    """
    table = np.asarray(plan_layer_table, dtype=np.int64)
    dest = assign_replicas(topk_ids, source_gpu, table, policy, topology)
    return dispatch_matrix_from_dest(source_gpu, dest, table.shape[0])


def gpus_per_token(topk_ids: np.ndarray, expert_to_gpu: np.ndarray) -> float:
    """Mean number of distinct GPUs a token's experts live on (its dispatch fan-out, own GPU included).

    Args:
        topk_ids: ``[T, k]`` expert ids (``-1`` = dropped, ignored).
        expert_to_gpu: ``[E]`` GPU of each expert (a plan without replicas), or a ``[T, k]``
            destination array from :func:`assign_replicas`.
    """
    ids = np.asarray(topk_ids, dtype=np.int64)
    owner = np.asarray(expert_to_gpu, dtype=np.int64)
    dest = owner if owner.shape == ids.shape and owner.ndim == 2 else np.where(ids >= 0, owner[np.maximum(ids, 0)], -1)
    if dest.shape[0] == 0:
        return 0.0
    num_gpus = int(dest.max()) + 1
    total = 0
    for start in range(0, dest.shape[0], TRAFFIC_CHUNK_TOKENS):
        total += int(_hit_mask(dest[start:start + TRAFFIC_CHUNK_TOKENS], num_gpus).sum())
    return total / dest.shape[0]


@dataclass
class LayerTraffic:
    """What one MoE layer moves under a placement, per GPU.

    Attributes:
        matrix: ``[G, G]`` token copies GPU ``a`` sends GPU ``b`` in the dispatch.
        send: ``[G, 2]`` copies each GPU sends over intra- / inter-node links (dispatch).
        recv: ``[G, 2]`` copies each GPU receives over intra- / inter-node links (dispatch).
        compute: ``[G]`` token-expert pairs each GPU's experts process.
        num_tokens: ``T``.
        gpus_per_token: mean distinct GPUs serving a token (own GPU included).
    """

    matrix: np.ndarray
    send: np.ndarray
    recv: np.ndarray
    compute: np.ndarray
    num_tokens: int
    gpus_per_token: float

    @property
    def num_gpus(self) -> int:
        return int(self.compute.size)

    @property
    def copies_per_token(self) -> float:
        """Mean distinct *other* GPUs a token is sent to (dispatch copies per token)."""
        return float(self.matrix.sum()) / max(self.num_tokens, 1)


def layer_traffic(source_gpu: np.ndarray, dest_gpu: np.ndarray, topology: Topology | dict | None = None,
                  num_gpus: int | None = None) -> LayerTraffic:
    """Per-GPU traffic of one layer from where tokens start and which GPUs serve them.

    Args:
        source_gpu: ``[T]`` GPU each token starts on.
        dest_gpu: ``[T, k]`` GPU serving each slot (:func:`assign_replicas`; ``-1`` = dropped).
        topology: nodes of the GPUs (None = one node).
        num_gpus: ``G`` (default: the topology's, else the largest GPU id + 1).
    """
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    if num_gpus is None:
        num_gpus = Topology.from_json(topology).num_gpus if topology is not None else \
            int(max(dest_gpu.max(initial=0), source_gpu.max(initial=0))) + 1
    topo = as_topology(topology, num_gpus)
    matrix = np.zeros(num_gpus * num_gpus, dtype=np.int64)
    served = 0
    for start in range(0, source_gpu.size, TRAFFIC_CHUNK_TOKENS):
        hit = _hit_mask(dest_gpu[start:start + TRAFFIC_CHUNK_TOKENS], num_gpus)
        served += int(hit.sum())
        src = source_gpu[start:start + TRAFFIC_CHUNK_TOKENS]
        hit[np.arange(src.size), src] = False
        r, c = np.nonzero(hit)
        matrix += np.bincount(src[r] * num_gpus + c, minlength=num_gpus * num_gpus)
    matrix = matrix.reshape(num_gpus, num_gpus)
    link = topo.link_class()
    send = np.stack([(matrix * (link == c)).sum(1) for c in (INTRA, INTER)], axis=1)
    recv = np.stack([(matrix * (link == c)).sum(0) for c in (INTRA, INTER)], axis=1)
    compute = np.bincount(dest_gpu[dest_gpu >= 0], minlength=num_gpus).astype(np.int64)
    return LayerTraffic(matrix, send, recv, compute, int(source_gpu.size), served / max(source_gpu.size, 1))


def traffic_from_hits(hits: np.ndarray, compute: np.ndarray, num_tokens: int,
                      topology: Topology | dict | None = None) -> LayerTraffic:
    """:class:`LayerTraffic` from a ``[G, G]`` hit matrix: tokens starting on ``s`` served on ``g``.

    The diagonal (tokens served at home) counts for fan-out but not for traffic; the result
    equals :func:`layer_traffic` of the same tokens.

    Args:
        hits: ``[G, G]`` int; compute: ``[G]`` token-expert pairs per GPU; num_tokens: ``T``.
    """
    hits = np.asarray(hits, dtype=np.int64)
    num_gpus = hits.shape[0]
    topo = as_topology(topology, num_gpus)
    matrix = hits.copy()
    np.fill_diagonal(matrix, 0)
    link = topo.link_class()
    send = np.stack([(matrix * (link == c)).sum(1) for c in (INTRA, INTER)], axis=1)
    recv = np.stack([(matrix * (link == c)).sum(0) for c in (INTRA, INTER)], axis=1)
    return LayerTraffic(matrix, send, recv, np.asarray(compute, dtype=np.int64), int(num_tokens),
                        float(hits.sum()) / max(int(num_tokens), 1))


# --------------------------------------------------------------------------- time
@dataclass(frozen=True)
class CostModel:
    """Turns traffic into time: the cluster plus the size of a token and of an expert.

    Attributes:
        topology: the cluster.
        token_bytes: bytes of one token's hidden state on the wire (hidden size × dtype bytes).
        expert_flops_per_token: FLOPs one expert spends on one token (``6·hidden·moe_intermediate``
            for a gated MLP: three GEMMs of ``2·hidden·inter`` each); 0 leaves compute out.
    """

    topology: Topology
    token_bytes: float = 4096 * 2
    expert_flops_per_token: float = 0.0

    @classmethod
    def for_model(cls, config: dict[str, Any], topology: Topology, dtype_bytes: float = 2,
                  hidden_size: int | None = None) -> "CostModel":
        """From a trace's model config summary (``hidden_size``, ``moe_intermediate_size``)."""
        hidden = int(hidden_size or config.get("hidden_size") or 4096)
        inter = int(config.get("moe_intermediate_size") or config.get("intermediate_size") or 4 * hidden)
        if hidden_size:  # a what-if hidden size scales the expert with it
            inter = int(round(inter * hidden / max(int(config.get("hidden_size") or hidden), 1)))
        return cls(topology=topology, token_bytes=float(hidden * dtype_bytes),
                   expert_flops_per_token=float(6 * hidden * inter))

    def to_json(self) -> dict[str, Any]:
        return {"token_bytes": self.token_bytes, "expert_flops_per_token": self.expert_flops_per_token}


def estimate_time(traffic: LayerTraffic, cost: CostModel) -> dict[str, Any]:
    """Estimated time of one layer's dispatch + combine All-to-All and expert compute.

    Each GPU sends and receives at once (full duplex) and uses its intra- and inter-node links at
    once, so a link class of a GPU is busy ``latency + max(sent, received) × token_bytes /
    bandwidth`` and the dispatch ends with the busiest (GPU, link class). The combine moves the
    same copies back, so it takes as long. Compute is the busiest GPU's token-expert pairs ×
    ``expert_flops_per_token / gpu_tflops``; the three phases run one after the other.

    Returns:
        dict with ``dispatch_s``, ``combine_s``, ``a2a_s``, ``compute_s``, ``layer_s`` and
        ``bottleneck`` (e.g. ``"GPU 3 inter-node receive"``).
    """
    topo = cost.topology
    volume = np.maximum(traffic.send, traffic.recv).astype(np.float64)  # [G, 2]
    busy = np.where(volume > 0, topo.latency_s()[None, :] + volume * cost.token_bytes * topo.seconds_per_byte()[None, :], 0.0)
    dispatch_s = float(busy.max()) if busy.size else 0.0
    compute_s = float(traffic.compute.max(initial=0)) * cost.expert_flops_per_token / (topo.gpu_tflops * 1e12)
    if dispatch_s > 0:
        g, c = np.unravel_index(int(np.argmax(busy)), busy.shape)
        way = "receive" if traffic.recv[g, c] >= traffic.send[g, c] else "send"
        bottleneck = f"GPU {g} {LINK_CLASSES[c]}-node {way}"
    else:
        bottleneck = "none"
    return {"dispatch_s": dispatch_s, "combine_s": dispatch_s, "a2a_s": 2 * dispatch_s,
            "compute_s": compute_s, "layer_s": 2 * dispatch_s + compute_s, "bottleneck": bottleneck}


def layer_metrics(traffic: LayerTraffic, cost: CostModel) -> dict[str, Any]:
    """The numbers a placement is judged by, for one layer (volumes in units of ``T / G`` tokens).

    ``busiest_gpu_recv`` = max over GPUs of copies received / (T/G): 0 when every token stays
    home, ``G - 1`` when every token visits every GPU.
    """
    per_gpu = traffic.num_tokens / max(traffic.num_gpus, 1)
    recv_total = traffic.recv.sum(1)
    send_total = traffic.send.sum(1)
    copies = float(traffic.matrix.sum())
    mean_compute = float(traffic.compute.mean()) if traffic.compute.size else 0.0
    est = estimate_time(traffic, cost)
    return {
        "gpus_per_token": float(traffic.gpus_per_token),
        "copies_per_token": traffic.copies_per_token,
        "busiest_gpu_recv": float(recv_total.max(initial=0)) / max(per_gpu, 1e-12),
        "busiest_gpu_send": float(send_total.max(initial=0)) / max(per_gpu, 1e-12),
        "compute_imbalance": float(traffic.compute.max(initial=0)) / mean_compute if mean_compute else 1.0,
        "inter_node_share": float(traffic.send[:, INTER].sum()) / copies if copies else 0.0,
        "a2a_us": est["a2a_s"] * 1e6,
        "compute_us": est["compute_s"] * 1e6,
        "layer_us": est["layer_s"] * 1e6,
        "bottleneck": est["bottleneck"],
    }


def score_table(topk_ids: np.ndarray, table: np.ndarray, cost: CostModel,
                policy: str = "nearest-then-least-loaded", source_gpu: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`layer_metrics` of one layer's placement ``table`` on ``topk_ids`` (tokens start evenly)."""
    table = np.asarray(table, dtype=np.int64)
    num_gpus = table.shape[0]
    if source_gpu is None:
        source_gpu = token_source_gpu(np.asarray(topk_ids).shape[0], num_gpus)
    dest = assign_replicas(topk_ids, source_gpu, table, policy, cost.topology)
    return layer_metrics(layer_traffic(source_gpu, dest, cost.topology, num_gpus), cost)


MEAN_BUSY_WEIGHT = 1.0
"""Weight of the mean GPU busy time next to the bottleneck in :func:`placement_objective`."""


def placement_objective(traffic: LayerTraffic, cost: CostModel, mean_weight: float = MEAN_BUSY_WEIGHT) -> float:
    """What the optimizer minimises for one layer (seconds): estimated layer time, plus a small tie-breaker.

    ``layer_s`` of :func:`estimate_time` (dispatch + compute + combine, all bottlenecks) plus
    ``mean_weight`` (default :data:`MEAN_BUSY_WEIGHT`) × the mean over GPUs of their dispatch +
    combine busy time, so that among placements with the same bottleneck the one moving fewer
    copies wins.
    """
    topo = cost.topology
    volume = np.maximum(traffic.send, traffic.recv).astype(np.float64)
    busy = np.where(volume > 0, topo.latency_s()[None, :] + volume * cost.token_bytes * topo.seconds_per_byte()[None, :], 0.0)
    est = estimate_time(traffic, cost)
    return est["layer_s"] + mean_weight * 2 * float(busy.max(1).mean())
