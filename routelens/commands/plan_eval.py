"""``routelens plan-eval RUN PLAN``: a plan against every baseline, on the same held-out tokens."""

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
        "to contiguous.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder to score on")
    parser.add_argument("plan", metavar="PLAN", help="plan file: a routelens plan, an SGLang --init-expert-location map "
                        "(.pt/.json; give --gpus, the EP size, unless place wrote <plan>.plan.json next to it) or a "
                        "vllm-ascend expert map")
    parser.add_argument("--baselines", default=None, metavar="METHODS",
                        help="comma-separated baselines, from the placement methods of routelens place --method "
                        "but routelens (default: all of them whose optional dependency is installed: kahypar and "
                        "kahypar-load need mtkahypar)")
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
    from ..placement.place import PlaceSettings, fit_baselines
    from ..placement.topology import Topology
    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..trace import Trace

    trace = Trace.open(args.run)
    trace.require_tokens("plan-eval")
    gpus = args.gpus or (args.nodes * args.gpus_per_node if args.nodes and args.gpus_per_node else None)
    plan = load_plan_file(args.plan, PlanTarget.for_trace(trace, num_gpus=gpus, num_nodes=args.nodes))
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
    held, note = eval_token_index(trace, plan)
    fit_trace, fit, fit_note = _baseline_fit(trace, plan, Trace)
    settings = PlaceSettings(method=names[0] if names else "contiguous", redundant=plan.num_redundant,
                             replica_policy=plan.replica_policy, seed=args.seed, num_groups=args.expert_groups)
    plans = fit_baselines(fit_trace, cost, names, settings, fit=fit, layers=plan.layers,
                          progress=not args.no_progress, workers=args.workers) if names else {}
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


def _baseline_fit(trace, plan, trace_cls):
    """Where the baselines are fitted: on the very tokens the plan was fitted on, whenever they can be found.

    Returns ``(trace to fit on, (start, end) token range, note)``. A plan fitted on this trace: its fit
    range. A plan fitted on another trace that is still where the plan says, unchanged (same
    fingerprint): that trace's fit range, so plan and baselines see the same tokens and are scored
    on the same unseen ones. Otherwise the baselines fit on this trace's tokens, in-sample for them
    (an advantage the note names).
    """
    origin = plan.meta.get("trace") or {}
    if origin.get("fingerprint") == trace.fingerprint():
        fit = tuple(origin.get("fit_tokens") or (0, trace.num_tokens))
        return trace, fit, f"baselines fitted on the plan's fit tokens [{fit[0]}, {fit[1]})"
    source = None
    if origin.get("path"):
        try:
            candidate = trace_cls.open(origin["path"])
            if candidate.fingerprint() == origin.get("fingerprint") and candidate.layers == trace.layers:
                source = candidate
        except Exception:  # moved, deleted or changed: fall back to this trace, and say so
            source = None
    if source is not None:
        fit = tuple(origin.get("fit_tokens") or (0, source.num_tokens))
        return source, fit, f"baselines fitted on the plan's own fit tokens [{fit[0]}, {fit[1]}) of {source.path}"
    return trace, (0, trace.num_tokens), ("baselines fitted on all tokens of this trace (in-sample for them: the plan's "
                                          "own trace is not found unchanged)")

