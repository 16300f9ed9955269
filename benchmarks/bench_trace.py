"""What the trace's safety checks cost: checked reads vs raw safetensors reads, and shard hashing vs writing.

    python benchmarks/bench_trace.py                                  # 1M tokens x 8 layers, E=128, k=8
    python benchmarks/bench_trace.py --tokens 262144 --layers 4 --json bench_trace.json

Builds a synthetic trace in a temporary folder (uniform random ids: the checks do not depend on
the routing), then times, over the same shards and interleaved ``--repeats`` times:

* ``raw``: ``safe_open(...).get_tensor("topk_ids.j")`` for every shard and layer (no checks);
* ``checked``: ``Trace.iter_chunks(j)`` for every layer (dtype, shape, ids in [-1, E) per chunk);
* ``weights``: ``Trace.iter_chunks(j, "topk_weights")`` (adds the finiteness check);

and, for writing, ``TraceWriter.write_shard`` split into the safetensors write and the sha256 of
the written file. Times are process CPU time by default (``--clock cpu``; immune to other jobs on
a shared machine), medians over the repeats. ``raw`` copies from the page cache at memory speed, so
the ratio overstates what a user sees (reads from disk are slower); the goal is on the checks'
own throughput: at least 2 GB of ids per second (faster than the disks traces live on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import numpy as np  # noqa: E402


def build(folder: Path, tokens: int, layers: int, experts: int, top_k: int, shard_tokens: int, clock) -> dict:
    from routelens.io import file_sha256
    from routelens.trace import TraceWriter

    rng = np.random.default_rng(0)
    header = {"model": {"id": "synthetic", "family": "synthetic"}, "layers": [f"model.layers.{j}.mlp.gate" for j in range(layers)],
              "num_experts": experts, "top_k": top_k, "has_logits": False, "settings": {"bench": True}}
    writer = TraceWriter(folder, header)
    write_s = hash_s = 0.0
    for start in range(0, tokens, shard_tokens):
        n = min(shard_tokens, tokens - start)
        ids = [rng.integers(0, experts, size=(n, top_k), dtype=np.int16) for _ in range(layers)]
        weights = [np.full((n, top_k), 1.0 / top_k, np.float32) for _ in range(layers)]
        t0 = clock()
        writer.write_shard(np.zeros(n, np.int32), (np.arange(start, start + n) // 256).astype(np.int32),
                           (np.arange(start, start + n) % 256).astype(np.int32), ids, weights)
        t1 = clock()
        file_sha256(folder / writer.shards[-1]["file"])  # the part write_shard spends on the hash, timed alone
        hash_s += clock() - t1
        write_s += t1 - t0
    writer.close()
    size = sum(s["size"] for s in writer.shards)
    return {"write_s": write_s, "hash_s": hash_s, "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--shard-tokens", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    from safetensors import safe_open

    from routelens.trace import Trace

    with tempfile.TemporaryDirectory(prefix="routelens-bench-trace-") as tmp:
        run = Path(tmp) / "run"
        written = build(run, args.tokens, args.layers, args.experts, args.top_k, args.shard_tokens, clock)
        trace = Trace.open(run)
        files = [str(trace.shard_file(i)) for i in range(len(trace.shards))]

        def raw() -> None:
            for j in range(len(trace.layers)):
                for file in files:
                    with safe_open(file, framework="numpy") as fh:
                        fh.get_tensor(f"topk_ids.{j}")

        def checked(field: str = "topk_ids") -> None:
            for j in range(len(trace.layers)):
                for _ in trace.iter_chunks(j, field):
                    pass

        modes = {"raw": raw, "checked": checked, "weights": lambda: checked("topk_weights")}
        times: dict[str, list[float]] = {name: [] for name in modes}
        for fn in modes.values():
            fn()  # warm the page cache and imports
        for _ in range(args.repeats):
            for name, fn in modes.items():
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
    median = {name: statistics.median(v) for name, v in times.items()}
    ids_bytes = args.tokens * args.layers * args.top_k * 2
    result = {"tokens": args.tokens, "layers": args.layers, "experts": args.experts, "top_k": args.top_k,
              "shards": len(files), "trace_mib": round(written["bytes"] / 2**20, 1), "clock": args.clock,
              "read_s": {k: round(v, 4) for k, v in median.items()},
              "checked_over_raw": round(median["checked"] / median["raw"], 3),
              "check_gb_per_s": round(ids_bytes / max(median["checked"] - median["raw"], 1e-9) / 1e9, 2),
              "write_s": round(written["write_s"], 3), "hash_s": round(written["hash_s"], 3),
              "hash_share_of_write": round(written["hash_s"] / written["write_s"], 3)}
    print(f"trace   {args.tokens:,} tokens x {args.layers} layers, E={args.experts}, k={args.top_k}: "
          f"{result['shards']} shards, {result['trace_mib']} MiB ({args.clock} clock, median of {args.repeats})")
    print(f"read    ids raw {median['raw']:.3f} s, checked {median['checked']:.3f} s "
          f"({result['checked_over_raw']:.2f}x: the checks run at {result['check_gb_per_s']:.1f} GB/s); "
          f"weights checked {median['weights']:.3f} s")
    print(f"write   {written['write_s']:.3f} s for all shards, of which sha256 {written['hash_s']:.3f} s "
          f"({100 * result['hash_share_of_write']:.0f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
