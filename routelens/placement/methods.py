"""Placement methods, registered once by name: what each needs and the function that places one layer.

``routelens place --method``, ``plan-eval --baselines``, :func:`~routelens.placement.place.place` and
the dashboard look methods up here (:func:`get_method`) instead of comparing names. Each method's
``build(layer, cost, settings, deadline) -> (table [G, S], info)`` places one MoE layer from a
:class:`LayerFit`: each fit token's experts (``topk_ids [T, k]``), or for a load-only method just the
tokens per expert (``load [E]``), which is all a counts-only run holds.

=================  ===================  ========  ==========================================
method             needs                replicas  source
=================  ===================  ========  ==========================================
``routelens``      co-activation        yes       the routelens optimizer (:mod:`.optimizer`)
``contiguous``     nothing              yes       the engines' default layout
``random``         nothing              yes       a seeded permutation
``greedy``         load                 yes       longest-processing-time packing
``eplb``           load                 yes       DeepSeek EPLB (:mod:`.eplb`)
``kahypar``        co-activation        yes       Mt-KaHyPar km1, unit weights (:mod:`.hypergraph`)
``kahypar-load``   co-activation        yes       Mt-KaHyPar km1, load weights
=================  ===================  ========  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import InputError
from ..graphs import load_counts
from .baselines import contiguous_table, eplb_table, greedy_table, random_table
from .hypergraph import KAHYPAR_MAX_TOKENS

if TYPE_CHECKING:
    from .cost import CostModel
    from .place import PlaceSettings

REFERENCE = "contiguous"  # the layout every plan is compared with (what an engine does without a plan)


@dataclass(frozen=True)
class LayerFit:
    """What one layer is placed from.

    Attributes:
        num_experts: ``E``.
        topk_ids: ``[T, k]`` experts of each fit token (``-1`` = dropped slot), or None when only the
            load is known (a counts-only run).
        load: ``[E]`` tokens per expert; None: counted from ``topk_ids``.
    """

    num_experts: int
    topk_ids: np.ndarray | None = None
    load: np.ndarray | None = None

    def expert_load(self) -> np.ndarray:
        """``[E]`` tokens per expert."""
        if self.load is not None:
            return np.asarray(self.load)
        if self.topk_ids is None:
            raise InputError("a layer to place needs its tokens' experts or its expert loads")
        return load_counts(self.topk_ids, self.num_experts)

    def token_experts(self, method: str) -> np.ndarray:
        """``[T, k]`` int64 experts of each fit token.

        Raises:
            InputError: only the load is known (``method`` needs co-activation).
        """
        if self.topk_ids is None:
            raise InputError(f"placement method '{method}' needs each token's experts (co-activation), and this "
                             f"run holds only expert loads; use a load-only method ({', '.join(load_only_names())})")
        return np.asarray(self.topk_ids, dtype=np.int64)


Build = Callable[[LayerFit, "CostModel", "PlaceSettings", "float | None"], "tuple[np.ndarray, dict[str, Any]]"]


@dataclass(frozen=True)
class PlacementMethod:
    """One placement method.

    Attributes:
        name: what ``--method`` / ``--baselines`` take and plans record.
        summary: one line for ``--help`` and the docs.
        build: ``(layer, cost, settings, deadline) -> (table [G, S], info)``; ``info`` is a dict the
            plan records per layer (empty for the baselines). ``deadline`` is a ``perf_counter`` time.
        needs_coactivation: needs each token's experts (``topk_ids``), not only the expert loads.
        supports_replicas: can fill ``R`` redundant slots with replicas.
        is_baseline: compared against by ``plan-eval`` (all but the routelens optimizer).
        available: whether its optional dependency is installed (None: nothing optional).
    """

    name: str
    summary: str
    build: Build
    needs_coactivation: bool
    supports_replicas: bool = True
    is_baseline: bool = True
    available: Callable[[], bool] | None = None

    def is_available(self) -> bool:
        return self.available is None or self.available()


_METHODS: dict[str, PlacementMethod] = {}


def register(method: PlacementMethod) -> PlacementMethod:
    """Add ``method`` (its name must be new)."""
    if method.name in _METHODS:
        raise ValueError(f"placement method '{method.name}' is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> PlacementMethod:
    """The registered method ``name``.

    Raises:
        InputError: no such method.
    """
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown placement method '{name}' (known: {', '.join(_METHODS)})") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(_METHODS)


def baseline_names(available_only: bool = False, core_only: bool = False) -> tuple[str, ...]:
    """The methods ``plan-eval`` compares a plan with.

    Args:
        available_only: only those whose optional dependency is installed.
        core_only: only those with no optional dependency (the quick ones the dashboard runs).
    """
    return tuple(name for name, method in _METHODS.items() if method.is_baseline
                 and (not available_only or method.is_available()) and (not core_only or method.available is None))


def load_only_names() -> tuple[str, ...]:
    """Methods that place from expert loads alone (what a counts-only run allows)."""
    return tuple(name for name, method in _METHODS.items() if not method.needs_coactivation)


# ---------------------------------------------------------------------------- the methods
def _routelens(layer: LayerFit, cost, settings, deadline):
    from .optimizer import optimize_layer

    result = optimize_layer(layer.token_experts("routelens"), layer.num_experts, cost.topology.num_gpus, cost,
                            redundant=settings.redundant, policy=settings.replica_policy, seed=settings.seed,
                            seeds=settings.seeds, max_fit_tokens=settings.max_fit_tokens,
                            objective=settings.objective, deadline=deadline, kicks=settings.kicks)
    return result.table, result.info()


def _kahypar(weights: str) -> Build:
    def build(layer: LayerFit, cost, settings, deadline):
        from .hypergraph import kahypar_table
        from .optimizer import subsample_tokens

        ids = layer.token_experts("kahypar" if weights == "unit" else "kahypar-load")
        limit = min(settings.max_fit_tokens or KAHYPAR_MAX_TOKENS, KAHYPAR_MAX_TOKENS)
        sample = ids[subsample_tokens(ids.shape[0], limit, settings.seed)]
        return kahypar_table(sample, layer.num_experts, cost.topology.num_gpus, settings.redundant, weights=weights,
                             seed=settings.seed), {}

    return build


def _mtkahypar_available() -> bool:
    from .hypergraph import mtkahypar_available

    return mtkahypar_available()


register(PlacementMethod(
    "routelens", "the optimizer (estimated layer time: dispatch + busiest GPU's compute + combine; replicas "
    "next to their collaborators)", _routelens,
    needs_coactivation=True, is_baseline=False))
register(PlacementMethod(
    "contiguous", "experts in id order (the engines' default)",
    lambda layer, cost, s, deadline: (contiguous_table(layer.num_experts, cost.topology.num_gpus, s.redundant), {}),
    needs_coactivation=False))
register(PlacementMethod(
    "random", "a seeded random permutation",
    lambda layer, cost, s, deadline: (random_table(layer.num_experts, cost.topology.num_gpus, s.redundant,
                                                   seed=s.seed), {}),
    needs_coactivation=False))
register(PlacementMethod(
    "greedy", "load-balanced packing",
    lambda layer, cost, s, deadline: (greedy_table(layer.expert_load(), cost.topology.num_gpus, s.redundant), {}),
    needs_coactivation=False))
register(PlacementMethod(
    "eplb", "DeepSeek EPLB",
    lambda layer, cost, s, deadline: (eplb_table(layer.expert_load(), cost.topology.num_gpus, s.redundant,
                                                 cost.topology.num_nodes, s.num_groups), {}),
    needs_coactivation=False))
register(PlacementMethod(
    "kahypar", "Mt-KaHyPar km1 with unit weights (needs mtkahypar)", _kahypar("unit"), needs_coactivation=True,
    available=_mtkahypar_available))
register(PlacementMethod(
    "kahypar-load", "Mt-KaHyPar km1 with load weights (needs mtkahypar)", _kahypar("load"), needs_coactivation=True,
    available=_mtkahypar_available))
