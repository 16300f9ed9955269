"""vLLM's per-request routed experts (``--enable-return-routed-experts``) → routelens routing.

Read from vLLM 0.34.0: ``RoutedExpertsCapturer`` (``model_executor/layers/fused_moe/
routed_experts_capturer.py``) records, for every token the model ran, the *logical* experts chosen at
every decoder layer (captured before the EPLB logical→physical map; ``[num_hidden_layers, top_k]``
per token, ``uint8`` when ``E <= 256`` else ``uint16``; rows of dense layers are never written and
stay 0). ``CompletionOutput.routed_experts`` is ``[num_tokens - 1 - start, layers, top_k]``: the
prompt tokens from ``routed_experts_prompt_start`` (sampling parameter, default 0) and every output
token but the last, which was sampled and never run. The OpenAI server returns it per choice as
base64 ``.npy`` (``np.load(io.BytesIO(base64.b64decode(s)))``) next to ``prompt_token_ids`` and
``token_ids`` (ask with ``"return_token_ids": true``). Older releases (0.21) sent the prompt's rows
separately as ``prompt_routed_experts``; both layouts are read.

A collection is one of (one request per entry, in any order):

* ``.jsonl``: one JSON object per line, either a request ``{"prompt_token_ids": [...], "token_ids":
  [...], "routed_experts": "<base64 .npy>" or nested lists, "routed_experts_prompt_start": 0,
  "prompt_routed_experts": ...}`` (the last two optional) or a whole completions response (its
  ``choices`` are the requests);
* ``.npz``: arrays ``prompt_token_ids_<i>``, ``token_ids_<i>``, ``routed_experts_<i>`` (and optional
  ``routed_experts_prompt_start_<i>``, ``prompt_routed_experts_<i>``) for requests ``i = 0, 1, ...``;
* ``.pt``: a list of such dicts (tensors or lists), or ``{"requests": [...]}`` (read with
  ``torch.load(weights_only=True)``).

Each request becomes one window (positions from ``start``); prompt tokens get phase ``prefill``,
generated tokens ``decode``. vLLM does not return routing weights (``has_weights: false``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from .imported import DECODE, PREFILL, TokenRouting, as_int_array, load_torch_file
from .layout import ModelLayout

FORMAT_READ = "vllm 0.34.0 CompletionOutput.routed_experts"
FIELDS = ("prompt_token_ids", "token_ids", "routed_experts", "routed_experts_prompt_start", "prompt_routed_experts")


@dataclass
class VLLMImport:
    """Requests read from vLLM routed-experts collections: routing and what it cannot tell."""

    routing: TokenRouting
    num_requests: int = 0
    caveats: list[str] = field(default_factory=list)


def read_vllm_collections(paths: list[Path], layout: ModelLayout) -> VLLMImport:
    """Read routed-experts collections (``.jsonl`` / ``.npz`` / ``.pt``) of requests served by ``layout``'s model.

    Raises:
        InputError: an unreadable, truncated or hostile file, a request whose rows do not match its
            tokens, records of another model (layers, top-k, expert ids) — one line each.
    """
    if not paths:
        raise InputError("no vLLM routed-experts files given")
    routing = TokenRouting(len(layout.layers), layout.top_k)
    count = 0
    for path in paths:
        for where, request in _requests(path):
            tokens, positions, phase, ids = request_routing(request, where, layout)
            if tokens.size:
                routing.add(tokens, positions, phase, ids)
                count += 1
    caveats = ["routing weights are not recorded (vLLM returns expert ids only)",
               "the last output token of each request has no routing (it was sampled, never run through the model)"]
    return VLLMImport(routing=routing, num_requests=count, caveats=caveats)


def request_routing(request: dict[str, Any], where: str, layout: ModelLayout
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One request's ``(token_ids [n], positions [n], phase [n], ids [n, L, k])`` checked against ``layout``."""
    for key in ("prompt_token_ids", "routed_experts"):
        if request.get(key) is None:
            raise InputError(f"{where} lacks '{key}' (ask the server with \"return_token_ids\": true and start it with "
                             "--enable-return-routed-experts)")
    prompt = as_int_array(request["prompt_token_ids"], f"{where}: prompt_token_ids", ndim=1)
    output = request.get("token_ids")
    output = as_int_array([] if output is None else output, f"{where}: token_ids", ndim=1)
    start = request.get("routed_experts_prompt_start")
    start = int(as_int_array(0 if start is None else start, f"{where}: routed_experts_prompt_start", ndim=0))
    if not 0 <= start <= prompt.size:
        raise InputError(f"{where}: routed_experts_prompt_start {start} outside the prompt of {prompt.size} tokens")
    rows = _rows(request["routed_experts"], f"{where}: routed_experts", layout)
    if request.get("prompt_routed_experts") is not None:  # older split layout: prompt rows, then output rows
        prompt_rows = _rows(request["prompt_routed_experts"], f"{where}: prompt_routed_experts", layout)
        if prompt_rows.shape[0] not in (prompt.size - start, prompt.size):
            raise InputError(f"{where}: prompt_routed_experts has {prompt_rows.shape[0]} rows for a prompt of "
                             f"{prompt.size} tokens")
        prompt_rows = prompt_rows[prompt_rows.shape[0] - (prompt.size - start):]
        if rows.shape[0] not in (output.size, max(output.size - 1, 0)):
            raise InputError(f"{where}: routed_experts has {rows.shape[0]} rows for {output.size} output tokens")
        rows = np.concatenate([prompt_rows, rows])
    else:
        expected = prompt.size + output.size - 1 - start if output.size else prompt.size - start
        if rows.shape[0] != expected:
            raise InputError(f"{where}: routed_experts has {rows.shape[0]} rows; {prompt.size} prompt + {output.size} "
                             f"output tokens from position {start} give {expected} (a truncated record, or token ids "
                             "of another request?)")
    tokens = np.concatenate([prompt, output])
    n = rows.shape[0]
    positions = np.arange(start, start + n, dtype=np.int64)
    phase = np.where(positions < prompt.size, PREFILL, DECODE).astype(np.int8)
    return tokens[start:start + n], positions, phase, rows


def _rows(value: Any, where: str, layout: ModelLayout) -> np.ndarray:
    """``[n, L, k]`` logical ids at the model's MoE layers, from ``[n, D, k]`` rows of every decoder layer."""
    if isinstance(value, str):
        try:
            value = np.load(io.BytesIO(base64.b64decode(value, validate=True)), allow_pickle=False)
        except (binascii.Error, ValueError, OSError, EOFError) as exc:
            raise InputError(f"{where} is not base64-encoded .npy data: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    rows = as_int_array(value, where)
    if rows.size == 0 and rows.ndim < 3:
        rows = rows.reshape(0, layout.num_decoder_layers, layout.top_k)
    if rows.ndim != 3:
        raise InputError(f"{where} must be [tokens, layers, top_k], got shape {rows.shape}")
    if rows.shape[1] != layout.num_decoder_layers:
        raise InputError(f"{where} covers {rows.shape[1]} decoder layers, {layout.model_id} has "
                         f"{layout.num_decoder_layers} (records of another model?)")
    if rows.shape[2] != layout.top_k:
        raise InputError(f"{where} holds {rows.shape[2]} experts per token, {layout.model_id} chooses {layout.top_k}")
    moe = np.asarray(layout.layer_indices)
    dense = np.delete(rows, moe, axis=1)
    if dense.size and dense.any():
        raise InputError(f"{where}: experts at a decoder layer where {layout.model_id} has no MoE router "
                         "(records of another model?)")
    ids = rows[:, moe]
    if ids.size and (ids.min() < 0 or ids.max() >= layout.num_experts):
        raise InputError(f"{where}: expert ids {int(ids.min())}..{int(ids.max())} outside [0, {layout.num_experts}) "
                         "(records of another model?)")
    return ids


# ---------------------------------------------------------------------------- collection files
def _requests(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, request)`` for every request in a collection file."""
    if not path.is_file():
        raise InputError(f"vLLM routed-experts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_requests(path)
    elif suffix == ".npz":
        yield from _npz_requests(path)
    elif suffix == ".pt":
        data = load_torch_file(path, "vLLM routed-experts collection")
        items = data.get("requests") if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise InputError(f"{path} must hold a list of request dicts (or {{'requests': [...]}})")
        for i, item in enumerate(items):
            yield f"{path.name} request {i}", item
    else:
        raise InputError(f"{path}: a vLLM routed-experts collection is .jsonl, .npz or .pt, got '{path.suffix}'")


def _jsonl_requests(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number} is not JSON ({exc.msg}): a truncated file?") from None
        if not isinstance(item, dict):
            raise InputError(f"{path} line {number} is not a JSON object")
        if isinstance(item.get("choices"), list):  # a whole completions response
            for c, choice in enumerate(item["choices"]):
                if not isinstance(choice, dict):
                    raise InputError(f"{path} line {number} choice {c} is not an object")
                request = {**{k: item[k] for k in ("prompt_routed_experts", "prompt_token_ids") if k in item}, **choice}
                yield f"{path.name} line {number} choice {c}", request
        else:
            yield f"{path.name} line {number}", item


def _npz_requests(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable .npz file: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    requests: dict[int, dict[str, Any]] = {}
    with archive:
        for key in archive.files:
            name, _, index = key.rpartition("_")
            if name not in FIELDS or not index.isdigit():
                raise InputError(f"{path}: unexpected array '{key}' (expected <field>_<i> with field in "
                                 f"{', '.join(FIELDS)})")
            try:
                requests.setdefault(int(index), {})[name] = archive[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise InputError(f"{path}: array '{key}' is unreadable (a truncated file?)") from exc
    for i in sorted(requests):
        yield f"{path.name} request {i}", requests[i]
