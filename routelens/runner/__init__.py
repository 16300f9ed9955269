"""Distributed runner: replay a trace with a plan over torch.distributed and measure the All-to-All.

Expert-parallel MoE layers driven by a :class:`~routelens.trace.Trace` (routing) and a
:class:`~routelens.plan.Plan` (which GPU serves which expert), on NCCL/GPU or gloo/CPU with the
same code. Nothing here imports the dashboard (streamlit, plotly).

Modules:
    config    BenchConfig: the frozen, typed configuration the command builds and every rank reads
    routing   host-side routes of a trace under a plan (via routelens.placement.traffic, numpy)
    inputs    set-up: trace, plans, sizes; each rank's routes, expert weights and tokens
    experts   expert weights (random or from a checkpoint) and grouped-GEMM SwiGLU experts
    exchange  the All-to-All exchanges (counts, uneven rows)
    layout    the layout phase: token copies grouped by destination GPU and back (fused + reference)
    layout_triton  the fused un-permute as a Triton kernel (CUDA only)
    layer     one EP MoE layer: layout, dispatch, experts, combine (+ overlap measurement)
    replay    the timed, interleaved replay of every plan and layer
    timing    CUDA-event / wall-clock phase timers
    check     ``--check``: distributed output vs the single-process reference
    calibration  ``--calibrate``: fit link latency and bandwidth from plain All-to-Alls
    group     joining torchrun's process group (RankContext); high-priority NCCL groups
    report    raw per-rank measurements -> report and table
    bench     ``python -m routelens.runner.bench`` (torchrun entry point): set-up, replay, report
"""

from .routing import (
    LayerRoute,
    contiguous_plan,
    plan_routes,
    rank_token_range,
    tiled_token_index,
    token_source_gpu,
)

__all__ = [
    "LayerRoute",
    "contiguous_plan",
    "plan_routes",
    "rank_token_range",
    "tiled_token_index",
    "token_source_gpu",
]
