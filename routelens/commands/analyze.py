"""``routelens analyze RUN``: co-activation graphs, collaboration vs specialization, communities.

Writes ``RUN/analysis/`` (see docs/graphs.md) and prints one row per layer. A current analysis
(same trace fingerprint and parameters) is reused, not recomputed.
"""

from __future__ import annotations

import json

from ._args import add_workers_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="per-layer expert load, co-activation, collaboration vs specialization, communities",
        description="Analyse a trace: per MoE layer the expert load and its imbalance, the co-activation graph "
        "(counts, P(j|i), Jaccard, lift/PMI), each expert's collaboration and specialization (C2R), Louvain "
        "communities, cross-layer transitions and token specialization. Results go to RUN/analysis/ and are "
        "recomputed only when the trace changes.",
    )
    parser.add_argument("run", help="trace folder written by routelens capture")
    parser.add_argument("--layers", help="MoE layers to analyse, e.g. 0-11 or 0,2,5-7 (default: all)")
    parser.add_argument("--export", metavar="FORMATS",
                        help="also write each layer's graph: graphml, gexf, json (comma-separated) or all")
    parser.add_argument("--top-t", type=int, default=None,
                        help="C2R group size T for the specialization score (default: k-1)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="Top-T share from which an expert counts as specialized (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="Louvain seed (default 0)")
    parser.add_argument("--resolution", type=float, default=1.0, help="Louvain resolution (default 1.0)")
    parser.add_argument("--tokenizer", help="tokenizer folder or tokenizer.json (default: the trace's model folder, if local)")
    parser.add_argument("--force", action="store_true", help="recompute even if a current analysis exists")
    add_workers_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the per-layer summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..graphs import ensure_analysis, format_layer_table
    from ..graphs.communities import parse_export_formats
    from ..graphs.store import to_jsonable

    if not 0.0 < args.threshold <= 1.0:
        raise InputError(f"--threshold must lie in (0, 1], got {args.threshold}")
    if args.resolution <= 0:
        raise InputError(f"--resolution must be > 0, got {args.resolution}")
    exports = parse_export_formats(args.export)
    analysis, computed = ensure_analysis(
        args.run, args.layers, force=args.force, exports=exports, progress=not args.no_progress,
        top_t=args.top_t, threshold=args.threshold, seed=args.seed, resolution=args.resolution,
        tokenizer_path=args.tokenizer, workers=args.workers,
    )
    if args.json:
        print(json.dumps(to_jsonable({"path": str(analysis.path), "computed": computed,
                                  "per_layer": analysis.layer_summaries}), indent=2))
        return 0
    print(format_layer_table(analysis))
    how = f"computed in {analysis.meta.get('wall_s', 0):.1f} s" if computed else "up to date: reused; --force recomputes"
    print(f"results   {analysis.path}  ({how})")
    if exports:
        print(f"graphs    {analysis.path / 'graphs'}/layerNNN.{{{','.join(exports)}}}")
    return 0
