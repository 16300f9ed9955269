"""``routelens place RUN --gpus G --out PLAN``: fit an expert placement plan on a trace."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ._args import (add_deprecated_alias, add_no_progress_argument, add_workers_argument, non_negative_int,
                    positive_float, positive_int)

def method_help() -> str:
    """``--method``'s help: every registered placement method and what it is."""
    from ..placement.methods import get_method, method_names

    return "; ".join(f"{name}: {get_method(name).summary}" for name in method_names())


def objective_help() -> str:
    """``--objective``'s help: every registered objective and what it estimates."""
    from ..placement.objectives import get_objective, objective_names

    return "; ".join(f"{name}: {get_objective(name).summary}" for name in objective_names())


FORMAT_CHOICES = ("json", "sglang", "sglang-counts", "vllm-ascend", "vllm")
FORMAT_HELP = ("json: routelens plan; sglang: {\"physical_to_logical_map\"} for sglang --init-expert-location (.pt or "
               ".json); sglang-counts: the trace's expert counts ({\"logical_count\"}), from which SGLang places the "
               "experts itself (no plan is fitted, no --gpus needed); vllm-ascend: eplb_config.expert_map_path JSON; "
               "vllm: nothing - vLLM 0.34.0 loads no placement file (only --expert-placement-strategy linear|round_robin "
               "and online EPLB), so this stops with that message. With an engine format the routelens plan is "
               "written next to the file as <out>.plan.json (default json)")


def weight_list(text: str) -> tuple[float, ...]:
    """``--run-weights``: comma-separated positive numbers."""
    return tuple(positive_float(part.strip()) for part in text.split(",") if part.strip())


def add_cluster_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Cluster and cost-model options shared by ``place`` and ``plan-eval``."""
    from ..placement.topology import LINKS

    group = parser.add_argument_group("cluster")
    group.add_argument("--gpus", type=positive_int, default=None, help="total GPUs (expert-parallel ranks)")
    group.add_argument("--nodes", type=positive_int, default=None, help="nodes the GPUs are spread over (default 1)")
    group.add_argument("--gpus-per-node", type=positive_int, default=None, help="GPUs per node")
    group.add_argument("--intra", choices=sorted(LINKS), default="nvlink", help="link between GPUs of a node (default nvlink)")
    group.add_argument("--inter", choices=sorted(LINKS), default="infiniband", help="link between nodes (default infiniband)")
    group.add_argument("--intra-gbps", type=positive_float, default=None, help="override intra-node GB/s per GPU")
    group.add_argument("--inter-gbps", type=positive_float, default=None, help="override inter-node GB/s per GPU")
    group.add_argument("--gpu-tflops", type=positive_float, default=400.0,
                       help="sustained expert-GEMM TFLOP/s per GPU, for the compute term (default 400)")
    group.add_argument("--hidden-size", type=positive_int, default=None,
                       help="hidden size to cost tokens and experts at (default: the model's; a larger one models "
                       "the same routing at production size)")
    group.add_argument("--dtype-bytes", type=positive_float, default=2.0,
                       help="bytes per hidden value on the wire (default 2: bf16; 1 for fp8 dispatch)")


def topology_from_args(args, default_gpus: int | None = None, default_nodes: int = 1):
    from ..placement.topology import make_topology

    gpus = args.gpus if args.gpus is not None else (None if args.gpus_per_node else default_gpus)
    nodes = args.nodes if args.nodes is not None else (None if args.gpus_per_node else default_nodes)
    return make_topology(num_gpus=gpus, num_nodes=nodes, gpus_per_node=args.gpus_per_node, intra=args.intra,
                         inter=args.inter, intra_gbps=args.intra_gbps, inter_gbps=args.inter_gbps,
                         gpu_tflops=args.gpu_tflops)


def cost_from_args(args, trace, topology):
    from ..placement.cost import CostModel

    return CostModel.for_model(trace.config, topology, dtype_bytes=args.dtype_bytes, hidden_size=args.hidden_size)


def add_objective_argument(parser: argparse.ArgumentParser) -> None:
    """``--objective``: one of the registered objectives (:mod:`routelens.placement.objectives`), everywhere."""
    from ..placement.objectives import DEFAULT_OBJECTIVE, objective_names

    parser.add_argument("--objective", choices=objective_names(), default=DEFAULT_OBJECTIVE,
                        help=f"what the optimizer minimises (default {DEFAULT_OBJECTIVE}): " + objective_help())


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "place",
        help="fit an expert placement plan (which GPU holds which experts and replicas) on a trace",
        description="Place every MoE layer's experts (and optional redundant replicas) on GPUs to cut the "
        "estimated dispatch + combine All-to-All and the straggler, fitted on the first --fit-fraction of the "
        "trace's tokens (the rest is kept for plan-eval). Writes a routelens plan (JSON) or the file an engine "
        "loads (--format). A counts-only run (imported SGLang stat records) is placed from its counts by "
        "contiguous, random, greedy or eplb.",
    )
    parser.add_argument("run", metavar="RUN", nargs="+",
                        help="trace folder written by routelens capture; several: one plan fitted on all of them "
                        "(their fit tokens mixed by --run-weights)")
    parser.add_argument("--run-weights", type=weight_list, default=None, metavar="W[,W...]",
                        help="several runs: each run's share of the fit tokens, one number per RUN (e.g. 0.7,0.3; "
                        "default: in proportion to their fit tokens)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="plan file to write (.json; .pt or .json for --format sglang and sglang-counts)")
    parser.add_argument("--method", default="routelens", help=method_help() + " (default routelens)")
    parser.add_argument("--redundant", type=non_negative_int, default=0,
                        help="redundant expert slots per layer (E + R must be a multiple of the GPU count)")
    parser.add_argument("--replica-policy", default="nearest-then-least-loaded", metavar="POLICY",
                        help="how a token picks among an expert's replicas: nearest-then-least-loaded (default), "
                        "round-robin, first")
    add_deprecated_alias(parser, "--policy", "--replica-policy")
    parser.add_argument("--fit-fraction", type=float, default=None,
                        help="fit on this first fraction of the trace's tokens, keep the rest held out for plan-eval "
                        "(default 0.5; use 1 for a production plan and evaluate on another trace; counts-only runs "
                        "always use all their counts)")
    parser.add_argument("--format", choices=FORMAT_CHOICES, default="json", help=FORMAT_HELP)
    parser.add_argument("--num-layers", type=positive_int, default=None,
                        help="sglang: decoder layers of the model (default: from the trace)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the random baseline and the optimizer's subsample (default 0)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="optimizer wall-clock budget for all layers (default: run to convergence)")
    parser.add_argument("--max-fit-tokens", type=positive_int, default=None,
                        help="tokens per layer the optimizer scores on (default 32768, a seeded subsample above)")
    parser.add_argument("--starts", default=None, metavar="METHODS",
                        help="optimizer starting placements, comma-separated: kahypar, coact, lpt, mincut (default: "
                        "kahypar,coact,lpt when mtkahypar is installed and E <= 128, else coact,lpt); with several, "
                        "the one that holds up best on the last quarter of the fit tokens wins")
    add_deprecated_alias(parser, "--seeds", "--starts")
    add_objective_argument(parser)
    parser.add_argument("--compare", action="store_true",
                        help="also fit every baseline (Mt-KaHyPar ones when installed) on the same fit tokens and "
                        "print their numbers next to the plan's (in-sample for all; plan-eval compares on held-out "
                        "tokens). Costs the baselines' fit time (Mt-KaHyPar: seconds per layer)")
    parser.add_argument("--kicks", type=int, default=None, metavar="N",  # PlaceSettings.check() refuses < 0
                        help="optimizer: N restarts of the swap search from the best placement after a few random "
                        "swaps, each kept only if the estimate improves (default 16 when E <= 128, else 0)")
    parser.add_argument("--expert-groups", type=positive_int, default=1,
                        help="eplb: expert groups of the model for the hierarchical policy (DeepSeek-V3: 8)")
    add_workers_argument(parser)
    add_cluster_arguments(parser)
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..engines.layout import trace_decoder_layers, trace_layer_indices
    from ..engines.vllm_ascend_map import UPSTREAM_NOTE
    from ..errors import InputError
    from ..lock import enclosing_run, run_lock
    from ..placement.export import EXPORT_FORMATS, export_plan
    from ..placement.optimizer import MAX_FIT_TOKENS
    from ..placement.place import PlaceSettings, fit_token_range
    from ..placement.workloads import make_workloads, place_workloads
    from ..trace import Trace

    if args.format == "vllm":
        raise InputError(UPSTREAM_NOTE)
    out = Path(args.out)
    suffixes = EXPORT_FORMATS[args.format].suffixes if args.format in EXPORT_FORMATS else (".pt", ".json")
    if suffixes and out.suffix not in suffixes:
        raise InputError(f"--format {args.format} writes a {' or '.join(suffixes)} file, got '{out.name}'")
    traces = [Trace.open(run) for run in args.run]
    trace = traces[0]
    if args.run_weights is not None and len(args.run_weights) != len(traces):
        raise InputError(f"--run-weights gives {len(args.run_weights)} weight(s) for {len(traces)} runs")
    if len(traces) > 1 and (args.format == "sglang-counts" or any(t.counts_only for t in traces)):
        raise InputError("several runs are placed from their per-token routing: not with --format sglang-counts or "
                         "counts-only runs")
    layer_indices = trace_layer_indices(trace)
    num_layers = args.num_layers or trace_decoder_layers(trace) or max(layer_indices) + 1
    if trace.counts_only:
        if args.fit_fraction not in (None, 1.0):
            raise InputError(f"{trace.path} holds expert counts only: it is placed from all its counts "
                             "(--fit-fraction needs per-token routing)")
        fit = (0, trace.num_tokens)
    else:
        fit = fit_token_range(trace, 0.5 if args.fit_fraction is None else args.fit_fraction)
    if args.format == "sglang-counts":
        return _write_counts(trace, fit, out, layer_indices, num_layers, args.redundant)
    if args.gpus is None and args.gpus_per_node is None:
        raise InputError("give the cluster size: --gpus G, or --nodes N --gpus-per-node M")
    topology = topology_from_args(args)
    cost = cost_from_args(args, trace, topology)
    settings = PlaceSettings(
        method=args.method, redundant=args.redundant, replica_policy=args.replica_policy, seed=args.seed,
        time_budget_s=args.time_budget, max_fit_tokens=args.max_fit_tokens or MAX_FIT_TOKENS,
        seeds=tuple(s.strip() for s in args.starts.split(",") if s.strip()) if args.starts else None,
        num_groups=args.expert_groups, objective=args.objective, kicks=args.kicks,
    )
    settings.check()
    owner = enclosing_run(out)  # a plan written into a run folder: one writer at a time there
    with run_lock(owner, "routelens place") if owner is not None else contextlib.nullcontext():
        fits = [fit] + [fit_token_range(t, 0.5 if args.fit_fraction is None else args.fit_fraction) for t in traces[1:]]
        workloads = make_workloads(traces, fits, args.run_weights)
        plan = place_workloads(workloads, cost, settings, progress=not args.no_progress, workers=args.workers)
        if args.format == "json":
            written = [export_plan(plan, out, "json")]
        else:
            json_path = out.with_suffix(".plan.json")
            written = [export_plan(plan, out, args.format, num_layers=num_layers, layer_indices=layer_indices),
                       plan.save(json_path)]
    mean = plan.meta["metrics"]["mean"]
    print(f"plan    {plan.method}: {plan.num_gpus} GPUs ({plan.num_nodes} node(s)), {plan.slots_per_gpu} slots per GPU, "
          f"{plan.num_redundant} redundant, {len(plan.layers)} layers, {plan.meta['seconds']:.1f} s")
    if trace.counts_only:
        print(f"fit     all recorded counts ({trace.num_tokens:,} tokens over {trace.manifest.get('num_steps', 0):,} "
              "steps; no held-out tokens: plan-eval needs per-token routing)")
        print(f"metrics (recorded counts, mean over layers): compute max/mean {mean['compute_imbalance']:.3f} "
              "(All-to-All estimates need per-token routing)")
    elif len(workloads) > 1:
        for workload in workloads:
            own = plan.meta["metrics"]["runs"][str(workload.trace.path)]
            print(f"fit     tokens [{workload.fit[0]}, {workload.fit[1]}) of {workload.trace.num_tokens:,} of "
                  f"{workload.trace.path} (weight {workload.weight:.2f}): busiest GPU receives "
                  f"{own['busiest_gpu_recv']:.3f} × T/G, est. {own['layer_us']:.1f} µs per layer")
        print(f"metrics (fit tokens of all runs, mixed): {mean['gpus_per_token']:.2f} GPUs/token, busiest GPU receives "
              f"{mean['busiest_gpu_recv']:.3f} × T/G, compute max/mean {mean['compute_imbalance']:.3f}, "
              f"est. {mean['a2a_us']:.1f} µs All-to-All per layer")
    else:
        print(f"fit     tokens [{fit[0]}, {fit[1]}) of {trace.num_tokens:,}")
        print(f"metrics (fit tokens, mean over layers): {mean['gpus_per_token']:.2f} GPUs/token, busiest GPU receives "
              f"{mean['busiest_gpu_recv']:.3f} × T/G, compute max/mean {mean['compute_imbalance']:.3f}, "
              f"est. {mean['a2a_us']:.2f} µs All-to-All + {mean['compute_us']:.2f} µs compute = "
              f"{mean['layer_us']:.2f} µs per layer")
        if args.compare:
            _print_comparison(trace, plan, cost, settings, fit, args.workers)
    for path in written:
        print(f"wrote   {path}")
    if args.format == "sglang":
        print(f"serve   sglang ... --ep-size {plan.num_gpus} --ep-num-redundant-experts {plan.num_redundant} "
              f"--init-expert-location {out}")
    if args.format == "vllm-ascend":
        print(f"serve   vllm serve ... (vllm-ascend) --additional-config "
              f"'{{\"eplb_config\": {{\"expert_map_path\": \"{out}\"}}}}'")
    if len(traces) > 1:
        print(f"next    routelens plan-eval {written[0]} {' '.join(args.run)}")
    elif fit[1] < trace.num_tokens:
        print(f"next    routelens plan-eval {args.run[0]} {written[0]}")
    return 0


def _print_comparison(trace, plan, cost, settings, fit: tuple[int, int], workers: int | None) -> None:
    """``--compare``: every available baseline fitted on the plan's fit tokens, all scored there (in-sample)."""
    import numpy as np

    from ..placement.evaluate import compare_plans, format_comparison, format_versus_best
    from ..placement.methods import baseline_names
    from ..placement.place import fit_baselines

    plans = fit_baselines(trace, cost, list(baseline_names(available_only=True)), settings, fit=fit,
                          layers=plan.layers, workers=workers)
    label = f"plan ({plan.method})"
    plans[label] = plan
    results = compare_plans(plans, trace, np.arange(fit[0], fit[1]), cost, progress=False, workers=workers)
    print(f"\nfit tokens [{fit[0]}, {fit[1]}), every method fitted and scored on them (in-sample; plan-eval scores "
          "held-out tokens):")
    print(format_comparison(results))
    print(format_versus_best(results, label))
    print()


def _write_counts(trace, fit: tuple[int, int], out: Path, layer_indices: list[int], num_layers: int,
                  redundant: int) -> int:
    """``--format sglang-counts``: the trace's expert counts over the fit tokens as SGLang's ``logical_count``."""
    import numpy as np

    from ..engines.sglang_location import save_sglang_counts
    from ..graphs import load_counts

    if trace.counts_only:
        counts = np.stack([trace.expert_counts(layer) for layer in trace.layers])
    else:
        counts = np.stack([load_counts(np.asarray(trace.topk_ids(layer)[fit[0]:fit[1]], dtype=np.int64), trace.num_experts)
                           for layer in trace.layers])
    path = save_sglang_counts(counts, out, layer_indices, num_layers)
    print(f"counts  {len(trace.layers)} MoE layers × {trace.num_experts} experts over tokens [{fit[0]}, {fit[1]}), "
          f"as {num_layers} decoder-layer rows")
    print(f"wrote   {path}")
    print(f"serve   sglang ... --ep-size G --ep-num-redundant-experts {redundant} --init-expert-location {path} "
          "(SGLang runs its own EPLB on these counts)")
    return 0

