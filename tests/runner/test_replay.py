"""The distributed replay on real torch.distributed (gloo, 2-4 CPU processes under torchrun).

Checks that (a) every layer's output equals the single-process reference, (b) the copies each rank
really handed to all_to_all_single equal the cost model's dispatch matrix, computed here by a plain
loop, and (c) the report, calibration and CLI launcher work end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from routelens.formats import CALIBRATION
from routelens.placement.traffic import dispatch_matrix, token_source_gpu
from routelens.plan import Plan
from routelens.runner.routing import contiguous_plan
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace

from .test_routing import brute_force_dispatch

HIDDEN, INTER = 32, 16


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner") / "run"
    a = synthetic_trace_arrays(num_tokens=1536, num_layers=2, num_experts=16, top_k=4, seed=5)
    write_trace(path, a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"], a["topk_weights"],
                shard_tokens=700)
    return path


def _permuted_plan(trace, num_gpus, path, seed):
    rng = np.random.default_rng(seed)
    plan = Plan({layer: rng.permutation(trace.num_experts).reshape(num_gpus, -1) for layer in trace.layers},
                trace.num_experts, method="permuted")
    plan.save(path)
    return plan


def _torchrun(nproc, *args, timeout=90):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCCL_NVLS_ENABLE": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "routelens.runner.bench", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _expected(trace, plan, index, num_gpus):
    """[L, G, G] brute-force dispatch copies for the replayed rows ``index``."""
    return np.stack([
        brute_force_dispatch(trace.topk_ids(layer).astype(np.int64)[index], plan.expert_to_gpu(layer), num_gpus)
        for layer in trace.layers
    ])


def _assert_traffic_matches(entry, expected, bytes_per_token):
    sent = expected.sum(2).sum(0)  # [G] summed over layers
    recv = expected.sum(1).sum(0)
    assert entry["dispatch_tokens_sent"] == sent.tolist()
    assert entry["dispatch_tokens_recv"] == recv.tolist()
    assert entry["dispatch_bytes_sent"] == (sent * bytes_per_token).tolist()
    for j, layer_entry in enumerate(entry["per_layer"]):
        assert layer_entry["dispatch_tokens_sent"] == expected[j].sum(1).tolist()
        assert layer_entry["dispatch_tokens_recv"] == expected[j].sum(0).tolist()
    assert entry["bytes_match_prediction"] is True


def test_two_ranks_replay_equals_reference_and_traffic_equals_cost_model(trace_dir, tmp_path):
    trace = Trace.open(trace_dir)
    permuted = _permuted_plan(trace, 2, tmp_path / "perm.json", seed=1)
    out = tmp_path / "report.json"
    out_dir = tmp_path / "bench"
    out_dir.mkdir()
    calibration = {"backend": "gloo", "num_gpus": 2, "latency_us": 123.0, "bandwidth_GBps": 0.5}
    CALIBRATION.write(out_dir / CALIBRATION.file_name(calibration), calibration)
    proc = _torchrun(2, trace_dir, "contiguous", tmp_path / "perm.json", "--backend", "gloo",
                     "--hidden-size", HIDDEN, "--intermediate-size", INTER, "--repeats", 2, "--warmup", 1,
                     "--check", "--json", out, "--out", out_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["check"]["passed"] and report["check"]["tolerance"] == 1e-4
    for plan_check in report["check"]["plans"].values():
        assert len(plan_check["relative_error_per_layer"]) == 2
        assert plan_check["max_relative_error"] < 1e-5
    index = np.arange(trace.num_tokens)
    contiguous = report["plans"][0]
    assert contiguous["label"] == "contiguous" and report["baseline"] == "contiguous"
    _assert_traffic_matches(contiguous, _expected(trace, contiguous_plan(trace.layers, 16, 2), index, 2), HIDDEN * 4)
    _assert_traffic_matches(report["plans"][1], _expected(trace, permuted, index, 2), HIDDEN * 4)
    for entry in report["plans"]:
        assert all(entry["time_ms"][p] > 0 for p in ("layout", "dispatch", "experts", "combine", "plain"))
        assert entry["algbw_GBps"]["dispatch"] > 0 and entry["dispatch_bw_vs_plain"] > 0
        # every token is served: local copies + copies sent cover each token at least once
        assert sum(entry["dispatch_tokens_local"]) + sum(entry["dispatch_tokens_sent"]) >= 2 * trace.num_tokens
    ratio = report["plans"][1]["ratio_vs_baseline"]
    assert ratio["total_bytes"] == pytest.approx(
        sum(report["plans"][1]["dispatch_tokens_sent"]) / sum(contiguous["dispatch_tokens_sent"]))
    assert "contiguous" in proc.stdout and "passed" in proc.stdout
    assert (out_dir / f"bench-gloo-g2-h{HIDDEN}-t768.json").is_file()
    # predicted time: the stored alpha-beta calibration, busiest rank end, dispatch + combine
    assert report["calibration"]["source"].endswith("calibration-gloo-g2.json")
    for entry in report["plans"]:
        expected_ms = 0.0
        for layer_entry in entry["per_layer"]:
            busiest = max(max(layer_entry["dispatch_tokens_sent"]), max(layer_entry["dispatch_tokens_recv"]))
            expected_ms += 2 * (0.123 + busiest * HIDDEN * 4 / 0.5e9 * 1e3)
        assert entry["predicted"]["all_to_all_ms"] == pytest.approx(expected_ms, rel=1e-9)


def _replicated_plan(trace, path):
    """4 GPUs × 5 slots for 16 experts: experts 0-3 get a second replica on another GPU."""
    rng = np.random.default_rng(7)
    tables = {}
    for layer in trace.layers:
        base = rng.permutation(16).reshape(4, 4)
        extra = np.array([[base[(g + 1) % 4, 0]] for g in range(4)])  # each GPU also holds a neighbour's expert
        tables[layer] = np.concatenate([base, extra], axis=1)
    plan = Plan(tables, 16, method="replicated", replica_policy="nearest-then-least-loaded")
    plan.save(path)
    return plan


def test_cli_launches_four_ranks_with_tiling_overlap_and_replicas(trace_dir, tmp_path):
    trace = Trace.open(trace_dir)
    plan = _permuted_plan(trace, 4, tmp_path / "perm4.json", seed=2)
    replicated = _replicated_plan(trace, tmp_path / "rep4.json")
    out = tmp_path / "report4.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "routelens.cli", "bench", str(trace_dir), "contiguous", str(tmp_path / "perm4.json"),
         str(tmp_path / "rep4.json"), "--gpus", "4", "--backend", "gloo", "--hidden-size", str(HIDDEN), "--intermediate-size", str(INTER),
         "--tokens-per-rank", "500", "--repeats", "1", "--warmup", "0", "--overlap", "--check", "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["num_gpus"] == 4 and report["tokens_replayed"] == 2000 and report["tokens_per_rank"] == 500
    assert report["check"]["passed"]
    index = np.arange(2000) % trace.num_tokens
    _assert_traffic_matches(report["plans"][1], _expected(trace, plan, index, 4), HIDDEN * 4)
    # replicas: the runner's choice is the cost model's replica policy, so the bytes are its prediction
    source = token_source_gpu(2000, 4)
    expected = np.stack([dispatch_matrix(trace.topk_ids(layer)[index], source, replicated.gpu_experts[layer],
                                         replicated.replica_policy) for layer in trace.layers])
    assert report["plans"][2]["replicas"] == 4 * len(trace.layers)
    _assert_traffic_matches(report["plans"][2], expected, HIDDEN * 4)
    overlap = report["plans"][0]["overlap"]
    assert overlap["shortcut_ms"] > 0 and overlap["overlapped_ms"] > 0
    assert 0.0 <= overlap["comm_hidden_share"] <= 1.0
    assert "overlap:" in proc.stdout


def test_calibration_sweep_fits_latency_and_bandwidth(trace_dir, tmp_path):
    out_dir = tmp_path / "bench"
    proc = _torchrun(2, trace_dir, "--backend", "gloo", "--calibrate", "--calibrate-max-mib", 1, "--repeats", 2,
                     "--warmup", 1, "--out", out_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fit = json.loads((out_dir / "calibration-gloo-g2.json").read_text())
    assert fit["latency_us"] >= 0 and fit["bandwidth_GBps"] > 0
    sizes = [p["bytes_per_rank"] for p in fit["points"]]
    assert sizes == [4096 * 4 ** i for i in range(5)] and all(p["ms"] > 0 for p in fit["points"])
    # the reported link terms are the 1/t-weighted least-squares line through the recorded points (timings on a
    # shared CPU are noisy, so the test checks the fit itself, not how well a line explains them)
    sizes_arr = np.array(sizes, dtype=np.float64)
    ms = np.array([p["ms"] for p in fit["points"]])
    A = np.stack([np.ones_like(sizes_arr), sizes_arr], 1) / ms[:, None]
    coef, *_ = np.linalg.lstsq(A, np.ones_like(ms), rcond=None)
    assert fit["latency_us"] == pytest.approx(max(coef[0], 0.0) * 1e3, rel=1e-9, abs=1e-9)
    assert fit["bandwidth_GBps"] == pytest.approx(1.0 / max(coef[1], 1e-15) / 1e6, rel=1e-9)
    assert fit["topology"]["intra_gbps"] == pytest.approx(fit["bandwidth_GBps"])


@pytest.mark.multigpu
def test_nccl_bf16_replay_equals_reference_and_cost_model(trace_dir, tmp_path):
    trace = Trace.open(trace_dir)
    plan = _permuted_plan(trace, 2, tmp_path / "perm.json", seed=3)
    out = tmp_path / "nccl.json"
    proc = _torchrun(2, trace_dir, "contiguous", tmp_path / "perm.json", "--backend", "nccl",
                     "--hidden-size", 256, "--intermediate-size", 128, "--tokens-per-rank", 4096, "--repeats", 3,
                     "--warmup", 1, "--overlap", "--check", "--json", out, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dtype"] == "bfloat16" and report["backend"] == "nccl"
    assert report["check"]["passed"], report["check"]
    index = np.arange(8192) % trace.num_tokens
    _assert_traffic_matches(report["plans"][1], _expected(trace, plan, index, 2), 256 * 2)
    assert all(p["time_ms"]["dispatch"] > 0 and "overlap" in p for p in report["plans"])
