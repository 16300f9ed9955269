"""``routelens schedule-eval RUN --gpus G``: re-place experts every N tokens, pay for the moves, compare with a static plan."""

from __future__ import annotations

import argparse

from ._args import (add_json_argument, add_no_progress_argument, add_workers_argument, non_negative_int, positive_float,
                    positive_int, write_json_output)
from .place import add_cluster_arguments, add_objective_argument, cost_from_args, topology_from_args


def token_list(text: str) -> tuple[int, ...]:
    """``--every``: comma-separated whole numbers >= 1 (token counts)."""
    values = []
    for part in text.split(","):
        if part.strip():
            values.append(positive_int(part.strip()))
    if not values:
        raise argparse.ArgumentTypeError("give at least one number of tokens")
    return tuple(values)


def add_parser(subparsers) -> None:
    from ..placement.schedule import DEFAULT_BATCH_TOKENS, DEFAULT_EVERY_TOKENS, DEFAULT_FIT_TOKENS

    parser = subparsers.add_parser(
        "schedule-eval",
        help="re-place experts every N tokens on a recent window, pay for the weight moves, compare with a static plan",
        description="Walk the trace in serving order (token order) in forward passes of --batch-tokens. Every "
        "--every tokens, re-fit each --method on the --fit-tokens just before and serve the next tokens with it; "
        "charge each re-placement the expert weights it copies to GPUs that did not hold them (3 x hidden x "
        "moe_intermediate x --weight-bytes per copy) and their time on the cost model's links, amortised over the "
        "window's layer executions. Compare with the static plan fitted on the first --fit-tokens. Prints per "
        "method and period the mean layer time (moves included), busiest-GPU receive, the moves and the gain over "
        "static, and the best period per method; writes every window to a schedule file the dashboard reads.",
    )
    parser.add_argument("run", metavar="RUN", help="trace folder (per-token routing) to replay")
    parser.add_argument("--method", action="append", default=None, metavar="METHOD",
                        help="placement method to re-place with, repeatable or comma-separated (routelens, eplb, "
                        "greedy, kahypar-load, ... as in routelens place --method; default routelens,eplb)")
    parser.add_argument("--every", type=token_list, default=DEFAULT_EVERY_TOKENS, metavar="N[,N...]",
                        help="re-placement periods to sweep, in tokens, each a multiple of --batch-tokens (default "
                        + ",".join(str(n) for n in DEFAULT_EVERY_TOKENS) + ")")
    parser.add_argument("--fit-tokens", type=positive_int, default=DEFAULT_FIT_TOKENS,
                        help="tokens every plan is fitted on: the first ones for the static plan, the ones just "
                        f"before each re-placement for a schedule (default {DEFAULT_FIT_TOKENS})")
    parser.add_argument("--batch-tokens", type=positive_int, default=DEFAULT_BATCH_TOKENS,
                        help="tokens of one forward pass over all GPUs: each is one All-to-All, scored on its own "
                        f"(default {DEFAULT_BATCH_TOKENS})")
    parser.add_argument("--max-tokens", type=positive_int, default=None,
                        help="replay only the first N tokens (default: all)")
    parser.add_argument("--phase", default=None, metavar="NAME",
                        help="replay only the tokens of this phase (prefill, decode, ... of an imported engine run; "
                        "default: all tokens in trace order)")
    parser.add_argument("--no-relabel", action="store_true",
                        help="move what each from-scratch fit changes, as SGLang's and vLLM's EPLB do (default: first "
                        "renumber the new plan's GPUs, inside the topology's symmetry, to keep the most experts in place)")
    parser.add_argument("--weight-bytes", type=positive_float, default=2.0,
                        help="bytes per expert weight moved (default 2: bf16)")
    parser.add_argument("--redundant", type=non_negative_int, default=0,
                        help="redundant expert slots per layer (E + R must be a multiple of the GPU count)")
    parser.add_argument("--replica-policy", default="nearest-then-least-loaded", metavar="POLICY",
                        help="how a token picks among an expert's replicas: nearest-then-least-loaded (default), "
                        "round-robin, first")
    parser.add_argument("--seed", type=int, default=0, help="random seed of every fit (default 0)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="optimizer wall-clock budget per re-fit, all layers (default: run to convergence)")
    parser.add_argument("--max-fit-tokens", type=positive_int, default=None,
                        help="tokens per layer the optimizer scores on (default 32768, a seeded subsample above)")
    parser.add_argument("--starts", default=None, metavar="METHODS",
                        help="optimizer starting placements, comma-separated: kahypar, coact, lpt, mincut (default as "
                        "in routelens place)")
    parser.add_argument("--kicks", type=int, default=None, metavar="N",
                        help="optimizer restarts from the best placement after random swaps (default as in routelens "
                        "place)")
    add_objective_argument(parser)
    parser.add_argument("--expert-groups", type=positive_int, default=1,
                        help="eplb: expert groups of the model for the hierarchical policy (DeepSeek-V3: 8)")
    add_workers_argument(parser)
    add_cluster_arguments(parser)
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="schedule file to write (default RUN/schedules/schedule-g<G>-r<R>[-<phase>].json, where "
                        "the dashboard finds it)")
    add_json_argument(parser, "the schedule file's content")
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..formats import SCHEDULE
    from ..lock import enclosing_run, run_lock
    from ..placement.optimizer import MAX_FIT_TOKENS
    from ..placement.place import PlaceSettings
    from ..placement.schedule import ScheduleConfig, format_schedules, replay_schedules
    from ..trace import Trace

    trace = Trace.open(args.run)
    if args.gpus is None and args.gpus_per_node is None:
        raise InputError("give the cluster size: --gpus G, or --nodes N --gpus-per-node M")
    topology = topology_from_args(args)
    cost = cost_from_args(args, trace, topology)
    methods = [m.strip() for value in args.method or ["routelens,eplb"] for m in value.split(",") if m.strip()]
    place = PlaceSettings(
        redundant=args.redundant, replica_policy=args.replica_policy, seed=args.seed, time_budget_s=args.time_budget,
        max_fit_tokens=args.max_fit_tokens or MAX_FIT_TOKENS,
        seeds=tuple(s.strip() for s in args.starts.split(",") if s.strip()) if args.starts else None,
        num_groups=args.expert_groups, objective=args.objective, kicks=args.kicks)
    config = ScheduleConfig(methods=tuple(dict.fromkeys(methods)), every_tokens=args.every, fit_tokens=args.fit_tokens,
                            batch_tokens=args.batch_tokens, max_tokens=args.max_tokens, weight_bytes=args.weight_bytes,
                            phase=args.phase, relabel=not args.no_relabel, place=place)
    result = replay_schedules(trace, cost, config, progress=not args.no_progress, workers=args.workers)
    result["label"] = f"g{topology.num_gpus}-r{args.redundant}" + (f"-{args.phase}" if args.phase else "")
    out = Path(args.out) if args.out else SCHEDULE.path_in(trace.path, result)
    owner = enclosing_run(out)
    if owner is not None:
        with run_lock(owner, "routelens schedule-eval"):
            SCHEDULE.write(out, result)
    else:
        SCHEDULE.write(out, result)
    if write_json_output(args.json, {**SCHEDULE.header(), **result}):
        return 0
    print(format_schedules(result))
    print(f"wrote   {out}")
    if args.json:
        print(f"wrote   {args.json}")
    return 0
