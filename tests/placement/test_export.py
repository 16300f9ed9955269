"""The export registry: each format written by its engine module, the file name checked, vLLM refused.

The engines' loaders themselves are reproduced and run on these files in tests/engines/test_plan_files.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from routelens.engines.plan_files import PlanTarget, load_plan_file
from routelens.errors import PlanError
from routelens.placement.export import EXPORT_FORMATS, export_plan, layer_index
from routelens.plan import Plan

LAYERS = ["model.layers.1.mlp.gate", "model.layers.3.mlp.gate"]


def _plan():
    tables = {LAYERS[0]: np.array([[0, 5, 1], [2, 0, 3], [4, 5, 0]]),   # experts 0 and 5 replicated
              LAYERS[1]: np.array([[5, 4, 3], [2, 1, 0], [0, 1, 2]])}
    return Plan(tables, num_experts=6, meta={"model": {"num_layers": 4}})


def test_layer_index_reads_the_decoder_layer():
    assert layer_index("model.layers.12.mlp.gate") == 12
    assert layer_index("transformer.h.3.moe.router") == 3
    with pytest.raises(PlanError, match="layer index"):
        layer_index("router")


def test_sglang_export_defaults_to_the_models_layer_count_and_the_names_layer_indices(tmp_path):
    path = export_plan(_plan(), tmp_path / "loc.pt", "sglang")
    mapping = torch.load(path, weights_only=True)["physical_to_logical_map"]
    assert mapping.shape == (4, 9)
    assert mapping[1].tolist() == [0, 5, 1, 2, 0, 3, 4, 5, 0]
    assert mapping[3].tolist() == [5, 4, 3, 2, 1, 0, 0, 1, 2]
    assert mapping[0].tolist() == [p % 6 for p in range(9)]  # dense or absent layer: trivial
    back = load_plan_file(path, PlanTarget(tuple(LAYERS), (1, 3), 6, 4, num_gpus=3))
    assert all(np.array_equal(back.gpu_experts[l], _plan().gpu_experts[l]) for l in LAYERS)


def test_json_export_is_the_routelens_plan(tmp_path):
    path = export_plan(_plan(), tmp_path / "plan.json", "json")
    assert Plan.load(path).gpu_experts[LAYERS[1]].tolist() == _plan().gpu_experts[LAYERS[1]].tolist()


def test_every_format_names_what_loads_it_and_bad_requests_are_one_line_errors(tmp_path):
    assert set(EXPORT_FORMATS) == {"json", "sglang", "vllm-ascend", "vllm"}
    assert all(spec.loaded_by for spec in EXPORT_FORMATS.values())
    assert EXPORT_FORMATS["vllm"].write is None
    with pytest.raises(PlanError, match="loads no placement file"):
        export_plan(_plan(), tmp_path / "eplb.pt", "vllm")
    with pytest.raises(PlanError, match=r"\.pt or \.json"):
        export_plan(_plan(), tmp_path / "x.txt", "sglang")
    with pytest.raises(PlanError, match="unknown plan format"):
        export_plan(_plan(), tmp_path / "x.json", "trt")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
