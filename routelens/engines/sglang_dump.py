"""SGLang's expert-distribution records → routelens routing.

Read from SGLang 0.5.23's ``sglang/srt/eplb/expert_distribution.py`` (``--expert-distribution-
recorder-mode``, ``/start_expert_distribution_record``, ``/dump_expert_distribution_record``; files
``expert_distribution_recorder_<time>[_<rank>].pt`` in ``$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``):

* ``per_token``: every rank writes ``{"records": [...], "last_physical_to_logical_map": [D, P]}``; a
  record is one forward pass: ``forward_pass_id``, ``rank``, ``input_ids``, ``positions``,
  ``extend_seq_lens`` (None in decode passes), ``forward_mode`` (``ForwardMode`` int: 1 EXTEND,
  2 DECODE, 3 MIXED, 4 IDLE, 5 TARGET_VERIFY, 6 DRAFT_EXTEND_V2, 7 PREBUILT, 8 SPLIT_PREFILL,
  9 DLLM_EXTEND), ``topk_ids_of_layer [D, n, 8]`` int32: the *physical* slot each token was sent
  to at every decoder layer (``D = num_hidden_layers``, dense layers and unused top-k columns ``-1``).
  Slots map back to logical experts through the map (SGLang's own recorder does the same in ``stat``).
* ``per_pass``: the same records with ``global_physical_count [D, P]`` instead of token ids.
* ``stat``: rank 0 writes ``{"rank", "logical_count" [steps, D, E], ...}`` (summed over ranks).

What cannot be known from these files, and how the import says so (manifest ``source.caveats``):
routing weights are not recorded (``has_weights: false``); a decode token is not linked to its
request (each is a one-token window); in a MIXED pass a token's own phase is unknown; the map is the
*last* one, so passes recorded before an EPLB rebalance inside the recording window are mapped with
a later placement. Under tensor parallelism every rank records the same tokens, under DP attention
with expert parallelism each rank its own: :data:`RANK_LAYOUTS` says how ranks are merged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .imported import DECODE, MIXED, OTHER, PREFILL, TokenRouting, as_int_array, load_torch_file
from .layout import ModelLayout

FORMAT_READ = "sglang 0.5.23 srt/eplb/expert_distribution.py"
WHAT = "SGLang expert-distribution dump"

# ForwardMode (srt/model_executor/forward_batch_info.py) -> phase code; IDLE passes hold no token
FORWARD_MODE_PHASE = {1: PREFILL, 2: DECODE, 3: MIXED, 8: PREFILL}
IDLE = 4

RANK_LAYOUTS = {
    "auto": "replicated when every pass that several ranks recorded is identical on all of them, disjoint when "
            "none is, else an error",
    "replicated": "every rank recorded the same tokens (tensor parallelism): keep one copy",
    "disjoint": "each rank recorded its own tokens (DP attention with expert parallelism): keep all",
}


@dataclass
class SGLangImport:
    """What a set of SGLang dumps holds, mapped to a model's MoE layers.

    Attributes:
        mode: ``per_token``, ``per_pass`` or ``stat``.
        routing: per-token routing (``per_token``), else None.
        logical_count: ``[steps, L, E]`` expert counts (``per_pass``, ``stat``), else None.
        ranks: ranks whose files were read; rank_layout: how they were merged (None for ``stat``).
        num_passes: forward passes kept (steps for ``stat``).
        caveats: what these records cannot tell, one sentence each.
    """

    mode: str
    routing: TokenRouting | None = None
    logical_count: np.ndarray | None = None
    ranks: list[int] = field(default_factory=list)
    rank_layout: str | None = None
    num_passes: int = 0
    caveats: list[str] = field(default_factory=list)


def read_sglang_dumps(paths: list[Path], layout: ModelLayout, ranks: str = "auto") -> SGLangImport:
    """Read SGLang expert-distribution dumps of one recording and map them to ``layout``'s MoE layers.

    Args:
        paths: the ``.pt`` files (every rank's, for ``per_token`` / ``per_pass``).
        layout: the model that served the records (:func:`~routelens.engines.layout.model_layout`).
        ranks: a key of :data:`RANK_LAYOUTS`.

    Returns:
        An :class:`SGLangImport`.

    Raises:
        InputError: a hostile, truncated or foreign file, records of another model (decoder layers,
            experts, top-k or vocabulary that do not match), files of different modes or maps, a pass
            given twice, ranks that cannot be merged (one line each).
    """
    if ranks not in RANK_LAYOUTS:
        raise InputError(f"unknown rank layout '{ranks}' (known: {', '.join(RANK_LAYOUTS)})")
    if not paths:
        raise InputError("no SGLang dump files given")
    loaded = [(path, load_torch_file(path, WHAT)) for path in paths]
    kinds = {path: _kind(data, path) for path, data in loaded}
    named = {path: kind for path, kind in kinds.items() if kind != "empty"}  # a rank that recorded no pass
    if len(set(named.values())) > 1:
        raise InputError("the files mix recorder modes (" + ", ".join(f"{p.name}: {k}" for p, k in named.items())
                         + "): import each recording separately")
    kind = next(iter(named.values()), "per_token")
    if kind == "stat":
        return _read_stat(loaded, layout)
    maps = [_physical_map(data, path, layout) for path, data in loaded]
    if any(not np.array_equal(maps[0], m) for m in maps[1:]):
        raise InputError("the files hold different physical-to-logical maps (EPLB rebalanced between dumps, or "
                         "files of two deployments): import each recording separately")
    return _read_detail(loaded, layout, maps[0], kind, ranks)


def _kind(data: Any, path: Path) -> str:
    if not isinstance(data, dict):
        raise InputError(f"{path} is not an {WHAT}: it holds a {type(data).__name__}, not a dict")
    if "logical_count" in data:
        return "stat"
    if "records" in data and "last_physical_to_logical_map" in data:
        records = data["records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InputError(f"{path}: 'records' must be a list of dicts")
        if not records:
            return "empty"
        if any("topk_ids_of_layer" in r for r in records):
            return "per_token"
        return "per_pass"
    raise InputError(f"{path} is not an {WHAT} (keys {sorted(map(str, data))[:6]}; expected 'records' and "
                     "'last_physical_to_logical_map', or 'logical_count')")


def _physical_map(data: dict, path: Path, layout: ModelLayout) -> np.ndarray:
    mapping = as_int_array(data["last_physical_to_logical_map"], f"{path}: last_physical_to_logical_map", ndim=2)
    if mapping.shape[0] != layout.num_decoder_layers:
        raise InputError(f"{path}: the map covers {mapping.shape[0]} decoder layers, {layout.model_id} has "
                         f"{layout.num_decoder_layers} (records of another model?)")
    if mapping.size and (mapping.min() < 0 or mapping.max() >= layout.num_experts):
        raise InputError(f"{path}: the map names expert {int(mapping.max())} but {layout.model_id} has "
                         f"{layout.num_experts} experts per layer (records of another model?)")
    if mapping.shape[1] < layout.num_experts:
        raise InputError(f"{path}: the map has {mapping.shape[1]} physical slots for {layout.num_experts} experts")
    return mapping


def _read_detail(loaded: list[tuple[Path, dict]], layout: ModelLayout, mapping: np.ndarray, kind: str,
                 rank_layout: str) -> SGLangImport:
    """``per_token`` / ``per_pass``: records keyed by (forward pass, rank), merged over ranks."""
    passes: dict[int, dict[int, dict[str, Any]]] = {}
    for path, data in loaded:
        for number, record in enumerate(data["records"]):
            where = f"{path.name} record {number}"
            parsed = (_token_record if kind == "per_token" else _pass_record)(record, where, layout, mapping)
            if parsed is None:
                continue
            by_rank = passes.setdefault(parsed["pass"], {})
            if parsed["rank"] in by_rank:
                raise InputError(f"forward pass {parsed['pass']} of rank {parsed['rank']} appears twice "
                                 f"({where}): the same dump given twice?")
            by_rank[parsed["rank"]] = parsed
    ranks = sorted({r for by_rank in passes.values() for r in by_rank})
    chosen = _merge_ranks(passes, rank_layout) if len(ranks) > 1 else "single rank"
    caveats = ["routing weights are not recorded (SGLang records expert ids only)"]
    trivial = mapping.shape[1] == layout.num_experts and np.array_equal(
        mapping, np.tile(np.arange(layout.num_experts), (mapping.shape[0], 1)))
    if not trivial:
        caveats.append("physical slots were mapped to experts with the dump's last map: passes recorded before an "
                       "EPLB rebalance inside the recording window are mapped with the later placement")
    kept = [(fpid, rank) for fpid in sorted(passes) for rank in sorted(passes[fpid])
            if chosen != "replicated" or rank == min(passes[fpid])]
    if kind == "per_token":
        routing = TokenRouting(len(layout.layers), layout.top_k)
        for fpid, rank in kept:
            record = passes[fpid][rank]
            routing.add(record["input_ids"], record["positions"], record["phase"], record["ids"],
                        window_lengths=[hi - lo for lo, hi in record["windows"]])
        caveats.append("a decode token is its own one-token window: SGLang does not record which request it belongs to")
        if any(passes[f][r]["phase"] == MIXED for f, r in kept):
            caveats.append("tokens of MIXED passes (chunked prefill with decode) have phase 'mixed': their own "
                           "phase is not recorded")
        return SGLangImport("per_token", routing=routing, ranks=ranks, rank_layout=chosen, num_passes=len(kept),
                            caveats=caveats)
    steps: dict[int, np.ndarray] = {}
    for fpid, rank in kept:
        steps[fpid] = steps.get(fpid, 0) + passes[fpid][rank]["counts"]
    counts = np.stack([steps[f] for f in sorted(steps)]) if steps else np.zeros((0, len(layout.layers), layout.num_experts), np.int64)
    return SGLangImport("per_pass", logical_count=counts, ranks=ranks, rank_layout=chosen, num_passes=len(steps),
                        caveats=caveats)


def _merge_ranks(passes: dict[int, dict[int, dict[str, Any]]], rank_layout: str) -> str:
    shared = [by_rank for by_rank in passes.values() if len(by_rank) > 1]
    same = [len({r["digest"] for r in by_rank.values()}) == 1 for by_rank in shared]
    if rank_layout != "auto":
        if rank_layout == "replicated" and not all(same):
            bad = next(f for f, by_rank in passes.items() if len(by_rank) > 1 and len({r["digest"] for r in by_rank.values()}) > 1)
            raise InputError(f"--ranks replicated, but the ranks recorded forward pass {bad} differently")
        return rank_layout
    if all(same):
        return "replicated"
    if not any(same):
        return "disjoint"
    raise InputError(f"{sum(same)} passes are identical on every rank and {len(same) - sum(same)} differ: pass "
                     "--ranks replicated (tensor parallel) or --ranks disjoint (DP attention) to say how SGLang ran")


def _common(record: dict, where: str) -> tuple[int, int, int]:
    for key in ("forward_pass_id", "rank", "forward_mode"):
        if not isinstance(record.get(key), (int, np.integer)) or isinstance(record.get(key), bool):
            raise InputError(f"{where}: '{key}' must be an integer, got {type(record.get(key)).__name__}")
    return int(record["forward_pass_id"]), int(record["rank"]), int(record["forward_mode"])


def _token_record(record: dict, where: str, layout: ModelLayout, mapping: np.ndarray) -> dict[str, Any] | None:
    """One ``per_token`` record checked and mapped to logical experts; None for a pass without tokens."""
    fpid, rank, mode = _common(record, where)
    for key in ("input_ids", "positions", "topk_ids_of_layer"):
        if key not in record:
            raise InputError(f"{where} lacks '{key}'")
    topk = as_int_array(record["topk_ids_of_layer"], f"{where}: topk_ids_of_layer", ndim=3)
    input_ids = as_int_array(record["input_ids"], f"{where}: input_ids", ndim=1)
    positions = as_int_array(record["positions"], f"{where}: positions", ndim=1)
    depth, n, width = topk.shape
    k = layout.top_k
    if depth != layout.num_decoder_layers:
        raise InputError(f"{where}: records cover {depth} decoder layers, {layout.model_id} has "
                         f"{layout.num_decoder_layers} (records of another model?)")
    if input_ids.size != n or positions.size != n:
        raise InputError(f"{where}: {input_ids.size} input ids and {positions.size} positions for {n} routed tokens "
                         "(a truncated record?)")
    if n == 0 or mode == IDLE:
        return None
    if width < k:
        raise InputError(f"{where}: records keep {width} experts per token, {layout.model_id} chooses {k}")
    if (topk[:, :, k:] != -1).any():
        raise InputError(f"{where}: tokens are sent to more than {k} experts (top-k of another model?)")
    moe_rows = np.asarray(layout.layer_indices)
    dense = np.delete(topk, moe_rows, axis=0)
    if dense.size and (dense != -1).any():
        d = int(np.setdiff1d(np.arange(depth), moe_rows)[np.flatnonzero((dense != -1).any(axis=(1, 2)))[0]])
        raise InputError(f"{where}: tokens are routed at decoder layer {d}, where {layout.model_id} has no MoE "
                         "router (records of another model?)")
    physical = topk[moe_rows, :, :k]                                   # [L, n, k]
    if physical.min() < -1 or physical.max() >= mapping.shape[1]:
        raise InputError(f"{where}: physical expert ids must lie in [-1, {mapping.shape[1]}), found "
                         f"{int(physical.min())}..{int(physical.max())}")
    unrecorded = (physical < 0).all(axis=2)
    if unrecorded.any():
        j = int(np.flatnonzero(unrecorded.any(axis=1))[0])
        raise InputError(f"{where}: layer {layout.layers[j]} recorded no expert for {int(unrecorded[j].sum())} "
                         f"of {n} tokens")
    rows = mapping[moe_rows]                                           # [L, P]
    logical = np.where(physical >= 0, rows[np.arange(rows.shape[0])[:, None, None], np.maximum(physical, 0)], -1)
    ids = np.ascontiguousarray(logical.transpose(1, 0, 2))             # [n, L, k]
    phase = FORWARD_MODE_PHASE.get(mode, OTHER)
    windows = _windows(record.get("extend_seq_lens"), positions, phase, where)
    digest = hashlib.sha1(b"".join(a.tobytes() for a in (input_ids, positions, ids.astype(np.int64)))).hexdigest()
    return {"pass": fpid, "rank": rank, "phase": phase, "input_ids": input_ids, "positions": positions, "ids": ids,
            "windows": windows, "digest": digest}


def _windows(extend_seq_lens: Any, positions: np.ndarray, phase: int, where: str) -> list[tuple[int, int]]:
    """Token ranges of the requests in one pass: decode tokens one by one, extend segments by their lengths."""
    n = positions.size
    if phase == DECODE:
        return [(i, i + 1) for i in range(n)]
    if extend_seq_lens is not None:
        lengths = as_int_array(extend_seq_lens, f"{where}: extend_seq_lens", ndim=1)
        if lengths.min(initial=0) < 0 or int(lengths.sum()) != n:
            raise InputError(f"{where}: extend_seq_lens add up to {int(lengths.sum())}, the pass holds {n} tokens")
        ends = np.cumsum(lengths)
        return [(int(e - length), int(e)) for e, length in zip(ends, lengths) if length > 0]
    # no lengths recorded: a new request starts wherever positions do not continue by one
    starts = np.r_[0, np.flatnonzero(np.diff(positions) != 1) + 1, n]
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def _pass_record(record: dict, where: str, layout: ModelLayout, mapping: np.ndarray) -> dict[str, Any] | None:
    """One ``per_pass`` record: its physical counts as ``[L, E]`` logical counts; None when it counts nothing."""
    fpid, rank, _ = _common(record, where)
    if "global_physical_count" not in record:
        raise InputError(f"{where} lacks 'global_physical_count'")
    count = as_int_array(record["global_physical_count"], f"{where}: global_physical_count", ndim=2)
    if count.shape != mapping.shape:
        raise InputError(f"{where}: counts of shape {count.shape}, the map is {mapping.shape}")
    if count.min(initial=0) < 0:
        raise InputError(f"{where}: negative expert counts")
    moe_rows = np.asarray(layout.layer_indices)
    dense = np.delete(count, moe_rows, axis=0)
    if dense.size and dense.any():
        raise InputError(f"{where}: tokens are counted at a decoder layer where {layout.model_id} has no MoE router "
                         "(records of another model?)")
    if not count.any():
        return None
    logical = np.stack([np.bincount(mapping[d], weights=count[d], minlength=layout.num_experts)
                        for d in moe_rows]).astype(np.int64)
    digest = hashlib.sha1(logical.tobytes()).hexdigest()
    return {"pass": fpid, "rank": rank, "counts": logical, "digest": digest}


def _read_stat(loaded: list[tuple[Path, dict]], layout: ModelLayout) -> SGLangImport:
    """``stat`` dumps: ``logical_count [steps, D, E]`` (already summed over ranks by SGLang)."""
    ranks = sorted({_stat_rank(data, path) for path, data in loaded})
    steps = []
    for path, data in loaded:
        if _stat_rank(data, path) != ranks[0]:
            continue  # every rank's stat dump holds the same all-reduced counts
        count = as_int_array(data["logical_count"], f"{path}: logical_count")
        if count.ndim == 2:
            count = count[None]
        if count.ndim != 3 or count.shape[1:] != (layout.num_decoder_layers, layout.num_experts):
            raise InputError(f"{path}: logical_count of shape {tuple(count.shape)}, {layout.model_id} needs "
                             f"[steps, {layout.num_decoder_layers}, {layout.num_experts}] (records of another model?)")
        if count.min(initial=0) < 0:
            raise InputError(f"{path}: negative expert counts")
        moe_rows = np.asarray(layout.layer_indices)
        dense = np.delete(count, moe_rows, axis=1)
        if dense.size and dense.any():
            raise InputError(f"{path}: tokens are counted at a decoder layer where {layout.model_id} has no MoE router "
                             "(records of another model?)")
        kept = count[:, moe_rows]
        steps.append(kept[kept.reshape(kept.shape[0], -1).any(axis=1)])  # unfilled buffer steps are all zero
    counts = np.concatenate(steps) if steps else np.zeros((0, len(layout.layers), layout.num_experts), np.int64)
    caveats = ["counts only: SGLang's stat mode records how many tokens each expert received per step, not which "
               "experts a token chose together (no co-activation)"]
    return SGLangImport("stat", logical_count=counts, ranks=ranks, rank_layout=None, num_passes=int(counts.shape[0]),
                        caveats=caveats)


def _stat_rank(data: dict, path: Path) -> int:
    rank = data.get("rank", 0)
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool):
        raise InputError(f"{path}: 'rank' must be an integer")
    return int(rank)
