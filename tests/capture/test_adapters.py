"""Router adapters: for every family, the recorded choice is exactly what the experts receive.

Each test builds a tiny random-init model of a real transformers family, saves and reloads it with
the Auto class (as capture does), and compares, token for token, what the router hook recorded
(``RouterSite.unpack``) with what a forward pre-hook on the experts module saw.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from routelens.capture.adapters import RouterOutput, find_router_sites
from routelens.errors import NotMoEError

_spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).with_name("tiny_models.py"))
tiny_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_models)

FAMILIES = sorted(tiny_models.FAMILIES) + sorted(tiny_models.SHRUNK)
BATCH, SEQ = 2, 7
_LOADED: dict[str, torch.nn.Module] = {}
_PLAIN: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """family -> tiny model saved with save_pretrained and reloaded with its Auto class (cached per module)."""

    def load(family: str) -> torch.nn.Module:
        if family not in _LOADED:
            path = tmp_path_factory.mktemp(family)
            tiny_models.build_tiny(family).save_pretrained(path)
            _LOADED[family] = tiny_models.load_tiny(family, path)
        return _LOADED[family]

    return load


def _inputs(family: str, seed: int = 1) -> dict:
    """A batch of distinct tokens (so every routed row of hidden states names one token)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randperm(tiny_models.VOCAB, generator=generator)[: BATCH * SEQ].view(BATCH, SEQ)
    return tiny_models.forward_inputs(family, ids)


def _sorted_by_id(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = ids.reshape(ids.shape[0], -1).long()
    order = ids.argsort(dim=-1)
    return ids.gather(1, order), weights.reshape(ids.shape).float().gather(1, order)


def _assert_same_choice(ids_a, weights_a, ids_b, weights_b, what: str) -> None:
    ids_a, weights_a = _sorted_by_id(ids_a, weights_a)
    ids_b, weights_b = _sorted_by_id(ids_b, weights_b)
    assert ids_a.shape == ids_b.shape, what
    assert torch.equal(ids_a, ids_b), f"{what}: expert ids differ in {(ids_a != ids_b).any(-1).sum()} tokens"
    torch.testing.assert_close(weights_a, weights_b, atol=1e-5, rtol=0, msg=what)


def _run(model, family, routing, hook_fn=None):
    """Forward once; returns (model logits, per-site recorded RouterOutputs, per-site choices the experts got)."""
    recorded = [[] for _ in routing.sites]
    # probes first: their hooks must see a layer's experts before a re-routing hook replaces the output
    probes = [tiny_models.probe_experts(family, model, experts, site.top_k)
              for site, experts in zip(routing.sites, routing.experts_modules)]
    handles = []
    for j, site in enumerate(routing.sites):

        def hook(module, args, kwargs, output, j=j, site=site):
            recorded[j].append(site.unpack(args, kwargs, output))
            if hook_fn is not None:
                return hook_fn(j, site, args, kwargs, output, recorded[j][-1])

        handles.append(site.module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(**_inputs(family))
    finally:
        for handle in handles:
            handle.remove()
        for probe in probes:
            probe.remove()
    return out.logits, recorded, [probe.calls for probe in probes]


def _plain_run(model, family, routing):
    """``_run`` without re-routing, once per family (the tests only read its results)."""
    if family not in _PLAIN:
        _PLAIN[family] = _run(model, family, routing)
    return _PLAIN[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_choice_equals_what_experts_receive(family, loaded):
    model = loaded(family)
    routing = find_router_sites(model)
    assert routing.family == family
    assert [s.layer_index for s in routing.sites] == tiny_models.expected_moe_layers(family)
    _, recorded, received = _plain_run(model, family, routing)
    for site, rec_calls, recv_calls in zip(routing.sites, recorded, received):
        assert len(rec_calls) == len(recv_calls) >= 1, site.name
        for rec, recv in zip(rec_calls, recv_calls):
            assert isinstance(rec, RouterOutput)
            assert rec.topk_ids.dtype == torch.int64 and rec.topk_ids.shape[1] == site.top_k
            assert rec.topk_ids.shape == rec.topk_weights.shape
            _assert_same_choice(rec.topk_ids, rec.topk_weights, *recv, what=site.name)


# Each site's RoutingRule reproducing the recorded choice from the router logits (for every family, and
# through every re-routing policy) is tested with the rule itself: tests/test_routing_rule.py.


@pytest.mark.parametrize("family", FAMILIES)
def test_repack_of_the_unpacked_choice_is_bit_identical(family, loaded):
    model = loaded(family)
    routing = find_router_sites(model)
    plain, _, _ = _plain_run(model, family, routing)

    def same(j, site, args, kwargs, output, rec):
        return site.repack(args, kwargs, output, rec.topk_ids.clone(), rec.topk_weights.clone())

    repacked, _, _ = _run(model, family, routing, hook_fn=same)
    assert torch.equal(plain, repacked)


@pytest.mark.parametrize("family", FAMILIES)
def test_repack_of_another_choice_reaches_the_experts(family, loaded):
    model = loaded(family)
    routing = find_router_sites(model)
    plain, _, _ = _plain_run(model, family, routing)
    sent = [[] for _ in routing.sites]

    def reverse(j, site, args, kwargs, output, rec):
        dropped = rec.topk_ids < 0  # capacity-dropped slots stay dropped
        new_ids = torch.where(dropped, -1, site.num_experts - 1 - rec.topk_ids)
        new_weights = torch.linspace(0.2, 0.8, rec.topk_ids.numel()).reshape(rec.topk_ids.shape)
        new_weights = new_weights.masked_fill(dropped, 0)
        sent[j].append((new_ids, new_weights))
        return site.repack(args, kwargs, output, new_ids, new_weights)

    rerouted, _, received = _run(model, family, routing, hook_fn=reverse)
    for site, sent_calls, recv_calls in zip(routing.sites, sent, received):
        assert len(sent_calls) == len(recv_calls)
        for (ids, weights), recv in zip(sent_calls, recv_calls):
            _assert_same_choice(ids, weights, *recv, what=site.name)
    assert not torch.allclose(plain, rerouted)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "ernie4_5_moe", "llama4_text", "dbrx", "jetmoe",
                                    "switch_transformers"])
def test_bfloat16_capture_is_exact_and_repack_bit_identical(family, loaded):
    """In bf16 the recorded ids and weights are the very values the experts get (dtype included)."""
    model = tiny_models.build_tiny(family).to(torch.bfloat16)
    routing = find_router_sites(model)
    plain, recorded, received = _run(model, family, routing)
    # weights recovered from bf16 products (Llama4 scaled inputs, DBRX / JetMoE outputs) are approximate
    solved = tiny_models._PROBES.get(family) in (tiny_models.OutputSolveProbe, tiny_models.ScaledInputProbe)
    for site, rec_calls, recv_calls in zip(routing.sites, recorded, received):
        for rec, (ids, weights) in zip(rec_calls, recv_calls):
            got_ids, got_weights = _sorted_by_id(ids, weights)
            want_ids, want_weights = _sorted_by_id(rec.topk_ids, rec.topk_weights)
            assert torch.equal(got_ids, want_ids), site.name
            torch.testing.assert_close(got_weights, want_weights, atol=2e-2 if solved else 0, rtol=0, msg=site.name)

    def same(j, site, args, kwargs, output, rec):
        return site.repack(args, kwargs, output, rec.topk_ids, rec.topk_weights)

    repacked, _, _ = _run(model, family, routing, hook_fn=same)
    assert torch.equal(plain, repacked)


def _dense_weights(ids: torch.Tensor, weights: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[N, E]`` float32 weight each token gives each expert (``-1`` slots and repeats add nothing / sum)."""
    ids = ids.reshape(ids.shape[0], -1).long()
    weights = weights.reshape(ids.shape).float().masked_fill(ids < 0, 0)
    return torch.zeros(ids.shape[0], num_experts).scatter_add_(1, ids.clamp_min(0), weights)


@pytest.mark.parametrize("family", FAMILIES)
def test_repack_with_dropped_slots_sends_them_nowhere(family, loaded):
    """``-1`` in a repacked choice (a capacity drop) gives that slot no expert output (weight 0)."""
    model = loaded(family)
    routing = find_router_sites(model)
    sent = [[] for _ in routing.sites]

    def drop_last_slot(j, site, args, kwargs, output, rec):
        ids, weights = rec.topk_ids.clone(), rec.topk_weights.clone()
        if site.top_k > 1:
            ids[:, -1] = -1
        else:
            ids[::2] = -1  # top-1: drop every other token
        sent[j].append((ids, weights.masked_fill(ids < 0, 0)))
        return site.repack(args, kwargs, output, ids, weights)

    _, _, received = _run(model, family, routing, hook_fn=drop_last_slot)
    for site, sent_calls, recv_calls in zip(routing.sites, sent, received):
        for (ids, weights), recv in zip(sent_calls, recv_calls):
            expected = _dense_weights(ids, weights, site.num_experts)
            got = _dense_weights(*recv, site.num_experts)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=site.name)


@pytest.mark.parametrize("family", [
    "switch_transformers",
    pytest.param("nllb-moe", marks=pytest.mark.xfail(strict=True, reason=(
        "transformers 5.23 NllbMoeExperts one-hot-encodes the top-1 mask itself, so only expert_0 and "
        "expert_1 ever run; routelens records the router's dispatch"))),
])
def test_per_expert_modules_process_the_recorded_tokens(family, loaded):
    """Families with one module per expert: each expert runs on exactly the tokens recorded for it."""
    model = loaded(family)
    routing = find_router_sites(model)
    processed = {}
    handles = []
    for j, experts in enumerate(routing.experts_modules):
        for e in range(routing.sites[j].num_experts):
            def count(module, args, j=j, e=e):
                processed[j, e] = processed.get((j, e), 0) + args[0].reshape(-1, args[0].shape[-1]).shape[0]
            handles.append(experts[f"expert_{e}"].register_forward_pre_hook(count))
    try:
        _, recorded, _ = _run(model, family, routing)
    finally:
        for handle in handles:
            handle.remove()
    if family == "switch_transformers":  # expert_capacity=2 in the tiny config: some tokens are dropped
        assert any(bool((rec.topk_ids < 0).any()) for calls in recorded for rec in calls)
    for j, calls in enumerate(recorded):
        ids = torch.cat([rec.topk_ids for rec in calls]).flatten()
        expected = torch.bincount(ids[ids >= 0], minlength=routing.sites[j].num_experts)
        got = torch.tensor([processed.get((j, e), 0) for e in range(routing.sites[j].num_experts)])
        assert torch.equal(got, expected), routing.sites[j].name


@pytest.mark.parametrize("config_class", ["LlamaConfig", "Qwen3Config"])
def test_dense_model_raises_not_moe(config_class):
    import transformers

    config = getattr(transformers, config_class)(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(NotMoEError) as excinfo:
        find_router_sites(model)
    message = str(excinfo.value)
    assert config.model_type in message and "\n" not in message
