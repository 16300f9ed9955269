"""Placement benchmark: every method against contiguous, on held-out tokens, plus the optimizer's wall time.

For each trace and GPU count, every method is fitted on the first half of the trace (cut at a
sequence boundary) and scored on the second half with the same cost model. Printed per row: the
busiest GPU's receive volume (units of T/G tokens) and the estimated dispatch + combine time of each
method as ratios to contiguous, and the routelens optimizer's wall time. Goals checked: busiest
receive >= 25% below contiguous and >= 10% below the best baseline. A second part times the
optimizer on 256 experts × 64 GPUs × 60 layers (synthetic routing, top-8) against the greedy
baseline measured in the same run (goal: <= 60 s).

    .venv/bin/python benchmarks/bench_placement.py --trace runs/demo --oracle --json out.json  # demo + synthetic
    .venv/bin/python benchmarks/bench_placement.py --tiny --no-synthetic --scale-layers 0     # tiny test models
    .venv/bin/python benchmarks/bench_placement.py --quick                                    # synthetic only, fast
    .venv/bin/python benchmarks/bench_placement.py --pair runs/train-all runs/heldout-all --no-synthetic --oracle
        # fit on one text (the whole training corpus), score on another (the held-out corpus)

Each row prints whether the two goals are met and, where one is missed, why, from the row's own
numbers: few experts per GPU, no co-activation structure (min-cut fan-out no lower than
contiguous), or (with ``--oracle``) the goal is out of reach even for the optimizer fitted on
the scored tokens themselves.

Times are estimated at a production token size (``--hidden-size``, default 4096, bf16) on
NVLink nodes of 8 GPUs joined by InfiniBand; receive volumes do not depend on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from routelens.placement.cost import CostModel
from routelens.placement.evaluate import compare_plans
from routelens.placement.hypergraph import mtkahypar_available
from routelens.placement.optimizer import optimize_layer
from routelens.placement.place import PlaceSettings, fit_token_range, place
from routelens.placement.topology import make_topology
from routelens.synthetic import synthetic_topk_ids, synthetic_trace_arrays
from routelens.trace import Trace, write_trace


def baselines() -> list[str]:
    names = ["contiguous", "random", "greedy", "eplb"]
    return names + (["kahypar", "kahypar-load"] if mtkahypar_available() else [])


def synthetic_trace(folder: Path, num_experts: int, top_k: int, tokens: int, layers: int, seed: int) -> Trace:
    arrays = synthetic_trace_arrays(num_tokens=tokens, num_layers=layers, num_experts=num_experts, top_k=top_k,
                                    seq_len=256, seed=seed)
    arrays["header"]["model"]["config"]["hidden_size"] = 4096
    arrays["header"]["model"]["id"] = f"synthetic-E{num_experts}-k{top_k}"
    return write_trace(folder, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                       arrays["topk_ids"], arrays["topk_weights"], None)


def tiny_model_traces(folder: Path, tokens: int) -> list[Trace]:
    """Traces of tiny random-init test models (Qwen3-MoE and OLMoE layouts) on the bundled corpus."""
    from transformers import OlmoeConfig

    from routelens.capture.engine import capture_from_path
    from routelens.capture.load import demo_corpus_path
    from routelens.capture.tiny import build_tiny_moe, tiny_qwen3_moe_config

    corpus = demo_corpus_path()
    configs = {
        "tiny-qwen3-moe-E64-k8": tiny_qwen3_moe_config(num_experts=64, top_k=8, num_layers=4, hidden_size=32),
        "tiny-olmoe-E32-k4": OlmoeConfig(vocab_size=320, hidden_size=32, intermediate_size=32, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=4, num_experts=32,
                                         num_experts_per_tok=4, max_position_embeddings=1024),
    }
    traces = []
    for name, config in configs.items():
        model = build_tiny_moe(folder / name, config)
        traces.append(capture_from_path(model, folder / f"{name}-run", text=corpus if corpus.is_file() else None,
                                        max_tokens=tokens, progress=False))
    return traces


def gpu_counts_for(num_experts: int, wanted: list[int]) -> list[tuple[int, int]]:
    """(GPUs, redundant) pairs: redundancy where a GPU would hold fewer than 2 experts (else no choice)."""
    out = []
    for gpus in wanted:
        redundant = (-num_experts) % gpus
        if (num_experts + redundant) // gpus < 2:
            redundant = 2 * gpus - num_experts
        out.append((gpus, redundant))
    return out


GOAL_VS_CONTIGUOUS = -0.25  # busiest-GPU receive at least 25% below contiguous
GOAL_VS_BEST = -0.10  # and at least 10% below the best baseline


def oracle_recv(trace: Trace, held: np.ndarray, cost: CostModel, redundant: int, max_fit_tokens: int) -> float:
    """Busiest-GPU receive of the optimizer fitted on the scored (held-out) tokens themselves.

    Not a method: an optimistic reference. When even this misses a goal, no placement fitted on
    other tokens by this method can be expected to meet it on these tokens."""
    from routelens.placement.cost import score_table

    values = []
    for layer in trace.layers:
        ids = np.asarray(trace.topk_ids(layer), dtype=np.int64)[held]
        result = optimize_layer(ids, trace.num_experts, cost.topology.num_gpus, cost, redundant=redundant,
                                max_fit_tokens=max_fit_tokens)
        values.append(score_table(ids, result.table, cost)["busiest_gpu_recv"])
    return float(np.mean(values))


def goal_notes(row: dict) -> list[str]:
    """Why a row misses a goal, from its own numbers."""
    notes = []
    slots = (row["E"] + row["redundant"]) // row["gpus"]
    base = row["methods"]["contiguous"]
    mincut = row["methods"].get("kahypar")
    if slots <= 2:
        notes.append(f"{slots} experts per GPU: almost no freedom to group co-activated experts")
    if slots > 2 and mincut and mincut["gpus_per_token"] >= 0.95 * base["gpus_per_token"]:
        notes.append(f"no co-activation structure: even min-cut fan-out is {mincut['gpus_per_token']:.2f} GPUs/token "
                     f"vs contiguous {base['gpus_per_token']:.2f}")
    if row.get("oracle_recv") is not None:
        best_recv = row["methods"][row["best_baseline"]]["recv"]
        for name, ref, goal in (("contiguous", base["recv"], GOAL_VS_CONTIGUOUS), (row["best_baseline"], best_recv, GOAL_VS_BEST)):
            mine = row["methods"]["routelens"]["recv"]
            if mine <= (1 + goal) * ref:
                continue
            if row["oracle_recv"] > (1 + goal) * ref:
                notes.append(f"beyond this optimizer even in-sample vs {name}: fitted on the scored tokens themselves it gets "
                             f"{row['oracle_recv']:.3f} T/G, goal <= {(1 + goal) * ref:.3f}")
            else:
                notes.append(f"lost to routing drift vs {name}: fitted on the scored tokens the optimizer gets "
                             f"{row['oracle_recv']:.3f} T/G (goal <= {(1 + goal) * ref:.3f}), fitted on the other tokens "
                             f"{mine:.3f}")
    if not notes and row.get("oracle_recv") is None:
        notes.append("no reason found in the row's numbers; --oracle shows whether it is reachable in-sample")
    return notes


def bench_trace(trace: Trace, gpu_counts: list[int], hidden: int, max_fit_tokens: int, oracle: bool = False,
                score_trace: Trace | None = None) -> list[dict]:
    """Every method fitted on the first half of ``trace``, scored on the second half; or, with ``score_trace``,
    fitted on all of ``trace`` and scored on all of ``score_trace`` (another text through the same model)."""
    rows = []
    if score_trace is None:
        score_trace, fit = trace, fit_token_range(trace, 0.5)
        held = np.arange(fit[1], trace.num_tokens)
        label = trace.model_id or str(trace.path)
    else:
        if score_trace.layers != trace.layers or score_trace.num_experts != trace.num_experts:
            raise SystemExit(f"{score_trace.path} is not routed by the same model as {trace.path}")
        fit, held = (0, trace.num_tokens), np.arange(score_trace.num_tokens)
        label = f"{Path(trace.path).name} -> {Path(score_trace.path).name}"
    for gpus, redundant in gpu_counts_for(trace.num_experts, gpu_counts):
        topology = make_topology(gpus, gpus_per_node=min(gpus, 8))
        cost = CostModel.for_model(trace.config, topology, hidden_size=hidden)
        plans, seconds = {}, {}
        for method in baselines() + ["routelens"]:
            settings = PlaceSettings(method=method, redundant=redundant, max_fit_tokens=max_fit_tokens)
            started = time.perf_counter()
            plans[method] = place(trace, cost, settings, fit=fit, progress=False)
            seconds[method] = time.perf_counter() - started
        results = compare_plans(plans, score_trace, held, cost, progress=False)
        base = results["contiguous"]["mean"]
        row = {"trace": label, "E": trace.num_experts, "k": trace.top_k, "gpus": gpus,
               "nodes": topology.num_nodes, "redundant": redundant, "fit_tokens": fit[1], "held_out": int(held.size),
               "routelens_s": seconds["routelens"], "methods": {}}
        for method, result in results.items():
            mean = result["mean"]
            row["methods"][method] = {"recv": mean["busiest_gpu_recv"], "recv_ratio": mean["busiest_gpu_recv"] / base["busiest_gpu_recv"],
                                      "a2a_ratio": mean["a2a_us"] / base["a2a_us"], "gpus_per_token": mean["gpus_per_token"],
                                      "a2a_us": mean["a2a_us"], "seconds": seconds[method]}
        best = min((m for m in row["methods"] if m != "routelens"), key=lambda m: row["methods"][m]["recv"])
        mine = row["methods"]["routelens"]["recv"]
        row["best_baseline"] = best
        row["vs_contiguous"] = mine / base["busiest_gpu_recv"] - 1
        row["vs_best"] = mine / row["methods"][best]["recv"] - 1
        best_a2a = min((m for m in row["methods"] if m != "routelens"), key=lambda m: row["methods"][m]["a2a_us"])
        row["best_a2a_baseline"] = best_a2a
        row["a2a_vs_best"] = row["methods"]["routelens"]["a2a_us"] / row["methods"][best_a2a]["a2a_us"] - 1
        row["goal_vs_contiguous_met"] = row["vs_contiguous"] <= GOAL_VS_CONTIGUOUS
        row["goal_vs_best_met"] = row["vs_best"] <= GOAL_VS_BEST
        row["oracle_recv"] = oracle_recv(score_trace, held, cost, redundant, max_fit_tokens) if oracle else None
        row["notes"] = goal_notes(row) if not (row["goal_vs_contiguous_met"] and row["goal_vs_best_met"]) else []
        rows.append(row)
        print_row(row)
    return rows


HEADER_PRINTED = False


def print_row(row: dict) -> None:
    global HEADER_PRINTED
    methods = list(row["methods"])
    if not HEADER_PRINTED:
        print("busiest-GPU receive / contiguous (estimated a2a time / contiguous), held-out tokens; "
              "last columns: routelens vs contiguous and vs the best baseline, optimizer wall time")
        print(f"{'trace':26s} {'G':>3s} {'N':>2s} {'R':>3s} " + " ".join(f"{m:>13s}" for m in methods)
              + f" {'vs contig':>9s} {'vs best':>21s} {'opt s':>6s}  goals (-25% contig, -10% best)")
        HEADER_PRINTED = True
    cells = " ".join(f"{row['methods'][m]['recv_ratio']:5.2f} ({row['methods'][m]['a2a_ratio']:4.2f})".rjust(13)
                     for m in methods)
    print(f"{row['trace'][:26]:26s} {row['gpus']:3d} {row['nodes']:2d} {row['redundant']:3d} {cells} "
          f"{100 * row['vs_contiguous']:+8.1f}% {100 * row['vs_best']:+7.1f}% {row['best_baseline']:>13s} "
          f"{row['routelens_s']:6.1f}  {_met(row['goal_vs_contiguous_met'])}, {_met(row['goal_vs_best_met'])}", flush=True)
    if row.get("oracle_recv") is not None:
        print(f"{'':26s}   busiest receive (T/G): contiguous {row['methods']['contiguous']['recv']:.3f}, best baseline "
              f"{row['methods'][row['best_baseline']]['recv']:.3f}, routelens {row['methods']['routelens']['recv']:.3f}, "
              f"fitted on the scored tokens {row['oracle_recv']:.3f}")
    print(f"{'':26s}   estimated a2a: routelens {row['methods']['routelens']['a2a_us']:.1f} µs/layer, "
          f"{100 * row['a2a_vs_best']:+.1f}% vs the best baseline on it ({row['best_a2a_baseline']})")
    for note in row["notes"]:
        print(f"{'':26s}   missed: {note}", flush=True)


def _met(flag: bool) -> str:
    return "met" if flag else "MISSED"


def bench_scale(layers: int, tokens: int, max_fit_tokens: int) -> dict:
    """Optimizer wall time on 256 experts × 64 GPUs × ``layers`` layers, against greedy in the same run."""
    from routelens.placement.baselines import greedy_table
    from routelens.graphs import load_counts

    topology = make_topology(64, gpus_per_node=8)
    cost = CostModel(topology, token_bytes=7168 * 2)
    routed = [synthetic_topk_ids(tokens, 256, 8, num_groups=32, in_group=0.6, skew=0.5, seed=100 + i)
              for i in range(layers)]
    started = time.perf_counter()
    for ids in routed:
        greedy_table(load_counts(ids, 256), 64)
    greedy_s = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    for ids in routed:
        optimize_layer(ids, 256, 64, cost, max_fit_tokens=max_fit_tokens)
    optimizer_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    print(f"\nscale: 256 experts × 64 GPUs (8 nodes) × {layers} layers, top-8, {min(tokens, max_fit_tokens)} fit tokens "
          f"per layer: optimizer {optimizer_s:.1f} s ({optimizer_s / max(greedy_s, 1e-9):.0f}× greedy's {greedy_s:.2f} s); "
          f"goal <= 60 s: {'met' if optimizer_s <= 60 else 'MISSED'}; process CPU time {cpu_s:.1f} s; "
          f"load average {_load()}", flush=True)
    return {"layers": layers, "fit_tokens": min(tokens, max_fit_tokens), "optimizer_s": optimizer_s,
            "optimizer_cpu_s": cpu_s, "greedy_s": greedy_s, "load_average": _load()}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="append", default=[], help="trace folder (repeatable), e.g. the demo trace")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("FIT", "HELD"),
                        help="fit on all of trace FIT, score on all of trace HELD (e.g. the training corpus and the "
                        "held-out corpus through the same model); repeatable")
    parser.add_argument("--tiny", action="store_true", help="also capture and place tiny random-init test models")
    parser.add_argument("--gpus", type=int, nargs="+", default=[4, 8, 16, 64])
    parser.add_argument("--hidden-size", type=int, default=4096, help="token size the times are estimated at")
    parser.add_argument("--max-fit-tokens", type=int, default=32768)
    parser.add_argument("--scale-layers", type=int, default=60, help="layers of the 256×64 timing (0 = skip)")
    parser.add_argument("--scale-fit-tokens", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="synthetic traces only, 4 and 8 GPUs, 6 scale layers")
    parser.add_argument("--no-synthetic", action="store_true", help="leave out the synthetic trace")
    parser.add_argument("--oracle", action="store_true",
                        help="also fit the optimizer on the scored tokens themselves (a reference for what is reachable)")
    parser.add_argument("--json", default=None, help="write all numbers as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.gpus, args.scale_layers = [4, 8], 6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"mtkahypar {'yes' if mtkahypar_available() else 'no'}; load average {_load()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        traces = [Trace.open(path) for path in args.trace]
        if not args.no_synthetic:
            traces.append(synthetic_trace(Path(tmp) / "synthetic", 64, 8, 32768, 4, seed=1))
        if args.tiny:
            traces.extend(tiny_model_traces(Path(tmp), 16384))
        for fit_path, held_path in args.pair:
            rows.extend(bench_trace(Trace.open(fit_path), args.gpus, args.hidden_size, args.max_fit_tokens, args.oracle,
                                    score_trace=Trace.open(held_path)))
        for trace in traces:
            rows.extend(bench_trace(trace, args.gpus, args.hidden_size, args.max_fit_tokens, args.oracle))
    met_contig = [r for r in rows if r["goal_vs_contiguous_met"]]
    met_best = [r for r in rows if r["goal_vs_best_met"]]
    print(f"\ngoals: busiest receive >= 25% below contiguous in {len(met_contig)}/{len(rows)} rows, "
          f">= 10% below the best baseline in {len(met_best)}/{len(rows)} rows")
    scale = bench_scale(args.scale_layers, 16384, args.scale_fit_tokens) if args.scale_layers else None
    if args.json:
        from routelens.io import atomic_write_json

        atomic_write_json(args.json, {"argv": sys.argv[1:], "cpu_count": os.cpu_count(), "load_average_end": _load(),
                                      "rows": rows, "scale": scale})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
