"""``routelens check RUN``: validate a trace fully in one pass (manifest, ids, dtypes, shapes, hashes)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a trace fully: manifest, expert ids vs E and k, dtypes, shapes, token counts, shard hashes",
        description="Read every shard of a trace once and check it: the manifest's fields, each shard's recorded "
        "sha256 and size, every array's dtype and shape, expert ids in [-1, E) and distinct per token, finite "
        "routing weights, and that each window's tokens lie together with increasing positions. Prints a short "
        "report and exits 0 when the trace is sound; otherwise prints the first problem and exits 2.",
    )
    parser.add_argument("run", help="trace folder")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write every finding as JSON to FILE ('-' for stdout)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import TraceError
    from ..io import atomic_write_json
    from ..trace_check import check_trace, format_check

    report = check_trace(args.run)
    if args.json == "-":
        print(json.dumps(report.to_json(), indent=2))
    elif args.json:
        atomic_write_json(args.json, report.to_json())
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        raise TraceError(report.problems[0] + more)
    if args.json != "-":
        print(format_check(report))
    return 0
