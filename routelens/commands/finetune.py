"""``routelens finetune [MODEL] --policy c2r --out DIR``: a short fine-tune with a re-routing constraint on."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ._args import (add_deprecated_alias, add_no_progress_argument, add_policy_arguments, policy_choice,
                    positive_float, positive_int)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a MoE model briefly with a re-routing constraint active (as C2R trains) and measure what "
        "it recovers",
        description="Fit a re-routing policy on the first --fit-tokens of the training text, measure held-out "
        "perplexity with and without it, fine-tune the model for --steps steps with the policy active in every "
        "forward (the router learns through the chosen experts' weights), measure again, and save the model. "
        "Reports how much of the policy's perplexity cost the fine-tune recovered; --control also fine-tunes a "
        "copy without the policy for the same steps, so extra training alone can be told apart.",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="hub id or checkpoint folder (default: bundled data/demo-moe)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to save the fine-tuned model and finetune.json in (new or empty)")
    add_policy_arguments(parser, sweep=False, what="re-routing policy active during the fine-tune")
    parser.add_argument("--gpus", type=positive_int, default=8,
                        help="GPUs of the routelens plan the GPU policies use, fitted on the --fit-tokens (default 8)")
    parser.add_argument("--text", metavar="FILE", default=None,
                        help="training text, plain or .jsonl (default: bundled data/corpus/train.txt)")
    parser.add_argument("--heldout", metavar="FILE", default=None,
                        help="held-out text to score, plain or .jsonl (default: bundled data/corpus/heldout.txt)")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--train-tokens", type=positive_int, default=131072,
                        help="tokens of training text to draw batches from, after the --fit-tokens (whole windows "
                        "of --seq-len; default 131072: 512 windows of 256)")
    parser.add_argument("--fit-tokens", type=positive_int, default=8192,
                        help="tokens at the start of the training text that C2R groups and the plan are fitted on "
                        "(whole windows; default 8192: 32 windows of 256)")
    parser.add_argument("--eval-tokens", type=positive_int, default=16384,
                        help="held-out tokens scored before and after (whole windows; default 16384: 64 windows "
                        "of 256)")
    for old, new in (("--train-windows", "--train-tokens"), ("--calib-windows", "--fit-tokens"),
                     ("--eval-windows", "--eval-tokens")):
        add_deprecated_alias(parser, old, f"{new} (windows x --seq-len)", dest=old[2:].replace("-", "_"),
                             type=positive_int, default=None, metavar="N")
    parser.add_argument("--steps", type=positive_int, default=50, help="optimizer steps (default 50)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows per step (default 8)")
    parser.add_argument("--lr", type=positive_float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    parser.add_argument("--train", choices=("all", "router", "experts"), default="all",
                        help="parameters to train: all, the routers only, or routers + experts (default all)")
    parser.add_argument("--control", action="store_true",
                        help="also fine-tune a copy without the policy for the same steps (the extra-training control)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the training batches and the initial state (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..capture.adapters import find_router_sites
    from ..capture.engine import config_summary
    from ..capture.load import bundled_data_dir, demo_model_path, load_model, model_reference
    from ..capture.text import file_source, pack_windows
    from ..errors import InputError
    from ..io import atomic_write_json
    from ..reroute.evaluate import calibration_routing, evaluate_policies
    from ..reroute.finetune import finetune_with_policy, measure_recovery
    from ..reroute.fitting import fit_plan
    from ..reroute.policy import FitData, fit_policy, none_policy
    from ..reroute.registry import PolicyContext

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output folder {out} already exists and is not empty; choose another --out")
    train_windows, calib_windows, eval_windows = window_counts(args)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    model_name = args.model or str(demo_model_path())
    model, tokenizer = load_model(model_name, dtype="float32", device=args.device)
    sites = find_router_sites(model).sites
    num_experts, top_k = sites[0].num_experts, sites[0].top_k
    corpus = bundled_data_dir() / "corpus"
    train = pack_windows(file_source(args.text or corpus / "train.txt"), tokenizer, seq_len=args.seq_len,
                         max_tokens=(train_windows + calib_windows) * args.seq_len).token_ids
    heldout = pack_windows(file_source(args.heldout or corpus / "heldout.txt"), tokenizer, seq_len=args.seq_len,
                           max_tokens=eval_windows * args.seq_len).token_ids
    if train.shape[0] <= calib_windows:
        raise InputError(f"the training text gives {train.shape[0]} windows of --seq-len {args.seq_len}, not more "
                         f"than the {calib_windows} of --fit-tokens")
    calib, train = train[:calib_windows], train[calib_windows:]
    progress = not args.no_progress
    calibration = calibration_routing(model, sites, calib, batch_size=args.batch_size, progress=progress)
    plan = fit_plan(calibration, num_experts, args.gpus, config=config_summary(model.config))
    context = PolicyContext(num_experts, top_k, plan.num_gpus, plan.slots_per_gpu)
    spec, settings = policy_choice(args).resolve(context)
    policy = fit_policy(spec, settings, FitData(plan=plan, calibration=calibration, num_experts=num_experts))
    control = copy.deepcopy(model) if args.control else None
    with torch.inference_mode():
        before = evaluate_policies(model, sites, heldout, [policy], plan=plan, batch_size=args.batch_size,
                                   progress=progress)
    losses = finetune_with_policy(model, sites, policy, train, steps=args.steps, batch_size=args.batch_size,
                                  lr=args.lr, train=args.train, seed=args.seed, progress=progress)
    with torch.inference_mode():
        after = evaluate_policies(model, sites, heldout, [policy], plan=plan, batch_size=args.batch_size,
                                  progress=progress)
    report = {"model": model_reference(model_name), "policy": policy.name, **policy.record(),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "train": args.train,
              "seq_len": args.seq_len, "eval_tokens": before[0]["eval_tokens"], "plan": plan.method,
              **measure_recovery(before, after), "losses": losses, "before": before, "after": after}
    if control is not None:
        control_sites = find_router_sites(control).sites
        control_losses = finetune_with_policy(control, control_sites, none_policy(), train, steps=args.steps,
                                              batch_size=args.batch_size, lr=args.lr, train=args.train,
                                              seed=args.seed, progress=progress)
        with torch.inference_mode():
            control_rows = evaluate_policies(control, control_sites, heldout, [policy], plan=plan,
                                             batch_size=args.batch_size, progress=progress)
        report["control"] = {"unconstrained": control_rows[0]["perplexity"],
                             "constrained": control_rows[1]["perplexity"], "losses": control_losses}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    atomic_write_json(out / "finetune.json", report)
    print(format_report(policy.label(), report))
    print(f"saved the fine-tuned model and finetune.json in {out}")
    return 0


def format_report(label: str, report: dict) -> str:
    lines = [
        f"{label}: {report['steps']} steps x {report['batch_size']} windows, lr {report['lr']:g}, "
        f"{report['eval_tokens']:,} held-out tokens",
        f"  unconstrained model            perplexity {report['baseline_perplexity']:.3f}",
        f"  with the policy, before        perplexity {report['constrained_before']:.3f} ({report['cost_before']:+.2%})",
        f"  with the policy, after         perplexity {report['constrained_after']:.3f} ({report['cost_after']:+.2%})",
        f"  fine-tuned model, policy off   perplexity {report['unconstrained_after']:.3f}",
        f"  recovered {report['recovered']:.0%} of the policy's perplexity cost" if report["recovered"] is not None
        else "  the policy cost no perplexity before the fine-tune: nothing to recover",
    ]
    if "control" in report:
        control = report["control"]
        lines.append(f"  control (same steps, no policy): unconstrained {control['unconstrained']:.3f}, "
                     f"with the policy {control['constrained']:.3f}")
    return "\n".join(lines)


def window_counts(args) -> tuple[int, int, int]:
    """Training, fit and evaluation windows of ``--seq-len`` tokens from ``--train/fit/eval-tokens``.

    The deprecated ``--train/calib/eval-windows`` give window counts directly.

    Raises:
        InputError: a token count below one window.
    """
    return (args.train_windows or _whole_windows(args.train_tokens, args.seq_len, "--train-tokens"),
            args.calib_windows or _whole_windows(args.fit_tokens, args.seq_len, "--fit-tokens"),
            args.eval_windows or _whole_windows(args.eval_tokens, args.seq_len, "--eval-tokens"))


def _whole_windows(tokens: int, seq_len: int, option: str) -> int:
    """Whole windows of ``seq_len`` tokens in ``tokens`` (at least one, else a one-line error naming ``option``)."""
    from ..errors import InputError

    if tokens < seq_len:
        raise InputError(f"{option} {tokens} is less than one window of --seq-len {seq_len}")
    return tokens // seq_len

