"""``routelens reroute RUN --policy P``: re-route a saved trace (with router logits) into a new trace."""

from __future__ import annotations

from ._args import (add_deprecated_alias, add_json_argument, add_no_progress_argument, add_policy_arguments,
                    policy_choice, positive_int, write_json_output)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reroute",
        help="simulate a re-routing policy (C2R, GPU-limited, capacity drop/reroute) on a trace's router logits",
        description="Apply a re-routing policy to the router logits of a trace captured with --save-logits and "
        "write the new choices as a trace of the same format (graphs, place and the runner read it unchanged). "
        "Prints how fan-out (GPUs per token), the busiest GPU's receive volume and the expert-load imbalance "
        "change against the original routing.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder captured with --save-logits")
    add_policy_arguments(parser, sweep=False)
    parser.add_argument("--fit-trace", metavar="RUN", default=None,
                        help="c2r: trace whose co-activation the collaborator groups are fitted on (default: RUN "
                        "itself)")
    add_deprecated_alias(parser, "--calib", "--fit-trace")
    parser.add_argument("--plan", metavar="FILE", default=None,
                        help="placement for gpu-limited and the GPU metrics: a routelens plan, an SGLang expert-location "
                        "map or a vllm-ascend expert map")
    parser.add_argument("--gpus", type=positive_int, default=None,
                        help="without --plan: fit a routelens plan for this many GPUs on the trace (default 8); with an "
                        "SGLang --plan map: its EP size")
    parser.add_argument("--batch-tokens", type=positive_int, default=4096,
                        help="tokens per forward pass: the batch that shares expert capacity and over which the "
                        "GPU metrics are taken (default 4096)")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="model folder or hub id to read routing rules from, when the trace's manifest cannot "
                        "hold them (a selection bias: DeepSeek-V3, GLM4-MoE)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="new trace folder to write (default: RUN-<policy>-<setting> next to RUN)")
    add_json_argument(parser, "the comparison (per layer and overall)")
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..errors import InputError, TraceError
    from ..reroute.fitting import fit_plan
    from ..reroute.policy import FitData, fit_policy
    from ..reroute.registry import PolicyContext
    from ..reroute.simulate import default_output, reroute_trace, rules_from_trace
    from ..trace import Trace

    trace = Trace.open(args.run)
    trace.require_weights("reroute")
    if not trace.has_logits:
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
    spec, settings = policy_choice(args).resolve(
        PolicyContext(trace.num_experts, trace.top_k, plan.num_gpus, plan.slots_per_gpu))
    data = FitData(plan=plan)
    if spec.needs_coactivation:
        fit_trace = Trace.open(args.fit_trace) if args.fit_trace else trace
        if fit_trace.layers != trace.layers or fit_trace.num_experts != trace.num_experts:
            raise InputError(f"--fit-trace {fit_trace.path} has other layers or experts than {trace.path}")
        data = FitData(plan=plan, calibration={layer: fit_trace.topk_ids(layer) for layer in trace.layers},
                       num_experts=trace.num_experts)
    policy = fit_policy(spec, settings, data)
    rules = rules_from_trace(trace, _model_rules(args.model) if args.model else None)
    out = args.out or default_output(trace.path, policy)
    new_trace, comparison = reroute_trace(trace, policy, out, rules=rules, plan=plan,
                                          batch_tokens=args.batch_tokens, progress=not args.no_progress)
    report = {"trace": str(trace.path), "rerouted": str(new_trace.path), "policy": policy.name, **policy.record(),
              "plan": {"method": plan.method, "num_gpus": plan.num_gpus}, "batch_tokens": args.batch_tokens,
              **comparison}
    if write_json_output(args.json, report):
        return 0
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
