"""``routelens import ENGINE FILES... --model M --out RUN``: routing a serving engine recorded → a run."""

from __future__ import annotations

from pathlib import Path

from ._args import add_json_argument, write_json_output


def add_parser(subparsers) -> None:
    from ..engines.importer import IMPORTERS
    from ..engines.sglang_dump import RANK_LAYOUTS

    parser = subparsers.add_parser(
        "import",
        help="import the routing SGLang or vLLM recorded in production as a run (analyze, place, plan-eval read it)",
        description="Read the expert routing a serving engine recorded and write it as a routelens run. "
        + "; ".join(f"{name}: {importer.description}" for name, importer in IMPORTERS.items())
        + ". Only the model's config.json is read (no weights), to map the engine's decoder-layer rows to the MoE "
        "layers. Engines record expert ids only: the run says so (has_weights: false) and commands that need routing "
        "weights or router logits refuse it. SGLang stat (and per_pass) records hold counts only: info, the load "
        "views, place --method eplb|greedy and the dashboard read them; co-activation commands refuse them. See "
        "docs/production.md.",
    )
    parser.add_argument("engine", choices=sorted(IMPORTERS), metavar="ENGINE",
                        help="the engine that recorded FILES: " + ", ".join(sorted(IMPORTERS)))
    parser.add_argument("files", nargs="+", type=Path, metavar="FILES",
                        help="record files, or folders holding them (sglang: expert_distribution_recorder_*.pt of "
                        "every rank; vllm: .jsonl / .npz / .pt collections)")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="hub id or local folder of the model the engine served (only config.json is read)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new run folder to write")
    parser.add_argument("--ranks", choices=sorted(RANK_LAYOUTS), default="auto",
                        help="sglang: how the ranks' records relate: " + "; ".join(
                            f"{name}: {text}" for name, text in RANK_LAYOUTS.items()) + " (default auto)")
    parser.add_argument("--engine-version", default=None, metavar="VERSION",
                        help="the engine version that recorded the files, stored in the run (the files do not say)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let transformers run the checkpoint's own config code (only if you trust it)")
    add_json_argument(parser, "what was imported")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..capture.summary import format_summary, summarize_trace
    from ..engines.importer import ImportSettings, import_records
    settings = ImportSettings(engine=args.engine, files=tuple(args.files), model=args.model, out=Path(args.out),
                              ranks=args.ranks, engine_version=args.engine_version,
                              trust_remote_code=args.trust_remote_code)
    result = import_records(settings)
    trace = result.trace
    summary = summarize_trace(trace)
    report = {"run": str(trace.path), "engine": args.engine, "mode": result.mode,
              "files": [str(p) for p in result.files], **result.details, "summary": summary}
    if write_json_output(args.json, report):
        return 0
    print(format_summary(summary))
    for caveat in trace.manifest.get("source", {}).get("caveats", []):
        print(f"note      {caveat}")
    if trace.counts_only:
        print(f"next      routelens place {trace.path} --method eplb --gpus G --format sglang --out plan.pt")
    else:
        print(f"next      routelens analyze {trace.path}")
    return 0
