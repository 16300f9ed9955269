"""``routelens reroute-eval [MODEL]``: what each re-routing policy costs in quality and saves in traffic."""

from __future__ import annotations

from ._args import (add_deprecated_alias, add_json_argument, add_no_progress_argument, add_policy_arguments,
                    policy_sweep, positive_int, write_json_output)


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
    add_policy_arguments(parser, sweep=True)
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
    from ..reroute.evaluate import best_within
    from ..reroute.tradeoff import TradeoffConfig, run_tradeoff

    config = TradeoffConfig(
        model=args.model, sweep=policy_sweep(args), text=args.text, dataset=args.dataset, seq_len=args.seq_len,
        max_tokens=text_tokens(args), fit_fraction=args.fit_fraction, batch_size=args.batch_size, gpus=args.gpus,
        plan=args.plan, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
        out=args.out, progress=not args.no_progress)
    result = run_tradeoff(config)
    rows, plan = result.rows, result.plan
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
    print(f"scored {rows[0]['eval_tokens']:,} held-out tokens x {len(rows)} settings in {result.elapsed_s:.0f}s; "
          f"trade-off curve in {result.out / 'tradeoff.json'}")
    return 0


def text_tokens(args) -> int:
    """Tokens of text to read: ``--max-tokens``, or the deprecated ``--max-windows`` times ``--seq-len``."""
    return args.max_windows * args.seq_len if args.max_windows else args.max_tokens


def format_rows(rows: list[dict], num_gpus: int, plan_name: str = "routelens plan") -> str:
    """The result rows as an aligned table (changes relative to the baseline row)."""
    from ..reroute.registry import is_baseline

    header = ("setting", "perplexity", "95% CI", "accuracy", "agree", "GPUs/token", "vs contiguous", "busiest recv",
              "max/mean load", "dropped")
    table = [header]
    for r in rows:
        def change(key):
            value = r.get(f"{key}_change")
            return "" if value is None or is_baseline(r["policy"]) else f" ({value:+.1%})"

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
