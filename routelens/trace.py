"""The Trace: what a capture run recorded, on disk and in memory.

A trace is a folder::

    RUN/
      manifest.json                     # format, model metadata, layers, E, k, token count, shards
      shards/r0-000000.safetensors      # one file per batch of captured sequences (per rank)
      ...

Each shard holds, for its ``n`` tokens (every token is a real token: windows are packed, no padding):

==========================  =========  ===========================================================
tensor                      dtype      shape / meaning
==========================  =========  ===========================================================
``token_ids``               int32      ``[n]`` vocabulary id of the token
``seq_ids``                 int32      ``[n]`` index of the packed window (sequence) it came from
``positions``               int32      ``[n]`` its position inside that window
``topk_ids.{j}``            int16      ``[n, k]`` experts the model chose at MoE layer ``j``
``topk_weights.{j}``        float16    ``[n, k]`` routing weights the experts received
``router_logits.{j}``       float16    ``[n, E]`` raw router logits (only with ``--save-logits``)
==========================  =========  ===========================================================

Optional per-token field: ``phase`` (int8 ``[n]``, index into ``manifest["phases"]``, e.g. prefill /
decode) in traces imported from a serving engine (``routelens import``, :mod:`routelens.engines`).

Optional manifest fields: ``has_weights`` (default true; false when the source recorded expert ids only:
the shards then hold uniform ``1/k`` weights and :meth:`Trace.require_weights` refuses), ``phases``,
``source`` (what the run came from: a capture's text, or an engine's record files). A *counts-only*
run (``"routing": "counts"``) holds no shards but ``counts.safetensors`` with ``logical_count``
(int64 ``[steps, layers, E]``, tokens per expert per recorded step): :meth:`Trace.expert_counts` works
on it, everything that needs per-token routing refuses it with one line (:meth:`Trace.require_tokens`).

``j`` indexes ``manifest["layers"]``, the router module paths in model order. Shards are written
atomically and listed in the manifest only once complete, so an interrupted run can resume without
losing or duplicating tokens. Each shard entry records the file's ``sha256`` and ``size`` (traces
written before routelens recorded them still open). :class:`Trace` reads one layer at a time
(``topk_ids(layer)``), never all layers at once, and checks every manifest field, shard path and
array it reads (:mod:`routelens.trace_format`); :class:`TraceWriter` writes shards and keeps the
manifest current.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import RoutelensError, TraceError
from .formats import PART_FILE, PARTS_DIR, TRACE
from .io import atomic_write, file_sha256, read_json
from .lock import is_lock_file, run_lock
from .trace_format import (COUNTS_FILE, COUNTS_KEY, COUNTS_ROUTING, LAYER_FIELDS, MANIFEST, SHARD_DIR, TOKEN_FIELDS,
                           all_finite, check_array, expected_array, layer_expert_counts, regular_file_inside,
                           validate_manifest)

# Manifest keys that change without the routing changing (a resumed session's timings, the software
# that last wrote it): left out of the fingerprint.
_VOLATILE_KEYS = ("stats", "software", "shards")


def software_versions() -> dict[str, str]:
    """Versions of the packages that shaped a result (stored in manifests and plans)."""
    return dict(_software_versions())


@functools.lru_cache(maxsize=1)
def _software_versions() -> dict[str, str]:
    # looked up once per process: reading package metadata takes tens of milliseconds, and a
    # capture rewrites its manifest after every shard
    versions = {"python": platform.python_version()}
    for name in ("routelens", "torch", "transformers", "numpy"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed (e.g. routelens run from a source tree)
            continue
    return versions


class Trace:
    """A captured (or re-routed) routing trace, opened lazily from its folder.

    Attributes:
        path: the run folder.
        manifest: the parsed ``manifest.json``.
        layers: router module paths of the MoE layers, in model order.
        num_experts: ``E``, routed experts per MoE layer.
        top_k: ``k``, experts chosen per token.
        num_tokens: ``T``, tokens recorded (summed over shards).
        layer_experts: ``E`` of each layer (``num_experts_per_layer``, else ``num_experts`` for all).

    Example:
        >>> trace = Trace.open("runs/demo")                       # doctest: +SKIP
        >>> ids = trace.topk_ids(trace.layers[0])                 # [T, k] int16  # doctest: +SKIP
    """

    def __init__(self, path: Path, manifest: dict[str, Any], files: Sequence[str] | None = None):
        """Use :meth:`open`; ``manifest`` must have passed :func:`~routelens.trace_format.validate_manifest`
        and ``files`` are the shards' resolved paths inside ``path``."""
        self.path = path
        self.manifest = manifest
        self.layers: list[str] = list(manifest["layers"])
        self.num_experts: int = int(manifest["num_experts"])
        self.top_k: int = int(manifest["top_k"])
        self.shards: list[dict[str, Any]] = list(manifest["shards"])
        self.num_tokens: int = int(sum(s["num_tokens"] for s in self.shards))
        self.layer_experts: list[int] = layer_expert_counts(manifest)
        self._files = list(files) if files is not None else [str(path / s["file"]) for s in self.shards]
        if self.counts_only:
            self.num_tokens = int(manifest.get("num_tokens", 0) or 0)
        self._token_cache: dict[str, np.ndarray] = {}
        self._counts: np.ndarray | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, allow_incomplete: bool = False) -> "Trace":
        """Open the trace in ``path`` (a run folder), checking its manifest and shard paths.

        Every manifest field is checked (:func:`~routelens.trace_format.validate_manifest`) and
        every shard path resolved inside the run folder before any shard is touched; the arrays are
        checked as they are read.

        Raises:
            TraceError: no trace there, an unknown or older format version, a malformed manifest, a
                shard path leaving the run folder, a missing shard, or an incomplete run (unless
                ``allow_incomplete``).
        """
        path = Path(path)
        manifest = read_manifest(path)
        root = os.path.realpath(path)
        if not manifest.get("complete", False) and not allow_incomplete:
            raise TraceError(f"trace {path} is incomplete (capture interrupted): finish it with --resume")
        files = []
        for shard in manifest["shards"]:
            file = regular_file_inside(root, shard["file"], f"trace {path}: shard {shard['file']}")
            if file is None:
                raise TraceError(f"trace {path} is missing shard {shard['file']}")
            files.append(file)
        if manifest.get("routing") == COUNTS_ROUTING and regular_file_inside(root, COUNTS_FILE, f"trace {path}") is None:
            raise TraceError(f"counts-only run {path} is missing {COUNTS_FILE}")
        return cls(path, manifest, files)

    def shard_file(self, index: int) -> Path:
        """The resolved path of shard ``index`` (inside the run folder)."""
        return Path(self._files[index])

    # ------------------------------------------------------------------ metadata
    @property
    def model_id(self) -> str:
        return self.manifest.get("model", {}).get("id", "")

    @property
    def family(self) -> str:
        return self.manifest.get("model", {}).get("family", "")

    @property
    def config(self) -> dict[str, Any]:
        """Summary of the model config (hidden size, layers, experts, k, ...)."""
        return self.manifest.get("model", {}).get("config", {})

    @property
    def has_logits(self) -> bool:
        return bool(self.manifest.get("has_logits", False))

    @property
    def has_weights(self) -> bool:
        """False when the source recorded expert ids only (engine imports): weights are uniform ``1/k``."""
        return bool(self.manifest.get("has_weights", True))

    @property
    def counts_only(self) -> bool:
        """True for a run that holds expert counts per step, not per-token routing (SGLang ``stat`` records)."""
        return self.manifest.get("routing") == COUNTS_ROUTING

    @property
    def source_label(self) -> str:
        """Where the routing came from, in a few words (``sglang per_token records``, or ``""`` for captures)."""
        source = self.manifest.get("source") or {}
        if isinstance(source, dict) and source.get("engine"):
            return f"{source['engine']} {source.get('mode', '')} records".replace("  ", " ")
        return ""

    def require_tokens(self, what: str) -> None:
        """Raise TraceError (one line naming ``what``) unless the run holds per-token routing."""
        if self.counts_only:
            label = self.source_label or "counts"
            raise TraceError(f"{what} needs per-token routing, but {self.path} holds expert counts only ({label}); "
                             "import per-token records (SGLang --expert-distribution-recorder-mode per_token, or vLLM "
                             "--enable-return-routed-experts)")

    def require_weights(self, what: str) -> None:
        """Raise TraceError (one line naming ``what``) unless the run holds real routing weights and logits."""
        self.require_tokens(what)
        if not self.has_weights:
            raise TraceError(f"{what} needs routing weights or router logits, but {self.path} holds expert ids only "
                             f"({self.source_label or 'no weights recorded'}): capture the model with "
                             "routelens capture --save-logits instead")

    def layer_index(self, layer: str | int) -> int:
        """Index ``j`` of a layer given by router module path or by index."""
        if isinstance(layer, (int, np.integer)):
            if not 0 <= int(layer) < len(self.layers):
                raise TraceError(f"layer index {layer} out of range: the trace has {len(self.layers)} MoE layers")
            return int(layer)
        try:
            return self.layers.index(layer)
        except ValueError:
            raise TraceError(f"layer '{layer}' is not in the trace (it has {len(self.layers)} MoE layers)") from None

    def fingerprint(self) -> str:
        """A short hash of the trace's content (used to tell whether an analysis or plan is current).

        Covers every manifest field but the run statistics and software versions (layers, E, k,
        model, capture settings, source, parent...) and each shard's name, token count and recorded
        ``sha256``, so a run copied elsewhere (``scp -r``, new modification times) keeps its
        fingerprint, while a re-capture of other text with the same sizes changes it. Shards written
        before routelens recorded hashes count by file size and modification time instead: such a
        run, once copied, is analysed once more (cheap, never wrong).
        """
        shards = []
        for shard, file in zip(self.shards, self._files):
            if "sha256" in shard:
                content = ["sha256", shard["sha256"], shard.get("size")]
            else:
                info = os.stat(file)
                content = ["stat", info.st_size, info.st_mtime_ns]
            shards.append([shard["file"], int(shard["num_tokens"]), content])
        key = {k: v for k, v in self.manifest.items() if k not in _VOLATILE_KEYS}
        key["shards"] = shards
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ per-token arrays
    @property
    def token_ids(self) -> np.ndarray:
        """``[T]`` int32 vocabulary ids."""
        return self._token_field("token_ids")

    @property
    def seq_ids(self) -> np.ndarray:
        """``[T]`` int32 window (sequence) index of each token."""
        return self._token_field("seq_ids")

    @property
    def positions(self) -> np.ndarray:
        """``[T]`` int32 position of each token inside its window."""
        return self._token_field("positions")

    @property
    def phase(self) -> np.ndarray | None:
        """``[T]`` int8 phase of each token (index into ``manifest["phases"]``), or None if not recorded."""
        if not self.manifest.get("phases"):
            return None
        phase = self._token_field("phase")
        if phase.size and int(phase.max()) >= len(self.phases):
            raise TraceError(f"trace {self.path}: phase code {int(phase.max())} names no entry of 'phases' {self.phases}")
        return phase

    @property
    def phases(self) -> list[str]:
        """Names of the phase codes (``["prefill", "decode", ...]``), empty when the trace has none."""
        return [str(p) for p in self.manifest.get("phases") or []]

    def expert_counts(self, layer: str | int) -> np.ndarray:
        """``[E]`` int64 tokens routed to each expert at ``layer`` (each token once per chosen expert).

        Works on every run: streams ``topk_ids`` shard by shard (dropped slots ``-1`` skipped), or sums
        a counts-only run's ``logical_count`` over its steps.
        """
        j = self.layer_index(layer)
        if self.counts_only:
            return self.step_counts()[:, j].sum(axis=0)
        counts = np.zeros(self.num_experts, dtype=np.int64)
        for _, ids in self.iter_chunks(j, "topk_ids"):
            flat = ids.reshape(-1).astype(np.int64)
            counts += np.bincount(flat[(flat >= 0) & (flat < self.num_experts)], minlength=self.num_experts)
        return counts

    def step_counts(self) -> np.ndarray:
        """``[steps, L, E]`` int64 expert counts of a counts-only run, per recorded step."""
        if not self.counts_only:
            raise TraceError(f"trace {self.path} holds per-token routing, not per-step counts")
        if self._counts is None:
            from safetensors import safe_open

            file = self.path / COUNTS_FILE
            try:
                with safe_open(str(file), framework="numpy") as fh:
                    counts = fh.get_tensor(COUNTS_KEY)
            except Exception as exc:
                raise TraceError(f"{file} is corrupt or unreadable: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
            if counts.ndim != 3 or counts.shape[1:] != (len(self.layers), self.num_experts) or (counts < 0).any():
                raise TraceError(f"{file} holds counts of shape {counts.shape}, expected [steps, {len(self.layers)}, "
                                 f"{self.num_experts}] of non-negative integers")
            self._counts = counts.astype(np.int64)
        return self._counts

    def _token_field(self, name: str) -> np.ndarray:
        self.require_tokens(f"reading '{name}'")
        if name not in self._token_cache:
            parts = [self._read(i, name) for i in range(len(self.shards))]
            self._token_cache[name] = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return self._token_cache[name]

    # ------------------------------------------------------------------ per-layer arrays
    def topk_ids(self, layer: str | int) -> np.ndarray:
        """``[T, k]`` int16 expert ids chosen at ``layer`` (one layer in memory at a time)."""
        return self._layer_field("topk_ids", layer)

    def topk_weights(self, layer: str | int) -> np.ndarray:
        """``[T, k]`` float16 routing weights at ``layer``."""
        return self._layer_field("topk_weights", layer)

    def router_logits(self, layer: str | int) -> np.ndarray:
        """``[T, E]`` float16 router logits at ``layer`` (needs a capture with ``--save-logits``)."""
        if not self.has_logits:
            raise TraceError(f"trace {self.path} has no router logits: capture with --save-logits")
        return self._layer_field("router_logits", layer)

    def iter_chunks(self, layer: str | int, field: str = "topk_ids") -> Iterator[tuple[int, np.ndarray]]:
        """Stream one layer's ``field`` shard by shard: yields ``(first_token_index, array)``.

        Memory stays bounded by one shard, for analyses over traces larger than RAM.
        """
        j = self.layer_index(layer)
        self.require_tokens(f"reading '{field}'")
        start = 0
        for i, shard in enumerate(self.shards):
            yield start, self._read(i, f"{field}.{j}")
            start += int(shard["num_tokens"])

    def iter_token_chunks(self, field: str = "token_ids") -> Iterator[tuple[int, np.ndarray]]:
        """Stream a per-token field (``token_ids``, ``seq_ids``, ``positions``) shard by shard, like :meth:`iter_chunks`."""
        if field not in TOKEN_FIELDS:
            raise TraceError(f"'{field}' is not a per-token field of a trace ({', '.join(TOKEN_FIELDS)})")
        self.require_tokens(f"reading '{field}'")
        start = 0
        for i, shard in enumerate(self.shards):
            yield start, self._read(i, field)
            start += int(shard["num_tokens"])

    def layer_range(self, layer: str | int, start: int, end: int, field: str = "topk_ids") -> np.ndarray:
        """Rows ``[start, end)`` of one layer's ``field``, reading only the shards that hold them.

        Every shard read is checked like any other read (:meth:`shard_array`).

        Returns:
            ``[end - start, width]`` (``k`` for ids and weights, ``E`` for logits).

        Raises:
            TraceError: a counts-only run, or a damaged shard among those read.
        """
        j = self.layer_index(layer)
        self.require_tokens(f"reading '{field}'")
        start, end = max(0, int(start)), min(int(end), self.num_tokens)
        parts, first = [], 0
        for i, shard in enumerate(self.shards):
            last = first + int(shard["num_tokens"])
            if last > start and first < end:
                array = self._read(i, f"{field}.{j}")
                lo, hi = max(start - first, 0), min(end, last) - first
                # a part of a shard is copied, so that the rest of the shard is freed
                parts.append(array if (lo, hi) == (0, array.shape[0]) else array[lo:hi].copy())
            first = last
            if first >= end:
                break
        if not parts:
            width = self.layer_experts[j] if field == "router_logits" else self.top_k
            return np.zeros((0, width), LAYER_FIELDS[field])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def check_layers(self, layers: Sequence[str | int] | None = None,
                     fields: Sequence[str] = ("topk_ids", "topk_weights")) -> None:
        """Read (and so check) ``fields`` of ``layers`` (default: all) shard by shard, keeping nothing.

        For work that reads the trace elsewhere (torchrun ranks) or late: a damaged shard then fails
        here, in one line, before any process starts.

        Raises:
            TraceError: the first damaged array, naming its layer and shard.
        """
        for layer in (self.layers if layers is None else layers):
            for field in fields:
                for _ in self.iter_chunks(layer, field):
                    pass

    def _layer_field(self, field: str, layer: str | int) -> np.ndarray:
        j = self.layer_index(layer)
        self.require_tokens(f"reading '{field}'")
        parts = [self._read(i, f"{field}.{j}") for i in range(len(self.shards))]
        if not parts:
            width = self.layer_experts[j] if field == "router_logits" else self.top_k
            return np.zeros((0, width), LAYER_FIELDS[field])
        return np.concatenate(parts)

    def shard_array(self, index: int, key: str) -> np.ndarray:
        """Tensor ``key`` (``token_ids``, ``topk_ids.3``...) of shard ``index``, checked like every read.

        Raises:
            TraceError: unreadable, wrong dtype or shape, ids outside ``[-1, E)``, NaN/inf weights.
        """
        return self._read(index, key)

    def _read(self, index: int, key: str) -> np.ndarray:
        """Tensor ``key`` of shard ``index``, checked (dtype, shape, id range) before anyone sees it."""
        from safetensors import safe_open

        shard = self.shards[index]
        dtype, shape, num_experts = expected_array(key, int(shard["num_tokens"]), self.top_k, self.layer_experts)
        field, _, j = key.partition(".")
        where = f"trace {self.path}: shard {shard['file']}" + (f", layer {j} ({self.layers[int(j)]})" if j else "")
        try:
            with safe_open(self._files[index], framework="numpy") as fh:
                array = fh.get_tensor(key)
        except FileNotFoundError:
            raise TraceError(f"trace {self.path} is missing shard {shard['file']}") from None
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise TraceError(f"{where}: corrupt or unreadable '{key}': {_first_line(exc)}") from None
        check_array(array, key, dtype, shape, num_experts, where)
        return array

    def __repr__(self) -> str:
        return (
            f"Trace({str(self.path)!r}, model={self.model_id!r}, layers={len(self.layers)}, "
            f"E={self.num_experts}, k={self.top_k}, tokens={self.num_tokens})"
        )


def as_trace(trace: "Trace | str | os.PathLike") -> Trace:
    """``trace`` itself, or the trace in that folder: per-layer jobs in worker processes get it by path.

    The caller opened (and checked) the trace, so a path is reopened as is, finished or not.
    """
    return trace if isinstance(trace, Trace) else Trace.open(trace, allow_incomplete=True)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``manifest.json`` of the run folder ``path`` (its shards are not touched).

    The manifest must be a regular file inside the folder (a link leading elsewhere is refused
    unread) and pass :func:`~routelens.trace_format.validate_manifest`.

    Raises:
        TraceError: no run folder or manifest there, unreadable or invalid JSON, a malformed field.
    """
    path = Path(path)
    if not path.is_dir():
        raise TraceError(f"no trace folder at {path}")
    manifest_path = regular_file_inside(os.path.realpath(path), MANIFEST, f"{path / MANIFEST}")
    if manifest_path is None:
        raise TraceError(f"{path} holds no {MANIFEST}: not a routelens trace (or the capture never wrote a shard)")
    try:
        manifest = read_json(manifest_path, what="trace manifest")
    except RoutelensError as exc:
        raise TraceError(str(exc).replace(manifest_path, str(path / MANIFEST))) from exc
    validate_manifest(manifest, str(path / MANIFEST))
    return manifest


def read_manifest_file(file: str | os.PathLike, what: str = "trace manifest") -> dict[str, Any]:
    """A manifest (or a torchrun part manifest) a writer is about to continue, validated.

    Raises:
        TraceError: unreadable, not JSON, or a malformed field (one line).
    """
    try:
        manifest = read_json(file, what=what)
    except RoutelensError as exc:
        raise TraceError(str(exc)) from exc
    validate_manifest(manifest, str(file))
    return manifest


@dataclass
class ResumeState:
    """Where a resumed capture stands: how many windows and tokens are already on disk."""

    num_sequences: int
    num_tokens: int
    num_shards: int


class TraceWriter:
    """Writes a trace folder shard by shard, keeping ``manifest.json`` consistent after each shard.

    ``header`` holds the manifest's metadata: ``model`` (id, family, architecture, config),
    ``layers``, ``num_experts``, ``top_k``, ``has_logits``, ``dtype``, ``settings`` (everything that
    must match for ``--resume``), ``source`` and optionally ``parent`` (for derived traces).

    With ``world_size > 1`` (``torchrun``) each rank writes its own shards and a part manifest
    ``parts/rank{r}.json``; rank 0 calls :func:`merge_rank_parts` once all ranks have finished.

    Callers hold the run folder's write lock (:func:`routelens.lock.run_lock`) while they write, as
    capture, re-routing and :func:`write_trace` do.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        header: dict[str, Any],
        resume: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.path = Path(path)
        self.rank = rank
        self.world_size = world_size
        self.header = dict(header)
        self._check_header()
        self._manifest_path = (
            self.path / MANIFEST if world_size == 1 else self.path / PARTS_DIR / PART_FILE.format(rank=rank)
        )
        existing = self._existing_manifest()
        if existing is not None:
            if not resume:
                raise TraceError(
                    f"output folder {self.path} already holds a run: pass --resume to continue it, or choose another --out"
                )
            if existing.get("settings") != self.header.get("settings") or existing.get("layers") != self.header["layers"]:
                raise TraceError(
                    f"cannot resume {self.path}: it was captured with different settings or model "
                    f"(was {_settings_summary(existing.get('settings'))}, now {_settings_summary(self.header.get('settings'))})"
                )
            self.shards = list(existing["shards"])
        else:
            self.shards = []
        self._stats: dict[str, Any] = dict(existing.get("stats", {})) if existing else {}

    def _check_header(self) -> None:
        for key in ("layers", "num_experts", "top_k", "model"):
            if key not in self.header:
                raise ValueError(f"trace header lacks '{key}'")

    def _existing_manifest(self) -> dict[str, Any] | None:
        if self._manifest_path.is_file():
            return read_manifest_file(self._manifest_path)
        if self.world_size > 1 and (self.path / MANIFEST).is_file():
            raise TraceError(f"output folder {self.path} already holds a single-process run; choose another --out")
        if self.path.is_dir() and any(p.name not in (SHARD_DIR, PARTS_DIR) and not is_lock_file(p.name)
                                      for p in self.path.iterdir()):
            raise TraceError(f"output folder {self.path} is not empty and holds no routelens trace; choose another --out")
        return None

    @property
    def resume_state(self) -> ResumeState:
        """Windows and tokens already recorded (0 for a new run)."""
        return ResumeState(
            num_sequences=int(sum(s.get("num_seqs", 0) for s in self.shards)),
            num_tokens=int(sum(s["num_tokens"] for s in self.shards)),
            num_shards=len(self.shards),
        )

    def write_shard(
        self,
        token_ids: np.ndarray,
        seq_ids: np.ndarray,
        positions: np.ndarray,
        topk_ids: Sequence[np.ndarray],
        topk_weights: Sequence[np.ndarray],
        router_logits: Sequence[np.ndarray] | None = None,
        num_seqs: int | None = None,
        phase: np.ndarray | None = None,
    ) -> None:
        """Write one shard atomically, then list it in the manifest.

        Args:
            token_ids, seq_ids, positions: ``[n]`` per-token arrays.
            topk_ids, topk_weights: one ``[n, k]`` array per MoE layer, in ``layers`` order.
            router_logits: one ``[n, E]`` array per layer, or None.
            num_seqs: windows this shard completes (for resume); defaults to the distinct seq_ids.
            phase: optional ``[n]`` phase code of each token (index into the header's ``phases``).
        """
        n = int(np.asarray(token_ids).shape[0])
        num_layers = len(self.header["layers"])
        if len(topk_ids) != num_layers or len(topk_weights) != num_layers:
            raise ValueError(f"expected {num_layers} layers of topk arrays, got {len(topk_ids)}/{len(topk_weights)}")
        tensors: dict[str, np.ndarray] = {
            "token_ids": np.ascontiguousarray(token_ids, dtype=np.int32),
            "seq_ids": np.ascontiguousarray(seq_ids, dtype=np.int32),
            "positions": np.ascontiguousarray(positions, dtype=np.int32),
        }
        if phase is not None:
            phase = np.asarray(phase)
            if phase.shape != (n,) or phase.min(initial=0) < 0 or phase.max(initial=0) >= len(self.header.get("phases") or []):
                raise ValueError(f"phase must be [{n}] codes into the header's phases {self.header.get('phases')}")
            tensors["phase"] = np.ascontiguousarray(phase, dtype=np.int8)
        for j in range(num_layers):
            ids = np.asarray(topk_ids[j])
            # stored as float16 (no copy when the caller already holds float16, as the capture does);
            # checked after the cast, so a weight beyond float16's range is refused like a NaN
            with np.errstate(over="ignore"):
                weights = np.ascontiguousarray(topk_weights[j], dtype=np.float16)
            if ids.shape != (n, self.header["top_k"]) or weights.shape != ids.shape:
                raise ValueError(f"layer {j}: topk arrays of shape {ids.shape}/{weights.shape}, expected ({n}, {self.header['top_k']})")
            if not all_finite(weights):
                raise TraceError(f"layer {self.header['layers'][j]}: routing weights contain NaN or inf")
            tensors[f"topk_ids.{j}"] = np.ascontiguousarray(ids, dtype=np.int16)
            tensors[f"topk_weights.{j}"] = weights
            if router_logits is not None:
                tensors[f"router_logits.{j}"] = np.ascontiguousarray(router_logits[j], dtype=np.float16)
        index = len(self.shards)
        rel = f"{SHARD_DIR}/r{self.rank}-{index:06d}.safetensors"
        atomic_write(self.path / rel, lambda tmp: _save_safetensors(tensors, tmp))
        digest, size = file_sha256(self.path / rel)  # read back from the page cache: ~1 GB/s, on the writer thread
        if num_seqs is None:
            num_seqs = int(np.unique(tensors["seq_ids"]).size)
        self.shards.append({"file": rel, "num_tokens": n, "num_seqs": int(num_seqs), "rank": self.rank,
                            "sha256": digest, "size": size})
        self._write_manifest(complete=False)

    def update_stats(self, **stats: Any) -> None:
        """Record run statistics (wall time, tokens/s...) in the manifest's ``stats``."""
        self._stats.update(stats)

    def close(self, complete: bool = True) -> Path:
        """Write the final manifest (``complete`` marks the run finished)."""
        self._write_manifest(complete=complete)
        return self.path

    def _write_manifest(self, complete: bool) -> None:
        manifest = {
            "complete": bool(complete),
            **self.header,
            "num_tokens": int(sum(s["num_tokens"] for s in self.shards)),
            "num_sequences": int(sum(s.get("num_seqs", 0) for s in self.shards)),
            "shards": self.shards,
            "stats": self._stats,
            "software": software_versions(),
        }
        TRACE.write(self._manifest_path, manifest)


def merge_rank_parts(path: str | os.PathLike, world_size: int) -> Path:
    """Merge the per-rank part manifests of a ``torchrun`` capture into ``manifest.json``.

    Shards are listed rank by rank; ``seq_ids`` stay global, so every token remains addressable.
    The merged run is complete only when every rank's part is.
    """
    path = Path(path)
    parts = []
    for rank in range(world_size):
        part_path = path / PARTS_DIR / PART_FILE.format(rank=rank)
        parts.append(read_manifest_file(part_path, what=f"rank {rank} part manifest"))
    first = parts[0]
    for rank, part in enumerate(parts[1:], start=1):
        if part.get("layers") != first.get("layers") or part.get("settings") != first.get("settings"):
            raise TraceError(f"rank {rank} captured with different settings than rank 0")
    merged = dict(first)
    merged["shards"] = [s for part in parts for s in part["shards"]]
    merged["num_tokens"] = int(sum(s["num_tokens"] for s in merged["shards"]))
    merged["num_sequences"] = int(sum(s.get("num_seqs", 0) for s in merged["shards"]))
    merged["complete"] = all(p.get("complete", False) for p in parts)
    merged["world_size"] = world_size
    stats = [p.get("stats") or {} for p in parts]
    wall = [s.get("wall_s") for s in stats]
    if all(w is not None for w in wall):
        merged["stats"] = dict(stats[0])
        merged["stats"]["wall_s"] = max(wall)
        # this session's tokens over this session's time (the ranks ran side by side)
        session_s = max(s.get("session_s", s["wall_s"]) for s in stats)
        session_tokens = sum(s.get("session_tokens", 0) for s in stats) if all("session_tokens" in s for s in stats) \
            else merged["num_tokens"]
        merged["stats"].update(session_s=session_s, session_tokens=session_tokens,
                               tokens_per_s=round(session_tokens / max(session_s, 1e-9), 1) if session_tokens else None)
    return TRACE.write(path / MANIFEST, merged)


def write_trace(
    path: str | os.PathLike,
    header: dict[str, Any],
    token_ids: np.ndarray,
    seq_ids: np.ndarray,
    positions: np.ndarray,
    topk_ids: Sequence[np.ndarray],
    topk_weights: Sequence[np.ndarray],
    router_logits: Sequence[np.ndarray] | None = None,
    shard_tokens: int = 65536,
    overwrite: bool = False,
) -> Trace:
    """Write a whole trace from in-memory arrays (e.g. a re-routed trace or a test fixture).

    Args:
        topk_ids, topk_weights: one ``[T, k]`` array per layer; router_logits: ``[T, E]`` per layer.
        shard_tokens: tokens per shard file.
        overwrite: replace an existing trace in ``path`` (its files are replaced shard by shard).
    """
    path = Path(path)
    with run_lock(path, "routelens write_trace"):
        if overwrite and (path / MANIFEST).exists():
            (path / MANIFEST).unlink()
        writer = TraceWriter(path, header)
        total = int(np.asarray(token_ids).shape[0])
        for start in range(0, max(total, 1), shard_tokens):
            end = min(start + shard_tokens, total)
            if end <= start and total > 0:
                break
            sl = slice(start, end)
            writer.write_shard(
                token_ids[sl],
                seq_ids[sl],
                positions[sl],
                [a[sl] for a in topk_ids],
                [a[sl] for a in topk_weights],
                None if router_logits is None else [a[sl] for a in router_logits],
            )
        writer.close(complete=True)
    return Trace.open(path)


def _save_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """``safetensors.numpy.save_file``, with its I/O failures raised as the ``OSError`` they are.

    safetensors wraps a full disk (ENOSPC) or a file-size limit (EFBIG) in its own exception type
    (``I/O error: No space left on device (os error 28)``); :func:`routelens.io.atomic_write` turns an
    ``OSError`` into one line and removes the half-written temporary file.
    """
    from safetensors.numpy import save_file

    try:
        save_file(tensors, path)
    except OSError:
        raise
    except Exception as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code:
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), path) from None
        raise RoutelensError(f"could not write {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _settings_summary(settings: Any) -> str:
    if not isinstance(settings, dict):
        return str(settings)
    keys = ("model", "seq_len", "save_logits", "text", "dataset", "dtype")
    return ", ".join(f"{k}={settings[k]}" for k in keys if k in settings) or json.dumps(settings)[:120]


def write_counts_run(path: str | os.PathLike, header: dict[str, Any], logical_count: np.ndarray) -> Trace:
    """Write a counts-only run: ``counts.safetensors`` (``logical_count``) and its manifest.

    Args:
        header: the manifest's metadata, as for :class:`TraceWriter` (``layers``, ``num_experts``,
            ``top_k``, ``model``, ``source``...).
        logical_count: ``[steps, L, E]`` non-negative integer tokens per expert per recorded step,
            ``L`` = ``len(header["layers"])`` in layer order.

    Returns:
        The opened :class:`Trace` (``counts_only`` is True).

    Raises:
        TraceError: the folder already holds something; ValueError: counts of the wrong shape.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    counts = np.asarray(logical_count)
    expected = (len(header["layers"]), int(header["num_experts"]))
    if counts.ndim != 3 or counts.shape[1:] != expected or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"logical_count must be [steps, {expected[0]}, {expected[1]}] non-negative integers, "
                         f"got {counts.dtype} {counts.shape}")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TraceError(f"output folder {path} is not empty; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    with run_lock(path, "routelens import"):
        counts_file = atomic_write(path / COUNTS_FILE,
                                   lambda tmp: save_file({COUNTS_KEY: np.ascontiguousarray(counts, np.int64)}, tmp))
        _write_counts_manifest(path, header, counts, file_sha256(counts_file)[0])
    return Trace.open(path)


def _write_counts_manifest(path: Path, header: dict[str, Any], counts: np.ndarray, sha256: str) -> None:
    top_k = max(int(header["top_k"]), 1)
    manifest = {
        "complete": True,
        **header,
        "routing": COUNTS_ROUTING,
        "has_logits": False,
        "has_weights": False,
        "num_steps": int(counts.shape[0]),
        "counts_sha256": sha256,  # the counts' content: part of the run's fingerprint
        # every token is counted once per chosen expert; the busiest layer's sum / k is the token count
        "num_tokens": int(counts.sum(axis=(0, 2)).max(initial=0) // top_k),
        "num_sequences": 0,
        "shards": [],
        "stats": {},
        "software": software_versions(),
    }
    TRACE.write(path / MANIFEST, manifest)
