"""``routelens reroute-eval [MODEL]``: what each re-routing policy costs in quality and saves in traffic."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ._args import add_deprecated_alias, add_json_argument, add_no_progress_argument, positive_int, write_json_output

POLICY_CHOICES = ("c2r", "gpu-limited", "gpu-adaptive", "capacity-drop", "capacity-reroute")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reroute-eval",
        help="measure re-routing policies inside the model: perplexity, agreement, GPUs per token, stragglers",
        description="Apply re-routing policies inside a Hugging Face MoE model (hooks on its routers, no edits to its "
        "files) and measure what they cost: perplexity and next-token accuracy on held-out text, agreement with the "
        "unmodified model, and what they save under a routelens plan for --gpus GPUs: GPUs per token, the busiest "
        "GPU's receive volume, max/mean expert load. C2R groups and the plan are fitted on the first "
        "--fit-fraction of the windows and everything is scored on the rest. Without --policy every policy is "
        "swept over its default settings.",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="hub id or checkpoint folder (default: bundled data/demo-moe)")
    parser.add_argument("--policy", action="append", default=None, metavar="POLICY",
                        help=f"policy to sweep, repeatable or comma-separated ({', '.join(POLICY_CHOICES)}; "
                        "default: all)")
    parser.add_argument("--group-size", dest="top_t", default=None, metavar="T[,T...]",
                        help="c2r: group sizes T to sweep (default E/8, E/4, E/2)")
    add_deprecated_alias(parser, "--top-t", "--group-size")
    parser.add_argument("--max-gpus", default=None, metavar="M[,M...]",
                        help="gpu-limited: GPU limits M to sweep (default: from the fewest GPUs that hold k experts "
                        "to --gpus - 1)")
    parser.add_argument("--gpu-score", default=None, metavar="max|mass[,...]",
                        help="gpu-limited: how GPUs are ranked (default max, DeepSeek-V2)")
    parser.add_argument("--min-gpu-share", default=None, metavar="S[,S...]",
                        help="gpu-adaptive: shares of a token's routing weight a GPU must hold to be visited "
                        "(default 0.05,0.075,0.1,0.15)")
    parser.add_argument("--gpu-fill", default=None, metavar="best|drop[,...]",
                        help="GPU policies: experts a token loses on GPUs it no longer visits are replaced by the best "
                        "on the GPUs kept (best, DeepSeek-V2) or dropped (drop) (default best)")
    parser.add_argument("--routing-weights", default=None, metavar="renorm|keep[,...]",
                        help="routing weights of the re-routed experts to sweep: renorm (the model's rule on the new "
                        "choice, as the papers do) or keep (each expert keeps its unconstrained weight) (default: both)")
    add_deprecated_alias(parser, "--weights", "--routing-weights")
    parser.add_argument("--capacity-factor", default=None, metavar="F[,F...]",
                        help="capacity policies: capacity factors to sweep (default drop 1,1.25,1.5; "
                        "reroute 1,1.1,1.25)")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--gpus", type=positive_int, default=8,
                           help="GPUs of the routelens plan fitted on the --fit-fraction windows (default 8)")
    placement.add_argument("--plan", metavar="FILE", default=None, help="use this placement instead of fitting one")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", default=None,
                        help="held-out text, plain or .jsonl (default: bundled data/corpus/heldout.txt)")
    source.add_argument("--dataset", metavar="NAME[:CONFIG[:SPLIT]]", default=None, help="a Hugging Face dataset")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--max-tokens", type=positive_int, default=65536,
                        help="tokens of text to read (whole windows of --seq-len), fit and evaluation windows "
                        "together (default 65536: 256 windows of 256)")
    add_deprecated_alias(parser, "--max-windows", "--max-tokens (windows x --seq-len)", dest="max_windows",
                         type=positive_int, default=None, metavar="N")
    parser.add_argument("--fit-fraction", type=float, default=0.25,
                        help="first fraction of the windows that C2R groups and the plan are fitted on; the rest "
                        "is scored (default 0.25)")
    add_deprecated_alias(parser, "--calib-fraction", "--fit-fraction")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="windows per forward pass; capacity is shared over one pass (default 8)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default=None,
                        help="weights dtype (default: float32 on CPU, the checkpoint's dtype on GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run modeling code shipped with the checkpoint (only for checkpoints you trust)")
    add_json_argument(parser, "the result rows (a list)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="folder for the trade-off curve (tradeoff.json) and the fitted plan (plan.json) the "
                        "dashboard reads (default runs/reroute-eval-<model>)")
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..capture.adapters import find_router_sites
    from ..capture.load import demo_model_path, load_model, model_reference
    from ..capture.text import file_source, pack_windows, resolve_source
    from ..errors import InputError
    from ..formats import TRADEOFF
    from ..plan import Plan
    from ..reroute.evaluate import (best_within, build_policies, calibration_routing, default_settings,
                                    evaluate_policies, split_windows)
    from ..reroute.fitting import fit_plan

    policies = _policy_names(args.policy)
    if not 0.0 < args.fit_fraction < 1.0:
        raise InputError(f"--fit-fraction must lie strictly between 0 and 1, got {args.fit_fraction}")
    top_ts = _int_list(args.top_t, "--group-size")
    gpu_limits = _int_list(args.max_gpus, "--max-gpus")
    gpu_scores = _str_list(args.gpu_score) or ["max"]
    for score in gpu_scores:
        if score not in ("max", "mass"):
            raise InputError(f"unknown --gpu-score '{score}' (max or mass)")
    shares = _float_list(args.min_gpu_share, "--min-gpu-share", allow_zero=True)
    if any(share > 1 for share in shares):
        raise InputError(f"--min-gpu-share values must lie in [0, 1], got '{args.min_gpu_share}'")
    fills = _str_list(args.gpu_fill)
    for fill in fills:
        if fill not in ("best", "drop"):
            raise InputError(f"unknown --gpu-fill '{fill}' (best or drop)")
    weightings = _str_list(args.routing_weights) or ["renorm", "keep"]
    for weighting in weightings:
        if weighting not in ("renorm", "keep"):
            raise InputError(f"unknown --routing-weights '{weighting}' (renorm or keep)")
    max_tokens = text_tokens(args)
    factors = _float_list(args.capacity_factor, "--capacity-factor")
    given_plan = Plan.load(args.plan) if args.plan else None  # a bad plan fails before the model loads
    model_name = args.model or str(demo_model_path())
    started = time.perf_counter()
    model, tokenizer = load_model(model_name, dtype=args.dtype, device=args.device,
                                  trust_remote_code=args.trust_remote_code)
    if getattr(model.config, "is_encoder_decoder", False):
        raise InputError(f"reroute-eval scores causal language models; {model_name} is an encoder-decoder model")
    routing = find_router_sites(model)
    sites = routing.sites
    num_experts = max(site.num_experts for site in sites)
    top_k = sites[0].top_k
    if args.text is None and args.dataset is None:
        source = _bundled_heldout(file_source, resolve_source)
    else:
        source = resolve_source(args.text, args.dataset)
    windows = pack_windows(source, tokenizer, seq_len=args.seq_len, max_tokens=max_tokens)
    calib, heldout = split_windows(windows.token_ids, args.fit_fraction)
    progress = not args.no_progress
    calibration = calibration_routing(model, sites, calib, batch_size=args.batch_size, progress=progress)
    if given_plan is not None:
        plan = given_plan
        plan.check_fits([s.name for s in sites], num_experts, what="model")
    else:
        from ..capture.engine import config_summary

        plan = fit_plan(calibration, num_experts, args.gpus, config=config_summary(model.config))
    settings = default_settings(num_experts, top_k, plan.num_gpus, plan.slots_per_gpu, weightings, fills or ("best",))
    settings = {name: settings[name] for name in policies}
    _override(settings, "c2r", {"top_t": top_ts}, weightings)
    _override(settings, "gpu-limited", {"max_gpus": gpu_limits, "gpu_score": gpu_scores, "fill": fills}, weightings)
    _override(settings, "gpu-adaptive", {"min_gpu_share": shares, "fill": fills}, weightings)
    for name in ("capacity-drop", "capacity-reroute"):
        _override(settings, name, {"capacity_factor": factors}, weightings)
    fitted = build_policies(settings, calibration, num_experts, plan)
    with torch.inference_mode():
        rows = evaluate_policies(model, sites, heldout, fitted, plan=plan, batch_size=args.batch_size,
                                 progress=progress)
    elapsed = time.perf_counter() - started
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name.rstrip("/")).name) or "model"
    out = Path(args.out) if args.out else Path("runs") / f"reroute-eval-{label}"
    tradeoff = {
        "model": model_reference(model_name),
        "family": routing.family,
        "num_experts": num_experts,
        "top_k": top_k,
        "layers": [s.name for s in sites],
        "text": source.describe(),
        "seq_len": args.seq_len,
        "calibration_windows": int(calib.shape[0]),
        "evaluation_windows": int(heldout.shape[0]),
        "batch_size": args.batch_size,
        "plan": {"method": plan.method, "num_gpus": plan.num_gpus, "file": "plan.json"},
        "wall_s": round(elapsed, 1),
        "rows": rows,
    }
    if not (args.plan and (out / "plan.json").resolve() == Path(args.plan).resolve()):
        plan.save(out / "plan.json")  # never rewrite the plan file it was given
    tradeoff_path = TRADEOFF.write(out / TRADEOFF.file, tradeoff)
    if write_json_output(args.json, rows):
        return 0
    print(format_rows(rows, plan.num_gpus, f"{plan.method} plan" + (f" {args.plan}" if args.plan else "")))
    best = best_within(rows, 0.01)
    if best is not None:
        versus = best.get("gpus_per_token_vs_contiguous")
        print(f"fewest GPUs per token within 1% perplexity: {best['label']} "
              f"({best['gpus_per_token']:.2f} GPUs/token, {best.get('gpus_per_token_change', 0):+.1%} vs the same plan"
              + ("" if versus is None else f", {versus:+.1%} vs contiguous")
              + f"; perplexity {best.get('perplexity_change', 0):+.2%}"
              + ("" if best.get("perplexity_change_ci95") is None else
                 " [{:+.2%}, {:+.2%}] 95% paired bootstrap over windows".format(*best["perplexity_change_ci95"]))
              + ")")
    print(f"scored {rows[0]['eval_tokens']:,} held-out tokens x {len(rows)} settings in {elapsed:.0f}s; "
          f"trade-off curve in {tradeoff_path}")
    return 0


def text_tokens(args) -> int:
    """Tokens of text to read: ``--max-tokens``, or the deprecated ``--max-windows`` times ``--seq-len``."""
    return args.max_windows * args.seq_len if args.max_windows else args.max_tokens


def format_rows(rows: list[dict], num_gpus: int, plan_name: str = "routelens plan") -> str:
    """The result rows as an aligned table (changes relative to the baseline row)."""
    header = ("setting", "perplexity", "95% CI", "accuracy", "agree", "GPUs/token", "vs contiguous", "busiest recv",
              "max/mean load", "dropped")
    table = [header]
    for r in rows:
        def change(key):
            value = r.get(f"{key}_change")
            return "" if value is None or r["policy"] == "none" else f" ({value:+.1%})"

        versus = r.get("gpus_per_token_vs_contiguous")
        interval = r.get("perplexity_change_ci95")
        table.append((
            r["label"],
            f"{r['perplexity']:.3f}{change('perplexity')}",
            "" if interval is None else f"[{interval[0]:+.1%}, {interval[1]:+.1%}]",
            f"{r['next_token_accuracy']:.3f}",
            f"{r['agreement']:.3f}",
            f"{r.get('gpus_per_token', float('nan')):.2f}{change('gpus_per_token')}",
            "" if versus is None else f"{versus:+.1%}",
            f"{r.get('busiest_gpu_recv', float('nan')):.2f}{change('busiest_gpu_recv')}",
            f"{r['load_max_over_mean']:.2f}",
            f"{r['dropped_fraction']:.1%}",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    base = rows[0]
    reference = base.get("contiguous_gpus_per_token")
    lines = [f"re-routing trade-off ({num_gpus} GPUs, {plan_name}"
             + (f"; the unconstrained model visits {reference:.2f} GPUs/token on the contiguous layout)"
                if reference else ")")]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def _bundled_heldout(file_source, resolve_source):
    from ..capture.load import bundled_data_dir

    heldout = bundled_data_dir() / "corpus" / "heldout.txt"
    return file_source(heldout, kind="bundled") if heldout.is_file() else resolve_source(None, None)


def _policy_names(values) -> list[str]:
    from ..errors import InputError

    if not values:
        return list(POLICY_CHOICES)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    for name in names:
        if name not in POLICY_CHOICES:
            raise InputError(f"unknown --policy '{name}' (choose from {', '.join(POLICY_CHOICES)})")
    return list(dict.fromkeys(names))


def _override(settings: dict, policy: str, given: dict, weightings) -> None:
    """Replace ``policy``'s sweep by the grid of the values given on the command line."""
    if policy not in settings or not any(given.values()):
        return
    defaults = settings[policy]
    axes = {key: values or sorted({e[key] for e in defaults if key in e}, key=str) for key, values in given.items()}
    grid = [{}]
    for key, values in axes.items():
        grid = [{**entry, key: value} for value in values for entry in grid]
    settings[policy] = [{**entry, "weights": w} for w in weightings for entry in grid]


def _str_list(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def _int_list(text, option):
    from ..errors import InputError

    try:
        values = [int(v) for v in _str_list(text)]
    except ValueError:
        raise InputError(f"{option} takes whole numbers separated by commas, got '{text}'") from None
    if any(v < 1 for v in values):
        raise InputError(f"{option} values must be >= 1, got '{text}'")
    return values


def _float_list(text, option, allow_zero: bool = False):
    from ..errors import InputError

    try:
        values = [float(v) for v in _str_list(text)]
    except ValueError:
        raise InputError(f"{option} takes numbers separated by commas, got '{text}'") from None
    if any(not (v >= 0 if allow_zero else v > 0) or v == float("inf") for v in values):
        raise InputError(f"{option} values must be {'non-negative' if allow_zero else 'positive'}, got '{text}'")
    return values
