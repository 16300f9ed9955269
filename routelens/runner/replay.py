"""The timed replay: every layer under every plan, interleaved, repeated; one raw record per rank.

Each repeat runs all plans (the order rotates every repeat, so the plans share the machine's state
and their ratios are fair), all layers each, and next to every layer a plain even
``all_to_all_single`` of the same total bytes. The first ``warmup`` repeats are untimed.
"""

from __future__ import annotations

import sys
from typing import Any

from .config import BenchConfig
from .group import RankContext
from .inputs import BenchSetup, RankInputs


def replay(setup: BenchSetup, inputs: RankInputs, config: BenchConfig, ctx: RankContext,
           keep_outputs: bool = False) -> tuple[dict[str, Any], dict[str, list]]:
    """Replay every layer under every plan; returns this rank's raw record (and outputs if asked).

    Returns:
        ``(record, outputs)``: ``record[label]`` holds ``send_counts``/``recv_counts`` ``[L][G]`` and
        ``times`` ``{phase: [R][L]}`` ms (plain lists: ranks gather it with ``gather_object``);
        ``outputs[label][j]`` is layer ``j``'s ``[n, H]`` output of the first pass (only with
        ``keep_outputs``).

    Raises:
        RuntimeError: a plan's copy counts changed between repeats (the replay is deterministic).
    """
    import torch

    from .exchange import all_to_all_rows, sync_peers
    from .layer import ep_moe_layer
    from .layout import resolve_layout_kernel
    from .timing import PhaseTimer

    rank, world, device, group = ctx.rank, ctx.world, ctx.device, ctx.group
    layout_kernel = resolve_layout_kernel(config.layout_kernel, device)
    labels = list(setup.plans)
    L = len(setup.layers)
    record: dict[str, Any] = {
        label: {"send_counts": [None] * L, "recv_counts": [None] * L, "times": {}} for label in labels
    }
    outputs: dict[str, list] = {}
    timer = PhaseTimer(device)
    progress = _progress(rank, (config.warmup + config.repeats) * len(labels)) if config.progress else None
    for it in range(config.warmup + config.repeats):
        order = labels[it % len(labels):] + labels[: it % len(labels)]
        for label in order:
            rec = record[label]
            for j in range(L):
                out, traffic = ep_moe_layer(inputs.tokens, inputs.local[label][j], inputs.banks[j], world, timer=timer,
                                            group=group, sync=config.sync, shortcut=inputs.shortcut,
                                            kernel=config.expert_kernel, layout_kernel=layout_kernel)
                if it == 0:
                    rec["send_counts"][j], rec["recv_counts"][j] = traffic.send_counts, traffic.recv_counts
                    if keep_outputs:
                        outputs.setdefault(label, []).append(out)
                elif (traffic.send_counts, traffic.recv_counts) != (rec["send_counts"][j], rec["recv_counts"][j]):
                    raise RuntimeError(f"plan {label} layer {j}: traffic changed between repeats")
                rows = inputs.plain_rows[label][j]
                if world > 1 and rows > 0:
                    splits = [0 if p == rank else rows for p in range(world)]
                    buf = torch.empty(sum(splits), setup.hidden_size, dtype=inputs.dtype, device=device)
                    if config.sync:
                        sync_peers(device, group)
                    with timer.phase("plain"):
                        all_to_all_rows(buf, splits, splits, group)
                times = timer.collect()
                if it >= config.warmup:
                    for phase, ms in times.items():
                        rec["times"].setdefault(phase, [[0.0] * L for _ in range(config.repeats)])[it - config.warmup][j] = ms
            if progress:
                progress.update(1)
    if progress:
        progress.close()
    return record, outputs


def _progress(rank: int, total: int):
    if rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="bench (repeats x plans)", unit="pass")
