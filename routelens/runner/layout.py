"""The layout phase of an expert-parallel layer: token copies grouped by destination GPU, and back.

A rank holds ``n`` tokens; token ``t`` sends one copy to every *distinct* GPU among its experts'
(``dest_gpu[t, :]``, -1 = dropped slot; the C2R paper's one-copy-per-device dispatch). The send buffer
holds the copies **GPU-major, then in token order** (``all_to_all_single`` wants each peer's rows in
one block); with every copy goes ``meta``: the expert ids it wants on that GPU (-1 elsewhere) and
their routing weights. After the combine the copies' partial results come back in the same order
and are summed into token order (the *un-permute*).

Two implementations of that one definition, proven equal in tests/runner/test_layout.py:

* **reference** (:func:`reference_layout`, :func:`reference_unpermute`): the readable one:
  ``nonzero`` of a ``[n, G]`` hit mask (a host sync), ``x[copy_token]``, and an fp32 ``index_add_``.
* **fused** (:func:`fused_layout`, :func:`fused_unpermute`): a counting sort on the GPU: per-GPU
  counts and each copy's row from a cumulative sum of the hit mask (no sort, no ``nonzero``); the
  counts start for the host (pinned, non-blocking) as soon as they exist, so the one host sync
  (the split sizes ``all_to_all_single`` needs) overlaps the index work; one ``index_select`` into
  the send buffer; the un-permute reads each token's ``<= G`` copies through a ``[n, G]`` table of
  rows and sums them in fp32 in one pass: a Triton kernel on CUDA
  (:mod:`routelens.runner.layout_triton`), ``index_add_`` in PyTorch elsewhere. No Python loop
  over experts or ranks.

Both add a token's copies in GPU order in fp32 and round once, so on CPU they agree bit for bit.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from .config import LAYOUT_KERNELS  # triton / torch: the fused layout, its un-permute in Triton or PyTorch


@dataclass
class CopyLayout:
    """Where one rank's token copies go, and where they come back.

    Attributes:
        copy_token: ``[C]`` long, local token of each copy (GPU-major, then token order).
        token_copy: ``[n, G]`` long, row of token ``t``'s copy for GPU ``g`` in the send buffer,
            -1 where ``t`` sends nothing to ``g``.
        meta: ``[C, 2k]`` float32, per copy the expert ids wanted on its GPU (-1 elsewhere; ids < 2^24
            are exact in float32), then their routing weights (0 elsewhere).
        send_counts: ``[G]`` copies sent to each rank (own rank: kept locally).
        recv_counts: ``[G]`` copies each rank sends here.
    """

    copy_token: torch.Tensor
    token_copy: torch.Tensor
    meta: torch.Tensor
    send_counts: list[int]
    recv_counts: list[int]


def resolve_layout_kernel(kernel: str, device) -> str:
    """The layout implementation ``kernel`` means on ``device``: ``triton``, ``torch`` or ``reference``.

    Raises:
        InputError: an unknown name, or ``triton`` where no CUDA device or no Triton is at hand.
    """
    if kernel not in LAYOUT_KERNELS:
        raise InputError(f"--layout-kernel must be one of {', '.join(LAYOUT_KERNELS)}, got {kernel!r}")
    cuda = torch.device(device).type == "cuda"
    has_triton = importlib.util.find_spec("triton") is not None
    if kernel == "auto":
        return "triton" if cuda and has_triton else "torch"
    if kernel == "triton" and not (cuda and has_triton):
        raise InputError("--layout-kernel triton needs a CUDA device and the triton package")
    return kernel


def destination_hits(dest_gpu: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """``[n, G]`` bool: token ``t`` has at least one expert choice on GPU ``g`` (-1 slots ignored)."""
    n = dest_gpu.shape[0]
    hit = torch.zeros(n, num_gpus + 1, dtype=torch.bool, device=dest_gpu.device)  # column G: dropped slots
    hit.scatter_(1, torch.where(dest_gpu >= 0, dest_gpu, num_gpus), True)
    return hit[:, :num_gpus]


def copy_meta(topk_ids: torch.Tensor, topk_weights: torch.Tensor, dest_gpu: torch.Tensor,
              copy_token: torch.Tensor, copy_gpu: torch.Tensor) -> torch.Tensor:
    """``[C, 2k]`` float32 metadata of each copy (see :class:`CopyLayout`)."""
    on_gpu = dest_gpu[copy_token] == copy_gpu[:, None]
    return torch.cat([torch.where(on_gpu, topk_ids[copy_token], -1).to(torch.float32),
                      torch.where(on_gpu, topk_weights[copy_token], 0.0).to(torch.float32)], dim=1)


# --------------------------------------------------------------------------- reference
def reference_layout(topk_ids: torch.Tensor, topk_weights: torch.Tensor, dest_gpu: torch.Tensor, num_gpus: int,
                     exchange: Callable[[torch.Tensor], torch.Tensor]) -> CopyLayout:
    """The readable layout: ``nonzero`` over the transposed hit mask lists the copies GPU-major.

    Args:
        topk_ids, topk_weights, dest_gpu: ``[n, k]`` this rank's routing (see :class:`LocalRoute`).
        exchange: ``[G]`` send counts -> ``[G]`` receive counts (the process group's count exchange).
    """
    hit = destination_hits(dest_gpu, num_gpus)
    copy_gpu, copy_token = hit.t().nonzero(as_tuple=True)
    send_counts = hit.sum(0)
    recv_counts = exchange(send_counts)
    token_copy = torch.full(hit.shape, -1, dtype=torch.long, device=hit.device)
    token_copy[copy_token, copy_gpu] = torch.arange(copy_token.numel(), device=hit.device)
    return CopyLayout(copy_token, token_copy, copy_meta(topk_ids, topk_weights, dest_gpu, copy_token, copy_gpu),
                      send_counts.tolist(), recv_counts.tolist())


def reference_unpermute(back: torch.Tensor, layout: CopyLayout, out_dtype: torch.dtype) -> torch.Tensor:
    """``[n, H]``: each token's returned copies ``back [C, H]`` summed in fp32, then cast to ``out_dtype``."""
    n = layout.token_copy.shape[0]
    out = torch.zeros(n, back.shape[1], dtype=torch.float32, device=back.device)
    out.index_add_(0, layout.copy_token, back.to(torch.float32))
    return out.to(out_dtype)


# --------------------------------------------------------------------------- fused
class _CountsToHost:
    """Start copying a small GPU tensor to the host now; :meth:`wait` returns it as a list.

    On CUDA the copy goes to pinned memory without blocking and an event marks its end, so the
    host only waits for the kernels enqueued *before* the copy, while those enqueued after it (the
    index work) keep the GPU busy. On CPU the tensor is already there.
    """

    def __init__(self, values: torch.Tensor):
        self.event = None
        if values.is_cuda:
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = values

    def wait(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def fused_layout(topk_ids: torch.Tensor, topk_weights: torch.Tensor, dest_gpu: torch.Tensor, num_gpus: int,
                 exchange: Callable[[torch.Tensor], torch.Tensor], kernel: str = "torch") -> CopyLayout:
    """The same layout as :func:`reference_layout` by a counting sort: one host sync, no ``nonzero``.

    Copy ``(t, g)`` goes to row ``start[g] + (number of tokens before t that also send to g)``, where
    ``start`` is the exclusive cumulative sum of the per-GPU counts: a stable sort by destination
    GPU in ``O(n·G)`` work, all on the device. Two stages: the counts (sent to the host at once), then
    every copy's row, token and metadata written into buffers of the largest possible size ``n·G``
    while the counts travel; the host only cuts the buffers to the ``C`` copies.

    Args:
        kernel: ``torch`` (PyTorch ops, about twenty small kernels) or ``triton`` (three Triton
            kernels, :mod:`routelens.runner.layout_triton`; CUDA).
    """
    if kernel == "triton":
        from .layout_triton import copy_counts, place_copies
    else:
        copy_counts, place_copies = _copy_counts_torch, _place_copies_torch
    state, send_counts = copy_counts(dest_gpu, num_gpus)
    recv_counts = exchange(send_counts)
    counts = _CountsToHost(torch.cat([send_counts, recv_counts]))  # the one host sync waits for this only
    token_copy, copy_token, meta = place_copies(state, topk_ids, topk_weights, dest_gpu, num_gpus)
    both = counts.wait()
    send, recv = both[:num_gpus], both[num_gpus:]
    num_copies = sum(send)
    return CopyLayout(copy_token[:num_copies], token_copy, meta[:num_copies], send, recv)


def _copy_counts_torch(dest_gpu: torch.Tensor, num_gpus: int):
    """``((hit [n, G] bool, hit as long), send_counts [G] long)``."""
    hit = destination_hits(dest_gpu, num_gpus)
    hit_long = hit.to(torch.long)
    send_counts = hit_long.sum(0)
    return (hit, hit_long, send_counts), send_counts


def _place_copies_torch(state, topk_ids, topk_weights, dest_gpu, num_gpus: int):
    """``token_copy [n, G]``, ``copy_token [n·G + 1]`` and ``meta [n·G + 1, 2k]`` (rows past ``C`` unused)."""
    hit, hit_long, send_counts = state
    n, G = hit.shape
    device = hit.device
    first_row = torch.cumsum(send_counts, 0) - send_counts - 1  # [G] row of each GPU's block, minus one
    token_copy = torch.where(hit, torch.cumsum(hit_long, 0) + first_row, -1)  # [n, G]
    target = torch.where(hit, token_copy, n * G).view(-1)  # no copy: row n·G, a dump row never read
    copy_token = torch.empty(n * G + 1, dtype=torch.long, device=device)
    copy_token.scatter_(0, target, torch.arange(n, device=device).repeat_interleave(G))
    on_gpu = dest_gpu.unsqueeze(1) == torch.arange(G, device=device).view(1, G, 1)  # [n, G, k]
    table = torch.cat([torch.where(on_gpu, topk_ids.unsqueeze(1), -1).to(torch.float32),
                       torch.where(on_gpu, topk_weights.unsqueeze(1), 0.0).to(torch.float32)], dim=2)
    meta = torch.empty(n * G + 1, table.shape[2], dtype=torch.float32, device=device)
    meta.index_copy_(0, target, table.view(n * G, table.shape[2]))
    return token_copy, copy_token, meta


def gather_copies(x: torch.Tensor, layout: CopyLayout, kernel: str = "torch") -> torch.Tensor:
    """``[C, H]`` send buffer: row ``c`` is ``x[copy_token[c]]`` (one ``index_select``, or a Triton row copy)."""
    if kernel == "triton":
        from .layout_triton import gather_rows

        return gather_rows(x, layout.copy_token)
    return torch.index_select(x, 0, layout.copy_token)


def fused_unpermute(back: torch.Tensor, layout: CopyLayout, out_dtype: torch.dtype, kernel: str) -> torch.Tensor:
    """``[n, H]``: each token's copies in ``back [C, H]`` summed in fp32 in GPU order, cast once.

    ``kernel="triton"``: one pass reading each returned row once (:func:`layout_triton.sum_copies`);
    otherwise :func:`reference_unpermute`.
    """
    if kernel == "triton":
        from .layout_triton import sum_copies

        return sum_copies(back, layout.token_copy, out_dtype)
    return reference_unpermute(back, layout, out_dtype)


# --------------------------------------------------------------------------- one entry point
def build_layout(topk_ids, topk_weights, dest_gpu, num_gpus: int, exchange, kernel: str) -> CopyLayout:
    """The layout by the resolved ``kernel`` (:func:`resolve_layout_kernel`)."""
    if kernel == "reference":
        return reference_layout(topk_ids, topk_weights, dest_gpu, num_gpus, exchange)
    return fused_layout(topk_ids, topk_weights, dest_gpu, num_gpus, exchange, kernel)


def send_buffer(x: torch.Tensor, layout: CopyLayout, kernel: str) -> torch.Tensor:
    """The dispatch's send buffer by the resolved ``kernel``: ``x[copy_token]`` for the reference path."""
    return x[layout.copy_token] if kernel == "reference" else gather_copies(x, layout, kernel)


def unpermute(back: torch.Tensor, layout: CopyLayout, out_dtype: torch.dtype, kernel: str) -> torch.Tensor:
    """The un-permute by the resolved ``kernel``."""
    if kernel == "reference":
        return reference_unpermute(back, layout, out_dtype)
    return fused_unpermute(back, layout, out_dtype, kernel)
