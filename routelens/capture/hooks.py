"""Record what every router decided during a forward pass.

:class:`RouterRecorder` registers one forward hook per router site (see
``routelens.capture.adapters``); each hook turns the router's native output into a
``RouterOutput`` with the site's ``unpack`` and keeps it, on the device it was computed on. After
the forward, :meth:`RouterRecorder.take` concatenates each layer's calls. Nothing here copies to the
host or synchronises the GPU. :class:`HostCopy` then moves a whole batch to host memory at once:
pinned buffers, ``non_blocking`` copies, one event per device (one host sync per batch, none per layer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import RoutelensError


@dataclass
class LayerRouting:
    """One MoE layer's routing for all tokens of one forward pass (tensors on the router's device).

    Attributes:
        topk_ids: ``[N, k]`` int64 experts chosen, ``N`` = tokens in the batch, in input order.
        topk_weights: ``[N, k]`` routing weights the experts received.
        logits: ``[N, E]`` router logits, or None (not kept, or the family exposes none).
    """

    topk_ids: Any
    topk_weights: Any
    logits: Any | None


@dataclass
class BatchRouting:
    """One batch's routing on the host, one array per MoE layer (site order).

    Attributes:
        topk_ids: per layer ``[N, k]`` int16.
        topk_weights: per layer ``[N, k]`` float16 (the trace's dtype; a weight beyond float16's
            range becomes inf, which the capture refuses like a NaN).
        logits: per layer ``[N, E]`` float16, or None.
    """

    topk_ids: list[np.ndarray]
    topk_weights: list[np.ndarray]
    logits: list[np.ndarray] | None


class SiteHooks(ABC):
    """A forward hook on every router site while in a ``with`` block, one call list per site.

    Subclasses say what a hook does with ``_hook(j, site, calls)``, which returns the hook
    ``(module, args, kwargs, output) -> new output or None``; what it appends to ``calls`` (the
    site's list in ``self._calls``) is theirs to read back. Leaving the block removes every hook
    and forgets what was kept, also after a failed forward.
    """

    def __init__(self, sites: Sequence[Any]):
        self.sites = list(sites)
        self._calls: list[list[Any]] = [[] for _ in self.sites]
        self._handles: list[Any] = []

    def __enter__(self):
        for j, site in enumerate(self.sites):
            hook = self._hook(j, site, self._calls[j])
            self._handles.append(site.module.register_forward_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    @abstractmethod
    def _hook(self, j: int, site: Any, calls: list[Any]):
        """The forward hook of site ``j``; it may append to ``calls``."""

    def clear(self) -> None:
        """Forget what was kept (e.g. after a failed forward)."""
        for calls in self._calls:
            calls.clear()


class RouterRecorder(SiteHooks):
    """Context manager that hooks ``sites`` and collects their outputs forward by forward.

    Example:
        >>> with RouterRecorder(routing.sites, keep_logits=True) as recorder:   # doctest: +SKIP
        ...     model(input_ids)
        ...     layers = recorder.take()        # one LayerRouting per site, in site order
    """

    def __init__(self, sites: Sequence[Any], keep_logits: bool = False):
        super().__init__(sites)
        self.keep_logits = keep_logits

    def _hook(self, j: int, site: Any, calls: list[Any]):
        def hook(module, args, kwargs, output):
            calls.append(site.unpack(args, kwargs, output))

        return hook

    def take(self, expected_tokens: int | None = None) -> list[LayerRouting]:
        """Per layer, the routing of everything since the last ``take``, concatenated over calls.

        Args:
            expected_tokens: tokens the forward pass fed (``B * L``); checked against each layer's
                ``N`` from tensor shapes only (no GPU sync).

        Raises:
            RoutelensError: a router was not called, or saw a different number of tokens.
        """
        import torch

        layers = []
        for site, calls in zip(self.sites, self._calls):
            if not calls:
                raise RoutelensError(f"router {site.name} was not called during the forward pass; cannot record it")
            if len(calls) == 1:
                ids, weights = calls[0].topk_ids, calls[0].topk_weights
                logits = calls[0].logits if self.keep_logits else None
            else:
                ids = torch.cat([c.topk_ids for c in calls])
                weights = torch.cat([c.topk_weights for c in calls])
                logits = None
                if self.keep_logits and all(c.logits is not None for c in calls):
                    logits = torch.cat([c.logits for c in calls])
            if expected_tokens is not None and ids.shape[0] != expected_tokens:
                raise RoutelensError(
                    f"router {site.name} routed {ids.shape[0]} tokens, but the batch holds {expected_tokens}"
                )
            layers.append(LayerRouting(topk_ids=ids, topk_weights=weights, logits=logits))
        self.clear()
        return layers


class HostCopy:
    """One batch's routing on its way to host memory (pinned, non-blocking on CUDA).

    ``result()`` waits for the copies (one event per CUDA device, i.e. one sync per batch) and
    returns numpy arrays: ids ``[N, k]`` int16, weights ``[N, k]`` float16, logits ``[N, E]`` float16.
    Converting on the device makes the copies small (int16 ids are a quarter of int64) and leaves
    the host no conversion to do.
    """

    def __init__(self, layers: list[LayerRouting]):
        import torch

        self._on_device: list[Any] = []  # device tensors kept alive until their copy is done
        self.topk_ids = [self._to_host(layer.topk_ids, torch.int16) for layer in layers]
        self.topk_weights = [self._to_host(layer.topk_weights, torch.float16) for layer in layers]
        self.logits = None
        if layers and all(layer.logits is not None for layer in layers):
            self.logits = [self._to_host(layer.logits, torch.float16) for layer in layers]
        self._events = []
        for device in {t.device for t in self._on_device}:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._events.append(event)

    def _to_host(self, tensor, dtype):
        import torch

        if tensor.device.type == "cpu":
            return tensor.to(dtype, copy=True)  # own the memory: the model may reuse its buffers
        converted = tensor.to(dtype)  # convert on the device: int16 ids are a quarter of int64
        host = torch.empty(converted.shape, dtype=dtype, pin_memory=True)
        host.copy_(converted, non_blocking=True)
        self._on_device.append(converted)
        return host

    def result(self) -> "BatchRouting":
        for event in self._events:
            event.synchronize()
        self._on_device = []
        # views of the (pinned) host tensors: the caller copies them into its shard buffer, and
        # the pinned blocks return to the caching host allocator once the views are dropped
        return BatchRouting(
            topk_ids=[t.numpy() for t in self.topk_ids],
            topk_weights=[t.numpy() for t in self.topk_weights],
            logits=None if self.logits is None else [t.numpy() for t in self.logits],
        )
