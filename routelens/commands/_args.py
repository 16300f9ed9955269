"""What every command's options share: argument types, ``--json``/``--layers``, and deprecated spellings.

The conventions themselves (one option per concept, one meaning per option) are listed in docs/cli.md.
Argument types raise ``argparse.ArgumentTypeError``: argparse reports them as one line and exits with 2.
"""

from __future__ import annotations

import argparse
import math
import sys

from ..errors import InputError
from ..io import STDOUT, write_json_output  # noqa: F401 (the commands import them from here)
from ..layer_selection import parse_layer_spec


# --------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """A whole number >= 1 (token counts, GPUs, windows, steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (redundant slots, warm-up repeats, restarts; ``--workers 0`` = every core)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (bandwidths, factors, budgets); NaN and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def layer_selection(text: str) -> str:
    """``--layers``: checks the syntax of :mod:`routelens.layer_selection` now, returns the text unchanged.

    Whether the layers exist is checked against the trace when the command opens it.
    """
    try:
        parse_layer_spec(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


LAYERS_HELP = ("indices and ranges, e.g. 0,2,5-7 (-1 is the last MoE layer), or router paths "
               "(model.layers.3.mlp.gate); default: all")


def add_layers_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--layers SPEC``, the same syntax in every command (:mod:`routelens.layer_selection`)."""
    parser.add_argument("--layers", type=layer_selection, default=None, metavar="SPEC", help=f"{what}: {LAYERS_HELP}")


def add_no_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: processes working on layers at once (default 0: every core; :mod:`routelens.parallel`)."""
    parser.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                        help="processes working on layers at once (default 0: one per CPU core; 1: no extra processes)")


# --------------------------------------------------------------------------- --json FILE ('-' = stdout)
# STDOUT and write_json_output live in routelens.io (the runner writes its report with them too)
_BARE = object()  # what a bare --json (no FILE) parses to before the action turns it into STDOUT


class _JsonTarget(argparse.Action):
    """``--json FILE``; a bare ``--json`` (the spelling of routelens 0.x) still means stdout, with a note."""

    shows_one_value = True  # HelpFormatter shows "--json FILE", never the deprecated bare form

    def __call__(self, parser, namespace, values, option_string=None):
        if values is _BARE:
            deprecation_note(parser.prog, "a bare --json", f"--json {STDOUT}")
            values = STDOUT
        setattr(namespace, self.dest, values)


def add_json_argument(parser: argparse.ArgumentParser, what: str, *, bare_means_stdout: bool = False) -> None:
    """``--json FILE``: write ``what`` as JSON to FILE; ``-`` prints it to stdout instead of the text report.

    Args:
        bare_means_stdout: also accept ``--json`` without a value (meaning ``-``) for one release, with a
            deprecation note: ``info``, ``analyze`` and ``compare`` had a ``--json`` switch.
    """
    help_text = (f"write {what} as JSON to FILE ('{STDOUT}': print the JSON to stdout instead of the text "
                 "report)")
    if bare_means_stdout:
        parser.add_argument("--json", metavar="FILE", nargs="?", const=_BARE, default=None, action=_JsonTarget,
                            help=help_text)
    else:
        parser.add_argument("--json", metavar="FILE", default=None, help=help_text)


# --------------------------------------------------------------------------- deprecated spellings
def deprecation_note(prog: str, old: str, new: str) -> None:
    """The one line a deprecated spelling prints on stderr, naming the spelling that replaces it."""
    print(f"{prog}: warning: {old} is deprecated and goes away in the next release; use {new}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old spelling, accepted for one release: hidden from ``--help``, a note on stderr when used.

    It stores into the new option's ``dest`` (or its own ``dest`` when the value needs converting,
    e.g. windows into tokens); ``extend=True`` appends to a list instead (``bench --plans``).
    """

    def __init__(self, option_strings, dest, new_spelling: str, extend: bool = False, **kwargs):
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)
        self.new_spelling = new_spelling
        self.extend = extend

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation_note(parser.prog, option_string, self.new_spelling)
        if self.extend:
            values = [*(getattr(namespace, self.dest, None) or []), *values]
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser, old: str, new: str, *, action: type[DeprecatedAlias] = DeprecatedAlias,
                         **kwargs) -> None:
    """Accept ``old`` as a hidden spelling of the option ``new`` (already added to ``parser``) for one release.

    Without ``kwargs`` the alias takes what ``new`` takes (type, choices, nargs) and stores into its dest.
    With them (``dest=``, ``type=``, ...) it is its own option whose value the command converts; ``new``
    is then only the spelling the note names.
    """
    if not kwargs:
        target = parser._option_string_actions[new]  # argparse keeps options here for every group too
        kwargs = {"dest": target.dest, "type": target.type, "choices": target.choices, "nargs": target.nargs,
                  "metavar": target.metavar, "default": argparse.SUPPRESS}
    parser.add_argument(old, action=action, new_spelling=new, **kwargs)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, showing ``--json FILE`` where the bare ``--json`` is still (quietly) accepted."""

    def _format_args(self, action, default_metavar):
        if getattr(action, "shows_one_value", False):
            return self._metavar_formatter(action, default_metavar)(1)[0]
        return super()._format_args(action, default_metavar)


# --------------------------------------------------------------------------- re-routing policies
def add_policy_arguments(parser: argparse.ArgumentParser, *, sweep: bool, what: str = "re-routing policy") -> None:
    """``--policy`` and every policy option of :data:`routelens.reroute.options.OPTIONS`, as docs/cli.md names them.

    Args:
        sweep: ``reroute-eval``: ``--policy`` repeatable or comma-separated (default: all) and every
            option a comma-separated list to sweep; else one policy (required) and one value each.
        what: how ``--policy`` is described (one run).
    """
    from ..reroute.options import OPTIONS
    from ..reroute.registry import get_policy, policy_names

    names = policy_names()
    if sweep:
        parser.add_argument("--policy", action="append", default=None, metavar="POLICY",
                            help=f"policy to sweep, repeatable or comma-separated ({', '.join(names)}; default: all)")
    else:
        parser.add_argument("--policy", required=True, choices=names, metavar="POLICY",
                            help=f"{what}: " + "; ".join(f"{name}: {get_policy(name).summary}" for name in names))
    for option in OPTIONS:
        if sweep:
            parser.add_argument(option.flag, dest=option.dest, default=None, metavar=f"{option.metavar}[,...]",
                                help=f"{option.help}; values to sweep (default {option.sweep_default})")
        else:
            kind = dict(choices=option.choices) if option.choices else dict(type=_option_type(option))
            parser.add_argument(option.flag, dest=option.dest, default=None, metavar=option.metavar,
                                help=f"{option.help} (default {option.default})", **kind)
        for old in option.old_flags:
            add_deprecated_alias(parser, old, option.flag)


def _option_type(option):
    """An argparse type that parses one value of ``option`` (its errors become argparse's one line)."""

    def parse(text: str):
        try:
            return option.parse(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.flag
    return parse


def policy_choice(args: argparse.Namespace):
    """The :class:`~routelens.reroute.registry.PolicyChoice` of a command with ``add_policy_arguments(sweep=False)``."""
    from ..reroute.options import OPTIONS
    from ..reroute.registry import PolicyChoice

    return PolicyChoice(args.policy, {option.field: getattr(args, option.dest) for option in OPTIONS})


def policy_sweep(args: argparse.Namespace):
    """The :class:`~routelens.reroute.registry.PolicySweep` of ``add_policy_arguments(sweep=True)``.

    Raises:
        InputError: an unknown policy, or a value an option does not take (one line, before any model loads).
    """
    from ..reroute.options import OPTIONS
    from ..reroute.registry import PolicySweep

    names = [name.strip() for value in args.policy or () for name in value.split(",") if name.strip()]
    values = {option.field: option.parse_list(getattr(args, option.dest)) for option in OPTIONS}
    return PolicySweep(tuple(dict.fromkeys(names)), {field: given for field, given in values.items() if given})
