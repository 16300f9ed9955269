"""``routelens reroute RUN --policy P``: re-route a saved trace (with router logits) into a new trace."""

from __future__ import annotations

from ._args import positive_int, positive_float

POLICY_CHOICES = ("c2r", "gpu-limited", "gpu-adaptive", "capacity-drop", "capacity-reroute")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reroute",
        help="simulate a re-routing policy (C2R, GPU-limited, capacity drop/reroute) on a trace's router logits",
        description="Apply a re-routing policy to the router logits of a trace captured with --save-logits and "
        "write the new choices as a trace of the same format (graphs, place and the runner read it unchanged). "
        "Prints how fan-out (GPUs per token), the busiest GPU's receive volume and the expert-load imbalance "
        "change against the original routing.",
    )
    parser.add_argument("run", help="trace folder captured with --save-logits")
    parser.add_argument("--policy", required=True, choices=POLICY_CHOICES,
                        help="c2r: top-1 then K-1 of its Top-T collaborators (arXiv:2504.01337); gpu-limited: experts "
                        "on at most --max-gpus GPUs of a plan (DeepSeek-V2 device-limited routing); gpu-adaptive: only GPUs "
                        "holding --min-gpu-share of the token's routing weight; capacity-drop / "
                        "capacity-reroute: cap each expert at --capacity-factor x the mean load (arXiv:2503.05066)")
    parser.add_argument("--group-size", "--top-t", dest="top_t", type=positive_int, default=None,
                        help="c2r: T, collaborators each expert may be paired with (default E/4)")
    parser.add_argument("--calib", metavar="RUN", default=None,
                        help="c2r: trace whose co-activation gives the collaborator groups (default: RUN itself)")
    parser.add_argument("--max-gpus", type=positive_int, default=None,
                        help="gpu-limited: M, GPUs a token may visit (default: half the plan's GPUs); "
                        "gpu-adaptive: optional cap")
    parser.add_argument("--gpu-score", choices=("max", "mass"), default="max",
                        help="gpu-limited: pick the GPUs with the best single expert (max, DeepSeek-V2) or with the "
                        "most weight of the token's own top-k (mass) (default max)")
    parser.add_argument("--min-gpu-share", type=float, default=None,
                        help="gpu-adaptive: share of a token's routing weight a GPU must hold to be visited "
                        "(default 0.1)")
    parser.add_argument("--gpu-fill", choices=("best", "drop"), default="best",
                        help="GPU policies: experts a token loses on GPUs it no longer visits are replaced by the best "
                        "on the GPUs kept (best, DeepSeek-V2) or dropped (drop) (default best)")
    parser.add_argument("--weights", choices=("renorm", "keep"), default="renorm",
                        help="renorm: the model's rule on the new choice (as the papers do); keep: each expert keeps "
                        "the weight the unconstrained router gives it (default renorm)")
    parser.add_argument("--capacity-factor", type=positive_float, default=None,
                        help="capacity policies: gamma, capacity = ceil(gamma * tokens * k / experts) (default 1.25)")
    parser.add_argument("--plan", metavar="FILE", default=None,
                        help="placement for gpu-limited and the GPU metrics: a routelens plan, an SGLang expert-location "
                        "map or a vllm-ascend expert map")
    parser.add_argument("--gpus", type=positive_int, default=None,
                        help="without --plan: fit a routelens plan for this many GPUs on the trace (default 8); with an "
                        "SGLang --plan map: its EP size")
    parser.add_argument("--batch-tokens", type=positive_int, default=4096,
                        help="tokens per forward pass: the batch that shares expert capacity and over which the "
                        "GPU metrics are taken (default 4096)")
    parser.add_argument("--model", default=None,
                        help="model folder or hub id to read routing rules from, when the trace's manifest cannot "
                        "hold them (a selection bias: DeepSeek-V3, GLM4-MoE)")
    parser.add_argument("--out", default=None, help="new trace folder (default: RUN-<policy>-<setting> next to RUN)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the comparison as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..io import atomic_write_json
    from ..reroute.fitting import coactivation_counts, fit_plan
    from ..reroute.policy import c2r_policy, capacity_policy, gpu_adaptive_policy, gpu_limited_policy
    from ..reroute.simulate import default_output, reroute_trace, rules_from_trace
    from ..trace import Trace

    trace = Trace.open(args.run)
    trace.require_weights("reroute")
    if not trace.has_logits:
        from ..errors import TraceError

        raise TraceError(f"trace {trace.path} has no router logits: capture it with --save-logits to re-route it")
    if args.plan:
        plan = load_plan_file(args.plan, PlanTarget.for_trace(trace, num_gpus=args.gpus))
        plan.check_fits(trace.layers, trace.num_experts)
        if args.gpus is not None and plan.num_gpus != args.gpus:
            from ..errors import InputError

            raise InputError(f"--plan {args.plan} is for {plan.num_gpus} GPUs, --gpus says {args.gpus}")
    else:
        plan = fit_plan({layer: trace.topk_ids(layer) for layer in trace.layers}, trace.num_experts, args.gpus or 8,
                        config=trace.config)
    if args.policy == "c2r":
        calib = Trace.open(args.calib) if args.calib else trace
        if calib.layers != trace.layers or calib.num_experts != trace.num_experts:
            from ..errors import InputError

            raise InputError(f"--calib {calib.path} has other layers or experts than {trace.path}")
        counts = {layer: coactivation_counts(calib.topk_ids(layer), trace.num_experts) for layer in trace.layers}
        policy = c2r_policy(counts, args.top_t or max(trace.num_experts // 4, trace.top_k - 1), args.weights)
    elif args.policy == "gpu-limited":
        policy = gpu_limited_policy(plan, args.max_gpus or max(1, plan.num_gpus // 2), args.gpu_score, args.weights,
                                    args.gpu_fill)
    elif args.policy == "gpu-adaptive":
        share = 0.1 if args.min_gpu_share is None else args.min_gpu_share
        policy = gpu_adaptive_policy(plan, share, args.max_gpus, args.weights, args.gpu_fill)
    else:
        policy = capacity_policy(args.policy, args.capacity_factor or 1.25, args.weights)
    rules = None
    if args.model:
        rules = _model_rules(args.model)
    rules = rules_from_trace(trace, rules)
    out = args.out or default_output(trace.path, policy)
    new_trace, comparison = reroute_trace(trace, policy, out, rules=rules, plan=plan,
                                          batch_tokens=args.batch_tokens, progress=not args.no_progress)
    report = {"trace": str(trace.path), "rerouted": str(new_trace.path), "policy": policy.name, **policy.settings(),
              "plan": {"method": plan.method, "num_gpus": plan.num_gpus}, "batch_tokens": args.batch_tokens,
              **comparison}
    if args.json:
        atomic_write_json(args.json, report)
    print(format_comparison(policy.label(), comparison, plan.num_gpus))
    print(f"wrote {new_trace.num_tokens:,} re-routed tokens to {new_trace.path}")
    return 0


def format_comparison(label: str, comparison: dict, num_gpus: int) -> str:
    """A small table: per layer and overall, original -> re-routed."""
    rows = [("layer", "GPUs/token", "busiest GPU recv", "max/mean load", "dropped", "changed")]

    def cells(name, entry):
        o, r = entry["original"], entry["rerouted"]
        return (
            name,
            f"{o.get('gpus_per_token', 0):.2f} -> {r.get('gpus_per_token', 0):.2f}",
            f"{o.get('busiest_gpu_recv', 0):.2f} -> {r.get('busiest_gpu_recv', 0):.2f}",
            f"{o['load_max_over_mean']:.2f} -> {r['load_max_over_mean']:.2f}",
            f"{r['dropped_fraction']:.1%}",
            f"{entry['changed_fraction']:.1%}",
        )

    for layer, entry in comparison["layers"].items():
        rows.append(cells(layer, entry))
    rows.append(cells("overall (mean of layers)", comparison["overall"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{label} ({num_gpus} GPUs)"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    change = comparison["overall"].get("change", {})
    if change:
        lines.append("change: " + ", ".join(f"{k} {v:+.1%}" for k, v in change.items()))
    return "\n".join(lines)


def _model_rules(name: str):
    from ..capture.adapters import find_router_sites
    from ..capture.load import load_model

    model, _ = load_model(name, device="cpu")
    return [site.rule for site in find_router_sites(model).sites]
