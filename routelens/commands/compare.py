"""``routelens compare RUN_A RUN_B``: how routing differs between two runs of one architecture."""

from __future__ import annotations

from ._args import add_json_argument, add_layers_argument, add_no_progress_argument, write_json_output


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare the routing of two runs (two corpora or two checkpoints of one architecture)",
        description="Side-by-side metrics of two traces of the same architecture: per layer the load shift, the "
        "distance between co-activation distributions, role shares, modularity and community agreement, and the "
        "experts whose role changes most. Each run is analysed first if it has no current analysis.",
    )
    parser.add_argument("run_a", metavar="RUN_A", help="first trace folder")
    parser.add_argument("run_b", metavar="RUN_B", help="second trace folder")
    add_layers_argument(parser, "MoE layers to compare")
    parser.add_argument("--top", type=int, default=10, help="experts listed whose role changes most (default 10)")
    add_json_argument(parser, "the comparison", bare_means_stdout=True)
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..graphs import compare_analyses, ensure_analysis, format_comparison
    from ..graphs.store import to_jsonable
    from ..trace import Trace

    if args.top < 0:
        raise InputError(f"--top must be >= 0, got {args.top}")
    a_trace, b_trace = Trace.open(args.run_a), Trace.open(args.run_b)
    a_trace.require_tokens("compare")
    b_trace.require_tokens("compare")
    if (a_trace.num_experts, a_trace.top_k, len(a_trace.layers)) != (b_trace.num_experts, b_trace.top_k, len(b_trace.layers)):
        raise InputError(
            f"cannot compare runs of different architectures: {args.run_a} has {len(a_trace.layers)} layers, "
            f"E={a_trace.num_experts}, k={a_trace.top_k}; {args.run_b} has {len(b_trace.layers)} layers, "
            f"E={b_trace.num_experts}, k={b_trace.top_k}"
        )
    a, _ = ensure_analysis(args.run_a, args.layers, progress=not args.no_progress)
    b, _ = ensure_analysis(args.run_b, args.layers, progress=not args.no_progress)
    result = compare_analyses(a, b, top_experts=args.top)
    if not write_json_output(args.json, to_jsonable(result)):
        print(format_comparison(result))
    return 0
