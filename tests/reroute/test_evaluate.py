"""In-model evaluation: perplexity matches the model's own loss, rows carry what the sweep promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from routelens.capture.adapters import find_router_sites
from routelens.errors import InputError
from routelens.reroute import (C2RSettings, CapacitySettings, FitData, GpuLimitedSettings, PolicyContext, PolicySweep,
                               capacity_policy, fit_policy)
from routelens.reroute.evaluate import (
    best_within, calibration_routing, evaluate_policies, paired_change_ci, split_windows,
)
from routelens.reroute.fitting import fit_plan


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from routelens.capture.tiny import tiny_qwen3_moe_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_qwen3_moe_config(num_experts=8, top_k=2, num_layers=2)).eval()
    with torch.no_grad():
        for site in find_router_sites(model).sites:
            site.module.weight.normal_(0.0, 0.5)
    windows = np.random.default_rng(0).integers(0, 300, size=(12, 24)).astype(np.int64)
    return model, find_router_sites(model).sites, windows


def test_baseline_perplexity_is_the_models_own_loss(tiny):
    model, sites, windows = tiny
    rows = evaluate_policies(model, sites, windows, [], batch_size=5, progress=False)
    with torch.no_grad():
        ids = torch.as_tensor(windows)
        loss = model(input_ids=ids, labels=ids).loss  # mean next-token NLL over all windows
    assert rows[0]["policy"] == "none"
    assert rows[0]["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert rows[0]["agreement"] == 1.0 and rows[0]["kl_to_baseline"] == 0.0
    assert rows[0]["eval_tokens"] == windows.shape[0] * (windows.shape[1] - 1)


def test_sweep_rows_compare_each_policy_with_the_baseline(tiny):
    model, sites, windows = tiny
    calib, heldout = split_windows(windows, 0.25)
    calibration = calibration_routing(model, sites, calib, batch_size=4)
    assert all(ids.shape == (calib.shape[0] * calib.shape[1], 2) for ids in calibration.values())
    plan = fit_plan(calibration, 8, 4)
    context = PolicyContext(8, 2, plan.num_gpus, plan.slots_per_gpu)
    assert {s.fill for spec, s in PolicySweep(("gpu-limited",)).resolve(context)} == {"best"}
    swept = PolicySweep(("gpu-limited", "gpu-adaptive"), {"fill": ("best", "drop")}).resolve(context)
    assert [(s.max_gpus, s.fill, s.weights) for spec, s in swept if spec.name == "gpu-limited"] == [
        (m, fill, w) for w in ("renorm", "keep") for fill in ("best", "drop") for m in (1, 2)]
    assert {s.min_gpu_share for spec, s in swept if spec.name == "gpu-adaptive"} == {0.05, 0.075, 0.1, 0.15}
    data = FitData(plan=plan, calibration=calibration, num_experts=8)
    policies = [fit_policy("gpu-limited", GpuLimitedSettings(1), data),
                fit_policy("capacity-reroute", CapacitySettings(1.0), data), fit_policy("c2r", C2RSettings(1), data)]
    rows = evaluate_policies(model, sites, heldout, policies, plan=plan, batch_size=3, progress=False)
    assert [r["policy"] for r in rows] == ["none", "gpu-limited", "capacity-reroute", "c2r"]
    base, limited, reroute, c2r = rows
    assert limited["gpus_per_token"] == pytest.approx(1.0)
    assert limited["gpus_per_token_change"] == pytest.approx(1.0 / base["gpus_per_token"] - 1.0)
    assert reroute["load_max_over_mean"] <= 1.0 + 1e-9 + 2 * 4 / (3 * 24 * 2)  # capacity rounding
    for row in rows[1:]:
        assert row["perplexity"] > 0 and 0 <= row["agreement"] <= 1 and row["kl_to_baseline"] >= -1e-6
        assert "perplexity_change" in row and 0 <= row["changed_fraction"] <= 1
    assert c2r["top_t"] == 1 and limited["max_gpus"] == 1 and reroute["capacity_factor"] == 1.0
    # every policy row carries a paired interval around its own perplexity change; the baseline none
    assert "perplexity_change_ci95" not in base
    for row in rows[1:]:
        low, high = row["perplexity_change_ci95"]
        assert low <= row["perplexity_change"] + 1e-12 and row["perplexity_change"] <= high + 1e-12


def test_paired_interval_is_the_point_when_every_window_costs_the_same_and_widens_with_noise():
    base = np.array([50.0, 80.0, 65.0, 90.0])
    tokens = 10
    # the same extra NLL in every window: every resample gives the same change, exp(2 / 10) - 1
    low, high = paired_change_ci(base, base + 2.0, tokens)
    assert low == pytest.approx(math.expm1(0.2)) and high == pytest.approx(math.expm1(0.2))
    # the same mean extra NLL spread unevenly over the windows: a real interval around the point
    low, high = paired_change_ci(base, base + np.array([0.0, 4.0, -2.0, 6.0]), tokens)
    assert low < math.expm1(0.2) < high and low < high
    # the windows' own difficulty does not enter: other baseline NLLs, same per-window differences, same interval
    other = np.array([10.0, 300.0, 20.0, 150.0])
    assert paired_change_ci(other, other + np.array([0.0, 4.0, -2.0, 6.0]), tokens) == pytest.approx((low, high))
    with pytest.raises(ValueError):
        paired_change_ci(base, base[:3], tokens)


def test_capacity_is_shared_over_one_forward_pass(tiny):
    model, sites, windows = tiny
    rows_small = evaluate_policies(model, sites, windows, [capacity_policy("capacity-drop", 1.0)], batch_size=1,
                                   progress=False)
    rows_large = evaluate_policies(model, sites, windows, [capacity_policy("capacity-drop", 1.0)], batch_size=12,
                                   progress=False)
    # a larger batch averages load over more tokens, so fewer assignments overflow
    assert rows_large[1]["dropped_fraction"] < rows_small[1]["dropped_fraction"]


def test_best_within_picks_the_fewest_gpus_inside_the_perplexity_budget():
    rows = [
        {"policy": "none", "perplexity_change": 0.0, "gpus_per_token": 4.0},
        {"policy": "a", "perplexity_change": 0.005, "gpus_per_token": 3.0},
        {"policy": "b", "perplexity_change": 0.02, "gpus_per_token": 1.0},
        {"policy": "c", "perplexity_change": 0.009, "gpus_per_token": 2.5},
    ]
    assert best_within(rows, 0.01)["policy"] == "c"
    assert best_within(rows, 0.001) is None


def test_split_windows_rejects_fractions_that_leave_a_part_empty():
    windows = np.zeros((4, 8), dtype=np.int64)
    calib, heldout = split_windows(windows, 0.25)
    assert calib.shape[0] == 1 and heldout.shape[0] == 3
    with pytest.raises(InputError):
        split_windows(windows, 1.0)
    with pytest.raises(InputError):
        split_windows(windows[:1], 0.5)
