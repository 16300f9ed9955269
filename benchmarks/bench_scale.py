"""Real checkpoints at real scale: capture, placement and analysis through the real CLI, each against its goal.

Parts (``--parts``, default all):

* ``capture``: random-init safetensors checkpoints with the layer shapes of real configs
  (``--models``: Qwen3-30B-A3B with 23 of its 48 layers, about 30 GB; OLMoE-1B-7B whole; or the
  bundled trained demo checkpoint) are written to disk in the hub's layout (one tensor per expert), straight from random
  tensors (no model is instantiated; on the GPU when there is one). Each is captured by
  ``routelens capture`` in a subprocess whose peak anonymous memory (``RssAnon`` in
  ``/proc/<pid>/status``; ``VmRSS`` would count the memory-mapped checkpoint's page cache) is
  sampled every 20 ms; then a second subprocess loads the checkpoint the same way and runs only the
  plain forward over the same windows and batches. Ratio = (seconds the capture waited for its
  text after loading + its capture loop, shard writing included) / plain forward seconds.
* ``place``: a synthetic 1M-token trace of 48 layers × 128 experts, top-8 (Qwen3-30B-A3B's
  shape), placed on 8 GPUs by ``routelens place`` (the optimizer, every core).
* ``dsv3``: the DeepSeek-V3 shape: 256 experts, top-8, 8 groups, 58 MoE layers, placed on 64 GPUs
  (8 nodes × 8) with redundant slots and EPLB's expert groups.
* ``analyze``: ``routelens analyze`` of a synthetic trace of 10M tokens × 48 layers × 128 experts;
  peak memory is the most the whole process tree (the command and its workers) held at once.

Synthetic traces come from :func:`routelens.synthetic.write_scale_trace` (written shard by shard
on every core; not timed). Goals (16 cores, one H200 for the capture): peak anonymous host memory
<= 4 GB for a single-GPU capture of a 30 GB checkpoint; whole capture <= 1.10x the plain forward;
placing 48 layers x 128 experts x 8 GPUs from 1M tokens <= 90 s; the DeepSeek-V3 shape <= 3 min;
analysing 10M tokens x 48 layers <= 2 min with <= 4 GB peak memory. Each goal is printed with the
measured value, the ratio to the goal and met/missed; runs at other sizes say so.

    python benchmarks/bench_scale.py --cpu-sized --json scale-cpu.json          # 2 cores, no GPU (minutes)
    python benchmarks/bench_scale.py --device cuda --json scale-gpu.json        # the goals' sizes (one GPU, 16 cores)

Without mtkahypar (an optional extra) the optimizer starts from its other seeds, and the
benchmark says so; ``--skip-kahypar`` does the same on purpose. Imports neither streamlit nor plotly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_capture import SHAPES  # noqa: E402  (the layer shapes of the real configs, one place)

GB = 1e9
GOALS = {  # name: (limit, unit, what it is measured on)
    "capture_anon_gb": (4.0, "GB", "a single-GPU capture of a 30 GB checkpoint"),
    "capture_ratio": (1.10, "x", "a GPU capture of 1M tokens through a real-shaped checkpoint"),
    "place_s": (90.0, "s", "48 layers x 128 experts x 8 GPUs from 1M tokens, 16 cores"),
    "dsv3_place_s": (180.0, "s", "DeepSeek-V3 shape (58 x 256, top-8, 64 GPUs), 16 cores"),
    "analyze_s": (120.0, "s", "10M tokens x 48 layers x 128 experts, 16 cores"),
    "analyze_memory_gb": (4.0, "GB", "10M tokens x 48 layers x 128 experts"),
}
FULL_LAYERS = {"qwen3-30b-a3b": 48, "olmoe-1b-7b": 16}


# ---------------------------------------------------------------------------------------- measuring
class MemoryPeak(threading.Thread):
    """Samples a process (and its descendants) every ``period`` seconds until it exits.

    Attributes:
        anon: peak ``RssAnon`` of the process itself (bytes).
        tree_anon, tree_rss: peak sums of ``RssAnon`` / ``VmRSS`` over the process and its descendants.
    """

    def __init__(self, pid: int, period: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.anon = self.tree_anon = self.tree_rss = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            tree = [self.pid] + _descendants(self.pid)
            sizes = [_status_kb(pid, ("RssAnon:", "VmRSS:")) for pid in tree]
            self.anon = max(self.anon, sizes[0][0] * 1024)
            self.tree_anon = max(self.tree_anon, sum(s[0] for s in sizes) * 1024)
            self.tree_rss = max(self.tree_rss, sum(s[1] for s in sizes) * 1024)
            time.sleep(self.period)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _status_kb(pid: int, keys: tuple[str, ...]) -> list[int]:
    values = [0] * len(keys)
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                for i, key in enumerate(keys):
                    if line.startswith(key):
                        values[i] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return values


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_measured(command: list[str], label: str) -> dict[str, Any]:
    """Run ``command`` (a list) with the repository on PYTHONPATH; wall time and memory peaks."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
               PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = MemoryPeak(proc.pid)
    peak.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: {label} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "peak_anon_bytes": peak.anon, "tree_anon_bytes": peak.tree_anon,
            "tree_rss_bytes": peak.tree_rss, "stdout": out}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "routelens.cli", *args]


# ---------------------------------------------------------------------------------------- checkpoints
def shaped_config(shape: str, layers: int):
    """The transformers config of ``shape`` (real layer shapes) with ``layers`` decoder layers."""
    from transformers import OlmoeConfig, Qwen3MoeConfig

    fields = dict(SHAPES[shape], num_hidden_layers=layers, max_position_embeddings=4096, tie_word_embeddings=False)
    return (Qwen3MoeConfig if shape.startswith("qwen3") else OlmoeConfig)(**fields)


def hub_tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor names and shapes in the hub's layout (one tensor per expert), from a meta model.

    transformers keeps each layer's experts fused (``experts.gate_up_proj`` ``[E, 2I, H]``,
    ``experts.down_proj`` ``[E, H, I]``) and converts the hub's per-expert tensors when loading;
    writing the hub's layout makes the capture load a checkpoint the way it loads a downloaded one.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in model.state_dict().items():
        prefix = name.rsplit(".", 1)[0]
        if name.endswith("experts.gate_up_proj"):
            experts, double, hidden = tensor.shape
            for e in range(experts):
                shapes[f"{prefix}.{e}.gate_proj.weight"] = (double // 2, hidden)
                shapes[f"{prefix}.{e}.up_proj.weight"] = (double // 2, hidden)
        elif name.endswith("experts.down_proj"):
            experts, hidden, inter = tensor.shape
            for e in range(experts):
                shapes[f"{prefix}.{e}.down_proj.weight"] = (hidden, inter)
        else:
            shapes[name] = tuple(tensor.shape)
    return shapes


def write_checkpoint(folder: Path, shape: str, layers: int, file_bytes: float = 2 * GB) -> dict[str, Any]:
    """A random-init bf16 checkpoint of ``shape`` in ``folder`` (config, safetensors files + index, tokenizer).

    Tensors are drawn on the GPU when there is one (normal, std 0.02; norms 1) and written file by
    file, so the host holds one file's tensors at a time.
    """
    import torch
    from safetensors.torch import save_file

    started = time.perf_counter()
    folder.mkdir(parents=True)
    config = shaped_config(shape, layers)
    config.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the demo's tokenizer feeds every shape
        shutil.copy(REPO / "data" / "demo-moe" / name, folder / name)
    shapes = hub_tensor_shapes(config)
    groups, current, size = [], [], 0
    for name, dims in shapes.items():
        nbytes = 2 * int(torch.tensor(dims).prod()) if dims else 2
        if current and size + nbytes > file_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    groups.append(current)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            if "norm" in name:
                tensors[name] = torch.ones(shapes[name], dtype=torch.bfloat16)
            else:
                values = torch.randn(shapes[name], generator=generator, device=device, dtype=torch.float32)
                tensors[name] = values.mul_(0.02).to(torch.bfloat16).cpu()
            weight_map[name] = file
            total += tensors[name].numel() * 2
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return {"bytes": total, "files": len(groups), "build_s": time.perf_counter() - started,
            "params": total // 2}


def corpus_file(folder: Path, min_chars: int) -> Path:
    """The bundled corpus repeated until it has ``min_chars`` characters (text for long captures)."""
    text = (REPO / "data" / "corpus" / "train.txt").read_text(encoding="utf-8")
    path = folder / "corpus.txt"
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(max(1, -(-min_chars // len(text)))):
            fh.write(text)
    return path


# ---------------------------------------------------------------------------------------- parts
def parse_models(spec: str, default_tokens: int) -> list[tuple[str, int, int]]:
    """``qwen3-30b-a3b:23,olmoe-1b-7b:16:500000,demo-moe`` → ``[(shape, layers, tokens), ...]``.

    A shape of :data:`SHAPES` with its number of layers (and optionally its own token count), or
    ``demo-moe``: the bundled trained checkpoint as it is.
    """
    models = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, *rest = item.split(":")
        if name != "demo-moe" and (name not in SHAPES or not rest):
            raise SystemExit(f"bench_scale: --models entry '{item}' is not SHAPE:LAYERS[:TOKENS] with SHAPE one of "
                             f"{', '.join(sorted(SHAPES))}, or demo-moe[::TOKENS]")
        layers = int(rest[0]) if rest and rest[0] else 4
        models.append((name, layers, int(rest[1]) if len(rest) > 1 else default_tokens))
    return models


def part_capture(args, work: Path, goals: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = parse_models(args.models, args.capture_tokens)
    text = corpus_file(work, max(tokens for _, _, tokens in models) * 6)  # ~4 characters a token (demo tokenizer)
    for shape, layers, tokens in models:
        if shape == "demo-moe":
            folder, built = REPO / "data" / "demo-moe", None
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            print(f"  demo-moe (the bundled trained checkpoint): {size / 1e6:.1f} MB", flush=True)
        else:
            folder = work / f"{shape}-{layers}"
            built = write_checkpoint(folder, shape, layers)
            size = built["bytes"]
            print(f"  {shape} x {layers} layers: {built['params'] / 1e9:.2f}B parameters, {size / GB:.1f} GB in "
                  f"{built['files']} files, written in {built['build_s']:.1f} s (not timed)", flush=True)
        run = work / f"run-{shape}"
        common = ["--device", args.device, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
        captured = run_measured(cli("capture", str(folder), "--out", str(run), "--text", str(text), "--max-tokens",
                                    str(tokens), "--seq-len", str(args.seq_len), "--no-progress", *common),
                                f"capture of {shape}")
        plain = run_measured([sys.executable, __file__, "plain-forward", str(folder), str(run), *common],
                             f"plain forward of {shape}")
        forward = json.loads(plain["stdout"].strip().splitlines()[-1])
        manifest = json.loads((run / "manifest.json").read_text())
        stats = manifest["stats"]
        capture_s = float(stats.get("text_wait_s", 0.0)) + float(stats["wall_s"])
        row = {"layers": layers, "full_model": layers == FULL_LAYERS.get(shape, layers), "checkpoint_gb": size / GB,
               "tokens": manifest["num_tokens"], "shards": len(manifest["shards"]),
               "capture_process_s": captured["wall_s"], "load_s": stats.get("load_s"),
               "text_wait_s": stats.get("text_wait_s"), "capture_loop_s": stats["wall_s"], "capture_s": capture_s,
               "tokens_per_s": manifest["num_tokens"] / capture_s, "plain_process_s": plain["wall_s"],
               "plain_load_s": forward["load_s"], "plain_forward_s": forward["forward_s"],
               "ratio": capture_s / forward["forward_s"], "peak_anon_gb": captured["peak_anon_bytes"] / GB,
               "plain_peak_anon_gb": plain["peak_anon_bytes"] / GB, "device": forward["device"]}
        out[f"{shape}:{layers}"] = row
        print(f"  capture {row['tokens']:,} tokens: {capture_s:.2f} s ({row['tokens_per_s']:,.0f} tokens/s; waited "
              f"{row['text_wait_s']:.2f} s for text after a {row['load_s']:.1f} s load) vs plain forward "
              f"{row['plain_forward_s']:.2f} s -> {row['ratio']:.3f}x; peak RssAnon {row['peak_anon_gb']:.2f} GB "
              f"(plain forward process: {row['plain_peak_anon_gb']:.2f} GB)", flush=True)
        on_gpu = row["device"].startswith("cuda")
        goals.append(goal("capture_ratio", row["ratio"], f"{shape} x {layers} layers, {row['tokens']:,} tokens, "
                          f"{row['device']}", at_size=on_gpu and row["tokens"] > 1_000_000 - args.seq_len  # whole windows
                          and shape != "demo-moe"))
        if shape != "demo-moe":
            goals.append(goal("capture_anon_gb", row["peak_anon_gb"], f"{row['checkpoint_gb']:.1f} GB checkpoint, "
                              f"{row['device']}", at_size=row["checkpoint_gb"] >= 29.5 and on_gpu))
        if not args.keep:
            if built is not None:
                shutil.rmtree(folder)
            shutil.rmtree(run)
    return out


def plain_forward_main(argv: list[str]) -> int:
    """``bench_scale.py plain-forward CKPT RUN --device D --dtype T --batch-size B``: load, then time the forward only."""
    parser = argparse.ArgumentParser(prog="bench_scale.py plain-forward")
    parser.add_argument("checkpoint")
    parser.add_argument("run")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from routelens.capture.engine import model_forward, model_input_device
    from routelens.capture.load import load_weights
    from routelens.trace import Trace

    started = time.perf_counter()
    model = load_weights(args.checkpoint, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - started
    trace = Trace.open(args.run)
    windows = trace.token_ids.reshape(trace.manifest["num_sequences"], -1)  # the capture's windows, in order
    forward, device = model_forward(model), model_input_device(model)
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, windows.shape[0], args.batch_size):
            forward(torch.from_numpy(windows[first:first + args.batch_size].astype(np.int64)).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(json.dumps({"load_s": load_s, "forward_s": time.perf_counter() - started, "device": str(device)}))
    return 0


def part_place(args, work: Path, goals: list[dict[str, Any]], shape_name: str) -> dict[str, Any]:
    from routelens.plan import Plan
    from routelens.synthetic import ScaleShape, write_scale_trace

    ds = shape_name == "dsv3"
    shape = ScaleShape(args.ds_tokens if ds else args.place_tokens, args.ds_layers if ds else args.place_layers,
                       256 if ds else 128, 8, num_groups=8, hidden_size=7168 if ds else 2048)
    trace_dir = work / f"trace-{shape_name}"
    started = time.perf_counter()
    write_scale_trace(trace_dir, shape, workers=args.workers)
    made_s = time.perf_counter() - started
    cluster = (["--nodes", str(args.ds_gpus // 8), "--gpus-per-node", "8", "--redundant", str(args.ds_redundant),
                "--expert-groups", "8"] if ds else ["--gpus", str(args.place_gpus)])
    seeds = ["--starts", "coact,lpt"] if args.skip_kahypar else []
    plan = work / f"plan-{shape_name}.json"
    placed = run_measured(cli("place", str(trace_dir), "--out", str(plan), "--workers", str(args.workers), "--no-progress",
                              *cluster, *seeds), f"place ({shape_name})")
    meta = Plan.load(plan).meta
    row = {"tokens": shape.num_tokens, "layers": shape.num_layers, "experts": shape.num_experts,
           "gpus": args.ds_gpus if ds else args.place_gpus, "redundant": args.ds_redundant if ds else 0,
           "trace_s": made_s, "place_s": placed["wall_s"],
           "seconds_per_layer": [info["seconds"] for info in meta.get("optimizer", {}).get("layers", {}).values()],
           "seeds": meta.get("optimizer", {}).get("seeds"),
           "busiest_gpu_recv_fit": meta["metrics"]["mean"]["busiest_gpu_recv"],
           "peak_memory_gb": placed["tree_anon_bytes"] / GB}
    per_layer = row["seconds_per_layer"]
    print(f"  {shape_name}: {shape.num_tokens:,} tokens x {shape.num_layers} layers x {shape.num_experts} experts on "
          f"{row['gpus']} GPUs (R={row['redundant']}, seeds {','.join(row['seeds'] or [])}): {row['place_s']:.1f} s "
          f"(optimizer {min(per_layer):.1f}-{max(per_layer):.1f} s per layer; trace written in {made_s:.1f} s, "
          f"not timed); peak memory {row['peak_memory_gb']:.2f} GB", flush=True)
    if args.plan_eval and not ds:
        scored = run_measured(cli("plan-eval", str(trace_dir), str(plan), "--workers", str(args.workers), "--no-progress"),
                              "plan-eval")
        row["plan_eval_s"] = scored["wall_s"]
        print(f"  plan-eval (every baseline fitted and scored on the held-out half): {scored['wall_s']:.1f} s", flush=True)
    at_size = (shape.num_tokens >= 1_000_000 and shape.num_layers == (58 if ds else 48)
               and os.cpu_count() >= 16 and not args.skip_kahypar)
    goals.append(goal("dsv3_place_s" if ds else "place_s", row["place_s"],
                      f"{shape.num_tokens:,} tokens x {shape.num_layers} layers, {os.cpu_count()} cores", at_size=at_size))
    if not args.keep:
        shutil.rmtree(trace_dir)
    return row


def part_analyze(args, work: Path, goals: list[dict[str, Any]]) -> dict[str, Any]:
    from routelens.synthetic import ScaleShape, write_scale_trace

    shape = ScaleShape(args.analyze_tokens, args.analyze_layers, 128, 8, num_groups=8)
    trace_dir = work / "trace-analyze"
    started = time.perf_counter()
    trace = write_scale_trace(trace_dir, shape, workers=args.workers)
    made_s = time.perf_counter() - started
    trace_gb = sum((trace_dir / s["file"]).stat().st_size for s in trace.shards) / GB
    analysed = run_measured(cli("analyze", str(trace_dir), "--workers", str(args.workers), "--no-progress", "--force"),
                            "analyze")
    row = {"tokens": shape.num_tokens, "layers": shape.num_layers, "trace_gb": trace_gb, "trace_s": made_s,
           "analyze_s": analysed["wall_s"], "peak_memory_gb": analysed["tree_anon_bytes"] / GB,
           "peak_rss_gb": analysed["tree_rss_bytes"] / GB}
    print(f"  analyze {shape.num_tokens:,} tokens x {shape.num_layers} layers ({trace_gb:.1f} GB trace, written in "
          f"{made_s:.1f} s, not timed): {row['analyze_s']:.1f} s; peak memory of the process tree "
          f"{row['peak_memory_gb']:.2f} GB anonymous ({row['peak_rss_gb']:.2f} GB resident, shared libraries counted "
          f"once per process)", flush=True)
    at_size = shape.num_tokens >= 10_000_000 and shape.num_layers >= 48 and os.cpu_count() >= 16
    what = f"{shape.num_tokens:,} tokens x {shape.num_layers} layers, {os.cpu_count()} cores"
    goals.append(goal("analyze_s", row["analyze_s"], what, at_size=at_size))
    goals.append(goal("analyze_memory_gb", row["peak_memory_gb"], what, at_size=at_size))
    if not args.keep:
        shutil.rmtree(trace_dir)
    return row


def goal(name: str, value: float, measured_on: str, at_size: bool) -> dict[str, Any]:
    limit, unit, on = GOALS[name]
    return {"goal": name, "value": value, "limit": limit, "unit": unit, "ratio": value / limit,
            "met": value <= limit, "measured_on": measured_on, "goal_is_for": on, "at_goal_size": at_size}


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plain-forward"]:
        return plain_forward_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="capture,place,dsv3,analyze",
                        help="comma-separated: capture, place, dsv3, analyze (default: all)")
    parser.add_argument("--cpu-sized", action="store_true",
                        help="sizes that run in minutes on a 2-core machine without a GPU (overrides the size options)")
    parser.add_argument("--device", default=None, help="capture device (default: cuda when present, else cpu)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--models", default="qwen3-30b-a3b:23,olmoe-1b-7b:16",
                        help="checkpoints to capture, SHAPE:LAYERS[:TOKENS] comma-separated, SHAPE one of "
                        f"{', '.join(sorted(SHAPES))}, or demo-moe (the bundled trained checkpoint); default "
                        "qwen3-30b-a3b:23 (about 30 GB of its 48 layers) and olmoe-1b-7b:16 (all of it)")
    parser.add_argument("--capture-tokens", type=int, default=1_000_000, help="tokens per capture (default 1M)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    parser.add_argument("--place-tokens", type=int, default=1 << 20)
    parser.add_argument("--place-layers", type=int, default=48)
    parser.add_argument("--place-gpus", type=int, default=8)
    parser.add_argument("--plan-eval", action="store_true", help="also time plan-eval on the place part's trace")
    parser.add_argument("--ds-tokens", type=int, default=1 << 20)
    parser.add_argument("--ds-layers", type=int, default=58)
    parser.add_argument("--ds-gpus", type=int, default=64, help="GPUs for the DeepSeek-V3 shape, 8 per node (default 64)")
    parser.add_argument("--ds-redundant", type=int, default=64,
                        help="redundant slots (default 64: (256 + R) must fill 64 GPUs evenly, so 32 cannot; "
                        "DeepSeek's own 32 need --ds-gpus 32 or 144)")
    parser.add_argument("--analyze-tokens", type=int, default=10_000_000)
    parser.add_argument("--analyze-layers", type=int, default=48)
    parser.add_argument("--workers", type=int, default=0, help="processes per command (default 0: every core)")
    parser.add_argument("--skip-kahypar", action="store_true", help="optimizer without its Mt-KaHyPar seed")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one; needs room for the "
                        "checkpoints, about 2 GB per Qwen3 layer, and the 10M-token trace, about 15 GB)")
    parser.add_argument("--keep", action="store_true", help="keep checkpoints, traces and plans")
    parser.add_argument("--json", metavar="FILE", default=None, help="write every number and goal here")
    args = parser.parse_args(argv)
    import torch

    from routelens.placement.hypergraph import mtkahypar_available

    if args.cpu_sized:
        args.models, args.capture_tokens, args.batch_size = "demo-moe::65536,olmoe-1b-7b:1:4096", 65536, 8
        args.place_tokens, args.place_layers = 1 << 17, 4
        args.ds_tokens, args.ds_layers = 1 << 17, 4
        args.analyze_tokens, args.analyze_layers = 1 << 20, 8
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cpu_sized and args.device == "cpu":
        args.dtype = "float32"  # bf16 matmuls are slow on most CPUs
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"capture", "place", "dsv3", "analyze"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}")
    if not mtkahypar_available() and not args.skip_kahypar and {"place", "dsv3"} & set(parts):
        print("bench_scale: mtkahypar is not installed: the optimizer starts from coact,lpt only "
              "(pip install 'routelens[partition]' for its Mt-KaHyPar seed)")
        args.skip_kahypar = True
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "torch": torch.__version__, "python": platform.python_version(),
               "load_average_start": os.getloadavg()[0]}
    print(f"bench_scale: {machine['cores']} cores ({machine['cpu']}), GPU {machine['gpu'] or 'none'}, torch "
          f"{machine['torch']}; load average {machine['load_average_start']:.1f} at the start", flush=True)
    goals: list[dict[str, Any]] = []
    results: dict[str, Any] = {"benchmark": "scale", "machine": machine, "args": vars(args), "parts": {}}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="routelens-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for part in parts:
            print(f"[{part}]", flush=True)
            started = time.perf_counter()
            if part == "capture":
                results["parts"][part] = part_capture(args, work, goals)
            elif part == "analyze":
                results["parts"][part] = part_analyze(args, work, goals)
            else:
                results["parts"][part] = part_place(args, work, goals, part)
            print(f"  ({time.perf_counter() - started:.0f} s for this part)", flush=True)
            results["goals"] = goals
            if args.json:  # after every part: a run stopped by a time limit keeps what it measured
                Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    machine["load_average_end"] = os.getloadavg()[0]
    results["goals"] = goals
    print()
    print(f"{'goal':<19} {'measured':>10} {'limit':>8} {'ratio':>6}  {'':<6}  measured on")
    for g in goals:
        size = "" if g["at_goal_size"] else f"  [not the goal's size: {g['goal_is_for']}]"
        print(f"{g['goal']:<19} {g['value']:>9.2f}{g['unit']:<1} {g['limit']:>7.2f}{g['unit']:<1} {g['ratio']:>6.2f}  "
              f"{'met' if g['met'] else 'MISSED':<6}  {g['measured_on']}{size}")
    print(f"load average at the end: {machine['load_average_end']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
