"""The argument types every command shares: a bad number is one argparse line and exit code 2, for each command."""

from __future__ import annotations

import argparse

import pytest

from routelens.cli import main
from routelens.commands._args import positive_float, positive_int


@pytest.mark.parametrize("text, value", [("1", 1), ("64", 64)])
def test_positive_int_accepts_whole_numbers_from_one(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text, message", [("0", "must be >= 1, got 0"), ("-3", "must be >= 1, got -3"),
                                           ("2.5", "'2.5' is not a whole number"), ("x", "'x' is not a whole number")])
def test_positive_int_refuses_with_the_reason(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        positive_int(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "fast"])
def test_positive_float_refuses_zero_negative_nan_inf_and_words(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)
    assert positive_float("1e-3") == pytest.approx(1e-3)


@pytest.mark.parametrize("argv, option", [
    (["capture", "--out", "OUT", "--max-tokens", "0"], "--max-tokens"),
    (["place", "RUN", "--gpus", "0", "--out", "p.json"], "--gpus"),
    (["place", "RUN", "--gpus", "8", "--intra-gbps", "nan", "--out", "p.json"], "--intra-gbps"),
    (["plan-eval", "RUN", "PLAN", "--gpus", "-2"], "--gpus"),
    (["reroute", "RUN", "--policy", "c2r", "--gpus", "zero"], "--gpus"),
    (["reroute-eval", "--max-tokens", "0"], "--max-tokens"),
    (["finetune", "--out", "OUT", "--policy", "c2r", "--steps", "0"], "--steps"),
])
def test_every_command_names_the_option_with_a_bad_number(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("routelens") and option in err and "Traceback" not in err
