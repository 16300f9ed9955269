"""``routelens place RUN --gpus G --out PLAN``: fit an expert placement plan on a trace."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import add_workers_argument, positive_float, positive_int

METHOD_HELP = ("routelens: the optimizer (estimated All-to-All bottleneck; --objective layer adds compute); "
               "contiguous: experts in id order (the engines' default); random; greedy: load-balanced packing; "
               "eplb: DeepSeek EPLB; kahypar / kahypar-load: Mt-KaHyPar km1 with unit / load weights (needs mtkahypar)")


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


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "place",
        help="fit an expert placement plan (which GPU holds which experts and replicas) on a trace",
        description="Place every MoE layer's experts (and optional redundant replicas) on GPUs to cut the "
        "estimated dispatch + combine All-to-All and the straggler, fitted on the first --fit-fraction of the "
        "trace's tokens (the rest is kept for plan-eval). Writes a routelens plan (JSON) or the file SGLang "
        "(--init-expert-location) or vLLM (EPLB state) load.",
    )
    parser.add_argument("run", help="trace folder (routelens capture output)")
    parser.add_argument("--out", required=True, help="plan file to write (.json; .pt or .json for --format sglang/vllm)")
    parser.add_argument("--method", default="routelens", help=METHOD_HELP + " (default routelens)")
    parser.add_argument("--redundant", type=_non_negative_int, default=0,
                        help="redundant expert slots per layer (E + R must be a multiple of the GPU count)")
    parser.add_argument("--policy", default="nearest-then-least-loaded",
                        help="how a token picks among replicas: nearest-then-least-loaded (default), round-robin, first")
    parser.add_argument("--fit-fraction", type=float, default=0.5,
                        help="fit on this first fraction of the trace's tokens, keep the rest held out for plan-eval "
                        "(default 0.5; use 1 for a production plan and evaluate on another trace)")
    parser.add_argument("--format", choices=("json", "sglang", "vllm"), default="json",
                        help="json: routelens plan; sglang / vllm: the engine's mapping (the JSON plan is written "
                        "next to it as <out>.plan.json)")
    parser.add_argument("--num-layers", type=positive_int, default=None,
                        help="sglang: decoder layers of the model (default: from the trace)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (random baseline, optimizer subsample)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="optimizer wall-clock budget for all layers (default: run to convergence)")
    parser.add_argument("--max-fit-tokens", type=positive_int, default=None,
                        help="tokens per layer the optimizer scores on (default 32768, a seeded subsample above)")
    parser.add_argument("--seeds", default=None,
                        help="optimizer starting placements, comma-separated: kahypar, coact, lpt, mincut (default: "
                        "kahypar,coact,lpt when mtkahypar is installed and E <= 128, else coact,lpt); with several, "
                        "the one that holds up best on the last quarter of the fit tokens wins")
    parser.add_argument("--objective", choices=("a2a", "layer"), default="a2a",
                        help="optimizer: a2a minimises the estimated dispatch + combine bottleneck (default); layer "
                        "adds the busiest GPU's expert compute")
    parser.add_argument("--kicks", type=int, default=None, metavar="N",
                        help="optimizer: N restarts of the swap search from the best placement after a few random "
                        "swaps, each kept only if the estimate improves (default 16 when E <= 128, else 0)")
    parser.add_argument("--expert-groups", type=positive_int, default=1,
                        help="eplb: expert groups of the model for the hierarchical policy (DeepSeek-V3: 8)")
    add_workers_argument(parser)
    add_cluster_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..placement.export import export_plan
    from ..placement.optimizer import MAX_FIT_TOKENS
    from ..placement.place import PlaceSettings, fit_token_range, place
    from ..trace import Trace

    if args.gpus is None and args.gpus_per_node is None:
        raise InputError("give the cluster size: --gpus G, or --nodes N --gpus-per-node M")
    out = Path(args.out)
    if args.format != "json" and out.suffix not in (".pt", ".json"):
        raise InputError(f"--format {args.format} writes a .pt or .json file, got '{out.name}'")
    trace = Trace.open(args.run)
    topology = topology_from_args(args)
    cost = cost_from_args(args, trace, topology)
    settings = PlaceSettings(
        method=args.method, redundant=args.redundant, replica_policy=args.policy, seed=args.seed,
        time_budget_s=args.time_budget, max_fit_tokens=args.max_fit_tokens or MAX_FIT_TOKENS,
        seeds=tuple(s.strip() for s in args.seeds.split(",") if s.strip()) if args.seeds else None,
        num_groups=args.expert_groups, objective=args.objective, kicks=args.kicks,
    )
    settings.check()
    fit = fit_token_range(trace, args.fit_fraction)
    plan = place(trace, cost, settings, fit=fit, progress=not args.no_progress, workers=args.workers)
    if args.format == "json":
        written = [export_plan(plan, out, "json")]
    else:
        json_path = out.with_suffix(".plan.json")
        written = [export_plan(plan, out, args.format, num_layers=args.num_layers), plan.save(json_path)]
    mean = plan.meta["metrics"]["mean"]
    print(f"plan    {plan.method}: {plan.num_gpus} GPUs ({plan.num_nodes} node(s)), {plan.slots_per_gpu} slots per GPU, "
          f"{plan.num_redundant} redundant, {len(plan.layers)} layers, {plan.meta['seconds']:.1f} s")
    print(f"fit     tokens [{fit[0]}, {fit[1]}) of {trace.num_tokens:,}")
    print(f"metrics (fit tokens, mean over layers): {mean['gpus_per_token']:.2f} GPUs/token, busiest GPU receives "
          f"{mean['busiest_gpu_recv']:.3f} × T/G, compute max/mean {mean['compute_imbalance']:.3f}, "
          f"est. {mean['a2a_us']:.1f} µs All-to-All per layer")
    for path in written:
        print(f"wrote   {path}")
    if args.format == "sglang":
        print(f"serve   sglang ... --ep-size {plan.num_gpus} --ep-num-redundant-experts {plan.num_redundant} "
              f"--init-expert-location {out}")
    if fit[1] < trace.num_tokens:
        print(f"next    routelens plan-eval {args.run} {written[-1]}")
    return 0


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
