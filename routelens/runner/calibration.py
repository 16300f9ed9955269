"""``--calibrate``: fit the cost model's link latency and bandwidth from plain All-to-Alls, store, load."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ResultFileError
from ..formats import CALIBRATION


def load_calibration(folder: str | os.PathLike, backend: str, world: int) -> dict[str, Any]:
    """The link numbers fitted by ``--calibrate`` for this back-end and world size, stored in ``folder``.

    Returns ``{"source": path, "topology": {...link overrides...}, "latency_us", "bandwidth_GBps"}``, or
    ``{"source": "default", "topology": {}}`` when there is none (the plans' nominal link numbers are used).

    Raises:
        ResultFileError: the file is corrupt, of another format or version, or lacks the fitted numbers.
    """
    path = Path(folder) / CALIBRATION.file_name({"backend": backend, "num_gpus": world})
    if not path.is_file():
        return {"source": "default", "topology": {}}
    fit = CALIBRATION.read(path)
    overrides = fit.get("topology")
    if not overrides:
        num_nodes = fit.get("num_nodes", 1)
        overrides = calibration_topology(fit["latency_us"], fit["bandwidth_GBps"], num_nodes if isinstance(num_nodes, int) else 1)
    elif not (isinstance(overrides, dict) and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                                  for v in overrides.values())):
        raise ResultFileError(f"calibration {path}: 'topology' must map link fields to positive numbers")
    return {"source": str(path), "topology": overrides, "latency_us": fit["latency_us"],
            "bandwidth_GBps": fit["bandwidth_GBps"]}


def calibration_topology(latency_us: float, bandwidth_GBps: float, num_nodes: int = 1) -> dict[str, float]:
    """Topology fields a fit replaces: the intra-node link on one node, the inter-node link across nodes
    (an even All-to-All over several nodes is bound by the slower inter-node links)."""
    prefix = "inter" if num_nodes > 1 else "intra"
    return {f"{prefix}_gbps": float(bandwidth_GBps), f"{prefix}_latency_us": float(latency_us)}


def calibrate(ctx, max_mib: float = 64.0, repeats: int = 10, warmup: int = 3) -> dict[str, Any] | None:
    """Time even ``all_to_all_single`` calls from 4 KiB to ``max_mib`` MiB per peer (×4 steps);
    fit ``t = α + bytes / β``.

    ``bytes`` is what one rank sends to the others; the fit gives the cost model's link latency and
    bandwidth (``routelens.placement.cost.estimate_time``: ``latency + max(sent, received) · bytes /
    bandwidth`` per GPU).

    Args:
        ctx: the :class:`~routelens.runner.group.RankContext` (every rank calls this).
        repeats, warmup: timed (median taken) and untimed calls per size.

    Returns:
        On rank 0 the fit (the ``routelens-calibration`` file's content), None elsewhere.

    Raises:
        InputError: fewer than 2 ranks, or ``max_mib`` too small for two sizes.
    """
    import torch

    from .exchange import all_to_all_rows, sync_peers
    from .timing import PhaseTimer

    rank, world, device, group = ctx.rank, ctx.world, ctx.device, ctx.group
    if world < 2:
        raise InputError("--calibrate needs at least 2 ranks")
    timer = PhaseTimer(device)
    points = []
    max_bytes = max_mib * 2**20
    sizes = [4096 * 4 ** i for i in range(16) if 4096 * 4 ** i <= max_bytes]
    if len(sizes) < 2:
        raise InputError("--calibrate-max-mib must allow at least two sizes (>= 0.016 MiB)")
    for per_peer in sizes:
        elems = per_peer // 4
        splits = [0 if p == rank else elems for p in range(world)]
        buf = torch.empty(sum(splits), dtype=torch.float32, device=device)
        samples = []
        for it in range(warmup + repeats):
            sync_peers(device, group)
            with timer.phase("a2a"):
                all_to_all_rows(buf, splits, splits, group)
            ms = timer.collect()["a2a"]
            if it >= warmup:
                samples.append(ms)
        times = torch.tensor([float(np.median(samples))], device=device)
        import torch.distributed as dist

        dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
        points.append({"bytes_per_rank": per_peer * (world - 1), "ms": float(times.item())})
    if rank != 0:
        return None
    sizes = np.array([p["bytes_per_rank"] for p in points], dtype=np.float64)
    ms = np.array([p["ms"] for p in points])
    A = np.stack([np.ones_like(sizes), sizes], 1)
    # weight by 1/t so the small sizes (latency) count as much as the large ones (bandwidth)
    coef, *_ = np.linalg.lstsq(A / ms[:, None], np.ones_like(ms), rcond=None)
    latency_ms, ms_per_byte = max(coef[0], 0.0), max(coef[1], 1e-15)
    num_nodes = max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    latency_us, bandwidth = latency_ms * 1e3, 1.0 / ms_per_byte / 1e6
    return {**CALIBRATION.header(), "backend": ctx.backend, "num_gpus": world,
            "num_nodes": num_nodes, "latency_us": latency_us, "bandwidth_GBps": bandwidth,
            "topology": calibration_topology(latency_us, bandwidth, num_nodes), "points": points,
            "device": device_name(device), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}




def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
