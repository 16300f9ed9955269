"""The layout's un-permute as one Triton kernel (CUDA): sum each token's returned copies in one pass.

PyTorch's ``index_add_`` needs the copies in fp32 first (a ``[C, H]`` fp32 temporary), a zeroed fp32
output and atomics, then a cast: about five times the bytes of the work itself. This kernel reads
each returned row once and writes each output row once, adding a token's ``<= G`` copies in fp32 in
GPU order (the order :func:`routelens.runner.layout.reference_unpermute` adds them on CPU) and
rounding once. Only imported where a CUDA device and Triton are at hand
(:func:`routelens.runner.layout.resolve_layout_kernel`); the plain PyTorch path computes the same
(tests/runner/test_layout.py, benchmarks/bench_layout.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_COLUMNS = 1024  # hidden columns per program: 2 KiB of bf16, one 16-byte load per thread with 4 warps


@triton.jit
def _sum_copies_kernel(back_ptr, token_copy_ptr, out_ptr, hidden, back_row_stride, out_row_stride,
                       NUM_GPUS: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < hidden
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for g in tl.static_range(NUM_GPUS):
        row = tl.load(token_copy_ptr + token * NUM_GPUS + g)  # int64 row of (token, g), -1: no copy
        part = tl.load(back_ptr + row * back_row_stride + cols, mask=in_row & (row >= 0), other=0.0)
        acc += part.to(tl.float32)
    tl.store(out_ptr + token * out_row_stride + cols, acc.to(out_ptr.dtype.element_ty), mask=in_row)


def sum_copies(back: torch.Tensor, token_copy: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``out[t] = Σ_g back[token_copy[t, g]]`` over ``token_copy[t, g] >= 0``, accumulated in fp32.

    Args:
        back: ``[C, H]`` returned copies (CUDA, rows contiguous).
        token_copy: ``[n, G]`` long, row of each token's copy per GPU, -1 for none.
        out_dtype: dtype of the ``[n, H]`` result.
    """
    n, num_gpus = token_copy.shape
    hidden = back.shape[1]
    if back.shape[0] == 0:  # nothing came back (every slot dropped): zeros, and no pointer to an empty tensor
        return torch.zeros(n, hidden, dtype=out_dtype, device=back.device)
    back = back if back.stride(1) == 1 else back.contiguous()
    out = torch.empty(n, hidden, dtype=out_dtype, device=back.device)
    if n == 0:
        return out
    grid = (n, triton.cdiv(hidden, BLOCK_COLUMNS))
    _sum_copies_kernel[grid](back, token_copy.contiguous(), out, hidden, back.stride(0), out.stride(0),
                             NUM_GPUS=num_gpus, BLOCK=BLOCK_COLUMNS, num_warps=4)
    return out
