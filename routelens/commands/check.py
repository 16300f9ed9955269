"""``routelens check RUN``: validate a trace fully in one pass (manifest, ids, dtypes, shapes, hashes)."""

from __future__ import annotations

from ._args import add_json_argument, write_json_output


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a trace fully: manifest, expert ids vs E and k, dtypes, shapes, token counts, shard hashes",
        description="Read every shard of a trace once and check it: the manifest's fields, each shard's recorded "
        "sha256 and size, every array's dtype and shape, expert ids in [-1, E) and distinct per token, finite "
        "routing weights, and that each window's tokens lie together with increasing positions. Prints a short "
        "report and exits 0 when the trace is sound; otherwise prints the first problem and exits 2.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder written by routelens capture")
    add_json_argument(parser, "every finding")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import TraceError
    from ..trace_check import check_trace, format_check

    report = check_trace(args.run)
    to_stdout = write_json_output(args.json, report.to_json())
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        raise TraceError(report.problems[0] + more)
    if not to_stdout:
        print(format_check(report))
    return 0
