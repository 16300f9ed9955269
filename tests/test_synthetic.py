"""Synthetic traces: the big-trace writer produces a valid trace of the asked shape, shard by shard."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.errors import TraceError
from routelens.synthetic import ScaleShape, write_scale_trace


def test_scale_trace_has_the_asked_shape_and_valid_routing(tmp_path):
    shape = ScaleShape(num_tokens=5000, num_layers=3, num_experts=16, top_k=4, num_groups=4, pool_tokens=512,
                       seq_len=500)
    trace = write_scale_trace(tmp_path / "run", shape, seed=1, shard_tokens=2000, workers=1)
    assert (trace.num_tokens, len(trace.layers), trace.num_experts, trace.top_k) == (5000, 3, 16, 4)
    assert [s["num_tokens"] for s in trace.shards] == [2000, 2000, 1000]
    assert not (tmp_path / "run" / "parts" / "pools.npz").exists()
    for j in range(3):
        ids = trace.topk_ids(j).astype(np.int64)
        assert ids.min() >= 0 and ids.max() < 16
        assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()  # k distinct experts a token
        assert len(np.unique(ids, axis=0)) <= 512  # every token copies a row of the layer's pool
        np.testing.assert_allclose(trace.topk_weights(j).astype(np.float32).sum(axis=1), 1.0, atol=5e-3)
    assert np.array_equal(trace.seq_ids, np.arange(5000) // 500)
    assert np.array_equal(trace.positions, np.arange(5000) % 500)
    load = np.bincount(trace.topk_ids(0).ravel(), minlength=16)
    assert load.max() > 1.5 * load.mean()  # Zipf-skewed, as in trained models
    with pytest.raises(TraceError, match="not empty"):
        write_scale_trace(tmp_path / "run", shape)
