"""Fine-tuning with a policy active: the router learns through the chosen experts, the result is saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routelens.capture.adapters import find_router_sites
from routelens.cli import main
from routelens.reroute import capacity_policy
from routelens.reroute.finetune import finetune_with_policy, measure_recovery


def test_finetune_under_a_policy_updates_the_router_and_leaves_no_hooks():
    from transformers import AutoModelForCausalLM

    from routelens.capture.tiny import tiny_qwen3_moe_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_qwen3_moe_config(num_experts=8, top_k=2, num_layers=1)).eval()
    sites = find_router_sites(model).sites
    router_before = sites[0].module.weight.detach().clone()
    windows = np.random.default_rng(0).integers(0, 300, size=(6, 16)).astype(np.int64)
    losses = finetune_with_policy(model, sites, capacity_policy("capacity-drop", 0.75), windows, steps=3,
                                  batch_size=2, lr=1e-2, train="router", progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(router_before, sites[0].module.weight)
    assert not model.training
    assert not sites[0].module._forward_hooks


def test_measure_recovery_is_the_share_of_the_cost_won_back():
    before = [{"perplexity": 10.0}, {"perplexity": 12.0, "gpus_per_token": 2.0}]
    after = [{"perplexity": 10.5}, {"perplexity": 10.5, "gpus_per_token": 2.0}]
    summary = measure_recovery(before, after)
    assert summary["recovered"] == pytest.approx(0.75)
    assert summary["cost_before"] == pytest.approx(0.2) and summary["cost_after"] == pytest.approx(0.05)


def test_finetune_command_saves_the_model_and_the_report(tmp_path, capsys):
    from routelens.capture.tiny import build_tiny_moe, tiny_qwen3_moe_config

    model = build_tiny_moe(tmp_path / "tiny", tiny_qwen3_moe_config(num_experts=8, top_k=2, num_layers=1))
    text = tmp_path / "text.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(200)))
    out = tmp_path / "tuned"
    code = main(["finetune", str(model), "--policy", "gpu-limited", "--max-gpus", "1", "--gpus", "4",
                 "--text", str(text), "--heldout", str(text), "--seq-len", "16", "--train-tokens", "128",
                 "--fit-tokens", "32", "--eval-tokens", "32", "--steps", "2", "--batch-size", "2",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "finetune.json").read_text())
    assert report["policy"] == "gpu-limited" and len(report["losses"]) == 2
    assert report["gpus_per_token_after"] == pytest.approx(1.0)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "recovered" in report  # a share, or None when the policy cost nothing (JSON has no NaN)
    assert report["recovered"] is None or np.isfinite(report["recovered"])
    assert "with the policy, after" in capsys.readouterr().out
    assert main(["finetune", str(model), "--policy", "c2r", "--out", str(out)]) == 2  # never overwrites
