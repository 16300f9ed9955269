"""Re-routing: change which experts a token uses so that expert parallelism costs less.

Policies (pure functions of router logits and the model's own routing rule,
:mod:`routelens.routing_rule`), each registered once in :mod:`.registry`:

* :func:`c2r_choose` — collaboration-constrained routing (arXiv:2504.01337);
* :func:`gpu_limited_choose` — at most ``M`` GPUs of a placement per token (DeepSeek-V2's
  device-limited routing, arXiv:2405.04434), the plan-aware variant of C2R;
  :func:`gpu_share_choose` — an adaptive limit: only GPUs holding a share of the token's weight;
* :func:`capacity_drop_choose`, :func:`capacity_reroute_choose` — capacity-aware token drop and
  reroute (arXiv:2503.05066).

:class:`Policy` is a registered policy fitted on :class:`FitData`; ``simulate`` re-routes a saved
trace, ``inmodel`` applies a policy inside a Hugging Face model, ``evaluate`` measures the cost,
``tradeoff`` runs the whole ``reroute-eval`` study.

The registry (names, settings) and the command-line options (:mod:`.options`) import without torch, so this package loads
its torch modules only when one of their names is first used.
"""

from __future__ import annotations

import importlib

from .options import GPU_FILLS, GPU_SCORES, OPTIONS, WEIGHTINGS, PolicyOption
from .registry import (C2RSettings, CapacitySettings, GpuAdaptiveSettings, GpuLimitedSettings, NoSettings, PolicyChoice,
                       PolicyContext, PolicySpec, PolicySweep, get_policy, is_baseline, policy_names, register)

_LAZY = {  # name -> module that defines it (imports torch)
    "c2r_choose": "c2r", "collaborators": "c2r",
    "capacity_drop_choose": "capacity", "capacity_reroute_choose": "capacity", "expert_capacity": "capacity",
    "gpu_limited_choose": "gpu_limited", "gpu_share_choose": "gpu_limited", "holds_matrix": "gpu_limited",
    "changed_fraction": "metrics", "expert_load": "metrics", "gpus_per_token": "metrics", "gpus_visited": "metrics",
    "gpu_recv": "metrics", "load_max_over_mean": "metrics", "routing_stats": "metrics",
    "FitData": "policy", "Policy": "policy", "fit_policy": "policy", "fit_sweep": "policy", "c2r_policy": "policy",
    "capacity_policy": "policy", "gpu_adaptive_policy": "policy", "gpu_limited_policy": "policy",
    "none_policy": "policy",
    "DROPPED": "scores", "finish_weights": "scores", "rule_scores": "scores", "topk_choice": "scores",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "GPU_FILLS", "GPU_SCORES", "OPTIONS", "WEIGHTINGS", "C2RSettings", "CapacitySettings", "GpuAdaptiveSettings",
    "GpuLimitedSettings", "NoSettings", "PolicyChoice", "PolicyContext", "PolicyOption", "PolicySpec", "PolicySweep",
    "get_policy",
    "is_baseline", "policy_names", "register",
]
__all__ += sorted(_LAZY)
