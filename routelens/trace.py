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

``j`` indexes ``manifest["layers"]``, the router module paths in model order. Shards are written
atomically and listed in the manifest only once complete, so an interrupted run can resume without
losing or duplicating tokens. :class:`Trace` reads one layer at a time (``topk_ids(layer)``), never
all layers at once; :class:`TraceWriter` writes shards and keeps the manifest current.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import TraceError
from .io import atomic_write, atomic_write_json, read_json

FORMAT_NAME = "routelens-trace"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

TOKEN_FIELDS = ("token_ids", "seq_ids", "positions")
LAYER_FIELDS = {"topk_ids": np.int16, "topk_weights": np.float16, "router_logits": np.float16}


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

    Example:
        >>> trace = Trace.open("runs/demo")                       # doctest: +SKIP
        >>> ids = trace.topk_ids(trace.layers[0])                 # [T, k] int16  # doctest: +SKIP
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.layers: list[str] = list(manifest["layers"])
        self.num_experts: int = int(manifest["num_experts"])
        self.top_k: int = int(manifest["top_k"])
        self.shards: list[dict[str, Any]] = list(manifest["shards"])
        self.num_tokens: int = int(sum(s["num_tokens"] for s in self.shards))
        self._token_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, allow_incomplete: bool = False) -> "Trace":
        """Open the trace in ``path`` (a run folder), checking its format and shards.

        Raises:
            TraceError: no trace there, an unknown or older format version, a missing shard, or an
                incomplete run (unless ``allow_incomplete``).
        """
        path = Path(path)
        if not path.is_dir():
            raise TraceError(f"no trace folder at {path}")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise TraceError(f"{path} holds no {MANIFEST}: not a routelens trace (or the capture never wrote a shard)")
        try:
            manifest = read_json(manifest_path, what="trace manifest")
        except Exception as exc:
            raise TraceError(str(exc)) from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise TraceError(f"{manifest_path} is not a routelens trace manifest")
        version = manifest.get("version")
        if version != FORMAT_VERSION:
            raise TraceError(
                f"trace {path} has format version {version}; this routelens reads version {FORMAT_VERSION} "
                "(re-capture it with this version)"
            )
        for key in ("layers", "num_experts", "top_k", "shards"):
            if key not in manifest:
                raise TraceError(f"trace manifest {manifest_path} lacks '{key}'")
        if not manifest.get("complete", False) and not allow_incomplete:
            raise TraceError(f"trace {path} is incomplete (capture interrupted): finish it with --resume")
        for shard in manifest["shards"]:
            if not (path / shard["file"]).is_file():
                raise TraceError(f"trace {path} is missing shard {shard['file']}")
        return cls(path, manifest)

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
        """A short hash that changes whenever the trace's content changes (used to cache analyses).

        Covers the layers, shard list, capture settings (model, text and token hashes, window size),
        the run's statistics (a re-capture with the same settings has new timings) and every shard
        file's size and modification time, so a re-captured or re-routed run is never mistaken for
        the old one (a copied run may be analysed once more: cheap, and never wrong).
        """
        manifest = self.manifest
        sizes = {}
        for shard in self.shards:
            file = self.path / shard["file"] if isinstance(shard, dict) and "file" in shard else None
            sizes[str(shard.get("file") if isinstance(shard, dict) else shard)] = (
                (file.stat().st_size, file.stat().st_mtime_ns) if file is not None and file.exists() else None)
        key = json.dumps(
            {"layers": self.layers, "shards": self.shards, "E": self.num_experts, "k": self.top_k,
             "model": manifest.get("model"), "settings": manifest.get("settings"),
             "source": manifest.get("source"), "stats": manifest.get("stats"), "sizes": sizes},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

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

    def _token_field(self, name: str) -> np.ndarray:
        if name not in self._token_cache:
            parts = [self._read(shard, name) for shard in self.shards]
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
        start = 0
        for shard in self.shards:
            yield start, self._read(shard, f"{field}.{j}")
            start += int(shard["num_tokens"])

    def iter_token_chunks(self, field: str = "token_ids") -> Iterator[tuple[int, np.ndarray]]:
        """Stream a per-token field (``token_ids``, ``seq_ids``, ``positions``) shard by shard, like :meth:`iter_chunks`."""
        if field not in TOKEN_FIELDS:
            raise TraceError(f"'{field}' is not a per-token field of a trace ({', '.join(TOKEN_FIELDS)})")
        start = 0
        for shard in self.shards:
            yield start, self._read(shard, field)
            start += int(shard["num_tokens"])

    def layer_range(self, layer: str | int, start: int, end: int, field: str = "topk_ids") -> np.ndarray:
        """Rows ``[start, end)`` of one layer's ``field``, reading only the shards that hold them.

        Returns:
            ``[end - start, width]`` (``k`` for ids and weights, ``E`` for logits).
        """
        j = self.layer_index(layer)
        start, end = max(0, int(start)), min(int(end), self.num_tokens)
        parts, first = [], 0
        for shard in self.shards:
            last = first + int(shard["num_tokens"])
            if last > start and first < end:
                array = self._read(shard, f"{field}.{j}")
                lo, hi = max(start - first, 0), min(end, last) - first
                # a part of a shard is copied, so that the rest of the shard is freed
                parts.append(array if (lo, hi) == (0, array.shape[0]) else array[lo:hi].copy())
            first = last
            if first >= end:
                break
        if not parts:
            width = self.num_experts if field == "router_logits" else self.top_k
            return np.zeros((0, width), LAYER_FIELDS[field])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _layer_field(self, field: str, layer: str | int) -> np.ndarray:
        j = self.layer_index(layer)
        parts = [self._read(shard, f"{field}.{j}") for shard in self.shards]
        if not parts:
            width = self.num_experts if field == "router_logits" else self.top_k
            return np.zeros((0, width), LAYER_FIELDS[field])
        return np.concatenate(parts)

    def _read(self, shard: dict[str, Any], key: str) -> np.ndarray:
        from safetensors import safe_open

        file = self.path / shard["file"]
        try:
            with safe_open(str(file), framework="numpy") as fh:
                array = fh.get_tensor(key)
        except FileNotFoundError:
            raise TraceError(f"trace {self.path} is missing shard {shard['file']}") from None
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise TraceError(f"shard {file} is corrupt or unreadable ({key}): {str(exc).splitlines()[0]}") from exc
        if array.shape[0] != int(shard["num_tokens"]):
            raise TraceError(f"shard {file} holds {array.shape[0]} tokens for '{key}', manifest says {shard['num_tokens']}")
        return array

    def __repr__(self) -> str:
        return (
            f"Trace({str(self.path)!r}, model={self.model_id!r}, layers={len(self.layers)}, "
            f"E={self.num_experts}, k={self.top_k}, tokens={self.num_tokens})"
        )


def all_finite(array: np.ndarray) -> bool:
    """No NaN or inf in ``array``; for float16 read from the exponent bits (7x faster than ``np.isfinite``)."""
    array = np.asarray(array)
    if array.dtype != np.float16:
        return bool(np.isfinite(array).all())
    exponent = np.bitwise_and(np.ascontiguousarray(array).view(np.uint16), 0x7C00)  # all ones: inf or NaN
    return int(exponent.max(initial=0)) < 0x7C00


def as_trace(trace: "Trace | str | os.PathLike") -> Trace:
    """``trace`` itself, or the trace in that folder: per-layer jobs in worker processes get it by path.

    The caller opened (and checked) the trace, so a path is reopened as is, finished or not.
    """
    return trace if isinstance(trace, Trace) else Trace.open(trace, allow_incomplete=True)


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
            self.path / MANIFEST if world_size == 1 else self.path / "parts" / f"rank{rank}.json"
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
            return read_json(self._manifest_path, what="trace manifest")
        if self.world_size > 1 and (self.path / MANIFEST).is_file():
            raise TraceError(f"output folder {self.path} already holds a single-process run; choose another --out")
        if self.path.is_dir() and any(p.name not in (SHARD_DIR, "parts") for p in self.path.iterdir()):
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
    ) -> None:
        """Write one shard atomically, then list it in the manifest.

        Args:
            token_ids, seq_ids, positions: ``[n]`` per-token arrays.
            topk_ids, topk_weights: one ``[n, k]`` array per MoE layer, in ``layers`` order.
            router_logits: one ``[n, E]`` array per layer, or None.
            num_seqs: windows this shard completes (for resume); defaults to the distinct seq_ids.
        """
        from safetensors.numpy import save_file

        n = int(np.asarray(token_ids).shape[0])
        num_layers = len(self.header["layers"])
        if len(topk_ids) != num_layers or len(topk_weights) != num_layers:
            raise ValueError(f"expected {num_layers} layers of topk arrays, got {len(topk_ids)}/{len(topk_weights)}")
        tensors: dict[str, np.ndarray] = {
            "token_ids": np.ascontiguousarray(token_ids, dtype=np.int32),
            "seq_ids": np.ascontiguousarray(seq_ids, dtype=np.int32),
            "positions": np.ascontiguousarray(positions, dtype=np.int32),
        }
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
        atomic_write(self.path / rel, lambda tmp: save_file(tensors, tmp))
        if num_seqs is None:
            num_seqs = int(np.unique(tensors["seq_ids"]).size)
        self.shards.append({"file": rel, "num_tokens": n, "num_seqs": int(num_seqs), "rank": self.rank})
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
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "complete": bool(complete),
            **self.header,
            "num_tokens": int(sum(s["num_tokens"] for s in self.shards)),
            "num_sequences": int(sum(s.get("num_seqs", 0) for s in self.shards)),
            "shards": self.shards,
            "stats": self._stats,
            "software": software_versions(),
        }
        atomic_write_json(self._manifest_path, manifest)


def merge_rank_parts(path: str | os.PathLike, world_size: int) -> Path:
    """Merge the per-rank part manifests of a ``torchrun`` capture into ``manifest.json``.

    Shards are listed rank by rank; ``seq_ids`` stay global, so every token remains addressable.
    The merged run is complete only when every rank's part is.
    """
    path = Path(path)
    parts = []
    for rank in range(world_size):
        part_path = path / "parts" / f"rank{rank}.json"
        parts.append(read_json(part_path, what=f"rank {rank} part manifest"))
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
    wall = [p.get("stats", {}).get("wall_s") for p in parts]
    if all(w is not None for w in wall):
        merged["stats"] = dict(first.get("stats", {}))
        merged["stats"]["wall_s"] = max(wall)
        merged["stats"]["tokens_per_s"] = merged["num_tokens"] / max(max(wall), 1e-9)
    atomic_write_json(path / MANIFEST, merged)
    return path / MANIFEST


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


def _settings_summary(settings: Any) -> str:
    if not isinstance(settings, dict):
        return str(settings)
    keys = ("model", "seq_len", "save_logits", "text", "dataset", "dtype")
    return ", ".join(f"{k}={settings[k]}" for k in keys if k in settings) or json.dumps(settings)[:120]
