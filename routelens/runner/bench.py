"""``python -m routelens.runner.bench``: replay a trace under several plans and measure the All-to-All.

Launched by ``torchrun`` (``routelens bench --gpus N`` starts it for you, with ``--config FILE``)::

    torchrun --nproc-per-node 8 -m routelens.runner.bench runs/qwen3 contiguous plans/qwen3-8.json
    torchrun --nnodes 2 --nproc-per-node 8 -m routelens.runner.bench runs/qwen3 PLAN ...   # multi-node
    torchrun --nproc-per-node 8 -m routelens.runner.bench --config bench-config.json

Every rank runs set-up (:mod:`routelens.runner.inputs`), the timed replay
(:mod:`routelens.runner.replay`), the optional ``--check`` (:mod:`routelens.runner.check`); rank 0
assembles the report (:mod:`routelens.runner.report`), writes it to ``RUN/bench/<tag>.json`` (or
``--out DIR``; and ``--json FILE``) and prints a table.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError, RoutelensError
from ..formats import BENCH, CALIBRATION
from ..io import STDOUT, write_json_output
from .config import BenchConfig, option_fields, value_type
from .group import RankContext, join_group


def run_bench(config: BenchConfig, ctx: RankContext) -> int:
    """The whole bench inside an initialised process group (every rank calls it).

    Returns:
        The exit code: 0, or 1 when measured bytes differ from the cost model or ``--check`` fails
        (rank 0 decides; the other ranks return 0).

    Raises:
        RoutelensError: bad input (one line).
    """
    import torch.distributed as dist

    from .calibration import calibrate, load_calibration
    from .inputs import prepare, rank_inputs
    from .replay import replay
    from .report import build_report, format_table

    if config.calibrate:
        fit = calibrate(ctx, config.calibrate_max_mib, config.repeats, config.warmup)
        if ctx.rank == 0:
            path = CALIBRATION.write(config.out_dir / CALIBRATION.file_name(fit), fit)
            if not write_json_output(config.json, fit):
                print(f"calibration ({ctx.world} ranks, {ctx.backend}): latency {fit['latency_us']:.1f} us, "
                      f"bandwidth {fit['bandwidth_GBps']:.2f} GB/s per rank -> {path}")
        return 0
    setup = prepare(config, ctx.world)
    inputs = rank_inputs(setup, config, ctx.rank, ctx.world, ctx.device)
    record, outputs = replay(setup, inputs, config, ctx, keep_outputs=config.check)
    check = None
    if config.check:
        from .check import check_outputs

        check = check_outputs(setup, inputs.tokens, outputs, inputs.routes, ctx, model=config.model, seed=config.seed)
    del outputs
    records = [None] * ctx.world if ctx.rank == 0 else None
    dist.gather_object(record, records, dst=0, group=ctx.group)
    if ctx.rank != 0:
        return 0
    calibration = load_calibration(config.out_dir, ctx.backend, ctx.world)
    report = build_report(setup, config, records, inputs.routes, run_environment(config, ctx, inputs.dtype), calibration)
    if check is not None:
        report["check"] = check
    path = BENCH.write(config.out_dir / BENCH.file_name(report), report)
    if not write_json_output(config.json, report):
        print(f"routelens bench: {len(setup.layers)} layers x {setup.num_tokens} tokens on {ctx.world} ranks "
              f"({ctx.backend}, {report['device']}), hidden {setup.hidden_size} {report['dtype']}, "
              f"median of {config.repeats}; baseline {report['baseline']}")
        print(format_table(report))
        print(f"report: {path}")
    if check is not None and config.json != STDOUT:
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


def run_environment(config: BenchConfig, ctx: RankContext, dtype) -> dict:
    """Facts of this run the report records: device, software, dtype and the kernels really used."""
    import torch

    from .calibration import device_name
    from .experts import kernel_in_use
    from .layout import resolve_layout_kernel

    return {
        "num_gpus": ctx.world,
        "backend": ctx.backend,
        "device": device_name(ctx.device),
        "software": {"torch": torch.__version__,
                     "nccl": ".".join(map(str, torch.cuda.nccl.version())) if ctx.device.type == "cuda" else None},
        "dtype": str(dtype).replace("torch.", ""),
        "element_size": torch.empty(0, dtype=dtype).element_size(),
        "expert_kernel": kernel_in_use(ctx.device, dtype, config.expert_kernel),
        "layout_kernel": resolve_layout_kernel(config.layout_kernel, ctx.device),
        "comm_priority": ctx.comm_priority,
    }


def run_process(config: BenchConfig) -> int:
    """One rank: join torchrun's process group, run the bench, leave the group; one-line errors (exit 2)."""
    import torch.distributed as dist

    try:
        ctx = join_group(config.backend, config.comm_priority)
        return run_bench(config, ctx)
    except RoutelensError as exc:
        print(f"routelens: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- the entry point's own parser
def runner_parser() -> argparse.ArgumentParser:
    """``RUN PLAN ... [options]`` or ``--config FILE``: one option per :class:`BenchConfig` field.

    The user-facing parser, with its help texts, argument types and old spellings, is
    ``routelens bench``'s (routelens/commands/bench.py); this one only maps the same option names onto
    the config, which checks every value itself.
    """
    parser = argparse.ArgumentParser(
        prog="python -m routelens.runner.bench",
        description="One rank of routelens bench under torchrun. The options mean what they mean in "
        "'routelens bench' (see routelens bench --help and docs/runner.md).")
    parser.add_argument("run", nargs="?", metavar="RUN", help="trace folder written by routelens capture")
    parser.add_argument("plans", nargs="*", metavar="PLAN", help="plan files and/or 'contiguous' (first: baseline)")
    parser.add_argument("--config", metavar="FILE", help="read the whole configuration from FILE (written by "
                        "routelens bench) instead of RUN, PLAN and options")
    for f, flag in option_fields():
        dest = flag.lstrip("-").replace("-", "_")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, dest=dest, type=value_type(f), default=None, metavar=dest.upper(),
                                choices=f.metadata.get("choices"), help=argparse.SUPPRESS)
    return parser


def config_from_argv(argv: list[str] | None = None) -> BenchConfig:
    """The :class:`BenchConfig` of this entry point's command line.

    Raises:
        InputError: both ``--config`` and ``RUN``/options, or neither; a bad value (one line).
    """
    args = runner_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("run", "plans", "config")}
    if args.config:
        if args.run or args.plans or any(v is not None for v in values.values()):
            raise InputError("give either --config FILE or RUN [PLAN ...] [options], not both")
        return BenchConfig.load(args.config)
    if not args.run:
        raise InputError("no trace: give RUN [PLAN ...] [options] or --config FILE")
    return BenchConfig.from_options(args.run, args.plans, values)


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_argv(argv)
    except RoutelensError as exc:
        print(f"routelens: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return run_process(config)


if __name__ == "__main__":
    sys.exit(main())
