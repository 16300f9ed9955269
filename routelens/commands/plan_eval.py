"""``routelens plan-eval RUN PLAN``: a plan against every baseline, on the same held-out tokens.

``routelens plan-eval PLAN... RUN...`` (several plans or runs): every plan and its baselines on every run, as a matrix.
"""

from __future__ import annotations

from ._args import add_json_argument, add_no_progress_argument, add_workers_argument, positive_int, write_json_output
from .place import add_cluster_arguments, cost_from_args, topology_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan-eval",
        help="score a plan and the baselines (contiguous, random, greedy, EPLB, Mt-KaHyPar) on held-out tokens",
        description="Fit each baseline on the same tokens the plan was fitted on, then score the plan and every "
        "baseline on the trace's held-out tokens (those after the plan's fit range; all tokens when the plan "
        "came from another trace): GPUs per token, busiest GPU's receive and send volume (in units of T/G "
        "tokens), compute imbalance, inter-node share and the estimated All-to-All and layer time, with ratios "
        "to contiguous. With several plans or runs (PLAN RUN1 RUN2, PLAN1 PLAN2 RUN, ...), every plan and every "
        "baseline fitted on the same tokens as it are scored on every run, as a plans x runs matrix.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder to score on")
    parser.add_argument("plan", metavar="PLAN", help="plan file: a routelens plan, an SGLang --init-expert-location map "
                        "(.pt/.json; give --gpus, the EP size, unless place wrote <plan>.plan.json next to it) or a "
                        "vllm-ascend expert map")
    parser.add_argument("--baselines", default=None, metavar="METHODS",
                        help="comma-separated baselines, from the placement methods of routelens place --method "
                        "but routelens (default: all of them whose optional dependency is installed: kahypar and "
                        "kahypar-load need mtkahypar)")
    parser.add_argument("more", nargs="*", metavar="MORE",
                        help="more runs and plans (a folder is a run, a file a plan; the order does not matter): every "
                        "plan and its baselines are scored on every run, as a matrix")
    add_json_argument(parser, "every number (per layer too)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the random baseline (default 0)")
    parser.add_argument("--expert-groups", type=positive_int, default=1, help="eplb: expert groups of the model")
    add_workers_argument(parser)
    add_cluster_arguments(parser)
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..placement.cost import CostModel
    from ..placement.evaluate import (compare_plans, eval_token_index, format_comparison, format_versus_best,
                                      ratios, versus_best)
    from ..placement.methods import baseline_names
    from ..placement.place import PlaceSettings
    from ..placement.workloads import baseline_workloads, fit_workload_baselines
    from ..placement.topology import Topology
    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..trace import Trace

    run_paths, plan_paths = split_runs_and_plans([args.run, args.plan, *args.more])
    if not run_paths or not plan_paths:
        raise InputError("give at least one run (a trace folder) and one plan file")
    trace = Trace.open(run_paths[0])
    trace.require_tokens("plan-eval")
    gpus = args.gpus or (args.nodes * args.gpus_per_node if args.nodes and args.gpus_per_node else None)
    plan = load_plan_file(plan_paths[0], PlanTarget.for_trace(trace, num_gpus=gpus, num_nodes=args.nodes))
    plan.check_trace(trace)
    cluster_given = any(v is not None for v in (args.gpus, args.nodes, args.gpus_per_node))
    if cluster_given:
        topology = topology_from_args(args)
        if topology.num_gpus != plan.num_gpus:
            raise InputError(f"the plan is for {plan.num_gpus} GPUs, --gpus/--nodes give {topology.num_gpus}")
    elif plan.topology is not None:
        topology = Topology.from_json(plan.topology)
    else:
        topology = Topology(num_nodes=plan.num_nodes, gpus_per_node=plan.gpus_per_node)
    stored = plan.meta.get("cost_model") or {}
    if stored and args.hidden_size is None and args.dtype_bytes == 2.0 and not cluster_given:
        cost = CostModel(topology, float(stored.get("token_bytes", 8192)), float(stored.get("expert_flops_per_token", 0)))
    else:
        cost = cost_from_args(args, trace, topology)

    if args.baselines:
        names = [b.strip() for b in args.baselines.split(",") if b.strip()]
        unknown = [b for b in names if b not in baseline_names()]
        if unknown:
            raise InputError(f"unknown baseline '{unknown[0]}' (known: {', '.join(baseline_names())})")
    else:
        names = list(baseline_names(available_only=True))
    if len(run_paths) > 1 or len(plan_paths) > 1:
        return _matrix(args, run_paths, plan_paths, trace, plan, cost, names)
    held, note = eval_token_index(trace, plan)
    workloads, fit_note = baseline_workloads(plan, [trace], Trace.open)
    settings = PlaceSettings(method=names[0] if names else "contiguous", redundant=plan.num_redundant,
                             replica_policy=plan.replica_policy, seed=args.seed, num_groups=args.expert_groups)
    plans = fit_workload_baselines(workloads, cost, names, settings, layers=plan.layers,
                                   progress=not args.no_progress, workers=args.workers)
    label = f"plan ({plan.method})"
    plans[label] = plan
    results = compare_plans(plans, trace, held, cost, progress=not args.no_progress, workers=args.workers)
    report = {"trace": str(trace.path), "plan": str(args.plan), "scored_on": note,
              "eval_tokens": int(np.asarray(held).size), "results": results, "ratios_to_contiguous": ratios(results),
              "vs_best_baseline": versus_best(results, label)}
    if write_json_output(args.json, report):
        return 0
    topo = cost.topology
    print(f"trace   {trace.path}: {len(trace.layers)} layers, E={trace.num_experts}, top-{trace.top_k}")
    print(f"scored  {note}; {fit_note}")
    print(f"cluster {topo.num_nodes}×{topo.gpus_per_node} GPUs, {topo.intra_link} {topo.intra_gbps:g} GB/s inside "
          f"nodes, {topo.inter_link} {topo.inter_gbps:g} GB/s between; {cost.token_bytes:g} bytes/token; "
          f"{plan.num_redundant} redundant slots; replicas: {plan.replica_policy}")
    print("volumes in units of T/G tokens (the tokens each GPU starts with); mean over layers; (×) = ratio to contiguous")
    print()
    print(format_comparison(results))
    summary = format_versus_best(results, label)
    if summary:
        print()
        print(summary)
    if args.json:
        print(f"wrote   {args.json}")
    return 0


def split_runs_and_plans(paths: list[str]) -> tuple[list[str], list[str]]:
    """``(runs, plans)``: a folder is a run, a file a plan; a missing path is a plan when named like one (.json, .pt).

    So ``plan-eval RUN PLAN`` and ``plan-eval PLAN RUN1 RUN2`` both work, and a missing run is reported
    by the trace reader ("no trace folder"), a missing plan by the plan reader.
    """
    from pathlib import Path

    def is_run(path: str) -> bool:
        return Path(path).is_dir() or (not Path(path).exists() and Path(path).suffix.lower() not in (".json", ".pt"))

    return [p for p in paths if is_run(p)], [p for p in paths if not is_run(p)]


def _matrix(args, run_paths, plan_paths, trace, first_plan, cost, baselines) -> int:
    """Several plans or runs: every plan and its baselines scored on every run (:func:`~routelens.placement.workloads.plan_matrix`)."""
    from pathlib import Path

    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..placement.workloads import format_matrix, plan_matrix
    from ..trace import Trace

    traces = [trace] + [Trace.open(path) for path in run_paths[1:]]
    for other in traces[1:]:
        other.require_tokens("plan-eval")
    plans = {}
    for path in plan_paths:
        plan = first_plan if path == plan_paths[0] else load_plan_file(
            path, PlanTarget.for_trace(trace, num_gpus=cost.topology.num_gpus, num_nodes=cost.topology.num_nodes))
        label = f"{Path(path).name} ({plan.method})"
        while label in plans:
            label += "'"
        plans[label] = plan
    matrix = plan_matrix(plans, traces, cost, baselines, Trace.open, seed=args.seed, num_groups=args.expert_groups,
                         progress=not args.no_progress, workers=args.workers)
    report = {"runs": matrix["runs"], "plans": dict(zip(plans, plan_paths)), "scored_on": matrix["scored_on"],
              "rows": matrix["rows"]}
    if write_json_output(args.json, report):
        return 0
    topo = cost.topology
    print(f"runs    {', '.join(str(t.path) for t in traces)}")
    print(f"cluster {topo.num_nodes}×{topo.gpus_per_node} GPUs, {topo.intra_link} {topo.intra_gbps:g} GB/s inside "
          f"nodes, {topo.inter_link} {topo.inter_gbps:g} GB/s between; {cost.token_bytes:g} bytes/token")
    for path, note in matrix["scored_on"].items():
        print(f"scored  {Path(path).name}: {note}")
    for label in plans:
        row = next(r for r in matrix["rows"] if r["label"] == label)
        print(f"plan    {label}: {row['fit']}")
    print("rows: each plan, then every baseline fitted on the same tokens as it; mean over layers; every row of a "
          "column is scored on the same tokens (layer µs: those tokens as one All-to-All, so compare down a column)")
    print()
    print(format_matrix(matrix))
    if args.json:
        print(f"wrote   {args.json}")
    return 0
