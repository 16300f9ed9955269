"""Plans in the formats serving engines load: one registered :class:`ExportFormat` per format.

Both engines number *physical experts* ``p = g·S + s`` (slot ``s`` of EP rank ``g``, ``S`` slots per
rank); a routelens plan's ``gpu_experts[layer]`` is that numbering reshaped to ``[G, S]``. The
formats (each written and read in :mod:`routelens.engines`, checked against the engine's own loader
in ``tests/engines``):

* ``json`` — the routelens plan (:meth:`routelens.plan.Plan.save`).
* ``sglang`` — ``{"physical_to_logical_map": [num_hidden_layers, G·S]}`` as ``.pt`` or ``.json`` for
  SGLang's ``--init-expert-location FILE`` with ``--ep-size G --ep-num-redundant-experts R``
  (:mod:`routelens.engines.sglang_location`).
* ``vllm-ascend`` — vllm-ascend's ``eplb_config.expert_map_path`` JSON
  (:mod:`routelens.engines.vllm_ascend_map`).
* ``vllm`` — none: upstream vLLM (0.34.0) loads no placement file; asking for it raises a one-line
  error that says what to use instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engines.layout import layer_index
from ..engines.sglang_location import save_sglang_location
from ..engines.vllm_ascend_map import UPSTREAM_NOTE, save_vllm_ascend
from ..errors import PlanError
from ..plan import Plan

__all__ = ["ExportFormat", "EXPORT_FORMATS", "FORMATS", "export_plan", "layer_index"]


@dataclass(frozen=True)
class ExportTarget:
    """The model a plan is written for: layer order, decoder indices and decoder layer count."""

    layers: list[str]
    layer_indices: list[int]
    num_decoder_layers: int


@dataclass(frozen=True)
class ExportFormat:
    """A plan file format: its name, the engine flag that loads it, and its writer (None: no engine loads one)."""

    name: str
    loaded_by: str
    write: Callable[[Plan, Path, ExportTarget], Path] | None
    suffixes: tuple[str, ...] = (".json",)  # empty: any file name


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f for f in (
        ExportFormat("json", "routelens plan-eval / bench / reroute --plan", lambda plan, path, target: plan.save(path),
                     ()),
        ExportFormat("sglang", "sglang --init-expert-location FILE --ep-size G --ep-num-redundant-experts R",
                     lambda plan, path, target: save_sglang_location(plan, path, target.layer_indices,
                                                                     target.num_decoder_layers),
                     (".pt", ".json")),
        ExportFormat("vllm-ascend", "vllm-ascend --additional-config '{\"eplb_config\": {\"expert_map_path\": FILE}}'",
                     lambda plan, path, target: save_vllm_ascend(plan, path, target.layers)),
        ExportFormat("vllm", "nothing: " + UPSTREAM_NOTE, None),
    )
}
FORMATS = tuple(EXPORT_FORMATS)


def export_plan(plan: Plan, path: str | os.PathLike, fmt: str = "json", num_layers: int | None = None,
                layer_indices: list[int] | None = None) -> Path:
    """Write ``plan`` as ``fmt`` (a key of :data:`EXPORT_FORMATS`).

    Args:
        num_layers: decoder layers of the model (default: ``plan.meta["model"]["num_layers"]``, else
            the last MoE layer's index + 1).
        layer_indices: decoder index of each of ``plan.layers`` (default: read from the layer names).

    Raises:
        PlanError: an unknown format, one no engine loads (``vllm``), or a file name it cannot have.
    """
    spec = EXPORT_FORMATS.get(fmt)
    if spec is None:
        raise PlanError(f"unknown plan format '{fmt}' (known: {', '.join(FORMATS)})")
    if spec.write is None:
        raise PlanError(UPSTREAM_NOTE)
    path = Path(path)
    if spec.suffixes and path.suffix not in spec.suffixes:
        raise PlanError(f"--format {fmt} writes a {' or '.join(spec.suffixes)} file, got '{path.name}'")
    indices = list(layer_indices) if layer_indices is not None else [layer_index(name) for name in plan.layers]
    if num_layers is None:
        num_layers = int((plan.meta.get("model") or {}).get("num_layers") or max(indices) + 1)
    return spec.write(plan, path, ExportTarget(list(plan.layers), indices, int(num_layers)))
