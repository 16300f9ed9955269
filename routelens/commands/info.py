"""``routelens info RUN``: what a trace holds (model, family, layers, experts, k, tokens, load)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="summarise a trace: model, layers, experts, k, tokens, capture speed, per-layer load",
        description="Summarise a capture run: model, family, MoE layers, experts, top-k, tokens, sequences, "
        "router logits, capture tokens/s, and the expert load imbalance (max/mean) of every layer.",
    )
    parser.add_argument("run", help="trace folder written by routelens capture")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..capture.summary import format_summary, summarize_trace
    from ..trace import Trace

    trace = Trace.open(args.run, allow_incomplete=True)
    summary = summarize_trace(trace)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
