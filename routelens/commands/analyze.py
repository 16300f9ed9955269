"""``routelens analyze RUN``: co-activation graphs, collaboration vs specialization, communities.

Writes ``RUN/analysis/`` (see docs/graphs.md) and prints one row per layer. A current analysis
(same trace fingerprint and parameters) is reused, not recomputed.
"""

from __future__ import annotations

from ._args import (add_deprecated_alias, add_json_argument, add_layers_argument, add_no_progress_argument,
                    add_workers_argument, positive_int, write_json_output)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="per-layer expert load, co-activation, collaboration vs specialization, communities",
        description="Analyse a trace: per MoE layer the expert load and its imbalance, the co-activation graph "
        "(counts, P(j|i), Jaccard, lift/PMI), each expert's collaboration and specialization (C2R), Louvain "
        "communities, cross-layer transitions and token specialization. Results go to RUN/analysis/ and are "
        "recomputed only when the trace changes.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder written by routelens capture")
    add_layers_argument(parser, "MoE layers to analyse")
    parser.add_argument("--export", metavar="FORMATS",
                        help="also write each layer's graph: graphml, gexf, json (comma-separated) or all")
    parser.add_argument("--group-size", dest="top_t", type=positive_int, default=None, metavar="T",
                        help="C2R's group size T (Top-T collaborators) for the specialization score (default: k-1)")
    add_deprecated_alias(parser, "--top-t", "--group-size")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="Top-T share from which an expert counts as specialized (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of Louvain (default 0)")
    parser.add_argument("--resolution", type=float, default=1.0, help="Louvain resolution (default 1.0)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder or tokenizer.json for token strings (default: RUN/tokenizer.json, the copy "
                        "the capture wrote; older and imported runs need this to show tokens)")
    parser.add_argument("--force", action="store_true", help="recompute even if a current analysis exists")
    add_workers_argument(parser)
    add_json_argument(parser, "the per-layer summary", bare_means_stdout=True)
    add_no_progress_argument(parser)
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
    if write_json_output(args.json, to_jsonable({"path": str(analysis.path), "computed": computed,
                                                  "per_layer": analysis.layer_summaries})):
        return 0
    print(format_layer_table(analysis))
    how = f"computed in {analysis.meta.get('wall_s', 0):.1f} s" if computed else "up to date: reused; --force recomputes"
    print(f"results   {analysis.path}  ({how})")
    if exports:
        print(f"graphs    {analysis.path / 'graphs'}/layerNNN.{{{','.join(exports)}}}")
    return 0
