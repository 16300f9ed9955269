"""Cost model of one expert-parallel MoE layer: how long its dispatch, experts and combine take.

Who sends what to whom is :mod:`routelens.placement.traffic` (where tokens start, which replica
serves them, the dispatch matrix); this module turns that traffic into per-GPU volumes per link
class and into time. The All-to-All ends when the busiest GPU has sent and received its share over
its slowest link, so a placement is scored by its bottleneck, not by its average.

- :func:`layer_traffic` — per-GPU send / receive volume per link class, compute load, fan-out;
- :func:`estimate_time` — estimated dispatch + combine time (bottleneck link) and compute time;
- :func:`layer_metrics`, :func:`score_table` — the numbers a placement is judged by;
- :func:`placement_objective` — what the optimizer minimises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .topology import INTER, INTRA, LINK_CLASSES, Topology, as_topology
from .traffic import DEFAULT_REPLICA_POLICY, assign_replicas, hit_matrix, token_source_gpu


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
        dest_gpu: ``[T, k]`` GPU serving each slot (:func:`~routelens.placement.traffic.assign_replicas`;
            ``-1`` = dropped).
        topology: nodes of the GPUs (None = one node).
        num_gpus: ``G`` (default: the topology's, else the largest GPU id + 1).
    """
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    if num_gpus is None:
        num_gpus = Topology.from_json(topology).num_gpus if topology is not None else \
            int(max(dest_gpu.max(initial=0), source_gpu.max(initial=0))) + 1
    compute = np.bincount(dest_gpu[dest_gpu >= 0], minlength=num_gpus).astype(np.int64)
    return traffic_from_hits(hit_matrix(source_gpu, dest_gpu, num_gpus), compute, int(source_gpu.size), topology)


def traffic_from_hits(hits: np.ndarray, compute: np.ndarray, num_tokens: int,
                      topology: Topology | dict | None = None) -> LayerTraffic:
    """:class:`LayerTraffic` from a ``[G, G]`` hit matrix: tokens starting on ``s`` served on ``g``.

    The diagonal (tokens served at home) counts for fan-out but not for traffic. :func:`layer_traffic`
    is this function of :func:`~routelens.placement.traffic.hit_matrix`; the optimizer keeps its own
    hit counts up to date as it swaps experts and calls it directly.

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
                policy: str = DEFAULT_REPLICA_POLICY, source_gpu: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`layer_metrics` of one layer's placement ``table`` on ``topk_ids``.

    Args:
        topk_ids: ``[T, k]`` expert ids (``-1`` = dropped slot); table: ``[G, S]``.
        policy: replica policy name (:data:`~routelens.placement.traffic.REPLICA_POLICIES`).
        source_gpu: ``[T]`` where tokens start (default: evenly, :func:`~routelens.placement.traffic.token_source_gpu`).
    """
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
