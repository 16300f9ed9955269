"""A short fine-tune with a re-routing constraint active, as the C2R paper trains with it.

C2R (arXiv:2504.01337) applies collaboration-constrained routing *during* (continual) training, so
the model adapts to the constraint. :func:`finetune_with_policy` does the same on any routelens
policy: the policy's hooks are on while the model trains (next-token loss on text windows, AdamW),
the router receives gradients through the weights of the experts the policy chose, and nothing in
the model's files changes until the caller saves it.

``measure_recovery`` turns before/after evaluation rows into the number that matters: how much of
the constraint's perplexity cost the fine-tune won back.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from .inmodel import RerouteHooks
from .policy import Policy

TRAINABLE = ("all", "router", "experts")


def trainable_parameters(model, sites: Sequence[Any], which: str = "all") -> list[torch.nn.Parameter]:
    """Parameters to train: ``all``, the ``router`` modules only, or ``experts`` (routers + experts modules)."""
    if which not in TRAINABLE:
        raise InputError(f"unknown --train '{which}' (choose from {', '.join(TRAINABLE)})")
    if which == "all":
        return [p for p in model.parameters() if p.requires_grad]
    modules = [site.module for site in sites]
    if which == "experts":
        from ..capture.adapters import find_router_sites

        modules += list(find_router_sites(model).experts_modules)
    seen, params = set(), []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def finetune_with_policy(
    model,
    sites: Sequence[Any],
    policy: Policy,
    train_windows: np.ndarray,
    steps: int = 50,
    batch_size: int = 8,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    train: str = "all",
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` for ``steps`` steps on random batches of ``train_windows [S, L]`` under ``policy``.

    AdamW with a linear warm-up over the first 10% of steps and a cosine decay; gradients clipped to
    norm 1. The model is left in eval mode.

    Returns:
        the training loss of every step.
    """
    if steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    if train_windows.shape[0] < 1:
        raise InputError("no training windows")
    params = trainable_parameters(model, sites, train)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    device = model.get_input_embeddings().weight.device
    losses: list[float] = []
    from tqdm import tqdm

    bar = tqdm(total=steps, desc=f"finetune {policy.label()}", unit="step", disable=not progress, leave=False)
    model.train()
    try:
        with RerouteHooks(sites, policy, record=False):
            for _ in range(steps):
                picks = rng.choice(train_windows.shape[0], size=min(batch_size, train_windows.shape[0]), replace=False)
                inputs = torch.as_tensor(train_windows[picks], dtype=torch.long, device=device)
                loss = model(input_ids=inputs, labels=inputs).loss
                if not torch.isfinite(loss):
                    raise InputError(f"the training loss became {float(loss.detach())}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update(1)
    finally:
        bar.close()
        model.eval()
    return losses


def measure_recovery(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summarise evaluation rows (``[none, policy]``) before and after the fine-tune.

    Returns:
        ``baseline_perplexity`` (unconstrained, before), ``constrained_before`` / ``constrained_after``
        (perplexity under the policy), ``unconstrained_after``, the relative costs against the original
        baseline, and ``recovered``: the share of the constraint's perplexity cost won back,
        ``(before - after) / (before - baseline)`` (1 = fully recovered; > 1 = better than the
        original model; ``None`` when the policy cost nothing to recover, as JSON has no NaN).
    """
    base = before[0]["perplexity"]
    c_before, c_after = before[1]["perplexity"], after[1]["perplexity"]
    cost = c_before - base
    return {
        "baseline_perplexity": base,
        "unconstrained_after": after[0]["perplexity"],
        "constrained_before": c_before,
        "constrained_after": c_after,
        "cost_before": c_before / base - 1.0,
        "cost_after": c_after / base - 1.0,
        "recovered": (c_before - c_after) / cost if cost > 0 else None,
        "gpus_per_token_before": before[1].get("gpus_per_token"),
        "gpus_per_token_after": after[1].get("gpus_per_token"),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
