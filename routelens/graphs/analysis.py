"""The :class:`Analysis` object: one trace's co-activation analysis, in memory or loaded from disk.

It is what ``routelens analyze`` writes to ``RUN/analysis/`` and what the dashboard, placement and
re-routing read back with :func:`routelens.graphs.load_analysis`. Arrays are stacked over the
analysed layers (position ``p`` ↔ trace layer ``layers[p]``); every accessor takes a *trace* layer
index (or router module name), never a position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import communities, metrics

SCORE_NAMES = ("specialization", "collaboration", "effective_collaborators", "stability", "role", "community")


@dataclass
class Analysis:
    """Co-activation analysis of a trace.

    Attributes:
        layers: trace layer indices analysed (``[L]``); layer_names: their router module paths.
        num_experts: ``E`` (arrays are ``E`` wide; layers with fewer experts are zero-padded).
        top_k: ``k``; num_tokens: ``T``.
        load_tokens: ``[L, E]`` int64 tokens each expert received.
        load_weight: ``[L, E]`` float64 routing-weight mass each expert received.
        coactivation: ``[L, E, E]`` int64 co-activation counts, load on the diagonal.
        transitions: ``[L, E, E]`` int64 counts from layer ``layers[p]`` to trace layer
            ``layers[p] + 1`` (all zero where there is no next layer; see :meth:`transition`).
        scores: ``{name: [L, E]}``: ``specialization``, ``collaboration``,
            ``effective_collaborators``, ``stability`` (float64, NaN for unused experts),
            ``role`` (int8, index into :data:`routelens.graphs.ROLE_NAMES`), ``community`` (int64,
            -1 unused).
        layer_summaries: one dict per layer (the table ``routelens analyze`` prints, and more).
        token_class_counts: ``[L, E, C]`` int64 slots per token class, or None (no tokenizer).
        tokens: ``{"classes", "layers": [{"top_tokens": [[...] per expert]}]}`` or None.
        meta: format, trace fingerprint, trace description, parameters, timings.
        path: the ``analysis/`` folder it was loaded from or saved to (None in memory).
    """

    layers: list[int]
    layer_names: list[str]
    num_experts: int
    top_k: int
    num_tokens: int
    load_tokens: np.ndarray
    load_weight: np.ndarray
    coactivation: np.ndarray
    transitions: np.ndarray
    scores: dict[str, np.ndarray]
    layer_summaries: list[dict[str, Any]]
    token_class_counts: np.ndarray | None = None
    tokens: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ------------------------------------------------------------------ addressing
    @property
    def fingerprint(self) -> str:
        """Fingerprint of the trace this analysis was computed from (``Trace.fingerprint()``)."""
        return str(self.meta.get("trace", {}).get("fingerprint", ""))

    def position(self, layer: int | str) -> int:
        """Position in the stacked arrays of a trace layer index or router module name.

        Raises:
            InputError: the layer was not analysed.
        """
        if isinstance(layer, (int, np.integer)):
            if int(layer) in self.layers:
                return self.layers.index(int(layer))
            raise InputError(f"layer {layer} was not analysed (analysed: {_ranges(self.layers)})")
        if layer in self.layer_names:
            return self.layer_names.index(layer)
        raise InputError(f"layer '{layer}' was not analysed")

    def experts_of(self, layer: int | str) -> int:
        """``E`` of one layer (may be below :attr:`num_experts` in mixed-width models)."""
        return int(self.summary(layer).get("num_experts", self.num_experts))

    # ------------------------------------------------------------------ per-layer views
    def summary(self, layer: int | str) -> dict[str, Any]:
        """The layer's summary row (load imbalance, role shares, modularity, entropy, next layer)."""
        return self.layer_summaries[self.position(layer)]

    def counts(self, layer: int | str) -> np.ndarray:
        """``[E, E]`` int64 co-activation counts of a layer, load on the diagonal."""
        e = self.experts_of(layer)
        return self.coactivation[self.position(layer)][:e, :e]

    def load(self, layer: int | str, weighted: bool = False) -> np.ndarray:
        """``[E]`` tokens (or routing-weight mass with ``weighted``) per expert."""
        e = self.experts_of(layer)
        source = self.load_weight if weighted else self.load_tokens
        return source[self.position(layer)][:e]

    def conditional(self, layer: int | str) -> np.ndarray:
        """``[E, E]`` ``P(j | i)`` (:func:`routelens.graphs.conditional_probability`)."""
        return metrics.conditional_probability(self.counts(layer))

    def jaccard(self, layer: int | str) -> np.ndarray:
        """``[E, E]`` Jaccard similarity of experts' token sets."""
        return metrics.jaccard(self.counts(layer))

    def lift(self, layer: int | str) -> np.ndarray:
        """``[E, E]`` lift ``P(i ∧ j) / (P(i) P(j))``."""
        return metrics.lift(self.counts(layer), self.summary(layer)["tokens"])

    def pmi(self, layer: int | str) -> np.ndarray:
        """``[E, E]`` PMI ``log(lift)`` (``-inf`` where never together)."""
        return metrics.pmi(self.counts(layer), self.summary(layer)["tokens"])

    def score(self, layer: int | str, name: str) -> np.ndarray:
        """``[E]`` one per-expert score (one of :data:`SCORE_NAMES`)."""
        if name not in self.scores:
            raise InputError(f"unknown score {name!r}: choose from {', '.join(self.scores)}")
        return self.scores[name][self.position(layer)][: self.experts_of(layer)]

    def roles(self, layer: int | str) -> list[str]:
        """``[E]`` role names: ``specialized``, ``collaborative`` or ``unused``."""
        return [metrics.ROLE_NAMES[int(r)] for r in self.score(layer, "role")]

    def communities(self, layer: int | str) -> list[list[int]]:
        """The layer's Louvain communities, largest first, as lists of expert ids."""
        return communities.communities_from_labels(self.score(layer, "community"))

    def collaborators(self, layer: int | str, top_t: int) -> np.ndarray:
        """C2R's ``Top-T(i)`` table ``[E, T]`` of a layer (most collaborative first)."""
        return metrics.top_t_partners(self.counts(layer), top_t)

    def transition(self, layer: int | str) -> np.ndarray | None:
        """``[E, E']`` int64 transition counts from ``layer`` to the next trace layer, or None (last)."""
        p = self.position(layer)
        if self.layer_summaries[p].get("next_layer") is None:
            return None
        return self.transitions[p][: self.experts_of(layer)]

    def next_layer_probability(self, layer: int | str) -> np.ndarray | None:
        """``[E, E']`` ``P(b at l+1 | a at l)``, or None for the last layer."""
        t = self.transition(layer)
        return None if t is None else metrics.next_layer_probability(t)

    def graph(self, layer: int | str):
        """The layer's co-activation graph (``networkx.Graph``; see :func:`coactivation_graph`)."""
        p = self.position(layer)
        e = self.experts_of(layer)
        scores = {name: values[p][:e] for name, values in self.scores.items() if name != "community"}
        return communities.coactivation_graph(self.counts(layer), self.layer_summaries[p]["tokens"],
                                              load_weight=self.load_weight[p][:e], scores=scores,
                                              communities=self.scores["community"][p][:e])

    def top_tokens(self, layer: int | str) -> list[list[dict[str, Any]]] | None:
        """Per expert, its most over-represented tokens (``id``, ``text``, ``count``, ``share``, ``lift``)."""
        if not self.tokens:
            return None
        return self.tokens["layers"][self.position(layer)].get("top_tokens")

    def class_lift(self, layer: int | str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(share [E, C], lift [E, C])`` of token classes per expert, or None (no tokenizer)."""
        if self.token_class_counts is None:
            return None
        from .tokens import class_lift

        return class_lift(self.token_class_counts[self.position(layer)][: self.experts_of(layer)])

    def select(self, layers: list[int]) -> "Analysis":
        """The same analysis restricted to some of its layers (trace indices, all analysed)."""
        pos = [self.position(int(j)) for j in layers]
        return Analysis(
            layers=[self.layers[p] for p in pos], layer_names=[self.layer_names[p] for p in pos],
            num_experts=self.num_experts, top_k=self.top_k, num_tokens=self.num_tokens,
            load_tokens=self.load_tokens[pos], load_weight=self.load_weight[pos],
            coactivation=self.coactivation[pos], transitions=self.transitions[pos],
            scores={name: values[pos] for name, values in self.scores.items()},
            layer_summaries=[self.layer_summaries[p] for p in pos],
            token_class_counts=None if self.token_class_counts is None else self.token_class_counts[pos],
            tokens=None if self.tokens is None else {**self.tokens, "layers": [self.tokens["layers"][p] for p in pos]},
            meta=self.meta, path=self.path,
        )

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return (f"Analysis(layers={_ranges(self.layers)}, E={self.num_experts}, k={self.top_k}, "
                f"tokens={self.num_tokens}{where})")


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``."""
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:  # type: ignore[operator]
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)
