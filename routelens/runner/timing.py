"""Phase timers: CUDA events on a GPU (no host sync inside the timed region), a wall clock on CPU."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Collects ``(phase, start, end)`` marks; :meth:`collect` turns them into milliseconds.

    On CUDA the marks are events recorded on the current stream, read once at the end (one sync);
    on CPU they are ``perf_counter`` readings taken after the phase's work returned.
    """

    def __init__(self, device: torch.device, enabled: bool = True):
        self.cuda = torch.device(device).type == "cuda"
        self.enabled = enabled
        self._marks: list[tuple[str, object, object]] = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str):
        """Time the enclosed work as phase ``name`` (added up if it occurs more than once)."""
        if not self.enabled:
            yield
            return
        start = self._mark()
        yield
        self._marks.append((name, start, self._mark()))

    def collect(self) -> dict[str, float]:
        """Milliseconds per phase since the last collect (summed over repeated phases), then reset."""
        if self.cuda and self._marks:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for name, start, end in self._marks:
            totals[name] += start.elapsed_time(end) if self.cuda else (end - start) * 1e3
        self._marks.clear()
        return dict(totals)
