"""Expert banks and the expert computation: grouped GEMMs == per-expert loop == the model's own experts."""

from __future__ import annotations

import pytest
import torch

from routelens.errors import InputError
from routelens.runner.experts import (
    load_expert_bank,
    random_expert_bank,
    reference_moe,
    run_experts,
    run_experts_loop,
)
from routelens.runner.layer import expert_partials
from routelens.runner.layout import fused_layout, fused_unpermute, gather_copies, reference_layout


def _sorted_rows(num_rows, counts, hidden, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows_count = torch.tensor(counts)
    x = torch.randn(int(rows_count.sum()), hidden, generator=gen)
    assert len(counts) == num_rows
    return x, rows_count


def test_grouped_gemm_equals_per_expert_loop_including_empty_experts():
    bank = random_expert_bank(6, 32, 24, dtype=torch.float32)
    x, counts = _sorted_rows(6, [3, 0, 5, 1, 0, 7], 32)
    fast = run_experts(x, counts, bank, kernel="grouped_mm")
    slow = run_experts_loop(x, counts, bank)
    assert fast.shape == (16, 32)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_random_bank_draws_each_expert_from_its_own_seed():
    full = random_expert_bank(8, 16, 8, dtype=torch.float32, seed=3)
    part = random_expert_bank(8, 16, 8, experts=[5, 2], dtype=torch.float32, seed=3)
    assert part.row_of_expert.tolist() == [-1, -1, 1, -1, -1, 0, -1, -1]
    assert torch.equal(part.gate_up[0], full.gate_up[5]) and torch.equal(part.down[1], full.down[2])
    other = random_expert_bank(8, 16, 8, experts=[5], dtype=torch.float32, seed=4)
    assert not torch.equal(other.gate_up[0], full.gate_up[5])


def test_expert_partials_on_one_rank_equal_reference():
    torch.manual_seed(0)
    bank = random_expert_bank(8, 16, 12, dtype=torch.float32)
    x = torch.randn(50, 16)
    ids = torch.stack([torch.randperm(8)[:3] for _ in range(50)])
    weights = torch.rand(50, 3)
    layout = reference_layout(ids, weights, torch.zeros_like(ids), 1, exchange=lambda counts: counts)
    assert layout.send_counts == [50] and layout.copy_token.tolist() == list(range(50))
    partial = expert_partials(x[layout.copy_token], layout.meta, bank)
    torch.testing.assert_close(partial, reference_moe(x, ids, weights, bank), rtol=1e-5, atol=1e-5)


def test_checkpoint_experts_reproduce_the_models_own_expert_module(tmp_path):
    from transformers import AutoModelForCausalLM

    from routelens.capture.tiny import build_tiny_moe

    path = build_tiny_moe(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(path)
    experts = model.model.layers[1].mlp.experts
    E = experts.num_experts
    bank = load_expert_bank(path, "model.layers.1.mlp.gate", E, dtype=torch.float32)
    torch.manual_seed(1)
    x = torch.randn(40, bank.hidden_size)
    ids = torch.stack([torch.randperm(E)[:2] for _ in range(40)])
    weights = torch.softmax(torch.randn(40, 2), -1)
    with torch.no_grad():
        expected = experts(x, ids, weights)
    torch.testing.assert_close(reference_moe(x, ids, weights, bank), expected.float(), rtol=1e-4, atol=1e-5)
    partial = load_expert_bank(path, "model.layers.1.mlp.gate", E, experts=[E - 1, 0], dtype=torch.float32)
    assert torch.equal(partial.gate_up[0], bank.gate_up[E - 1])
    with pytest.raises(InputError, match="no expert weights"):
        load_expert_bank(path, "model.layers.9.mlp.gate", E)


@pytest.mark.gpu
def test_grouped_gemm_bf16_on_gpu_matches_loop():
    bank = random_expert_bank(16, 256, 128, dtype=torch.bfloat16, device="cuda")
    counts = torch.tensor([37, 0, 5, 130] * 4, device="cuda")
    x = torch.randn(int(counts.sum()), 256, device="cuda").to(torch.bfloat16)
    fast = run_experts(x, counts, bank, kernel="grouped_mm")
    slow = run_experts_loop(x, counts, bank)
    err = (fast.float() - slow.float()).norm() / slow.float().norm()
    assert err < 1e-2


@pytest.mark.parametrize("build", [reference_layout, fused_layout])
def test_dropped_slots_contribute_nothing_and_fully_dropped_tokens_get_zero(build):
    torch.manual_seed(2)
    bank = random_expert_bank(8, 16, 12, dtype=torch.float32)
    x = torch.randn(30, 16)
    ids = torch.stack([torch.randperm(8)[:3] for _ in range(30)])
    ids[::4, 1] = -1
    ids[5] = -1
    weights = torch.rand(30, 3)
    layout = build(ids, weights, torch.where(ids >= 0, 0, -1), 1, exchange=lambda counts: counts)
    assert 5 not in layout.copy_token.tolist() and layout.send_counts == [29]
    partial = expert_partials(gather_copies(x, layout), layout.meta, bank)
    out = fused_unpermute(partial, layout, torch.float32, kernel="torch")
    ref = reference_moe(x, ids, weights, bank)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(ref[5] == 0)
