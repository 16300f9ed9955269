"""Capture overhead: hooked forward (record + device→host copy) vs the plain forward, same batches, same run.

    python benchmarks/bench_capture.py                         # data/demo-moe on CPU
    python benchmarks/bench_capture.py --device cuda --json bench_capture.json
    python benchmarks/bench_capture.py --model Qwen/Qwen3-30B-A3B --device cuda --dtype bfloat16
    python benchmarks/bench_capture.py --shape qwen3-30b-a3b --layers 8 --device cuda --batch-size 16

``--shape`` times a random-init model with a real model's layer shapes (no download; the demo's
tokenizer feeds it): the demo model is so small that a GPU forward is launch-bound, so its ratio
says little about the overhead on the models people capture.

Three modes over the same ``--batches`` batches of ``--batch-size`` windows:

* ``plain``: ``model(input_ids)`` only (the baseline);
* ``hooked``: what capture adds per batch: router hooks, per-layer concatenation, conversion and
  pinned non-blocking copies to the host, one sync per batch (``iter_batch_routing``);
* ``capture``: the whole ``capture()`` into a temporary folder (also headers, NaN checks, shard
  files written by the background thread).

Each mode is warmed up once, then the modes are timed in turn ``--repeats`` times (interleaved so
that clock or thermal drift hits all of them); the table shows medians and ratios to ``plain``.
On a shared CPU machine use ``--clock cpu --threads 1`` (process CPU time, immune to other jobs).
Goal: ``hooked / plain <= 1.03`` on a GPU. Imports neither streamlit nor plotly.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing


# Layer shapes of real checkpoints (from their config.json), for --shape.
SHAPES = {
    "qwen3-30b-a3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                          num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]),
    "olmoe-1b-7b": dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_attention_heads=16,
                        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8),
}


def shaped_model(shape: str, layers: int, device: str | None, dtype: str | None):
    """A random-init ``shape`` model of ``layers`` decoder layers, built directly on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, OlmoeConfig, Qwen3MoeConfig

    fields = dict(SHAPES[shape], num_hidden_layers=layers, max_position_embeddings=4096)
    config = (Qwen3MoeConfig if shape.startswith("qwen3") else OlmoeConfig)(**fields)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}.get(dtype or "", torch.bfloat16)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="hub id or checkpoint folder (default: data/demo-moe)")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES),
                        help="a random-init model with these layer shapes instead of --model")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the --shape model (default 8)")
    parser.add_argument("--text", default=None, help="text file (default: bundled corpus)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batches", type=int, default=6, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per mode (median reported)")
    parser.add_argument("--save-logits", action="store_true", help="also copy the [N, E] router logits")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time (GPUs, quiet machines); cpu: this process's CPU time, "
                        "steadier on a shared CPU machine (use with --threads 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from routelens.capture.adapters import find_router_sites
    from routelens.capture.engine import model_forward, model_input_device, capture, iter_batch_routing
    from routelens.capture.load import demo_model_path, load_model, model_reference
    from routelens.capture.text import pack_windows, resolve_source
    from routelens.errors import RoutelensError

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    try:
        name = args.model or str(demo_model_path())
        if args.shape:
            _, tokenizer = load_model(name, device="cpu")  # the demo's tokenizer feeds the shaped model
            model = shaped_model(args.shape, args.layers, args.device, args.dtype)
            name = f"random-init {args.shape} ({args.layers} layers)"
        else:
            model, tokenizer = load_model(name, dtype=args.dtype, device=args.device)
        routing = find_router_sites(model)
        num_windows = args.batches * args.batch_size
        windows = pack_windows(resolve_source(text=args.text), tokenizer, seq_len=args.seq_len,
                               max_tokens=num_windows * args.seq_len)
    except RoutelensError as exc:
        print(f"bench_capture: error: {exc}", file=sys.stderr)
        return 2
    indices = np.arange(windows.num_windows)
    device = model_input_device(model)
    forward = model_forward(model)
    tokens = windows.num_tokens

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def plain() -> None:
        with torch.inference_mode():
            for first in range(0, indices.size, args.batch_size):
                index = indices[first:first + args.batch_size]
                forward(torch.from_numpy(windows.token_ids[index].astype(np.int64)).to(device))
        sync()

    def hooked() -> None:
        for _ in iter_batch_routing(model, routing, windows, indices, args.batch_size, args.save_logits):
            pass
        sync()

    def full_capture() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            capture(model, tokenizer, windows, Path(tmp) / "run", routing=routing, model_id=model_reference(name),
                    batch_size=args.batch_size, save_logits=args.save_logits, progress=False)
        sync()

    modes = {"plain": plain, "hooked": hooked, "capture": full_capture}
    for run in modes.values():  # warm-up: kernels, allocator caches, pinned host blocks
        run()
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode, run in modes.items():
            start = clock()
            run()
            times[mode].append(clock() - start)

    base = statistics.median(times["plain"])
    rows = []
    for mode, samples in times.items():
        median = statistics.median(samples)
        rows.append({"mode": mode, "median_s": median, "min_s": min(samples), "tokens_per_s": tokens / median,
                     "ratio_vs_plain": median / base, "samples_s": samples})
    result = {
        "benchmark": "capture_overhead",
        "model": model_reference(name),
        "family": routing.family,
        "layers": len(routing.sites),
        "num_experts": routing.sites[0].num_experts,
        "top_k": routing.sites[0].top_k,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(model.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "tokens_per_pass": tokens,
        "repeats": args.repeats,
        "save_logits": args.save_logits,
        "torch": torch.__version__,
        "overhead_hooked": rows[1]["ratio_vs_plain"] - 1.0,
        "rows": rows,
    }
    print(f"capture overhead: {result['model']} ({result['family']}, {result['layers']} MoE layers, "
          f"E={result['num_experts']}, k={result['top_k']}) on {result['device']} {result['dtype']}, "
          f"{args.batches} batches x {args.batch_size} x {args.seq_len} tokens, median of {args.repeats}, "
          f"{args.clock} clock, {torch.get_num_threads()} threads")
    print(f"{'mode':<9} {'median s':>9} {'tokens/s':>11} {'vs plain':>9}")
    for row in rows:
        print(f"{row['mode']:<9} {row['median_s']:>9.4f} {row['tokens_per_s']:>11,.0f} {row['ratio_vs_plain']:>9.3f}")
    print(f"hooked overhead: {100 * result['overhead_hooked']:+.1f}% (goal on a GPU: <= +3%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
