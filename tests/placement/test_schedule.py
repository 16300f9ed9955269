"""Placement over time (routelens.placement.schedule): schedules, weight moves and their cost, on synthetic traces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.errors import InputError, TraceError
from routelens.placement.baselines import contiguous_table
from routelens.placement.cost import CostModel
from routelens.placement.evaluate import score_plan
from routelens.placement.place import PlaceSettings, place
from routelens.placement.schedule import (WINDOW_METRICS, ScheduleConfig, expert_bytes, move_seconds, relabel_gpus,
                                          replay_schedules, stream_index, weight_moves)
from routelens.placement.topology import Topology, make_topology
from routelens.placement.traffic import expert_holders
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace


@pytest.fixture(scope="module")
def drifting_trace(tmp_path_factory):
    """2 layers, 16 experts, top-2, 6144 tokens whose co-activation groups change every 2048 tokens."""
    parts = [synthetic_trace_arrays(num_tokens=2048, num_layers=2, num_experts=16, top_k=2, seed=s) for s in (1, 2, 3)]
    arrays = parts[0]
    topk = [np.concatenate([p["topk_ids"][j] for p in parts]) for j in range(2)]
    weights = [np.concatenate([p["topk_weights"][j] for p in parts]) for j in range(2)]
    tokens = 3 * 2048
    return write_trace(tmp_path_factory.mktemp("drift") / "run", arrays["header"],
                       np.concatenate([p["token_ids"] for p in parts]), (np.arange(tokens) // 128).astype(np.int32),
                       (np.arange(tokens) % 128).astype(np.int32), topk, weights)


def cost_for(trace, gpus=4, nodes=1) -> CostModel:
    return CostModel.for_model(trace.config, make_topology(num_gpus=gpus, num_nodes=nodes), hidden_size=1024)


def config(methods=("greedy",), every=(1024,), fit=1024, batch=512, **kwargs) -> ScheduleConfig:
    return ScheduleConfig(methods=methods, every_tokens=every, fit_tokens=fit, batch_tokens=batch, **kwargs)


def entry(result, method, every):
    return next(s for s in result["schedules"] if s["method"] == method and s["every_tokens"] == every)


# ---------------------------------------------------------------------------- schedules
def test_a_static_schedule_scores_what_plan_eval_scores_on_the_same_windows(drifting_trace):
    cost = cost_for(drifting_trace)
    result = replay_schedules(drifting_trace, cost, config(every=(1024,), batch=1024), progress=False)
    plan = place(drifting_trace, cost, PlaceSettings(method="greedy"), fit=(0, 1024), progress=False)
    static = entry(result, "greedy", None)
    assert [w["start"] for w in static["windows"]] == list(range(1024, 6144, 1024))
    for window in static["windows"]:
        expected = score_plan(plan, drifting_trace, np.arange(window["start"], window["end"]), cost)["mean"]
        for key in WINDOW_METRICS:
            assert window[key] == pytest.approx(expected[key]), key
            assert window["static"][key] == pytest.approx(expected[key]), key


def test_a_schedule_starts_with_the_static_plan_and_refits_on_the_window_before_each_period(drifting_trace):
    result = replay_schedules(drifting_trace, cost_for(drifting_trace), config(every=(1024, 2048)), progress=False)
    for every in (1024, 2048):
        windows = entry(result, "greedy", every)["windows"]
        assert [w["fit"] for w in windows] == [[s - 1024, s] for s in range(1024, 6144, every)]
        first = windows[0]
        assert {k: first[k] for k in WINDOW_METRICS} == pytest.approx(first["static"])
        assert first["move"]["copies"] == 0
    # the routing changes at 2048 and 4096: a plan re-fitted after the change beats the static one there
    refit = entry(result, "greedy", 1024)
    assert refit["mean"]["busiest_gpu_recv"] < refit["static"]["busiest_gpu_recv"]


def test_fits_on_worker_processes_give_the_same_schedules(drifting_trace):
    cost = cost_for(drifting_trace)
    sweep = config(methods=("routelens", "eplb"), every=(1024, 2048),
                   place=PlaceSettings(seeds=("coact", "lpt"), kicks=2))
    serial = replay_schedules(drifting_trace, cost, sweep, progress=False, workers=1)
    parallel = replay_schedules(drifting_trace, cost, sweep, progress=False, workers=2)
    for one, other in zip(serial["schedules"], parallel["schedules"], strict=True):
        assert (one["method"], one["every_tokens"]) == (other["method"], other["every_tokens"])
        assert [w["fit"] for w in one["windows"]] == [w["fit"] for w in other["windows"]]
        for a, b in zip(one["windows"], other["windows"], strict=True):
            assert {k: a[k] for k in WINDOW_METRICS} == {k: b[k] for k in WINDOW_METRICS}
            assert a["move"] == b["move"]
    assert serial["best"] == parallel["best"]


def test_a_plan_that_never_changes_moves_nothing_and_scores_as_the_static_plan(drifting_trace):
    result = replay_schedules(drifting_trace, cost_for(drifting_trace), config(methods=("contiguous",), every=(512, 1536)),
                              progress=False)
    static = entry(result, "contiguous", None)
    for every in (512, 1536):
        schedule = entry(result, "contiguous", every)
        assert schedule["moves"]["copies"] == 0 and schedule["moves"]["seconds"] == 0
        assert schedule["moves"]["replacements"] == len(schedule["windows"]) - 1 > 0
        assert schedule["mean"] == pytest.approx(static["mean"]) and schedule["gain_vs_static"] == pytest.approx(0)
    assert result["best"]["contiguous"]["every_tokens"] is None


def test_moves_are_charged_in_full_and_spread_over_the_windows_layer_executions(drifting_trace):
    cost = cost_for(drifting_trace)
    result = replay_schedules(drifting_trace, cost, config(every=(1024,), relabel=False), progress=False)
    schedule = entry(result, "greedy", 1024)
    assert schedule["moves"]["copies"] > 0
    layers = len(drifting_trace.layers)
    for window in schedule["windows"]:
        move = window["move"]
        assert move["bytes"] == move["copies"] * result["expert_bytes"]
        assert window["move_us_per_layer"] * window["batches"] * layers == pytest.approx(move["seconds"] * 1e6)
        assert window["layer_us_with_moves"] == pytest.approx(window["layer_us"] + window["move_us_per_layer"])
    total = sum(w["move"]["seconds"] for w in schedule["windows"])
    executions = sum(w["batches"] for w in schedule["windows"]) * layers
    assert schedule["mean"]["move_us_per_layer"] == pytest.approx(total * 1e6 / executions)
    assert schedule["gain_vs_static"] == pytest.approx(1 - schedule["mean"]["layer_us_with_moves"] /
                                                       schedule["static"]["layer_us"])


def test_relabelling_moves_fewer_experts_and_scores_the_same_placements(drifting_trace):
    cost = cost_for(drifting_trace)
    plain = entry(replay_schedules(drifting_trace, cost, config(every=(1024,), relabel=False), progress=False),
                  "greedy", 1024)
    kept = entry(replay_schedules(drifting_trace, cost, config(every=(1024,)), progress=False), "greedy", 1024)
    assert kept["moves"]["copies"] < plain["moves"]["copies"]


def test_the_best_period_per_method_is_the_lowest_layer_time_with_moves(drifting_trace):
    result = replay_schedules(drifting_trace, cost_for(drifting_trace),
                              config(methods=("greedy", "eplb"), every=(512, 2048)), progress=False)
    for method, best in result["best"].items():
        candidates = [s for s in result["schedules"] if s["method"] == method]
        assert len(candidates) == 3  # static, 512, 2048
        assert best["layer_us_with_moves"] == min(s["mean"]["layer_us_with_moves"] for s in candidates)


def test_break_even_is_the_period_whose_amortised_moves_equal_the_saving():
    from routelens.placement.schedule import break_even_tokens

    def window(start, layer_us, move_s):
        return {"start": start, "end": start + 2048, "batches": 2, "layer_us": layer_us,
                "static": {"layer_us": 100.0}, "move": {"seconds": move_s}}

    # 4 layers, passes of 1024 tokens; re-fitted plans save 10 µs per layer execution and move for 1 ms:
    # 1 ms / (4 × 10 µs) = 25 passes of 1024 tokens
    windows = [window(0, 100.0, 0.0), window(2048, 90.0, 1e-3), window(4096, 90.0, 1e-3)]
    assert break_even_tokens(windows, 4) == pytest.approx(25 * 1024)
    assert break_even_tokens([window(0, 100.0, 0.0), window(2048, 101.0, 1e-3)], 4) is None  # no saving
    assert break_even_tokens(windows[:1], 4) is None  # never re-placed


# ---------------------------------------------------------------------------- moves
def _tables(draw, num_experts, num_gpus, redundant):
    """Two random [G, S] placements of E experts + R replicas (no GPU holding an expert twice)."""
    base = contiguous_table(num_experts, num_gpus, redundant).ravel()
    out = []
    for _ in range(2):
        while True:
            perm = np.asarray(draw(st.permutations(base.tolist()))).reshape(num_gpus, -1)
            if all(len(set(row)) == len(row) for row in perm.tolist()):
                out.append(perm)
                break
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data(), nodes=st.sampled_from([1, 2]), per_node=st.sampled_from([2, 4]), replicas=st.booleans())
def test_moved_copies_are_the_new_expert_gpu_pairs_sent_by_former_holders(data, nodes, per_node, replicas):
    topology = Topology(num_nodes=nodes, gpus_per_node=per_node)
    num_gpus, num_experts = nodes * per_node, 2 * nodes * per_node
    old, new = _tables(data.draw, num_experts, num_gpus, num_gpus if replicas else 0)
    moves = weight_moves(old, new, num_experts, topology)
    before, after = expert_holders(old, num_experts), expert_holders(new, num_experts)
    assert moves.copies == int((after & ~before).sum()) == int(moves.matrix.sum())
    assert moves.experts_changed == int((before != after).any(axis=1).sum())
    assert moves.matrix.sum(axis=0).tolist() == (after & ~before).sum(axis=0).tolist()  # each receiver gets its new ones
    assert np.trace(moves.matrix) == 0
    if not replicas:  # an expert that changes GPU lands on exactly one new GPU
        assert moves.copies == moves.experts_changed
    per_copy = 1e6
    assert move_seconds(moves.matrix, topology, per_copy) >= (moves.copies > 0) * per_copy / (topology.intra_gbps * 1e9)
    # the same placement with its slots shuffled inside each GPU moves nothing
    shuffled = np.stack([np.asarray(data.draw(st.permutations(row.tolist()))) for row in new])
    assert weight_moves(new, shuffled, num_experts, topology).copies == 0
    # relabelling keeps nodes whole, permutes rows only, and never moves more
    relabelled = relabel_gpus(old, new, num_experts, topology)
    assert sorted(map(tuple, relabelled.tolist())) == sorted(map(tuple, new.tolist()))
    node_sets = lambda table: sorted(tuple(sorted(table[n * per_node:(n + 1) * per_node].ravel().tolist()))
                                     for n in range(nodes))
    assert node_sets(relabelled) == node_sets(new)
    assert weight_moves(old, relabelled, num_experts, topology).copies <= moves.copies
    # the same plan with its GPUs renumbered within the topology's symmetry (nodes reversed, GPUs reversed): no moves
    assert weight_moves(new, relabel_gpus(new, new[::-1], num_experts, topology), num_experts, topology).copies == 0


def test_a_copy_takes_latency_plus_bytes_over_its_link_and_prefers_a_sender_in_the_node():
    topology = Topology(num_nodes=2, gpus_per_node=2)
    old = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    new = np.array([[0, 1], [2, 3], [4, 5], [7, 0]])  # GPU 3 gains expert 0, held by GPU 0 only (other node)
    moves = weight_moves(old, new, 8, topology)
    assert moves.copies == 1 and moves.matrix[0, 3] == 1
    assert move_seconds(moves.matrix, topology, 50e6) == pytest.approx(5e-6 + 50e6 / 50e9)  # infiniband
    new = np.array([[0, 1], [2, 0], [4, 5], [6, 7]])  # GPU 1 (node 0) gains expert 0: NVLink
    assert move_seconds(weight_moves(old, new, 8, topology).matrix, topology, 45e6) == pytest.approx(2e-6 + 0.1e-3)
    # two holders: the one in the receiver's node sends
    old = np.array([[0, 1], [2, 3], [0, 5], [6, 7]])
    new = np.array([[0, 1], [2, 3], [0, 5], [6, 0]])
    assert weight_moves(old, new, 8, topology).matrix[2, 3] == 1


def test_an_expert_copy_is_three_projections_of_hidden_by_moe_intermediate():
    config = {"hidden_size": 128, "moe_intermediate_size": 56}
    cost = CostModel.for_model(config, make_topology(num_gpus=8))
    assert expert_bytes(cost, 2) == 3 * 128 * 56 * 2
    scaled = CostModel.for_model(config, make_topology(num_gpus=8), hidden_size=4096)
    assert expert_bytes(scaled, 1) == 3 * 4096 * (56 * 32)  # a what-if hidden size scales the expert with it
    with pytest.raises(InputError, match="expert size"):
        expert_bytes(CostModel(make_topology(num_gpus=8), token_bytes=256.0))


# ---------------------------------------------------------------------------- the stream and bad settings
def test_a_phase_is_replayed_alone_in_trace_order(tmp_path):
    from routelens.lock import run_lock
    from routelens.trace import Trace, TraceWriter

    arrays = synthetic_trace_arrays(num_tokens=1024, num_layers=2, num_experts=8, top_k=2)
    header = {**arrays["header"], "phases": ["prefill", "decode"]}
    phase = (np.arange(1024) % 3 == 0).astype(np.int8)  # every third token is a decode token
    with run_lock(tmp_path / "run", "test"):
        writer = TraceWriter(tmp_path / "run", header)
        writer.write_shard(arrays["token_ids"], arrays["seq_ids"], arrays["positions"], arrays["topk_ids"],
                           arrays["topk_weights"], phase=phase)
        writer.close()
    trace = Trace.open(tmp_path / "run")
    assert stream_index(trace, "decode").tolist() == np.flatnonzero(phase == 1).tolist()
    assert stream_index(trace, None, max_tokens=10).tolist() == list(range(10))
    with pytest.raises(InputError, match="has phases prefill, decode"):
        stream_index(trace, "verify")


def test_bad_settings_are_one_line_input_errors(drifting_trace):
    cost = cost_for(drifting_trace)
    cases = [
        (config(every=(1000,), batch=512), "not a whole number of forward passes"),
        (config(methods=("nope",)), "unknown placement method"),
        (config(methods=()), "at least one placement method"),
        (config(fit=6000), "need --fit-tokens"),
        (config(weight_bytes=float("nan")), "--weight-bytes"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            replay_schedules(drifting_trace, cost, bad, progress=False)
    with pytest.raises(InputError, match="records no phases"):
        replay_schedules(drifting_trace, cost, config(phase="decode"), progress=False)


def test_a_counts_only_run_cannot_be_replayed(tmp_path):
    from routelens.trace import write_counts_run

    arrays = synthetic_trace_arrays(num_tokens=64, num_layers=2, num_experts=8, top_k=2)
    counts = np.ones((3, 2, 8), dtype=np.int64)
    trace = write_counts_run(tmp_path / "counts", arrays["header"], counts)
    with pytest.raises(TraceError):
        replay_schedules(trace, cost_for(trace, gpus=2), config(), progress=False)


def test_docstring_examples_run():
    import doctest

    from routelens.placement import schedule

    assert doctest.testmod(schedule).failed == 0
