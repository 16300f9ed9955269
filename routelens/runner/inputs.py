"""Set-up of a bench: the trace, plans and sizes (checked before any process starts), then each rank's inputs.

:func:`prepare` opens the trace and the plans and works out the sizes; ``routelens bench`` calls it
before launching ``torchrun`` so a bad input is one line, and every rank calls it again.
:func:`rank_inputs` then builds what one rank replays: every plan's routes (host side, all tokens),
this rank's slice of them on its device, its expert weights, its tokens and the shortcut MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, PlanError
from ..io import read_json
from ..layer_selection import select_layers
from ..engines.plan_files import PlanTarget, load_plan_file
from ..plan import Plan
from ..trace import Trace
from .config import BenchConfig
from .routing import CONTIGUOUS, LayerRoute, contiguous_plan, plan_routes, rank_token_range, tiled_token_index


@dataclass
class BenchSetup:
    """Everything a bench needs that can be checked before any process starts.

    Attributes:
        trace: the replayed trace. layers: router paths of the replayed MoE layers.
        plans: plan label (``contiguous`` or its file) -> plan, the first the baseline.
        num_gpus: ranks. hidden_size, intermediate_size, shortcut_intermediate: replay sizes.
        num_tokens: tokens replayed over all ranks. token_index: ``[num_tokens]`` their trace rows.
        model_hidden_size: the model's own hidden size (None if the trace does not record it).
    """

    trace: Trace
    layers: list[str]
    plans: dict[str, Plan]
    num_gpus: int
    hidden_size: int
    intermediate_size: int
    shortcut_intermediate: int
    num_tokens: int
    token_index: np.ndarray = field(repr=False)
    model_hidden_size: int | None = None

    @property
    def tokens_per_rank(self) -> int:
        """Tokens per rank, as the report and its file name give them (the last rank may hold fewer)."""
        return self.num_tokens // self.num_gpus


def _config_int(config: dict, key: str) -> int | None:
    value = config.get(key)
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def load_plans(config: BenchConfig, trace: Trace, num_gpus: int) -> dict[str, Plan]:
    """The plans of ``config.plans`` (``contiguous`` or plan files), checked against the trace and ``num_gpus``."""
    plans: dict[str, Plan] = {}
    for spec in config.plans:
        if spec in plans:
            raise InputError(f"plan '{spec}' is listed twice")
        if spec == CONTIGUOUS:
            plan = contiguous_plan(trace.layers, trace.num_experts, num_gpus)
        else:
            if not Path(spec).is_file():
                raise PlanError(f"plan file not found: {spec} (or use 'contiguous')")
            plan = load_plan_file(spec, PlanTarget.for_trace(trace, num_gpus=num_gpus))
        plan.check_fits(trace.layers, trace.num_experts)
        if plan.num_gpus != num_gpus:
            raise PlanError(f"plan {spec} is for {plan.num_gpus} GPUs, the bench runs on {num_gpus}")
        plans[spec] = plan
    return plans


def prepare(config: BenchConfig, num_gpus: int) -> BenchSetup:
    """Open the trace and plans, check they fit ``num_gpus`` ranks, and work out the replay sizes.

    Raises:
        RoutelensError: a missing or empty trace, a layer not in it, a plan for another GPU or
            expert count, a checkpoint whose hidden size differs from ``--hidden-size`` (one line).
    """
    if num_gpus < 1:
        raise InputError(f"need at least one rank, got {num_gpus}")
    trace = Trace.open(config.run)
    trace.require_tokens("bench")
    if trace.num_tokens == 0:
        raise InputError(f"trace {config.run} holds no tokens")
    layers = [trace.layers[j] for j in select_layers(config.layers, trace.layers)]
    plans = load_plans(config, trace, num_gpus)

    model_config = trace.config
    model_hidden = _config_int(model_config, "hidden_size")
    if config.model:
        ckpt_config = read_json(Path(config.model) / "config.json", what="checkpoint config")
        text = ckpt_config.get("text_config", ckpt_config)
        model_hidden = int(text.get("hidden_size", model_hidden or 0)) or model_hidden
        if config.hidden_size and config.hidden_size != model_hidden:
            raise InputError(f"--hidden-size {config.hidden_size} differs from the checkpoint's {model_hidden}")
    hidden = config.hidden_size or model_hidden
    if not hidden:
        raise InputError(f"trace {config.run} does not record the model's hidden size: pass --hidden-size")
    scale = hidden / model_hidden if model_hidden else 1.0
    moe_inter = _config_int(model_config, "moe_intermediate_size")
    intermediate = config.intermediate_size or (max(1, round(moe_inter * scale)) if moe_inter else (3 * hidden) // 8)
    dense_inter = _config_int(model_config, "intermediate_size")
    shortcut = config.shortcut_intermediate or (max(1, round(dense_inter * scale)) if dense_inter
                                                else trace.top_k * intermediate)
    for name, value in (("hidden size", hidden), ("intermediate size", intermediate),
                        ("shortcut intermediate size", shortcut)):
        if value <= 0:
            raise InputError(f"{name} must be positive, got {value}")
    if config.tokens_per_rank is not None:
        token_index = tiled_token_index(trace.num_tokens, config.tokens_per_rank * num_gpus)
    else:
        if trace.num_tokens < num_gpus:
            raise InputError(f"trace has {trace.num_tokens} tokens, fewer than the {num_gpus} ranks")
        token_index = np.arange(trace.num_tokens, dtype=np.int64)
    return BenchSetup(trace, layers, plans, num_gpus, hidden, intermediate, shortcut, int(token_index.size),
                      token_index, model_hidden)


# --------------------------------------------------------------------------- one rank's inputs
def torch_dtype(name: str | None, device):
    """``--dtype`` as a torch dtype; None: bfloat16 on GPU, float32 on CPU."""
    import torch

    if name:
        return getattr(torch, name)
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@dataclass
class RankInputs:
    """What one rank replays.

    Attributes:
        dtype: torch dtype of tokens and experts.
        tokens: ``[n, H]`` this rank's hidden states.
        routes: plan label -> every layer's :class:`~routelens.runner.routing.LayerRoute` (all tokens, host).
        local: plan label -> every layer's :class:`~routelens.runner.layer.LocalRoute` (this rank's, device).
        banks: one :class:`~routelens.runner.experts.ExpertBank` per layer (every expert any plan puts here).
        shortcut: ``(gate_up [2I, H], down [H, I])`` of the dense MLP for ``--overlap``, else None.
        plain_rows: plan label -> per layer, rows per ordered rank pair of the plain even All-to-All.
    """

    dtype: Any
    tokens: Any
    routes: dict[str, list[LayerRoute]]
    local: dict[str, list]
    banks: list
    shortcut: tuple | None
    plain_rows: dict[str, list[int]]


def build_banks(setup: BenchSetup, rank: int, model: str | None, seed: int, device, dtype) -> list:
    """One expert bank per replayed layer for this rank: every expert it serves under any plan.

    Random weights are drawn once per expert and shared by all layers (timing does not depend on
    the values, and memory stays one bank); ``model`` (a checkpoint folder) gives each layer its own experts.
    """
    from .experts import load_expert_bank, random_expert_bank

    E = setup.trace.num_experts
    held = [sorted({int(e) for plan in setup.plans.values() for e in plan.gpu_experts[layer][rank]})
            for layer in setup.layers]
    if model:
        return [load_expert_bank(model, layer, E, experts=ex, dtype=dtype, device=device)
                for layer, ex in zip(setup.layers, held)]
    union = sorted(set().union(*map(set, held)))
    bank = random_expert_bank(E, setup.hidden_size, setup.intermediate_size, experts=union, seed=seed,
                              dtype=dtype, device=device)
    return [bank] * len(setup.layers)


def local_routes(routes: list[LayerRoute], start: int, end: int, device) -> list:
    """This rank's slice ``[start, end)`` of every layer's route, as device tensors."""
    import torch

    from .layer import LocalRoute

    return [LocalRoute(torch.from_numpy(r.topk_ids[start:end]).to(device),
                       torch.from_numpy(np.ascontiguousarray(r.topk_weights[start:end])).to(device),
                       torch.from_numpy(r.dest_gpu[start:end]).to(device)) for r in routes]


def random_tokens(num_tokens: int, hidden_size: int, seed: int, rank: int, dtype, device):
    """``[n, H]`` N(0, 1) hidden states (the trace records routing, not activations)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 7919 + rank + 1)
    return torch.randn(num_tokens, hidden_size, generator=gen, device=device).to(dtype)


def shortcut_weights(hidden_size: int, intermediate_size: int, seed: int, dtype, device) -> tuple:
    """``(gate_up [2I, H], down [H, I])`` of a random dense SwiGLU MLP (N(0, 1/fan_in)), the same on every rank."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 12345)
    I, H = intermediate_size, hidden_size
    return ((torch.randn(2 * I, H, generator=gen, device=device) * H ** -0.5).to(dtype),
            (torch.randn(H, I, generator=gen, device=device) * I ** -0.5).to(dtype))


def plain_rows(predicted: np.ndarray, world: int) -> int:
    """Rows per ordered rank pair so a plain even All-to-All moves the dispatch's total copies."""
    if world < 2:
        return 0
    return int(round(float(np.asarray(predicted).sum()) / (world * (world - 1))))


def rank_inputs(setup: BenchSetup, config: BenchConfig, rank: int, world: int, device) -> RankInputs:
    """Routes, weights and tokens of rank ``rank`` of ``world`` (on ``device``)."""
    dtype = torch_dtype(config.dtype, device)
    routes = {label: plan_routes(setup.trace, plan, setup.layers, setup.token_index)
              for label, plan in setup.plans.items()}
    start, end = rank_token_range(setup.num_tokens, world, rank)
    return RankInputs(
        dtype=dtype,
        tokens=random_tokens(end - start, setup.hidden_size, config.seed, rank, dtype, device),
        routes=routes,
        local={label: local_routes(r, start, end, device) for label, r in routes.items()},
        banks=build_banks(setup, rank, config.model, config.seed, device, dtype),
        shortcut=(shortcut_weights(setup.hidden_size, setup.shortcut_intermediate, config.seed, dtype, device)
                  if config.overlap else None),
        plain_rows={label: [plain_rows(r.predicted, world) for r in rs] for label, rs in routes.items()},
    )
