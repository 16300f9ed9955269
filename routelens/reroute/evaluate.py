"""What a re-routing policy costs in quality, measured inside the model, next to what it saves.

The protocol of ``routelens reroute-eval``:

1. Pack the text into windows; the first ``calib_fraction`` of them are *calibration*, the rest
   *evaluation* (never used for fitting).
2. Run the unmodified model on the calibration windows and record every layer's choice
   (:func:`calibration_routing`). From it: per-layer co-activation counts (C2R's collaborator
   groups) and a placement for ``G`` GPUs (the routelens plan).
3. For each evaluation batch, run the unmodified model once (the baseline) and then the model under
   every policy setting (:func:`evaluate_policies`), accumulating per setting: perplexity and
   next-token accuracy on the batch's next tokens, agreement of the top-1 prediction with the
   baseline and KL(baseline || policy), and the routing costs of the layers' new choices under the
   plan (GPUs per token, busiest-GPU receive volume, max/mean expert load, dropped slots).

Each result row is a plain dict: ``policy`` (``"none"`` for the baseline), its settings,
``perplexity`` and ``gpus_per_token``, and the rest, with changes relative to the baseline row
(``*_change``: the unconstrained model on the same plan) and, for the GPU metrics, relative to the
unconstrained model on the contiguous layout an EP deployment uses without a plan
(``*_vs_contiguous``; the baseline row holds those reference values as ``contiguous_*``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..placement.baselines import contiguous_table
from ..placement.traffic import plan_topology
from ..plan import Plan
from .inmodel import RerouteHooks
from .metrics import changed_fraction, routing_stats
from .policy import Policy, none_policy
from .registry import is_baseline

ROW_CHANGES = ("perplexity", "gpus_per_token", "busiest_gpu_recv", "load_max_over_mean")


# ---------------------------------------------------------------------------- data
def split_windows(token_ids: np.ndarray, calib_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``[S, L]`` windows -> (calibration ``[Sc, L]``, evaluation ``[S - Sc, L]``), in order.

    Raises:
        InputError: ``calib_fraction`` outside (0, 1) or too few windows for both parts.
    """
    if not 0.0 < calib_fraction < 1.0:
        raise InputError(f"--fit-fraction must lie strictly between 0 and 1, got {calib_fraction}")
    num = int(token_ids.shape[0])
    num_calib = int(round(num * calib_fraction))
    if num_calib < 1 or num - num_calib < 1:
        raise InputError(f"{num} window(s) cannot be split into calibration and evaluation parts; give more text")
    return token_ids[:num_calib], token_ids[num_calib:]


def _batches(token_ids: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    for start in range(0, token_ids.shape[0], batch_size):
        yield token_ids[start:start + batch_size]


def _input_device(model) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.device
    return next(model.parameters()).device


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="fwd", disable=not enabled, leave=False)


# ---------------------------------------------------------------------------- calibration
def calibration_routing(model, sites: Sequence[Any], token_ids: np.ndarray, batch_size: int = 8,
                        progress: bool = False) -> dict[str, np.ndarray]:
    """Layer name -> ``[T, K]`` int64 experts the unmodified model chose on ``token_ids [S, L]``."""
    device = _input_device(model)
    chosen: dict[str, list[np.ndarray]] = {site.name: [] for site in sites}
    bar = _bar(progress, math.ceil(token_ids.shape[0] / batch_size), "calibrate")
    with torch.inference_mode(), RerouteHooks(sites, none_policy()) as hooks:
        for batch in _batches(token_ids, batch_size):
            model(input_ids=torch.as_tensor(batch, dtype=torch.long, device=device))
            for site, ids in zip(sites, hooks.take()):
                chosen[site.name].append(ids.long().cpu().numpy())
            bar.update(1)
    bar.close()
    return {name: np.concatenate(parts) for name, parts in chosen.items()}


# ---------------------------------------------------------------------------- evaluation
@dataclass
class _Totals:
    """Running sums of one policy setting over the evaluation batches."""

    nll: float = 0.0
    window_nll: list[float] = field(default_factory=list)
    correct: int = 0
    agree: int = 0
    kl: float = 0.0
    predicted: int = 0
    routing: dict[str, float] = field(default_factory=dict)
    routing_weight: dict[str, float] = field(default_factory=dict)
    changed: float = 0.0
    routed_tokens: int = 0
    seconds: float = 0.0

    def add_routing(self, key: str, value: float, weight: float) -> None:
        self.routing[key] = self.routing.get(key, 0.0) + value * weight
        self.routing_weight[key] = self.routing_weight.get(key, 0.0) + weight


def _score_batch(logits: torch.Tensor, targets: torch.Tensor, base_logprobs: torch.Tensor | None,
                 base_top1: torch.Tensor | None, totals: _Totals) -> torch.Tensor:
    """Add one batch's next-token metrics; returns this run's log-probabilities ``[B, L-1, V]``."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_window = -logprobs.gather(-1, targets[..., None])[..., 0].sum(-1)  # [B]
    totals.nll += float(per_window.sum())
    totals.window_nll.extend(per_window.double().cpu().tolist())
    top1 = logprobs.argmax(-1)
    totals.correct += int((top1 == targets).sum())
    totals.predicted += int(targets.numel())
    if base_logprobs is None:
        totals.agree += int(targets.numel())
    else:
        totals.agree += int((top1 == base_top1).sum())
        totals.kl += float((base_logprobs.exp() * (base_logprobs - logprobs)).sum())
    return logprobs


def evaluate_policies(
    model,
    sites: Sequence[Any],
    token_ids: np.ndarray,
    policies: Sequence[Policy],
    plan: Plan | None = None,
    batch_size: int = 8,
    progress: bool = True,
    clock=time.perf_counter,
) -> list[dict[str, Any]]:
    """Score the unmodified model and every policy on the evaluation windows ``token_ids [S, L]``.

    A batch of ``batch_size`` windows is one forward pass: the capacity policies share capacity
    over its ``batch_size * L`` tokens, and the routing metrics are per batch and layer, averaged.

    ``clock`` times each setting's forward passes (``forward_s``; ``time.process_time`` is steadier
    on a shared CPU machine); one untimed forward warms the model up first.

    Returns:
        rows, the baseline (``policy: "none"``) first, then one per policy in order.
    """
    if token_ids.shape[1] < 2:
        raise InputError("windows need at least 2 tokens to score next-token predictions")
    device = _input_device(model)
    num_experts = int(max(site.num_experts for site in sites))
    runs = [none_policy()] + [p for p in policies if not p.is_identity]
    totals = [_Totals() for _ in runs]
    bar = _bar(progress, math.ceil(token_ids.shape[0] / batch_size) * len(runs), "reroute-eval")
    with torch.inference_mode(), RerouteHooks(sites, runs[0]) as hooks:
        model(input_ids=torch.as_tensor(token_ids[:batch_size], dtype=torch.long, device=device))  # warm-up
        hooks.take()
        for batch in _batches(token_ids, batch_size):
            inputs = torch.as_tensor(batch, dtype=torch.long, device=device)
            targets = inputs[:, 1:]
            base_logprobs = base_top1 = base_ids = None
            for index, policy in enumerate(runs):
                hooks.policy = policy
                started = clock()
                logits = model(input_ids=inputs).logits
                if logits.is_cuda:
                    torch.cuda.synchronize(logits.device)
                totals[index].seconds += clock() - started
                chosen = hooks.take()
                logprobs = _score_batch(logits.to(device), targets, base_logprobs, base_top1, totals[index])
                if index == 0:
                    base_logprobs, base_top1 = logprobs, logprobs.argmax(-1)
                    base_ids = [ids.long().cpu() for ids in chosen]
                _add_routing(totals[index], sites, chosen, base_ids, num_experts, plan)
                if index == 0 and plan is not None:
                    _add_contiguous(totals[0], sites, chosen, num_experts, plan.num_gpus)
                bar.update(1)
    bar.close()
    return _rows(runs, totals)


def _add_routing(totals: _Totals, sites, chosen, base_ids, num_experts: int, plan: Plan | None) -> None:
    for site, ids, base in zip(sites, chosen, base_ids):
        ids = ids.long().cpu()
        replicas = (plan.gpu_experts[site.name], plan.replica_policy, plan_topology(plan)) if plan is not None else ()
        n = int(ids.shape[0])
        for key, value in routing_stats(ids, num_experts, *replicas).items():
            weight = n if key in ("gpus_per_token", "dropped_fraction") else 1.0
            totals.add_routing(key, value, weight)
        totals.changed += changed_fraction(base, ids) * n
        totals.routed_tokens += n


def _add_contiguous(totals: _Totals, sites, chosen, num_experts: int, num_gpus: int) -> None:
    """The baseline's costs on the contiguous layout (expert ``e`` on GPU ``e // (E/G)``): the reference
    of an EP deployment without a routelens plan."""
    table = contiguous_table(num_experts, num_gpus)
    for ids in chosen:
        ids = ids.long().cpu()
        stats = routing_stats(ids, num_experts, table)
        totals.add_routing("contiguous_gpus_per_token", stats["gpus_per_token"], int(ids.shape[0]))
        totals.add_routing("contiguous_busiest_gpu_recv", stats["busiest_gpu_recv"], 1.0)


def _rows(runs: Sequence[Policy], totals: Sequence[_Totals]) -> list[dict[str, Any]]:
    rows = []
    for policy, t in zip(runs, totals):
        row: dict[str, Any] = {"policy": policy.name, **policy.record(), "label": policy.label()}
        mean_nll = t.nll / max(t.predicted, 1)
        row["perplexity"] = math.exp(mean_nll)
        row["next_token_accuracy"] = t.correct / max(t.predicted, 1)
        row["agreement"] = t.agree / max(t.predicted, 1)
        row["kl_to_baseline"] = t.kl / max(t.predicted, 1)
        for key, value in t.routing.items():
            row[key] = value / max(t.routing_weight[key], 1e-12)
        row["changed_fraction"] = t.changed / max(t.routed_tokens, 1)
        row["eval_tokens"] = t.predicted
        row["forward_s"] = t.seconds
        rows.append(row)
    base = rows[0]
    base_windows = np.asarray(totals[0].window_nll)
    for row, t in zip(rows, totals):
        if row is not base and len(t.window_nll) == base_windows.size:
            low, high = paired_change_ci(base_windows, np.asarray(t.window_nll), t.predicted / len(t.window_nll))
            row["perplexity_change_ci95"] = [low, high]
    for row in rows:
        for key in ROW_CHANGES:
            if key in row and key in base and base[key]:
                row[f"{key}_change"] = row[key] / base[key] - 1.0
        for key in ("gpus_per_token", "busiest_gpu_recv"):
            reference = base.get(f"contiguous_{key}")
            if key in row and reference:
                row[f"{key}_vs_contiguous"] = row[key] / reference - 1.0
    return rows


def paired_change_ci(base_window_nll: np.ndarray, policy_window_nll: np.ndarray, tokens_per_window: float,
                     resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the relative perplexity change, pairing each window with itself.

    ``base_window_nll``, ``policy_window_nll``: ``[W]`` summed next-token NLL per evaluation window,
    the same windows in the same order, each with ``tokens_per_window`` scored tokens. The windows
    are resampled with replacement ``resamples`` times (seeded); on each resample the change is
    ``exp((policy NLL - baseline NLL) / tokens) - 1``, the ratio of the two perplexities on it.
    Pairing removes the windows' own difficulty, so the interval says how consistently the policy
    costs what it costs. Windows of one batch share expert capacity, so under the capacity policies
    they are not quite independent.
    """
    base = np.asarray(base_window_nll, dtype=np.float64)
    policy = np.asarray(policy_window_nll, dtype=np.float64)
    if base.shape != policy.shape or base.size == 0:
        raise ValueError("the baseline and the policy must be scored on the same windows")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, base.size, size=(resamples, base.size))
    difference = (policy - base)[picks].sum(1) / (base.size * tokens_per_window)
    low, high = np.quantile(np.expm1(difference), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def best_within(rows: Sequence[dict[str, Any]], max_perplexity_change: float = 0.01,
                metric: str = "gpus_per_token") -> dict[str, Any] | None:
    """The row with the lowest ``metric`` among those within ``max_perplexity_change`` of the baseline."""
    ok = [r for r in rows if not is_baseline(r["policy"]) and r.get("perplexity_change", math.inf) <= max_perplexity_change
          and metric in r]
    return min(ok, key=lambda r: r[metric]) if ok else None
