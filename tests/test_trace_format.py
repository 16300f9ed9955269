"""The trace format's rules: manifest fields, shard paths that stay inside the run, checked arrays."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routelens.errors import TraceError
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace
from routelens.trace_format import check_array, check_shard_name, resolve_inside, validate_manifest

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    a = synthetic_trace_arrays(num_tokens=300, num_layers=2, num_experts=8, top_k=2, with_logits=True)
    run = tmp_path_factory.mktemp("fmt") / "run"
    write_trace(run, a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"], a["topk_weights"],
                a["router_logits"], shard_tokens=128)
    return json.loads((run / "manifest.json").read_text())


def test_a_written_manifest_is_valid_and_records_each_shards_hash_and_size(manifest):
    validate_manifest(manifest, "m")
    assert [s["num_tokens"] for s in manifest["shards"]] == [128, 128, 44]
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in manifest["shards"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(key=st.sampled_from(["layers", "num_experts", "top_k", "shards", "complete", "has_logits", "num_tokens",
                            "num_sequences", "model", "settings", "stats", "parent", "num_experts_per_layer",
                            "routing_rules", "format", "version", "dtype", "world_size"]),
       value=JSON_VALUES, delete=st.booleans())
def test_any_value_in_any_field_is_accepted_or_refused_with_one_line(manifest, key, value, delete):
    damaged = copy.deepcopy(manifest)
    if delete:
        damaged.pop(key, None)
    else:
        damaged[key] = value
    try:
        validate_manifest(damaged, "RUN/manifest.json")
    except TraceError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    # accepted: then every field routelens reads has the type it expects
    assert isinstance(damaged["layers"], list) and all(isinstance(x, str) for x in damaged["layers"])
    assert 1 <= damaged["top_k"] <= damaged["num_experts"]
    assert all(isinstance(s, dict) and s["file"].startswith("shards/") for s in damaged["shards"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(index=st.integers(0, 2), key=st.sampled_from(["file", "num_tokens", "num_seqs", "rank", "sha256", "size"]),
       value=JSON_VALUES)
def test_any_value_in_a_shard_entry_is_accepted_or_refused_with_one_line(manifest, index, key, value):
    damaged = copy.deepcopy(manifest)
    damaged["shards"][index][key] = value
    damaged.pop("num_tokens")  # the sum is checked on its own
    try:
        validate_manifest(damaged, "m")
    except TraceError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(damaged["shards"][index]["num_tokens"], int)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "shards/../../x", "data/x.safetensors",
                                  "shards", "shards/", "shards/./x", "", 5, None])
def test_shard_paths_outside_shards_are_refused_on_their_text(name):
    with pytest.raises(TraceError):
        check_shard_name(name, "m")


def test_num_experts_per_layer_and_top_k_must_agree(manifest):
    for per_layer in ([8], [8, 9], [1, 8], [8, "8"]):
        with pytest.raises(TraceError, match="num_experts_per_layer"):
            validate_manifest({**manifest, "num_experts_per_layer": per_layer}, "m")
    with pytest.raises(TraceError, match="top_k"):
        validate_manifest({**manifest, "top_k": 9}, "m")
    with pytest.raises(TraceError, match="twice"):
        validate_manifest({**manifest, "layers": ["a", "a"]}, "m")


def test_links_are_followed_only_while_they_stay_inside_the_run(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "shards" / "real").mkdir(parents=True)
    outside.mkdir()
    (run / "shards" / "real" / "a.safetensors").write_bytes(b"x")
    os.mkfifo(outside / "b.safetensors")  # opening it would block: a read would hang the test
    root = os.path.realpath(run)
    (run / "shards" / "inside").symlink_to("real/a.safetensors")
    (run / "shards" / "abs-inside").symlink_to(run / "shards" / "real" / "a.safetensors")
    (run / "shards" / "up").symlink_to("../../outside/b.safetensors")
    (run / "shards" / "abs").symlink_to(outside / "b.safetensors")
    (run / "shards" / "dir").symlink_to(outside)
    (run / "shards" / "loop").symlink_to("loop")
    assert resolve_inside(root, "shards/inside", "s") == os.path.join(root, "shards/real/a.safetensors")
    assert resolve_inside(root, "shards/abs-inside", "s") == os.path.join(root, "shards/real/a.safetensors")
    assert resolve_inside(root, "shards/missing", "s") is None
    for name in ("shards/up", "shards/abs", "shards/dir/b.safetensors"):
        with pytest.raises(TraceError, match="outside the run folder|leaves the run folder"):
            resolve_inside(root, name, "s")
    with pytest.raises(TraceError, match="too many symbolic links"):
        resolve_inside(root, "shards/loop", "s")


def test_a_shard_link_to_a_fifo_outside_is_refused_without_opening_it(tmp_path):
    a = synthetic_trace_arrays(num_tokens=64, num_layers=1, num_experts=4, top_k=2)
    run = tmp_path / "run"
    trace = write_trace(run, a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"], a["topk_weights"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    shard = run / trace.shards[0]["file"]
    shard.unlink()
    shard.symlink_to(fifo)
    with pytest.raises(TraceError, match="outside the run folder"):
        Trace.open(run)  # a read of the FIFO would block here forever
    os.mkfifo(run / "shards" / "local-fifo")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "shards/local-fifo"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TraceError, match="not a regular file"):
        Trace.open(run)


def test_checked_arrays_name_the_problem():
    ids = np.array([[0, 1], [2, 8]], np.int16)
    with pytest.raises(TraceError, match=r"WHERE: expert id 8 outside \[-1, 8\)"):
        check_array(ids, "topk_ids.0", np.int16, (2, 2), 8, "WHERE")
    with pytest.raises(TraceError, match=r"expert id -2 outside"):
        check_array(np.array([[-2, 1]], np.int16), "topk_ids.0", np.int16, (1, 2), 8, "W")
    check_array(np.array([[-1, 7]], np.int16), "topk_ids.0", np.int16, (1, 2), 8, "W")  # -1: a dropped slot
    with pytest.raises(TraceError, match="dtype int32, a trace stores int16"):
        check_array(ids.astype(np.int32), "topk_ids.0", np.int16, (2, 2), 8, "W")
    with pytest.raises(TraceError, match=r"shape \[2, 2\], expected \[2, 3\]"):
        check_array(ids, "topk_ids.0", np.int16, (2, 3), 8, "W")
    with pytest.raises(TraceError, match="negative"):
        check_array(np.array([0, -3], np.int32), "positions", np.int32, (2,), None, "W")
