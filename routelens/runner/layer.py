"""One expert-parallel MoE layer, replayed from a trace: layout, dispatch, experts, combine.

Each rank holds ``n`` tokens ``x [n, H]`` and, from the trace and the plan, each token's experts
``topk_ids [n, k]``, weights ``[n, k]`` and serving GPUs ``dest [n, k]``. The layer

1. **layout** (:mod:`routelens.runner.layout`): makes one copy of a token per *distinct* destination
   GPU (the C2R paper's point: a token whose experts share a GPU is sent there once), grouped by GPU;
   exchanges the per-peer copy counts, then per copy the expert ids it needs on that GPU and their
   weights (``2k`` floats); at the end, sums each token's returned copies (the un-permute);
2. **dispatch**: ``all_to_all_single`` of the copies' hidden states (uneven splits);
3. **experts**: each rank runs the received rows through its local experts (grouped GEMMs) and sums
   each copy's expert outputs, weighted, into one partial result per copy;
4. **combine**: ``all_to_all_single`` of the partial results back to their tokens, summed there.

The output equals :func:`routelens.runner.experts.reference_moe` on the gathered tokens (tests check).
With ``shortcut`` weights the layer also runs a dense MLP on the same tokens (the shortcut path of
ScMoE / a shared expert), first alone, then overlapped with a second dispatch on a second stream, to
measure how much of the All-to-All can hide behind independent compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .exchange import all_to_all_rows, exchange_counts, sync_peers
from .experts import ExpertBank, run_experts
from .layout import build_layout, send_buffer, unpermute
from .timing import PhaseTimer


@dataclass
class LocalRoute:
    """A rank's routing for one layer, on its device.

    Attributes:
        topk_ids: ``[n, k]`` long global expert ids.
        topk_weights: ``[n, k]`` float32.
        dest_gpu: ``[n, k]`` long GPU serving each choice.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    dest_gpu: torch.Tensor


@dataclass
class LayerTraffic:
    """What one rank's dispatch really moved (read from the split sizes handed to the All-to-All).

    ``send_counts[p]`` copies to rank ``p`` (``p == rank``: kept locally, no link crossed), and
    ``recv_counts[p]`` copies from rank ``p``.
    """

    send_counts: list[int]
    recv_counts: list[int]


def shortcut_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Dense SwiGLU MLP ``[n, H] -> [n, H]`` (``gate_up [2I, H]``, ``down [H, I]``)."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


def expert_partials(recv_x: torch.Tensor, recv_meta: torch.Tensor, bank: ExpertBank, kernel: str = "auto") -> torch.Tensor:
    """``[R, H]`` per received copy, the weighted sum of its experts' outputs on this rank."""
    k = recv_meta.shape[1] // 2
    recv_expert = recv_meta[:, :k].to(torch.long)
    copy_idx, choice = (recv_expert >= 0).nonzero(as_tuple=True)
    rows = bank.row_of_expert[recv_expert[copy_idx, choice]]
    rows_sorted, order = torch.sort(rows, stable=True)
    rows_count = torch.bincount(rows_sorted, minlength=bank.num_rows)
    source_copy = copy_idx[order]
    y = run_experts(recv_x[source_copy], rows_count, bank, kernel=kernel)
    y.mul_(recv_meta[:, k:][copy_idx, choice][order].to(y.dtype)[:, None])
    partial = torch.zeros(recv_x.shape[0], recv_x.shape[1], dtype=y.dtype, device=y.device)
    partial.index_add_(0, source_copy, y)
    return partial


def ep_moe_layer(
    x: torch.Tensor,
    route: LocalRoute,
    bank: ExpertBank,
    num_gpus: int,
    timer: PhaseTimer | None = None,
    group=None,
    sync: bool = True,
    shortcut: tuple[torch.Tensor, torch.Tensor] | None = None,
    kernel: str = "auto",
    layout_kernel: str = "torch",
) -> tuple[torch.Tensor, LayerTraffic]:
    """Run one MoE layer with expert parallelism over the process group.

    Args:
        x: ``[n, H]`` this rank's tokens.
        route: their routing (:class:`LocalRoute`).
        bank: the experts this rank serves.
        timer: records phases ``layout``, ``dispatch``, ``experts``, ``combine`` and, with
            ``shortcut``, ``shortcut`` (alone) and ``overlap`` (dispatch and shortcut together).
        sync: put a peer barrier before each All-to-All (outside the timed phases), so a phase's
            time is its own and not the skew of the phase before.
        shortcut: ``(gate_up [2I, H], down [H, I])`` of a dense MLP for the overlap measurement.
        kernel: the experts' GEMMs (:func:`routelens.runner.experts.run_experts`).
        layout_kernel: ``triton``, ``torch`` or ``reference``, already resolved for the device
            (:func:`routelens.runner.layout.resolve_layout_kernel`).

    Returns:
        ``[n, H]`` the MoE output (dtype of ``x``), and the traffic this rank moved.
    """
    timer = timer or PhaseTimer(x.device, enabled=False)
    with timer.phase("layout"):
        layout = build_layout(route.topk_ids, route.topk_weights, route.dest_gpu, num_gpus,
                              lambda counts: exchange_counts(counts, group), layout_kernel)
        send_counts, recv_counts = layout.send_counts, layout.recv_counts
        recv_meta, _ = all_to_all_rows(layout.meta, send_counts, recv_counts, group)
        send_x = send_buffer(x, layout, layout_kernel)
    if sync:
        sync_peers(x.device, group)
    with timer.phase("dispatch"):
        recv_x, _ = all_to_all_rows(send_x, send_counts, recv_counts, group)
    if shortcut is not None:
        _measure_overlap(x, send_x, send_counts, recv_counts, shortcut, timer, group, sync)
    with timer.phase("experts"):
        partial = expert_partials(recv_x, recv_meta, bank, kernel=kernel)
    if sync:
        sync_peers(x.device, group)
    with timer.phase("combine"):
        back, _ = all_to_all_rows(partial, recv_counts, send_counts, group)
    with timer.phase("layout"):  # un-permute: part of the layout cost, not of the link
        out = unpermute(back, layout, x.dtype, layout_kernel)
    return out, LayerTraffic(send_counts, recv_counts)


def _measure_overlap(x, send_x, send_counts, recv_counts, shortcut, timer: PhaseTimer, group, sync: bool) -> None:
    """Time the shortcut MLP alone, then again while a second copy of the dispatch is in flight.

    The dispatch runs on the communication stream (NCCL's own; gloo's worker thread on CPU), the
    shortcut on a second CUDA stream, both ordered after the current stream. Communication hidden
    = (dispatch + shortcut − overlap) / dispatch.
    """
    gate_up, down = shortcut
    with timer.phase("shortcut"):
        shortcut_mlp(x, gate_up, down)
    if sync:
        sync_peers(x.device, group)
    with timer.phase("overlap"):
        _, work = all_to_all_rows(send_x, send_counts, recv_counts, group, async_op=True)
        if x.device.type == "cuda":
            side = _side_stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                shortcut_mlp(x, gate_up, down)
            torch.cuda.current_stream(x.device).wait_stream(side)
        else:
            shortcut_mlp(x, gate_up, down)
        work.wait()


_SIDE_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}


def _side_stream(device: torch.device):
    """One reusable second stream per device (creating streams per call costs driver time)."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[device]


def gather_tokens(local: torch.Tensor, group=None) -> torch.Tensor:
    """All ranks' rows in rank order (uneven row counts allowed); for tests and references."""
    world = dist.get_world_size(group)
    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c) for c in counts]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])
