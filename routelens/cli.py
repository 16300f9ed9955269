"""The ``routelens`` command line: a thin shell over the library's stage functions.

Each sub-command lives in ``routelens/commands/<name>.py`` and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func(args) -> int``. User errors (``RoutelensError``, bad
files, a full disk) print one line ``routelens: error: ...`` and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .commands import (analyze, app, bench, capture, check, compare, finetune, import_, info, place, plan_eval, reroute,
                       reroute_eval, schedule_eval)
from .commands._args import HelpFormatter
from .errors import RoutelensError

# Sub-command modules, in the order ``routelens --help`` lists them.
COMMANDS = [capture, import_, info, check, analyze, compare, place, plan_eval, schedule_eval, reroute, reroute_eval,
            finetune, bench, app]

# Other names a sub-command answers to, hidden from ``routelens --help`` (docs/cli.md names each command
# once): the name issue 17 proposed for schedule-eval, which the README's overview uses.
COMMAND_ALIASES = {"replay-schedule": "schedule-eval"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routelens",
        description="See how Mixture-of-Experts models route tokens, and turn it into faster expert parallelism. "
        "The options mean the same in every command: see docs/cli.md.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"routelens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    for alias, name in COMMAND_ALIASES.items():
        sub.choices[alias] = sub.choices[name]  # parsed as that command; --help lists only its own name
    for command_parser in sub.choices.values():
        command_parser.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RoutelensError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # the reader went away (``routelens info RUN | head``): a normal end, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush does not fail again
        return 0
    except KeyboardInterrupt:
        return _fail("interrupted (a capture can continue with --resume)", code=130)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return _fail(f"disk full while writing {exc.filename or 'output'}; earlier results are untouched")
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


def _fail(message: str, code: int = 2) -> int:
    print(f"routelens: error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
