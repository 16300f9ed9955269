"""Re-routing: change which experts a token uses so that expert parallelism costs less.

Policies (pure functions of router logits and the model's own routing rule):

* :func:`c2r_choose` — collaboration-constrained routing (arXiv:2504.01337);
* :func:`gpu_limited_choose` — at most ``M`` GPUs of a placement per token (DeepSeek-V2's
  device-limited routing, arXiv:2405.04434), the plan-aware variant of C2R;
  :func:`gpu_share_choose` — an adaptive limit: only GPUs holding a share of the token's weight;
* :func:`capacity_drop_choose`, :func:`capacity_reroute_choose` — capacity-aware token drop and
  reroute (arXiv:2503.05066).

:class:`Policy` bundles a policy with what was fitted for it; ``simulate`` re-routes a saved
trace, ``inmodel`` applies a policy inside a Hugging Face model, ``evaluate`` measures the cost.
"""

from .c2r import c2r_choose, collaborators
from .capacity import capacity_drop_choose, capacity_reroute_choose, expert_capacity
from .gpu_limited import gpu_limited_choose, gpu_share_choose, holds_matrix
from .metrics import changed_fraction, expert_load, gpus_per_token, gpus_visited, gpu_recv, load_max_over_mean, routing_stats
from .policy import POLICIES, Policy, c2r_policy, capacity_policy, gpu_adaptive_policy, gpu_limited_policy, none_policy
from .scores import DROPPED, WEIGHTINGS, finish_weights, rule_scores, topk_choice

__all__ = [
    "DROPPED", "POLICIES", "Policy", "WEIGHTINGS", "gpu_adaptive_policy", "gpu_share_choose",
    "c2r_choose", "c2r_policy", "capacity_drop_choose", "capacity_policy", "capacity_reroute_choose",
    "changed_fraction", "collaborators", "expert_capacity", "expert_load", "finish_weights",
    "gpu_limited_choose", "gpu_limited_policy", "gpu_recv", "gpus_per_token", "gpus_visited", "holds_matrix",
    "load_max_over_mean", "none_policy", "routing_stats", "rule_scores", "topk_choice",
]
