"""The ``reroute-eval`` study as one library call: load, calibrate, fit, sweep, score, write the trade-off curve.

:func:`run_tradeoff` takes a :class:`TradeoffConfig` (what ``routelens reroute-eval`` parses its
options into) and follows the protocol of :mod:`.evaluate`: pack the text into windows, fit the
plan and the C2R groups on the first ``fit_fraction`` of them, score the unmodified model and every
setting of the sweep on the rest, and write ``tradeoff.json`` (the rows and what they were measured
on; the dashboard's Re-routing page reads it) and the plan as ``plan.json`` into ``out``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..plan import Plan
from .registry import PolicyContext, PolicySweep



@dataclass(frozen=True)
class TradeoffConfig:
    """What to measure and where.

    Attributes:
        model: hub id or checkpoint folder (None: the bundled ``data/demo-moe``).
        sweep: the policies and settings to sweep.
        text, dataset: held-out text (a file, or a Hugging Face dataset ``NAME[:CONFIG[:SPLIT]]``); neither:
            the bundled ``data/corpus/heldout.txt``.
        seq_len: tokens per window; ``max_tokens``: tokens of text to read (whole windows).
        fit_fraction: the first fraction of the windows the plan and C2R groups are fitted on.
        batch_size: windows per forward pass (the batch that shares expert capacity).
        gpus: GPUs of the plan fitted on the fit windows, unless ``plan`` names a plan file.
        dtype, device, trust_remote_code: how the model is loaded (:func:`~routelens.capture.load.load_model`).
        out: folder for ``tradeoff.json`` and ``plan.json`` (None: ``runs/reroute-eval-<model>``).
        progress: show progress bars.
    """

    model: str | None = None
    sweep: PolicySweep = field(default_factory=PolicySweep)
    text: str | None = None
    dataset: str | None = None
    seq_len: int = 256
    max_tokens: int = 65536
    fit_fraction: float = 0.25
    batch_size: int = 8
    gpus: int = 8
    plan: str | None = None
    dtype: str | None = None
    device: str | None = None
    trust_remote_code: bool = False
    out: str | None = None
    progress: bool = True


@dataclass
class TradeoffResult:
    """What :func:`run_tradeoff` measured and wrote.

    Attributes:
        rows: result rows, the baseline (``none``) first (:func:`~routelens.reroute.evaluate.evaluate_policies`).
        tradeoff: the content of ``tradeoff.json`` (the rows and what they were measured on).
        plan: the placement the GPU policies and metrics used.
        out: the folder holding ``tradeoff.json`` and ``plan.json``.
        elapsed_s: wall time of the whole study.
    """

    rows: list[dict[str, Any]]
    tradeoff: dict[str, Any]
    plan: Plan
    out: Path
    elapsed_s: float


def run_tradeoff(config: TradeoffConfig) -> TradeoffResult:
    """Measure every setting of ``config.sweep`` inside the model and write the trade-off curve.

    Raises:
        InputError: ``fit_fraction`` outside (0, 1) (checked before the model loads), an
            encoder-decoder model, too little text, a plan or setting that does not fit the model.
        RoutelensError: the model or text cannot be loaded.
    """
    import torch

    from ..capture.adapters import find_router_sites
    from ..capture.engine import config_summary
    from ..capture.load import demo_model_path, load_model, model_reference
    from ..capture.text import pack_windows
    from ..formats import TRADEOFF
    from .evaluate import calibration_routing, evaluate_policies, split_windows
    from .fitting import fit_plan
    from .policy import FitData, fit_sweep

    if not 0.0 < config.fit_fraction < 1.0:
        raise InputError(f"--fit-fraction must lie strictly between 0 and 1, got {config.fit_fraction}")
    given_plan = Plan.load(config.plan) if config.plan else None  # a bad plan fails before the model loads
    model_name = config.model or str(demo_model_path())
    started = time.perf_counter()
    model, tokenizer = load_model(model_name, dtype=config.dtype, device=config.device,
                                  trust_remote_code=config.trust_remote_code)
    if getattr(model.config, "is_encoder_decoder", False):
        raise InputError(f"reroute-eval scores causal language models; {model_name} is an encoder-decoder model")
    routing = find_router_sites(model)
    sites = routing.sites
    num_experts = max(site.num_experts for site in sites)
    top_k = sites[0].top_k
    source = _heldout_source(config.text, config.dataset)
    windows = pack_windows(source, tokenizer, seq_len=config.seq_len, max_tokens=config.max_tokens)
    calib, heldout = split_windows(windows.token_ids, config.fit_fraction)
    calibration = calibration_routing(model, sites, calib, batch_size=config.batch_size, progress=config.progress)
    if given_plan is not None:
        plan = given_plan
        plan.check_fits([s.name for s in sites], num_experts, what="model")
    else:
        plan = fit_plan(calibration, num_experts, config.gpus, config=config_summary(model.config))
    context = PolicyContext(num_experts, top_k, plan.num_gpus, plan.slots_per_gpu)
    policies = fit_sweep(config.sweep, context, FitData(plan=plan, calibration=calibration, num_experts=num_experts))
    with torch.inference_mode():
        rows = evaluate_policies(model, sites, heldout, policies, plan=plan, batch_size=config.batch_size,
                                 progress=config.progress)
    elapsed = time.perf_counter() - started
    out = Path(config.out) if config.out else Path("runs") / f"reroute-eval-{_folder_label(model_name)}"
    tradeoff = {
        "model": model_reference(model_name),
        "family": routing.family,
        "num_experts": num_experts,
        "top_k": top_k,
        "layers": [s.name for s in sites],
        "text": source.describe(),
        "seq_len": config.seq_len,
        "calibration_windows": int(calib.shape[0]),
        "evaluation_windows": int(heldout.shape[0]),
        "batch_size": config.batch_size,
        "plan": {"method": plan.method, "num_gpus": plan.num_gpus, "file": "plan.json"},
        "wall_s": round(elapsed, 1),
        "rows": rows,
    }
    if not (config.plan and (out / "plan.json").resolve() == Path(config.plan).resolve()):
        plan.save(out / "plan.json")  # never rewrite the plan file it was given
    TRADEOFF.write(out / TRADEOFF.file, tradeoff)
    return TradeoffResult(rows, {**TRADEOFF.header(), **tradeoff}, plan, out, elapsed)


def _heldout_source(text: str | None, dataset: str | None):
    """The text to score: ``text`` or ``dataset`` when given, else the bundled held-out corpus."""
    from ..capture.load import bundled_data_dir
    from ..capture.text import file_source, resolve_source

    if text is not None or dataset is not None:
        return resolve_source(text, dataset)
    heldout = bundled_data_dir() / "corpus" / "heldout.txt"
    return file_source(heldout, kind="bundled") if heldout.is_file() else resolve_source(None, None)


def _folder_label(model_name: str) -> str:
    """The model's name as a folder name part (``data/demo-moe`` -> ``demo-moe``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name.rstrip("/")).name) or "model"
