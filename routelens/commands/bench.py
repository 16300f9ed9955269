"""``routelens bench RUN --plans ... --gpus N``: replay a trace across GPUs and measure each plan's All-to-All.

Checks the trace and plans here (one-line errors), then starts ``torchrun`` with
``python -m routelens.runner.bench`` on ``N`` local processes (NCCL on GPUs, gloo on CPU). Under an
existing ``torchrun`` (multi-node) it runs in this process instead.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ..errors import InputError

# NVLink multicast stays off in everything we launch: on shared multi-GPU hosts it can take the GPUs down.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def add_parser(subparsers) -> None:
    from ..runner.bench import add_bench_arguments

    parser = subparsers.add_parser(
        "bench",
        help="replay a trace across GPUs (torchrun) and measure the All-to-All bytes and time of each plan",
        description="Replay every MoE layer of a trace with expert parallelism under each plan (interleaved), "
        "measure dispatch/combine bytes and time per rank, compare with the cost model, and write "
        "RUN/bench/<tag>.json. Launches torchrun itself; runs on NCCL (GPU) or gloo (CPU).",
    )
    add_bench_arguments(parser)
    parser.add_argument("--gpus", type=int, default=None,
                        help="processes to launch on this node (default: the plans' GPU count, else all local GPUs)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:  # already inside torchrun: be one rank
        from ..runner.bench import main as bench_main

        return bench_main(child_argv(args))
    gpus = resolve_gpus(args)
    backend = args.backend or _default_backend()
    if backend == "nccl":
        import torch

        if torch.cuda.device_count() < gpus:
            raise InputError(f"--gpus {gpus} with nccl needs {gpus} CUDA devices, this node has "
                             f"{torch.cuda.device_count()} (use --backend gloo for CPU processes)")
    if not args.calibrate:
        from ..runner.bench import prepare

        prepare(args, gpus)  # trace, plans, sizes: fail here with one line, before any process starts
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "routelens.runner.bench", *child_argv(args, backend)]
    env = {**os.environ, **SAFE_ENV}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus)))
    completed = subprocess.run(command, env=env)
    if completed.returncode == 2:
        return 2  # the ranks printed the one-line error already
    if completed.returncode != 0:
        raise InputError(f"the distributed bench failed (exit code {completed.returncode}); see the messages above")
    return 0


def _default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def resolve_gpus(args) -> int:
    """``--gpus``, else the first plan file's GPU count, else the local CUDA device count."""
    if args.gpus is not None:
        if args.gpus < 1:
            raise InputError(f"--gpus must be >= 1, got {args.gpus}")
        return args.gpus
    from ..engines.plan_files import PlanTarget, load_plan_file
    from ..runner.routing import CONTIGUOUS
    from ..trace import Trace

    for spec in args.plans:
        if spec != CONTIGUOUS:
            return load_plan_file(spec, PlanTarget.for_trace(Trace.open(args.run))).num_gpus
    import torch

    if torch.cuda.device_count() > 0:
        return torch.cuda.device_count()
    raise InputError("how many processes? pass --gpus N (no plan file names a GPU count and no GPU is visible)")


def child_argv(args, backend: str | None = None) -> list[str]:
    """The ``routelens.runner.bench`` arguments equivalent to the parsed ``args``."""
    argv = [args.run, "--plans", *args.plans]
    backend = backend or args.backend
    if backend:
        argv += ["--backend", backend]
    options = {
        "--json": args.json_out, "--hidden-size": args.hidden_size, "--intermediate-size": args.intermediate_size,
        "--tokens-per-rank": args.tokens_per_rank, "--repeats": args.repeats, "--warmup": args.warmup,
        "--shortcut-intermediate": args.shortcut_intermediate, "--weights": args.weights, "--dtype": args.dtype,
        "--expert-kernel": args.expert_kernel, "--out-dir": args.out_dir, "--seed": args.seed,
        "--calibrate-max-mib": args.calibrate_max_mib, "--comm-priority": args.comm_priority,
    }
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if args.layers:
        argv += ["--layers", *args.layers]
    for flag, value in (("--overlap", args.overlap), ("--no-sync", args.no_sync), ("--calibrate", args.calibrate),
                        ("--check", args.check)):
        if value:
            argv.append(flag)
    return argv
