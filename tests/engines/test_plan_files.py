"""Plans in the engines' formats: accepted by each engine's loader (reproduced from its released source),
read back as plans wherever a plan is accepted, and refused in one line when they do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_loaders import EngineRefused, sglang_init_expert_location, vllm_ascend_expert_map
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.engines.plan_files import PlanTarget, load_plan_file
from routelens.engines.sglang_location import save_sglang_counts
from routelens.engines.vllm_ascend_map import vllm_ascend_expert_map as our_map
from routelens.errors import PlanError
from routelens.placement.baselines import random_table
from routelens.placement.export import export_plan
from routelens.plan import Plan

LAYERS = ["model.layers.1.mlp.gate", "model.layers.3.mlp.gate"]  # decoder layers 0 and 2 are dense
INDICES, DECODER_LAYERS, E = [1, 3], 4, 6


def _plan(num_gpus=3, redundant=3, seed=0):
    return Plan({name: random_table(E, num_gpus, redundant, seed=seed + j) for j, name in enumerate(LAYERS)},
                num_experts=E, meta={"model": {"num_layers": DECODER_LAYERS}})


def _target(num_gpus=None):
    return PlanTarget(tuple(LAYERS), tuple(INDICES), E, DECODER_LAYERS, num_gpus)


@settings(max_examples=20, deadline=None)
@given(num_gpus=st.sampled_from([1, 2, 3, 6]), extra=st.integers(0, 2), seed=st.integers(0, 1000),
       suffix=st.sampled_from([".pt", ".json"]))
def test_sglang_accepts_every_exported_map_and_it_reads_back_as_the_same_plan(tmp_path_factory, num_gpus, extra, seed,
                                                                             suffix):
    redundant = (-E) % num_gpus + extra * num_gpus
    if (E + redundant) // num_gpus > E:
        redundant = (-E) % num_gpus
    plan = _plan(num_gpus, redundant, seed)
    path = export_plan(plan, tmp_path_factory.mktemp("sg") / f"loc{suffix}", "sglang", layer_indices=INDICES)
    loaded = sglang_init_expert_location(str(path), DECODER_LAYERS, E, redundant, num_gpus)
    rows = loaded["physical_to_logical_map"].numpy()
    for name, index in zip(LAYERS, INDICES):
        assert rows[index].tolist() == plan.physical_to_logical(name).tolist()
        # the GPU SGLang puts slot p on (p // slots per rank) holds exactly the plan's experts
        for g in range(num_gpus):
            assert sorted(rows[index].reshape(num_gpus, -1)[g]) == sorted(plan.gpu_experts[name][g])
    back = load_plan_file(path, _target(num_gpus))
    assert all(np.array_equal(back.gpu_experts[l], plan.gpu_experts[l]) for l in LAYERS)


def test_sglang_map_holds_only_its_key_and_one_row_per_decoder_layer(tmp_path):
    path = export_plan(_plan(), tmp_path / "loc.pt", "sglang", layer_indices=INDICES)
    data = torch.load(path, weights_only=True)
    assert set(data) == {"physical_to_logical_map"} and data["physical_to_logical_map"].shape == (DECODER_LAYERS, 9)
    assert data["physical_to_logical_map"][0].tolist() == [p % E for p in range(9)]  # a dense row: trivial


def test_the_sglang_loader_reproduction_catches_what_sglang_would_refuse(tmp_path):
    good = export_plan(_plan(), tmp_path / "good.pt", "sglang", layer_indices=INDICES)
    with pytest.raises(AssertionError):  # 9 slots over EP 2
        sglang_init_expert_location(str(good), DECODER_LAYERS, E, 3, 2)
    with pytest.raises(EngineRefused, match="physical slots"):  # served with another redundancy
        sglang_init_expert_location(str(good), DECODER_LAYERS, E, 0, 3)
    with pytest.raises(EngineRefused, match="layers"):  # a model with more decoder layers
        sglang_init_expert_location(str(good), DECODER_LAYERS + 1, E, 3, 3)
    mapping = torch.load(good, weights_only=True)["physical_to_logical_map"]
    torch.save({"physical_to_logical_map": mapping, "ep_size": 3}, tmp_path / "extra.pt")
    with pytest.raises(TypeError):  # the dict is splatted into init_by_mapping
        sglang_init_expert_location(str(tmp_path / "extra.pt"), DECODER_LAYERS, E, 3, 3)
    with pytest.raises(PlanError, match="keyword arguments"):  # and routelens refuses it the same way
        load_plan_file(tmp_path / "extra.pt", _target(3))
    mapping = mapping.clone()
    mapping[1, :] = torch.arange(9) % 5  # expert 5 has no slot
    torch.save({"physical_to_logical_map": mapping}, tmp_path / "missing.pt")
    with pytest.raises(EngineRefused, match="no physical slot"):
        sglang_init_expert_location(str(tmp_path / "missing.pt"), DECODER_LAYERS, E, 3, 3)
    with pytest.raises(PlanError, match="placed on no GPU"):
        load_plan_file(tmp_path / "missing.pt", _target(3))


def test_sglang_logical_count_is_what_init_by_eplb_takes(tmp_path):
    counts = np.arange(2 * E).reshape(2, E)
    path = save_sglang_counts(counts, tmp_path / "counts.json", INDICES, DECODER_LAYERS)
    loaded = sglang_init_expert_location(str(path), DECODER_LAYERS, E, 3, 3)["logical_count"]
    assert loaded.shape == (1, DECODER_LAYERS, E)
    assert loaded[0, 3].tolist() == counts[1].tolist() and loaded[0, 0].sum() == 0
    with pytest.raises(PlanError, match="not a placement"):
        load_plan_file(path, _target(3))


def test_an_sglang_map_without_gpu_count_needs_gpus_unless_place_wrote_the_plan_next_to_it(tmp_path):
    plan = _plan()
    path = export_plan(plan, tmp_path / "prod.pt", "sglang", layer_indices=INDICES)
    with pytest.raises(PlanError, match="--gpus"):
        load_plan_file(path, _target())
    plan.save(tmp_path / "prod.plan.json")
    assert load_plan_file(path, _target()).num_gpus == 3
    other = _plan(seed=7)
    other.save(tmp_path / "prod.plan.json")
    with pytest.raises(PlanError, match="differently"):
        load_plan_file(path, _target())


@settings(max_examples=15, deadline=None)
@given(num_gpus=st.sampled_from([1, 2, 3, 6]), seed=st.integers(0, 1000))
def test_vllm_ascend_accepts_every_exported_map_and_it_reads_back(tmp_path_factory, num_gpus, seed):
    redundant = (-E) % num_gpus + (num_gpus * (seed % 2) if num_gpus > 1 else 0)
    plan = _plan(num_gpus, redundant, seed)
    path = export_plan(plan, tmp_path_factory.mktemp("va") / "map.json", "vllm-ascend")
    layers = vllm_ascend_expert_map(str(path), len(LAYERS), E, num_gpus)
    for built, name in zip(layers, LAYERS):
        assert built["n_redundant"] == redundant
        assert np.array_equal(built["placement"], plan.gpu_experts[name])
        # local slot s of device g holds the plan's expert: expert_map[e] = s
        for g, row in enumerate(plan.gpu_experts[name]):
            assert built["global_expert_map"][g][row].tolist() == list(range(len(row)))
    back = load_plan_file(path, _target())
    assert back.num_gpus == num_gpus and all(np.array_equal(back.gpu_experts[l], plan.gpu_experts[l]) for l in LAYERS)


def test_vllm_ascend_files_that_do_not_fit_are_refused(tmp_path):
    data = our_map(_plan())
    data["layer_list"][1]["device_list"][0]["device_expert"].append(0)  # ragged devices
    (tmp_path / "ragged.json").write_text(json.dumps(data))
    with pytest.raises(ValueError):
        vllm_ascend_expert_map(str(tmp_path / "ragged.json"), 2, E, 3)
    with pytest.raises(PlanError, match="same number"):
        load_plan_file(tmp_path / "ragged.json", _target())
    data = our_map(_plan())
    data["moe_layer_count"] = 1
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(EngineRefused):
        vllm_ascend_expert_map(str(tmp_path / "short.json"), 2, E, 3)
    with pytest.raises(PlanError, match="maps 1 MoE layers"):
        load_plan_file(tmp_path / "short.json", _target())
    with pytest.raises(PlanError, match=r"\.json"):
        export_plan(_plan(), tmp_path / "map.pt", "vllm-ascend")


def test_vllm_export_is_refused_because_vllm_loads_no_placement_file(tmp_path):
    with pytest.raises(PlanError, match="loads no placement file"):
        export_plan(_plan(), tmp_path / "x.pt", "vllm")
    assert not (tmp_path / "x.pt").exists()


def test_hostile_truncated_and_foreign_plan_files_get_one_line_errors(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"physical_to_logical_map": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(PlanError, match="not a readable torch file"):
        load_plan_file(tmp_path / "evil.pt", _target(3))
    good = export_plan(_plan(), tmp_path / "good.pt", "sglang", layer_indices=INDICES).read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(PlanError, match="not a readable torch file"):
        load_plan_file(tmp_path / "cut.pt", _target(3))
    (tmp_path / "foreign.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(PlanError, match="none of"):
        load_plan_file(tmp_path / "foreign.json", _target(3))
    export_plan(_plan(), tmp_path / "loc.json", "sglang", layer_indices=INDICES)
    with pytest.raises(PlanError, match="no GPU"):  # a model with another E: expert 6 has no slot
        load_plan_file(tmp_path / "loc.json", PlanTarget(tuple(LAYERS), tuple(INDICES), 7, DECODER_LAYERS, 3))
    with pytest.raises(PlanError, match="rows"):  # a model with another layer count
        load_plan_file(tmp_path / "loc.json", PlanTarget(tuple(LAYERS), tuple(INDICES), E, 6, 3))


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=300), cut=st.integers(1, 2000), suffix=st.sampled_from([".pt", ".json"]))
def test_any_bytes_or_any_cut_of_an_engine_file_is_a_plan_or_a_one_line_error(tmp_path_factory, blob, cut, suffix):
    folder = tmp_path_factory.mktemp("junk")
    raw = export_plan(_plan(), folder / f"good{suffix}", "sglang", layer_indices=INDICES).read_bytes()
    raw = raw.rstrip(b"\n")  # a JSON file cut only by its final newline is still whole
    for name, content in ((f"blob{suffix}", blob), (f"cut{suffix}", raw[: cut % len(raw)])):
        (folder / name).write_bytes(content)
        with pytest.raises(PlanError) as error:
            load_plan_file(folder / name, _target(3))
        assert "\n" not in str(error.value)
