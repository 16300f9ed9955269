"""How routing differs between two analyses of the same architecture (two corpora, two checkpoints).

Per common layer: the shift of the load distribution, the distance between the co-activation
(pair) distributions, role shares, modularity and the agreement of the communities; per expert:
how much its partner distribution changed (``partner_tv``), which ranks the experts whose role
changes most.

All distances are total variation ``0.5 * sum |p - q|`` between probability distributions, in
``[0, 1]`` (0 = identical, 1 = disjoint support).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .analysis import Analysis
from .metrics import ROLE_NAMES, partner_distribution


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """``0.5 * sum |p/sum(p) - q/sum(q)|`` of two non-negative arrays (0 when either is all zero).

    Example:
        >>> total_variation(np.array([1, 1, 0]), np.array([0, 1, 1]))
        0.5
    """
    p, q = np.asarray(p, dtype=np.float64).ravel(), np.asarray(q, dtype=np.float64).ravel()
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def normalized_mutual_information(labels_a: np.ndarray, labels_b: np.ndarray) -> float | None:
    """NMI ``2 I(A; B) / (H(A) + H(B))`` of two partitions (entries ``< 0`` in either are ignored).

    1 = the same communities (up to renaming), 0 = unrelated. None when nothing is left to compare.

    Example:
        >>> normalized_mutual_information(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
    """
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    if a.size == 0:
        return None
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / (pa[:, None] * pb[None, :])[nz])).sum())
    h = entropy(pa) + entropy(pb)
    return 1.0 if h == 0 else float(2.0 * mutual / h)


def compare_analyses(a: Analysis, b: Analysis, top_experts: int = 10) -> dict[str, Any]:
    """Side-by-side metrics of two analyses of the same architecture.

    Args:
        a, b: analyses with the same ``E`` and ``k`` (layers compared: those both analysed).
        top_experts: how many experts to list whose role changed most.

    Returns:
        ``{"layers": [per-layer dict], "experts": [top changed experts], "a": ..., "b": ...}``.
        Per layer: ``load_tv`` (load shift), ``coactivation_tv`` (distance of the distributions of
        co-activated pairs), ``mean_partner_tv``, ``community_nmi`` and the ``(a, b)`` values of
        ``load_max_over_mean``, ``share_specialized``, ``mean_effective_collaborators``,
        ``modularity``. Per expert: ``partner_tv`` (how differently it collaborates), roles,
        specialization and load share in each run, and its top partners in each.

    Raises:
        InputError: different ``E`` or ``k``, or no layer in common.
    """
    if a.num_experts != b.num_experts or a.top_k != b.top_k:
        raise InputError(f"cannot compare runs of different architectures: E={a.num_experts}, k={a.top_k} "
                         f"vs E={b.num_experts}, k={b.top_k}")
    common = sorted(set(a.layers) & set(b.layers))
    if not common:
        raise InputError("the two analyses share no layer: analyse the same --layers in both runs")
    layers, experts = [], []
    for j in common:
        ca, cb = a.counts(j), b.counts(j)
        e = min(ca.shape[0], cb.shape[0])
        ca, cb = ca[:e, :e], cb[:e, :e]
        iu = np.triu_indices(e, 1)
        pa, pb = partner_distribution(ca), partner_distribution(cb)
        partner_tv = 0.5 * np.abs(pa - pb).sum(axis=1)
        both = (np.diag(ca) > 0) & (np.diag(cb) > 0)
        partner_tv = np.where(both, partner_tv, np.nan)
        sa, sb = a.summary(j), b.summary(j)
        row = {
            "index": j,
            "load_tv": total_variation(np.diag(ca), np.diag(cb)),
            "coactivation_tv": total_variation(ca[iu], cb[iu]),
            "mean_partner_tv": float(np.nanmean(partner_tv)) if both.any() else None,
            "community_nmi": normalized_mutual_information(a.score(j, "community")[:e], b.score(j, "community")[:e]),
        }
        for key in ("load_max_over_mean", "share_specialized", "mean_effective_collaborators", "modularity"):
            row[key] = [sa.get(key), sb.get(key)]
        layers.append(row)
        share_a, share_b = np.diag(ca) / max(np.diag(ca).sum(), 1), np.diag(cb) / max(np.diag(cb).sum(), 1)
        role_a, role_b = a.score(j, "role")[:e], b.score(j, "role")[:e]
        spec_a, spec_b = a.score(j, "specialization")[:e], b.score(j, "specialization")[:e]
        top_a, top_b = a.collaborators(j, min(3, e - 1))[:e], b.collaborators(j, min(3, e - 1))[:e]
        for i in range(e):
            if role_a[i] == role_b[i] and (np.isnan(partner_tv[i]) or partner_tv[i] < 1e-12):
                continue  # unchanged
            experts.append({
                "layer": j, "expert": i,
                "partner_tv": None if np.isnan(partner_tv[i]) else float(partner_tv[i]),
                "role": [ROLE_NAMES[int(role_a[i])], ROLE_NAMES[int(role_b[i])]],
                "specialization": [_num(spec_a[i]), _num(spec_b[i])],
                "load_share": [float(share_a[i]), float(share_b[i])],
                "top_partners": [top_a[i].tolist() if role_a[i] else [], top_b[i].tolist() if role_b[i] else []],
            })
    # a role that changes (or an expert appearing/vanishing) ranks first, then the partner shift
    experts.sort(key=lambda x: (x["role"][0] == x["role"][1], -(x["partner_tv"] if x["partner_tv"] is not None else 1.0)))
    return {
        "a": _describe(a), "b": _describe(b), "layers": layers, "experts": experts[:top_experts],
    }


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _describe(analysis: Analysis) -> dict[str, Any]:
    t = analysis.meta.get("trace", {})
    return {"path": t.get("path"), "model": t.get("model"), "num_tokens": analysis.num_tokens,
            "fingerprint": t.get("fingerprint")}


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as the text ``routelens compare`` prints."""
    def pair(values, fmt: str) -> str:
        return "→".join("-" if v is None else fmt.format(v) for v in values)

    a, b = result["a"], result["b"]
    lines = [f"A  {a['path']}  ({a['num_tokens']:,} tokens)", f"B  {b['path']}  ({b['num_tokens']:,} tokens)",
             "per layer (distances are total variation in [0, 1]; X→Y = A→B):",
             f"{'#':>4}  {'load TV':>7}  {'coact TV':>8}  {'partner TV':>10}  {'comm NMI':>8}  {'max/mean':>11}  "
             f"{'spec%':>9}  {'n_eff':>9}  {'Q':>9}"]
    for row in result["layers"]:
        lines.append(
            f"{row['index']:>4}  {row['load_tv']:>7.3f}  {row['coactivation_tv']:>8.3f}  "
            f"{'-' if row['mean_partner_tv'] is None else format(row['mean_partner_tv'], '.3f'):>10}  "
            f"{'-' if row['community_nmi'] is None else format(row['community_nmi'], '.2f'):>8}  "
            f"{pair(row['load_max_over_mean'], '{:.2f}'):>11}  {pair(row['share_specialized'], '{:.0%}'):>9}  "
            f"{pair(row['mean_effective_collaborators'], '{:.1f}'):>9}  {pair(row['modularity'], '{:.2f}'):>9}"
        )
    if result["experts"]:
        lines.append("experts whose role changes most:")
        lines.append(f"{'layer':>5}  {'expert':>6}  {'role A→B':<28}  {'partner TV':>10}  {'spec A→B':>11}  "
                     f"{'load A→B':>13}  top partners A | B")
        for x in result["experts"]:
            lines.append(
                f"{x['layer']:>5}  {x['expert']:>6}  {x['role'][0] + '→' + x['role'][1]:<28}  "
                f"{'-' if x['partner_tv'] is None else format(x['partner_tv'], '.3f'):>10}  "
                f"{pair(x['specialization'], '{:.2f}'):>11}  {pair(x['load_share'], '{:.1%}'):>13}  "
                f"{x['top_partners'][0]} | {x['top_partners'][1]}"
            )
    return "\n".join(lines)
