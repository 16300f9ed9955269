"""Micro-benchmark of the runner's layout phase on one device: old path, fused path, plain PyTorch path.

One rank's layout work per MoE layer, as ``routelens.runner.layer.ep_moe_layer`` does it, without the
collectives (one device): from ``dest_gpu [n, k]`` to the send buffer (copies grouped by destination
GPU, their metadata, the host's split sizes), and from the returned partial results ``[C, H]`` back to
token order. Three implementations, timed in the same process, interleaved, on the same routes:

* ``old``: what the runner did before (``--layout-kernel reference``): ``nonzero`` of the hit mask,
  ``x[copy_token]``, an fp32 ``index_add_`` un-permute;
* ``fused``: the counting-sort layout with one host sync, the send-buffer gather and the un-permute,
  all as Triton kernels (``--layout-kernel triton``; CUDA only);
* ``torch``: the same fused algorithm in plain PyTorch ops (``--layout-kernel torch``: cumsum
  counting sort, ``index_select``, fp32 ``index_add_``), the reference the Triton kernels are checked
  against (and the path on CPU).

Every path's copies, metadata, split sizes and send buffer must equal the old path's bit for bit,
and the outputs must agree within fp32 summation order (relative error <= 1e-4; ``--check`` allows 3e-2
in bf16). The fused time is compared with the dispatch of the same bytes measured on 4 × H200
(docs/runner.md, "Measured on 4 × H200": the synthetic trace's ``contiguous`` rows); the goal is
``fused <= 0.5 × dispatch``.

    python benchmarks/bench_layout.py                               # GPU: H 4096/7168 x 8k/32k tokens
    python benchmarks/bench_layout.py --json out/layout.json
    python benchmarks/bench_layout.py --device cpu --hidden 256 --tokens 2048 --repeats 3   # CPU smoke

The routes are the synthetic trace's generator and parameters (128 experts, top-8, 16 planted groups,
90 % of choices in the token's group, Zipf 0.8; ``routelens.synthetic.synthetic_topk_ids``) on a
contiguous placement over ``--gpus`` ranks (32 experts per GPU for 4), as rank 0 of 4 sees them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dispatch algorithm bandwidth (GB/s per rank) measured on 4 × H200, NVLink, NCCL 2.28.9 (docs/runner.md,
# "Measured on 4 × H200", synth-bench, plan contiguous, column "dispatch GB/s"), keyed by the busiest rank's
# dispatch MiB per layer of that row ("MiB sent, busiest rank" / 6 layers). At H 4096 x 32k tokens per rank:
# 314 GB/s, i.e. about 2.3 ms per layer for ~690 MiB (the 13.8 ms of dispatch in 27.68 ms of a2a over 6
# layers; the demo trace's "where the time goes" line agrees: dispatch 9.3 ms over 4 layers).
MEASURED_DISPATCH = [  # (MiB per layer, GB/s, row)
    (517 / 6, 246.0, "H 2048, 8192 tokens/rank"),
    (2066 / 6, 309.0, "H 2048, 32768 tokens/rank"),
    (4132 / 6, 327.0, "H 2048, 65536 tokens/rank"),
    (1034 / 6, 294.0, "H 4096, 8192 tokens/rank"),
    (4131 / 6, 314.0, "H 4096, 32768 tokens/rank"),
    (8263 / 6, 335.0, "H 4096, 65536 tokens/rank"),
]
GOAL = 0.5  # the fused layout should cost at most half the dispatch of the same bytes
# outputs: the same fp32 sums, but CUDA's index_add_ (old and torch paths) adds in any order, so a sum can differ in
# its last bit and round to the neighbouring bf16 now and then; far under --check's tolerance (3e-2 in bf16)
OUTPUT_TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 7168], help="hidden sizes (default 4096 7168)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[32768, 8192],
                        help="tokens on the simulated rank (default 32768 8192)")
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=4, help="simulated ranks the destinations spread over")
    parser.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per path (median; default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dispatch-ms", type=float, default=None,
                        help="dispatch time of these bytes to compare with, for every size (default: the bytes "
                        "over the 4 x H200 dispatch bandwidth measured at the nearest size in docs/runner.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE")
    return parser.parse_args(argv)


def simulated_route(num_tokens: int, num_experts: int, top_k: int, num_gpus: int, seed: int, device):
    """``(topk_ids, topk_weights, dest_gpu)`` ``[n, k]`` of rank 0's tokens under a contiguous placement."""
    import numpy as np
    import torch

    from routelens.synthetic import synthetic_topk_ids

    ids = synthetic_topk_ids(num_tokens, num_experts, top_k, num_groups=16, in_group=0.9, skew=0.8,
                             seed=seed).astype(np.int64)
    weights = np.random.default_rng(seed).random((num_tokens, top_k)).astype(np.float32)
    dest = ids // (num_experts // num_gpus)
    return (torch.from_numpy(ids).to(device), torch.from_numpy(weights).to(device), torch.from_numpy(dest).to(device))


def dispatch_reference(bytes_remote: int, override_ms: float | None) -> tuple[float, str]:
    """The dispatch time (ms) to compare with and where it comes from."""
    if override_ms is not None:
        return override_ms, "--dispatch-ms"
    mib = bytes_remote / 2**20
    _, gbps, row = min(MEASURED_DISPATCH, key=lambda point: abs(point[0] - mib))
    return bytes_remote / (gbps * 1e9) * 1e3, (f"{bytes_remote / 1e6:.0f} MB at {gbps:.0f} GB/s: docs/runner.md "
                                              f"4 x H200 table, synth-bench contiguous, {row}")


class Clock:
    """CUDA events on a GPU (one sync per reading), ``perf_counter`` on CPU."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"

    def start(self):
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start) -> float:
        import torch

        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        return (time.perf_counter() - start) * 1e3


KERNEL_OF_PATH = {"old": "reference", "torch": "torch", "fused": "triton"}  # --layout-kernel of each path


def run_path(name: str, route, x, back, num_gpus: int, clock: Clock):
    """One layer's layout by path ``name``; returns ``(layout, send, out, forward_ms, unpermute_ms)``.

    ``forward``: from the routes to the send buffer (copies, metadata, split sizes on the host);
    ``unpermute``: from the returned rows ``back[:C]`` to ``[n, H]`` in token order.
    """
    from routelens.runner.layout import build_layout, send_buffer, unpermute

    kernel = KERNEL_OF_PATH[name]
    exchange = lambda counts: counts.flip(0)  # stands in for the count exchange (a device op, as NCCL's is)
    t0 = clock.start()
    layout = build_layout(*route, num_gpus, exchange, kernel)
    send = send_buffer(x, layout, kernel)
    forward_ms = clock.ms(t0)
    returned = back[: send.shape[0]]
    t1 = clock.start()
    out = unpermute(returned, layout, x.dtype, kernel)
    unpermute_ms = clock.ms(t1)
    return layout, send, out, forward_ms, unpermute_ms


def relative_error(a, b) -> float:
    import torch

    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def bench_size(hidden: int, tokens: int, args, device, dtype, paths: list[str]) -> dict:
    import torch

    route = simulated_route(tokens, args.experts, args.top_k, args.gpus, args.seed, device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(tokens, hidden, generator=gen, device=device).to(dtype)
    max_copies = tokens * args.gpus
    back = torch.randn(max_copies, hidden, generator=gen, device=device).to(dtype)  # the combine's returned rows
    clock = Clock(device)
    results = {name: {"forward_ms": [], "unpermute_ms": []} for name in paths}
    outputs = {}
    for it in range(args.warmup + args.repeats):
        for name in paths[it % len(paths):] + paths[: it % len(paths)]:  # interleaved, rotating order
            layout, send, out, fwd, unp = run_path(name, route, x, back, args.gpus, clock)
            if it == 0:
                outputs[name] = (layout, send, out)
            if it >= args.warmup:
                results[name]["forward_ms"].append(fwd)
                results[name]["unpermute_ms"].append(unp)
            del layout, send, out
    old_layout, old_send, old_out = outputs["old"]
    checks = {}
    for name in paths:
        layout, send, out = outputs[name]
        checks[name] = {
            "layout_equal": bool(layout.send_counts == old_layout.send_counts and torch.equal(layout.copy_token, old_layout.copy_token)
                                 and torch.equal(layout.token_copy, old_layout.token_copy) and torch.equal(layout.meta, old_layout.meta)),
            "send_buffer_equal": bool(torch.equal(send, old_send)),
            "output_relative_error_vs_old": relative_error(out, old_out),
            "output_elements_differing": float((out != old_out).float().mean()),
        }
        if "torch" in outputs:
            checks[name]["output_relative_error_vs_torch"] = relative_error(out, outputs["torch"][2])
    copies = len(old_layout.copy_token)
    remote_copies = copies - old_layout.send_counts[0]  # rank 0 keeps its own copies
    bytes_remote = remote_copies * hidden * x.element_size()
    dispatch_ms, dispatch_source = dispatch_reference(bytes_remote, args.dispatch_ms)
    entry = {"hidden": hidden, "tokens": tokens, "copies": copies, "copies_remote": remote_copies,
             "send_counts": old_layout.send_counts, "bytes_remote": bytes_remote,
             "dispatch_ms": dispatch_ms, "dispatch_source": dispatch_source, "paths": {}}
    for name in paths:
        fwd, unp = results[name]["forward_ms"], results[name]["unpermute_ms"]
        total = [a + b for a, b in zip(fwd, unp)]
        entry["paths"][name] = {"forward_ms": statistics.median(fwd), "unpermute_ms": statistics.median(unp),
                                "total_ms": statistics.median(total), "total_ms_spread": [min(total), max(total)],
                                "ratio_vs_dispatch": statistics.median(total) / dispatch_ms, **checks[name]}
    best = "fused" if "fused" in paths else "torch"
    entry["goal"] = {"path": best, "ratio_vs_dispatch": entry["paths"][best]["ratio_vs_dispatch"], "at_most": GOAL,
                     "met": entry["paths"][best]["ratio_vs_dispatch"] <= GOAL}
    entry["equal"] = all(c["layout_equal"] and c["send_buffer_equal"] and c["output_relative_error_vs_old"] <= OUTPUT_TOLERANCE
                         for c in checks.values())
    return entry


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from routelens.runner.layout import resolve_layout_kernel

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    paths = ["old", "torch"] + (["fused"] if resolve_layout_kernel("auto", device) == "triton" else [])
    software = {"torch": torch.__version__}
    if "fused" in paths:
        import triton

        software["triton"] = triton.__version__
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"layout phase on one {name} ({dtype}): {args.experts} experts, top-{args.top_k}, {args.gpus} simulated "
          f"ranks, median of {args.repeats}; paths {', '.join(paths)}")
    print(f"{'H':>5} {'tokens':>6} {'copies':>7} {'remote MB':>9} {'dispatch ms':>11}  {'path':<6} {'layout ms':>9} "
          f"{'unpermute':>9} {'total ms':>8} {'x dispatch':>10}  equal")
    entries = []
    for hidden in args.hidden:
        for tokens in args.tokens:
            entry = bench_size(hidden, tokens, args, device, dtype, paths)
            entries.append(entry)
            for path, p in entry["paths"].items():
                equal = p["layout_equal"] and p["send_buffer_equal"] and p["output_relative_error_vs_old"] <= OUTPUT_TOLERANCE
                print(f"{hidden:>5} {tokens:>6} {entry['copies']:>7} {entry['bytes_remote'] / 1e6:>9.0f} "
                      f"{entry['dispatch_ms']:>11.3f}  {path:<6} {p['forward_ms']:>9.3f} {p['unpermute_ms']:>9.3f} "
                      f"{p['total_ms']:>8.3f} {p['ratio_vs_dispatch']:>10.2f}  {equal}", flush=True)
            goal = entry["goal"]
            print(f"{'':>42}goal: {goal['path']} {goal['ratio_vs_dispatch']:.2f} x dispatch <= {GOAL}: "
                  f"{'met' if goal['met'] else 'NOT met'}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for e in entries:
        print(f"dispatch reference, H {e['hidden']} x {e['tokens']}: {e['dispatch_source']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": name, "dtype": str(dtype).replace("torch.", ""),
                                               "software": software, "experts": args.experts, "top_k": args.top_k,
                                               "gpus": args.gpus, "repeats": args.repeats, "goal": GOAL,
                                               "results": entries}, indent=2) + "\n")
    return 0 if all(e["equal"] for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
