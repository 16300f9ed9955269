import json

import numpy as np
import pytest

from routelens.errors import TraceError
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, TraceWriter, write_trace


def test_roundtrip_keeps_every_token_and_layer(synthetic_trace, tmp_path):
    arrays = synthetic_trace_arrays(num_tokens=4096, num_layers=4, num_experts=16, top_k=2, with_logits=True)
    t = Trace.open(synthetic_trace.path)
    assert t.num_tokens == 4096 and t.top_k == 2 and t.num_experts == 16
    assert len(t.shards) == 5
    for j, layer in enumerate(t.layers):
        np.testing.assert_array_equal(t.topk_ids(layer), arrays["topk_ids"][j])
        np.testing.assert_allclose(t.topk_weights(j), arrays["topk_weights"][j], atol=1e-3)
        assert t.router_logits(layer).shape == (4096, 16)
    np.testing.assert_array_equal(t.token_ids, arrays["token_ids"])
    np.testing.assert_array_equal(t.seq_ids, arrays["seq_ids"])
    chunks = list(t.iter_chunks(0))
    assert [c[0] for c in chunks] == [0, 1000, 2000, 3000, 4000]


def test_output_folder_holding_a_run_is_refused_and_untouched(synthetic_trace):
    before = (synthetic_trace.path / "manifest.json").read_bytes()
    header = synthetic_trace.manifest.copy()
    with pytest.raises(TraceError, match="already holds a run"):
        TraceWriter(synthetic_trace.path, header)
    assert (synthetic_trace.path / "manifest.json").read_bytes() == before


def test_resume_with_other_settings_is_refused(synthetic_trace):
    header = dict(synthetic_trace.manifest)
    header["settings"] = {**header["settings"], "seq_len": 999}
    with pytest.raises(TraceError, match="different settings"):
        TraceWriter(synthetic_trace.path, header, resume=True)


def test_resume_continues_after_last_complete_shard(synthetic_trace):
    w = TraceWriter(synthetic_trace.path, dict(synthetic_trace.manifest), resume=True)
    assert w.resume_state.num_tokens == 4096 and w.resume_state.num_shards == 5


def test_corrupt_shard_gives_trace_error(synthetic_trace):
    shard = synthetic_trace.path / synthetic_trace.shards[1]["file"]
    shard.write_bytes(b"garbage" * 10)
    with pytest.raises(TraceError, match="corrupt"):
        Trace.open(synthetic_trace.path).topk_ids(0)


def test_missing_shard_and_old_version_are_refused(synthetic_trace):
    m = json.loads((synthetic_trace.path / "manifest.json").read_text())
    m["version"] = 0
    (synthetic_trace.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TraceError, match="format version 0"):
        Trace.open(synthetic_trace.path)
    m["version"] = 1
    (synthetic_trace.path / "manifest.json").write_text(json.dumps(m))
    (synthetic_trace.path / synthetic_trace.shards[0]["file"]).unlink()
    with pytest.raises(TraceError, match="missing shard"):
        Trace.open(synthetic_trace.path)


def test_nan_weights_are_refused(tmp_path):
    a = synthetic_trace_arrays(num_tokens=64, num_layers=1, num_experts=4, top_k=2)
    a["topk_weights"][0][3, 1] = np.nan
    with pytest.raises(TraceError, match="NaN"):
        write_trace(tmp_path / "r", a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"], a["topk_weights"])


def test_fingerprint_changes_when_a_run_is_recaptured_with_the_same_sizes(tmp_path):
    """Same layers, experts, k and token count but other routing: cached analyses must not be reused."""
    first = synthetic_trace_arrays(num_tokens=256, num_layers=2, num_experts=8, top_k=2, seed=1)
    second = synthetic_trace_arrays(num_tokens=256, num_layers=2, num_experts=8, top_k=2, seed=2)
    run = tmp_path / "run"
    args = lambda a: (a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"], a["topk_weights"])
    before = write_trace(run, *args(first)).fingerprint()
    assert Trace.open(run).fingerprint() == before  # stable for an unchanged run
    import shutil, time
    shutil.rmtree(run)
    time.sleep(0.01)
    after = write_trace(run, *args(second)).fingerprint()
    assert not np.array_equal(Trace.open(run).topk_ids(Trace.open(run).layers[0]), first["topk_ids"][0])
    assert after != before


def test_layer_range_reads_exactly_the_rows_asked_for_across_shards(synthetic_trace):
    from hypothesis import given, settings, strategies as st

    from routelens.trace import as_trace

    trace = as_trace(str(synthetic_trace.path))  # a path opens the trace; a Trace is returned as is
    assert as_trace(trace) is trace
    whole = trace.topk_ids(2)
    logits = trace.router_logits(2)

    @settings(max_examples=40, deadline=None)
    @given(st.integers(-10, 4200), st.integers(-10, 4200))
    def check(start, end):
        assert np.array_equal(trace.layer_range(2, start, end), whole[max(start, 0):max(end, 0)])
        assert np.array_equal(trace.layer_range(2, start, end, "router_logits"), logits[max(start, 0):max(end, 0)])

    check()
    starts = [start for start, _ in trace.iter_token_chunks("positions")]
    assert starts == [0, 1000, 2000, 3000, 4000]
    assert np.array_equal(np.concatenate([c for _, c in trace.iter_token_chunks()]), trace.token_ids)
    with pytest.raises(TraceError, match="not a per-token field"):
        next(trace.iter_token_chunks("topk_ids"))


def test_write_shard_refuses_weights_beyond_float16_and_keeps_float16_input_as_is(tmp_path):
    arrays = synthetic_trace_arrays(num_tokens=64, num_layers=1, num_experts=4, top_k=2)
    writer = TraceWriter(tmp_path / "run", arrays["header"])
    args = (arrays["token_ids"], arrays["seq_ids"], arrays["positions"], arrays["topk_ids"])
    with pytest.raises(TraceError, match="NaN or inf"):
        writer.write_shard(*args, [np.full((64, 2), 1e6, np.float32)])  # overflows float16
    half = arrays["topk_weights"][0].astype(np.float16)
    writer.write_shard(*args, [half])
    writer.close()
    assert np.array_equal(Trace.open(tmp_path / "run").topk_weights(0), half)


def test_all_finite_on_float16_bits_agrees_with_isfinite():
    from hypothesis import HealthCheck, given, settings, strategies as st
    from hypothesis.extra.numpy import arrays

    from routelens.trace_format import all_finite

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(arrays(np.float16, st.tuples(st.integers(0, 12), st.integers(1, 4)), elements=st.floats(width=16)))
    def check(values):
        assert all_finite(values) == bool(np.isfinite(values).all())
        assert all_finite(values[:, ::2]) == bool(np.isfinite(values[:, ::2]).all())  # strided views too

    check()
    assert not all_finite(np.array([1.0, np.nan], np.float32)) and all_finite(np.zeros((0, 2), np.float16))


def _edit_manifest(run, **changes):
    m = json.loads((run / "manifest.json").read_text())
    m.update(changes)
    (run / "manifest.json").write_text(json.dumps(m))
    return m


def test_every_shard_records_the_sha256_and_size_of_its_file(synthetic_trace):
    from routelens.io import file_sha256

    for i, shard in enumerate(synthetic_trace.shards):
        assert (shard["sha256"], shard["size"]) == file_sha256(synthetic_trace.shard_file(i))


def test_a_copied_run_keeps_its_fingerprint_and_its_analysis_stays_current(synthetic_trace, tmp_path):
    import os
    import shutil

    from routelens.graphs import ensure_analysis

    _, computed = ensure_analysis(synthetic_trace.path, progress=False)
    assert computed
    copy = tmp_path / "copied"
    shutil.copytree(synthetic_trace.path, copy)  # like scp -r: new files, new modification times
    for path in copy.rglob("*"):
        os.utime(path, (1e9, 1e9))
    assert Trace.open(copy).fingerprint() == synthetic_trace.fingerprint()
    _, computed = ensure_analysis(copy, progress=False)
    assert not computed


def test_a_trace_without_recorded_hashes_opens_and_its_fingerprint_follows_file_times(synthetic_trace):
    import os

    m = json.loads((synthetic_trace.path / "manifest.json").read_text())
    for shard in m["shards"]:
        del shard["sha256"], shard["size"]
    (synthetic_trace.path / "manifest.json").write_text(json.dumps(m))
    old = Trace.open(synthetic_trace.path)
    before = old.fingerprint()
    assert np.array_equal(old.topk_ids(0), synthetic_trace.topk_ids(0))
    os.utime(old.shard_file(0), (1e9, 1e9))
    assert Trace.open(synthetic_trace.path).fingerprint() != before


def test_a_manifest_that_understates_num_experts_fails_on_read_naming_the_layer_and_shard(synthetic_trace):
    _edit_manifest(synthetic_trace.path, num_experts=8, routing_rules=None)  # the trace has 16 experts
    trace = Trace.open(synthetic_trace.path)
    with pytest.raises(TraceError, match=r"shard shards/r0-000000.safetensors, layer 0 \(model.layers.0.mlp.gate\): "
                                         r"expert id 1\d outside \[-1, 8\)"):
        trace.topk_ids(0)
    with pytest.raises(TraceError, match=r"expert id 1\d outside \[-1, 8\)"):
        trace.layer_range(0, 10, 20)  # per-layer jobs read by range: checked the same way


def test_a_manifest_with_shards_of_the_wrong_type_is_refused_in_one_line(synthetic_trace):
    _edit_manifest(synthetic_trace.path, shards=5)
    with pytest.raises(TraceError, match="'shards' must be a list"):
        Trace.open(synthetic_trace.path)


def test_shard_files_get_the_same_permissions_as_every_other_file(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        a = synthetic_trace_arrays(num_tokens=64, num_layers=1, num_experts=4, top_k=2)
        run = tmp_path / "run"
        trace = write_trace(run, a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"],
                            a["topk_weights"])
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(os.stat(p).st_mode) for p in [run / "manifest.json", trace.shard_file(0)]}
    assert modes == {0o644}
