"""Re-routing policies as one object: name, settings, and what was fitted for them.

A :class:`Policy` turns one layer's router logits into a new choice::

    ids, weights = policy.choose(layer, logits, rule)      # logits [N, E] -> [N, K], [N, K]

The same object drives the trace simulation (``routelens reroute``) and the in-model evaluation
(``routelens reroute-eval``). Policies that need data are built from it:

* ``c2r`` (:func:`c2r_policy`): collaborator lists from a calibration run's co-activation counts;
* ``gpu-limited`` (:func:`gpu_limited_policy`): a placement ``Plan``;
* ``capacity-drop`` / ``capacity-reroute`` (:func:`capacity_policy`): only a capacity factor;
* ``none``: the model's own routing (the unconstrained baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InputError
from .c2r import c2r_choose, collaborators
from .capacity import capacity_drop_choose, capacity_reroute_choose
from .gpu_limited import GPU_SCORES, gpu_limited_choose
from .scores import as_long_tensor, finish_weights, rule_scores, topk_choice

POLICIES = ("none", "c2r", "gpu-limited", "capacity-drop", "capacity-reroute")


@dataclass
class Policy:
    """A fitted re-routing policy.

    Attributes:
        name: one of :data:`POLICIES`.
        top_t: C2R group size ``T`` (collaborators per expert).
        max_gpus: ``M`` for ``gpu-limited``.
        gpu_score: how ``gpu-limited`` ranks GPUs (``max``: DeepSeek-V2, ``mass``).
        capacity_factor: ``gamma`` for the capacity policies.
        collaborator_ids: layer -> ``[E, T]`` C2R collaborator table.
        gpu_tables: layer -> ``[G, S]`` placement (``Plan.gpu_experts``).
    """

    name: str
    top_t: int | None = None
    max_gpus: int | None = None
    gpu_score: str = "max"
    capacity_factor: float | None = None
    collaborator_ids: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    gpu_tables: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _on_device: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise InputError(f"unknown policy '{self.name}' (choose from {', '.join(POLICIES)})")

    @property
    def is_identity(self) -> bool:
        """True for ``none``: the model keeps its own choice."""
        return self.name == "none"

    def settings(self) -> dict[str, Any]:
        """The knobs that define this setting (what a result row records next to ``policy``)."""
        if self.name == "c2r":
            return {"top_t": self.top_t}
        if self.name == "gpu-limited":
            return {"max_gpus": self.max_gpus, "gpu_score": self.gpu_score}
        if self.name.startswith("capacity"):
            return {"capacity_factor": self.capacity_factor}
        return {}

    def label(self) -> str:
        """Short human name: ``c2r T=16``, ``gpu-limited M=4 (max)``, ``capacity-reroute 1.25``."""
        if self.name == "c2r":
            return f"c2r T={self.top_t}"
        if self.name == "gpu-limited":
            return f"gpu-limited M={self.max_gpus} ({self.gpu_score})"
        if self.name.startswith("capacity"):
            return f"{self.name} {self.capacity_factor:g}"
        return "none"

    def choose(self, layer: str, logits: torch.Tensor, rule) -> tuple[torch.Tensor, torch.Tensor]:
        """New choice for ``logits [N, E]`` of ``layer``: ``(ids [N, K] int64, weights [N, K] float32)``.

        ``-1`` ids (weight 0) are slots a capacity policy dropped. All ``N`` tokens are one batch
        for the capacity policies.
        """
        if self.name == "none":
            select, gate = rule_scores(logits, rule)
            ids = topk_choice(select, rule.top_k)
            return ids, finish_weights(logits, gate, ids, rule)
        if self.name == "c2r":
            return c2r_choose(logits, rule, self._table(self.collaborator_ids, layer, logits.device))
        if self.name == "gpu-limited":
            return gpu_limited_choose(logits, rule, self._table(self.gpu_tables, layer, logits.device),
                                      self.max_gpus, self.gpu_score)
        if self.name == "capacity-drop":
            return capacity_drop_choose(logits, rule, self.capacity_factor)
        return capacity_reroute_choose(logits, rule, self.capacity_factor)

    def _table(self, tables: Mapping[str, np.ndarray], layer: str, device) -> torch.Tensor:
        key = (layer, str(device))
        if key not in self._on_device:
            if layer not in tables:
                raise InputError(f"policy {self.label()} was not fitted for layer '{layer}'")
            self._on_device[key] = as_long_tensor(tables[layer], device)
        return self._on_device[key]


# ---------------------------------------------------------------------------- builders
def none_policy() -> Policy:
    """The unconstrained model (baseline row)."""
    return Policy("none")


def c2r_policy(coactivation: Mapping[str, np.ndarray], top_t: int) -> Policy:
    """C2R with ``Top-T`` collaborators from per-layer co-activation counts ``[E, E]``.

    The counts come from a calibration run (the paper's expert profiling).
    """
    if not coactivation:
        raise InputError("C2R needs co-activation counts of at least one layer")
    return Policy("c2r", top_t=int(top_t),
                  collaborator_ids={layer: collaborators(counts, int(top_t)) for layer, counts in coactivation.items()})


def gpu_limited_policy(plan, max_gpus: int, gpu_score: str = "max") -> Policy:
    """Device-limited routing over ``plan`` (a :class:`routelens.plan.Plan`): at most ``M`` GPUs a token."""
    if gpu_score not in GPU_SCORES:
        raise InputError(f"unknown --gpu-score '{gpu_score}' (choose from {', '.join(GPU_SCORES)})")
    if not 1 <= int(max_gpus) <= plan.num_gpus:
        raise InputError(f"--max-gpus {max_gpus} must lie in [1, {plan.num_gpus}] for a {plan.num_gpus}-GPU plan")
    return Policy("gpu-limited", max_gpus=int(max_gpus), gpu_score=gpu_score,
                  gpu_tables={layer: np.asarray(table) for layer, table in plan.gpu_experts.items()})


def capacity_policy(kind: str, capacity_factor: float) -> Policy:
    """``capacity-drop`` or ``capacity-reroute`` with capacity factor ``gamma``."""
    if kind not in ("capacity-drop", "capacity-reroute"):
        raise InputError(f"unknown capacity policy '{kind}' (capacity-drop or capacity-reroute)")
    if not float(capacity_factor) > 0:
        raise InputError(f"--capacity-factor must be positive, got {capacity_factor}")
    return Policy(kind, capacity_factor=float(capacity_factor))
