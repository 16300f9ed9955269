"""``--check``: prove the distributed replay computes the single-process MoE, on the machine at hand.

Every rank's tokens and outputs are gathered on rank 0 and compared, layer by layer and plan by
plan, with :func:`routelens.runner.experts.reference_moe` over all tokens (float32 arithmetic on the
same weights). The relative error ``‖out − ref‖ / ‖ref‖`` must stay under the dtype's tolerance:
float32 lands near 1e-7, bfloat16 near 4e-3 (inputs, weights and partial sums are rounded to bf16).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 (NaN anywhere gives inf)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def check_outputs(setup, tokens: torch.Tensor, outputs: dict[str, list], routes: dict[str, list], ctx,
                  model: str | None = None, seed: int = 0) -> dict[str, Any] | None:
    """Gather the first pass's outputs and compare them with the reference (rank 0 returns the result).

    Args:
        setup: the :class:`~routelens.runner.inputs.BenchSetup`.
        tokens: ``[n, H]`` this rank's input tokens.
        outputs: plan label -> per layer this rank's ``[n, H]`` outputs.
        routes: plan label -> per layer the host-side routes of all tokens.
        ctx: the :class:`~routelens.runner.group.RankContext`.
        model, seed: where the experts came from (a checkpoint folder, else random with ``seed``).

    Returns:
        On rank 0 ``{"tolerance", "plans": {label: {"relative_error_per_layer", "max_relative_error",
        "passed"}}, "passed"}``; None on the other ranks.
    """
    from .experts import load_expert_bank, random_expert_bank, reference_moe
    from .layer import gather_tokens

    device, group = ctx.device, ctx.group
    x_all = gather_tokens(tokens, group)
    gathered = {label: [gather_tokens(out, group) for out in outputs[label]] for label in setup.plans}
    if ctx.rank != 0:
        return None
    dtype = tokens.dtype
    E = setup.trace.num_experts
    if model:
        banks = [load_expert_bank(model, layer, E, dtype=dtype, device=device) for layer in setup.layers]
    else:
        bank = random_expert_bank(E, setup.hidden_size, setup.intermediate_size, seed=seed, dtype=dtype,
                                  device=device)
        banks = [bank] * len(setup.layers)
    tolerance = TOLERANCE[dtype]
    result: dict[str, Any] = {"tolerance": tolerance, "plans": {}}
    x32 = x_all.float()
    for label, layer_outputs in gathered.items():
        errors = []
        for j, out in enumerate(layer_outputs):
            route = routes[label][j]
            ref = reference_moe(x32, torch.from_numpy(route.topk_ids).to(device),
                                torch.from_numpy(np.ascontiguousarray(route.topk_weights)).to(device),
                                banks[j].to(dtype=torch.float32))
            errors.append(relative_error(out, ref))
        result["plans"][label] = {"relative_error_per_layer": errors, "max_relative_error": max(errors),
                                  "passed": bool(max(errors) <= tolerance)}
    result["passed"] = all(p["passed"] for p in result["plans"].values())
    return result
