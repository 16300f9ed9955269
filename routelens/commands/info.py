"""``routelens info RUN``: what a trace holds (model, family, layers, experts, k, tokens, load)."""

from __future__ import annotations

from ._args import add_json_argument, write_json_output


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="summarise a trace: model, layers, experts, k, tokens, capture speed, per-layer load",
        description="Summarise a capture run: model, family, MoE layers, experts, top-k, tokens, sequences, "
        "router logits, capture tokens/s, and the expert load imbalance (max/mean) of every layer.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder written by routelens capture")
    add_json_argument(parser, "the summary", bare_means_stdout=True)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..capture.summary import format_summary, summarize_trace
    from ..trace import Trace

    trace = Trace.open(args.run, allow_incomplete=True)
    summary = summarize_trace(trace)
    if not write_json_output(args.json, summary):
        print(format_summary(summary))
    return 0
