"""Apply a re-routing policy inside a loaded Hugging Face model, without touching its files.

:class:`RerouteHooks` puts one forward hook on every router site (``routelens.capture.adapters``).
The hook reads the router's logits from its output (``site.unpack``), lets the policy choose, and
returns ``site.repack(...)``: the router's native output with the new ids and weights, which the
experts module then uses. With the ``none`` policy the hook returns nothing, so the model's own
output passes through untouched (bit-identical).

Slots a capacity policy dropped (``-1``) are handed to ``repack`` as they are; each site turns them
into what its experts module takes (a valid expert id with weight exactly 0, or no dispatch at all),
so they add nothing to the token's output. The recorded choice keeps the ``-1``.

Example:
    >>> routing = find_router_sites(model)                                 # doctest: +SKIP
    >>> with RerouteHooks(routing.sites, policy) as hooks:                 # doctest: +SKIP
    ...     logits = model(input_ids).logits
    ...     chosen = hooks.take()           # one [N, K] ids tensor per MoE layer, -1 = dropped
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..capture.hooks import SiteHooks
from ..errors import RoutelensError
from .policy import Policy


class RerouteHooks(SiteHooks):
    """Context manager that routes every MoE layer of a model with ``policy`` and records the choice.

    Args:
        sites: ``find_router_sites(model).sites``.
        policy: the policy to apply; may be swapped between forwards (``hooks.policy = other``).
        record: keep each layer's chosen ids (``take()``), on the router's device.
    """

    def __init__(self, sites: Sequence[Any], policy: Policy, record: bool = True):
        super().__init__(sites)
        self.policy = policy
        self.record = record

    def _hook(self, j: int, site: Any, chosen: list[torch.Tensor]):
        def hook(module, args, kwargs, output):
            decision = site.unpack(args, kwargs, output)
            if self.policy.is_identity:
                if self.record:
                    chosen.append(decision.topk_ids)
                return None  # keep the model's own output
            if decision.logits is None:
                raise RoutelensError(f"router {site.name} exposes no logits; policy {self.policy.label()} cannot re-route it")
            ids, weights = self.policy.choose(site.name, decision.logits, site.rule)
            if self.record:
                chosen.append(ids)
            return site.repack(args, kwargs, output, ids, weights)

        return hook

    def take(self) -> list[torch.Tensor]:
        """Per layer, the ``[N, K]`` ids chosen since the last ``take`` (``-1`` = dropped)."""
        taken = []
        for site, calls in zip(self.sites, self._calls):
            if not calls:
                raise RoutelensError(f"router {site.name} was not called during the forward pass")
            taken.append(calls[0] if len(calls) == 1 else torch.cat(calls))
        self.clear()
        return taken
