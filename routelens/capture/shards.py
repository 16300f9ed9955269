"""Shards of a capture: host buffers filled batch by batch, written by one background thread.

Two :class:`ShardBuffer` alternate in a :class:`ShardPipeline`: the capture loop copies each
batch's routing into one while the writer thread writes the other, so the host holds at most two
shards of routing whatever the number of tokens captured, and a shard is never concatenated from
its batches (the arrays a shard file is written from are the buffer's own rows). A shard holds
:func:`shard_tokens` tokens, whole batches, and at most :data:`SHARD_BYTES` of routing unless the
user asks for more, so ``--save-logits`` on a model of many layers keeps host memory small too.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from .hooks import BatchRouting

DEFAULT_SHARD_TOKENS = 65536
SHARD_BYTES = 256 << 20  # routing bytes per shard when the shard size is left to routelens


def shard_tokens(requested: int | None, batch_tokens: int, bytes_per_token: int) -> int:
    """Tokens per shard: ``requested`` rounded up to whole batches, or the default.

    Args:
        requested: the user's ``--shard-tokens`` (None: :data:`DEFAULT_SHARD_TOKENS`, fewer when one
            shard would hold more than :data:`SHARD_BYTES` of routing).
        batch_tokens: tokens per forward pass (``batch_size * seq_len``).
        bytes_per_token: routing bytes one token adds over all layers (ids, weights, logits).

    Example:
        >>> shard_tokens(None, 2048, 48 * 8 * 4)      # 48 layers, top-8: 65536 tokens = 96 MiB
        65536
        >>> shard_tokens(None, 2048, 48 * 128 * 2)    # router logits of 48 x 128 experts
        20480
    """
    wanted = DEFAULT_SHARD_TOKENS if requested is None else int(requested)
    if requested is None:
        wanted = min(wanted, SHARD_BYTES // max(int(bytes_per_token), 1))
    return max(1, -(-wanted // batch_tokens)) * batch_tokens


class ShardBuffer:
    """One shard's routing in host memory: per layer ``[capacity, k]`` ids and weights (and logits).

    Arrays are allocated at the first batch (their widths and dtypes are the batch's) and reused
    for every later shard.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.fill = 0
        self.windows: list[np.ndarray] = []
        self._ids: list[np.ndarray] | None = None
        self._weights: list[np.ndarray] | None = None
        self._logits: list[np.ndarray] | None = None

    def add(self, index: np.ndarray, routed: BatchRouting) -> None:
        """Append one batch: windows ``index`` ``[B]`` and their routing (``N = B * L`` tokens per layer)."""
        if self._ids is None:
            self._ids = [np.empty((self.capacity,) + a.shape[1:], a.dtype) for a in routed.topk_ids]
            self._weights = [np.empty((self.capacity,) + a.shape[1:], a.dtype) for a in routed.topk_weights]
            if routed.logits is not None:
                self._logits = [np.empty((self.capacity,) + a.shape[1:], a.dtype) for a in routed.logits]
        n = routed.topk_ids[0].shape[0]
        if self.fill + n > self.capacity:
            raise ValueError(f"shard buffer of {self.capacity} tokens cannot take {n} more after {self.fill}")
        rows = slice(self.fill, self.fill + n)
        for into, arrays in ((self._ids, routed.topk_ids), (self._weights, routed.topk_weights),
                             (self._logits, routed.logits)):
            if into is not None and arrays is not None:
                for buffer, array in zip(into, arrays):
                    buffer[rows] = array
        self.fill += n
        self.windows.append(np.asarray(index))

    @property
    def full(self) -> bool:
        return self.fill >= self.capacity

    @property
    def window_index(self) -> np.ndarray:
        """``[S]`` windows of the shard, in order."""
        return np.concatenate(self.windows) if self.windows else np.zeros(0, np.int64)

    def routing(self) -> BatchRouting:
        """The shard's rows (views into the buffers, valid until the next :meth:`reset`)."""
        rows = slice(0, self.fill)
        return BatchRouting(topk_ids=[a[rows] for a in self._ids or []],
                            topk_weights=[a[rows] for a in self._weights or []],
                            logits=None if self._logits is None else [a[rows] for a in self._logits])

    def reset(self) -> None:
        self.fill = 0
        self.windows = []


class ShardPipeline:
    """Fills shard buffers in the caller's thread and writes full ones in one background thread.

    At most one shard is being written while the next one fills; a write's error is raised in the
    caller's thread at the next :meth:`add` that completes a shard, or at :meth:`close`.

    Args:
        write: ``write(buffer)`` writes one shard (runs on the writer thread).
        capacity: tokens per shard.
        on_written: called in the caller's thread with the number of shards written so far.
    """

    def __init__(self, write: Callable[[ShardBuffer], None], capacity: int,
                 on_written: Callable[[int], None] | None = None):
        self._write = write
        self._buffers = [ShardBuffer(capacity), ShardBuffer(capacity)]
        self._on_written = on_written
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routelens-shard")
        self._pending: Future | None = None
        self.written = 0

    def add(self, index: np.ndarray, routed: BatchRouting) -> None:
        buffer = self._buffers[0]
        buffer.add(index, routed)
        if buffer.full:
            self.flush()

    def flush(self) -> None:
        """Hand the filling buffer (if not empty) to the writer; the other one becomes the filling one."""
        buffer = self._buffers[0]
        if buffer.fill == 0:
            return
        self._finish()  # the other buffer's write is done: it may be refilled
        self._pending = self._pool.submit(self._write, buffer)
        self._buffers.reverse()
        self._buffers[0].reset()

    def close(self) -> None:
        """Write what is left and wait for every write (raises the first write error)."""
        try:
            self.flush()
            self._finish()
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop without writing what is left; a shard already being written completes (atomically) or not at all."""
        self._pool.shutdown(wait=True)

    def _finish(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
            self.written += 1
            if self._on_written is not None:
                self._on_written(self.written)
