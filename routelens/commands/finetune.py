"""``routelens finetune [MODEL] --policy c2r --out DIR``: a short fine-tune with a re-routing constraint on."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ._args import positive_int

POLICY_CHOICES = ("c2r", "gpu-limited", "gpu-adaptive", "capacity-drop", "capacity-reroute")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a MoE model briefly with a re-routing constraint active (as C2R trains) and measure what "
        "it recovers",
        description="Fit a re-routing policy on calibration windows of the training text, measure held-out "
        "perplexity with and without it, fine-tune the model for --steps steps with the policy active in every "
        "forward (the router learns through the chosen experts' weights), measure again, and save the model. "
        "Reports how much of the policy's perplexity cost the fine-tune recovered; --control also fine-tunes a "
        "copy without the policy for the same steps, so extra training alone can be told apart.",
    )
    parser.add_argument("model", nargs="?", default=None, help="hub id or checkpoint folder (default: data/demo-moe)")
    parser.add_argument("--out", required=True, help="folder to save the fine-tuned model and finetune.json in (new)")
    parser.add_argument("--policy", required=True, choices=POLICY_CHOICES)
    parser.add_argument("--group-size", "--top-t", dest="top_t", type=positive_int, default=None,
                        help="c2r: T (default E/4)")
    parser.add_argument("--max-gpus", type=positive_int, default=None, help="gpu-limited: M (default G/2)")
    parser.add_argument("--min-gpu-share", type=float, default=None, help="gpu-adaptive: share (default 0.1)")
    parser.add_argument("--capacity-factor", type=float, default=None, help="capacity policies: gamma (default 1.25)")
    parser.add_argument("--gpu-fill", choices=("best", "drop"), default="best",
                        help="GPU policies: experts a token loses on GPUs it no longer visits are replaced by the best "
                        "on the GPUs kept (best, DeepSeek-V2) or dropped (drop) (default best)")
    parser.add_argument("--weights", choices=("renorm", "keep"), default="renorm",
                        help="how re-routed experts are weighted (default renorm)")
    parser.add_argument("--gpus", type=positive_int, default=8, help="GPUs of the plan the GPU policies use (default 8)")
    parser.add_argument("--text", default=None, help="training text (default: bundled data/corpus/train.txt)")
    parser.add_argument("--heldout", default=None, help="held-out text (default: bundled data/corpus/heldout.txt)")
    parser.add_argument("--seq-len", type=positive_int, default=256)
    parser.add_argument("--train-windows", type=positive_int, default=512, help="training windows to draw from")
    parser.add_argument("--calib-windows", type=positive_int, default=32,
                        help="training windows that fit C2R groups / the plan (default 32)")
    parser.add_argument("--eval-windows", type=positive_int, default=64, help="held-out windows scored (default 64)")
    parser.add_argument("--steps", type=positive_int, default=50)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train", choices=("all", "router", "experts"), default="all",
                        help="parameters to train: all, the routers only, or routers + experts (default all)")
    parser.add_argument("--control", action="store_true",
                        help="also fine-tune a copy without the policy for the same steps (the extra-training control)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..capture.adapters import find_router_sites
    from ..capture.engine import config_summary
    from ..capture.load import bundled_data_dir, demo_model_path, load_model, model_reference
    from ..capture.text import file_source, pack_windows
    from ..errors import InputError
    from ..graphs import coactivation_counts
    from ..io import atomic_write_json
    from ..reroute.evaluate import calibration_routing, evaluate_policies
    from ..reroute.finetune import finetune_with_policy, measure_recovery
    from ..reroute.fitting import fit_plan
    from ..reroute.policy import c2r_policy, capacity_policy, gpu_adaptive_policy, gpu_limited_policy

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"output folder {out} already exists and is not empty; choose another --out")
    if not args.lr > 0:
        raise InputError(f"--lr must be positive, got {args.lr}")
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    model_name = args.model or str(demo_model_path())
    model, tokenizer = load_model(model_name, dtype="float32", device=args.device)
    sites = find_router_sites(model).sites
    num_experts, top_k = sites[0].num_experts, sites[0].top_k
    corpus = bundled_data_dir() / "corpus"
    train = pack_windows(file_source(args.text or corpus / "train.txt"), tokenizer, seq_len=args.seq_len,
                         max_tokens=(args.train_windows + args.calib_windows) * args.seq_len).token_ids
    heldout = pack_windows(file_source(args.heldout or corpus / "heldout.txt"), tokenizer, seq_len=args.seq_len,
                           max_tokens=args.eval_windows * args.seq_len).token_ids
    if train.shape[0] <= args.calib_windows:
        raise InputError(f"the training text gives {train.shape[0]} windows, not more than --calib-windows")
    calib, train = train[:args.calib_windows], train[args.calib_windows:]
    progress = not args.no_progress
    calibration = calibration_routing(model, sites, calib, batch_size=args.batch_size, progress=progress)
    plan = fit_plan(calibration, num_experts, args.gpus, config=config_summary(model.config))
    if args.policy == "c2r":
        counts = {layer: coactivation_counts(ids, num_experts) for layer, ids in calibration.items()}
        policy = c2r_policy(counts, args.top_t or max(num_experts // 4, top_k - 1), args.weights)
    elif args.policy == "gpu-limited":
        policy = gpu_limited_policy(plan, args.max_gpus or max(1, plan.num_gpus // 2), weights=args.weights,
                                    fill=args.gpu_fill)
    elif args.policy == "gpu-adaptive":
        policy = gpu_adaptive_policy(plan, 0.1 if args.min_gpu_share is None else args.min_gpu_share,
                                     args.max_gpus, args.weights, args.gpu_fill)
    else:
        policy = capacity_policy(args.policy, args.capacity_factor or 1.25, args.weights)
    control = copy.deepcopy(model) if args.control else None
    with torch.inference_mode():
        before = evaluate_policies(model, sites, heldout, [policy], plan=plan, batch_size=args.batch_size,
                                   progress=progress)
    losses = finetune_with_policy(model, sites, policy, train, steps=args.steps, batch_size=args.batch_size,
                                  lr=args.lr, train=args.train, seed=args.seed, progress=progress)
    with torch.inference_mode():
        after = evaluate_policies(model, sites, heldout, [policy], plan=plan, batch_size=args.batch_size,
                                  progress=progress)
    report = {"model": model_reference(model_name), "policy": policy.name, **policy.settings(),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "train": args.train,
              "seq_len": args.seq_len, "eval_tokens": before[0]["eval_tokens"], "plan": plan.method,
              **measure_recovery(before, after), "losses": losses, "before": before, "after": after}
    if control is not None:
        control_sites = find_router_sites(control).sites
        control_losses = finetune_with_policy(control, control_sites, _none(), train, steps=args.steps,
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


def _none():
    from ..reroute.policy import none_policy

    return none_policy()
