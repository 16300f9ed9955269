"""Re-routing trade-off and cost: every policy setting on the demo model and the test models.

    python benchmarks/bench_reroute.py                              # demo + test models, CPU
    python benchmarks/bench_reroute.py --models demo --windows 128 --json bench_reroute.json
    python benchmarks/bench_reroute.py --device cuda --models demo
    python benchmarks/bench_reroute.py --clock cpu --threads 1              # on a busy shared CPU machine

Two parts, each with its baseline measured in the same run:

1. **Trade-off** (per model). Held-out windows are split into calibration (C2R groups, the routelens
   plan for ``--gpus`` GPUs) and evaluation. Per policy setting: GPUs per token and the busiest GPU's
   receive volume under the plan (change vs the unconstrained model on the same plan, and GPUs per
   token vs the unconstrained model on the contiguous layout), max/mean expert load, perplexity
   change, and the forward time relative to the unconstrained forward (the hooks' overhead).
   Models: ``demo`` (data/demo-moe, trained: the only one whose perplexity means anything) and the
   random-init test models ``tiny-qwen3`` (softmax, renormalised), ``tiny-mixtral`` and
   ``tiny-deepseek-v3`` (sigmoid, selection bias, group limit) (their numbers exercise the code
   path, not quality).
2. **Policy kernels**: time of each policy on ``[N, E]`` logits against the model's own top-k rule
   (``RoutingRule.choose``) on the same logits.

Goals (demo model, 8 GPUs): the best setting within 1% perplexity visits >= 45% fewer GPUs per token
(than the unconstrained model on the contiguous layout); capacity-reroute reaches max/mean load
<= 1.25 within 1% perplexity. Imports neither streamlit nor plotly.
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

MODELS = ("demo", "tiny-qwen3", "tiny-mixtral", "tiny-deepseek-v3")


def build_test_model(name: str, folder: Path) -> Path:
    """A random-init checkpoint of one of the test families (16 experts, top-4, 2 layers)."""
    from transformers import DeepseekV3Config, MixtralConfig

    from routelens.capture.tiny import build_tiny_moe, tiny_qwen3_moe_config

    attention = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                     vocab_size=320, tie_word_embeddings=False)
    if name == "tiny-qwen3":
        config = tiny_qwen3_moe_config(hidden_size=64, num_layers=2, num_experts=16, top_k=4)
    elif name == "tiny-mixtral":
        config = MixtralConfig(**attention, num_hidden_layers=2, intermediate_size=64, num_local_experts=16,
                               num_experts_per_tok=4, head_dim=16)
    elif name == "tiny-deepseek-v3":
        config = DeepseekV3Config(**attention, num_hidden_layers=2, intermediate_size=128, moe_intermediate_size=32,
                                  n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
                                  first_k_dense_replace=0, n_group=4, topk_group=2, norm_topk_prob=True,
                                  routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=16, head_dim=8)
    else:
        raise ValueError(f"unknown test model {name}")
    path = build_tiny_moe(folder / name, config, router_std=0.5)
    if name == "tiny-deepseek-v3":  # a non-zero selection bias, so the bias path is exercised
        import torch
        from safetensors.torch import load_file, save_file

        weights = load_file(str(path / "model.safetensors"))
        generator = torch.Generator().manual_seed(0)
        for key in weights:
            if key.endswith("e_score_correction_bias"):
                weights[key] = 0.1 * torch.randn(weights[key].shape, generator=generator)
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def tradeoff(model_path: str, args, text_path: Path) -> dict:
    import torch

    from routelens.capture.adapters import find_router_sites
    from routelens.capture.engine import config_summary
    from routelens.capture.load import load_model
    from routelens.capture.text import file_source, pack_windows
    from routelens.reroute.evaluate import best_within, calibration_routing, evaluate_policies, split_windows
    from routelens.reroute.fitting import fit_plan
    from routelens.reroute.policy import FitData, fit_sweep
    from routelens.reroute.registry import PolicyContext, PolicySweep

    model, tokenizer = load_model(model_path, dtype=args.dtype, device=args.device)
    sites = find_router_sites(model).sites
    num_experts, top_k = sites[0].num_experts, sites[0].top_k
    windows = pack_windows(file_source(text_path), tokenizer, seq_len=args.seq_len,
                           max_tokens=args.windows * args.seq_len).token_ids
    calib, heldout = split_windows(windows, 0.25)
    calibration = calibration_routing(model, sites, calib, batch_size=args.batch_size)
    gpus = min(args.gpus, num_experts)
    plan = fit_plan(calibration, num_experts, gpus, config=config_summary(model.config))
    sweep = PolicySweep(values={"fill": tuple(args.gpu_fill.split(","))})
    policies = fit_sweep(sweep, PolicyContext(num_experts, top_k, plan.num_gpus, plan.slots_per_gpu),
                         FitData(plan=plan, calibration=calibration, num_experts=num_experts))
    with torch.inference_mode():
        rows = evaluate_policies(model, sites, heldout, policies, plan=plan, batch_size=args.batch_size,
                                 progress=not args.no_progress, clock=_clock(args))
    base_s = rows[0]["forward_s"]
    for row in rows:
        row["forward_ratio"] = row["forward_s"] / base_s if base_s else float("nan")
    best = best_within(rows, 0.01)
    capacity = [r for r in rows if r["policy"] == "capacity-reroute" and r.get("perplexity_change", 1) <= 0.01]
    best_balance = min(capacity, key=lambda r: r["load_max_over_mean"]) if capacity else None
    return {"model": model_path, "experts": num_experts, "top_k": top_k, "gpus": gpus, "plan": plan.method,
            "eval_tokens": rows[0]["eval_tokens"], "rows": rows,
            "best_within_1pct": best and best["label"], "best_balance_within_1pct": best_balance and best_balance["label"]}


def _clock(args):
    return time.process_time if args.clock == "cpu" else time.perf_counter


def print_tradeoff(name: str, result: dict) -> None:
    rows = result["rows"]
    base = rows[0]
    print(f"\n== {name}: {result['experts']} experts, top-{result['top_k']}, {result['gpus']} GPUs "
          f"({result['plan']} plan), {result['eval_tokens']:,} held-out tokens; unconstrained: "
          f"{base['gpus_per_token']:.2f} GPUs/token on the plan, {base.get('contiguous_gpus_per_token', 0):.2f} "
          f"contiguous, perplexity {base['perplexity']:.3f}")
    header = ("setting", "GPUs/token", "vs plan", "vs contig", "busiest recv", "vs plan", "max/mean", "ppl change",
              "fwd time")
    table = [header]
    for r in rows:
        table.append((
            r["label"], f"{r['gpus_per_token']:.2f}", f"{r.get('gpus_per_token_change', 0):+.1%}",
            f"{r.get('gpus_per_token_vs_contiguous', 0):+.1%}", f"{r['busiest_gpu_recv']:.2f}",
            f"{r.get('busiest_gpu_recv_change', 0):+.1%}", f"{r['load_max_over_mean']:.2f}",
            f"{r.get('perplexity_change', 0):+.2%}", f"{r['forward_ratio']:.2f}x",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(f"best within 1% perplexity (fewest GPUs/token): {result['best_within_1pct']}; "
          f"most balanced capacity-reroute within 1%: {result['best_balance_within_1pct']}")


def policy_kernels(args) -> list[dict]:
    """Time each policy on [N, E] logits vs the model's own rule on the same logits (CPU or --device)."""
    import numpy as np
    import torch

    from routelens.routing_rule import RoutingRule
    from routelens.plan import Plan
    from routelens.reroute import c2r_policy, capacity_policy, gpu_adaptive_policy, gpu_limited_policy

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = []
    for num_experts, top_k in ((64, 8), (128, 8)):
        gen = torch.Generator().manual_seed(0)
        logits = (torch.randn(args.kernel_tokens, num_experts, generator=gen) * 2
                  + torch.linspace(0, 2, num_experts)).to(device)
        rule = RoutingRule("softmax", num_experts, top_k, True)
        rng = np.random.default_rng(0)
        plan = Plan({"l": rng.permutation(num_experts).reshape(8, -1)}, num_experts)
        counts = rng.random((num_experts, num_experts))
        policies = [c2r_policy({"l": counts + counts.T}, num_experts // 4), gpu_limited_policy(plan, 3),
                    gpu_adaptive_policy(plan, 0.1), capacity_policy("capacity-drop", 1.25),
                    capacity_policy("capacity-reroute", 1.25)]

        timer = _clock(args)

        def clock(fn):
            fn()
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = timer()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(timer() - started)
            return statistics.median(times)

        base = clock(lambda: rule.choose(logits))
        for policy in policies:
            seconds = clock(lambda: policy.choose("l", logits, rule))
            results.append({"experts": num_experts, "top_k": top_k, "tokens": args.kernel_tokens,
                            "policy": policy.label(), "seconds": seconds, "baseline_s": base,
                            "ratio": seconds / base, "tokens_per_s": args.kernel_tokens / seconds})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--text", default=None, help="held-out text (default: data/corpus/heldout.txt)")
    parser.add_argument("--windows", type=int, default=64, help="windows per model (a quarter calibrates)")
    parser.add_argument("--test-windows", type=int, default=16, help="windows per random-init test model")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-fill", default="best,drop", help="GPU policies' fill modes to sweep (default best,drop)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"])
    parser.add_argument("--kernel-tokens", type=int, default=16384, help="tokens per policy-kernel call")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per kernel (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time (GPUs, quiet machines); cpu: this process's CPU time, steadier on "
                        "a shared CPU machine (use with --threads 1)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args(argv)

    import torch

    from routelens.capture.load import bundled_data_dir, demo_model_path
    from routelens.errors import RoutelensError

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"bench_reroute: unknown model(s) {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    text = Path(args.text) if args.text else bundled_data_dir() / "corpus" / "heldout.txt"
    report = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device or "default",
              "models": {}, "kernels": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-reroute-") as tmp:
            for name in names:
                started = time.perf_counter()
                if name == "demo":
                    path, windows = str(demo_model_path()), args.windows
                else:
                    path, windows = str(build_test_model(name, Path(tmp))), args.test_windows
                saved = args.windows
                args.windows = windows
                result = tradeoff(path, args, text)
                args.windows = saved
                result["wall_s"] = time.perf_counter() - started
                report["models"][name] = result
                print_tradeoff(name, result)
    except RoutelensError as exc:
        print(f"bench_reroute: {exc}", file=sys.stderr)
        return 2
    report["kernels"] = policy_kernels(args)
    print(f"\n== policy kernels ({args.kernel_tokens:,} tokens; ratio = policy / the model's own top-k rule)")
    for k in report["kernels"]:
        print(f"E={k['experts']:<4} k={k['top_k']}  {k['policy']:<26} {k['seconds'] * 1e3:8.2f} ms  "
              f"{k['ratio']:6.1f}x  {k['tokens_per_s'] / 1e6:6.2f} M tokens/s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
