"""What the placement optimizer minimises: the registered objectives (``routelens place --objective``).

Each objective is the cost model's estimate of one MoE layer (:func:`~routelens.placement.cost.estimate_time`)
with some of its terms left out: the optimizer scores placements with the cost model that
:meth:`Objective.cost_model` returns, so one estimate serves every objective.

- ``layer`` (the default): dispatch + the busiest GPU's expert compute + combine, the time the layer
  waits for. A plan that cuts traffic by piling hot experts on one GPU pays for it here.
- ``a2a``: dispatch + combine only (the All-to-All bottleneck); the compute straggler is ignored.

Example:
    >>> from routelens.placement.cost import CostModel
    >>> from routelens.placement.topology import Topology
    >>> cost = CostModel(Topology(1, 8), token_bytes=8192, expert_flops_per_token=5e9)
    >>> get_objective("a2a").cost_model(cost).expert_flops_per_token, get_objective("layer").cost_model(cost) is cost
    (0.0, True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import InputError
from .cost import CostModel


@dataclass(frozen=True)
class Objective:
    """One thing the optimizer can minimise.

    Attributes:
        name: the ``--objective`` value.
        summary: one line for ``--help`` and the docs.
        counts_compute: whether the busiest GPU's expert compute is part of the estimate.
    """

    name: str
    summary: str
    counts_compute: bool

    def cost_model(self, cost: CostModel) -> CostModel:
        """The cost model the optimizer scores with: ``cost`` itself, or without expert compute."""
        return cost if self.counts_compute else dataclasses.replace(cost, expert_flops_per_token=0.0)


_OBJECTIVES: dict[str, Objective] = {}
DEFAULT_OBJECTIVE = "layer"


def register(objective: Objective) -> Objective:
    """Add ``objective`` to the registry (a name registered twice is a programming error)."""
    if objective.name in _OBJECTIVES:
        raise ValueError(f"objective '{objective.name}' is registered twice")
    _OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The registered objective ``name``.

    Raises:
        InputError: no objective of that name.
    """
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise InputError(f"unknown objective '{name}' (known: {', '.join(_OBJECTIVES)})") from None


def objective_names() -> tuple[str, ...]:
    """Registered objective names, the default first."""
    return tuple(_OBJECTIVES)


register(Objective("layer", "estimated layer time: dispatch + the busiest GPU's expert compute + combine",
                   counts_compute=True))
register(Objective("a2a", "estimated All-to-All: dispatch + combine bottleneck, expert compute left out",
                   counts_compute=False))
