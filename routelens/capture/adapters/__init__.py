"""Find the router of every MoE layer of a transformers model, and read / rewrite its decision exactly.

A *router site* is one module per MoE layer whose forward hook sees the routing decision the model
really used: which ``k`` experts each token goes to (``topk_ids: [N, k]``) and with which weights
(``topk_weights: [N, k]``). :func:`find_router_sites` walks a model, finds those modules by structure
(a block holding an ``experts`` module next to a router) and returns a :class:`ModelRouting`. Each
:class:`RouterSite` knows how to

* ``unpack`` a forward hook's ``(args, kwargs, output)`` into a :class:`RouterOutput` without copying
  to the host or synchronising the GPU, and
* ``repack`` a new choice into the module's native output, so a forward hook that returns it makes
  the model use that choice instead (in-model re-routing).

The choice is always read from what the model computed (router outputs or the experts' inputs),
never re-derived from logits, so biased, grouped or sigmoid routers (DeepSeek-V3, GLM4-MoE, Dots1,
Ernie-4.5) are recorded exactly. Each site also carries its family's :class:`RoutingRule`
(:mod:`routelens.routing_rule`, the one implementation of the rule), which re-routing policies use to
reproduce or alter the choice.

Modules: ``base`` (data types), ``rules`` (each family's rule, read from its router), ``sites`` (families whose router
output differs), ``discover`` (:func:`find_router_sites`). Supported families and how each is
hooked: ``docs/capture-families.md``.
"""

from ...errors import NotMoEError
from .base import ModelRouting, RouterOutput, RouterSite, RoutingRule
from .discover import find_router_sites

__all__ = ["RouterOutput", "RoutingRule", "RouterSite", "ModelRouting", "find_router_sites", "NotMoEError"]
