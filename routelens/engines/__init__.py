"""Serving engines in and out: read the routing SGLang and vLLM record, write the plans they load.

In (``routelens import``): :mod:`.sglang_dump` reads SGLang's expert-distribution recorder dumps
(``per_token``, ``per_pass``, ``stat``), :mod:`.vllm_routed` reads collections of vLLM's per-request
``routed_experts``; both map the engine's decoder-layer rows to the model's MoE layers
(:mod:`.layout`, from ``config.json`` only) and :mod:`.imported` writes an ordinary run.

Out (``routelens place --format ...``): :mod:`.sglang_location` (``--init-expert-location``:
``physical_to_logical_map`` or ``logical_count``), :mod:`.vllm_ascend_map` (vllm-ascend's
``expert_map_path``; upstream vLLM loads no placement file). :mod:`.plan_files` reads any of them
back as a :class:`~routelens.plan.Plan`, wherever a plan is accepted.
"""

from .layout import ModelLayout, model_layout
from .plan_files import PLAN_FILE_KINDS, PlanTarget, load_plan_file

__all__ = ["ModelLayout", "model_layout", "PLAN_FILE_KINDS", "PlanTarget", "load_plan_file"]
