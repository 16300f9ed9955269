"""The fused layout's Triton kernels (CUDA): a parallel counting sort of token copies, the row gather, the un-permute.

The PyTorch version of the fused layout (:func:`routelens.runner.layout.fused_layout` with
``kernel="torch"``) is about twenty small kernels, each a few microseconds of GPU work and more of
host launch time; at 8k tokens per rank that launch time alone is comparable to the dispatch. Here:

1. :func:`copy_counts`: ``_block_counts`` counts, per block of ``BLOCK_TOKENS`` tokens, the tokens
   with a copy for each GPU; ``_block_offsets`` (one program) turns them into the per-GPU totals
   (the send counts) and each block's first row per GPU (an exclusive scan, GPU-major);
2. :func:`place_copies`: ``_place`` gives every copy its row (block offset + exclusive scan inside the
   block) and writes ``token_copy``, ``copy_token`` and ``meta`` there: the same stable
   GPU-major-then-token order as the reference's ``nonzero``;
3. :func:`gather_rows`: the send buffer, one program per (copy, column block), 16-byte loads;
4. :func:`sum_copies`: the un-permute, each returned row read once, fp32 accumulation in GPU order
   (the order the reference's ``index_add_`` adds them on CPU), one rounding.

Only imported where a CUDA device and Triton are at hand (:func:`routelens.runner.layout.resolve_layout_kernel`);
tests/runner/test_layout.py and benchmarks/bench_layout.py prove every output equal to the PyTorch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_TOKENS = 256  # tokens per program of the counting sort
BLOCK_COLUMNS = 1024  # hidden columns per program of the row kernels: 2 KiB of bf16, 16 bytes per thread (4 warps)
SCAN_ROWS = 64  # token blocks per step of the offsets scan


@triton.jit
def _hits(dest_ptr, tokens, in_range, gpus, K: tl.constexpr, BLOCK: tl.constexpr, G_PAD: tl.constexpr):
    """``[BLOCK, G_PAD]`` int32: 1 where the token has an expert choice on that GPU (-1 slots match none)."""
    hit = tl.zeros([BLOCK, G_PAD], dtype=tl.int32)
    for j in tl.static_range(K):
        dest = tl.load(dest_ptr + tokens * K + j, mask=in_range, other=-1)
        hit = tl.maximum(hit, (dest[:, None] == gpus[None, :]).to(tl.int32))
    return hit


@triton.jit
def _block_counts(dest_ptr, n, block_counts_ptr, G, K: tl.constexpr, G_PAD: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    tokens = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    gpus = tl.arange(0, G_PAD)
    hit = _hits(dest_ptr, tokens, tokens < n, gpus, K, BLOCK, G_PAD)
    tl.store(block_counts_ptr + block * G + gpus, tl.sum(hit, axis=0).to(tl.int64), mask=gpus < G)


@triton.jit
def _block_offsets(block_counts_ptr, num_blocks, block_offsets_ptr, send_counts_ptr, G,
                   G_PAD: tl.constexpr, ROWS: tl.constexpr):
    gpus = tl.arange(0, G_PAD)
    totals = tl.zeros([G_PAD], dtype=tl.int64)
    for first in range(0, num_blocks, ROWS):
        rows = first + tl.arange(0, ROWS)
        where = (rows < num_blocks)[:, None] & (gpus < G)[None, :]
        totals += tl.sum(tl.load(block_counts_ptr + rows[:, None] * G + gpus[None, :], mask=where, other=0), axis=0)
    tl.store(send_counts_ptr + gpus, totals, mask=gpus < G)
    carry = tl.cumsum(totals, axis=0) - totals  # first row of each GPU's block of the send buffer
    for first in range(0, num_blocks, ROWS):
        rows = first + tl.arange(0, ROWS)
        where = (rows < num_blocks)[:, None] & (gpus < G)[None, :]
        counts = tl.load(block_counts_ptr + rows[:, None] * G + gpus[None, :], mask=where, other=0)
        tl.store(block_offsets_ptr + rows[:, None] * G + gpus[None, :],
                 carry[None, :] + tl.cumsum(counts, axis=0) - counts, mask=where)
        carry += tl.sum(counts, axis=0)


@triton.jit
def _place(dest_ptr, ids_ptr, weights_ptr, n, block_offsets_ptr, token_copy_ptr, copy_token_ptr, meta_ptr, G,
           K: tl.constexpr, G_PAD: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    tokens = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = tokens < n
    gpus = tl.arange(0, G_PAD)
    hit = _hits(dest_ptr, tokens, in_range, gpus, K, BLOCK, G_PAD)
    first = tl.load(block_offsets_ptr + block * G + gpus, mask=gpus < G, other=0)
    row = first[None, :] + (tl.cumsum(hit, axis=0) - hit).to(tl.int64)  # [BLOCK, G_PAD]
    is_copy = hit > 0
    tl.store(token_copy_ptr + tokens[:, None] * G + gpus[None, :], tl.where(is_copy, row, -1),
             mask=in_range[:, None] & (gpus < G)[None, :])
    tl.store(copy_token_ptr + row, tl.broadcast_to(tokens[:, None], [BLOCK, G_PAD]), mask=is_copy)
    for j in tl.static_range(K):
        dest = tl.load(dest_ptr + tokens * K + j, mask=in_range, other=-1)
        expert = tl.load(ids_ptr + tokens * K + j, mask=in_range, other=-1).to(tl.float32)
        weight = tl.load(weights_ptr + tokens * K + j, mask=in_range, other=0.0).to(tl.float32)
        on_gpu = dest[:, None] == gpus[None, :]
        tl.store(meta_ptr + row * (2 * K) + j, tl.where(on_gpu, expert[:, None], -1.0), mask=is_copy)
        tl.store(meta_ptr + row * (2 * K) + K + j, tl.where(on_gpu, weight[:, None], 0.0), mask=is_copy)


def _gpu_pad(num_gpus: int) -> int:
    return max(2, triton.next_power_of_2(num_gpus))


def copy_counts(dest_gpu: torch.Tensor, num_gpus: int):
    """Stage 1: ``(state, send_counts [G] long)``; ``state`` holds each token block's first row per GPU."""
    dest_gpu = dest_gpu.contiguous()
    n, k = dest_gpu.shape
    num_blocks = max(1, triton.cdiv(n, BLOCK_TOKENS))
    block_counts = torch.empty(num_blocks, num_gpus, dtype=torch.long, device=dest_gpu.device)
    block_offsets = torch.empty_like(block_counts)
    send_counts = torch.empty(num_gpus, dtype=torch.long, device=dest_gpu.device)
    _block_counts[(num_blocks,)](dest_gpu, n, block_counts, num_gpus, K=k, G_PAD=_gpu_pad(num_gpus), BLOCK=BLOCK_TOKENS)
    _block_offsets[(1,)](block_counts, num_blocks, block_offsets, send_counts, num_gpus,
                         G_PAD=_gpu_pad(num_gpus), ROWS=SCAN_ROWS)
    return block_offsets, send_counts


def place_copies(block_offsets: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                 dest_gpu: torch.Tensor, num_gpus: int):
    """Stage 2: ``token_copy [n, G]``, ``copy_token [n·G]``, ``meta [n·G, 2k]`` (rows past ``C`` unused)."""
    dest_gpu, topk_ids, topk_weights = dest_gpu.contiguous(), topk_ids.contiguous(), topk_weights.contiguous()
    n, k = dest_gpu.shape
    device = dest_gpu.device
    token_copy = torch.empty(n, num_gpus, dtype=torch.long, device=device)
    copy_token = torch.empty(max(1, n * num_gpus), dtype=torch.long, device=device)
    meta = torch.empty(max(1, n * num_gpus), 2 * k, dtype=torch.float32, device=device)
    if n > 0:
        _place[(triton.cdiv(n, BLOCK_TOKENS),)](dest_gpu, topk_ids, topk_weights, n, block_offsets, token_copy,
                                                copy_token, meta, num_gpus, K=k, G_PAD=_gpu_pad(num_gpus),
                                                BLOCK=BLOCK_TOKENS)
    return token_copy, copy_token, meta


@triton.jit
def _gather_rows(x_ptr, index_ptr, out_ptr, hidden, x_row_stride, out_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < hidden
    source = tl.load(index_ptr + row)
    tl.store(out_ptr + row * out_row_stride + cols, tl.load(x_ptr + source * x_row_stride + cols, mask=in_row),
             mask=in_row)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for ``x [n, H]`` and ``index [C]``: one program per (row, column block)."""
    x = x if x.stride(1) == 1 else x.contiguous()
    out = torch.empty(index.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    if out.numel() > 0:
        grid = (index.shape[0], triton.cdiv(x.shape[1], BLOCK_COLUMNS))
        _gather_rows[grid](x, index.contiguous(), out, x.shape[1], x.stride(0), out.stride(0), BLOCK=BLOCK_COLUMNS,
                           num_warps=4)
    return out


@triton.jit
def _sum_copies(back_ptr, token_copy_ptr, out_ptr, hidden, back_row_stride, out_row_stride,
                NUM_GPUS: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < hidden
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for g in tl.static_range(NUM_GPUS):
        row = tl.load(token_copy_ptr + token * NUM_GPUS + g)  # row of (token, g) in back, -1: no copy
        part = tl.load(back_ptr + row * back_row_stride + cols, mask=in_row & (row >= 0), other=0.0)
        acc += part.to(tl.float32)
    tl.store(out_ptr + token * out_row_stride + cols, acc.to(out_ptr.dtype.element_ty), mask=in_row)


def sum_copies(back: torch.Tensor, token_copy: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``out[t] = Σ_g back[token_copy[t, g]]`` over ``token_copy[t, g] >= 0``, accumulated in fp32.

    Args:
        back: ``[C, H]`` returned copies (CUDA).
        token_copy: ``[n, G]`` long, row of each token's copy per GPU, -1 for none.
        out_dtype: dtype of the ``[n, H]`` result.
    """
    n, num_gpus = token_copy.shape
    hidden = back.shape[1]
    if back.shape[0] == 0:  # nothing came back (every slot dropped): zeros, and no pointer to an empty tensor
        return torch.zeros(n, hidden, dtype=out_dtype, device=back.device)
    back = back if back.stride(1) == 1 else back.contiguous()
    out = torch.empty(n, hidden, dtype=out_dtype, device=back.device)
    if n > 0:
        grid = (n, triton.cdiv(hidden, BLOCK_COLUMNS))
        _sum_copies[grid](back, token_copy.contiguous(), out, hidden, back.stride(0), out.stride(0),
                          NUM_GPUS=num_gpus, BLOCK=BLOCK_COLUMNS, num_warps=4)
    return out
