"""The layout phase: the fused counting-sort layout equals the readable reference, copy for copy."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.errors import InputError
from routelens.runner.layout import (
    fused_layout,
    fused_unpermute,
    gather_copies,
    reference_layout,
    reference_unpermute,
    resolve_layout_kernel,
)


def _no_exchange(counts: torch.Tensor) -> torch.Tensor:
    """One rank's view of the count exchange: what it receives is irrelevant to its own layout."""
    return counts.flip(0)


@st.composite
def routes(draw):
    """Random routes: k distinct experts per token, each served by one of its replicas' GPUs, some slots dropped."""
    n = draw(st.integers(0, 40))
    num_gpus = draw(st.integers(1, 6))
    num_experts = draw(st.integers(2, 12))
    k = draw(st.integers(1, min(4, num_experts)))
    seed = draw(st.integers(0, 2**32 - 1))
    drop = draw(st.sampled_from([0.0, 0.3, 1.0]))
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((n, num_experts)), axis=1)[:, :k]  # k distinct experts per token
    # replicas: expert e lives on GPUs home[e] and, for some experts, a second one; a token picks either
    home = rng.integers(0, num_gpus, num_experts)
    second = np.where(rng.random(num_experts) < 0.5, rng.integers(0, num_gpus, num_experts), home)
    dest = np.where(rng.random((n, k)) < 0.5, home[ids], second[ids])
    dropped = rng.random((n, k)) < drop
    ids, dest = np.where(dropped, -1, ids), np.where(dropped, -1, dest)
    weights = rng.random((n, k)).astype(np.float32)
    return torch.from_numpy(ids), torch.from_numpy(weights), torch.from_numpy(dest), num_gpus


@settings(max_examples=120, deadline=None)
@given(routes())
def test_fused_layout_equals_the_reference_copy_for_copy(route):
    ids, weights, dest, num_gpus = route
    ref = reference_layout(ids, weights, dest, num_gpus, _no_exchange)
    fused = fused_layout(ids, weights, dest, num_gpus, _no_exchange)
    assert fused.send_counts == ref.send_counts and fused.recv_counts == ref.recv_counts
    assert torch.equal(fused.copy_token, ref.copy_token)
    assert torch.equal(fused.token_copy, ref.token_copy)
    assert torch.equal(fused.meta, ref.meta)
    # the definition itself: one copy per token and distinct kept GPU, GPU-major then token order
    expected = [(g, t) for g in range(num_gpus) for t in range(ids.shape[0]) if (dest[t] == g).any()]
    copy_gpu = [int((fused.token_copy[t] == c).nonzero()) for c, t in enumerate(fused.copy_token.tolist())]
    assert list(zip(copy_gpu, fused.copy_token.tolist())) == expected
    assert fused.send_counts == [sum(1 for g, _ in expected if g == h) for h in range(num_gpus)]


@settings(max_examples=40, deadline=None)
@given(routes(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_fused_unpermute_sums_each_tokens_copies_like_the_reference(route, dtype):
    ids, weights, dest, num_gpus = route
    layout = fused_layout(ids, weights, dest, num_gpus, _no_exchange)
    gen = torch.Generator().manual_seed(ids.shape[0])
    x = torch.randn(ids.shape[0], 24, generator=gen).to(dtype)
    send = gather_copies(x, layout)
    assert torch.equal(send, x[layout.copy_token])
    back = (send.float() * (1.0 + torch.rand(send.shape[0], 1, generator=gen))).to(dtype)  # a different partial per copy
    out = fused_unpermute(back, layout, dtype, kernel="torch")
    assert torch.equal(out, reference_unpermute(back, layout, dtype))
    copies = (layout.token_copy >= 0).sum(1)
    assert torch.all(out[copies == 0] == 0)  # every slot dropped: no copy, a zero output
    identity = fused_unpermute(send, layout, torch.float32, kernel="torch")
    torch.testing.assert_close(identity, x.float() * copies[:, None], rtol=0, atol=0)


def test_layout_kernel_names_resolve_per_device():
    assert resolve_layout_kernel("auto", "cpu") == "torch"
    assert resolve_layout_kernel("reference", "cpu") == "reference"
    with pytest.raises(InputError, match="needs a CUDA device"):
        resolve_layout_kernel("triton", "cpu")
    with pytest.raises(InputError, match="--layout-kernel must be one of"):
        resolve_layout_kernel("fast", "cpu")


def _triton_device() -> str | None:
    """Where the Triton kernels run: a CUDA device, or the CPU under Triton's interpreter (TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


needs_triton = pytest.mark.skipif(_triton_device() is None, reason="needs triton and CUDA (or TRITON_INTERPRET=1)")


@needs_triton
@settings(max_examples=25, deadline=None)
@given(routes())
def test_triton_layout_and_gather_equal_the_pytorch_path(route):
    device = _triton_device()
    ids, weights, dest, num_gpus = (t.to(device) if isinstance(t, torch.Tensor) else t for t in route)
    torch_layout = fused_layout(ids, weights, dest, num_gpus, _no_exchange, kernel="torch")
    triton_layout = fused_layout(ids, weights, dest, num_gpus, _no_exchange, kernel="triton")
    assert triton_layout.send_counts == torch_layout.send_counts
    assert triton_layout.recv_counts == torch_layout.recv_counts
    assert torch.equal(triton_layout.copy_token, torch_layout.copy_token)
    assert torch.equal(triton_layout.token_copy, torch_layout.token_copy)
    assert torch.equal(triton_layout.meta, torch_layout.meta)
    x = torch.randn(ids.shape[0], 40, device=device)
    assert torch.equal(gather_copies(x, triton_layout, kernel="triton"), gather_copies(x, torch_layout))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_unpermute_equals_the_pytorch_path(dtype):
    device = _triton_device()
    torch.manual_seed(0)
    n, k, num_gpus, num_experts = (3000, 8, 4, 128) if device == "cuda" else (300, 8, 4, 128)
    hidden = 1024 + 96  # the last column block only partly used
    ids = torch.stack([torch.randperm(num_experts)[:k] for _ in range(n)])
    ids[torch.rand(n, k) < 0.1] = -1
    ids[7] = -1  # a token with no copy at all
    dest = torch.where(ids >= 0, ids % num_gpus, -1)
    layout = fused_layout(ids.to(device), torch.rand(n, k, device=device), dest.to(device), num_gpus, _no_exchange)
    back = torch.randn(layout.copy_token.numel(), hidden, device=device).to(dtype)
    fast = fused_unpermute(back, layout, dtype, kernel="triton")
    slow = fused_unpermute(back, layout, dtype, kernel="torch")
    assert torch.all(fast[7] == 0)
    if dtype == torch.float32 and device == "cpu":
        assert torch.equal(fast, slow)  # the same fp32 additions in the same order
        return
    # CUDA's index_add_ adds in any order, so an fp32 sum may differ in its last bit and, rarely, round to another
    # bf16; Triton's interpreter (CPU) rounds to bf16 by truncation, one bf16 step at most
    torch.testing.assert_close(fast.float(), slow.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)
    if device == "cuda":
        assert (fast != slow).float().mean() < 1e-3
