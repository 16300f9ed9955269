"""``routelens capture [MODEL] --out RUN``: record how an MoE model routes real text into a trace."""

from __future__ import annotations

from ._args import add_no_progress_argument, positive_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "capture",
        help="record the experts an MoE model chooses for every token and layer",
        description="Run text through a Hugging Face MoE model and record, for every token and MoE layer, the "
        "experts chosen and their weights (optionally the router logits) into a trace folder. "
        "Without MODEL: the bundled demo checkpoint data/demo-moe and the bundled corpus. "
        "Under torchrun each process captures its share of the windows (data parallel).",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="hub id (Qwen/Qwen3-30B-A3B) or checkpoint folder (default: bundled data/demo-moe)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run (trace) folder to write (must be new, or use --resume)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", help="plain text file, or .jsonl with a \"text\" field per line "
                        "(default: bundled data/corpus/train.txt)")
    source.add_argument("--dataset", metavar="NAME[:CONFIG[:SPLIT]]",
                        help="a Hugging Face dataset, e.g. wikitext:wikitext-2-raw-v1:test (needs 'datasets')")
    parser.add_argument("--max-tokens", type=positive_int, default=None,
                        help="tokens of text to capture (whole windows of --seq-len; default: all the text, or "
                        "65536 tokens of the bundled corpus)")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per packed window (default 256)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--save-logits", action="store_true", help="also record the [tokens, experts] router logits")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default=None,
                        help="weights dtype (default: float32 on CPU, the checkpoint's dtype on GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument("--device-map", default=None,
                        help="accelerate device map for models larger than one GPU, e.g. auto (without it, the "
                        "weights load straight onto --device)")
    parser.add_argument("--max-memory", default=None, metavar="DEVICE=SIZE,...",
                        help="with --device-map: memory each device may hold, e.g. 0=70GiB,1=70GiB,cpu=100GiB")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run modeling code shipped with the checkpoint (only for checkpoints you trust)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out (same model and settings), skipping what it holds")
    parser.add_argument("--shard-tokens", type=positive_int, default=None,
                        help="tokens per shard file, the unit an interrupted run resumes from (default 65536, fewer "
                        "when a shard would hold more than 256 MiB, e.g. router logits of many layers)")
    add_no_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..capture.engine import capture_from_path
    from ..capture.load import parse_max_memory

    trace = capture_from_path(
        args.model,
        args.out,
        text=args.text,
        dataset=args.dataset,
        max_tokens=args.max_tokens,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        max_memory=parse_max_memory(args.max_memory),
        trust_remote_code=args.trust_remote_code,
        save_logits=args.save_logits,
        resume=args.resume,
        progress=not args.no_progress,
        shard_tokens=args.shard_tokens,
    )
    stats = trace.manifest.get("stats", {})
    if trace.manifest.get("world_size", 1) == 1 or _is_rank_zero():
        speed = f" at {stats['tokens_per_s']:,.0f} tokens/s" if stats.get("tokens_per_s") else ""
        print(
            f"captured {trace.num_tokens:,} tokens x {len(trace.layers)} MoE layers "
            f"({trace.num_experts} experts, top-{trace.top_k}) into {trace.path} "
            f"({len(trace.shards)} shards){speed}; see: routelens info {trace.path}"
        )
    return 0


def _is_rank_zero() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
