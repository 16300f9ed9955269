"""What a trace holds, in a few numbers: the data behind ``routelens info``.

The per-layer load imbalance is ``max / mean`` of the tokens each expert received (1.0 = perfectly
balanced): the busiest expert sets the latency of an expert-parallel MoE layer, the straggler
effect of capacity-aware inference (see docs/papers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..trace import COUNTS_FILE, Trace


def expert_load(trace: Trace, layer: str | int) -> np.ndarray:
    """``[E]`` int64 tokens routed to each expert at ``layer`` (each token counts once per chosen expert).

    Streams the layer shard by shard; ids of -1 (slots a capacity limit dropped) are skipped. The trace
    checks every id it reads, so an id outside ``[-1, E)`` raises :class:`TraceError` naming the layer
    and shard instead of being miscounted. A counts-only run (imported SGLang ``stat`` records) gives
    its recorded counts.
    """
    return trace.expert_counts(layer)


def summarize_trace(trace: Trace) -> dict[str, Any]:
    """A JSON-able summary: model, family, layers, experts, k, tokens, capture speed, per-layer load.

    Reads every shard's ``topk_ids`` once, so a corrupt shard raises :class:`TraceError` here.
    """
    manifest = trace.manifest
    stats = manifest.get("stats", {}) or {}
    settings = manifest.get("settings", {}) or {}
    per_layer = []
    for j, name in enumerate(trace.layers):
        load = expert_load(trace, j)
        mean = load.mean() if load.size else 0.0
        per_layer.append({
            "index": j,
            "layer": name,
            "load_max_over_mean": round(float(load.max() / mean), 4) if mean > 0 else None,
            "busiest_expert": int(load.argmax()) if load.size else None,
            "unused_experts": int((load == 0).sum()),
        })
    ratios = [row["load_max_over_mean"] for row in per_layer if row["load_max_over_mean"] is not None]
    size_bytes = sum(trace.shard_file(i).stat().st_size for i in range(len(trace.shards)))
    if trace.counts_only:
        size_bytes += (trace.path / COUNTS_FILE).stat().st_size
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    phase_counts = None
    if trace.phases and not trace.counts_only and trace.num_tokens:
        codes = np.bincount(trace.phase.astype(np.int64), minlength=len(trace.phases))
        phase_counts = {name: int(n) for name, n in zip(trace.phases, codes)}
    return {
        "path": str(trace.path),
        "complete": bool(manifest.get("complete", False)),
        "model": trace.model_id,
        "family": trace.family,
        "architecture": manifest.get("model", {}).get("architecture"),
        "dtype": manifest.get("dtype"),
        "num_layers": len(trace.layers),
        "num_experts": trace.num_experts,
        "top_k": trace.top_k,
        "num_tokens": trace.num_tokens,
        "num_sequences": int(manifest["num_sequences"] if "num_sequences" in manifest else len(np.unique(trace.seq_ids))),
        "seq_len": settings.get("seq_len"),
        "has_logits": trace.has_logits,
        "has_weights": trace.has_weights,
        "counts_only": trace.counts_only,
        "num_steps": manifest.get("num_steps"),
        "source": {key: source.get(key) for key in ("engine", "mode", "version", "format_read", "rank_layout", "caveats")
                   if source.get(key) is not None} if source.get("engine") else None,
        "source_files": len(source.get("files") or []) if source.get("engine") else None,
        "phases": phase_counts,
        "num_shards": len(trace.shards),
        "size_bytes": int(size_bytes),
        "text": settings.get("text"),
        "parent": manifest.get("parent"),
        "world_size": int(manifest.get("world_size", settings.get("world_size", 1)) or 1),
        "tokens_per_s": stats.get("tokens_per_s"),  # of the last session (a resume's earlier shards took earlier time)
        "wall_s": stats.get("wall_s"),  # summed over sessions
        "sessions": stats.get("sessions"),
        "session_s": stats.get("session_s"),
        "session_tokens": stats.get("session_tokens"),
        "device": stats.get("device"),
        "load_max_over_mean": {
            "min": min(ratios) if ratios else None,
            "median": float(np.median(ratios)) if ratios else None,
            "max": max(ratios) if ratios else None,
        },
        "per_layer": per_layer,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the compact text ``routelens info`` prints."""
    s = summary
    status = "complete" if s["complete"] else "INCOMPLETE: continue it with routelens capture ... --resume"
    lines = [
        f"trace     {s['path']}  ({status}; {s['num_shards']} shards, {_size(s['size_bytes'])})",
        f"model     {s['model'] or '?'}",
        f"family    {s['family'] or '?'}  ({s['architecture'] or '?'}, {s['dtype'] or '?'})",
        f"routing   {s['num_layers']} MoE layers, {s['num_experts']} experts, top-{s['top_k']}",
    ]
    if s.get("counts_only"):
        lines.append(f"tokens    {s['num_tokens']:,} counted over {s.get('num_steps') or 0:,} steps: expert counts only "
                     "(load views, place --method eplb|greedy; no co-activation)")
    else:
        lines.append(f"tokens    {s['num_tokens']:,} in {s['num_sequences']:,} sequences"
                     + (f" of {s['seq_len']}" if s.get("seq_len") else "")
                     + f"; router logits: {'yes' if s['has_logits'] else 'no'}"
                     + ("" if s.get("has_weights", True) else "; routing weights: not recorded"))
    if s.get("source"):
        src = s["source"]
        parts = [f"{src.get('engine')} {src.get('mode', '')} records".replace("  ", " "),
                 f"{s.get('source_files') or 0} file(s)"]
        if src.get("version"):
            parts.append(f"engine {src['version']}")
        if src.get("rank_layout"):
            parts.append(f"ranks {src['rank_layout']}")
        lines.append("source    " + ", ".join(parts))
    if s.get("phases"):
        lines.append("phases    " + ", ".join(f"{name} {n:,}" for name, n in s["phases"].items() if n))
    if s.get("text"):
        lines.append(f"text      {s['text']}")
    if s.get("parent"):
        lines.append(f"parent    {s['parent']}")
    if s.get("tokens_per_s"):
        where = f", {s['device']}" if s.get("device") else ""
        procs = f", {s['world_size']} processes" if s.get("world_size", 1) > 1 else ""
        if (s.get("sessions") or 1) > 1 and s.get("session_s") is not None and s.get("session_tokens") is not None:
            lines.append(f"capture   {s['tokens_per_s']:,.0f} tokens/s in the last of {s['sessions']} sessions "
                         f"({s['session_tokens']:,} tokens in {s['session_s']:.1f} s; {s['wall_s'] or 0:.1f} s in all"
                         f"{where}{procs})")
        else:
            lines.append(f"capture   {s['tokens_per_s']:,.0f} tokens/s ({s['wall_s'] or 0:.1f} s{where}{procs})")
    load = s["load_max_over_mean"]
    if load["max"] is not None:
        lines.append(
            f"load      max/mean per layer: min {load['min']:.2f}, median {load['median']:.2f}, max {load['max']:.2f}"
            " (1.00 = balanced)"
        )
    width = max([len(row["layer"]) for row in s["per_layer"]] + [5])
    lines.append(f"  {'#':>3}  {'layer':<{width}}  max/mean  busiest  unused")
    for row in s["per_layer"]:
        ratio = f"{row['load_max_over_mean']:.2f}" if row["load_max_over_mean"] is not None else "-"
        busiest = row["busiest_expert"] if row["busiest_expert"] is not None else "-"
        lines.append(f"  {row['index']:>3}  {row['layer']:<{width}}  {ratio:>8}  {busiest:>7}  {row['unused_experts']:>6}")
    return "\n".join(lines)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"
