"""Re-routing saved traces: same format out, policies applied batch by batch, comparison numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from routelens.capture.adapters import RoutingRule
from routelens.errors import InputError, TraceError
from routelens.graphs import coactivation_counts
from routelens.reroute import c2r_policy, capacity_policy, expert_capacity, gpu_limited_policy
from routelens.reroute.fitting import fit_plan
from routelens.reroute.simulate import compare_routing, reroute_trace, rules_from_trace
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace


def test_c2r_trace_keeps_the_format_tokens_and_logits(synthetic_trace, tmp_path):
    counts = {layer: coactivation_counts(synthetic_trace.topk_ids(layer), 16) for layer in synthetic_trace.layers}
    policy = c2r_policy(counts, 3)
    new, summary = reroute_trace(synthetic_trace, policy, tmp_path / "c2r", progress=False)
    reopened = Trace.open(tmp_path / "c2r")
    assert reopened.layers == synthetic_trace.layers and reopened.num_tokens == synthetic_trace.num_tokens
    assert np.array_equal(reopened.token_ids, synthetic_trace.token_ids)
    assert np.array_equal(reopened.seq_ids, synthetic_trace.seq_ids)
    layer = synthetic_trace.layers[2]
    assert np.array_equal(reopened.router_logits(layer), synthetic_trace.router_logits(layer))
    assert reopened.manifest["reroute"]["policy"] == "c2r" and reopened.manifest["reroute"]["top_t"] == 3
    assert reopened.manifest["parent"]["fingerprint"] == synthetic_trace.fingerprint()
    # the stored choice is the policy applied to the stored logits
    logits = torch.from_numpy(synthetic_trace.router_logits(layer).astype(np.float32))
    ids, weights = policy.choose(layer, logits, RoutingRule("softmax", 16, 2, True))
    assert np.array_equal(reopened.topk_ids(layer), ids.numpy())
    assert np.allclose(reopened.topk_weights(layer), weights.numpy(), atol=1e-3)
    assert 0 < summary["overall"]["changed_fraction"] < 1


def test_capacity_drop_trace_records_dropped_slots_and_respects_capacity_per_batch(synthetic_trace, tmp_path):
    new, summary = reroute_trace(synthetic_trace, capacity_policy("capacity-drop", 1.0), tmp_path / "drop",
                                 batch_tokens=512, progress=False)
    capacity = expert_capacity(512, 2, 16, 1.0)
    for layer in new.layers:
        ids, weights = new.topk_ids(layer).astype(np.int64), new.topk_weights(layer)
        assert (ids == -1).any()
        assert np.all(weights[ids == -1] == 0)
        for start in range(0, new.num_tokens, 512):
            batch = ids[start:start + 512]
            assert np.bincount(batch[batch >= 0], minlength=16).max() <= capacity
    overall = summary["overall"]
    assert overall["rerouted"]["dropped_fraction"] > 0
    assert overall["rerouted"]["load_max_over_mean"] < overall["original"]["load_max_over_mean"]


def test_gpu_limited_trace_visits_one_gpu_and_the_comparison_says_so(synthetic_trace, tmp_path):
    plan = fit_plan({l: synthetic_trace.topk_ids(l) for l in synthetic_trace.layers}, 16, 4)
    new, summary = reroute_trace(synthetic_trace, gpu_limited_policy(plan, 1), tmp_path / "m1", plan=plan,
                                 progress=False)
    overall = summary["overall"]
    assert overall["rerouted"]["gpus_per_token"] == pytest.approx(1.0)
    assert overall["original"]["gpus_per_token"] > 1.0
    assert overall["change"]["gpus_per_token"] < 0
    again = compare_routing(synthetic_trace, new, plan=plan)
    assert again["overall"]["rerouted"]["gpus_per_token"] == pytest.approx(1.0)


def test_refuses_an_existing_output_and_a_trace_without_logits(synthetic_trace, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("earlier result")
    with pytest.raises(TraceError, match="already exists"):
        reroute_trace(synthetic_trace, capacity_policy("capacity-drop", 1.0), tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "earlier result"
    arrays = synthetic_trace_arrays(num_tokens=256, num_layers=1, num_experts=8, top_k=2, with_logits=False)
    plain = write_trace(tmp_path / "plain", arrays["header"], arrays["token_ids"], arrays["seq_ids"],
                        arrays["positions"], arrays["topk_ids"], arrays["topk_weights"])
    with pytest.raises(TraceError, match="--save-logits"):
        reroute_trace(plain, capacity_policy("capacity-drop", 1.0), tmp_path / "x", progress=False)


def test_rules_from_trace_rebuilds_recorded_rules_and_asks_for_the_model_when_a_bias_is_missing(tmp_path):
    arrays = synthetic_trace_arrays(num_tokens=64, num_layers=1, num_experts=8, top_k=2, with_logits=True)
    header = dict(arrays["header"])
    header["routing_rules"] = [{"scoring": "sigmoid", "num_experts": 8, "top_k": 2, "norm_topk_prob": True,
                                "routed_scaling_factor": 2.5, "n_group": 2, "topk_group": 1, "bias": None}]
    trace = write_trace(tmp_path / "a", header, arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                        arrays["topk_ids"], arrays["topk_weights"], arrays["router_logits"])
    rule = rules_from_trace(trace)[0]
    assert (rule.scoring, rule.routed_scaling_factor, rule.n_group) == ("sigmoid", 2.5, 2)
    header["routing_rules"][0]["bias"] = "tensor[8]"
    biased = write_trace(tmp_path / "b", header, arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                         arrays["topk_ids"], arrays["topk_weights"], arrays["router_logits"])
    with pytest.raises(InputError, match="--model"):
        rules_from_trace(biased)


def test_fit_plan_puts_planted_groups_on_one_gpu():
    # 4 groups of 4 experts that always fire together, scrambled ids: the optimizer's plan keeps each group on one GPU
    rng = np.random.default_rng(0)
    groups = rng.permutation(16).reshape(4, 4)
    ids = np.concatenate([np.repeat(groups[g][None, :], 50, axis=0) for g in range(4)])
    table = fit_plan({"layer": ids[rng.permutation(len(ids))]}, 16, 4).gpu_experts["layer"]
    assert sorted(map(sorted, table.tolist())) == sorted(map(sorted, groups.tolist()))
