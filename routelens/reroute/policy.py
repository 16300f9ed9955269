"""Re-routing policies as one object: name, settings, and what was fitted for them.

A :class:`Policy` turns one layer's router logits into a new choice::

    ids, weights = policy.choose(layer, logits, rule)      # logits [N, E] -> [N, K], [N, K]

The same object drives the trace simulation (``routelens reroute``) and the in-model evaluation
(``routelens reroute-eval``). Policies that need data are built from it:

* ``c2r`` (:func:`c2r_policy`): collaborator lists from a calibration run's co-activation counts;
* ``gpu-limited`` (:func:`gpu_limited_policy`) and ``gpu-adaptive`` (:func:`gpu_adaptive_policy`):
  a placement ``Plan``;
* ``capacity-drop`` / ``capacity-reroute`` (:func:`capacity_policy`): only a capacity factor;
* ``none``: the model's own routing (the unconstrained baseline).

The GPU policies also take ``fill``: ``best`` (replace the experts a token loses on the GPUs it no
longer visits by the best on the GPUs kept) or ``drop`` (just drop them; see
:mod:`~routelens.reroute.gpu_limited`).

Every policy but ``none`` takes ``weights``: ``renorm`` (the model's rule applied to the new
choice, as the papers do) or ``keep`` (each expert keeps the weight the unconstrained router gives
it; see :func:`~routelens.reroute.scores.finish_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InputError
from .c2r import c2r_choose, collaborators
from .capacity import capacity_drop_choose, capacity_reroute_choose
from .gpu_limited import GPU_FILLS, GPU_SCORES, gpu_limited_choose, gpu_share_choose
from .scores import WEIGHTINGS, as_long_tensor, finish_weights, rule_scores, topk_choice

POLICIES = ("none", "c2r", "gpu-limited", "gpu-adaptive", "capacity-drop", "capacity-reroute")


@dataclass
class Policy:
    """A fitted re-routing policy.

    Attributes:
        name: one of :data:`POLICIES`.
        top_t: C2R group size ``T`` (collaborators per expert).
        max_gpus: ``M`` for ``gpu-limited`` (optional cap for ``gpu-adaptive``).
        gpu_score: how ``gpu-limited`` ranks GPUs (``max``: DeepSeek-V2, ``mass``).
        min_gpu_share: ``gpu-adaptive``'s share of a token's routing weight a GPU must hold.
        capacity_factor: ``gamma`` for the capacity policies.
        weights: ``renorm`` or ``keep``.
        fill: the GPU policies' ``best`` or ``drop`` for the experts on GPUs a token no longer visits.
        collaborator_ids: layer -> ``[E, T]`` C2R collaborator table.
        gpu_tables: layer -> ``[G, S]`` placement (``Plan.gpu_experts``).
    """

    name: str
    top_t: int | None = None
    max_gpus: int | None = None
    gpu_score: str = "max"
    min_gpu_share: float | None = None
    capacity_factor: float | None = None
    weights: str = "renorm"
    fill: str = "best"
    collaborator_ids: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    gpu_tables: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _on_device: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise InputError(f"unknown policy '{self.name}' (choose from {', '.join(POLICIES)})")
        if self.weights not in WEIGHTINGS:
            raise InputError(f"unknown --routing-weights '{self.weights}' (choose from {', '.join(WEIGHTINGS)})")
        if self.fill not in GPU_FILLS:
            raise InputError(f"unknown --gpu-fill '{self.fill}' (choose from {', '.join(GPU_FILLS)})")

    @property
    def is_identity(self) -> bool:
        """True for ``none``: the model keeps its own choice."""
        return self.name == "none"

    def settings(self) -> dict[str, Any]:
        """The knobs that define this setting (what a result row records next to ``policy``)."""
        if self.name == "none":
            return {}
        knobs: dict[str, Any] = {
            "c2r": {"top_t": self.top_t},
            "gpu-limited": {"max_gpus": self.max_gpus, "gpu_score": self.gpu_score, "fill": self.fill},
            "gpu-adaptive": {"min_gpu_share": self.min_gpu_share, "max_gpus": self.max_gpus, "fill": self.fill},
        }.get(self.name, {"capacity_factor": self.capacity_factor})
        return {**knobs, "weights": self.weights}

    def label(self) -> str:
        """Short human name: ``c2r T=16``, ``gpu-limited M=4``, ``gpu-adaptive 0.1 drop keep``."""
        if self.name == "c2r":
            text = f"c2r T={self.top_t}"
        elif self.name == "gpu-limited":
            text = f"gpu-limited M={self.max_gpus}" + ("" if self.gpu_score == "max" else f" ({self.gpu_score})")
        elif self.name == "gpu-adaptive":
            text = f"gpu-adaptive {self.min_gpu_share:g}" + ("" if self.max_gpus is None else f" M<={self.max_gpus}")
        elif self.name.startswith("capacity"):
            text = f"{self.name} {self.capacity_factor:g}"
        else:
            return "none"
        if self.name.startswith("gpu-") and self.fill == "drop":
            text += " drop"
        return text + (" keep" if self.weights == "keep" else "")

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
            return c2r_choose(logits, rule, self._table(self.collaborator_ids, layer, logits.device), self.weights)
        if self.name == "gpu-limited":
            return gpu_limited_choose(logits, rule, self._table(self.gpu_tables, layer, logits.device),
                                      self.max_gpus, self.gpu_score, self.weights, self.fill)
        if self.name == "gpu-adaptive":
            return gpu_share_choose(logits, rule, self._table(self.gpu_tables, layer, logits.device),
                                    self.min_gpu_share, self.max_gpus, self.weights, self.fill)
        if self.name == "capacity-drop":
            return capacity_drop_choose(logits, rule, self.capacity_factor, self.weights)
        return capacity_reroute_choose(logits, rule, self.capacity_factor, self.weights)

    def _table(self, tables: Mapping[str, np.ndarray], layer: str, device) -> torch.Tensor:
        key = (layer, str(device))
        if key not in self._on_device:
            if layer not in tables:
                raise InputError(f"policy {self.label()} was not fitted for layer '{layer}'")
            with torch.inference_mode(False):  # a normal tensor, usable under autograd (fine-tuning) too
                self._on_device[key] = as_long_tensor(tables[layer], device)
        return self._on_device[key]


# ---------------------------------------------------------------------------- builders
def none_policy() -> Policy:
    """The unconstrained model (baseline row)."""
    return Policy("none")


def c2r_policy(coactivation: Mapping[str, np.ndarray], top_t: int, weights: str = "renorm") -> Policy:
    """C2R with ``Top-T`` collaborators from per-layer co-activation counts ``[E, E]``.

    The counts come from a calibration run (the paper's expert profiling).
    """
    if not coactivation:
        raise InputError("C2R needs co-activation counts of at least one layer")
    return Policy("c2r", top_t=int(top_t), weights=weights,
                  collaborator_ids={layer: collaborators(counts, int(top_t)) for layer, counts in coactivation.items()})


def gpu_limited_policy(plan, max_gpus: int, gpu_score: str = "max", weights: str = "renorm",
                       fill: str = "best") -> Policy:
    """Device-limited routing over ``plan`` (a :class:`routelens.plan.Plan`): at most ``M`` GPUs a token."""
    if gpu_score not in GPU_SCORES:
        raise InputError(f"unknown --gpu-score '{gpu_score}' (choose from {', '.join(GPU_SCORES)})")
    _check_max_gpus(plan, max_gpus)
    return Policy("gpu-limited", max_gpus=int(max_gpus), gpu_score=gpu_score, weights=weights, fill=fill,
                  gpu_tables={layer: np.asarray(table) for layer, table in plan.gpu_experts.items()})


def gpu_adaptive_policy(plan, min_gpu_share: float, max_gpus: int | None = None, weights: str = "renorm",
                        fill: str = "best") -> Policy:
    """Adaptive GPU limit over ``plan``: visit a GPU only if it holds ``min_gpu_share`` of a token's weight."""
    if not 0.0 <= float(min_gpu_share) <= 1.0:
        raise InputError(f"--min-gpu-share must lie in [0, 1], got {min_gpu_share}")
    if max_gpus is not None:
        _check_max_gpus(plan, max_gpus)
    return Policy("gpu-adaptive", min_gpu_share=float(min_gpu_share), weights=weights, fill=fill,
                  max_gpus=None if max_gpus is None else int(max_gpus),
                  gpu_tables={layer: np.asarray(table) for layer, table in plan.gpu_experts.items()})


def capacity_policy(kind: str, capacity_factor: float, weights: str = "renorm") -> Policy:
    """``capacity-drop`` or ``capacity-reroute`` with capacity factor ``gamma``."""
    if kind not in ("capacity-drop", "capacity-reroute"):
        raise InputError(f"unknown capacity policy '{kind}' (capacity-drop or capacity-reroute)")
    if not float(capacity_factor) > 0:
        raise InputError(f"--capacity-factor must be positive, got {capacity_factor}")
    return Policy(kind, capacity_factor=float(capacity_factor), weights=weights)


def _check_max_gpus(plan, max_gpus: int) -> None:
    if not 1 <= int(max_gpus) <= plan.num_gpus:
        raise InputError(f"--max-gpus {max_gpus} must lie in [1, {plan.num_gpus}] for a {plan.num_gpus}-GPU plan")
