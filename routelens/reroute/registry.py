"""Every re-routing policy, registered once by name: its settings, builder, options, label, and what it needs.

A :class:`PolicySpec` is one policy. ``routelens reroute``, ``reroute-eval`` and ``finetune``, the
evaluation sweep and the dashboard look policies up here (:func:`get_policy`) instead of comparing
names. The module imports no torch: names, settings, command-line options (:mod:`.options`) and sweeps are plain
Python, so the command line starts fast; a policy's builder (the pure function of router logits
that applies it, in :mod:`.c2r`, :mod:`.gpu_limited`, :mod:`.capacity`) and its fitting are imported
when first called.

Adding a policy (docs/reroute.md has a worked example): write its pure function
``(logits [N, E], rule, ...) -> (ids [N, K], weights [N, K])``, a frozen settings dataclass whose
fields are named after the options that set them (:data:`~routelens.reroute.options.OPTIONS`; a new knob is
one more option there), and one :func:`register` call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import InputError
from .options import GPU_FILLS, GPU_SCORES, OPTIONS, WEIGHTINGS, PolicyOption, one_of

__all__ = ["GPU_FILLS", "GPU_SCORES", "OPTIONS", "WEIGHTINGS", "C2RSettings", "CapacitySettings", "GpuAdaptiveSettings",
           "GpuLimitedSettings", "NoSettings", "PolicyChoice", "PolicyContext", "PolicyOption", "PolicySpec",
           "PolicySweep", "get_policy", "is_baseline", "policy_names", "register", "settings_from_row"]


# ---------------------------------------------------------------------------- settings (one frozen type per policy)
@dataclass(frozen=True)
class NoSettings:
    """``none``, the model's own routing, has no knobs."""


@dataclass(frozen=True)
class C2RSettings:
    """``c2r``: ``top_t`` (C2R's ``T``, ``--group-size``) collaborators each expert may be paired with."""

    top_t: int
    weights: str = "renorm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_t", int(self.top_t))
        if self.top_t < 1:
            raise InputError(f"--group-size must be >= 1, got {self.top_t}")
        one_of("--routing-weights", self.weights, WEIGHTINGS)


@dataclass(frozen=True)
class GpuLimitedSettings:
    """``gpu-limited``: at most ``max_gpus`` GPUs per token, ranked by ``gpu_score``; lost experts ``fill``."""

    max_gpus: int
    gpu_score: str = "max"
    fill: str = "best"
    weights: str = "renorm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_gpus", int(self.max_gpus))
        if self.max_gpus < 1:
            raise InputError(f"--max-gpus must be >= 1, got {self.max_gpus}")
        one_of("--gpu-score", self.gpu_score, GPU_SCORES)
        one_of("--gpu-fill", self.fill, GPU_FILLS)
        one_of("--routing-weights", self.weights, WEIGHTINGS)


@dataclass(frozen=True)
class GpuAdaptiveSettings:
    """``gpu-adaptive``: visit a GPU only if it holds ``min_gpu_share`` of the token's weight (optional cap)."""

    min_gpu_share: float
    max_gpus: int | None = None
    fill: str = "best"
    weights: str = "renorm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_gpu_share", float(self.min_gpu_share))
        if not 0.0 <= self.min_gpu_share <= 1.0:
            raise InputError(f"--min-gpu-share must lie in [0, 1], got {self.min_gpu_share}")
        if self.max_gpus is not None:
            object.__setattr__(self, "max_gpus", int(self.max_gpus))
            if self.max_gpus < 1:
                raise InputError(f"--max-gpus must be >= 1, got {self.max_gpus}")
        one_of("--gpu-fill", self.fill, GPU_FILLS)
        one_of("--routing-weights", self.weights, WEIGHTINGS)


@dataclass(frozen=True)
class CapacitySettings:
    """``capacity-drop`` / ``capacity-reroute``: capacity ``ceil(capacity_factor * T * K / E)`` per expert."""

    capacity_factor: float
    weights: str = "renorm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity_factor", float(self.capacity_factor))
        if not (self.capacity_factor > 0 and math.isfinite(self.capacity_factor)):
            raise InputError(f"--capacity-factor must be positive, got {self.capacity_factor}")
        one_of("--routing-weights", self.weights, WEIGHTINGS)


# ---------------------------------------------------------------------------- the registered policy
@dataclass(frozen=True)
class PolicyContext:
    """What a policy's defaults depend on: ``num_experts`` E, ``top_k`` K, and the plan's ``num_gpus`` G
    and ``slots_per_gpu`` S."""

    num_experts: int
    top_k: int
    num_gpus: int
    slots_per_gpu: int


Builder = Callable[..., Any]  # (logits [N, E], rule, settings, table [E, T] | [G, S] | None) -> (ids, weights)


@dataclass(frozen=True)
class PolicySpec:
    """One re-routing policy.

    Attributes:
        name: what ``--policy`` takes and result rows record.
        summary: one line for ``--help`` and docs; ``source``: the paper the definition comes from.
        settings_type: the frozen settings dataclass; its fields are named after :data:`OPTIONS` fields.
        build: the pure function that applies it: ``(logits [N, E], rule, settings, table) -> (ids [N, K]
            int64, weights [N, K] float32)``, ``table`` being what :attr:`fit` made for the layer (None if
            nothing). ``-1`` ids (weight 0) are dropped slots.
        fit: ``(settings, FitData) -> {layer: table}``, or None when nothing is fitted.
        needs_plan: fitted on a placement :class:`~routelens.plan.Plan` (the GPU policies).
        needs_coactivation: fitted on calibration co-activation counts (C2R's collaborator groups).
        sweep_axes: settings fields ``reroute-eval`` sweeps, innermost first (``weights`` is always
            the outermost axis).
        one_run: context -> defaults of the required fields for one run (``reroute``, ``finetune``).
        sweep: context -> default values of each swept axis.
        tag: the swept knob, short (``T=16``, ``M=2``, ``0.1``, ``1.25``); ``qualifier``: the knobs that
            are not swept but still name the setting (`` (mass)``, `` M<=4``); ``run_tag``: the knob in a
            folder name (``t16``, ``m2``).
        is_baseline: the unconstrained model (``none``): never re-routes, never swept.
    """

    name: str
    summary: str
    source: str
    settings_type: type
    build: Builder
    fit: Callable[[Any, Any], dict] | None = None
    needs_plan: bool = False
    needs_coactivation: bool = False
    sweep_axes: tuple[str, ...] = ()
    one_run: Callable[[PolicyContext], dict[str, Any]] = lambda context: {}
    sweep: Callable[[PolicyContext], dict[str, tuple]] = lambda context: {}
    tag: Callable[[Any], str] = lambda settings: ""
    qualifier: Callable[[Any], str] = lambda settings: ""
    run_tag: Callable[[Any], str] = lambda settings: ""
    is_baseline: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """The settings fields, in the order result rows record them."""
        return tuple(f.name for f in dataclasses.fields(self.settings_type))

    @property
    def options(self) -> tuple[PolicyOption, ...]:
        """The command-line options that set this policy's settings."""
        return tuple(option for option in OPTIONS if option.field in self.fields)

    def settings(self, **values) -> Any:
        """A settings object of this policy from field values (unknown fields are refused)."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise InputError(f"policy {self.name} has no setting {', '.join(sorted(unknown))}")
        try:
            return self.settings_type(**values)
        except TypeError as exc:  # a required field is missing
            raise InputError(f"policy {self.name}: {exc}") from None

    def record(self, settings) -> dict[str, Any]:
        """The settings as a result row / manifest records them (field order)."""
        return dataclasses.asdict(settings)

    def label(self, settings) -> str:
        """Short human name: ``c2r T=16``, ``gpu-limited M=4 (mass)``, ``gpu-adaptive 0.1 drop keep``."""
        if self.is_baseline:
            return self.name
        return f"{self.name} {self.tag(settings)}{self.qualifier(settings)}{_modifiers(settings)}"

    def curve(self, settings) -> str:
        """The curve a setting lies on: its label without the swept knob (``gpu-limited drop keep``)."""
        return f"{self.name}{self.qualifier(settings)}{_modifiers(settings)}"

    def run_name(self, settings) -> str:
        """The policy in a folder name: ``c2r-t8``, ``gpu-limited-m4-keep``, ``capacity-drop-1.25``."""
        parts = [self.name, self.run_tag(settings)]
        if getattr(settings, "weights", "renorm") == "keep":
            parts.append("keep")
        return "-".join(part for part in parts if part)


def _modifiers(settings) -> str:
    """`` drop`` for ``--gpu-fill drop``, `` keep`` for ``--routing-weights keep`` (the defaults stay unnamed)."""
    return (" drop" if getattr(settings, "fill", "best") == "drop" else "") + (
        " keep" if getattr(settings, "weights", "renorm") == "keep" else "")


_REGISTRY: dict[str, PolicySpec] = {}


def register(spec: PolicySpec) -> PolicySpec:
    """Add ``spec`` to the registry (its name must be new)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"policy '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_policy(name: str) -> PolicySpec:
    """The registered policy called ``name``.

    Raises:
        InputError: no such policy.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown policy '{name}' (choose from {', '.join(_REGISTRY)})") from None


def policy_names(include_baseline: bool = False) -> tuple[str, ...]:
    """Registered names in registration order; without the baseline (``none``) unless asked."""
    return tuple(name for name, spec in _REGISTRY.items() if include_baseline or not spec.is_baseline)


def is_baseline(name: str) -> bool:
    """True for the unconstrained model's name (a result row's ``policy``); False for any other name."""
    spec = _REGISTRY.get(name)
    return spec is not None and spec.is_baseline


def settings_from_row(row: Mapping[str, Any]) -> tuple[PolicySpec, Any]:
    """The policy and settings of a ``reroute-eval`` result row (the row records the settings' fields)."""
    spec = get_policy(row["policy"])
    return spec, spec.settings(**{name: row[name] for name in spec.fields if name in row})


# ---------------------------------------------------------------------------- what a command asks for
@dataclass(frozen=True)
class PolicyChoice:
    """One policy to run (``reroute``, ``finetune``): its name and the settings given (field -> value;
    a missing field takes the policy's default for the run's context)."""

    policy: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, context: PolicyContext) -> tuple[PolicySpec, Any]:
        """``(spec, settings)``; values of fields the policy does not have are ignored (``--max-gpus`` for c2r)."""
        spec = get_policy(self.policy)
        given = {name: value for name, value in self.values.items() if name in spec.fields and value is not None}
        return spec, spec.settings(**{**spec.one_run(context), **given})


@dataclass(frozen=True)
class PolicySweep:
    """The settings ``reroute-eval`` sweeps: policies (empty: all but the baseline) and, per settings field,
    the values given (a field not given sweeps each policy's defaults)."""

    policies: tuple[str, ...] = ()
    values: Mapping[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.policies:
            if name not in _REGISTRY or _REGISTRY[name].is_baseline:
                raise InputError(f"unknown --policy '{name}' (choose from {', '.join(policy_names())})")

    def resolve(self, context: PolicyContext) -> list[tuple[PolicySpec, Any]]:
        """Every ``(spec, settings)`` of the sweep, policy by policy; within a policy the grid of its
        :attr:`~PolicySpec.sweep_axes` (first axis innermost) inside each ``weights``."""
        settings = []
        for name in self.policies or policy_names():
            spec = get_policy(name)
            defaults = spec.sweep(context)
            grid: list[dict[str, Any]] = [{}]
            for axis in (*spec.sweep_axes, "weights"):
                values = self.values.get(axis) or defaults.get(axis) or (WEIGHTINGS if axis == "weights" else ())
                grid = [{**entry, axis: value} for value in values for entry in grid]
            settings += [(spec, spec.settings(**entry)) for entry in grid]
        return settings


# ---------------------------------------------------------------------------- the policies
def _build_none(logits, rule, settings, table):
    from ..routing_rule import choose

    return choose(logits, rule)


def _build_c2r(logits, rule, settings: C2RSettings, collaborator_ids):
    from .c2r import c2r_choose

    return c2r_choose(logits, rule, collaborator_ids, settings.weights)


def _fit_c2r(settings: C2RSettings, data) -> dict:
    from .c2r import collaborators

    return {layer: collaborators(counts, settings.top_t) for layer, counts in data.coactivation_counts().items()}


def _build_gpu_limited(logits, rule, settings: GpuLimitedSettings, gpu_table):
    from .gpu_limited import gpu_limited_choose

    return gpu_limited_choose(logits, rule, gpu_table, settings.max_gpus, settings.gpu_score, settings.weights,
                              settings.fill)


def _build_gpu_adaptive(logits, rule, settings: GpuAdaptiveSettings, gpu_table):
    from .gpu_limited import gpu_share_choose

    return gpu_share_choose(logits, rule, gpu_table, settings.min_gpu_share, settings.max_gpus, settings.weights,
                            settings.fill)


def _fit_plan_tables(settings, data) -> dict:
    """The plan's ``[G, S]`` table per layer, after checking ``max_gpus`` against its GPUs."""
    import numpy as np

    plan = data.plan
    max_gpus = getattr(settings, "max_gpus", None)
    if max_gpus is not None and not 1 <= max_gpus <= plan.num_gpus:
        raise InputError(f"--max-gpus {max_gpus} must lie in [1, {plan.num_gpus}] for a {plan.num_gpus}-GPU plan")
    return {layer: np.asarray(table) for layer, table in plan.gpu_experts.items()}


def _build_capacity_drop(logits, rule, settings: CapacitySettings, table):
    from .capacity import capacity_drop_choose

    return capacity_drop_choose(logits, rule, settings.capacity_factor, settings.weights)


def _build_capacity_reroute(logits, rule, settings: CapacitySettings, table):
    from .capacity import capacity_reroute_choose

    return capacity_reroute_choose(logits, rule, settings.capacity_factor, settings.weights)


def _c2r_group_sizes(context: PolicyContext) -> tuple[int, ...]:
    """``T`` in ``{E/8, E/4, E/2}`` that give every token its ``K`` experts (``K - 1 <= T <= E - 1``)."""
    e, k = context.num_experts, context.top_k
    sizes = sorted({t for t in (e // 8, e // 4, e // 2) if max(k - 1, 1) <= t <= e - 1})
    return tuple(sizes) or (min(max(k - 1, 1), e - 1),)


def _gpu_limits(context: PolicyContext) -> tuple[int, ...]:
    """``M`` from the fewest GPUs that hold ``K`` experts (``ceil(K / S)``) up to ``G / 2``."""
    fewest = max(1, math.ceil(context.top_k / context.slots_per_gpu))
    return tuple(range(fewest, max(context.num_gpus // 2, fewest) + 1))


register(PolicySpec(
    "none", "the model's own top-k (the unconstrained baseline)", "", NoSettings, _build_none, is_baseline=True))
register(PolicySpec(
    "c2r", "top-1 expert, then K-1 of its Top-T collaborators (the experts it co-activates with most)",
    "Zhang et al., C2R, NAACL 2025, arXiv:2504.01337", C2RSettings, _build_c2r, fit=_fit_c2r,
    needs_coactivation=True, sweep_axes=("top_t",),
    one_run=lambda c: {"top_t": max(c.num_experts // 4, c.top_k - 1)},
    sweep=lambda c: {"top_t": _c2r_group_sizes(c)},
    tag=lambda s: f"T={s.top_t}", run_tag=lambda s: f"t{s.top_t}"))
register(PolicySpec(
    "gpu-limited", "experts on at most --max-gpus GPUs of a plan, those holding the token's best experts",
    "DeepSeek-V2 device-limited routing, arXiv:2405.04434 Sec. 2.1.3",
    GpuLimitedSettings, _build_gpu_limited, fit=_fit_plan_tables, needs_plan=True,
    sweep_axes=("max_gpus", "gpu_score", "fill"),
    one_run=lambda c: {"max_gpus": max(1, c.num_gpus // 2)},
    sweep=lambda c: {"max_gpus": _gpu_limits(c), "gpu_score": ("max",), "fill": ("best",)},
    tag=lambda s: f"M={s.max_gpus}", qualifier=lambda s: "" if s.gpu_score == "max" else f" ({s.gpu_score})",
    run_tag=lambda s: f"m{s.max_gpus}"))
register(PolicySpec(
    "gpu-adaptive", "only GPUs holding --min-gpu-share of the token's routing weight (the heaviest always)",
    "routelens (the Lagrangian of fewest GPUs for the least weight lost; not from a paper)",
    GpuAdaptiveSettings, _build_gpu_adaptive, fit=_fit_plan_tables, needs_plan=True,
    sweep_axes=("min_gpu_share", "fill"),
    one_run=lambda c: {"min_gpu_share": 0.1},
    sweep=lambda c: {"min_gpu_share": (0.05, 0.075, 0.1, 0.15), "fill": ("best",)},
    tag=lambda s: f"{s.min_gpu_share:g}", qualifier=lambda s: "" if s.max_gpus is None else f" M<={s.max_gpus}",
    run_tag=lambda s: f"s{s.min_gpu_share:g}"))
for _name, _build, _factors, _what in (
        ("capacity-drop", _build_capacity_drop, (1.0, 1.25, 1.5), "dropped"),
        ("capacity-reroute", _build_capacity_reroute, (1.0, 1.1, 1.25), "moved to the best expert with room")):
    register(PolicySpec(
        _name, f"cap each expert at --capacity-factor x the mean load per forward pass, the lowest-scoring "
        f"overflow {_what}",
        "He et al., Capacity-Aware Inference, arXiv:2503.05066", CapacitySettings, _build,
        sweep_axes=("capacity_factor",), one_run=lambda c: {"capacity_factor": 1.25},
        sweep=lambda c, factors=_factors: {"capacity_factor": factors},
        tag=lambda s: f"{s.capacity_factor:g}", run_tag=lambda s: f"{s.capacity_factor:g}"))
del _name, _build, _factors, _what
