"""Policies applied inside real transformers models through router hooks (no model files touched)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from routelens.capture.adapters import find_router_sites
from routelens.errors import InputError
from routelens.reroute import capacity_policy, expert_capacity, none_policy
from routelens.reroute.inmodel import RerouteHooks

_spec = importlib.util.spec_from_file_location(
    "tiny_models", Path(__file__).resolve().parents[1] / "capture" / "tiny_models.py")
tiny_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_models)

# one family per kind of router site and routing rule
FAMILIES = ["qwen3_moe", "deepseek_v3", "gpt_oss", "llama4_text", "dbrx", "mixtral"]


def run(model, family, input_ids, policy=None):
    kwargs = tiny_models.forward_inputs(family, input_ids)
    with torch.inference_mode():
        if policy is None:
            return model(**kwargs).logits, None
        with RerouteHooks(find_router_sites(model).sites, policy) as hooks:
            logits = model(**kwargs).logits
            return logits, hooks.take()


@pytest.fixture(scope="module")
def models():
    return {family: tiny_models.build_tiny(family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_policy_leaves_outputs_bit_identical(models, family):
    model = models[family]
    input_ids = torch.randint(0, tiny_models.VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    reference, _ = run(model, family, input_ids)
    hooked, chosen = run(model, family, input_ids, none_policy())
    assert torch.equal(reference, hooked)
    assert len(chosen) == len(find_router_sites(model).sites)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_policy_that_changes_nothing_reproduces_the_model_exactly(models, family):
    # capacity far above any load: the policy recomputes the model's own rule from the logits and repacks it
    model = models[family]
    input_ids = torch.randint(0, tiny_models.VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    reference, model_choice = run(model, family, input_ids, none_policy())
    hooked, policy_choice = run(model, family, input_ids, capacity_policy("capacity-reroute", 1000.0))
    assert torch.equal(reference, hooked)
    for own, recomputed in zip(model_choice, policy_choice):
        assert [set(r) for r in own.tolist()] == [set(r) for r in recomputed.tolist()]


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "dbrx"])
def test_capacity_drop_in_model_respects_capacity_and_changes_the_output(models, family):
    model = models[family]
    input_ids = torch.randint(0, tiny_models.VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    reference, _ = run(model, family, input_ids)
    dropped, chosen = run(model, family, input_ids, capacity_policy("capacity-drop", 0.5))
    assert not torch.equal(reference, dropped)
    for site, ids in zip(find_router_sites(model).sites, chosen):
        capacity = expert_capacity(ids.shape[0], site.top_k, site.num_experts, 0.5)
        load = torch.bincount(ids[ids >= 0], minlength=site.num_experts)
        assert int(load.max()) <= capacity
        assert bool((ids < 0).any())


def test_hooks_are_removed_after_the_context(models):
    model = models["qwen3_moe"]
    input_ids = torch.randint(0, tiny_models.VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    reference, _ = run(model, "qwen3_moe", input_ids)
    run(model, "qwen3_moe", input_ids, capacity_policy("capacity-drop", 0.25))
    after, _ = run(model, "qwen3_moe", input_ids)
    assert torch.equal(reference, after)


def test_sparsemixer_routing_is_refused_with_a_clear_error():
    model = tiny_models.build_tiny("phimoe")
    input_ids = torch.randint(0, tiny_models.VOCAB, (1, 8))
    with pytest.raises(InputError, match="SparseMixer"):
        run(model, "phimoe", input_ids, capacity_policy("capacity-drop", 1.0))
