"""Placement over time: the best re-placement schedule of each method, weight moves paid, against EPLB's.

Two streams through the trained demo model (data/demo-moe), replayed in token order:

- **code**: a long capture of the bundled training corpus (Python standard-library modules in sorted
  order: the text changes module by module);
- **drift**: held-out Python code and English prose in turns (code, prose, code, prose; the prose is
  the Python language reference shipped with CPython in ``pydoc_data``, available offline).

For each stream and cluster (8 GPUs on one node with ``E/8`` redundant slots; 16 GPUs on two nodes
with 16, since ``E + E/8`` does not fill 16 GPUs evenly) every method (routelens, eplb, greedy,
kahypar-load) is replayed by :func:`routelens.placement.schedule.replay_schedules` — what ``routelens
schedule-eval`` runs: the static plan fitted on the first ``--fit-tokens``, and schedules re-fitted
every N tokens on the window before, each re-placement charged the expert weights it copies on the
cost model's links. Per method the best schedule (lowest mean layer time, moves included) is kept.

Goal (c): the best schedule of routelens >= 15% lower mean layer time than the best schedule of EPLB
with the same slots. Each row prints met / missed with the values and, when missed, what the row's
own numbers say about why (how much of EPLB's layer time is All-to-All, the only part co-activation
placement can shorten).

    .venv/bin/python benchmarks/bench_schedule.py --quick                  # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_schedule.py --json schedule.json     # both streams, 8 and 16 GPUs (about an hour)
    .venv/bin/python benchmarks/bench_schedule.py --code-run runs/code --drift-run runs/drift   # reuse captures

Times are estimated at a production token size (``--hidden-size``, default 4096, bf16 tokens and
weights: one expert copy of the demo's experts scaled to it is 44 MB) on NVLink nodes of 8 GPUs
joined by InfiniBand.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


from routelens.formats import SCHEDULE
from routelens.placement.cost import CostModel
from routelens.placement.hypergraph import mtkahypar_available
from routelens.placement.place import PlaceSettings
from routelens.placement.schedule import ScheduleConfig, replay_schedules
from routelens.placement.topology import make_topology
from routelens.trace import Trace

GOAL = -0.15  # routelens' best schedule: mean layer time at least 15% below EPLB's best
SEGMENT_CHARS = 150_000  # ~40k demo-tokenizer tokens per segment of the drifting stream
QUICK_SEGMENT_CHARS = 30_000


# ---------------------------------------------------------------------------- the streams
def prose_text() -> str:
    """English prose available offline: the Python language reference topics shipped with CPython (pydoc_data)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def _cut(text: str, start: int, size: int) -> str:
    """About ``size`` characters of ``text`` from ``start``, both ends moved to line ends."""
    begin = text.rfind("\n", 0, start) + 1 if start else 0
    end = text.find("\n", begin + size)
    return text[begin:end if end > 0 else len(text)]


def drift_text(path: Path, segment_chars: int = SEGMENT_CHARS) -> list[tuple[str, int]]:
    """Write the drifting stream (held-out code, prose, code, prose; ``segment_chars`` each) to ``path``.

    Returns:
        ``[(kind, characters)]`` of the four segments, in order.
    """
    from routelens.bundled import data_dir

    code = (data_dir() / "corpus" / "heldout.txt").read_text(encoding="utf-8")
    prose = prose_text()
    parts = [("code", _cut(code, 0, segment_chars)), ("prose", _cut(prose, 0, segment_chars)),
             ("code", _cut(code, 2 * segment_chars, segment_chars)),
             ("prose", _cut(prose, 2 * segment_chars, segment_chars))]
    path.write_text("\n\n".join(text for _, text in parts), encoding="utf-8")
    return [(kind, len(text)) for kind, text in parts]


def capture(out: Path, text: Path | None, max_tokens: int | None) -> Trace:
    """Capture the demo model on ``text`` (None: the bundled training corpus) into ``out``, or reuse it."""
    from routelens.capture.engine import capture_from_path

    if (out / "manifest.json").is_file():
        return Trace.open(out)
    started = time.perf_counter()
    trace = capture_from_path(None, out, text=text, max_tokens=max_tokens, progress=False)
    print(f"captured {trace.num_tokens:,} tokens into {out} in {time.perf_counter() - started:.0f} s", flush=True)
    return trace


# ---------------------------------------------------------------------------- one row
def clusters(num_experts: int, gpu_counts: list[int]) -> list[tuple[int, int, int]]:
    """``(GPUs, nodes, redundant)``: nodes of 8 GPUs; ``E/8`` redundant slots, or the fewest above that fill the GPUs."""
    out = []
    for gpus in gpu_counts:
        redundant = num_experts // 8
        while (num_experts + redundant) % gpus:
            redundant += 1
        out.append((gpus, max(1, gpus // 8), redundant))
    return out


def why_missed(best_mine: dict, best_eplb: dict, eplb_entry: dict, mine_entry: dict) -> str:
    """What the row's own numbers say about a missed goal."""
    eplb_mean, mine_mean = eplb_entry["mean"], mine_entry["mean"]
    a2a_share = eplb_mean["a2a_us"] / eplb_mean["layer_us"]
    notes = [f"All-to-All is {100 * a2a_share:.0f}% of EPLB's layer time (the rest is expert compute, which "
             "co-activation placement cannot shorten)"]
    notes.append(f"routelens: a2a {100 * (mine_mean['a2a_us'] / eplb_mean['a2a_us'] - 1):+.1f}%, busiest-GPU compute "
                 f"{100 * (mine_mean['compute_us'] / eplb_mean['compute_us'] - 1):+.1f}% vs EPLB")
    if mine_entry["mean"]["move_us_per_layer"] or eplb_entry["mean"]["move_us_per_layer"]:
        notes.append(f"moves: routelens {mine_mean['move_us_per_layer']:.1f}, EPLB {eplb_mean['move_us_per_layer']:.1f} "
                     "µs per layer execution")
    return "; ".join(notes)


def bench_stream(name: str, trace: Trace, gpu_counts: list[int], args, save: bool) -> list[dict]:
    rows = []
    methods = [m for m in args.methods if m != "kahypar-load" or mtkahypar_available()]
    for gpus, nodes, redundant in clusters(int(trace.num_experts), gpu_counts):
        cost = CostModel.for_model(trace.config, make_topology(num_gpus=gpus, num_nodes=nodes),
                                   hidden_size=args.hidden_size)
        settings = PlaceSettings(redundant=redundant, objective="layer", seeds=args.starts, kicks=0,
                                 time_budget_s=args.budget, max_fit_tokens=args.max_fit_tokens, seed=0)
        config = ScheduleConfig(methods=tuple(methods), every_tokens=tuple(args.every), fit_tokens=args.fit_tokens,
                                batch_tokens=args.batch_tokens, max_tokens=args.max_tokens.get(name), place=settings)
        started = time.perf_counter()
        result = replay_schedules(trace, cost, config, progress=False)
        seconds = time.perf_counter() - started
        result["label"] = f"g{gpus}-r{redundant}"
        if save:
            SCHEDULE.write(SCHEDULE.path_in(trace.path, result), result)
        row = summarize_row(name, gpus, nodes, redundant, result, seconds)
        print_row(row, result)
        rows.append(row)
    return rows


def summarize_row(name: str, gpus: int, nodes: int, redundant: int, result: dict, seconds: float) -> dict:
    best = result["best"]
    entries = {(s["method"], s["every_tokens"]): s for s in result["schedules"]}
    mine, eplb = best["routelens"], best["eplb"]
    change = mine["layer_us_with_moves"] / eplb["layer_us_with_moves"] - 1
    row = {"stream": name, "gpus": gpus, "nodes": nodes, "redundant": redundant,
           "scored_tokens": result["scored_tokens"], "fit_tokens": result["fit_tokens"],
           "batch_tokens": result["batch_tokens"], "every_tokens": result["every_tokens"],
           "expert_bytes": result["expert_bytes"], "best": best, "seconds": round(seconds, 1),
           "routelens_vs_eplb": change, "goal_met": change <= GOAL,
           "schedules": [{k: v for k, v in s.items() if k != "windows"} for s in result["schedules"]]}
    if not row["goal_met"]:
        row["why"] = why_missed(mine, eplb, entries[("eplb", eplb["every_tokens"])],
                                entries[("routelens", mine["every_tokens"])])
    return row


def print_row(row: dict, result: dict) -> None:
    start, end = row["scored_tokens"]
    print(f"\n== {row['stream']}: {row['gpus']} GPUs ({row['nodes']}×{row['gpus'] // row['nodes']}), "
          f"{row['redundant']} redundant slots; scored tokens [{start:,}, {end:,}) in passes of {row['batch_tokens']:,}; "
          f"fit window {row['fit_tokens']:,}; {row['expert_bytes'] / 1e6:.0f} MB per expert copy; {row['seconds']:.0f} s")
    header = ("method", "every", "layer µs", "+moves", "= µs", "max recv", "vs static", "GB moved", "fit s")
    table = [header]
    for s in result["schedules"]:
        mean = s["mean"]
        table.append((s["method"], "static" if s["every_tokens"] is None else f"{s['every_tokens']:,}",
                      f"{mean['layer_us']:.1f}", f"{mean['move_us_per_layer']:.1f}", f"{mean['layer_us_with_moves']:.1f}",
                      f"{mean['busiest_gpu_recv']:.3f}", f"{-100 * s['gain_vs_static']:+.1f}%",
                      f"{s['moves']['bytes'] / 1e9:.1f}", f"{s['fit_seconds']:.0f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for method, best in row["best"].items():
        every = "static" if best["every_tokens"] is None else f"every {best['every_tokens']:,}"
        print(f"best {method:<13} {every:<13} {best['layer_us_with_moves']:8.1f} µs/layer  "
              f"recv {best['busiest_gpu_recv']:.3f}  ({-100 * best['gain_vs_static']:+.1f}% vs its static plan)")
    mine, eplb = row["best"]["routelens"], row["best"]["eplb"]
    print(f"goal (c) routelens best {mine['layer_us_with_moves']:.1f} µs vs EPLB best {eplb['layer_us_with_moves']:.1f} "
          f"µs: {100 * row['routelens_vs_eplb']:+.1f}% (goal <= {100 * GOAL:.0f}%): "
          f"{'MET' if row['goal_met'] else 'missed'}" + ("" if row["goal_met"] else f" — {row['why']}"), flush=True)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code-run", default=None, help="a capture of the bundled training corpus to reuse")
    parser.add_argument("--drift-run", default=None, help="a capture of the drifting stream to reuse")
    parser.add_argument("--work", default=None, help="folder to capture the streams into and keep (default: temporary)")
    parser.add_argument("--code-tokens", type=int, default=131072, help="tokens of the code stream replayed")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--every", type=int, nargs="+", default=[4096, 16384, 65536], help="periods to sweep (tokens)")
    parser.add_argument("--fit-tokens", type=int, default=16384, help="fit window of every plan")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward pass")
    parser.add_argument("--hidden-size", type=int, default=4096, help="token and expert size the times are estimated at")
    parser.add_argument("--methods", default="routelens,eplb,greedy,kahypar-load",
                        help="placement methods to re-place with, comma-separated (kahypar-load needs mtkahypar)")
    parser.add_argument("--budget", type=float, default=8.0, help="routelens optimizer seconds per re-fit (all layers)")
    parser.add_argument("--starts", default=None,
                        help="routelens optimizer starts, comma-separated (default: routelens place's, kahypar,coact,lpt "
                        "with mtkahypar); the optimizer runs without kicks and with --objective layer")
    parser.add_argument("--max-fit-tokens", type=int, default=8192,
                        help="tokens of the window the optimizer and Mt-KaHyPar fit on (a seeded subsample)")
    parser.add_argument("--save-schedules", action="store_true", help="also write each result into RUN/schedules/")
    parser.add_argument("--quick", action="store_true",
                        help="the drifting stream only, short (4 × ~8k tokens), 8 GPUs, periods 2048 and 8192")
    parser.add_argument("--json", default=None, help="write all numbers as JSON")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.starts = tuple(s.strip() for s in args.starts.split(",") if s.strip()) if args.starts else None
    segment_chars = SEGMENT_CHARS
    streams = ["code", "drift"]
    if args.quick:
        segment_chars, streams = QUICK_SEGMENT_CHARS, ["drift"]
        args.gpus, args.every, args.fit_tokens, args.batch_tokens = [8], [2048, 8192], 8192, 2048
        args.budget, args.starts = 2.0, args.starts or ("coact", "lpt")
    args.max_tokens = {"code": args.code_tokens}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; mtkahypar {'yes' if mtkahypar_available() else 'no'}; load average {_load()}",
          flush=True)
    print(f"fits: routelens starts {','.join(args.starts) if args.starts else 'default (kahypar,coact,lpt)'}, objective "
          f"layer, no kicks, {args.budget:g} s per re-fit; every method on a {args.max_fit_tokens:,}-token sample of the "
          f"{args.fit_tokens:,}-token window", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-schedule-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in streams:
            if name == "code":
                trace = Trace.open(args.code_run) if args.code_run else capture(work / "code", None, args.code_tokens)
            else:
                if args.drift_run:
                    trace = Trace.open(args.drift_run)
                else:
                    segments = drift_text(work / "drift.txt", segment_chars)
                    print("drift stream: " + ", ".join(f"{kind} {chars:,} chars" for kind, chars in segments))
                    trace = capture(work / ("drift-quick" if args.quick else "drift"), work / "drift.txt", None)
            rows.extend(bench_stream(name, trace, args.gpus, args, save=args.save_schedules))
    met = [r for r in rows if r["goal_met"]]
    print(f"\ngoal (c): routelens' best schedule >= 15% below EPLB's best in {len(met)}/{len(rows)} rows "
          f"(load average {_load()})")
    if args.json:
        from routelens.io import atomic_write_json

        atomic_write_json(args.json, {"argv": sys.argv[1:], "cpu_count": os.cpu_count(), "load_average_end": _load(),
                                      "python": platform.python_version(), "starts": args.starts, "budget_s": args.budget,
                                      "max_fit_tokens": args.max_fit_tokens, "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
