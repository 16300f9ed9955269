"""A fitted re-routing policy: a registered policy, its settings, and what it was fitted on.

A :class:`Policy` turns one layer's router logits into a new choice::

    ids, weights = policy.choose(layer, logits, rule)      # logits [N, E] -> [N, K], [N, K]

The same object drives the trace simulation (``routelens reroute``), the in-model evaluation
(``routelens reroute-eval``) and the fine-tune (``routelens finetune``). What a policy is (name,
settings, builder, options, label) is registered in :mod:`.registry`; :func:`fit_policy` fits it on
:class:`FitData`:

* policies with ``needs_coactivation`` (``c2r``): collaborator groups from a calibration run's
  co-activation counts (the paper's expert profiling);
* policies with ``needs_plan`` (``gpu-limited``, ``gpu-adaptive``): a placement ``Plan``;
* the others (``capacity-drop``, ``capacity-reroute``, ``none``): nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import InputError
from ..plan import Plan
from .registry import (C2RSettings, CapacitySettings, GpuAdaptiveSettings, GpuLimitedSettings, NoSettings,
                       PolicyContext, PolicySpec, PolicySweep, get_policy)
from .scores import as_long_tensor


@dataclass
class FitData:
    """What policies are fitted on; a part no chosen policy needs may be missing.

    Attributes:
        plan: the placement the GPU policies limit tokens to.
        calibration: layer -> ``[T, K]`` experts the unmodified model chose on calibration tokens
            (its co-activation counts are computed on first use).
        num_experts: ``E``, to count co-activations in ``calibration``.
        coactivation: layer -> ``[E, E]`` co-activation counts, when already counted.
    """

    plan: Plan | None = None
    calibration: Mapping[str, np.ndarray] | None = None
    num_experts: int | None = None
    coactivation: Mapping[str, np.ndarray] | None = None

    def coactivation_counts(self) -> Mapping[str, np.ndarray]:
        """Layer -> ``[E, E]`` co-activation counts of the calibration choices (counted once)."""
        if self.coactivation is None and self.calibration is not None:
            from ..graphs import coactivation_counts

            self.coactivation = {layer: coactivation_counts(np.asarray(ids, dtype=np.int64), self.num_experts)
                                 for layer, ids in self.calibration.items()}
        return self.coactivation or {}


@dataclass
class Policy:
    """A registered policy with its settings and the per-layer tables it was fitted on.

    Attributes:
        spec: the registered policy (:func:`~routelens.reroute.registry.get_policy`).
        settings: its frozen settings.
        tables: layer -> ``[E, T]`` C2R collaborator table or ``[G, S]`` placement (empty when nothing
            was fitted).
    """

    spec: PolicySpec
    settings: Any
    tables: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    _on_device: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_identity(self) -> bool:
        """True for the baseline (``none``): the model keeps its own choice."""
        return self.spec.is_baseline

    def record(self) -> dict[str, Any]:
        """The knobs that define this setting (what a result row records next to ``policy``)."""
        return self.spec.record(self.settings)

    def label(self) -> str:
        """Short human name: ``c2r T=16``, ``gpu-limited M=4``, ``gpu-adaptive 0.1 drop keep``."""
        return self.spec.label(self.settings)

    def choose(self, layer: str, logits: torch.Tensor, rule) -> tuple[torch.Tensor, torch.Tensor]:
        """New choice for ``logits [N, E]`` of ``layer``: ``(ids [N, K] int64, weights [N, K] float32)``.

        ``-1`` ids (weight 0) are slots a capacity policy dropped. All ``N`` tokens are one batch
        for the capacity policies.
        """
        table = self._table(layer, logits.device) if self.spec.fit is not None else None
        return self.spec.build(logits, rule, self.settings, table)

    def _table(self, layer: str, device) -> torch.Tensor:
        key = (layer, str(device))
        if key not in self._on_device:
            if layer not in self.tables:
                raise InputError(f"policy {self.label()} was not fitted for layer '{layer}'")
            with torch.inference_mode(False):  # a normal tensor, usable under autograd (fine-tuning) too
                self._on_device[key] = as_long_tensor(self.tables[layer], device)
        return self._on_device[key]


def fit_policy(spec: PolicySpec | str, settings, data: FitData | None = None) -> Policy:
    """``spec`` (or its name) with ``settings``, fitted on ``data``.

    Raises:
        InputError: settings of another policy, or ``data`` lacks the plan or calibration the policy needs.
    """
    spec = get_policy(spec) if isinstance(spec, str) else spec
    if not isinstance(settings, spec.settings_type):
        raise InputError(f"policy {spec.name} takes {spec.settings_type.__name__}, not {type(settings).__name__}")
    data = data or FitData()
    if spec.needs_plan and data.plan is None:
        raise InputError(f"the {spec.name} policy needs a placement (--gpus or --plan)")
    if spec.needs_coactivation and not data.coactivation_counts():
        raise InputError(f"the {spec.name} policy needs co-activation counts of at least one layer")
    return Policy(spec, settings, spec.fit(settings, data) if spec.fit is not None else {})


def fit_sweep(sweep: PolicySweep, context: PolicyContext, data: FitData) -> list[Policy]:
    """Every setting of ``sweep`` (:meth:`~routelens.reroute.registry.PolicySweep.resolve`), fitted, in order."""
    return [fit_policy(spec, settings, data) for spec, settings in sweep.resolve(context)]


# ---------------------------------------------------------------------------- shortcuts (library and tests)
def none_policy() -> Policy:
    """The unconstrained model (baseline row)."""
    return fit_policy("none", NoSettings())


def c2r_policy(coactivation: Mapping[str, np.ndarray], top_t: int, weights: str = "renorm") -> Policy:
    """C2R with ``Top-T`` collaborators from per-layer co-activation counts ``[E, E]``."""
    return fit_policy("c2r", C2RSettings(top_t, weights), FitData(coactivation=coactivation))


def gpu_limited_policy(plan: Plan, max_gpus: int, gpu_score: str = "max", weights: str = "renorm",
                       fill: str = "best") -> Policy:
    """Device-limited routing over ``plan``: at most ``max_gpus`` GPUs a token."""
    return fit_policy("gpu-limited", GpuLimitedSettings(max_gpus, gpu_score, fill, weights), FitData(plan=plan))


def gpu_adaptive_policy(plan: Plan, min_gpu_share: float, max_gpus: int | None = None, weights: str = "renorm",
                        fill: str = "best") -> Policy:
    """Adaptive GPU limit over ``plan``: visit a GPU only if it holds ``min_gpu_share`` of a token's weight."""
    return fit_policy("gpu-adaptive", GpuAdaptiveSettings(min_gpu_share, max_gpus, fill, weights), FitData(plan=plan))


def capacity_policy(name: str, capacity_factor: float, weights: str = "renorm") -> Policy:
    """``capacity-drop`` or ``capacity-reroute`` with capacity factor ``gamma``."""
    return fit_policy(name, CapacitySettings(capacity_factor, weights))
