"""Benchmark: the whole co-activation analysis of 1M tokens × 48 layers × top-8 × 128 experts.

Routing comes from ``routelens.synthetic`` (planted co-activation groups, Zipf-skewed load): a pool
of blocks is generated once in worker processes (not timed), and each layer is fed to the analysis
chunk by chunk, exactly as ``analyze_trace`` streams shards: ``LayerAccumulator.add`` per chunk (co-activation,
load, weight mass, transitions to the next layer, per-expert token counts), then ``finish_layer``
(scores, roles, Louvain communities, summary). Feeding (relabelling a pool block) is not timed.

The baseline, measured in the same run on the first ``--baseline-layers`` layers, is the plain
numpy one-hot matmul ``C += onehot.T @ onehot`` (float32, chunked); it is compared with
``routelens.graphs.coactivation_counts`` on the same chunks, and both results must be equal.

Usage::

    .venv/bin/python benchmarks/bench_graphs.py                      # 1M × 48 × k=8 × E=128
    .venv/bin/python benchmarks/bench_graphs.py --tokens 262144 --layers 8  # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from routelens.graphs import coactivation_counts  # noqa: E402
from routelens.graphs.layer import LayerAccumulator, finish_layer  # noqa: E402
from routelens.synthetic import synthetic_topk_ids  # noqa: E402

VOCAB = 50_000
MAX_VOCAB = 4096


def make_block(args: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pool block: ``(ids [n, k] int16, weights [n, k] float16, token_ids [n] int32)``."""
    n, e, k, seed = args
    ids = synthetic_topk_ids(n, e, k, num_groups=max(2, e // 8), seed=seed)
    rng = np.random.default_rng(seed + 10_000)
    w = -np.sort(-(rng.random((n, k), dtype=np.float32) + 0.05), axis=1)
    w /= w.sum(axis=1, keepdims=True)
    zipf = rng.zipf(1.2, size=n) % VOCAB
    return ids, w.astype(np.float16), zipf.astype(np.int32)


class Feeder:
    """Layer ``l``, chunk ``c`` = pool block ``(3l + c) mod P`` with experts relabelled per layer.

    The relabelling is ``ids XOR m_l`` (a permutation of ``[0, E)`` when ``E`` is a power of two;
    otherwise a gather through a random permutation), written into reusable buffers, so feeding
    costs little and allocates nothing.
    """

    def __init__(self, blocks, num_experts: int, num_layers: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.blocks = blocks
        self.xor = num_experts & (num_experts - 1) == 0
        self.masks = rng.integers(0, num_experts, size=num_layers).astype(np.int16)
        self.perms = [rng.permutation(num_experts).astype(np.int16) for _ in range(num_layers)]

    def block(self, layer: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.blocks[(3 * layer + c) % len(self.blocks)]

    def ids(self, layer: int, c: int, out: np.ndarray | None = None) -> np.ndarray:
        raw = self.block(layer, c)[0]
        if self.xor:
            return np.bitwise_xor(raw, self.masks[layer], out=out)
        return np.take(self.perms[layer], raw, out=out)


def onehot_baseline(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """The plain numpy way: one-hot float32 rows, ``onehot.T @ onehot`` (diagonal = load)."""
    onehot = np.zeros((ids.shape[0], num_experts), dtype=np.float32)
    np.put_along_axis(onehot, ids.astype(np.intp), 1.0, axis=1)
    return onehot.T @ onehot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1 << 20, help="tokens per layer (default 1,048,576)")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=131072, help="tokens per fed chunk (a shard)")
    parser.add_argument("--pool", type=int, default=8, help="distinct synthetic blocks in the pool")
    parser.add_argument("--baseline-layers", type=int, default=8, help="layers the one-hot baseline is timed on")
    args = parser.parse_args()
    e, k, n_layers, chunk = args.experts, args.top_k, args.layers, args.chunk
    n_chunks = -(-args.tokens // chunk)
    tokens = n_chunks * chunk

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        blocks = list(pool.map(make_block, [(chunk, e, k, s) for s in range(args.pool)]))
    gen_s = time.perf_counter() - t0
    feeder = Feeder(blocks, e, n_layers)
    all_tok = np.concatenate([feeder.block(0, c)[2] for c in range(n_chunks)])
    vocab, freq = np.unique(all_tok, return_counts=True)
    keep = np.sort(np.argsort(-freq, kind="stable")[:MAX_VOCAB])
    col_of_vocab = np.full(vocab.size, keep.size, dtype=np.int64)
    col_of_vocab[keep] = np.arange(keep.size)
    cols_per_block = [col_of_vocab[np.searchsorted(vocab, b[2])] for b in blocks]

    print(f"bench_graphs: {tokens:,} tokens x {n_layers} layers x top-{k} x {e} experts, chunks of {chunk:,} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__})")
    print(f"  load average at the start: {os.getloadavg()[0]:.1f} (other processes share these {os.cpu_count()} CPUs)")
    print(f"  synthetic pool: {args.pool} blocks generated in {gen_s:.1f} s (not timed)")

    # ---- whole analysis of each layer, as one analyze_trace job runs it (count, then finish) ----
    feed_s = 0.0
    results = []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t_start = time.process_time(), time.perf_counter()
    buffers = [[np.empty((chunk, k), np.int16) for _ in range(n_chunks)] for _ in range(2)]
    next_chunks = [feeder.ids(0, c, out=buffers[0][c]) for c in range(n_chunks)]
    for layer in range(n_layers):
        acc = LayerAccumulator(e)
        t = time.perf_counter()
        chunks = next_chunks
        spare = buffers[(layer + 1) % 2]
        next_chunks = [feeder.ids(layer + 1, c, out=spare[c]) for c in range(n_chunks)] if layer + 1 < n_layers else None
        feed_s += time.perf_counter() - t
        for c in range(n_chunks):
            _, w, _ = feeder.block(layer, c)
            cols = cols_per_block[(3 * layer + c) % len(blocks)]
            acc.add(chunks[c], topk_weights=w, next_ids=None if next_chunks is None else next_chunks[c],
                    token_cols=cols, num_token_cols=keep.size + 1, start=c * chunk, half=tokens // 2)
        results.append(finish_layer(acc.total(), top_k=k, vocab_ids=vocab[keep]))
    rows = [r.summary for r in results]
    whole = time.perf_counter() - t_start
    cpu = time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    user_s, sys_s = usage.ru_utime - usage0.ru_utime, usage.ru_stime - usage0.ru_stime
    faults = usage.ru_minflt - usage0.ru_minflt
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    threads = os.environ.get("ROUTELENS_NUM_THREADS", "default")
    print(f"  whole analysis ({threads} counting threads): {whole:.2f} s wall ({whole / n_layers * 1000:.0f} ms/layer; includes {feed_s:.2f} s of "
          f"feeding synthetic chunks), {cpu:.2f} s CPU ({user_s:.2f} user + {sys_s:.2f} system, {faults:,} page faults); goal <= 20 s: {'OK' if whole <= 20 else 'MISSED'}")
    print(f"  peak memory (max RSS of this process): {rss_mb:.0f} MB; goal <= 2048 MB: {'OK' if rss_mb <= 2048 else 'MISSED'}")
    r0 = rows[0]
    print(f"  layer 0: max/mean {r0['load_max_over_mean']:.2f}, gini {r0['load_gini']:.2f}, specialized "
          f"{r0['share_specialized']:.0%}, n_eff {r0['mean_effective_collaborators']:.1f}, "
          f"{r0['num_communities']} communities, Q {r0['modularity']:.2f}, next-layer top-k coverage "
          f"{r0['next_layer']['topk_coverage']:.2f}")

    # ---- co-activation kernel vs the one-hot matmul baseline, same chunks ----
    n_base = min(args.baseline_layers, n_layers)
    ours_s = base_s = ours_cpu = base_cpu = 0.0
    for layer in range(n_base):
        ours = np.zeros((e, e), np.int64)
        base = np.zeros((e, e), np.float64)
        for c in range(n_chunks):
            ids = feeder.ids(layer, c)
            t, u = time.perf_counter(), time.process_time()
            ours += coactivation_counts(ids, e)
            ours_s, ours_cpu = ours_s + time.perf_counter() - t, ours_cpu + time.process_time() - u
            t, u = time.perf_counter(), time.process_time()
            base += onehot_baseline(ids, e)
            base_s, base_cpu = base_s + time.perf_counter() - t, base_cpu + time.process_time() - u
        if not np.array_equal(ours, base.astype(np.int64)):
            print("  ERROR: coactivation_counts differs from the one-hot baseline", file=sys.stderr)
            return 1
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"  co-activation on {n_base} layers (one thread; baseline BLAS threads: {blas}): routelens "
          f"{ours_s / n_base * 1000:.0f} ms/layer wall, {ours_cpu / n_base * 1000:.0f} ms CPU; one-hot matmul baseline "
          f"{base_s / n_base * 1000:.0f} ms/layer wall, {base_cpu / n_base * 1000:.0f} ms CPU")
    print(f"  speed-up vs baseline: {base_s / ours_s:.1f}x wall, {base_cpu / ours_cpu:.1f}x CPU "
          f"(goal >= 5x: {'OK' if min(base_s / ours_s, base_cpu / ours_cpu) >= 5 else 'MISSED'}); results equal")
    load = os.getloadavg()[0]
    print(f"  load average at the end: {load:.1f} (other processes share these {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
