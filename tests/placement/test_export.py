"""SGLang and vLLM exports: written, read back, validated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routelens.errors import PlanError
from routelens.placement.export import (export_plan, layer_index, load_sglang, load_vllm, sglang_physical_to_logical,
                                        vllm_eplb_state)
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


def test_sglang_map_has_one_row_per_decoder_layer_and_trivial_rows_elsewhere():
    mapping = sglang_physical_to_logical(_plan())
    assert mapping.shape == (4, 9)
    assert mapping[1].tolist() == [0, 5, 1, 2, 0, 3, 4, 5, 0]
    assert mapping[0].tolist() == [p % 6 for p in range(9)]  # dense or absent layer: trivial


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_sglang_round_trip(tmp_path, suffix):
    path = export_plan(_plan(), tmp_path / f"loc{suffix}", "sglang")
    if suffix == ".pt":
        data = torch.load(path, weights_only=True)
        assert set(data) == {"physical_to_logical_map"} and data["physical_to_logical_map"].dtype == torch.int64
    back = load_sglang(path, LAYERS, num_experts=6, num_gpus=3)
    for layer in LAYERS:
        assert np.array_equal(back.gpu_experts[layer], _plan().gpu_experts[layer])


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_vllm_round_trip_and_consistent_tensors(tmp_path, suffix):
    state = vllm_eplb_state(_plan())
    assert state["physical_to_logical_map"].shape == (2, 9)
    assert state["logical_to_physical_map"].shape == (2, 6, 4)  # R + 1 = 4
    assert state["logical_replica_count"][0].tolist() == [3, 1, 1, 1, 1, 2]
    assert state["logical_to_physical_map"][0, 0].tolist() == [0, 4, 8, -1]
    path = export_plan(_plan(), tmp_path / f"eplb{suffix}", "vllm")
    back = load_vllm(path, LAYERS, num_experts=6, num_gpus=3)
    assert np.array_equal(back.gpu_experts[LAYERS[1]], _plan().gpu_experts[LAYERS[1]])


def test_bad_exports_are_refused_with_one_line_errors(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"physical_to_logical_map": [[0, 1, 2, 3, 4, 4, 0, 1, 2]] * 4}))
    with pytest.raises(PlanError, match="placed on no GPU"):  # expert 5 missing
        load_sglang(path, LAYERS, num_experts=6, num_gpus=3)
    with pytest.raises(PlanError, match="cannot be split"):
        load_sglang(path, LAYERS, num_experts=6, num_gpus=4)
    path.write_text(json.dumps({"something": 1}))
    with pytest.raises(PlanError, match="no 'physical_to_logical_map'"):
        load_sglang(path, LAYERS, num_experts=6, num_gpus=3)
    state = vllm_eplb_state(_plan())
    state["logical_replica_count"][0, 0] = 1
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "bad.pt")
    with pytest.raises(PlanError, match="logical_replica_count disagrees"):
        load_vllm(tmp_path / "bad.pt", LAYERS, num_experts=6, num_gpus=3)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(PlanError, match="not a readable torch file"):
        load_sglang(tmp_path / "junk.pt", LAYERS, num_experts=6, num_gpus=3)
    with pytest.raises(PlanError, match=r"\.pt or \.json"):
        export_plan(_plan(), tmp_path / "x.txt", "sglang")


class _Payload:  # pickled objects other than tensors must never be loaded
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"physical_to_logical_map": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(PlanError, match="not a readable torch file"):
        load_sglang(tmp_path / "evil.pt", LAYERS, num_experts=6, num_gpus=3)
