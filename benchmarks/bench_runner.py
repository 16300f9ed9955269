"""Sweep the distributed runner over traces, plans, hidden sizes and tokens per rank, in one process group.

Launch with torchrun (one process per GPU), NVLink multicast off::

    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 2 benchmarks/bench_runner.py \\
        --case "runs/demo-heldout|contiguous,plans/demo-g2-routelens.json" \\
        --hidden 2048 4096 --tokens-per-rank 8192 32768 65536 --out out/bench

For every case × hidden size × tokens per rank it replays every MoE layer under every plan
(interleaved, median of ``--repeats``), with a plain even ``all_to_all_single`` of the same total
bytes measured alongside, and prints one table row per plan: the cost model's predicted All-to-All
ratio against the first plan, the measured ratio, bytes of the busiest rank, the dispatch's
algorithm bandwidth and that of the plain All-to-All. Everything goes to ``OUT/summary.json``.
On CPU (``--backend gloo``) the same script runs at tiny sizes.

The inputs of the measurements in docs/runner.md are made on a CPU machine first (mtkahypar there)::

    routelens capture --out runs/demo --max-tokens 65536                      # plans are fitted on this
    routelens capture --out runs/demo-heldout --text data/corpus/heldout.txt --max-tokens 65536   # replayed
    python benchmarks/bench_runner.py make-inputs --gpus 4                    # synth traces + plans
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True,
                        help="TRACE|PLAN,PLAN,... (first plan is the baseline); repeat for several traces")
    parser.add_argument("--hidden", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--tokens-per-rank", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--overlap-at", nargs="*", default=[], metavar="H:TOKENS",
                        help="sizes at which to also measure dispatch/shortcut overlap")
    parser.add_argument("--overlap-priorities", nargs="+", default=["default"], choices=("default", "high"),
                        help="NCCL stream priorities to measure the overlap configs with (each its own group)")
    parser.add_argument("--check-at", nargs="*", default=[], metavar="H:TOKENS",
                        help="sizes at which to also check outputs against the single-process reference")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--calibrate", action="store_true",
                        help="first fit the cost model's link latency/bandwidth from a plain all_to_all sweep, "
                             "and predict every config's time with it")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip the remaining configs after this long")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def bench_config(trace: str, plans: list[str], hidden: int, tokens: int, args, overlap: bool, check: bool):
    """The :class:`~routelens.runner.config.BenchConfig` of one sweep cell."""
    from routelens.runner.config import BenchConfig

    return BenchConfig(run=trace, plans=tuple(plans), hidden_size=hidden, tokens_per_rank=tokens,
                       repeats=args.repeats, warmup=args.warmup, overlap=overlap, check=check, progress=False)


def run_config(config, ctx, calibration=None):
    """One bench configuration; rank 0 returns its report."""
    import torch
    import torch.distributed as dist

    from routelens.runner.bench import run_environment
    from routelens.runner.calibration import load_calibration
    from routelens.runner.check import check_outputs
    from routelens.runner.inputs import prepare, rank_inputs
    from routelens.runner.replay import replay
    from routelens.runner.report import build_report

    setup = prepare(config, ctx.world)
    inputs = rank_inputs(setup, config, ctx.rank, ctx.world, ctx.device)
    record, outputs = replay(setup, inputs, config, ctx, keep_outputs=config.check)
    check = (check_outputs(setup, inputs.tokens, outputs, inputs.routes, ctx, model=config.model, seed=config.seed)
             if config.check else None)
    del outputs
    records = [None] * ctx.world if ctx.rank == 0 else None
    dist.gather_object(record, records, dst=0, group=ctx.group)
    report = None
    if ctx.rank == 0:
        report = build_report(setup, config, records, inputs.routes, run_environment(config, ctx, inputs.dtype),
                              calibration or load_calibration(config.out_dir, ctx.backend, ctx.world))
        if check is not None:
            report["check"] = check
    del inputs
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def row(case: str, report: dict) -> list[str]:
    rows = []
    for plan in report["plans"]:
        r = plan.get("ratio_vs_baseline", {})
        bw = plan.get("algbw_GBps", {})
        rows.append(
            f"{Path(case).name:<16} {report['hidden_size']:>5} {report['tokens_per_rank']:>6} {Path(plan['label']).stem[-30:]:<30} "
            f"{r.get('predicted_all_to_all', float('nan')):>6.3f} {r.get('measured_all_to_all', float('nan')):>6.3f} "
            f"{r.get('measured_dispatch', float('nan')):>6.3f} {max(plan['dispatch_bytes_sent']) / 2**20:>9.1f} "
            f"{plan['time_ms']['all_to_all']:>8.3f} {bw.get('dispatch', float('nan')):>7.1f} {bw.get('plain', float('nan')):>7.1f} "
            f"{plan.get('dispatch_bw_vs_plain', float('nan')):>5.2f} {str(plan['bytes_match_prediction']):>5}"
            + (f"  hidden {100 * plan['overlap']['comm_hidden_share']:.0f}% (comm {report.get('comm_priority')})"
               if "overlap" in plan else ""))
    return rows


HEADER = (f"{'trace':<16} {'H':>5} {'tok/rk':>6} {'plan':<30} {'pred x':>6} {'a2a x':>6} {'disp x':>6} "
          f"{'MiB max rk':>9} {'a2a ms':>8} {'GB/s':>7} {'plain':>7} {'vs pl':>5} {'bytes':>5}")


def make_inputs(argv) -> int:
    """Write the synthetic trace pair and the plans the sweep compares (CPU; uses routelens.placement)."""
    parser = argparse.ArgumentParser(prog="bench_runner.py make-inputs")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--seconds-per-layer", type=float, default=30.0, help="optimizer time budget per layer")
    parser.add_argument("--plans-dir", default="runs/gpu-plans")
    args = parser.parse_args(argv)
    import numpy as np

    from routelens.placement import baselines, cost, hypergraph, optimizer
    from routelens.placement.topology import Topology
    from routelens.plan import Plan
    from routelens.synthetic import synthetic_topk_ids
    from routelens.trace import Trace, write_trace

    if not Path("runs/synth-bench/manifest.json").is_file():
        # Qwen3-30B-A3B sizes (128 experts, top-8, hidden 2048, moe_intermediate 768), 6 MoE layers; routing
        # with planted co-activation groups of 8 experts (90% of choices inside the token's group), Zipf-skewed
        # load: a model with strongly specialised experts. First half fits the plans, second half is replayed.
        T, E, k, L = 131072, 128, 8, 6
        rng = np.random.default_rng(0)
        ids, weights = [], []
        for layer in range(L):
            ids.append(synthetic_topk_ids(T, E, k, num_groups=16, in_group=0.9, skew=0.8, seed=100 + layer))
            w = -np.sort(-(rng.random((T, k)).astype(np.float32) + 0.1), axis=1)
            weights.append(w / w.sum(1, keepdims=True))
        layers = [f"model.layers.{i}.mlp.gate" for i in range(L)]
        for name, part in (("synth-fit", slice(0, T // 2)), ("synth-bench", slice(T // 2, T))):
            n = part.stop - part.start
            header = {"model": {"id": "synthetic-qwen3-30b-a3b-like", "family": "synthetic", "architecture": "none",
                                "config": {"num_experts": E, "top_k": k, "num_layers": L, "hidden_size": 2048,
                                           "moe_intermediate_size": 768, "intermediate_size": 6144, "vocab_size": 1000}},
                      "layers": layers, "num_experts": E, "top_k": k, "has_logits": False, "dtype": "float32",
                      "settings": {"model": "synthetic", "seed": 0, "part": name}, "source": {"kind": "synthetic"}}
            write_trace(f"runs/{name}", header, np.zeros(n, np.int32), (np.arange(n) // 256).astype(np.int32),
                        (np.arange(n) % 256).astype(np.int32), [a[part] for a in ids], [w[part] for w in weights])
    G = args.gpus
    topo = Topology(num_nodes=1, gpus_per_node=G)
    for name, fit in (("demo", "runs/demo"), ("synth", "runs/synth-fit")):
        trace = Trace.open(fit)
        model = cost.CostModel.for_model(trace.config, topo, hidden_size=4096)
        tables: dict[str, dict] = {"routelens": {}, "kahypar": {}, "eplb": {}}
        for layer in trace.layers:
            topk = trace.topk_ids(layer).astype(np.int64)
            tables["eplb"][layer] = baselines.eplb_table(np.bincount(topk.ravel(), minlength=trace.num_experts), G)
            tables["kahypar"][layer] = hypergraph.kahypar_table(topk, trace.num_experts, G, weights="load")
            tables["routelens"][layer] = optimizer.optimize_layer(
                topk, trace.num_experts, G, model, seeds=("coact", "lpt", "kahypar"),
                deadline=time.perf_counter() + args.seconds_per_layer).table
        for method, table in tables.items():
            path = Path(args.plans_dir) / f"{name}-g{G}-{method}.json"
            Plan(table, trace.num_experts, method=method, replica_policy="first",
                 meta={"topology": topo.to_json(), "fit_trace": fit}).save(path)
            print("wrote", path)
    return 0


def cpu_demo() -> int:
    """Without arguments (``make bench``): a small CPU sweep, 2 gloo processes on a synthetic trace.

    Contiguous vs the routelens optimizer's plan (fitted on other tokens of the same routing), so the
    printed ratios are measured against a baseline in the same run. CPU times are noisy; the bytes
    are exact.
    """
    import subprocess
    import tempfile

    import numpy as np

    from routelens.placement import cost, optimizer
    from routelens.placement.topology import Topology
    from routelens.plan import Plan
    from routelens.synthetic import synthetic_topk_ids
    from routelens.trace import write_trace

    with tempfile.TemporaryDirectory() as tmp:
        T, E, k, L, G = 8192, 32, 4, 2, 2
        ids = [synthetic_topk_ids(2 * T, E, k, num_groups=4, in_group=0.9, seed=layer) for layer in range(L)]
        weights = [np.full((T, k), 1.0 / k, np.float32) for _ in range(L)]
        layers = [f"model.layers.{i}.mlp.gate" for i in range(L)]
        header = {"model": {"id": "synthetic", "family": "synthetic", "architecture": "none",
                            "config": {"hidden_size": 256, "moe_intermediate_size": 128}},
                  "layers": layers, "num_experts": E, "top_k": k, "settings": {}, "source": {"kind": "synthetic"}}
        write_trace(f"{tmp}/run", header, np.zeros(T, np.int32), np.zeros(T, np.int32), np.arange(T, dtype=np.int32),
                    [a[T:] for a in ids], weights)
        topo = Topology(num_nodes=1, gpus_per_node=G)
        model = cost.CostModel(topology=topo, token_bytes=512)
        tables = {layer: optimizer.optimize_layer(a[:T].astype(np.int64), E, G, model,
                                                  deadline=time.perf_counter() + 5).table for layer, a in zip(layers, ids)}
        Plan(tables, E, method="routelens", replica_policy="first").save(f"{tmp}/routelens.json")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NCCL_NVLS_ENABLE": "0"}
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={G}",
                               __file__, "--backend", "gloo", "--case", f"{tmp}/run|contiguous,{tmp}/routelens.json",
                               "--hidden", "256", "--tokens-per-rank", "2048", "--repeats", "3", "--warmup", "1",
                               "--out", f"{tmp}/out"], env=env).returncode


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return cpu_demo()
    if argv[:1] == ["make-inputs"]:
        return make_inputs(argv[1:])
    args = parse_args(argv)
    import torch.distributed as dist

    from routelens.runner.group import comm_group, join_group

    start = time.time()
    ctx = join_group(args.backend, timeout_s=180)
    rank, world, backend = ctx.rank, ctx.world, ctx.backend
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    overlap_at = {tuple(map(int, s.split(":"))) for s in args.overlap_at}
    check_at = {tuple(map(int, s.split(":"))) for s in args.check_at}
    results, table, failures = [], [], []
    groups = {"default": (None, "default")}
    if "high" in args.overlap_priorities:
        groups["high"] = comm_group("high")  # (group, priority really used: "default" on gloo)
    calibration = None
    fit = None
    if args.calibrate:
        from routelens.runner.calibration import calibrate

        fit = [calibrate(ctx, max_mib=256.0, repeats=10, warmup=3)]
        dist.broadcast_object_list(fit, src=0)
        fit = fit[0]
        calibration = {"source": "bench_runner calibration sweep", "topology": fit["topology"]}
        if rank == 0:
            print(f"calibration: latency {fit['latency_us']:.1f} us, bandwidth {fit['bandwidth_GBps']:.1f} GB/s per rank; "
                  "points (bytes/rank: ms) " + ", ".join(f"{p['bytes_per_rank'] >> 10}K: {p['ms']:.3f}" for p in fit["points"]),
                  flush=True)
    for case in args.case:
        trace, plans = case.split("|")
        for hidden in args.hidden:
            for tokens in args.tokens_per_rank:
                go = [time.time() - start < args.budget_s]
                dist.broadcast_object_list(go, src=0)
                if not go[0]:
                    failures.append({"case": case, "hidden": hidden, "tokens": tokens, "error": "skipped: budget"})
                    continue
                overlap = (hidden, tokens) in overlap_at
                for priority in (args.overlap_priorities if overlap else ["default"]):
                    config = bench_config(trace, plans.split(","), hidden, tokens, args, overlap,
                                          (hidden, tokens) in check_at)
                    group, used_priority = groups[priority]
                    t0 = time.time()
                    try:
                        report = run_config(config, dataclasses.replace(ctx, group=group, comm_priority=used_priority),
                                            calibration)
                    except Exception as exc:  # keep sweeping: one bad size must not lose the others
                        if rank == 0:
                            traceback.print_exc()
                        failures.append({"case": case, "hidden": hidden, "tokens": tokens, "error": repr(exc)[:300]})
                        continue
                    if rank == 0:
                        report["case"] = case
                        report["wall_s"] = time.time() - t0
                        results.append(report)
                        table += row(trace, report)
                        print(f"[{time.time() - start:6.1f}s] {Path(trace).name} H={hidden} tokens/rank={tokens} "
                              f"comm={priority}: {report['wall_s']:.1f}s", flush=True)
                        with open(out / "summary.json", "w") as fh:
                            json.dump({"world": world, "backend": backend, "calibration": calibration and fit,
                                       "results": results, "failures": failures}, fh)
    if rank == 0:
        print("\n" + HEADER)
        print("\n".join(table))
        for fail in failures:
            print("FAILED/SKIPPED:", fail)
        checks = [(r["case"], r["hidden_size"], r["check"]) for r in results if "check" in r]
        for case, hidden, check in checks:
            print(f"check {Path(case.split('|')[0]).name} H={hidden}: max rel err "
                  f"{max(p['max_relative_error'] for p in check['plans'].values()):.2e} passed={check['passed']}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    sys.exit(main())
