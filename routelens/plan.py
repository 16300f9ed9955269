"""The Plan: where each expert (and replica) lives, per MoE layer.

On disk a plan is one versioned JSON file::

    {
      "format": "routelens-plan", "version": 1,
      "num_gpus": 8, "num_nodes": 1, "gpus_per_node": 8,
      "num_experts": 64, "slots_per_gpu": 8, "num_redundant": 0,
      "replica_policy": "nearest-then-least-loaded",
      "method": "routelens", "seed": 0,
      "topology": {...}, "cost_model": {...}, "metrics": {...}, "model": {...},
      "trace": {"path": ..., "fingerprint": ..., "fit_tokens": [0, 32768]},
      "layers": {"model.layers.0.mlp.gate": {"gpu_experts": [[0, 5, ...], [1, 2, ...], ...]}, ...}
    }

``gpu_experts[g]`` lists the expert ids held by GPU ``g``; every GPU has the same number of slots and
a replicated expert appears on several GPUs (``num_redundant = G·S - E`` extra slots). Slot ``s`` of
GPU ``g`` is *physical expert* ``g·S + s``, the numbering SGLang and vLLM use. :class:`Plan` holds the
same data as numpy arrays (``gpu_experts[layer]: [G, S]`` int) and validates it against a model or
trace; ``routelens.placement.export`` writes the files serving engines load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PlanError
from .formats import HEADER_KEYS, PLAN

REPLICA_POLICIES = ("nearest-then-least-loaded", "round-robin", "first")


@dataclass
class Plan:
    """Expert placement for every MoE layer.

    Attributes:
        gpu_experts: layer name → ``[G, S]`` int array, expert id in each GPU slot.
        num_experts: ``E``, logical experts per layer.
        num_nodes: nodes the ``G`` GPUs are spread over (GPUs ``[n·G/N, (n+1)·G/N)`` are node ``n``).
        replica_policy: how a token picks among replicas of an expert (see :data:`REPLICA_POLICIES`).
        method: the method that made the plan (``contiguous``, ``eplb``, ``routelens``...).
        meta: everything else stored with the plan (topology, metrics, trace, seed...).
    """

    gpu_experts: dict[str, np.ndarray]
    num_experts: int
    num_nodes: int = 1
    replica_policy: str = "nearest-then-least-loaded"
    method: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.gpu_experts:
            raise PlanError("plan has no layers")
        shapes = {np.asarray(a).shape for a in self.gpu_experts.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise PlanError(f"every layer of a plan needs a [GPUs, slots] table of one shape, got {sorted(shapes)}")
        for layer, table in self.gpu_experts.items():
            kind = np.asarray(table).dtype.kind
            if kind not in "iu" and not (kind == "f" and np.all(np.mod(np.asarray(table), 1) == 0)):
                raise PlanError(f"layer {layer}: gpu_experts must hold integer expert ids, got {np.asarray(table).dtype}")
        self.gpu_experts = {k: np.asarray(v).astype(np.int64) for k, v in self.gpu_experts.items()}
        if self.num_experts < 1:
            raise PlanError(f"a plan needs at least one expert per layer, got {self.num_experts}")
        if self.num_nodes < 1:
            raise PlanError(f"a plan needs at least one node, got {self.num_nodes}")
        if self.num_gpus % self.num_nodes:
            raise PlanError(f"{self.num_gpus} GPUs cannot be split evenly over {self.num_nodes} nodes")
        if self.replica_policy not in REPLICA_POLICIES:
            raise PlanError(f"unknown replica policy '{self.replica_policy}' (known: {', '.join(REPLICA_POLICIES)})")
        for layer, table in self.gpu_experts.items():
            present = np.zeros(self.num_experts, dtype=bool)
            if table.min() < 0 or table.max() >= self.num_experts:
                raise PlanError(f"layer {layer}: expert ids must lie in [0, {self.num_experts}), found {table.min()}..{table.max()}")
            present[table.ravel()] = True
            if not present.all():
                missing = np.flatnonzero(~present)[:5].tolist()
                raise PlanError(f"layer {layer}: experts {missing} are placed on no GPU")
            for g, row in enumerate(table):
                if np.unique(row).size != row.size:
                    raise PlanError(f"layer {layer}: GPU {g} holds the same expert twice")

    # ------------------------------------------------------------------ shape
    @property
    def layers(self) -> list[str]:
        return list(self.gpu_experts)

    @property
    def num_gpus(self) -> int:
        return int(next(iter(self.gpu_experts.values())).shape[0])

    @property
    def slots_per_gpu(self) -> int:
        return int(next(iter(self.gpu_experts.values())).shape[1])

    @property
    def gpus_per_node(self) -> int:
        return self.num_gpus // self.num_nodes

    @property
    def num_physical(self) -> int:
        """``P = G·S`` physical experts (slots) per layer."""
        return self.num_gpus * self.slots_per_gpu

    @property
    def num_redundant(self) -> int:
        """``R = G·S - E`` redundant slots per layer (extra replicas)."""
        return self.num_physical - self.num_experts

    @property
    def topology(self) -> dict[str, Any] | None:
        """The cluster the plan was made for (``routelens.placement.Topology`` as a dict), if stored."""
        topo = self.meta.get("topology")
        return topo if isinstance(topo, dict) else None

    def physical_to_logical(self, layer: str) -> np.ndarray:
        """``[P]`` logical expert of each physical expert ``g·S + s`` (SGLang/vLLM numbering)."""
        return self.gpu_experts[layer].ravel().copy()

    def replica_counts(self, layer: str) -> np.ndarray:
        """``[E]`` replicas of each expert."""
        return np.bincount(self.gpu_experts[layer].ravel(), minlength=self.num_experts)

    def logical_to_physical(self, layer: str, width: int | None = None) -> np.ndarray:
        """``[E, width]`` physical experts holding each logical expert, ascending, ``-1`` padded.

        ``width`` defaults to the largest replica count (vLLM uses ``num_redundant + 1``).
        """
        phys = self.physical_to_logical(layer)
        counts = np.bincount(phys, minlength=self.num_experts)
        width = int(counts.max()) if width is None else int(width)
        if width < counts.max():
            raise PlanError(f"layer {layer}: an expert has {counts.max()} replicas, more than width {width}")
        order = np.argsort(phys, kind="stable")
        rank = np.arange(phys.size) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)
        out = np.full((self.num_experts, width), -1, dtype=np.int64)
        out[phys[order], rank] = order
        return out

    def expert_replicas(self, layer: str) -> list[np.ndarray]:
        """For each expert ``e``, the GPUs holding a replica of it (ascending)."""
        table = self.gpu_experts[layer]
        owners: list[list[int]] = [[] for _ in range(self.num_experts)]
        for g, row in enumerate(table):
            for e in row:
                owners[int(e)].append(g)
        return [np.asarray(o, dtype=np.int64) for o in owners]

    def expert_to_gpu(self, layer: str) -> np.ndarray:
        """``[E]`` GPU of each expert; only for plans without replicas."""
        table = self.gpu_experts[layer]
        if table.size != self.num_experts:
            raise PlanError(f"layer {layer} has replicas: use expert_replicas() and a replica policy")
        owner = np.empty(self.num_experts, dtype=np.int64)
        owner[table.ravel()] = np.repeat(np.arange(table.shape[0]), table.shape[1])
        return owner

    # ------------------------------------------------------------------ checks
    def check_fits(self, layers: list[str], num_experts: int, what: str = "trace") -> None:
        """Raise PlanError unless the plan covers exactly ``layers`` with ``num_experts`` experts."""
        if num_experts != self.num_experts:
            raise PlanError(f"plan is for {self.num_experts} experts per layer, the {what} has {num_experts}")
        missing = [l for l in layers if l not in self.gpu_experts]
        if missing:
            raise PlanError(f"plan has no placement for {len(missing)} {what} layer(s), e.g. '{missing[0]}'")
        extra = [l for l in self.gpu_experts if l not in layers]
        if extra:
            raise PlanError(f"plan places layer '{extra[0]}' which the {what} does not have")

    def check_trace(self, trace) -> None:
        """Raise PlanError unless the plan fits ``trace`` (same MoE layers and expert count)."""
        self.check_fits(list(trace.layers), int(trace.num_experts), what="trace")

    def check_model_config(self, config: dict[str, Any], layers: list[str] | None = None) -> None:
        """Raise PlanError unless the plan fits a model (its config summary: ``num_experts``, ``num_layers``)."""
        experts = config.get("num_experts") or config.get("num_local_experts") or config.get("n_routed_experts")
        if experts is not None and int(experts) != self.num_experts:
            raise PlanError(f"plan is for {self.num_experts} experts per layer, the model has {experts}")
        if layers is not None:
            self.check_fits(layers, self.num_experts, what="model")

    # ------------------------------------------------------------------ I/O
    def to_json(self) -> dict[str, Any]:
        return {
            **PLAN.header(),
            "num_gpus": self.num_gpus,
            "num_nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "num_experts": self.num_experts,
            "slots_per_gpu": self.slots_per_gpu,
            "num_redundant": self.num_redundant,
            "replica_policy": self.replica_policy,
            "method": self.method,
            **{k: v for k, v in self.meta.items() if k not in _RESERVED},
            "layers": {name: {"gpu_experts": table.tolist()} for name, table in self.gpu_experts.items()},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON atomically."""
        return PLAN.write(path, self.to_json())

    @classmethod
    def from_json(cls, obj: Any, source: str = "plan") -> "Plan":
        PLAN.check(obj, source)
        try:
            layers = {name: np.asarray(spec["gpu_experts"]) for name, spec in obj["layers"].items()}
            num_experts = int(obj["num_experts"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"{source} is malformed: {exc}") from exc
        if not layers:
            raise PlanError(f"{source} has no layers")
        try:
            shapes = {name: np.asarray(table).shape for name, table in layers.items()}
        except ValueError:
            raise PlanError(f"{source}: a layer's gpu_experts is ragged: every GPU needs the same number of slots") from None
        for name, shape in shapes.items():
            if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
                raise PlanError(f"{source}: layer {name} gpu_experts must be a non-empty [GPUs][slots] list, got shape {shape}")
        first_shape = next(iter(shapes.values()))
        for key, value in (("num_gpus", first_shape[0]), ("slots_per_gpu", first_shape[1])):
            if key in obj and int(obj[key]) != value:
                raise PlanError(f"{source}: {key} {obj[key]} does not match its gpu_experts tables ({value})")
        num_nodes = int(obj.get("num_nodes", 1))
        if "gpus_per_node" in obj and int(obj["gpus_per_node"]) * num_nodes != first_shape[0]:
            raise PlanError(f"{source}: {num_nodes} nodes × {obj['gpus_per_node']} GPUs per node != {first_shape[0]} GPUs")
        meta = {k: v for k, v in obj.items() if k not in _RESERVED}
        return cls(
            gpu_experts=layers,
            num_experts=num_experts,
            num_nodes=num_nodes,
            replica_policy=obj.get("replica_policy", "nearest-then-least-loaded"),
            method=obj.get("method", "custom"),
            meta=meta,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read and validate a plan file (one-line PlanError on any problem)."""
        return cls.from_json(PLAN.read(path), source=str(path))


_RESERVED = {
    *HEADER_KEYS, "num_gpus", "num_nodes", "gpus_per_node", "num_experts",
    "slots_per_gpu", "num_redundant", "replica_policy", "method", "layers",
}
