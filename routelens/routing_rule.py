"""The router's scoring rule, once: router logits ``[N, E]`` -> the experts a token uses and their weights.

Capture reads each family's rule from its router (``routelens.capture.adapters.rules``) into a
:class:`RoutingRule`; re-routing (``routelens.reroute``) changes *which* experts a token uses but
scores and weights them with these same functions. The rule is split in the two halves every
re-routing policy needs:

1. :func:`rule_scores`: the *selection* scores experts are ranked by (softmax or sigmoid affinity,
   plus the selection bias, with the group limit applied as ``-inf``) and the *gate* scores chosen
   experts are weighted by;
2. :func:`finish_weights`: the weights the model gives a choice of ids (gather the gate scores,
   renormalise when the model renormalises, routed scaling factor).

:func:`choose` is the model's own choice, ``topk_choice(select)`` finished by ``finish_weights``
(PhiMoE's SparseMixer, which ranks by no score a policy could reuse, has its own
:func:`sparsemixer_choose`). ``tests/test_routing_rule.py`` checks it against the tiny random-init
model of every family in ``tests/capture/tiny_models.py``: same ids, same weights.

Where each rule comes from:

* softmax, top-k, optional renormalisation: Mixtral (Jiang et al., arXiv:2401.04088), Qwen-MoE,
  OLMoE, Switch (Fedus et al., arXiv:2101.03961; top-1), NLLB-MoE (top-2, renormalised);
  a p-norm instead of the sum: DBRX (``moe_normalize_expert_weights``);
* softmax with DeepSeek-V2's ``group_limited_greedy`` (DeepSeek-AI, arXiv:2405.04434 Sec. 2.1.3):
  keep the ``topk_group`` groups with the best single probability; routed scaling factor;
* sigmoid affinity, a selection bias that only ranks (auxiliary-loss-free balancing), group limit
  by the sum of each group's best two, renormalisation, scaling factor: DeepSeek-V3
  (DeepSeek-AI, arXiv:2412.19437 Sec. 2.1.2), GLM4-MoE, Dots1, MiniMax-M2; Ernie-4.5 uses the
  bias with softmax;
* top-k of the raw logits, softmax over the k chosen: GPT-OSS, Granite-MoE, JetMoE;
* top-k of the raw logits, sigmoid of each: Llama 4;
* SparseMixer (Liu et al., arXiv:2409.12136), inference path: PhiMoE.

Dropped slots (a capacity limit, a re-routing policy) are id :data:`DROPPED` with weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError

DROPPED = -1  # id of a slot no expert processes (weight 0)
SCORINGS = ("softmax", "sigmoid", "topk_sigmoid", "sparsemixer")


@dataclass
class RoutingRule:
    """A family's routing rule: ``logits [N, E] -> (ids [N, k], weights [N, k])``.

    ``scoring`` values:

    * ``"softmax"``: ``p = softmax(logits)``; choose the top-k of ``p + bias``; weights ``p[ids]``
      (Mixtral, Qwen, OLMoE, DeepSeek-V2, Ernie, HunYuan, MiniMax, DBRX, Switch). With
      ``n_group`` it is DeepSeek-V2's ``group_limited_greedy``: keep the ``topk_group`` groups with
      the largest max probability, forbid the rest.
    * ``"sigmoid"``: ``s = sigmoid(logits)``; choose the top-k of ``s + bias``; weights ``s[ids]``
      (DeepSeek-V3, GLM4-MoE, Dots1). With ``n_group`` it is DeepSeek-V3's group limit: keep the
      ``topk_group`` groups with the largest sum of their top-2 ``s + bias``, forbid the rest.
    * ``"topk_sigmoid"``: top-k of the raw logits, weights ``sigmoid(logits[ids])`` (Llama4).
    * ``"sparsemixer"``: PhiMoE's SparseMixer at inference (top-2 only), see :func:`sparsemixer_choose`.

    ``softmax_after_topk=True`` (with ``scoring="softmax"``): top-k of the raw logits, weights
    ``softmax(logits[ids])`` over the k chosen only (GPT-OSS, Granite-MoE, JetMoE).

    Then, when ``norm_topk_prob``: ``weights /= weights.norm(p=norm_p)`` (``norm_p=1``: divide by
    the sum); finally ``weights *= routed_scaling_factor``.

    ``norm_p`` (DBRX's ``moe_normalize_expert_weights``) and ``jitter_eps`` (PhiMoE) extend the
    common fields; both default to no-ops. The field order is the order traces record them in.
    """

    scoring: str
    num_experts: int
    top_k: int
    norm_topk_prob: bool
    routed_scaling_factor: float = 1.0
    n_group: int | None = None
    topk_group: int | None = None
    bias: torch.Tensor | None = None
    softmax_after_topk: bool = False
    norm_p: float = 1.0
    jitter_eps: float = 0.0

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`choose` under this rule: ``[N, E]`` logits -> (ids ``[N, k]``, weights ``[N, k]`` float32)."""
        return choose(logits, self)

    @property
    def has_group_limit(self) -> bool:
        """True when only ``topk_group`` of ``n_group`` expert groups may be chosen (DeepSeek-V2/V3)."""
        return self.n_group is not None and self.n_group > 1 and self.topk_group is not None


def choose(logits: torch.Tensor, rule: RoutingRule) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own choice: ``logits [N, E]`` -> (ids ``[N, k]`` int64, weights ``[N, k]`` float32).

    Computed in float32, ids in descending selection score (the model may order a row differently:
    compare as sets). Capacity limits (Switch, NLLB-MoE) are not applied: every token gets its k experts.

    Example:
        >>> rule = RoutingRule("softmax", num_experts=4, top_k=2, norm_topk_prob=True)
        >>> ids, weights = choose(torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]])), rule)
        >>> ids.tolist(), [round(w, 3) for w in weights[0].tolist()]
        ([[1, 3]], [0.571, 0.429])
    """
    if rule.scoring == "sparsemixer":
        return sparsemixer_choose(logits.reshape(-1, logits.shape[-1]).float(), rule.jitter_eps, rule.top_k)
    select, gate = rule_scores(logits, rule)
    ids = topk_choice(select, rule.top_k)
    return ids, finish_weights(logits, gate, ids, rule)


def rule_scores(logits: torch.Tensor, rule: RoutingRule) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selection and gate scores of ``logits [N, E]`` under ``rule`` (float32).

    Returns:
        ``(select [N, E], gate [N, E] | None)``. ``select`` ranks experts for the choice; experts a
        group limit forbids are ``-inf``. ``gate`` holds the scores chosen experts are weighted by
        (softmax or sigmoid affinity, without the bias), or None when the rule weights by a softmax
        over the chosen logits only (``softmax_after_topk``: GPT-OSS, Granite-MoE, JetMoE).

    Raises:
        InputError: PhiMoE's SparseMixer, which has no score to re-rank by, or an unknown scoring.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    if rule.scoring == "sparsemixer":
        raise InputError("re-routing policies are not defined for SparseMixer routing (PhiMoE)")
    if rule.scoring == "topk_sigmoid":
        return logits, torch.sigmoid(logits)
    if rule.softmax_after_topk:
        return logits, None
    if rule.scoring == "softmax":
        gate = torch.softmax(logits, dim=-1)
    elif rule.scoring == "sigmoid":
        gate = torch.sigmoid(logits)
    else:
        raise InputError(f"unknown routing scoring {rule.scoring!r} (known: {', '.join(SCORINGS)})")
    select = gate if rule.bias is None else gate + rule.bias.to(gate.device).float().reshape(-1)
    if rule.has_group_limit:
        # DeepSeek-V2 fills forbidden experts with 0 rather than -inf: the same top-k whenever the
        # kept groups hold at least k experts, which every released config satisfies
        select = select.masked_fill(~group_allowed(select, rule), float("-inf"))
    return select, gate


def group_allowed(select: torch.Tensor, rule: RoutingRule) -> torch.Tensor:
    """``[N, E]`` bool: experts in the ``topk_group`` of ``n_group`` groups a token may use.

    Groups are ``n_group`` runs of ``E / n_group`` consecutive experts, ranked by their best
    selection score (softmax: DeepSeek-V2 ``group_limited_greedy``) or by the sum of their best two
    (sigmoid: DeepSeek-V3, arXiv:2412.19437).

    Args:
        select: ``[N, E]`` selection scores (with the bias).
    """
    n, e = select.shape
    per_group = e // rule.n_group
    grouped = select.view(n, rule.n_group, per_group)
    if rule.scoring == "sigmoid":
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.max(dim=-1).values
    keep = group_scores.topk(rule.topk_group, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
    return mask.repeat_interleave(per_group, dim=1)


def topk_choice(select: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]`` ids of the ``k`` best finite selection scores of ``select [N, E]`` (:data:`DROPPED` where
    fewer are finite)."""
    values, ids = select.topk(k, dim=-1)
    return ids.masked_fill(~torch.isfinite(values), DROPPED)


def finish_weights(logits: torch.Tensor, gate: torch.Tensor | None, ids: torch.Tensor, rule: RoutingRule,
                   reference_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The weights experts ``ids [N, k]`` get (:data:`DROPPED` slots weigh 0), float32 ``[N, k]``.

    Gather the gate scores (or the softmax over the chosen logits), normalise when the rule
    renormalises (``norm_topk_prob``, by the ``norm_p``-norm), then apply ``routed_scaling_factor``.
    A softmax over the chosen logits already sums to one; no family renormalises it again.

    Args:
        logits: ``[N, E]`` raw router logits.
        gate: ``[N, E]`` from :func:`rule_scores` (None: softmax over the chosen logits).
        ids: ``[N, k]`` chosen experts.
        reference_ids: where to take the normaliser from. None (the model's rule applied to the
            choice): the chosen experts' own scores. A ``[N, k]`` choice, typically the model's
            unconstrained one: every expert gets exactly the weight the unconstrained router gives
            it, so a re-routed token loses the weight of the experts it lost instead of inflating
            the others (re-routing's ``--routing-weights keep``).
    """
    kept = ids >= 0
    safe = ids.clamp_min(0)
    if gate is None:  # softmax over the chosen logits only (GPT-OSS, Granite-MoE, JetMoE)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        chosen = flat.gather(1, safe).masked_fill(~kept, float("-inf"))
        if reference_ids is None:
            weights = torch.softmax(chosen, dim=-1).nan_to_num(0.0)  # the model's own op: bit-identical
        else:
            base = flat.gather(1, reference_ids.clamp_min(0)).masked_fill(reference_ids < 0, float("-inf"))
            weights = (chosen - torch.logsumexp(base, dim=-1, keepdim=True)).exp().nan_to_num(0.0)
        return weights.masked_fill(~kept, 0.0) * rule.routed_scaling_factor
    weights = gate.gather(1, safe).masked_fill(~kept, 0.0)
    if rule.norm_topk_prob:
        if reference_ids is None:
            norm = weights.norm(p=rule.norm_p, dim=-1, keepdim=True)
        else:
            norm = gate.gather(1, reference_ids.clamp_min(0)).masked_fill(reference_ids < 0, 0.0).norm(
                p=rule.norm_p, dim=-1, keepdim=True)
        weights = weights / norm.clamp_min(1e-20)
    return weights * rule.routed_scaling_factor


def sparsemixer_choose(logits: torch.Tensor, jitter_eps: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's SparseMixer at inference (Liu et al., arXiv:2409.12136): ``[N, E]`` -> ids, weights ``[N, 2]``.

    The first expert is the argmax; its weight is the softmax over the logits within
    ``2 * jitter_eps`` (relative) of the max. The second is the argmax of the rest, weighted the
    same way among the rest.

    Raises:
        InputError: ``top_k != 2`` (the rule is defined for two experts only).
    """
    if top_k != 2:
        raise InputError("sparsemixer routing is defined for top_k == 2 only")

    def pick(scores):
        threshold, best = scores.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=threshold)
        masked = scores.masked_fill(((threshold - scores) / factor) > (2 * jitter_eps), float("-inf"))
        return best, torch.softmax(masked, dim=-1).gather(-1, best)

    first, w_first = pick(logits)
    second, w_second = pick(torch.scatter(logits, -1, first, float("-inf")))
    return torch.cat([first, second], dim=-1), torch.cat([w_first, w_second], dim=-1)
