"""BenchConfig: one frozen config from the command line or a JSON file, the same from either parser."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.cli import build_parser
from routelens.errors import InputError
from routelens.runner.bench import config_from_argv
from routelens.runner.config import (
    BACKENDS,
    COMM_PRIORITIES,
    DTYPES,
    EXPERT_KERNELS,
    LAYOUT_KERNELS,
    BenchConfig,
    option_fields,
)

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12)
configs = st.builds(
    BenchConfig,
    run=names,
    plans=st.lists(names, min_size=1, max_size=3).map(tuple),
    backend=st.none() | st.sampled_from(BACKENDS),
    hidden_size=st.none() | st.integers(1, 1 << 20),
    tokens_per_rank=st.none() | st.integers(1, 1 << 20),
    layers=st.none() | st.sampled_from(["0", "0,2,5-7", "-4--1", "model.layers.3.mlp.gate"]),
    dtype=st.none() | st.sampled_from(DTYPES),
    expert_kernel=st.sampled_from(EXPERT_KERNELS),
    layout_kernel=st.sampled_from(LAYOUT_KERNELS),
    repeats=st.integers(1, 100),
    warmup=st.integers(0, 10),
    sync=st.booleans(),
    comm_priority=st.sampled_from(COMM_PRIORITIES),
    calibrate_max_mib=st.floats(1e-3, 1e4),
    seed=st.integers(-(1 << 40), 1 << 40),
    json=st.none() | st.just("-") | names,
)


@settings(max_examples=60, deadline=None)
@given(configs)
def test_a_config_survives_its_json_file_unchanged(config):
    text = json.dumps(config.to_json())
    assert BenchConfig.from_json(json.loads(text)) == config


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(BenchConfig)] + ["extra"]),
                       st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | names
                       | st.lists(names, max_size=2), max_size=8))
def test_a_hostile_config_file_is_a_config_or_one_input_error(fields):
    data = {"format": "routelens-bench-config", "version": 1, **fields}
    try:
        config = BenchConfig.from_json(data)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert config.repeats >= 1 and config.warmup >= 0 and config.plans and all(config.plans)


@pytest.mark.parametrize("change, message", [
    ({"repeats": 0}, "--repeats must be >= 1"),
    ({"tokens_per_rank": -5}, "--tokens-per-rank must be >= 1"),
    ({"layout_kernel": "fast"}, "--layout-kernel must be one of"),
    ({"hidden_size": True}, "--hidden-size: expected int"),
    ({"plans": []}, "no plan to replay"),
    ({"layers": "1-x"}, "layer selection"),
    ({"calibrate_max_mib": float("nan")}, "--calibrate-max-mib must be a positive number"),
])
def test_a_bad_value_names_the_option(change, message):
    with pytest.raises(InputError, match=message):
        BenchConfig.from_json({**BenchConfig(run="runs/x").to_json(), **change})


def test_a_config_is_frozen_and_other_files_are_refused(tmp_path):
    config = BenchConfig(run="runs/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.repeats = 2  # type: ignore[misc]
    (tmp_path / "plan.json").write_text('{"format": "routelens-plan"}')
    with pytest.raises(InputError, match="not a routelens bench config"):
        BenchConfig.load(tmp_path / "plan.json")
    with pytest.raises(InputError, match="unknown field 'gpus'"):
        BenchConfig.from_json({**config.to_json(), "gpus": 4})


ARGVS = [
    ["runs/demo"],
    ["runs/demo", "contiguous", "plans/a.json", "--backend", "gloo", "--hidden-size", "4096",
     "--tokens-per-rank", "32768", "--repeats", "7", "--warmup", "2", "--overlap", "--check", "--no-sync",
     "--layers=-2--1", "--model", "data/demo-moe", "--dtype", "float32", "--expert-kernel", "loop",
     "--layout-kernel", "reference", "--comm-priority", "high", "--calibrate-max-mib", "2.5", "--seed", "-3",
     "--out", "out/b", "--json", "-", "--no-progress"],
    ["runs/demo", "--calibrate", "--intermediate-size", "96", "--shortcut-intermediate", "128"],
]


@pytest.mark.parametrize("argv", ARGVS)
def test_routelens_bench_and_the_torchrun_entry_point_build_the_same_config(argv):
    from routelens.commands.bench import bench_config

    args = build_parser().parse_args(["bench", *argv])
    assert bench_config(args) == config_from_argv(argv)


def test_every_config_option_is_a_routelens_bench_option_with_that_field_as_dest():
    bench = next(a for a in build_parser()._actions if a.dest == "command").choices["bench"]
    options = {s: a for a in bench._actions for s in a.option_strings}
    for f, flag in option_fields():
        assert flag in options, f"routelens bench lacks {flag}"
        assert options[flag].dest == flag.lstrip("-").replace("-", "_")
        assert tuple(options[flag].choices or ()) == tuple(f.metadata["choices"] or ())


def test_the_entry_point_reads_a_config_file_and_refuses_both_or_neither(tmp_path):
    config = BenchConfig(run="runs/x", plans=("contiguous", "p.json"), hidden_size=64, sync=False)
    path = config.save(tmp_path / "c.json")
    assert config_from_argv(["--config", str(path)]) == config
    with pytest.raises(InputError, match="not both"):
        config_from_argv(["runs/x", "--config", str(path)])
    with pytest.raises(InputError, match="no trace"):
        config_from_argv([])
