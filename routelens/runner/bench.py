"""``python -m routelens.runner.bench``: replay a trace under several plans and measure the All-to-All.

Launched by ``torchrun`` (``routelens bench --gpus N`` starts it for you)::

    torchrun --nproc-per-node 8 -m routelens.runner.bench runs/qwen3 --plans contiguous plans/qwen3-8.json
    torchrun --nnodes 2 --nproc-per-node 8 -m routelens.runner.bench runs/qwen3 --plans ...   # multi-node

Every rank replays every MoE layer of the trace for every plan, interleaved (plan order rotates
each repeat), so the plans share the machine's state and their ratios are fair. Rank 0 writes the
report to ``RUN/bench/<tag>.json`` (and ``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.plan_files import PlanTarget, load_plan_file
from ..errors import InputError, PlanError, RoutelensError
from ..io import atomic_write_json, read_json
from ..plan import Plan
from ..trace import Trace
from .calibration import calibrate, calibration_topology, device_name, load_calibration  # noqa: F401 (public here too)
from .group import comm_group, init_from_env  # noqa: F401 (public here too)
from .report import add_ratios, format_table, summarize_plan
from .routing import (
    CONTIGUOUS,
    contiguous_plan,
    effective_links,
    plan_routes,
    predicted_all_to_all_ms,
    prediction_topology,
    rank_token_range,
    tiled_token_index,
    token_source_gpu,
)

BENCH_FORMAT = "routelens-bench"
BENCH_VERSION = 1


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``routelens bench`` and ``python -m routelens.runner.bench``."""
    parser.add_argument("run", help="trace folder (from routelens capture)")
    parser.add_argument("--plans", nargs="+", default=[CONTIGUOUS], metavar="PLAN",
                        help="plan files and/or 'contiguous' (default: contiguous); the first is the baseline")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                        help="torch.distributed back-end (default: nccl with CUDA, else gloo)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the report here")
    parser.add_argument("--hidden-size", type=int, default=None, help="hidden size of the replayed tokens (default: the model's)")
    parser.add_argument("--intermediate-size", type=int, default=None,
                        help="expert intermediate size (default: the model's, scaled with --hidden-size)")
    parser.add_argument("--tokens-per-rank", type=int, default=None,
                        help="replay this many tokens per rank, tiling the trace's tokens (default: the trace's T split over ranks)")
    parser.add_argument("--layers", nargs="+", default=None, help="replay only these MoE layers (names or indices)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (median reported; default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up repeats (default 3)")
    parser.add_argument("--overlap", action="store_true",
                        help="also measure the dispatch overlapped with a dense shortcut MLP on a second stream")
    parser.add_argument("--comm-priority", choices=("default", "high"), default="default",
                        help="NCCL streams at high CUDA priority (helps the All-to-All overlap compute; NCCL only)")
    parser.add_argument("--shortcut-intermediate", type=int, default=None,
                        help="intermediate size of the shortcut MLP (default: the model's dense MLP, scaled)")
    parser.add_argument("--weights", default=None, metavar="CHECKPOINT",
                        help="read expert weights from this local checkpoint (default: random, the model's shapes)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="dtype of tokens and experts (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--expert-kernel", choices=("auto", "grouped_mm", "loop"), default="auto",
                        help="expert GEMMs: grouped (torch grouped_mm) or one per expert (default: auto)")
    parser.add_argument("--no-sync", action="store_true",
                        help="no peer barrier before each All-to-All (phases then include the skew of the phase before)")
    parser.add_argument("--calibrate", action="store_true",
                        help="sweep plain all_to_all_single sizes, fit the cost model's latency and bandwidth, store them")
    parser.add_argument("--calibrate-max-mib", type=float, default=64.0,
                        help="largest message per peer of the calibration sweep, MiB (default 64)")
    parser.add_argument("--check", action="store_true",
                        help="also gather the outputs and compare them with a single-process reference (small runs)")
    parser.add_argument("--out-dir", default=None, help="folder for the report (default: RUN/bench)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens and weights")


# --------------------------------------------------------------------------- set-up (any process)
@dataclass
class BenchSetup:
    """Everything a bench needs that can be checked before any process starts."""

    trace: Trace
    layers: list[str]
    plans: dict[str, Plan]
    num_gpus: int
    hidden_size: int
    intermediate_size: int
    shortcut_intermediate: int
    num_tokens: int
    token_index: np.ndarray = field(repr=False)
    model_hidden_size: int | None = None


def _config_int(config: dict, key: str) -> int | None:
    value = config.get(key)
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def prepare(args: argparse.Namespace, num_gpus: int) -> BenchSetup:
    """Open the trace and plans and check they fit ``num_gpus`` ranks; one-line errors otherwise."""
    trace = Trace.open(args.run)
    trace.require_tokens("bench")
    if trace.num_tokens == 0:
        raise InputError(f"trace {args.run} holds no tokens")
    layers = trace.layers if not args.layers else [trace.layers[trace.layer_index(_layer_key(l))] for l in args.layers]
    if num_gpus < 1:
        raise InputError(f"need at least one rank, got {num_gpus}")
    plans: dict[str, Plan] = {}
    for spec in args.plans:
        if spec in plans:
            raise InputError(f"plan '{spec}' is listed twice")
        if spec == CONTIGUOUS:
            plan = contiguous_plan(trace.layers, trace.num_experts, num_gpus)
        else:
            if not Path(spec).is_file():
                raise PlanError(f"plan file not found: {spec} (or use 'contiguous')")
            plan = load_plan_file(spec, PlanTarget.for_trace(trace, num_gpus=num_gpus))
        plan.check_fits(trace.layers, trace.num_experts)
        if plan.num_gpus != num_gpus:
            raise PlanError(f"plan {spec} is for {plan.num_gpus} GPUs, the bench runs on {num_gpus}")
        plans[spec] = plan
    for name in ("repeats", "warmup"):
        if getattr(args, name) < (1 if name == "repeats" else 0):
            raise InputError(f"--{name} must be {'>= 1' if name == 'repeats' else '>= 0'}")

    config = trace.config
    model_hidden = _config_int(config, "hidden_size")
    if args.weights:
        ckpt_config = read_json(Path(args.weights) / "config.json", what="checkpoint config")
        text = ckpt_config.get("text_config", ckpt_config)
        model_hidden = int(text.get("hidden_size", model_hidden or 0)) or model_hidden
        if args.hidden_size and args.hidden_size != model_hidden:
            raise InputError(f"--hidden-size {args.hidden_size} differs from the checkpoint's {model_hidden}")
    hidden = args.hidden_size or model_hidden
    if not hidden:
        raise InputError(f"trace {args.run} does not record the model's hidden size: pass --hidden-size")
    scale = hidden / model_hidden if model_hidden else 1.0
    moe_inter = _config_int(config, "moe_intermediate_size")
    intermediate = args.intermediate_size or (max(1, round(moe_inter * scale)) if moe_inter else (3 * hidden) // 8)
    dense_inter = _config_int(config, "intermediate_size")
    shortcut = args.shortcut_intermediate or (max(1, round(dense_inter * scale)) if dense_inter else trace.top_k * intermediate)
    for name, value in (("hidden size", hidden), ("intermediate size", intermediate), ("shortcut intermediate size", shortcut)):
        if value <= 0:
            raise InputError(f"{name} must be positive, got {value}")
    if args.tokens_per_rank is not None:
        if args.tokens_per_rank <= 0:
            raise InputError(f"--tokens-per-rank must be positive, got {args.tokens_per_rank}")
        token_index = tiled_token_index(trace.num_tokens, args.tokens_per_rank * num_gpus)
    else:
        if trace.num_tokens < num_gpus:
            raise InputError(f"trace has {trace.num_tokens} tokens, fewer than the {num_gpus} ranks")
        token_index = np.arange(trace.num_tokens, dtype=np.int64)
    return BenchSetup(trace, layers, plans, num_gpus, hidden, intermediate, shortcut, int(token_index.size),
                      token_index, model_hidden)


def _layer_key(spec: str):
    return int(spec) if spec.isdigit() else spec


# --------------------------------------------------------------------------- the replay
def _dtype(args, device):
    import torch

    if args.dtype:
        return getattr(torch, args.dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_banks(setup: BenchSetup, routes: dict[str, list], rank: int, args, device, dtype) -> list:
    """One expert bank per replayed layer for this rank: every expert it serves under any plan.

    Random weights are drawn once per expert and shared by all layers (timing does not depend on
    the values, and memory stays one bank); ``--weights`` reads each layer's own experts.
    """
    from .experts import load_expert_bank, random_expert_bank

    E = setup.trace.num_experts
    held = [sorted({int(e) for plan in setup.plans.values() for e in plan.gpu_experts[layer][rank]})
            for layer in setup.layers]
    if args.weights:
        return [load_expert_bank(args.weights, layer, E, experts=ex, dtype=dtype, device=device)
                for layer, ex in zip(setup.layers, held)]
    union = sorted(set().union(*map(set, held)))
    bank = random_expert_bank(E, setup.hidden_size, setup.intermediate_size, experts=union, seed=args.seed,
                              dtype=dtype, device=device)
    return [bank] * len(setup.layers)


def local_routes(routes, start: int, end: int, device) -> list:
    """This rank's slice of every layer's route, as device tensors."""
    import torch

    from .layer import LocalRoute

    return [LocalRoute(torch.from_numpy(r.topk_ids[start:end]).to(device),
                       torch.from_numpy(np.ascontiguousarray(r.topk_weights[start:end])).to(device),
                       torch.from_numpy(r.dest_gpu[start:end]).to(device)) for r in routes]


def random_tokens(num_tokens: int, hidden_size: int, seed: int, rank: int, dtype, device):
    """``[n, H]`` N(0, 1) hidden states (the trace records routing, not activations)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 7919 + rank + 1)
    return torch.randn(num_tokens, hidden_size, generator=gen, device=device).to(dtype)


def replay(setup: BenchSetup, args, rank: int, world: int, device, group=None, keep_outputs: bool = False):
    """Replay every layer under every plan; returns this rank's raw record (and outputs if asked).

    Returns:
        ``(record, outputs, routes)``: ``record[label]`` holds ``send_counts``/``recv_counts`` ``[L][G]`` and
        ``times`` ``{phase: [R][L]}`` ms; ``outputs[label][j]`` is layer ``j``'s ``[n, H]`` output
        from the first pass (only with ``keep_outputs``), plus ``outputs["x"]`` the input tokens;
        ``routes[label]`` the host-side :class:`~routelens.runner.routing.LayerRoute` of every layer.
    """
    import torch

    from .exchange import all_to_all_rows, sync_peers
    from .layer import ep_moe_layer
    from .timing import PhaseTimer

    dtype = _dtype(args, device)
    routes = {label: plan_routes(setup.trace, plan, setup.layers, setup.token_index)
              for label, plan in setup.plans.items()}
    start, end = rank_token_range(setup.num_tokens, world, rank)
    dev_routes = {label: local_routes(r, start, end, device) for label, r in routes.items()}
    banks = build_banks(setup, routes, rank, args, device, dtype)
    x = random_tokens(end - start, setup.hidden_size, args.seed, rank, dtype, device)
    shortcut = None
    if args.overlap:
        gen = torch.Generator(device=device)
        gen.manual_seed(args.seed + 12345)
        I, H = setup.shortcut_intermediate, setup.hidden_size
        shortcut = ((torch.randn(2 * I, H, generator=gen, device=device) * H ** -0.5).to(dtype),
                    (torch.randn(H, I, generator=gen, device=device) * I ** -0.5).to(dtype))
    plain_rows = {label: [_plain_rows(r.predicted, world) for r in rs] for label, rs in routes.items()}

    labels = list(setup.plans)
    L = len(setup.layers)
    record: dict[str, Any] = {
        label: {"send_counts": [None] * L, "recv_counts": [None] * L, "times": {}} for label in labels
    }
    outputs: dict[str, Any] = {"x": x} if keep_outputs else {}
    timer = PhaseTimer(device)
    progress = _progress(rank, (args.warmup + args.repeats) * len(labels))
    for it in range(args.warmup + args.repeats):
        order = labels[it % len(labels):] + labels[: it % len(labels)]
        for label in order:
            rec = record[label]
            for j in range(L):
                out, traffic = ep_moe_layer(x, dev_routes[label][j], banks[j], world, timer=timer, group=group,
                                            sync=not args.no_sync, shortcut=shortcut, kernel=args.expert_kernel)
                if it == 0:
                    rec["send_counts"][j], rec["recv_counts"][j] = traffic.send_counts, traffic.recv_counts
                    if keep_outputs:
                        outputs.setdefault(label, []).append(out)
                elif (traffic.send_counts, traffic.recv_counts) != (rec["send_counts"][j], rec["recv_counts"][j]):
                    raise RuntimeError(f"plan {label} layer {j}: traffic changed between repeats")
                rows = plain_rows[label][j]
                if world > 1 and rows > 0:
                    splits = [0 if p == rank else rows for p in range(world)]
                    buf = torch.empty(sum(splits), setup.hidden_size, dtype=dtype, device=device)
                    if not args.no_sync:
                        sync_peers(device, group)
                    with timer.phase("plain"):
                        all_to_all_rows(buf, splits, splits, group)
                times = timer.collect()
                if it >= args.warmup:
                    for phase, ms in times.items():
                        rec["times"].setdefault(phase, [[0.0] * L for _ in range(args.repeats)])[it - args.warmup][j] = ms
            if progress:
                progress.update(1)
    if progress:
        progress.close()
    return record, outputs, routes


def _plain_rows(predicted: np.ndarray, world: int) -> int:
    """Rows per ordered rank pair so a plain even All-to-All moves the dispatch's total copies."""
    if world < 2:
        return 0
    return int(round(float(np.asarray(predicted).sum()) / (world * (world - 1))))


def _progress(rank: int, total: int):
    if rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="bench (repeats x plans)", unit="pass")


# --------------------------------------------------------------------------- report
def build_report(setup: BenchSetup, args, records: list[dict], routes, world: int, device, calibration) -> dict[str, Any]:
    """The bench report from every rank's record (rank 0)."""
    import torch

    from .experts import kernel_in_use

    dtype = _dtype(args, device)
    bytes_per_token = setup.hidden_size * torch.empty(0, dtype=dtype).element_size()
    plans = []
    source = token_source_gpu(setup.num_tokens, world)
    for label, plan in setup.plans.items():
        predicted = np.stack([r.predicted for r in routes[label]])
        topology = prediction_topology(plan, calibration["topology"])
        predicted_ms = [predicted_all_to_all_ms(source, r.dest_gpu, world, topology, bytes_per_token)
                        for r in routes[label]]
        info = {"method": plan.method, "file": None if label == CONTIGUOUS else str(Path(label).resolve()),
                "replicas": int(sum(t.size for t in plan.gpu_experts.values()) - plan.num_experts * len(plan.layers)),
                "replica_policy": plan.replica_policy, "prediction_topology": topology}
        plans.append(summarize_plan(label, [rec[label] for rec in records], predicted, predicted_ms,
                                    bytes_per_token, setup.layers, info))
    baseline = next(iter(setup.plans))
    add_ratios(plans, baseline)
    links = effective_links(prediction_topology(setup.plans[baseline], calibration["topology"]), world)
    prefix = "inter" if setup.plans[baseline].num_nodes > 1 else "intra"
    calibration = {**calibration, "latency_us": links[f"{prefix}_latency_us"], "bandwidth_GBps": links[f"{prefix}_gbps"],
                   "links": links}
    trace = setup.trace
    return {
        "format": BENCH_FORMAT,
        "version": BENCH_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "trace": {"path": str(trace.path.resolve()), "fingerprint": trace.fingerprint(), "model": trace.model_id,
                  "num_tokens": trace.num_tokens, "num_experts": trace.num_experts, "top_k": trace.top_k},
        "layers": setup.layers,
        "num_gpus": world,
        "backend": args.backend_resolved,
        "device": device_name(device),
        "software": {"torch": torch.__version__,
                     "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None},
        "hidden_size": setup.hidden_size,
        "intermediate_size": setup.intermediate_size,
        "dtype": str(dtype).replace("torch.", ""),
        "bytes_per_token": bytes_per_token,
        "tokens_replayed": setup.num_tokens,
        "tokens_per_rank": args.tokens_per_rank or setup.num_tokens // world,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "synced_phases": not args.no_sync,
        "comm_priority": getattr(args, "comm_priority_used", "default"),
        "overlap": bool(args.overlap),
        "shortcut_intermediate": setup.shortcut_intermediate if args.overlap else None,
        "weights": str(args.weights) if args.weights else "random",
        "expert_kernel": kernel_in_use(device, dtype, args.expert_kernel),
        "calibration": calibration,
        "baseline": baseline,
        "plans": plans,
    }


def report_tag(args, world: int, setup: BenchSetup) -> str:
    tokens = args.tokens_per_rank or setup.num_tokens // world
    return f"bench-{args.backend_resolved}-g{world}-h{setup.hidden_size}-t{tokens}"


def run_in_group(args, rank: int, world: int, device, group=None) -> int:
    """The whole bench inside an initialised process group (every rank calls it)."""
    import torch.distributed as dist

    out_dir = Path(args.out_dir) if args.out_dir else Path(args.run) / "bench"
    if args.calibrate:
        fit = calibrate(args, rank, world, device, group)
        if rank == 0:
            path = atomic_write_json(out_dir / f"calibration-{args.backend_resolved}-g{world}.json", fit)
            print(f"calibration ({world} ranks, {args.backend_resolved}): latency {fit['latency_us']:.1f} us, "
                  f"bandwidth {fit['bandwidth_GBps']:.2f} GB/s per rank -> {path}")
            if args.json_out:
                atomic_write_json(args.json_out, fit)
        return 0
    setup = prepare(args, world)
    if group is None:
        group, args.comm_priority_used = comm_group(args.comm_priority)
    record, outputs, routes = replay(setup, args, rank, world, device, group, keep_outputs=args.check)
    check = None
    if args.check:
        from .check import check_outputs

        check = check_outputs(setup, args, outputs, routes, rank, device, group)
    del outputs
    records = [None] * world if rank == 0 else None
    dist.gather_object(record, records, dst=0, group=group)
    if rank != 0:
        return 0
    calibration = load_calibration(out_dir, args.backend_resolved, world)
    report = build_report(setup, args, records, routes, world, device, calibration)
    if check is not None:
        report["check"] = check
    path = atomic_write_json(out_dir / f"{report_tag(args, world, setup)}.json", report)
    if args.json_out:
        atomic_write_json(args.json_out, report)
    print(f"routelens bench: {len(setup.layers)} layers x {setup.num_tokens} tokens on {world} ranks "
          f"({args.backend_resolved}, {report['device']}), hidden {setup.hidden_size} {report['dtype']}, "
          f"median of {args.repeats}; baseline {report['baseline']}")
    print(format_table(report))
    print(f"report: {path}")
    if check is not None:
        worst = max(p["max_relative_error"] for p in check["plans"].values())
        print(f"check vs single-process reference: max relative error {worst:.2e} "
              f"(tolerance {check['tolerance']:.0e}) -> {'passed' if check['passed'] else 'FAILED'}")
    mismatched = [p["label"] for p in report["plans"] if not p["bytes_match_prediction"]]
    if mismatched:
        print(f"routelens: error: measured dispatch bytes differ from the cost model for {', '.join(mismatched)}",
              file=sys.stderr)
        return 1
    if check is not None and not check["passed"]:
        print("routelens: error: the distributed output differs from the single-process reference", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m routelens.runner.bench", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    import torch.distributed as dist

    try:
        rank, world, device = init_from_env(args.backend)
        args.backend_resolved = dist.get_backend()
        return run_in_group(args, rank, world, device)
    except RoutelensError as exc:
        print(f"routelens: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
