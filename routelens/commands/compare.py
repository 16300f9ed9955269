"""``routelens compare RUN_A RUN_B``: how routing differs between two runs of one architecture."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare the routing of two runs (two corpora or two checkpoints of one architecture)",
        description="Side-by-side metrics of two traces of the same architecture: per layer the load shift, the "
        "distance between co-activation distributions, role shares, modularity and community agreement, and the "
        "experts whose role changes most. Each run is analysed first if it has no current analysis.",
    )
    parser.add_argument("run_a", help="first trace folder")
    parser.add_argument("run_b", help="second trace folder")
    parser.add_argument("--layers", help="MoE layers to compare, e.g. 0-11 (default: all)")
    parser.add_argument("--top", type=int, default=10, help="experts listed whose role changes most (default 10)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    print(json.dumps(to_jsonable(result), indent=2) if args.json else format_comparison(result))
    return 0
