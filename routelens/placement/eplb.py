"""DeepSeek's Expert-Parallelism Load Balancer (EPLB), re-implemented in numpy from its description.

EPLB (github.com/deepseek-ai/EPLB, used by DeepSeek-V3 serving, SGLang and vLLM) balances expert
*load* only: it duplicates heavy experts into redundant slots, then packs the physical experts onto
GPUs so every GPU gets about the same number of tokens. It ignores which experts a token uses
together. Two policies:

- **hierarchical** (``num_groups % num_nodes == 0``): pack expert groups onto nodes evenly, replicate
  experts inside each node, then pack the node's physical experts onto its GPUs;
- **global** (otherwise): replicate globally, then pack all physical experts onto all GPUs.

Each step is one function below, composed top to bottom like the original. Ties break the same way
(heaviest first; the lightest non-full pack, lowest index on ties; the expert with the highest
load per replica, lowest index on ties), so the README's worked example comes out identical
(``tests/placement/test_eplb.py``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack ``n`` weighted items into ``num_packs`` packs of exactly ``n / num_packs`` items each.

    Greedy: items from heaviest to lightest, each into the lightest pack that still has room.

    Args:
        weight: ``[X, n]`` weight of each item, one packing problem per row.
        num_packs: packs per row; must divide ``n``.

    Returns:
        ``(pack_index [X, n], rank_in_pack [X, n])`` int64.
    """
    weight = np.asarray(weight, dtype=np.float64)
    rows, n = weight.shape
    if n % num_packs:
        raise InputError(f"cannot pack {n} items into {num_packs} packs of equal size")
    per_pack = n // num_packs
    if per_pack == 1:
        return np.broadcast_to(np.arange(n), (rows, n)).copy(), np.zeros((rows, n), dtype=np.int64)
    pack_index = np.full((rows, n), -1, dtype=np.int64)
    rank_in_pack = np.full((rows, n), -1, dtype=np.int64)
    for i in range(rows):
        pack_weight = np.zeros(num_packs)
        pack_items = np.zeros(num_packs, dtype=np.int64)
        for item in np.argsort(-weight[i], kind="stable"):
            open_weight = np.where(pack_items < per_pack, pack_weight, np.inf)
            pack = int(np.argmin(open_weight))
            pack_index[i, item] = pack
            rank_in_pack[i, item] = pack_items[pack]
            pack_weight[pack] += weight[i, item]
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_physical: int,
                      max_replicas: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give ``num_physical - num_logical`` extra replicas to the experts with the highest load per replica.

    Args:
        weight: ``[X, num_logical]`` load of each logical expert.
        num_physical: physical experts after replication (``>= num_logical``).
        max_replicas: cap on an expert's replicas (routelens passes the GPU count, so that a plan
            with no expert twice on a GPU exists); None, as in EPLB, for no cap.

    Returns:
        ``phy2log [X, num_physical]`` logical expert of each physical one (the first
        ``num_logical`` are the experts themselves), ``rank [X, num_physical]`` replica index,
        ``logcnt [X, num_logical]`` replicas per logical expert.
    """
    weight = np.asarray(weight, dtype=np.float64)
    rows, num_logical = weight.shape
    if num_physical < num_logical:
        raise InputError(f"{num_physical} physical experts cannot hold {num_logical} logical ones")
    if max_replicas is not None and num_physical > num_logical * max_replicas:
        raise InputError(f"{num_physical} physical experts cannot hold {num_logical} logical ones "
                         f"at most {max_replicas} times each")
    phy2log = np.tile(np.arange(num_physical, dtype=np.int64), (rows, 1))
    rank = np.zeros((rows, num_physical), dtype=np.int64)
    logcnt = np.ones((rows, num_logical), dtype=np.int64)
    every_row = np.arange(rows)
    for i in range(num_logical, num_physical):
        per_replica = weight / logcnt
        if max_replicas is not None:
            per_replica = np.where(logcnt < max_replicas, per_replica, -np.inf)
        heaviest = np.argmax(per_replica, axis=-1)
        phy2log[:, i] = heaviest
        rank[:, i] = logcnt[every_row, heaviest]
        logcnt[every_row, heaviest] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_hierarchical(weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int,
                           num_gpus: int, max_replicas: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's hierarchical policy: groups → nodes, replicate inside nodes, physical experts → GPUs.

    Args:
        weight: ``[L, E]`` load of each logical expert per layer.
        num_physical: physical experts per layer (multiple of ``num_gpus``).
        num_groups: expert groups (contiguous blocks of ``E / num_groups`` experts); a multiple
            of ``num_nodes``.
        num_nodes, num_gpus: cluster shape (``num_gpus`` a multiple of ``num_nodes``).
        max_replicas: cap on an expert's replicas (:func:`replicate_experts`).

    Returns:
        ``phy2log [L, P]``, ``phyrank [L, P]``, ``logcnt [L, E]``; physical expert ``p`` lives on
        GPU ``p // (P / num_gpus)``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    num_layers, num_logical = weight.shape
    for what, ok in (
        (f"{num_logical} experts in {num_groups} groups", num_logical % num_groups == 0),
        (f"{num_groups} groups on {num_nodes} nodes", num_groups % num_nodes == 0),
        (f"{num_gpus} GPUs on {num_nodes} nodes", num_gpus % num_nodes == 0),
        (f"{num_physical} physical experts on {num_gpus} GPUs", num_physical % num_gpus == 0),
    ):
        if not ok:
            raise InputError(f"EPLB hierarchical needs an even split: {what}")
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    logical_per_node = num_logical // num_nodes

    # 1. pack groups onto nodes; relabel logical experts so node n owns a contiguous block ("mlog")
    tokens_per_group = weight.reshape(num_layers, num_groups, group_size).sum(-1)
    group_pack, group_rank = balanced_packing(tokens_per_group, num_nodes)
    log2mlog = (((group_pack * groups_per_node + group_rank) * group_size)[:, :, None]
                + np.arange(group_size)).reshape(num_layers, num_logical)
    mlog2log = _inverse(log2mlog)

    # 2. replicate experts inside each node: [L * N, E / N]
    tokens_per_mlog = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, logical_per_node)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_physical // num_nodes, max_replicas)

    # 3. pack each node's physical experts onto its GPUs by load per replica
    tokens_per_phy = np.take_along_axis(tokens_per_mlog / mlogcnt, phy2mlog, axis=1)
    pack, rank_in_pack = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    phy2pphy = pack * per_gpu + rank_in_pack
    pphy2phy = _inverse(phy2pphy)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1)
                 + np.arange(0, num_logical, logical_per_node)[None, :, None]).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, axis=1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int,
                      num_gpus: int, max_replicas: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point: hierarchical when ``num_groups % num_nodes == 0``, else global.

    Args:
        weight: ``[L, E]`` load statistics of the logical experts.
        num_physical: physical experts (replicas) per layer, a multiple of ``num_gpus``.
        num_groups: expert groups of the model (DeepSeek-V3: 8; 1 for models without groups).
        num_nodes, num_gpus: cluster shape.
        max_replicas: cap on an expert's replicas (None, as in EPLB: no cap).

    Returns:
        ``phy2log [L, P]`` logical expert of each physical slot (GPU ``g`` holds slots
        ``[g·P/G, (g+1)·P/G)``), ``log2phy [L, E, R]`` physical slots of each expert (``-1``
        padded), ``logcnt [L, E]`` replicas per expert.

    Example (the EPLB README's: 2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs):
        >>> w = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        ...               [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
        >>> rebalance_experts(w, 16, 4, 2, 8)[0].tolist()[0]
        [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1]
    """
    weight = np.asarray(weight, dtype=np.float64)
    num_layers, num_logical = weight.shape
    if num_groups >= 1 and num_groups % num_nodes == 0 and num_logical % num_groups == 0:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_physical, num_groups, num_nodes, num_gpus,
                                                          max_replicas)
    else:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_physical, 1, 1, num_gpus, max_replicas)
    width = int(logcnt.max())
    log2phy = np.full((num_layers, num_logical * width), -1, dtype=np.int64)
    np.put_along_axis(log2phy, phy2log * width + phyrank, np.broadcast_to(np.arange(num_physical), phy2log.shape), axis=1)
    return phy2log, log2phy.reshape(num_layers, num_logical, width), logcnt
