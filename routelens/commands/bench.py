"""``routelens bench RUN [PLAN ...] --gpus N``: replay a trace across GPUs and measure each plan's All-to-All.

Parses the options into one :class:`~routelens.runner.config.BenchConfig`, checks the trace and plans
here (one-line errors), writes the config as JSON and starts ``torchrun`` with
``python -m routelens.runner.bench --config FILE`` on ``N`` local processes (NCCL on GPUs, gloo on
CPU), each of which reads it back. Under an existing ``torchrun`` (multi-node) it runs in this
process instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import InputError
from ._args import (
    DeprecatedAlias,
    add_deprecated_alias,
    add_json_argument,
    add_layers_argument,
    add_no_progress_argument,
    non_negative_int,
    positive_float,
    positive_int,
)

# NVLink multicast stays off in everything we launch: on shared multi-GPU hosts it can take the GPUs down.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="replay a trace across GPUs (torchrun) and measure the All-to-All bytes and time of each plan",
        description="Replay every MoE layer of a trace with expert parallelism under each plan (interleaved), "
        "measure dispatch/combine bytes and time per rank, compare with the cost model, and write "
        "<tag>.json into --out (default RUN/bench). Launches torchrun itself; runs on NCCL (GPU) or gloo (CPU).",
    )
    add_bench_arguments(parser)
    parser.add_argument("--gpus", type=positive_int, default=None,
                        help="processes to launch on this node (default: the plans' GPU count, else all local GPUs)")
    parser.set_defaults(func=run)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``routelens bench`` (docs/cli.md); each one sets the BenchConfig field of its name."""
    from ..runner.config import BACKENDS, COMM_PRIORITIES, DTYPES, EXPERT_KERNELS, LAYOUT_KERNELS

    parser.add_argument("run", metavar="RUN", help="trace folder written by routelens capture")
    parser.add_argument("plans", nargs="*", metavar="PLAN",
                        help="plan files and/or 'contiguous', the first one the baseline (default: contiguous)")
    add_deprecated_alias(parser, "--plans", "PLAN arguments after RUN (routelens bench RUN PLAN [PLAN ...])",
                         action=_OldPlans, dest="plans", nargs="+", extend=True, default=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="torch.distributed back-end (default: nccl with CUDA, else gloo)")
    add_json_argument(parser, "the report (also written to --out)")
    parser.add_argument("--hidden-size", type=positive_int, default=None,
                        help="hidden size of the replayed tokens (default: the model's)")
    parser.add_argument("--intermediate-size", type=positive_int, default=None,
                        help="expert intermediate size (default: the model's, scaled with --hidden-size)")
    parser.add_argument("--tokens-per-rank", type=positive_int, default=None,
                        help="replay this many tokens per rank, tiling the trace's tokens (default: the trace's T "
                        "split over ranks)")
    add_layers_argument(parser, "MoE layers to replay")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed repeats (median reported; default 10)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed warm-up repeats (default 3)")
    parser.add_argument("--overlap", action="store_true",
                        help="also measure the dispatch overlapped with a dense shortcut MLP on a second stream")
    parser.add_argument("--comm-priority", choices=COMM_PRIORITIES, default="default",
                        help="NCCL streams at high CUDA priority (helps the All-to-All overlap compute; NCCL only)")
    parser.add_argument("--shortcut-intermediate", type=positive_int, default=None,
                        help="intermediate size of the shortcut MLP (default: the model's dense MLP, scaled)")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="the trace's model as a local checkpoint folder: replay its own experts (default: "
                        "random experts of the model's shapes)")
    add_deprecated_alias(parser, "--weights", "--model")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype of tokens and experts (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--expert-kernel", choices=EXPERT_KERNELS, default="auto",
                        help="expert GEMMs: grouped (torch grouped_mm) or one per expert (default: auto)")
    parser.add_argument("--layout-kernel", choices=LAYOUT_KERNELS, default="auto",
                        help="layout phase: the fused path with its un-permute in a Triton kernel (triton) or in "
                        "PyTorch ops (torch), or the plain reference path (default auto: triton on CUDA, else torch)")
    parser.add_argument("--no-sync", action="store_true",
                        help="no peer barrier before each All-to-All (phases then include the skew of the phase before)")
    parser.add_argument("--calibrate", action="store_true",
                        help="sweep plain all_to_all_single sizes, fit the cost model's latency and bandwidth, store them")
    parser.add_argument("--calibrate-max-mib", type=positive_float, default=64.0,
                        help="largest message per peer of the calibration sweep, MiB (default 64)")
    parser.add_argument("--check", action="store_true",
                        help="also gather the outputs and compare them with a single-process reference (small runs)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder to write the report (and the calibration) in (default: RUN/bench)")
    add_deprecated_alias(parser, "--out-dir", "--out")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the random tokens and experts (default 0)")
    add_no_progress_argument(parser)


class _OldPlans(DeprecatedAlias):
    """``--plans A B`` of routelens 0.x; ``--plans A B RUN`` (which swallowed RUN) is a one-line error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "run", None) is None and (Path(values[-1]) / "manifest.json").is_file():
            parser.error(f"--plans took the trace folder {values[-1]} for a plan; write: "
                         f"{parser.prog} {values[-1]} {' '.join(values[:-1])}")
        super().__call__(parser, namespace, values, option_string)


def bench_config(args: argparse.Namespace):
    """The :class:`~routelens.runner.config.BenchConfig` of the parsed options (``--gpus`` is the launcher's)."""
    from ..runner.config import BenchConfig

    return BenchConfig.from_options(args.run, args.plans, vars(args))


def run(args) -> int:
    config = bench_config(args)
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:  # already inside torchrun: be one rank
        from ..runner.bench import run_process

        return run_process(config)
    gpus = resolve_gpus(args.gpus, config.plans, config.run)
    config = dataclasses.replace(config, backend=config.backend or _default_backend())
    if config.backend == "nccl":
        import torch

        if torch.cuda.device_count() < gpus:
            raise InputError(f"--gpus {gpus} with nccl needs {gpus} CUDA devices, this node has "
                             f"{torch.cuda.device_count()} (use --backend gloo for CPU processes)")
    if not config.calibrate:
        from ..runner.inputs import prepare

        setup = prepare(config, gpus)  # trace, plans, sizes: fail here with one line, before any process starts
        setup.trace.check_layers(setup.layers)  # the ranks read these: a damaged shard fails here too
    env = {**os.environ, **SAFE_ENV}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
    with tempfile.TemporaryDirectory(prefix="routelens-bench-") as folder:
        config_file = config.save(Path(folder) / "bench-config.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                   "-m", "routelens.runner.bench", "--config", str(config_file)]
        completed = subprocess.run(command, env=env)
    if completed.returncode == 2:
        return 2  # the ranks printed the one-line error already
    if completed.returncode != 0:
        raise InputError(f"the distributed bench failed (exit code {completed.returncode}); see the messages above")
    return 0


def _default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def resolve_gpus(gpus: int | None, plans, run: str) -> int:
    """``--gpus``, else the first plan file's GPU count, else the local CUDA device count."""
    if gpus is not None:
        return gpus
    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..runner.routing import CONTIGUOUS
    from ..trace import Trace

    for spec in plans:  # the PLAN arguments (none: contiguous, no GPU count)
        if spec != CONTIGUOUS:
            return load_plan_file(spec, PlanTarget.for_trace(Trace.open(run))).num_gpus
    import torch

    if torch.cuda.device_count() > 0:
        return torch.cuda.device_count()
    raise InputError("how many processes? pass --gpus N (no plan file names a GPU count and no GPU is visible)")
