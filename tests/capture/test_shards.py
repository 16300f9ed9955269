"""Shard buffers of a capture: two reused buffers, shards of whole batches, errors surface in order."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.capture.hooks import BatchRouting
from routelens.capture.shards import SHARD_BYTES, ShardPipeline, shard_tokens


def batch(first_window: int, windows: int, tokens_per_window: int = 4, layers: int = 2, k: int = 2):
    """Windows ``first_window ..`` whose routing holds the token's index (so order is checkable)."""
    index = np.arange(first_window, first_window + windows)
    token = np.arange(first_window * tokens_per_window, (first_window + windows) * tokens_per_window)
    ids = [np.repeat((token % 1000)[:, None], k, axis=1).astype(np.int16) + j for j in range(layers)]
    weights = [np.full((token.size, k), 0.5, np.float16) for _ in range(layers)]
    return index, BatchRouting(topk_ids=ids, topk_weights=weights, logits=None)


def test_shard_size_is_whole_batches_and_capped_in_bytes_unless_asked():
    assert shard_tokens(None, 2048, 4 * 8 * 48) == 65536
    assert shard_tokens(1000, 256, 10**9) == 1024  # asked for: whole batches, no byte cap
    capped = shard_tokens(None, 2048, 2 * 128 * 48)  # router logits of 48 layers x 128 experts
    assert capped % 2048 == 0 and capped * 2 * 128 * 48 <= SHARD_BYTES + 2048 * 2 * 128 * 48
    assert shard_tokens(None, 1 << 20, 10**6) == 1 << 20  # never less than one batch


def test_pipeline_writes_every_batch_once_in_order_through_two_reused_buffers():
    written, buffers = [], set()

    def write(buffer):
        buffers.add(id(buffer))
        routed = buffer.routing()
        written.append((buffer.window_index.copy(), routed.topk_ids[1].copy()))

    shards = []
    pipeline = ShardPipeline(write, capacity=3 * 2 * 4, on_written=shards.append)  # 3 batches of 2 windows
    for first in range(0, 14, 2):  # 7 batches: shards of 3, 3 and 1 batches
        pipeline.add(*batch(first, 2))
    pipeline.close()
    assert shards == [1, 2, 3] and len(buffers) == 2
    assert [w[0].tolist() for w in written] == [list(range(0, 6)), list(range(6, 12)), [12, 13]]
    ids = np.concatenate([w[1][:, 0] for w in written])
    assert np.array_equal(ids, np.arange(14 * 4) + 1)  # layer 1 holds token index + 1


def test_a_failed_write_is_raised_at_the_next_shard_and_stops_the_pipeline():
    def write(buffer):
        if buffer.window_index[0] == 0:
            raise OSError(28, "No space left on device")

    pipeline = ShardPipeline(write, capacity=8)
    pipeline.add(*batch(0, 2))  # shard 1 handed to the writer
    with pytest.raises(OSError, match="No space left"):
        pipeline.add(*batch(2, 2))  # shard 2 waits for shard 1's write first
    pipeline.abort()
    assert pipeline.written == 0
