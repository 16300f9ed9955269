"""``routelens check``'s library side: validate a whole trace in one pass and list every problem.

:class:`~routelens.trace.Trace` checks what it reads, when it reads it; :func:`check_trace` reads
everything once, up front: the manifest (:func:`~routelens.trace_format.validate_manifest`), each
shard's recorded ``sha256`` and size, every tensor's dtype and shape, expert ids against the
layer's ``E`` (and distinct within a token's ``k`` choices), finite routing weights, and the token
bookkeeping: each window's tokens lie together and their positions increase, and each shard's
``num_seqs`` counts the windows it holds. Memory stays bounded by one shard plus the ``[T]``
window ids and positions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import TraceError
from .io import file_sha256
from .trace import Trace
from .trace_format import LAYER_FIELDS, TOKEN_FIELDS, DROPPED

FORMAT_NAME = "routelens-check"


@dataclass
class TraceCheck:
    """What :func:`check_trace` found.

    Attributes:
        path: the run folder.
        problems: one line per problem, in the order found (the manifest first, then shard by shard).
        facts: what was checked (tokens, shards, layers, E, k, hashes verified / not recorded, bytes read).
    """

    path: str
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "path": self.path, "ok": self.ok, "problems": self.problems, "facts": self.facts}


def check_trace(path: str | os.PathLike, max_problems: int = 100) -> TraceCheck:
    """Validate the trace in ``path`` fully, collecting problems instead of stopping at the first.

    Args:
        path: a run folder.
        max_problems: stop collecting after this many (a trace damaged everywhere lists the first ones).

    Returns:
        A :class:`TraceCheck`; ``ok`` when nothing is wrong. An unreadable manifest is its only problem.
    """
    report = TraceCheck(str(path))
    try:
        trace = Trace.open(path, allow_incomplete=True)
    except TraceError as exc:
        report.problems.append(str(exc))
        return report
    manifest = trace.manifest
    report.facts.update(layers=len(trace.layers), num_experts=trace.num_experts, top_k=trace.top_k,
                        num_tokens=trace.num_tokens, num_shards=len(trace.shards), has_logits=trace.has_logits,
                        complete=bool(manifest.get("complete", False)), hashes_verified=0, hashes_missing=0,
                        bytes_read=0)
    if not report.facts["complete"]:
        report.problems.append(f"trace {trace.path} is incomplete (capture interrupted): finish it with --resume")
    windows = _Windows(trace)
    for i, shard in enumerate(trace.shards):
        if len(report.problems) >= max_problems:
            break
        _check_shard(trace, i, shard, report, windows)
    if len(report.problems) < max_problems:
        report.problems.extend(windows.finish(manifest))
    report.facts["num_windows"] = windows.count
    del report.problems[max_problems:]
    return report


def format_check(report: TraceCheck) -> str:
    """The short text report of a sound trace (``routelens check`` prints it)."""
    f = report.facts
    hashes = (f"{f['hashes_verified']} of {f['num_shards']} shard hashes match (sha256)" if f["hashes_verified"]
              else "no hashes recorded (a trace written before routelens recorded them)")
    if f["hashes_verified"] and f["hashes_missing"]:
        hashes += f"; {f['hashes_missing']} shards without one"
    return "\n".join([
        f"trace     {report.path}  ({'complete' if f['complete'] else 'incomplete'}; {f['num_shards']} shards, "
        f"{f['bytes_read'] / 2**20:.1f} MiB read)",
        f"manifest  ok: {f['layers']} MoE layers, {f['num_experts']} experts, top-{f['top_k']}, "
        f"{f['num_tokens']:,} tokens in {f['num_windows']:,} windows",
        f"shards    {hashes}",
        f"arrays    ok: dtypes and shapes, expert ids in [-1, E) and distinct per token, finite weights"
        + ("; router logits" if f["has_logits"] else ""),
        "sound",
    ])


def _check_shard(trace: Trace, index: int, shard: dict[str, Any], report: TraceCheck, windows: "_Windows") -> None:
    name = shard["file"]
    file = trace.shard_file(index)
    digest, size = file_sha256(file)
    report.facts["bytes_read"] += size
    if "size" in shard and shard["size"] != size:
        report.problems.append(f"trace {trace.path}: shard {name} holds {size} bytes, the manifest recorded "
                               f"{shard['size']} (truncated, or changed since it was written)")
    if "sha256" in shard:
        if shard["sha256"] != digest:
            report.problems.append(f"trace {trace.path}: shard {name} does not match its recorded sha256 "
                                   "(damaged or changed since it was written)")
        else:
            report.facts["hashes_verified"] += 1
    else:
        report.facts["hashes_missing"] += 1
    keys = list(TOKEN_FIELDS) + [f"{f}.{j}" for j in range(len(trace.layers)) for f in LAYER_FIELDS
                                 if f != "router_logits" or trace.has_logits]
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        try:
            arrays[key] = trace.shard_array(index, key)  # the checks every read makes: dtype, shape, ids, weights
        except TraceError as exc:
            report.problems.append(str(exc))
    for j, layer in enumerate(trace.layers):
        ids = arrays.get(f"topk_ids.{j}")
        if ids is not None and ids.shape[1] > 1:
            row = _repeated_choice(ids)
            if row is not None:
                report.problems.append(f"trace {trace.path}: shard {name}, layer {j} ({layer}): token {row} of the "
                                       f"shard chooses one expert twice among its top-{trace.top_k}")
    if "seq_ids" in arrays and "positions" in arrays:
        report.problems.extend(windows.add(name, shard, arrays["seq_ids"], arrays["positions"]))


def _repeated_choice(ids: np.ndarray) -> int | None:
    """Index of the first row of ``ids`` ``[n, k]`` that names an expert twice (dropped ``-1`` slots aside), or None."""
    ordered = np.sort(ids, axis=1)
    same = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != DROPPED)
    rows = np.flatnonzero(same.any(axis=1))
    return int(rows[0]) if rows.size else None


class _Windows:
    """Token bookkeeping across shards: a window's tokens lie together, its positions increase."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.ended: set[int] = set()  # windows another window's tokens came after
        self.last: tuple[int, int] | None = None  # (window, position) of the previous token
        self.num_seqs_sum = 0

    @property
    def count(self) -> int:
        return len(self.ended) + (self.last is not None)

    def add(self, name: str, shard: dict[str, Any], seq: np.ndarray, pos: np.ndarray) -> list[str]:
        """Take the next shard's ``[n]`` window ids and positions; returns its problems."""
        where = f"trace {self.trace.path}: shard {name}"
        problems = []
        if "num_seqs" in shard:
            self.num_seqs_sum += int(shard["num_seqs"])
            distinct = int(np.unique(seq).size)
            if shard["num_seqs"] != distinct:
                problems.append(f"{where}: holds tokens of {distinct} windows, the manifest says num_seqs {shard['num_seqs']}")
        order = self._order(where, seq, pos)
        return problems + ([order] if order else [])

    def _order(self, where: str, seq: np.ndarray, pos: np.ndarray) -> str | None:
        if seq.size == 0:
            return None
        carried = self.last is not None  # the previous shard's last token goes first, to see across the boundary
        seq64 = np.concatenate([[self.last[0]] if carried else [], seq]).astype(np.int64)
        pos64 = np.concatenate([[self.last[1]] if carried else [], pos]).astype(np.int64)
        for i in (np.flatnonzero(np.diff(seq64) != 0) + 1).tolist():
            self.ended.add(int(seq64[i - 1]))
            if int(seq64[i]) in self.ended:
                return (f"{where}: window {int(seq64[i])} continues after other windows' tokens (token {i - carried} "
                        "of the shard): a window's tokens must lie together")
        bad = np.flatnonzero((np.diff(seq64) == 0) & (np.diff(pos64) <= 0))
        if bad.size:
            i = int(bad[0]) + 1
            return f"{where}: positions do not increase inside window {int(seq64[i])} (token {i - carried} of the shard)"
        self.last = (int(seq64[-1]), int(pos64[-1]))
        return None

    def finish(self, manifest: dict[str, Any]) -> list[str]:
        declared = manifest.get("num_sequences")
        if declared is not None and all("num_seqs" in s for s in manifest["shards"]) and declared != self.num_seqs_sum:
            return [f"trace {self.trace.path}: manifest says num_sequences {declared}, its shards' num_seqs add up "
                    f"to {self.num_seqs_sum}"]
        return []
