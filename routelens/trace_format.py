"""What a valid trace folder is: the manifest's fields, where shard files may live, what each array holds.

:class:`routelens.trace.Trace` calls these checks when it opens a run (the manifest, every shard path)
and on every array it reads (dtype, shape, expert ids), so a damaged or hostile run folder fails with
one :class:`~routelens.errors.TraceError` line naming the field, layer and shard, never with a
traceback, a silently wrong number or a read outside the run folder.

The rules:

* The manifest's fields have the types and ranges in :func:`validate_manifest`: ``layers`` a non-empty
  list of distinct strings, ``1 <= top_k <= num_experts <= 32768`` (ids are int16), ``shards`` a list
  of ``{"file": "shards/...", "num_tokens": n >= 0, ...}``, ``model`` an object; the optional objects
  (``settings``, ``stats``, ``source``, ``parent``) are objects when present, never null. Fields it
  does not know are left alone (importers and later versions add their own).
* A shard path is relative, has no ``..`` and starts with ``shards/``; symbolic links on the way are
  followed only while they stay inside the run folder (:func:`resolve_inside`). Nothing outside
  the run folder is stat-ed, opened or read, and only regular files are opened (a FIFO would block).
* Each array has the dtype and shape of :data:`TOKEN_FIELDS` / :data:`LAYER_FIELDS` for the shard's
  ``n`` tokens; expert ids lie in ``[-1, E)`` with ``E`` the layer's expert count (``-1`` marks a
  dropped slot: Switch's capacity, re-routing's capacity policies); routing weights are finite.
"""

from __future__ import annotations

import math
import os
import re
import stat
from typing import Any

import numpy as np

from .errors import TraceError
from .formats import SHARD_DIR, TRACE

FORMAT_NAME = TRACE.name
FORMAT_VERSION = TRACE.version
MANIFEST = TRACE.file

TOKEN_FIELDS = {"token_ids": np.int32, "seq_ids": np.int32, "positions": np.int32}
OPTIONAL_TOKEN_FIELDS = {"phase": np.int8}  # engine imports: index into manifest["phases"] (prefill, decode...)
COUNTS_ROUTING = "counts"  # manifest["routing"] of a counts-only run (SGLang stat records): no per-token shards
COUNTS_FILE = "counts.safetensors"  # its [steps, layers, E] counts, beside the manifest
COUNTS_KEY = "logical_count"
LAYER_FIELDS = {"topk_ids": np.int16, "topk_weights": np.float16, "router_logits": np.float16}
MAX_EXPERTS = 32768  # expert ids are stored as int16
DROPPED = -1  # an expert slot left empty (token dropped by a capacity limit)

_F16_EXPONENT = np.uint16(0x7C00)  # all exponent bits set: a float16 NaN or inf (integer test: 10x np.isfinite)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_SYMLINKS = 40  # as the kernel's ELOOP limit


# ---------------------------------------------------------------------------- manifest
def validate_manifest(manifest: Any, where: str) -> None:
    """Check every manifest field routelens reads: types, ranges and agreement between fields.

    Args:
        manifest: the parsed ``manifest.json``.
        where: how messages name the manifest (its path).

    Raises:
        TraceError: the first problem, as one line naming the field.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise TraceError(f"{where} is not a routelens trace manifest")
    version = manifest.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise TraceError(f"{where} has format version {version!r}; this routelens reads version {FORMAT_VERSION} "
                         "(re-capture it with this version)")
    for key in ("layers", "num_experts", "top_k", "shards", "model"):
        if key not in manifest:
            raise TraceError(f"{where} lacks '{key}'")
    layers = manifest["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(x, str) and x for x in layers):
        raise TraceError(f"{where}: 'layers' must be a non-empty list of router module names, got {_show(layers)}")
    if len(set(layers)) != len(layers):
        twice = next(x for x in layers if layers.count(x) > 1)
        raise TraceError(f"{where}: 'layers' names {twice!r} twice")
    num_experts = _int(manifest, "num_experts", where, 1, MAX_EXPERTS)
    top_k = _int(manifest, "top_k", where, 1, num_experts)
    per_layer = manifest.get("num_experts_per_layer")
    if per_layer is not None:
        if not isinstance(per_layer, list) or len(per_layer) != len(layers):
            raise TraceError(f"{where}: 'num_experts_per_layer' must list one count per layer ({len(layers)}), "
                             f"got {_show(per_layer)}")
        for j, value in enumerate(per_layer):
            if not _is_int(value) or not top_k <= value <= num_experts:
                raise TraceError(f"{where}: 'num_experts_per_layer'[{j}] must be a whole number in "
                                 f"[top_k={top_k}, num_experts={num_experts}], got {_show(value)}")
    _validate_shards(manifest["shards"], where)
    _validate_optional(manifest, where, len(layers), num_experts, top_k)


def layer_expert_counts(manifest: dict[str, Any]) -> list[int]:
    """``E`` of each layer: ``num_experts_per_layer`` when the manifest has it, else ``num_experts`` for all."""
    per_layer = manifest.get("num_experts_per_layer")
    if per_layer is not None:
        return [int(e) for e in per_layer]
    return [int(manifest["num_experts"])] * len(manifest["layers"])


def _validate_shards(shards: Any, where: str) -> None:
    if not isinstance(shards, list):
        raise TraceError(f"{where}: 'shards' must be a list of shard entries, got {_show(shards)}")
    seen = set()
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise TraceError(f"{where}: shards[{i}] must be an object with 'file' and 'num_tokens', got {_show(shard)}")
        if "file" not in shard or "num_tokens" not in shard:
            raise TraceError(f"{where}: shards[{i}] lacks '{'file' if 'file' not in shard else 'num_tokens'}'")
        file = shard["file"]
        check_shard_name(file, f"{where}: shards[{i}]")
        if file in seen:
            raise TraceError(f"{where}: shard {file} is listed twice")
        seen.add(file)
        for key in ("num_tokens", "num_seqs", "rank", "size"):
            if key in shard and (not _is_int(shard[key]) or shard[key] < 0):
                raise TraceError(f"{where}: shards[{i}] ({file}) '{key}' must be a whole number >= 0, got {_show(shard[key])}")
        if "sha256" in shard and not (isinstance(shard["sha256"], str) and _SHA256.match(shard["sha256"])):
            raise TraceError(f"{where}: shards[{i}] ({file}) 'sha256' must be 64 lowercase hex digits, got {_show(shard['sha256'])}")


def check_shard_name(file: Any, where: str) -> None:
    """A shard path as the manifest spells it: ``shards/NAME``, relative, no ``..`` (checked on the text alone).

    Raises:
        TraceError: anything else (absolute, ``..``, outside ``shards/``, not a string).
    """
    if not isinstance(file, str) or not file or "\x00" in file:
        raise TraceError(f"{where}: shard 'file' must be a path like '{SHARD_DIR}/r0-000000.safetensors', got {_show(file)}")
    parts = file.split("/")
    if file.startswith("/") or ".." in parts or parts[0] != SHARD_DIR or len(parts) < 2 or any(p in ("", ".") for p in parts):
        raise TraceError(f"{where}: shard path {file!r} leaves the run's {SHARD_DIR}/ folder (absolute, '..' or "
                         f"elsewhere): refused without reading it")


def _validate_optional(manifest: dict[str, Any], where: str, num_layers: int, num_experts: int, top_k: int) -> None:
    """Fields a manifest may lack, but that must have the right type when present."""
    for key in ("complete", "has_logits", "has_weights"):
        if key in manifest and not isinstance(manifest[key], bool):
            raise TraceError(f"{where}: '{key}' must be true or false, got {_show(manifest[key])}")
    routing = manifest.get("routing", "tokens")
    if routing not in ("tokens", COUNTS_ROUTING):
        raise TraceError(f"{where}: 'routing' must be \"tokens\" or \"{COUNTS_ROUTING}\", got {_show(routing)}")
    phases = manifest.get("phases")
    if phases is not None and not (isinstance(phases, list) and len(phases) <= 127 and len(set(map(str, phases))) == len(phases)
                                   and all(isinstance(p, str) for p in phases)):
        raise TraceError(f"{where}: 'phases' must be a list of distinct names, got {_show(phases)}")
    for key in ("num_sequences", "world_size"):
        if key in manifest and (not _is_int(manifest[key]) or manifest[key] < (1 if key == "world_size" else 0)):
            raise TraceError(f"{where}: '{key}' must be a whole number, got {_show(manifest[key])}")
    if "num_tokens" in manifest and routing == COUNTS_ROUTING:
        if not _is_int(manifest["num_tokens"]) or manifest["num_tokens"] < 0:
            raise TraceError(f"{where}: 'num_tokens' must be a whole number, got {_show(manifest['num_tokens'])}")
    elif "num_tokens" in manifest:
        total = sum(int(s["num_tokens"]) for s in manifest["shards"])
        if not _is_int(manifest["num_tokens"]) or manifest["num_tokens"] != total:
            raise TraceError(f"{where}: 'num_tokens' is {_show(manifest['num_tokens'])} but its shards hold {total} tokens")
    if "dtype" in manifest and not isinstance(manifest["dtype"], (str, type(None))):
        raise TraceError(f"{where}: 'dtype' must be a string, got {_show(manifest['dtype'])}")
    for key in ("model", "settings", "stats", "source", "parent", "reroute"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise TraceError(f"{where}: '{key}' must be an object, got {_show(manifest[key])}")
    model = manifest["model"]
    _typed(model, where, "model", {"id": str, "family": str, "architecture": (str, type(None)), "config": dict})
    config = model.get("config") or {}
    for key in _CONFIG_NUMBERS:
        value = config.get(key)
        if value is not None and not (_is_number(value) and value >= 0):
            raise TraceError(f"{where}: model.config '{key}' must be a number >= 0, got {_show(value)}")
    _typed(manifest.get("stats") or {}, where, "stats", {"wall_s": _NUMBER, "tokens_per_s": _NUMBER,
                                                         "device": (str, type(None)), "sessions": int,
                                                         "session_s": _NUMBER, "session_tokens": int})
    _typed(manifest.get("settings") or {}, where, "settings", {"seq_len": (int, type(None)), "text": (str, type(None)),
                                                               "model": (str, type(None))})
    _typed(manifest.get("parent") or {}, where, "parent", {"path": str, "fingerprint": str})
    rules = manifest.get("routing_rules")
    if rules is not None:
        if not isinstance(rules, list) or len(rules) != num_layers:
            raise TraceError(f"{where}: 'routing_rules' must hold one rule per layer ({num_layers}), got {_show(rules)}")
        for j, rule in enumerate(rules):
            if isinstance(rule, dict):
                _typed(rule, where, f"routing_rules[{j}]", {"scoring": str, "num_experts": int, "top_k": int,
                                                            "norm_topk_prob": bool})
                if rule.get("top_k", top_k) != top_k or not 1 <= rule.get("num_experts", num_experts) <= num_experts:
                    raise TraceError(f"{where}: routing_rules[{j}] chooses top-{rule.get('top_k')} of "
                                     f"{rule.get('num_experts')} experts, the trace top-{top_k} of {num_experts}")
            elif rule is not None and not isinstance(rule, str):
                raise TraceError(f"{where}: routing_rules[{j}] must be an object, got {_show(rule)}")


# model.config numbers the cost model, placement and runner read (other keys are left alone)
_CONFIG_NUMBERS = ("hidden_size", "num_layers", "num_experts", "top_k", "num_shared_experts", "vocab_size",
                   "moe_intermediate_size", "intermediate_size", "num_attention_heads", "max_position_embeddings")
_NUMBER = "number"  # marker: int or float (not bool), finite, or null


def _typed(obj: dict[str, Any], where: str, name: str, fields: dict[str, Any]) -> None:
    for key, kind in fields.items():
        if key not in obj:
            continue
        value = obj[key]
        if kind == _NUMBER:
            ok = value is None or _is_number(value)
        elif kind is int or (isinstance(kind, tuple) and int in kind):
            ok = _is_int(value) or (isinstance(kind, tuple) and isinstance(value, kind) and not isinstance(value, bool))
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise TraceError(f"{where}: {name} '{key}' has the wrong type: {_show(value)}")


def _int(manifest: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = manifest[key]
    if not _is_int(value) or not low <= value <= high:
        raise TraceError(f"{where}: '{key}' must be a whole number in [{low}, {high}], got {_show(value)}")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- paths
def resolve_inside(root: str, rel: str, where: str) -> str | None:
    """The real path of ``root/rel``, following symbolic links only while they stay inside ``root``.

    Each component is looked at (``lstat``, ``readlink``) only once it is known to lie inside
    ``root``; a link's target is checked as text before anything at that target is touched. So a
    path that leaves ``root`` is refused without any system call on the outside file.

    Args:
        root: the run folder's real path (``os.path.realpath``).
        rel: a relative path inside it (``manifest.json``, ``shards/r0-000000.safetensors``).
        where: how messages name ``rel``.

    Returns:
        The resolved path (inside ``root``, no symbolic links left), or None when it does not exist.

    Raises:
        TraceError: a link leads outside ``root``, a link loop, or a component cannot be read.
    """
    pending = _components(rel)[::-1]  # a stack: next component last
    current, links = root, 0
    while pending:
        part = pending.pop()
        if part == "..":
            if current == root:
                raise TraceError(f"{where} leaves the run folder {root}: refused without reading it")
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TraceError(f"cannot read {where} ({candidate}): {exc.strerror or exc}") from None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise TraceError(f"{where}: too many symbolic links (a loop?)")
            target = os.readlink(candidate)
            if os.path.isabs(target):
                target = os.path.normpath(target)
                if not _within(target, root):
                    raise TraceError(f"{where} is a link to {target}, outside the run folder {root}: refused without reading it")
                current = root
                target = os.path.relpath(target, root)
            pending.extend(_components(target)[::-1])
            continue
        if pending and not stat.S_ISDIR(info.st_mode):
            return None  # a file used as a folder: the path does not exist
        current = candidate
    return current


def regular_file_inside(root: str, rel: str, where: str) -> str | None:
    """:func:`resolve_inside`, then require a regular file (a FIFO or device would block or never end).

    Returns None when nothing is there.
    """
    resolved = resolve_inside(root, rel, where)
    if resolved is None:
        return None
    try:
        info = os.lstat(resolved)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise TraceError(f"{where} is not a regular file")
    return resolved


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ---------------------------------------------------------------------------- arrays
def expected_array(key: str, num_tokens: int, top_k: int, layer_experts: list[int]) -> tuple[Any, tuple[int, ...], int | None]:
    """What the tensor ``key`` of a shard of ``num_tokens`` tokens must be.

    Returns:
        ``(dtype, shape, num_experts)``: ``num_experts`` is the layer's ``E`` for ``topk_ids`` (ids
        must lie in ``[-1, E)``), else None.

    Raises:
        TraceError: ``key`` names no trace field or a layer the trace does not have.
    """
    if key in TOKEN_FIELDS:
        return TOKEN_FIELDS[key], (num_tokens,), None
    if key in OPTIONAL_TOKEN_FIELDS:
        return OPTIONAL_TOKEN_FIELDS[key], (num_tokens,), None
    field, _, index = key.partition(".")
    if field not in LAYER_FIELDS or not index.isdigit() or int(index) >= len(layer_experts):
        raise TraceError(f"no trace field {key!r}")
    e = layer_experts[int(index)]
    if field == "router_logits":
        return LAYER_FIELDS[field], (num_tokens, e), None
    return LAYER_FIELDS[field], (num_tokens, top_k), e if field == "topk_ids" else None


def all_finite(array: np.ndarray) -> bool:
    """No NaN or inf in ``array``; float16 is tested on its exponent bits (an integer pass, ~10x ``np.isfinite``).

    Args:
        array: any shape and dtype (strided views included).

    Returns:
        True when every element is finite (an empty array is).
    """
    array = np.asarray(array)
    if array.dtype != np.float16:
        return bool(np.isfinite(array).all())
    exponent = np.bitwise_and(np.ascontiguousarray(array).view(np.uint16), _F16_EXPONENT)  # all ones: inf or NaN
    return int(exponent.max(initial=0)) < int(_F16_EXPONENT)


def check_array(array: np.ndarray, key: str, dtype: Any, shape: tuple[int, ...], num_experts: int | None,
                where: str) -> None:
    """Check one array read from a shard (vectorised: one min/max pass over ids, one finiteness pass over weights).

    Args:
        array: what the shard holds for ``key``.
        dtype, shape, num_experts: from :func:`expected_array`.
        where: how messages name the shard and layer.

    Raises:
        TraceError: wrong dtype or shape, ids outside ``[-1, E)``, negative token fields, NaN/inf weights.
    """
    if array.dtype != np.dtype(dtype):
        raise TraceError(f"{where}: '{key}' has dtype {array.dtype}, a trace stores {np.dtype(dtype).name}")
    if tuple(array.shape) != shape:
        raise TraceError(f"{where}: '{key}' has shape {list(array.shape)}, expected {list(shape)}")
    if array.size == 0:
        return
    if num_experts is not None:
        low, high = int(array.min()), int(array.max())
        if low < DROPPED or high >= num_experts:
            bad = high if high >= num_experts else low
            raise TraceError(f"{where}: expert id {bad} outside [-1, {num_experts}) (the manifest says E={num_experts}: "
                             "a wrong num_experts, or a damaged shard)")
    elif key in TOKEN_FIELDS or key in OPTIONAL_TOKEN_FIELDS:
        if int(array.min()) < 0:
            raise TraceError(f"{where}: '{key}' holds negative values")
    elif key.startswith("topk_weights.") and not all_finite(array):
        raise TraceError(f"{where}: routing weights '{key}' hold NaN or inf")
