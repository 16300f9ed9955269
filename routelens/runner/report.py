"""Turn the ranks' raw measurements into the bench report (pure numpy; rank 0 calls it).

:func:`build_report` assembles the whole ``routelens-bench`` report, :func:`summarize_plan` one
plan's entry, :func:`format_table` the printed table.

Conventions (also in docs/runner.md):

* ``dispatch_tokens_sent[r]``: token copies rank ``r`` sends to *other* ranks in the dispatch, one
  per token and distinct other destination GPU, read from the split sizes handed to
  ``all_to_all_single``; ``..._recv`` likewise received. Bytes = copies × hidden × element size.
* A phase's time in one repeat is the slowest rank's (every rank waits for it), summed over layers;
  the report gives the median over repeats. ``all_to_all`` = dispatch + combine.
* Algorithm bandwidth (``algbw``) of a dispatch = bytes crossing links / world size / time: the
  average send rate per rank. The plain ``all_to_all_single`` moves the same total bytes, split
  evenly over all ordered pairs of distinct ranks, so ``dispatch_bw_vs_plain`` shows what the plan's
  imbalance and the layout's uneven splits cost against the best case of that volume.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..formats import BENCH
from .routing import CONTIGUOUS, effective_links, predicted_all_to_all_ms, prediction_topology, token_source_gpu

PHASES = ("layout", "dispatch", "experts", "combine")


def _times(records: list[dict], phase: str) -> np.ndarray | None:
    """``[G, R, L]`` ms of ``phase`` for every rank, repeat and layer (None if not measured)."""
    if any(phase not in rec["times"] for rec in records):
        return None
    return np.asarray([rec["times"][phase] for rec in records], dtype=np.float64)


def _summary(times: np.ndarray) -> dict[str, Any]:
    slowest = times.max(0)  # [R, L]: every rank waits for the slowest
    return {
        "median_ms": float(np.median(slowest.sum(1))),
        "per_layer_ms": np.median(slowest, axis=0).tolist(),
        "per_rank_ms": np.median(times.sum(2), axis=1).tolist(),
        "spread_ms": [float(np.min(slowest.sum(1))), float(np.max(slowest.sum(1)))],
    }


def summarize_plan(label: str, records: list[dict], predicted: np.ndarray, predicted_ms: np.ndarray,
                   bytes_per_token: int, layers: list[str], plan_info: dict[str, Any]) -> dict[str, Any]:
    """One plan's entry of the report.

    Args:
        records: one dict per rank: ``send_counts``/``recv_counts`` ``[L][G]`` and ``times``
            ``{phase: [R][L]}`` in ms.
        predicted: ``[L, G, G]`` cost-model copies.
        predicted_ms: ``[L]`` cost-model dispatch + combine time per layer.
    """
    world = len(records)
    send = np.asarray([rec["send_counts"] for rec in records], dtype=np.int64)  # [G, L, G]
    recv = np.asarray([rec["recv_counts"] for rec in records], dtype=np.int64)
    own = np.arange(world)
    local = send[own, :, own]  # [G, L] copies kept on the source GPU
    sent = send.sum(2) - local  # [G, L]
    received = recv.sum(2) - recv[own, :, own]
    pred = np.asarray(predicted, dtype=np.int64)  # [L, G, G]
    pred_sent = pred.sum(2).T  # [G, L]
    pred_recv = pred.sum(1).T
    offdiag = send.copy()
    offdiag[own, :, own] = 0
    matrix_match = bool(np.array_equal(np.transpose(offdiag, (1, 0, 2)), pred))
    entry: dict[str, Any] = {
        "label": label,
        **plan_info,
        "dispatch_tokens_sent": sent.sum(1).tolist(),
        "dispatch_tokens_recv": received.sum(1).tolist(),
        "dispatch_tokens_local": local.sum(1).tolist(),
        "dispatch_bytes_sent": (sent.sum(1) * bytes_per_token).tolist(),
        "dispatch_bytes_recv": (received.sum(1) * bytes_per_token).tolist(),
        "predicted": {
            "dispatch_tokens_sent": pred_sent.sum(1).tolist(),
            "dispatch_tokens_recv": pred_recv.sum(1).tolist(),
        },
        "bytes_match_prediction": bool(matrix_match and np.array_equal(sent, pred_sent)
                                       and np.array_equal(received, pred_recv)),
    }
    summaries = {}
    for phase in (*PHASES, "plain", "shortcut", "overlap"):
        times = _times(records, phase)
        if times is not None:
            summaries[phase] = _summary(times)
    a2a = _times(records, "dispatch") + _times(records, "combine")
    summaries["all_to_all"] = _summary(a2a)
    total = sum(_times(records, p) for p in PHASES)
    summaries["total"] = _summary(total)
    entry["time_ms"] = {name: s["median_ms"] for name, s in summaries.items()}
    entry["time_ms_spread"] = {name: s["spread_ms"] for name, s in summaries.items()}
    entry["time_ms_per_rank"] = {name: s["per_rank_ms"] for name, s in summaries.items()}

    cross_bytes = sent.sum(0) * bytes_per_token  # [L] bytes crossing links per layer
    algbw = {}
    for phase in ("dispatch", "combine", "plain"):
        if phase in summaries and summaries[phase]["median_ms"] > 0:
            algbw[phase] = float(cross_bytes.sum() / world / (summaries[phase]["median_ms"] * 1e-3) / 1e9)
    entry["algbw_GBps"] = algbw
    if "plain" in algbw and algbw["plain"] > 0:
        entry["dispatch_bw_vs_plain"] = algbw["dispatch"] / algbw["plain"]
    predicted_ms = np.asarray(predicted_ms, dtype=np.float64)
    entry["predicted"]["all_to_all_ms"] = float(predicted_ms.sum())
    if "shortcut" in summaries:
        comm, comp, both = (summaries[p]["median_ms"] for p in ("dispatch", "shortcut", "overlap"))
        entry["overlap"] = {
            "dispatch_ms": comm, "shortcut_ms": comp, "overlapped_ms": both,
            "comm_hidden_share": float(np.clip((comm + comp - both) / comm, 0.0, 1.0)) if comm > 0 else 0.0,
            "max_hideable_share": float(min(1.0, comp / comm)) if comm > 0 else 0.0,
        }
    entry["per_layer"] = [
        {
            "layer": layer,
            "dispatch_tokens_sent": sent[:, j].tolist(),
            "dispatch_tokens_recv": received[:, j].tolist(),
            "dispatch_bytes_sent": (sent[:, j] * bytes_per_token).tolist(),
            "dispatch_bytes_recv": (received[:, j] * bytes_per_token).tolist(),
            "predicted_tokens_sent": pred_sent[:, j].tolist(),
            "predicted_all_to_all_ms": float(predicted_ms[j]),
            "time_ms": {name: s["per_layer_ms"][j] for name, s in summaries.items()},
            "algbw_GBps": {
                phase: float(cross_bytes[j] / world / (summaries[phase]["per_layer_ms"][j] * 1e-3) / 1e9)
                for phase in ("dispatch", "plain") if phase in summaries and summaries[phase]["per_layer_ms"][j] > 0
            },
        }
        for j, layer in enumerate(layers)
    ]
    return entry


def add_ratios(plans: list[dict[str, Any]], baseline: str) -> None:
    """Add each plan's measured and predicted ratios against the ``baseline`` plan (in place)."""
    base = next((p for p in plans if p["label"] == baseline), None)
    if base is None:
        return
    for plan in plans:
        ratio = {}
        for name in ("all_to_all", "dispatch", "combine", "total"):
            if base["time_ms"].get(name, 0) > 0:
                ratio[f"measured_{name}"] = plan["time_ms"][name] / base["time_ms"][name]
        if base["predicted"]["all_to_all_ms"] > 0:
            ratio["predicted_all_to_all"] = plan["predicted"]["all_to_all_ms"] / base["predicted"]["all_to_all_ms"]
        busiest_base = max(max(base["dispatch_tokens_sent"]), max(base["dispatch_tokens_recv"]), 1)
        ratio["busiest_rank_bytes"] = max(max(plan["dispatch_tokens_sent"]), max(plan["dispatch_tokens_recv"])) / busiest_base
        ratio["total_bytes"] = sum(plan["dispatch_tokens_sent"]) / max(sum(base["dispatch_tokens_sent"]), 1)
        plan["ratio_vs_baseline"] = ratio


def short_labels(labels: list[str]) -> dict[str, str]:
    """Each plan label (a file path or ``contiguous``) as its shortest path suffix no other label shares.

    ``runs/a/plans/routelens-4gpu.json`` next to ``runs/b/plans/routelens-4gpu.json`` become
    ``a/plans/routelens-4gpu.json`` and ``b/plans/routelens-4gpu.json``; a lone file keeps just its
    name. Labels whose suffixes would still read the same are shown whole.
    """
    parts = {label: PurePath(label).parts or (label,) for label in labels}
    short = {}
    for label, own in parts.items():
        others = [p for other, p in parts.items() if other != label]
        k = 1
        while k < len(own) and any(p[-k:] == own[-k:] for p in others):
            k += 1
        short[label] = str(PurePath(*own[-k:])) if k < len(own) else label
    if len(set(short.values())) < len(short):
        return {label: label for label in labels}
    return short


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the report, one row per plan (named by :func:`short_labels`)."""
    names = short_labels([plan["label"] for plan in report["plans"]])
    width = max([28, *map(len, names.values())])
    header = (f"{'plan':<{width}} {'MB sent max':>11} {'MB total':>9} {'disp ms':>8} {'comb ms':>8} {'a2a ms':>8} "
              f"{'pred ms':>8} {'a2a x':>6} {'pred x':>6} {'GB/s':>7} {'plain':>7} {'vs pl':>6} {'bytes=pred':>10}")
    lines = [header, "-" * len(header)]
    for plan in report["plans"]:
        t = plan["time_ms"]
        ratio = plan.get("ratio_vs_baseline", {})
        algbw = plan.get("algbw_GBps", {})
        lines.append(
            f"{names[plan['label']]:<{width}} {max(plan['dispatch_bytes_sent']) / 1e6:>11.2f} {sum(plan['dispatch_bytes_sent']) / 1e6:>9.2f} "
            f"{t['dispatch']:>8.3f} {t['combine']:>8.3f} {t['all_to_all']:>8.3f} {plan['predicted']['all_to_all_ms']:>8.3f} "
            f"{ratio.get('measured_all_to_all', float('nan')):>6.3f} {ratio.get('predicted_all_to_all', float('nan')):>6.3f} "
            f"{algbw.get('dispatch', float('nan')):>7.2f} {algbw.get('plain', float('nan')):>7.2f} "
            f"{plan.get('dispatch_bw_vs_plain', float('nan')):>6.2f} {str(plan['bytes_match_prediction']):>10}"
        )
        if "overlap" in plan:
            o = plan["overlap"]
            lines.append(f"{'':<{width}} overlap: dispatch {o['dispatch_ms']:.3f} ms + shortcut {o['shortcut_ms']:.3f} ms "
                         f"-> {o['overlapped_ms']:.3f} ms together; {100 * o['comm_hidden_share']:.0f}% of the "
                         f"dispatch hidden (at most {100 * o['max_hideable_share']:.0f}%)")
    return "\n".join(lines)


def build_report(setup, config, records: list[dict], routes: dict[str, list], environment: dict[str, Any],
                 calibration: dict[str, Any]) -> dict[str, Any]:
    """The bench report from every rank's record (rank 0).

    Args:
        setup: the :class:`~routelens.runner.inputs.BenchSetup`; config: the
            :class:`~routelens.runner.config.BenchConfig`.
        records: one :func:`~routelens.runner.replay.replay` record per rank, in rank order.
        routes: plan label -> per layer the host-side routes (their predicted copies and destinations).
        environment: facts of the run: ``num_gpus``, ``backend``, ``device``, ``software``, ``dtype``
            (name), ``element_size`` (bytes), ``expert_kernel``, ``layout_kernel``, ``comm_priority``.
        calibration: :func:`~routelens.runner.calibration.load_calibration`'s result (link overrides).
    """
    world = environment["num_gpus"]
    bytes_per_token = setup.hidden_size * environment["element_size"]
    plans = []
    source = token_source_gpu(setup.num_tokens, world)
    for label, plan in setup.plans.items():
        predicted = np.stack([r.predicted for r in routes[label]])
        topology = prediction_topology(plan, calibration["topology"])
        predicted_ms = [predicted_all_to_all_ms(source, r.dest_gpu, world, topology, bytes_per_token)
                        for r in routes[label]]
        info = {"method": plan.method, "file": None if label == CONTIGUOUS else str(Path(label).resolve()),
                "replicas": int(sum(t.size for t in plan.gpu_experts.values()) - plan.num_experts * len(plan.layers)),
                "replica_policy": plan.replica_policy, "prediction_topology": topology}
        plans.append(summarize_plan(label, [rec[label] for rec in records], predicted, predicted_ms,
                                    bytes_per_token, setup.layers, info))
    baseline = next(iter(setup.plans))
    add_ratios(plans, baseline)
    links = effective_links(prediction_topology(setup.plans[baseline], calibration["topology"]), world)
    prefix = "inter" if setup.plans[baseline].num_nodes > 1 else "intra"
    calibration = {**calibration, "latency_us": links[f"{prefix}_latency_us"], "bandwidth_GBps": links[f"{prefix}_gbps"],
                   "links": links}
    trace = setup.trace
    return {
        **BENCH.header(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "trace": {"path": str(trace.path.resolve()), "fingerprint": trace.fingerprint(), "model": trace.model_id,
                  "num_tokens": trace.num_tokens, "num_experts": trace.num_experts, "top_k": trace.top_k},
        "layers": setup.layers,
        "num_gpus": world,
        "backend": environment["backend"],
        "device": environment["device"],
        "software": environment["software"],
        "hidden_size": setup.hidden_size,
        "intermediate_size": setup.intermediate_size,
        "dtype": environment["dtype"],
        "bytes_per_token": bytes_per_token,
        "tokens_replayed": setup.num_tokens,
        "tokens_per_rank": setup.tokens_per_rank,
        "repeats": config.repeats,
        "warmup": config.warmup,
        "synced_phases": config.sync,
        "comm_priority": environment["comm_priority"],
        "overlap": config.overlap,
        "shortcut_intermediate": setup.shortcut_intermediate if config.overlap else None,
        "weights": str(config.model) if config.model else "random",
        "expert_kernel": environment["expert_kernel"],
        "layout_kernel": environment["layout_kernel"],
        "calibration": calibration,
        "baseline": baseline,
        "plans": plans,
    }
