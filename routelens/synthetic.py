"""Synthetic routing with known structure, for tests and benchmarks (never for results).

Real traces come from ``routelens capture``; these stand in where a test needs a known answer or a
benchmark needs a size no bundled model produces (1M tokens × 48 layers × 128 experts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def synthetic_topk_ids(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    num_groups: int = 8,
    in_group: float = 0.8,
    skew: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Draw ``[T, k]`` distinct expert ids per token with planted co-activation groups.

    Experts are split into ``num_groups`` contiguous-by-permutation groups; each token picks a group
    and draws each of its ``k`` experts from it with probability ``in_group`` (else from all experts).
    ``skew`` > 0 makes expert popularity Zipf-like, so load is imbalanced as in trained models.

    Returns:
        ``[T, k]`` int16 expert ids, distinct within each row.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_experts)
    groups = np.array_split(perm, num_groups)
    popularity = 1.0 / np.arange(1, num_experts + 1) ** skew
    popularity = popularity[rng.permutation(num_experts)]
    # Gumbel-top-k over log-scores gives k distinct experts per token without a Python loop.
    token_group = rng.integers(0, num_groups, size=num_tokens)
    member = np.zeros((num_groups, num_experts), dtype=bool)
    for g, members in enumerate(groups):
        member[g, members] = True
    group_share = in_group / np.array([len(g) for g in groups])[token_group]  # [T]
    base = np.log(popularity)[None, :] + np.where(
        member[token_group], np.log(group_share[:, None] + (1 - in_group) / num_experts), np.log((1 - in_group) / num_experts + 1e-12)
    )
    scores = base + rng.gumbel(size=(num_tokens, num_experts))
    top = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
    return top.astype(np.int16)


def synthetic_trace_arrays(
    num_tokens: int = 4096,
    num_layers: int = 4,
    num_experts: int = 16,
    top_k: int = 2,
    seq_len: int = 128,
    vocab_size: int = 1000,
    with_logits: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything ``routelens.trace.write_trace`` needs for a synthetic trace.

    Returns a dict with ``header`` and the arrays ``token_ids``, ``seq_ids``, ``positions``,
    ``topk_ids``, ``topk_weights`` (lists over layers) and ``router_logits`` (or None).
    """
    rng = np.random.default_rng(seed)
    layers = [f"model.layers.{i}.mlp.gate" for i in range(num_layers)]
    topk_ids, topk_weights, logits = [], [], []
    for i in range(num_layers):
        ids = synthetic_topk_ids(num_tokens, num_experts, top_k, num_groups=max(2, num_experts // 8), seed=seed * 1000 + i)
        w = rng.random((num_tokens, top_k)).astype(np.float32) + 0.1
        w = -np.sort(-w, axis=1)
        topk_ids.append(ids)
        topk_weights.append(w / w.sum(1, keepdims=True))
        if with_logits:
            lg = rng.normal(size=(num_tokens, num_experts)).astype(np.float32)
            np.put_along_axis(lg, ids.astype(np.int64), 4.0 + np.sort(rng.random((num_tokens, top_k)))[:, ::-1], axis=1)
            logits.append(lg)
    positions = np.arange(num_tokens) % seq_len
    header = {
        "model": {"id": "synthetic", "family": "synthetic", "architecture": "none",
                  "config": {"num_experts": num_experts, "top_k": top_k, "num_hidden_layers": num_layers,
                             "hidden_size": 64, "vocab_size": vocab_size}},
        "layers": layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "has_logits": with_logits,
        "dtype": "float32",
        "settings": {"model": "synthetic", "seed": seed, "seq_len": seq_len},
        "source": {"kind": "synthetic"},
    }
    return {
        "header": header,
        "token_ids": rng.integers(0, vocab_size, size=num_tokens).astype(np.int32),
        "seq_ids": (np.arange(num_tokens) // seq_len).astype(np.int32),
        "positions": positions.astype(np.int32),
        "topk_ids": topk_ids,
        "topk_weights": topk_weights,
        "router_logits": logits if with_logits else None,
    }


# ---------------------------------------------------------------------------- traces larger than memory
@dataclass(frozen=True)
class ScaleShape:
    """The routing shape of a large synthetic trace (written shard by shard by :func:`write_scale_trace`).

    Attributes:
        num_tokens, num_layers, num_experts, top_k: ``T``, MoE layers, ``E``, ``k``.
        num_groups: planted co-activation groups per layer (DeepSeek-V3's 8 expert groups, say).
        hidden_size: recorded in the model config (the cost model prices tokens at it).
        pool_tokens: distinct synthetic routing rows per layer; every token copies one at random.
        vocab_size, seq_len: token ids are Zipf-distributed below ``vocab_size``; windows of ``seq_len``.
    """

    num_tokens: int
    num_layers: int
    num_experts: int
    top_k: int
    num_groups: int = 8
    hidden_size: int = 4096
    pool_tokens: int = 65536
    vocab_size: int = 50_000
    seq_len: int = 4096


def write_scale_trace(path, shape: ScaleShape, seed: int = 0, shard_tokens: int = 65536,
                      workers: int | None = 1, model_id: str = "synthetic"):
    """Write a synthetic trace of ``shape`` without ever holding it in memory, on ``workers`` processes.

    Drawing ``k`` distinct experts per token with :func:`synthetic_topk_ids` costs ``T × E`` random
    numbers per layer, too slow for 10M tokens × 48 layers; instead each layer gets a pool of
    ``shape.pool_tokens`` such rows (and routing weights), and every token copies a random row of
    its layer's pool. Load skew, co-activation groups and the cost of analysing or placing the
    trace are those of the pool's distribution. Shards are written by ``workers`` processes, each a
    contiguous block of them (the part manifests of a ``torchrun`` capture, merged at the end).

    Returns:
        The opened :class:`~routelens.trace.Trace`.
    """
    from pathlib import Path

    from .lock import run_lock
    from .parallel import resolve_workers, run_jobs, shared_path
    from .trace import Trace, merge_rank_parts

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        from .errors import TraceError

        raise TraceError(f"output folder {path} is not empty; choose another")
    path.mkdir(parents=True, exist_ok=True)
    pools = run_jobs(_layer_pool, [(shape, seed, j) for j in range(shape.num_layers)], workers)
    pool_file = path / "parts" / "pools.npz"  # beside the part manifests, which the writers allow
    pool_file.parent.mkdir()
    np.savez(pool_file, ids=np.stack([p[0] for p in pools]), weights=np.stack([p[1] for p in pools]))
    del pools
    num_shards = -(-shape.num_tokens // shard_tokens)
    count = resolve_workers(workers, num_shards)
    bounds = np.linspace(0, num_shards, count + 1).astype(int)
    jobs = [(shared_path(path), shared_path(pool_file), shape, seed, rank, count, int(bounds[rank]) * shard_tokens,
             min(int(bounds[rank + 1]) * shard_tokens, shape.num_tokens), shard_tokens, model_id)
            for rank in range(count)]
    run_jobs(_write_part, jobs, count)
    pool_file.unlink()
    if count > 1:
        with run_lock(path, "routelens synthetic trace"):  # the writers have finished: rank 0's lock is free
            merge_rank_parts(path, count)
    else:  # one writer wrote manifest.json itself
        pool_file.parent.rmdir()
    return Trace.open(path)


def _layer_pool(job) -> tuple[np.ndarray, np.ndarray]:
    """``([P, k] int16 ids, [P, k] float16 weights)``: the routing rows layer ``j`` copies from."""
    shape, seed, j = job
    ids = synthetic_topk_ids(shape.pool_tokens, shape.num_experts, shape.top_k, num_groups=shape.num_groups,
                             seed=seed * 100_003 + j)
    rng = np.random.default_rng(seed * 100_003 + j + 50_000)
    weights = -np.sort(-(rng.random((shape.pool_tokens, shape.top_k), dtype=np.float32) + 0.05), axis=1)
    weights /= weights.sum(axis=1, keepdims=True)
    return ids, weights.astype(np.float16)


def _write_part(job) -> int:
    """Write tokens ``[first, last)`` as rank ``rank``'s shards (a job of :func:`write_scale_trace`).

    Each writer holds its rank's lock of the run folder (:func:`routelens.lock.run_lock`), as the
    ranks of a ``torchrun`` capture do.
    """
    from .lock import lock_name, run_lock

    path, pool_file, shape, seed, rank, world, first, last, shard_tokens, model_id = job
    with run_lock(path, "routelens synthetic trace", lock_name(rank)):
        return _write_part_locked(path, pool_file, shape, seed, rank, world, first, last, shard_tokens, model_id)


def _write_part_locked(path, pool_file, shape: ScaleShape, seed: int, rank: int, world: int, first: int, last: int,
                       shard_tokens: int, model_id: str) -> int:
    from .trace import TraceWriter

    with np.load(pool_file) as pools:
        pool_ids, pool_weights = pools["ids"], pools["weights"]
    header = scale_header(shape, seed, model_id)
    writer = TraceWriter(path, header, rank=rank, world_size=world)
    for start in range(first, last, shard_tokens):
        n = min(shard_tokens, last - start)
        rng = np.random.default_rng([seed, start])
        rows = rng.integers(0, shape.pool_tokens, size=(shape.num_layers, n))
        positions = np.arange(start, start + n)
        writer.write_shard(
            token_ids=(rng.zipf(1.2, size=n) % shape.vocab_size).astype(np.int32),
            seq_ids=(positions // shape.seq_len).astype(np.int32),
            positions=(positions % shape.seq_len).astype(np.int32),
            topk_ids=[pool_ids[j][rows[j]] for j in range(shape.num_layers)],
            topk_weights=[pool_weights[j][rows[j]] for j in range(shape.num_layers)],
            num_seqs=int(np.unique(positions // shape.seq_len).size),
        )
    writer.close(complete=True)
    return last - first


def scale_header(shape: ScaleShape, seed: int = 0, model_id: str = "synthetic") -> dict[str, Any]:
    """The manifest header of a :func:`write_scale_trace` trace."""
    return {
        "model": {"id": model_id, "family": "synthetic", "architecture": "none",
                  "config": {"num_experts": shape.num_experts, "top_k": shape.top_k,
                             "num_hidden_layers": shape.num_layers, "hidden_size": shape.hidden_size,
                             "vocab_size": shape.vocab_size}},
        "layers": [f"model.layers.{j}.mlp.gate" for j in range(shape.num_layers)],
        "num_experts": shape.num_experts,
        "top_k": shape.top_k,
        "has_logits": False,
        "dtype": "float16",
        "settings": {"model": model_id, "seed": seed, "seq_len": shape.seq_len, "num_tokens": shape.num_tokens,
                     "pool_tokens": shape.pool_tokens, "num_groups": shape.num_groups},
        "source": {"kind": "synthetic"},
    }
