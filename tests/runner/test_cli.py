"""``routelens bench`` input errors: one line, exit code 2, before any process starts."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.cli import main
from routelens.plan import Plan


def _run(capsys, *argv):
    code = main(["bench", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_plan_for_other_gpu_count_is_refused(synthetic_trace, tmp_path, capsys):
    plan = Plan({l: np.arange(16).reshape(2, 8) for l in synthetic_trace.layers}, 16)
    plan.save(tmp_path / "p2.json")
    code, err = _run(capsys, synthetic_trace.path, tmp_path / "p2.json", "--gpus", 4, "--backend", "gloo")
    assert code == 2 and err.count("\n") == 0
    assert "is for 2 GPUs" in err and "on 4" in err


@pytest.mark.parametrize("plans,extra,message", [
    (["nope.json"], [], "plan file not found"),
    ([], ["--layers", "model.layers.9.mlp.gate"], "not in the trace"),
    ([], ["--layers", "0-9"], "out of bounds"),
    (["contiguous", "contiguous"], [], "listed twice"),
])
def test_bad_arguments_fail_with_one_line(synthetic_trace, capsys, plans, extra, message):
    code, err = _run(capsys, synthetic_trace.path, *plans, "--gpus", 2, "--backend", "gloo", *extra)
    assert code == 2 and message in err and err.count("\n") == 0


@pytest.mark.parametrize("extra,option", [(["--tokens-per-rank", "0"], "--tokens-per-rank"),
                                          (["--repeats", "0"], "--repeats"), (["--warmup", "-1"], "--warmup"),
                                          (["--layers", "1-x"], "--layers")])
def test_bad_numbers_are_argparse_errors_naming_the_option(synthetic_trace, capsys, extra, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(synthetic_trace.path), "--gpus", "2", *extra])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_trace_and_wrong_expert_count(tmp_path, synthetic_trace, capsys):
    code, err = _run(capsys, tmp_path / "none", "--gpus", 2, "--backend", "gloo")
    assert code == 2 and "no trace folder" in err
    plan = Plan({l: np.arange(8).reshape(2, 4) for l in synthetic_trace.layers}, 8)
    plan.save(tmp_path / "p8.json")
    code, err = _run(capsys, synthetic_trace.path, tmp_path / "p8.json", "--backend", "gloo")
    assert code == 2 and "8 experts" in err


def test_gpus_default_to_the_plan_and_nccl_needs_gpus(synthetic_trace, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU message")
    code, err = _run(capsys, synthetic_trace.path, "--gpus", 2, "--backend", "nccl")
    assert code == 2 and "needs 2 CUDA devices" in err
    code, err = _run(capsys, synthetic_trace.path, "--backend", "gloo")
    assert code == 2 and "pass --gpus" in err
