"""The policy registry: one object per policy, its settings, options, sweeps and labels; importable without torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from routelens.errors import InputError
from routelens.reroute.options import OPTIONS
from routelens.reroute.registry import (C2RSettings, CapacitySettings, GpuAdaptiveSettings, GpuLimitedSettings,
                                        PolicyChoice, PolicyContext, PolicySweep, get_policy, is_baseline,
                                        policy_names, settings_from_row)

DEMO = PolicyContext(num_experts=64, top_k=8, num_gpus=8, slots_per_gpu=8)  # the demo model on 8 GPUs


def test_names_options_and_the_command_line_load_without_torch():
    code = ("import sys; from routelens.cli import build_parser; build_parser(); "
            "from routelens.reroute import policy_names; assert policy_names(); "
            "from routelens.placement.methods import method_names; assert method_names(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_setting_of_every_policy_is_a_command_line_option():
    fields = {option.field for option in OPTIONS}
    for name in policy_names(include_baseline=True):
        spec = get_policy(name)
        assert set(spec.fields) <= fields, name
        assert set(spec.sweep_axes) <= set(spec.fields), name
        assert dataclasses.is_dataclass(spec.settings_type) and spec.settings_type.__dataclass_params__.frozen
    assert {option.flag for option in OPTIONS} == {"--group-size", "--max-gpus", "--gpu-score", "--min-gpu-share",
                                                   "--gpu-fill", "--routing-weights", "--capacity-factor"}


def test_what_each_policy_needs():
    needs = {name: (get_policy(name).needs_plan, get_policy(name).needs_coactivation)
             for name in policy_names(include_baseline=True)}
    assert needs == {"none": (False, False), "c2r": (False, True), "gpu-limited": (True, False),
                     "gpu-adaptive": (True, False), "capacity-drop": (False, False),
                     "capacity-reroute": (False, False)}
    assert is_baseline("none") and not is_baseline("c2r") and not is_baseline("no-such-policy")
    assert "none" not in policy_names()


def test_the_default_sweep_of_the_demo_model():
    labels = [spec.label(settings) for spec, settings in PolicySweep().resolve(DEMO)]
    assert len(labels) == 34  # docs/reroute.md: the 34 default settings
    assert labels[:6] == ["c2r T=8", "c2r T=16", "c2r T=32", "c2r T=8 keep", "c2r T=16 keep", "c2r T=32 keep"]
    assert [label for label in labels if label.startswith("gpu-limited") and "keep" not in label] == [
        "gpu-limited M=1", "gpu-limited M=2", "gpu-limited M=3", "gpu-limited M=4"]
    assert labels[-3:] == ["capacity-reroute 1 keep", "capacity-reroute 1.1 keep", "capacity-reroute 1.25 keep"]


def test_given_values_replace_a_policy_axis_first_axis_innermost_weights_outermost():
    sweep = PolicySweep(("gpu-limited", "gpu-adaptive"),
                        {"max_gpus": (2, 3), "gpu_score": ("max", "mass"), "weights": ("keep",)})
    settings = sweep.resolve(DEMO)
    limited = [(s.max_gpus, s.gpu_score) for spec, s in settings if spec.name == "gpu-limited"]
    assert limited == [(2, "max"), (3, "max"), (2, "mass"), (3, "mass")]
    adaptive = [s for spec, s in settings if spec.name == "gpu-adaptive"]
    assert [s.min_gpu_share for s in adaptive] == [0.05, 0.075, 0.1, 0.15]
    assert all(s.max_gpus is None and s.weights == "keep" for s in adaptive)  # --max-gpus never sweeps gpu-adaptive


def test_one_run_defaults_and_what_is_given():
    assert PolicyChoice("c2r").resolve(DEMO)[1] == C2RSettings(top_t=16)
    assert PolicyChoice("c2r", {"max_gpus": 3, "top_t": None}).resolve(DEMO)[1] == C2RSettings(16)  # not its knob
    assert PolicyChoice("gpu-limited").resolve(DEMO)[1] == GpuLimitedSettings(max_gpus=4)
    assert PolicyChoice("gpu-adaptive", {"max_gpus": 3, "fill": "drop"}).resolve(DEMO)[1] == GpuAdaptiveSettings(
        0.1, 3, "drop")
    assert PolicyChoice("capacity-reroute", {"weights": "keep"}).resolve(DEMO)[1] == CapacitySettings(1.25, "keep")
    small = PolicyContext(num_experts=8, top_k=6, num_gpus=2, slots_per_gpu=4)
    assert PolicyChoice("c2r").resolve(small)[1].top_t == 5  # K - 1 when E/4 cannot give a token its K experts


def test_labels_and_folder_names():
    assert get_policy("gpu-limited").label(GpuLimitedSettings(4, "mass", "drop", "keep")) == "gpu-limited M=4 (mass) drop keep"
    assert get_policy("gpu-adaptive").label(GpuAdaptiveSettings(0.1, 4)) == "gpu-adaptive 0.1 M<=4"
    assert get_policy("gpu-adaptive").curve(GpuAdaptiveSettings(0.1, 4, "drop")) == "gpu-adaptive M<=4 drop"
    assert get_policy("capacity-drop").run_name(CapacitySettings(1.25, "keep")) == "capacity-drop-1.25-keep"
    assert get_policy("c2r").run_name(C2RSettings(8)) == "c2r-t8"


def test_rows_give_back_their_settings():
    for spec, settings in PolicySweep().resolve(DEMO):
        row = {"policy": spec.name, **spec.record(settings), "label": spec.label(settings), "perplexity": 40.0}
        assert settings_from_row(row) == (spec, settings)


@pytest.mark.parametrize("bad, message", [
    (lambda: PolicySweep(("none",)), "unknown --policy 'none'"),
    (lambda: PolicySweep(("c2r", "bogus")), "unknown --policy 'bogus'"),
    (lambda: get_policy("bogus"), "unknown policy 'bogus'"),
    (lambda: C2RSettings(0), "--group-size"),
    (lambda: GpuLimitedSettings(2, gpu_score="sum"), "--gpu-score"),
    (lambda: GpuAdaptiveSettings(1.5), "--min-gpu-share"),
    (lambda: CapacitySettings(float("inf")), "--capacity-factor"),
    (lambda: get_policy("c2r").settings(top_t=4, max_gpus=2), "no setting max_gpus"),
    (lambda: get_policy("c2r").settings(), "top_t"),
])
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(InputError, match=message):
        bad()
