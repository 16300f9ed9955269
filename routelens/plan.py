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
      (or "traces": [{..., "weight": 0.7}, ...] for a plan fitted on several runs at once)
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
        if self.num_experts > self.num_physical:
            raise PlanError(f"num_experts {self.num_experts} is more than the {self.num_physical} slots of "
                            f"{self.num_gpus} GPUs × {self.slots_per_gpu}: some expert is placed on no GPU")
        for layer, table in self.gpu_experts.items():
            name = _printable(str(layer))
            low, high = int(table.min()), int(table.max())
            if low < 0 or high >= self.num_experts:
                raise PlanError(f"layer {name}: gpu_experts holds expert id {low if low < 0 else high}, "
                                f"outside [0, {self.num_experts}) (num_experts)")
            missing = np.setdiff1d(np.arange(self.num_experts), table)
            if missing.size:
                raise PlanError(f"layer {name}: gpu_experts: {missing.size} expert(s) are placed on no GPU, "
                                f"e.g. {missing[:5].tolist()}")
            for g, row in enumerate(table):
                values, counts = np.unique(row, return_counts=True)
                if (counts > 1).any():
                    raise PlanError(f"layer {name}: gpu_experts GPU {g} holds the same expert twice "
                                    f"(expert {values[np.argmax(counts)]})")

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
        """Build a plan from its JSON object, refusing anything that does not add up.

        Every declared count must be a JSON integer (not a bool, float or string) that matches the
        ``gpu_experts`` tables: ``num_gpus`` and ``slots_per_gpu`` their shape (the same in every
        layer), ``num_redundant`` = ``num_gpus·slots_per_gpu - num_experts``, ``num_nodes ×
        gpus_per_node`` = ``num_gpus``; table entries are expert ids in ``[0, num_experts)``, every
        expert on some GPU, none twice on a GPU; ``replica_policy`` is a known policy. The
        metadata routelens reads back (``topology``, ``cost_model``, ``trace``, ``model``) must
        have the right types and agree with the counts.

        Raises:
            PlanError: one line naming ``source``, the layer (where there is one) and the field.
        """
        PLAN.check(obj, source)
        if not _is_int(obj.get("version")):  # JSON true == 1 in Python
            raise PlanError(f"{source} has plan format version {_show(obj.get('version'))}; this routelens reads {PLAN.version}")
        try:
            tables = _read_tables(obj.get("layers"))
            num_experts = _count(obj, "num_experts", minimum=1)
            shape = next(iter(tables.values())).shape
            num_gpus, slots = int(shape[0]), int(shape[1])
            for key, value in (("num_gpus", num_gpus), ("slots_per_gpu", slots)):
                declared = _count(obj, key, minimum=1, required=False)
                if declared is not None and declared != value:
                    raise PlanError(f"{key} {declared} does not match the gpu_experts tables ({value})")
            if num_experts > num_gpus * slots:
                raise PlanError(f"num_experts {num_experts} is more than the {num_gpus * slots} slots of "
                                f"{num_gpus} GPUs × {slots}: some expert is placed on no GPU")
            redundant = _count(obj, "num_redundant", minimum=0, required=False)
            if redundant is not None and redundant != num_gpus * slots - num_experts:
                raise PlanError(f"num_redundant {redundant} does not match the tables: num_gpus {num_gpus} × "
                                f"slots_per_gpu {slots} - num_experts {num_experts} = {num_gpus * slots - num_experts}")
            num_nodes = _count(obj, "num_nodes", minimum=1, required=False) or 1
            per_node = _count(obj, "gpus_per_node", minimum=1, required=False)
            if num_gpus % num_nodes or (per_node is not None and per_node * num_nodes != num_gpus):
                raise PlanError(f"num_nodes {num_nodes} × gpus_per_node {_show(per_node)} does not make "
                                f"the {num_gpus} GPUs of the gpu_experts tables")
            policy = obj.get("replica_policy", REPLICA_POLICIES[0])
            if not isinstance(policy, str) or policy not in REPLICA_POLICIES:
                raise PlanError(f"unknown replica_policy {_show(policy)} (known: {', '.join(REPLICA_POLICIES)})")
            method = obj.get("method", "custom")
            if not isinstance(method, str):
                raise PlanError(f"method must be a string, got {_show(method)}")
            _check_meta(obj, num_gpus, num_nodes, num_experts)
            return cls(gpu_experts=tables, num_experts=num_experts, num_nodes=num_nodes, replica_policy=policy,
                       method=method, meta={k: v for k, v in obj.items() if k not in _RESERVED})
        except PlanError as exc:
            raise PlanError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read and validate a plan file (one-line PlanError on any problem)."""
        return cls.from_json(PLAN.read(path), source=_printable(str(path)))


_RESERVED = {
    *HEADER_KEYS, "num_gpus", "num_nodes", "gpus_per_node", "num_experts",
    "slots_per_gpu", "num_redundant", "replica_policy", "method", "layers",
}


# ---------------------------------------------------------------------- JSON checks (Plan.from_json)
def _is_int(value: Any) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``true == 1`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a bool; NaN and Infinity, which Python's json reads, are refused)."""
    return _is_int(value) or (isinstance(value, float) and bool(np.isfinite(value)))


def _show(value: Any, limit: int = 40) -> str:
    """``repr`` of a JSON value cut to ``limit`` characters, so an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _printable(name: str) -> str:
    """A layer name or path fit for a one-line message (escaped when it holds control characters)."""
    return name if name.isprintable() and len(name) <= 120 else _show(name, 120)


def _count(obj: dict, key: str, minimum: int, required: bool = True) -> int | None:
    """``obj[key]`` as a JSON integer ``>= minimum`` (None when absent and not required)."""
    if key not in obj and not required:
        return None
    value = obj.get(key)
    if not _is_int(value) or value < minimum:
        what = "missing" if key not in obj else f"{_show(value)} ({type(value).__name__})"
        raise PlanError(f"{key} must be an integer >= {minimum}, got {what}")
    return value


def _read_tables(layers: Any) -> dict[str, np.ndarray]:
    """``layers`` → ``{name: [G, S] int64}``: lists of lists of JSON integers, one shape for all layers."""
    if not isinstance(layers, dict):
        raise PlanError(f"layers must be an object of layer name → {{\"gpu_experts\": [[...], ...]}}, got {_show(layers)}")
    if not layers:
        raise PlanError("no layers")
    tables: dict[str, np.ndarray] = {}
    first: tuple[str, tuple[int, int]] | None = None
    for key, spec in layers.items():
        name = _printable(key)
        rows = spec.get("gpu_experts") if isinstance(spec, dict) else None
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
            raise PlanError(f"layer {name}: gpu_experts must be a non-empty list of non-empty lists (one per GPU)")
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise PlanError(f"layer {name}: gpu_experts is ragged: GPUs have {sorted(widths)} slots, all need the same")
        bad = [x for r in rows for x in r if not _is_int(x)]
        if bad:
            raise PlanError(f"layer {name}: gpu_experts must hold integer expert ids, found {_show(bad[0])}")
        shape = (len(rows), len(rows[0]))
        if first is None:
            first = (name, shape)
        elif shape != first[1]:
            raise PlanError(f"layer {name}: gpu_experts is {shape[0]}×{shape[1]} but layer {first[0]} is "
                            f"{first[1][0]}×{first[1][1]}: every layer needs the same GPUs and slots")
        if any(not -2**62 < x < 2**62 for r in rows for x in r):
            raise PlanError(f"layer {name}: gpu_experts holds an expert id far out of range")
        tables[key] = np.array(rows, dtype=np.int64)
    return tables


def _check_origin(origin: Any, what: str) -> None:
    """A run a plan was fitted on (``trace``, or an entry of ``traces``): path, fingerprint, token counts."""
    if not isinstance(origin, dict):
        raise PlanError(f"{what} must be an object, got {_show(origin)}")
    for key in ("path", "fingerprint"):
        if key in origin and not isinstance(origin[key], str):
            raise PlanError(f"{what} {key} must be a string, got {_show(origin[key])}")
    _count(origin, "num_tokens", minimum=0, required=False)
    fit = origin.get("fit_tokens")
    if fit is not None and not (isinstance(fit, list) and len(fit) == 2 and all(_is_int(x) for x in fit)
                                and 0 <= fit[0] <= fit[1]):
        raise PlanError(f"{what} fit_tokens must be [start, end] integers with 0 <= start <= end, got {_show(fit)}")


def _check_meta(obj: dict, num_gpus: int, num_nodes: int, num_experts: int) -> None:
    """Types of the metadata routelens reads back, and its counts against the plan's."""
    topo = obj.get("topology")
    if topo is not None:
        if not isinstance(topo, dict):
            raise PlanError(f"topology must be an object, got {_show(topo)}")
        nodes = _count(topo, "num_nodes", minimum=1, required=False)
        per_node = _count(topo, "gpus_per_node", minimum=1, required=False)
        if nodes is not None and nodes != num_nodes:
            raise PlanError(f"topology num_nodes {nodes} does not match num_nodes {num_nodes}")
        if per_node is not None and per_node * (nodes or num_nodes) != num_gpus:
            raise PlanError(f"topology gpus_per_node {per_node} does not match the {num_gpus} GPUs on {num_nodes} node(s)")
        for key, value in topo.items():
            if key.endswith(("_gbps", "_us", "_tflops")) and not (_is_number(value) and value >= 0):
                raise PlanError(f"topology {key} must be a number >= 0, got {_show(value)}")
            if key.endswith("_link") and not isinstance(value, str):
                raise PlanError(f"topology {key} must be a string, got {_show(value)}")
    cost = obj.get("cost_model")
    if cost is not None:
        if not isinstance(cost, dict):
            raise PlanError(f"cost_model must be an object, got {_show(cost)}")
        for key, minimum in (("token_bytes", 1e-9), ("expert_flops_per_token", 0.0)):
            if key in cost and not (_is_number(cost[key]) and cost[key] >= minimum):
                raise PlanError(f"cost_model {key} must be a number >= {minimum:g}, got {_show(cost[key])}")
    if obj.get("trace") is not None:
        _check_origin(obj["trace"], "trace")
    several = obj.get("traces")
    if several is not None:
        if not isinstance(several, list) or not several:
            raise PlanError(f"traces must be a non-empty list of the runs the plan was fitted on, got {_show(several)}")
        for n, origin in enumerate(several):
            _check_origin(origin, f"traces[{n}]")
            weight = origin.get("weight")
            if weight is not None and not (_is_number(weight) and weight > 0):
                raise PlanError(f"traces[{n}] weight must be a number > 0, got {_show(weight)}")
    model = obj.get("model")
    if model is not None:
        if not isinstance(model, dict):
            raise PlanError(f"model must be an object, got {_show(model)}")
        for key in ("num_layers", "hidden_size", "top_k"):
            if model.get(key) is not None:
                _count(model, key, minimum=1)
        if model.get("num_experts") is not None and _count(model, "num_experts", minimum=1) != num_experts:
            raise PlanError(f"model num_experts {model['num_experts']} does not match num_experts {num_experts}")
