"""Engine-format records built from a known routing, for the import tests (written here, from the layouts
documented in routelens.engines.sglang_dump / vllm_routed; no engine code is copied).

A *known routing* is a list of windows ``(token_ids [n], positions [n], phase, ids [n, L, k])`` with
logical expert ids at the model's MoE layers. The builders lay it out the way the engines record it:
decoder-layer rows (dense rows ``-1`` for SGLang, ``0`` for vLLM), physical slots through an EPLB map,
top-k padded to 8 with ``-1``, several ranks.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch

PREFILL, DECODE = 0, 1
SGLANG_EXTEND, SGLANG_DECODE = 1, 2


def random_ids(rng, n: int, num_layers: int, num_experts: int, top_k: int) -> np.ndarray:
    """``[n, L, k]`` distinct experts per (token, layer)."""
    return np.stack([np.stack([rng.choice(num_experts, top_k, replace=False) for _ in range(num_layers)])
                     for _ in range(n)]).reshape(n, num_layers, top_k).astype(np.int64)


def known_passes(rng, layout, num_passes: int, max_window: int = 5, vocab: int = 90):
    """A list of forward passes, each ``(phase, windows)``: prefill passes of whole windows, decode passes of
    one-token windows."""
    passes = []
    for i in range(num_passes):
        decode = i % 2 == 1
        windows = []
        for _ in range(int(rng.integers(1, 4))):
            n = 1 if decode else int(rng.integers(1, max_window + 1))
            start = int(rng.integers(0, 50)) if decode else 0
            windows.append((rng.integers(0, vocab, n), np.arange(start, start + n), DECODE if decode else PREFILL,
                            random_ids(rng, n, len(layout.layers), layout.num_experts, layout.top_k)))
        passes.append((DECODE if decode else PREFILL, windows))
    return passes


def eplb_map(rng, num_decoder_layers: int, num_experts: int, redundant: int) -> np.ndarray:
    """``[D, E + R]`` physical → logical map: every expert once, ``R`` random replicas, shuffled per layer."""
    rows = []
    for _ in range(num_decoder_layers):
        slots = np.r_[np.arange(num_experts), rng.integers(0, num_experts, redundant)]
        rows.append(rng.permutation(slots))
    return np.stack(rows).astype(np.int64)


def to_physical(rng, ids: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Logical ``ids`` → a physical slot holding each (a random replica, as SGLang's dispatch may pick)."""
    out = np.empty_like(ids)
    for index, expert in np.ndenumerate(ids):
        out[index] = rng.choice(np.flatnonzero(row == expert))
    return out


def sglang_record(rng, layout, mapping: np.ndarray, fpid: int, rank: int, phase: int, windows) -> dict:
    """One ``per_token`` record: SGLang's fields, ``topk_ids_of_layer [D, n, 8]`` of physical slots."""
    tokens = np.concatenate([w[0] for w in windows])
    positions = np.concatenate([w[1] for w in windows])
    ids = np.concatenate([w[3] for w in windows])               # [n, L, k]
    n = tokens.size
    topk = torch.full((layout.num_decoder_layers, n, 8), -1, dtype=torch.int32)
    for j, d in enumerate(layout.layer_indices):
        topk[d, :, : layout.top_k] = torch.from_numpy(to_physical(rng, ids[:, j], mapping[d]).astype(np.int32))
    decode = phase == DECODE
    return {"forward_pass_id": fpid, "rank": rank, "gatherer_key": "primary", "input_ids": tokens.tolist(),
            "positions": positions.tolist(), "extend_seq_lens": None if decode else [len(w[0]) for w in windows],
            "forward_mode": SGLANG_DECODE if decode else SGLANG_EXTEND, "topk_ids_of_layer": topk,
            "misc_objects": [], "global_physical_count": _physical_count(topk, mapping.shape[1])}


def _physical_count(topk: torch.Tensor, num_physical: int) -> torch.Tensor:
    out = torch.zeros((topk.shape[0], num_physical), dtype=torch.int32)
    for d in range(topk.shape[0]):
        flat = topk[d].reshape(-1)
        flat = flat[flat >= 0].long()
        out[d] = torch.bincount(flat, minlength=num_physical).int()
    return out


def write_sglang_per_token(folder: Path, rng, layout, passes, mapping: np.ndarray, ranks: int = 2,
                           layout_kind: str = "replicated", per_pass: bool = False) -> tuple[list[Path], list]:
    """Every rank's dump; returns ``(files, expected windows in import order)``.

    ``replicated``: every rank records every pass (tensor parallel). ``disjoint``: pass ``i`` of the list goes
    to rank ``i % ranks`` with forward-pass id ``i // ranks`` (DP attention: ranks run their own batches).
    """
    records = {r: [] for r in range(ranks)}
    expected = []
    for i, (phase, windows) in enumerate(passes):
        if layout_kind == "replicated":
            for r in range(ranks):
                # ranks may pick different replicas of an expert (each prefers its own GPU): same logical ids
                records[r].append(sglang_record(rng, layout, mapping, i, r, phase, windows))
            expected.append((i, 0, windows))
        else:
            r, fpid = i % ranks, i // ranks
            records[r].append(sglang_record(rng, layout, mapping, fpid, r, phase, windows))
            expected.append((fpid, r, windows))
    expected.sort(key=lambda item: (item[0], item[1]))
    files = []
    for r, recs in records.items():
        if per_pass:
            recs = [{k: v for k, v in rec.items() if k not in ("topk_ids_of_layer", "input_ids", "positions")}
                    for rec in recs]
        path = folder / f"expert_distribution_recorder_1700000000.0_{r}.pt"
        torch.save({"records": recs, "last_physical_to_logical_map": torch.from_numpy(mapping)}, path)
        files.append(path)
    return files, [w for _, _, windows in expected for w in windows]


def write_sglang_stat(path: Path, layout, counts: np.ndarray, rank: int = 0) -> Path:
    """A ``stat`` dump: ``logical_count [steps, D, E]`` with the MoE layers' ``[steps, L, E]`` counts at their rows."""
    full = np.zeros((counts.shape[0], layout.num_decoder_layers, layout.num_experts), dtype=np.int32)
    full[:, list(layout.layer_indices)] = counts
    torch.save({"rank": rank, "logical_count": torch.from_numpy(full), "average_utilization_rate_over_window": None},
               path)
    return path


def vllm_rows(layout, ids: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """``[n, D, k]`` rows as vLLM returns them: MoE layers' ids at their decoder rows, dense rows 0."""
    rows = np.zeros((ids.shape[0], layout.num_decoder_layers, layout.top_k), dtype=dtype)
    rows[:, list(layout.layer_indices)] = ids
    return rows


def vllm_request(rng, layout, prompt_len: int, output_len: int, start: int = 0, vocab: int = 90):
    """``(request dict, expected window)``: vLLM 0.34 layout, rows for tokens [start, prompt + output - 1)."""
    prompt = rng.integers(0, vocab, prompt_len)
    output = rng.integers(0, vocab, output_len)
    n = prompt_len + output_len - 1 - start if output_len else prompt_len - start
    ids = random_ids(rng, n, len(layout.layers), layout.num_experts, layout.top_k)
    positions = np.arange(start, start + n)
    tokens = np.r_[prompt, output][start:start + n]
    phase = np.where(positions < prompt_len, PREFILL, DECODE)
    request = {"prompt_token_ids": prompt.tolist(), "token_ids": output.tolist(), "routed_experts": vllm_rows(layout, ids)}
    if start:
        request["routed_experts_prompt_start"] = start
    return request, (tokens, positions, phase, ids)


def b64_npy(array: np.ndarray) -> str:
    """base64 of ``np.save`` bytes: what vLLM's OpenAI server puts in ``routed_experts``."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_jsonl(path: Path, requests: list[dict], encode: str = "base64") -> Path:
    lines = []
    for request in requests:
        item = dict(request)
        rows = np.asarray(item["routed_experts"])
        item["routed_experts"] = b64_npy(rows) if encode == "base64" else rows.tolist()
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npz(path: Path, requests: list[dict]) -> Path:
    arrays = {}
    for i, request in enumerate(requests):
        for key, value in request.items():
            arrays[f"{key}_{i}"] = np.asarray(value)
    np.savez(path, **arrays)
    return path


def write_pt(path: Path, requests: list[dict]) -> Path:
    torch.save({"requests": [{k: torch.as_tensor(np.asarray(v).astype(np.int64)) for k, v in r.items()}
                             for r in requests]}, path)
    return path
