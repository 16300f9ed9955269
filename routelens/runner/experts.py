"""Expert weights and the expert computation (SwiGLU experts as grouped GEMMs).

An :class:`ExpertBank` holds the experts one rank may run in one layer: ``gate_up [R, 2I, H]`` and
``down [R, H, I]`` (the transformers 5 fused layout, ``out = down(silu(gate) * up)``), plus
``row_of_expert [E]`` mapping a global expert id to its row (-1 where this rank holds none).
Weights are either read from a checkpoint's safetensors (only the rows needed) or drawn at random
with the model's shapes, deterministically per expert id, so replicas on different GPUs and the
single-process reference hold identical experts.

:func:`run_experts` is the fast path (``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``);
:func:`run_experts_loop` is the readable reference; tests prove them equal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass
class ExpertBank:
    """SwiGLU experts of one layer on one rank.

    Attributes:
        gate_up: ``[R, 2I, H]`` gate rows then up rows of each held expert.
        down: ``[R, H, I]``.
        row_of_expert: ``[E]`` long, row of each global expert id in this bank, -1 if absent.
    """

    gate_up: torch.Tensor
    down: torch.Tensor
    row_of_expert: torch.Tensor

    @property
    def num_rows(self) -> int:
        return int(self.gate_up.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.gate_up.shape[2])

    @property
    def intermediate_size(self) -> int:
        return int(self.down.shape[2])

    def to(self, device=None, dtype=None) -> "ExpertBank":
        return ExpertBank(self.gate_up.to(device=device, dtype=dtype), self.down.to(device=device, dtype=dtype),
                          self.row_of_expert.to(device=device))


def _expert_generator(seed: int, expert: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(expert) * 7919 + 17) % (2**63 - 1))
    return gen


def random_expert_bank(num_experts: int, hidden_size: int, intermediate_size: int, experts=None, seed: int = 0,
                       dtype: torch.dtype = torch.bfloat16, device="cpu") -> ExpertBank:
    """Random SwiGLU experts with the model's shapes, expert ``e`` always drawn from the same seed.

    Args:
        experts: global ids to hold (default: all ``num_experts``).
        seed: base seed; expert ``e``'s weights depend only on ``(seed, e, device type)``.

    Weights are N(0, 1/fan_in) so activations stay O(1) whatever the sizes.
    """
    device = torch.device(device)
    experts = list(range(num_experts)) if experts is None else [int(e) for e in experts]
    gate_up = torch.empty(len(experts), 2 * intermediate_size, hidden_size, dtype=dtype, device=device)
    down = torch.empty(len(experts), hidden_size, intermediate_size, dtype=dtype, device=device)
    for row, expert in enumerate(experts):
        gen = _expert_generator(seed, expert, device)
        gate_up[row] = (torch.randn(2 * intermediate_size, hidden_size, generator=gen, device=device)
                        * hidden_size ** -0.5).to(dtype)
        down[row] = (torch.randn(hidden_size, intermediate_size, generator=gen, device=device)
                     * intermediate_size ** -0.5).to(dtype)
    row_of_expert = torch.full((num_experts,), -1, dtype=torch.long)
    row_of_expert[torch.tensor(experts, dtype=torch.long)] = torch.arange(len(experts))
    return ExpertBank(gate_up, down, row_of_expert.to(device))


# --------------------------------------------------------------------------- checkpoints
# Per-expert key layouts, as checkpoints store them on disk (transformers 5 converts them to the fused
# layout on load and back on save): (gate, up, down) names under "<moe prefix>.experts.<e>.".
_PER_EXPERT_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


def _checkpoint_index(checkpoint: Path) -> dict[str, Path]:
    """tensor name → safetensors file of a local checkpoint folder (single file or sharded index)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh)["weight_map"]
        return {name: checkpoint / file for name, file in weight_map.items()}
    single = checkpoint / "model.safetensors"
    if not single.is_file():
        raise InputError(f"{checkpoint} holds no model.safetensors (or its index): cannot read expert weights")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as fh:
        return {name: single for name in fh.keys()}


def moe_prefix(router_path: str) -> str:
    """``model.layers.3.mlp`` for a router module path ``model.layers.3.mlp.gate`` (its parent module)."""
    return router_path.rsplit(".", 1)[0] if "." in router_path else router_path


def load_expert_bank(checkpoint, router_path: str, num_experts: int, experts=None,
                     dtype: torch.dtype = torch.bfloat16, device="cpu") -> ExpertBank:
    """Read the experts ``experts`` (default all) of the MoE block whose router is ``router_path``.

    Understands per-expert keys (``experts.{e}.gate_proj/up_proj/down_proj.weight``, Mixtral's
    ``w1/w3/w2``) and the fused layout (``experts.gate_up_proj [E, 2I, H]``, ``experts.down_proj``).

    Raises:
        InputError: the checkpoint lacks the layer's expert weights in a layout routelens knows.
    """
    from safetensors import safe_open

    checkpoint = Path(checkpoint)
    names = _checkpoint_index(checkpoint)
    experts = list(range(num_experts)) if experts is None else [int(e) for e in experts]
    prefix = moe_prefix(router_path)
    candidates = [k for k in names if k.startswith(prefix + ".") and ".experts." in k]
    if not candidates:
        raise InputError(f"checkpoint {checkpoint} has no expert weights under '{prefix}'")

    def read(name: str, rows=None) -> torch.Tensor:
        with safe_open(str(names[name]), framework="pt") as fh:
            if rows is None:
                return fh.get_tensor(name)
            sl = fh.get_slice(name)
            return torch.stack([sl[r] for r in rows])

    fused_gate_up = f"{prefix}.experts.gate_up_proj"
    if fused_gate_up in names:
        gate_up = read(fused_gate_up, experts)
        down = read(f"{prefix}.experts.down_proj", experts)
    else:
        gate_up_rows, down_rows = [], []
        layout = None
        for gate_name, up_name, down_name in _PER_EXPERT_NAMES:
            if f"{prefix}.experts.0.{gate_name}.weight" in names:
                layout = (gate_name, up_name, down_name)
                break
        if layout is None:
            example = re.sub(r"\.\d+\.", ".{e}.", candidates[0])
            raise InputError(f"checkpoint {checkpoint}: unknown expert weight layout (e.g. '{example}')")
        for e in experts:
            base = f"{prefix}.experts.{e}."
            try:
                gate_up_rows.append(torch.cat([read(base + layout[0] + ".weight"), read(base + layout[1] + ".weight")]))
                down_rows.append(read(base + layout[2] + ".weight"))
            except KeyError:
                raise InputError(f"checkpoint {checkpoint} lacks the weights of expert {e} in '{prefix}'") from None
        gate_up, down = torch.stack(gate_up_rows), torch.stack(down_rows)
    row_of_expert = torch.full((num_experts,), -1, dtype=torch.long)
    row_of_expert[torch.tensor(experts, dtype=torch.long)] = torch.arange(len(experts))
    return ExpertBank(gate_up.to(device=device, dtype=dtype), down.to(device=device, dtype=dtype),
                      row_of_expert.to(device))


# --------------------------------------------------------------------------- computation
def _grouped_mm_fn():
    fn = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    return fn


_GROUPED_MM_BROKEN: set[tuple[str, torch.dtype]] = set()


def run_experts(x: torch.Tensor, rows_count: torch.Tensor, bank: ExpertBank, kernel: str = "auto") -> torch.Tensor:
    """SwiGLU of token rows already sorted by bank row: ``[P, H] -> [P, H]``.

    Args:
        x: ``[P, H]`` inputs, rows of bank row 0 first, then row 1, ...
        rows_count: ``[R]`` how many rows of ``x`` each bank row takes (sums to P).
        kernel: ``grouped_mm`` (one grouped GEMM per projection), ``loop`` (one GEMM per expert) or
            ``auto`` (grouped when this torch/device has it, else loop).
    """
    fn = _grouped_mm_fn()
    key = (x.device.type, x.dtype)
    use_grouped = kernel == "grouped_mm" or (kernel == "auto" and fn is not None and key not in _GROUPED_MM_BROKEN)
    if use_grouped and fn is not None and x.shape[0] > 0:
        offs = torch.cumsum(rows_count, 0).to(torch.int32)
        try:
            h = fn(x, bank.gate_up.transpose(-2, -1), offs=offs)
            gate, up = h.chunk(2, dim=-1)
            return fn((F.silu(gate) * up).contiguous(), bank.down.transpose(-2, -1), offs=offs)
        except (RuntimeError, NotImplementedError):
            if kernel == "grouped_mm":
                raise
            _GROUPED_MM_BROKEN.add(key)  # e.g. an unsupported dtype/alignment: the loop computes the same
    return run_experts_loop(x, rows_count, bank)


def kernel_in_use(device, dtype, kernel: str = "auto") -> str:
    """Which path :func:`run_experts` takes for this device and dtype (after any fallback so far)."""
    if kernel == "loop" or _grouped_mm_fn() is None:
        return "loop"
    if kernel == "auto" and (torch.device(device).type, dtype) in _GROUPED_MM_BROKEN:
        return "loop (grouped_mm failed here)"
    return "grouped_mm"


def run_experts_loop(x: torch.Tensor, rows_count: torch.Tensor, bank: ExpertBank) -> torch.Tensor:
    """Reference for :func:`run_experts`: one plain GEMM pair per expert."""
    out = torch.empty(x.shape[0], bank.hidden_size, dtype=x.dtype, device=x.device)
    start = 0
    for row, count in enumerate(rows_count.tolist()):
        if count == 0:
            continue
        chunk = x[start:start + count]
        gate, up = F.linear(chunk, bank.gate_up[row]).chunk(2, dim=-1)
        out[start:start + count] = F.linear(F.silu(gate) * up, bank.down[row])
        start += count
    return out


def reference_moe(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, bank: ExpertBank) -> torch.Tensor:
    """Single-process MoE: ``out[t] = Σ_j w[t, j] · expert_{ids[t, j]}(x[t])`` (the thing EP must equal).

    Args:
        x: ``[T, H]``; topk_ids, topk_weights: ``[T, k]`` (id -1 = dropped slot); bank must hold
            every expert used.
    """
    out = torch.zeros(x.shape[0], bank.hidden_size, dtype=torch.float32, device=x.device)
    for expert in torch.unique(topk_ids).tolist():
        if expert < 0:  # a dropped slot contributes nothing
            continue
        row = int(bank.row_of_expert[expert])
        if row < 0:
            raise ValueError(f"reference needs expert {expert}, which the bank does not hold")
        tok, slot = (topk_ids == expert).nonzero(as_tuple=True)
        gate, up = F.linear(x[tok], bank.gate_up[row]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, bank.down[row])
        out.index_add_(0, tok, y.float() * topk_weights[tok, slot].float()[:, None])
    return out
