"""Re-route a saved trace: new choices from its router logits, written as a trace of the same format.

``reroute_trace`` streams the input trace shard by shard (all layers of about one shard in memory
at a time), applies a :class:`~routelens.reroute.policy.Policy` to consecutive batches of
``batch_tokens`` tokens (batches run across shard boundaries; the last one may be shorter), and writes the new ``topk_ids`` / ``topk_weights`` (router logits copied unchanged) with
:class:`~routelens.trace.TraceWriter`. Graphs, placement and the runner read the result like any
capture. The manifest records the policy under ``reroute`` and the input trace under ``parent``.

Slots a capacity policy dropped are ``-1`` with weight 0 in the new trace; consumers skip them.

It also compares the two choices batch by batch (:func:`compare_routing`): fan-out, busiest GPU,
expert-load imbalance, dropped and changed slots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError, TraceError
from ..formats import HEADER_KEYS
from ..lock import is_lock_file, run_lock
from ..placement.traffic import plan_topology
from ..plan import Plan
from ..trace import MANIFEST, Trace, TraceWriter
from .metrics import changed_fraction, routing_stats
from .policy import Policy

DEFAULT_BATCH_TOKENS = 4096
_HEADER_SKIP = {*HEADER_KEYS, "complete", "num_tokens", "num_sequences", "shards", "stats", "software", "world_size"}
_STAT_KEYS = ("gpus_per_token", "busiest_gpu_recv", "mean_gpu_recv", "load_max_over_mean", "dropped_fraction")


# ---------------------------------------------------------------------------- routing rules
def rules_from_trace(trace: Trace, model_rules: Sequence[Any] | None = None) -> list[Any]:
    """One ``RoutingRule`` per trace layer, rebuilt from the manifest's ``routing_rules``.

    Args:
        model_rules: rules read from the loaded model (``find_router_sites(model)``), needed when the
            manifest cannot carry a rule's tensor (a selection bias: DeepSeek-V3, GLM4-MoE, Ernie).

    A trace without recorded rules (synthetic traces) gets the plain softmax top-k rule with
    renormalisation.

    Raises:
        InputError: a rule holds a tensor the manifest does not store and no ``model_rules`` were given.
    """
    from ..capture.adapters import RoutingRule

    if model_rules is not None:
        if len(model_rules) != len(trace.layers):
            raise InputError(f"the model has {len(model_rules)} MoE layers, the trace {len(trace.layers)}")
        return list(model_rules)
    recorded = trace.manifest.get("routing_rules")
    if not recorded:
        return [RoutingRule("softmax", trace.num_experts, trace.top_k, True) for _ in trace.layers]
    fields = set(RoutingRule.__dataclass_fields__)
    rules = []
    for layer, entry in zip(trace.layers, recorded):
        if not isinstance(entry, dict):
            raise InputError(f"trace layer {layer} records an unreadable routing rule: {entry!r}")
        if isinstance(entry.get("bias"), str):
            raise InputError(
                f"trace layer {layer} routes with a selection bias the manifest does not store: pass --model to read it"
            )
        try:
            rules.append(RoutingRule(**{k: v for k, v in entry.items() if k in fields}))
        except TypeError as exc:  # a rule missing a field (a damaged manifest)
            raise InputError(f"trace layer {layer} records an unreadable routing rule: {exc}") from None
    return rules


# ---------------------------------------------------------------------------- comparison
class RoutingComparison:
    """Accumulates per-layer costs of an original and a new choice over batches (token-weighted)."""

    def __init__(self, layers: Sequence[str], num_experts: int, plan: Plan | None = None):
        self.layers = list(layers)
        self.num_experts = num_experts
        self.plan = plan
        self._sums = {side: {layer: {} for layer in self.layers} for side in ("original", "rerouted")}
        self._changed = {layer: 0.0 for layer in self.layers}
        self._tokens = {layer: 0 for layer in self.layers}
        self._batches = {layer: 0 for layer in self.layers}
        self._topology = None if plan is None else plan_topology(plan)

    def add(self, layer: str, original_ids, new_ids) -> None:
        """Add one batch of one layer (``[N, K]`` each)."""
        replicas = () if self.plan is None else (self.plan.gpu_experts[layer], self.plan.replica_policy, self._topology)
        n = int(np.asarray(original_ids).shape[0]) if not torch.is_tensor(original_ids) else int(original_ids.shape[0])
        if n == 0:
            return
        for side, ids in (("original", original_ids), ("rerouted", new_ids)):
            stats = routing_stats(ids, self.num_experts, *replicas)
            sums = self._sums[side][layer]
            for key, value in stats.items():
                # per-token quantities weigh by tokens, per-batch maxima by batch
                weight = n if key in ("gpus_per_token", "dropped_fraction") else 1
                sums[key] = sums.get(key, 0.0) + value * weight
        self._changed[layer] += changed_fraction(original_ids, new_ids) * n
        self._tokens[layer] += n
        self._batches[layer] += 1

    def summary(self) -> dict[str, Any]:
        """``{"layers": {layer: {"original": {...}, "rerouted": {...}, "changed_fraction"}}, "overall": ...}``.

        ``overall`` averages layers; ``change`` holds relative changes (new / original - 1).
        """
        per_layer: dict[str, Any] = {}
        for layer in self.layers:
            entry: dict[str, Any] = {}
            for side in ("original", "rerouted"):
                entry[side] = {key: value / (self._tokens[layer] if key in ("gpus_per_token", "dropped_fraction")
                                             else max(self._batches[layer], 1))
                               for key, value in self._sums[side][layer].items()}
            entry["changed_fraction"] = self._changed[layer] / max(self._tokens[layer], 1)
            per_layer[layer] = entry
        overall: dict[str, Any] = {"original": {}, "rerouted": {}}
        for side in ("original", "rerouted"):
            for key in _STAT_KEYS:
                values = [per_layer[l][side][key] for l in self.layers if key in per_layer[l][side]]
                if values:
                    overall[side][key] = float(np.mean(values))
        overall["changed_fraction"] = float(np.mean([per_layer[l]["changed_fraction"] for l in self.layers]))
        overall["change"] = {key: overall["rerouted"][key] / overall["original"][key] - 1.0
                             for key in _STAT_KEYS
                             if key in overall["original"] and overall["original"][key] and key != "dropped_fraction"}
        return {"layers": per_layer, "overall": overall}


def compare_routing(trace: Trace, rerouted: Trace, plan: Plan | None = None,
                    batch_tokens: int = DEFAULT_BATCH_TOKENS) -> dict[str, Any]:
    """Costs of two traces' choices on the same tokens (batches of ``batch_tokens``)."""
    if rerouted.num_tokens != trace.num_tokens or rerouted.layers != trace.layers:
        raise TraceError("the two traces do not hold the same tokens and layers")
    comparison = RoutingComparison(trace.layers, trace.num_experts, plan)
    for layer in trace.layers:
        old, new = trace.topk_ids(layer), rerouted.topk_ids(layer)
        for start in range(0, trace.num_tokens, batch_tokens):
            comparison.add(layer, old[start:start + batch_tokens], new[start:start + batch_tokens])
    return comparison.summary()


# ---------------------------------------------------------------------------- re-routing
def reroute_trace(
    trace: Trace,
    policy: Policy,
    out: str | os.PathLike,
    rules: Sequence[Any] | None = None,
    plan: Plan | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool = True,
) -> tuple[Trace, dict[str, Any]]:
    """Apply ``policy`` to every layer of ``trace`` and write the re-routed trace to ``out``.

    Args:
        trace: a trace captured with ``--save-logits``.
        policy: a fitted :class:`Policy`.
        out: a new folder (an existing run is never overwritten).
        rules: one ``RoutingRule`` per layer (default: :func:`rules_from_trace`).
        plan: placement for the GPU metrics (optional).
        batch_tokens: tokens that share one forward pass (the capacity policies' batch).

    Returns:
        ``(new_trace, comparison)`` with the comparison of :class:`RoutingComparison`.

    Raises:
        TraceError: the trace has no router logits, or ``out`` already holds something.
    """
    if not trace.has_logits:
        raise TraceError(f"trace {trace.path} has no router logits: capture it with --save-logits to re-route it")
    if batch_tokens < 1:
        raise InputError(f"--batch-tokens must be >= 1, got {batch_tokens}")
    out = Path(out)
    _check_new_folder(out)
    if plan is not None:
        plan.check_fits(trace.layers, trace.num_experts)
    rules = list(rules) if rules is not None else rules_from_trace(trace)
    with run_lock(out, "routelens reroute"):  # one writer per run folder
        _check_new_folder(out)  # again: another writer may have filled it since
        header = {k: v for k, v in trace.manifest.items() if k not in _HEADER_SKIP}
        header["settings"] = {**(trace.manifest.get("settings") or {}), "reroute": policy.label()}
        header["parent"] = {"path": str(trace.path.resolve()), "fingerprint": trace.fingerprint()}
        header["reroute"] = {"policy": policy.name, **policy.record(), "batch_tokens": int(batch_tokens)}
        try:
            summary = _write_rerouted(trace, policy, TraceWriter(out, header), rules, plan, batch_tokens, progress)
        except BaseException:
            _remove_partial(out)  # a failed re-route (a damaged input shard, Ctrl-C) leaves no half trace behind
            raise
    return Trace.open(out), summary


def _write_rerouted(trace: Trace, policy: Policy, writer: TraceWriter, rules: list, plan: Plan | None,
                    batch_tokens: int, progress: bool) -> dict[str, Any]:
    """Stream ``trace`` through ``policy`` batch by batch into ``writer``; returns the comparison summary."""
    comparison = RoutingComparison(trace.layers, trace.num_experts, plan)
    num_layers = len(trace.layers)
    bar = _bar(progress, trace.num_tokens * num_layers, f"reroute {policy.label()}")
    pending: list[list[np.ndarray]] | None = None  # per field, arrays not yet re-routed (batches cross shards)
    done: list[list[Any]] = []  # re-routed batches not yet written
    done_tokens = 0
    shard_tokens = max(batch_tokens, max((int(s["num_tokens"]) for s in trace.shards), default=batch_tokens))

    def route(batch: list[np.ndarray]) -> list[Any]:
        logits, old_ids = batch[3:3 + num_layers], batch[3 + num_layers:]
        new_ids, new_weights = [], []
        for j, layer in enumerate(trace.layers):
            ids, weights = policy.choose(layer, torch.from_numpy(np.asarray(logits[j], dtype=np.float32)), rules[j])
            comparison.add(layer, old_ids[j], ids)
            new_ids.append(ids.numpy())
            new_weights.append(weights.numpy())
            bar.update(ids.shape[0])
        return [batch[0], batch[1], batch[2], new_ids, new_weights, logits]

    def flush() -> None:
        nonlocal done, done_tokens
        if not done:
            return
        cat = lambda i: np.concatenate([b[i] for b in done])  # noqa: E731
        per_layer = lambda i: [np.concatenate([b[i][j] for b in done]) for j in range(num_layers)]  # noqa: E731
        writer.write_shard(cat(0), cat(1), cat(2), per_layer(3), per_layer(4), per_layer(5))
        done, done_tokens = [], 0

    for fields in _shard_fields(trace):
        pending = fields if pending is None else [np.concatenate([a, b]) for a, b in zip(pending, fields)]
        while pending[0].shape[0] >= batch_tokens:
            done.append(route([a[:batch_tokens] for a in pending]))
            done_tokens += batch_tokens
            pending = [a[batch_tokens:] for a in pending]
            if done_tokens >= shard_tokens:
                flush()
    if pending is not None and pending[0].shape[0]:
        done.append(route(pending))
    flush()
    bar.close()
    summary = comparison.summary()
    writer.update_stats(reroute=summary["overall"])
    writer.close(complete=True)
    return summary


def _remove_partial(out: Path) -> None:
    """Remove what a failed re-route wrote into ``out`` (a folder it found empty, under its lock)."""
    import shutil

    for child in out.iterdir() if out.is_dir() else ():
        if child.name in (MANIFEST, "shards"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(not is_lock_file(p.name) for p in out.iterdir())):
        raise TraceError(f"output folder {out} already exists; choose another --out")


def _shard_fields(trace: Trace):
    """Per input shard: ``[token_ids, seq_ids, positions, logits per layer..., topk_ids per layer...]``."""
    tokens = [trace.token_ids, trace.seq_ids, trace.positions]
    layers = range(len(trace.layers))
    streams = [trace.iter_chunks(j, "router_logits") for j in layers] + [trace.iter_chunks(j, "topk_ids") for j in layers]
    start = 0
    for shard, chunks in zip(trace.shards, zip(*streams)):
        n = int(shard["num_tokens"])
        yield [t[start:start + n] for t in tokens] + [chunk for _, chunk in chunks]
        start += n


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tok", disable=not enabled, leave=False)


def default_output(trace_path: str | os.PathLike, policy: Policy) -> Path:
    """``RUN-c2r-t8``, ``RUN-gpu-limited-m4``, ``RUN-capacity-reroute-1.25`` next to the input run."""
    path = Path(trace_path)
    return path.with_name(f"{path.name}-{policy.spec.run_name(policy.settings)}")


__all__ = ["DEFAULT_BATCH_TOKENS", "RoutingComparison", "compare_routing", "default_output", "reroute_trace",
           "rules_from_trace", "MANIFEST"]
