"""Every command's parser against the conventions of docs/cli.md, and every old spelling still accepted for one release."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from routelens.cli import build_parser, main
from routelens.commands import finetune, reroute_eval
from routelens.commands._args import DeprecatedAlias, layer_selection, non_negative_int, positive_int
from routelens.reroute.registry import policy_names
from routelens.placement.objectives import DEFAULT_OBJECTIVE, objective_names


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = [action.dest for action in sub._choices_actions]  # what routelens --help lists
    return {name: sub.choices[name] for name in listed}


COMMANDS = command_parsers()


def visible_options(parser) -> dict[str, argparse.Action]:
    """Option string -> action, for the options ``--help`` shows."""
    return {s: a for a in parser._actions for s in a.option_strings
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)}


def hidden_aliases(parser) -> set[str]:
    old = {s for a in parser._actions if isinstance(a, DeprecatedAlias) for s in a.option_strings}
    bare_json = [a for a in parser._actions if "--json" in a.option_strings and a.nargs == "?"]
    return old | ({"--json (bare)"} if bare_json else set())


def test_every_command_is_listed():
    assert list(COMMANDS) == ["capture", "import", "info", "check", "analyze", "compare", "place", "plan-eval", "schedule-eval", "reroute", "reroute-eval",
                              "finetune", "bench", "app"]


def test_a_command_alias_parses_as_its_command_and_hides_from_help(capsys):
    parser = build_parser()
    argv = ["RUN", "--gpus", "8", "--every", "1024,4096", "--method", "eplb"]
    assert vars(parser.parse_args(["replay-schedule", *argv])) == {
        **vars(parser.parse_args(["schedule-eval", *argv])), "command": "replay-schedule"}
    assert capsys.readouterr().err == ""
    assert "replay-schedule" not in parser.format_help() and "schedule-eval" in parser.format_help()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_and_argument_has_help(name):
    parser = COMMANDS[name]
    assert parser.description and len(parser.description) > 40
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, DeprecatedAlias)):
            continue
        assert action.help and action.help is not argparse.SUPPRESS and len(action.help) > 10, \
            f"routelens {name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_positional_arguments_are_named_in_capitals(name):
    for action in COMMANDS[name]._actions:
        if not action.option_strings:
            assert action.metavar and action.metavar.isupper(), f"routelens {name} {action.dest}: metavar {action.metavar}"


ROUTING_POLICIES = set(policy_names())

# concept -> (option, what the option's action must satisfy). One table for every command: an option that
# exists anywhere means the same thing and takes the same kind of value.
CONVENTIONS = {
    "JSON output": ("--json", lambda a: a.metavar == "FILE" and a.nargs in (None, "?") and a.dest == "json"),
    "output path": ("--out", lambda a: a.metavar in ("FILE", "DIR") and a.dest == "out"),
    "layer selection": ("--layers", lambda a: a.type is layer_selection and a.metavar == "SPEC"),
    "progress bars": ("--no-progress", lambda a: a.nargs == 0 and a.help == "hide progress bars"),
    "random seed": ("--seed", lambda a: a.type is int and a.default == 0 and a.help.startswith("random seed")),
    "GPU count": ("--gpus", lambda a: a.type is positive_int),
    "routing policy": ("--policy", lambda a: a.dest == "policy" and (
        set(a.choices or ()) <= ROUTING_POLICIES if a.choices else all(p in a.help for p in ROUTING_POLICIES))),
    "replica policy": ("--replica-policy", lambda a: a.dest == "replica_policy"),
    "C2R group size": ("--group-size", lambda a: a.dest == "top_t" and a.metavar.startswith("T")),
    "routing weights": ("--routing-weights", lambda a: "renorm" in (a.metavar or str(a.choices))),
    "model": ("--model", lambda a: a.metavar == "MODEL"),
    "how much text": ("--max-tokens", lambda a: a.type is positive_int),
    "fit share": ("--fit-fraction", lambda a: a.type is float),
    "worker processes": ("--workers", lambda a: a.type is non_negative_int and a.default == 0 and a.metavar == "N"),
    "windows per pass": ("--batch-size", lambda a: a.type is positive_int and a.help.startswith("windows per")),
    "tokens per pass": ("--batch-tokens", lambda a: a.type is positive_int and a.help.startswith("tokens ")),
    "optimizer objective": ("--objective", lambda a: list(a.choices) == list(objective_names()) and a.default == DEFAULT_OBJECTIVE),
}

# Commands that write a result of their own take --out; those that only read or report do not.
WRITES = {"capture", "import", "place", "schedule-eval", "reroute", "reroute-eval", "finetune", "bench"}
# Commands that report numbers take --json FILE.
REPORTS = {"import", "info", "check", "analyze", "compare", "plan-eval", "schedule-eval", "reroute", "reroute-eval", "bench"}
# Spellings that now mean nothing else and must not be shown by any command.
RETIRED = {"--weights", "--top-t", "--out-dir", "--plans", "--max-windows", "--calib", "--calib-fraction", "--seeds",
           "--train-windows", "--calib-windows", "--eval-windows"}


@pytest.mark.parametrize("concept", list(CONVENTIONS))
def test_each_concept_has_one_option_with_one_meaning(concept):
    option, holds = CONVENTIONS[concept]
    users = [name for name, parser in COMMANDS.items() if option in visible_options(parser)]
    assert users, f"no command has {option}"
    for name in users:
        assert holds(visible_options(COMMANDS[name])[option]), f"routelens {name} {option} breaks '{concept}'"


def test_out_and_json_exist_where_a_command_writes_or_reports():
    for name, parser in COMMANDS.items():
        options = visible_options(parser)
        assert ("--out" in options) == (name in WRITES), name
        assert ("--json" in options) == (name in REPORTS), name
        assert not RETIRED & set(options), f"routelens {name} shows {RETIRED & set(options)}"


def test_an_option_name_stores_into_one_place_in_every_command():
    dests: dict[str, set[str]] = {}
    for parser in COMMANDS.values():
        for option, action in visible_options(parser).items():
            dests.setdefault(option, set()).add(action.dest)
    assert {o: d for o, d in dests.items() if len(d) > 1} == {}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_json_takes_a_file_and_dash_means_stdout(name):
    parser = COMMANDS[name]
    positionals = {"compare": ["A", "B"], "plan-eval": ["RUN", "PLAN"], "reroute": ["RUN", "--policy", "c2r"],
                   "reroute-eval": [], "import": ["sglang", "dump.pt", "--model", "M", "--out", "R"]}.get(name, ["RUN"])
    assert parser.parse_args([*positionals, "--json", "out.json"]).json == "out.json"
    assert parser.parse_args([*positionals, "--json", "-"]).json == "-"
    assert parser.parse_args(positionals).json is None


def test_layers_syntax_errors_are_argparse_errors_in_every_command(capsys):
    for argv in (["analyze", "RUN"], ["compare", "A", "B"], ["bench", "RUN"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--layers", "1-x"])
        assert exit_info.value.code == 2
        assert "--layers" in capsys.readouterr().err.strip().splitlines()[-1]


# (command, old spelling) -> (argv with the old spelling, argv with the new one). Both must parse to the same thing.
OLD_AND_NEW = {
    ("info", "--json (bare)"): (["info", "RUN", "--json"], ["info", "RUN", "--json", "-"]),
    ("analyze", "--json (bare)"): (["analyze", "RUN", "--json"], ["analyze", "RUN", "--json", "-"]),
    ("compare", "--json (bare)"): (["compare", "A", "B", "--json"], ["compare", "A", "B", "--json", "-"]),
    ("analyze", "--top-t"): (["analyze", "RUN", "--top-t", "3"], ["analyze", "RUN", "--group-size", "3"]),
    ("place", "--policy"): (["place", "RUN", "--out", "p.json", "--policy", "first"],
                            ["place", "RUN", "--out", "p.json", "--replica-policy", "first"]),
    ("place", "--seeds"): (["place", "RUN", "--out", "p.json", "--seeds", "coact"],
                           ["place", "RUN", "--out", "p.json", "--starts", "coact"]),
    ("reroute", "--top-t"): (["reroute", "RUN", "--policy", "c2r", "--top-t", "4"],
                             ["reroute", "RUN", "--policy", "c2r", "--group-size", "4"]),
    ("reroute", "--calib"): (["reroute", "RUN", "--policy", "c2r", "--calib", "OTHER"],
                             ["reroute", "RUN", "--policy", "c2r", "--fit-trace", "OTHER"]),
    ("reroute", "--weights"): (["reroute", "RUN", "--policy", "c2r", "--weights", "keep"],
                               ["reroute", "RUN", "--policy", "c2r", "--routing-weights", "keep"]),
    ("reroute-eval", "--top-t"): (["reroute-eval", "--top-t", "4,8"], ["reroute-eval", "--group-size", "4,8"]),
    ("reroute-eval", "--weights"): (["reroute-eval", "--weights", "keep"], ["reroute-eval", "--routing-weights", "keep"]),
    ("reroute-eval", "--calib-fraction"): (["reroute-eval", "--calib-fraction", "0.5"],
                                           ["reroute-eval", "--fit-fraction", "0.5"]),
    ("reroute-eval", "--max-windows"): (["reroute-eval", "--seq-len", "64", "--max-windows", "12"],
                                        ["reroute-eval", "--seq-len", "64", "--max-tokens", "768"]),
    ("finetune", "--top-t"): (["finetune", "--out", "O", "--policy", "c2r", "--top-t", "4"],
                              ["finetune", "--out", "O", "--policy", "c2r", "--group-size", "4"]),
    ("finetune", "--weights"): (["finetune", "--out", "O", "--policy", "c2r", "--weights", "keep"],
                                ["finetune", "--out", "O", "--policy", "c2r", "--routing-weights", "keep"]),
    ("finetune", "--train-windows"): (["finetune", "--out", "O", "--policy", "c2r", "--seq-len", "16", "--train-windows", "8"],
                                      ["finetune", "--out", "O", "--policy", "c2r", "--seq-len", "16", "--train-tokens", "128"]),
    ("finetune", "--calib-windows"): (["finetune", "--out", "O", "--policy", "c2r", "--seq-len", "16", "--calib-windows", "2"],
                                      ["finetune", "--out", "O", "--policy", "c2r", "--seq-len", "16", "--fit-tokens", "32"]),
    ("finetune", "--eval-windows"): (["finetune", "--out", "O", "--policy", "c2r", "--seq-len", "16", "--eval-windows", "3"],
                                     ["finetune", "--out", "O", "--policy", "c2r", "--seq-len", "16", "--eval-tokens", "48"]),
    ("bench", "--plans"): (["bench", "RUN", "--plans", "contiguous", "p.json"], ["bench", "RUN", "contiguous", "p.json"]),
    ("bench", "--weights"): (["bench", "RUN", "--weights", "data/demo-moe"], ["bench", "RUN", "--model", "data/demo-moe"]),
    ("bench", "--out-dir"): (["bench", "RUN", "--out-dir", "D"], ["bench", "RUN", "--out", "D"]),
}

# What each command finally uses, where an old spelling gives a value the command converts (windows -> tokens).
EFFECTIVE = {
    "reroute-eval": lambda ns: {**vars(ns), "max_tokens": reroute_eval.text_tokens(ns), "max_windows": None},
    "finetune": lambda ns: {**{k: v for k, v in vars(ns).items() if not k.endswith(("_windows", "_tokens"))},
                            "windows": finetune.window_counts(ns)},
}


def test_the_table_covers_every_old_spelling():
    found = {(name, old) for name, parser in COMMANDS.items() for old in hidden_aliases(parser)}
    assert found == set(OLD_AND_NEW)


@pytest.mark.parametrize("key", list(OLD_AND_NEW), ids=lambda key: f"{key[0]} {key[1]}")
def test_an_old_spelling_works_prints_one_note_and_hides_from_help(key, capsys):
    name, old = key
    old_argv, new_argv = OLD_AND_NEW[key]
    parser = build_parser()
    new = parser.parse_args(new_argv)
    assert capsys.readouterr().err == ""
    before = parser.parse_args(old_argv)
    note = capsys.readouterr().err.strip().splitlines()
    effective = EFFECTIVE.get(name, vars)
    assert effective(before) == effective(new)
    assert len(note) == 1 and note[0].startswith(f"routelens {name}: warning: ") and "deprecated" in note[0]
    if old == "--json (bare)":
        spelled = "--json -"
    elif old == "--plans":
        spelled = "PLAN arguments after RUN"
    else:
        spelled = next(a for a in new_argv if a.startswith("--") and a not in old_argv)
    assert old.split()[0] in note[0] and f"use {spelled}" in note[0]
    if old != "--json (bare)":
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", COMMANDS[name].format_help())
    else:
        assert "--json FILE" in COMMANDS[name].format_help() and "[FILE]" not in COMMANDS[name].format_help()


def test_bench_old_order_that_swallowed_the_run_is_a_one_line_error(synthetic_trace, capsys):
    run = str(synthetic_trace.path)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--plans", "contiguous", "p.json", run, "--gpus", "2"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--plans took the trace folder {run} for a plan" in last and f"routelens bench {run} contiguous p.json" in last


def test_json_file_keeps_the_text_report_and_dash_prints_only_json(synthetic_trace, tmp_path, capsys):
    run = str(synthetic_trace.path)
    assert main(["info", run, "--json", str(tmp_path / "info.json")]) == 0
    text = capsys.readouterr().out
    assert "MoE layers" in text and json.loads((tmp_path / "info.json").read_text())["num_tokens"] == 4096
    assert main(["info", run, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["num_tokens"] == 4096
    assert main(["info", run, "--json"]) == 0  # the old switch: stdout, and a note on stderr
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_tokens"] == 4096 and "use --json -" in captured.err
