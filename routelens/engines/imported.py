"""Routing read from an engine's records, and how it becomes an ordinary routelens run.

Importers (:mod:`.sglang_dump`, :mod:`.vllm_routed`) turn records into a :class:`TokenRouting`
(per-token expert ids, one window per request segment) or into per-step expert counts, and the two
writers here store them through :class:`routelens.trace.TraceWriter` / :func:`write_counts_run`, so
every command reads an imported run like a captured one. Engines record expert ids only: the shards
hold uniform ``1/k`` weights and the manifest says ``has_weights: false``, which commands that need
weights or logits refuse (:meth:`routelens.trace.Trace.require_weights`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..trace import Trace, TraceWriter, write_counts_run
from .layout import ModelLayout

PHASES = ("prefill", "decode", "mixed", "other")
"""Phase codes of imported tokens: a prompt (extend) pass, a decode step, a pass that mixed both
(SGLang's chunked prefill with decode tokens, where a token's own phase is unknown), anything else
(speculative verify / draft passes)."""
PREFILL, DECODE, MIXED, OTHER = range(len(PHASES))
SHARD_TOKENS = 65536


@dataclass
class TokenRouting:
    """Per-token routing an engine recorded, gathered window by window.

    Attributes:
        num_layers: MoE layers ``L`` (the model's, in trace order).
        top_k: ``k``.
        chunks: each ``(token_ids [n], positions [n], phase [n] int8, ids [n, L, k] int16 logical,
            window lengths [w] summing to n)`` — one forward pass or one request (a decode pass is one
            chunk of ``n`` one-token windows, so millions of decode tokens stay a few arrays).
    """

    num_layers: int
    top_k: int
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def add(self, token_ids: Any, positions: Any, phase: Any, ids: np.ndarray, window_lengths: Any = None) -> None:
        """Append tokens: one window, or several given by ``window_lengths`` (in token order)."""
        ids = np.asarray(ids)
        n = ids.shape[0]
        if ids.shape != (n, self.num_layers, self.top_k):
            raise ValueError(f"window ids of shape {ids.shape}, expected ({n}, {self.num_layers}, {self.top_k})")
        lengths = np.asarray([n] if window_lengths is None else window_lengths, dtype=np.int64)
        if int(lengths.sum()) != n or (lengths <= 0).any():
            raise ValueError(f"window lengths {lengths.tolist()} do not split {n} tokens")
        phase = np.broadcast_to(np.asarray(phase, dtype=np.int8), (n,))
        self.chunks.append((np.asarray(token_ids, np.int64), np.asarray(positions, np.int64), phase,
                            ids.astype(np.int16), lengths))

    @property
    def num_tokens(self) -> int:
        return int(sum(c[0].size for c in self.chunks))

    @property
    def num_windows(self) -> int:
        return int(sum(c[4].size for c in self.chunks))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(token_ids [T], seq_ids [T], positions [T], phase [T], ids [T, L, k])`` of all windows in order."""
        if not self.chunks:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8),
                    np.zeros((0, self.num_layers, self.top_k), np.int16))
        lengths = np.concatenate([c[4] for c in self.chunks])
        seq = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        return (np.concatenate([c[0] for c in self.chunks]), seq, np.concatenate([c[1] for c in self.chunks]),
                np.concatenate([c[2] for c in self.chunks]), np.concatenate([c[3] for c in self.chunks]))


def write_routing_trace(out: str | os.PathLike, layout: ModelLayout, routing: TokenRouting,
                        settings: dict[str, Any], source: dict[str, Any]) -> Trace:
    """Write imported per-token routing as a trace (uniform ``1/k`` weights, ``has_weights: false``).

    Raises:
        InputError: no token was recorded; TraceError: ``out`` already holds something.
    """
    if routing.num_tokens == 0:
        raise InputError("the records hold no token (an idle recording, or only empty passes)")
    token_ids, seq_ids, positions, phase, ids = routing.arrays()
    vocab = layout.config.get("vocab_size")
    if isinstance(vocab, int) and token_ids.size and (token_ids.min() < 0 or token_ids.max() >= vocab):
        raise InputError(f"token id {int(token_ids.max())} lies outside the vocabulary of {layout.model_id} "
                         f"({vocab} ids): records of another model?")
    header = layout.header(settings, source, phases=list(PHASES))
    writer = TraceWriter(out, header)
    uniform = np.float32(1.0 / layout.top_k)
    window_ends = np.r_[np.flatnonzero(np.diff(seq_ids) != 0), token_ids.size - 1]
    for start in range(0, token_ids.size, SHARD_TOKENS):
        part = slice(start, start + SHARD_TOKENS)
        layer_ids = [np.ascontiguousarray(ids[part, j]) for j in range(routing.num_layers)]
        weights = [np.where(a >= 0, uniform, np.float32(0)) for a in layer_ids]
        # a window split over two shards is counted by the shard that completes it
        done = int(np.count_nonzero((window_ends >= start) & (window_ends < start + SHARD_TOKENS)))
        writer.write_shard(token_ids[part], seq_ids[part], positions[part], layer_ids, weights,
                           num_seqs=done, phase=phase[part])
    writer.close(complete=True)
    return Trace.open(out)


def write_counts_trace(out: str | os.PathLike, layout: ModelLayout, logical_count: np.ndarray,
                       settings: dict[str, Any], source: dict[str, Any]) -> Trace:
    """Write imported per-step expert counts ``[steps, L, E]`` (MoE layers in trace order) as a counts-only run."""
    counts = np.asarray(logical_count)
    if counts.size == 0 or counts.sum() == 0:
        raise InputError("the records count no token (an idle recording?)")
    return write_counts_run(out, layout.header(settings, source), counts.astype(np.int64))


# ---------------------------------------------------------------------------- reading record files
def describe_files(paths: list[Path]) -> list[dict[str, Any]]:
    """``[{name, size, sha256}]`` of the record files an import read (stored in the manifest's ``source``)."""
    out = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out.append({"name": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()})
    return out


def load_torch_file(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; one-line InputError for anything else.

    A pickle that asks for arbitrary code (a hostile file) is refused by ``weights_only``; a truncated
    or foreign file fails here too.
    """
    import torch

    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch.load raises many types for a corrupt file (struct.error, zipfile...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable {what} (torch.load with weights_only refused it: {first})") from exc


def as_int_array(value: Any, where: str, ndim: int | None = None) -> np.ndarray:
    """A tensor, array or (nested) list of integers as an int64 array; InputError otherwise."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(f"{where} is ragged or not numeric") from None
    if array.dtype.kind == "b" or (array.size and array.dtype.kind not in "iu"):
        raise InputError(f"{where} must hold integers, got {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{where} must have {ndim} dimension(s), got shape {array.shape}")
    return array.astype(np.int64)
