"""The cluster a plan is made for: nodes × GPUs, link bandwidths and latencies, GPU speed.

Two link classes connect the GPUs: *intra*-node (NVLink or PCIe, between GPUs of one node) and
*inter*-node (InfiniBand or Ethernet, between nodes). GPUs ``[n·M, (n+1)·M)`` form node ``n``
(``M`` = GPUs per node), the rank order ``torchrun`` gives them. Numbers are per GPU and per
direction; the presets are nominal figures of current hardware, meant to be overridden with
measured ones (``routelens.runner`` measures them).

=============  ============  =========  ======================================================
link           GB/s per GPU  latency    what it stands for
=============  ============  =========  ======================================================
``nvlink``     450           2 µs       NVLink 4 (H100/H200 SXM), 900 GB/s bidirectional
``pcie``       25            5 µs       PCIe 4.0 x16, effective
``infiniband`` 50            5 µs       one 400 Gb/s NDR NIC per GPU
``ethernet``   12.5          10 µs      100 Gb/s Ethernet / RoCE per GPU
=============  ============  =========  ======================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError, PlanError

LINKS: dict[str, tuple[float, float]] = {
    "nvlink": (450.0, 2.0),
    "pcie": (25.0, 5.0),
    "infiniband": (50.0, 5.0),
    "ethernet": (12.5, 10.0),
}
"""Link presets: name → (bandwidth GB/s per GPU per direction, latency µs)."""

INTRA, INTER = 0, 1
LINK_CLASSES = ("intra", "inter")


@dataclass(frozen=True)
class Topology:
    """Nodes × GPUs and the links between them.

    Attributes:
        num_nodes: ``N`` nodes.
        gpus_per_node: ``M`` GPUs in each node (``G = N·M``).
        intra_gbps, intra_latency_us: bandwidth (GB/s per GPU per direction) and latency of a
            link inside a node.
        inter_gbps, inter_latency_us: the same between nodes.
        gpu_tflops: sustained expert-GEMM throughput of one GPU (TFLOP/s), for the compute term.
        intra_link, inter_link: preset names the numbers came from (for reports).
    """

    num_nodes: int = 1
    gpus_per_node: int = 8
    intra_gbps: float = LINKS["nvlink"][0]
    intra_latency_us: float = LINKS["nvlink"][1]
    inter_gbps: float = LINKS["infiniband"][0]
    inter_latency_us: float = LINKS["infiniband"][1]
    gpu_tflops: float = 400.0
    intra_link: str = "nvlink"
    inter_link: str = "infiniband"

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise InputError(f"a topology needs >= 1 node and >= 1 GPU per node, got {self.num_nodes}×{self.gpus_per_node}")
        for name in ("intra_gbps", "inter_gbps", "gpu_tflops"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"topology {name} must be a positive number, got {value}")
        for name in ("intra_latency_us", "inter_latency_us"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InputError(f"topology {name} must be >= 0, got {value}")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    def node_of_gpu(self) -> np.ndarray:
        """``[G]`` node index of each GPU."""
        return np.arange(self.num_gpus) // self.gpus_per_node

    def link_class(self) -> np.ndarray:
        """``[G, G]`` link class between two GPUs (:data:`INTRA` or :data:`INTER`)."""
        node = self.node_of_gpu()
        return (node[:, None] != node[None, :]).astype(np.int64)

    def seconds_per_byte(self) -> np.ndarray:
        """``[2]`` seconds to move one byte over an intra- and an inter-node link."""
        return 1.0 / (np.array([self.intra_gbps, self.inter_gbps]) * 1e9)

    def latency_s(self) -> np.ndarray:
        """``[2]`` latency (s) of an intra- and an inter-node transfer."""
        return np.array([self.intra_latency_us, self.inter_latency_us]) * 1e-6

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "Topology":
        if isinstance(obj, Topology):
            return obj
        if not isinstance(obj, dict):
            raise PlanError(f"topology must be an object, got {type(obj).__name__}")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in obj.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise PlanError(f"bad topology {obj}: {exc}") from exc


def make_topology(
    num_gpus: int | None = None,
    num_nodes: int | None = None,
    gpus_per_node: int | None = None,
    intra: str = "nvlink",
    inter: str = "infiniband",
    intra_gbps: float | None = None,
    inter_gbps: float | None = None,
    intra_latency_us: float | None = None,
    inter_latency_us: float | None = None,
    gpu_tflops: float = 400.0,
) -> Topology:
    """Build a :class:`Topology` from any two of ``num_gpus``, ``num_nodes``, ``gpus_per_node``.

    ``--gpus 8`` alone is one node of 8; ``--nodes 4 --gpus-per-node 8`` is 32 GPUs.

    Raises:
        InputError: the counts disagree, a preset is unknown, or a number is not positive.
    """
    for name, link in (("intra", intra), ("inter", inter)):
        if link not in LINKS:
            raise InputError(f"unknown {name}-node link '{link}' (known: {', '.join(LINKS)})")
    if num_gpus is None and gpus_per_node is None:
        raise InputError("give the number of GPUs (--gpus) or --gpus-per-node")
    if num_nodes is None:
        num_nodes = 1 if gpus_per_node is None else max(1, (num_gpus or gpus_per_node) // gpus_per_node)
    if gpus_per_node is None:
        if num_gpus % num_nodes:
            raise InputError(f"{num_gpus} GPUs cannot be split evenly over {num_nodes} nodes")
        gpus_per_node = num_gpus // num_nodes
    if num_gpus is not None and num_gpus != num_nodes * gpus_per_node:
        raise InputError(f"--gpus {num_gpus} disagrees with {num_nodes} nodes × {gpus_per_node} GPUs per node")
    if num_nodes < 1 or gpus_per_node < 1:
        raise InputError(f"need at least one node and one GPU per node, got {num_nodes}×{gpus_per_node}")
    return Topology(
        num_nodes=int(num_nodes),
        gpus_per_node=int(gpus_per_node),
        intra_gbps=float(intra_gbps if intra_gbps is not None else LINKS[intra][0]),
        intra_latency_us=float(intra_latency_us if intra_latency_us is not None else LINKS[intra][1]),
        inter_gbps=float(inter_gbps if inter_gbps is not None else LINKS[inter][0]),
        inter_latency_us=float(inter_latency_us if inter_latency_us is not None else LINKS[inter][1]),
        gpu_tflops=float(gpu_tflops),
        intra_link=intra,
        inter_link=inter,
    )


def as_topology(topology: Any, num_gpus: int) -> Topology:
    """Normalise ``topology`` (a :class:`Topology`, its JSON dict, or None = one node) for ``G`` GPUs.

    Raises:
        PlanError: the topology describes a different number of GPUs.
    """
    if topology is None:
        return Topology(num_nodes=1, gpus_per_node=num_gpus)
    topo = Topology.from_json(topology)
    if topo.num_gpus != num_gpus:
        raise PlanError(f"topology has {topo.num_nodes}×{topo.gpus_per_node} = {topo.num_gpus} GPUs, "
                        f"the placement {num_gpus}")
    return topo
