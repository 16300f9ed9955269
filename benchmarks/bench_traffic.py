"""Traffic benchmark: time the three callers of the traffic model on one big synthetic layer.

One MoE layer of ``--tokens`` tokens × top-``--top-k`` of ``--experts`` experts (planted
co-activation groups, skewed load) is placed on ``G`` GPUs by the greedy load balancer with
``--redundant`` extra replicas (the hot experts get them), then timed through the three callers of
:mod:`routelens.placement.traffic`:

* ``cost``: the cost model, :func:`routelens.placement.score_table` on all tokens;
* ``runner``: the replay's host-side routes, :func:`routelens.runner.plan_routes` on all tokens;
* ``reroute``: the re-routing metrics, :func:`routelens.reroute.routing_stats` over batches of
  ``--batch-tokens`` (the batch ``routelens reroute`` uses).

Each (G, replica policy, caller) is timed ``--repeats`` times and the best wall and process CPU
time are printed (on a shared machine the CPU time is the steadier one; the work is single-threaded);
the numbers only compare code paths on the same machine::

    nice -n 10 .venv/bin/python benchmarks/bench_traffic.py                       # 1M tokens, G = 8 and 64
    nice -n 10 .venv/bin/python benchmarks/bench_traffic.py --tokens 200000 --gpus 8 --redundant 0
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time

import numpy as np
import torch

from routelens.placement import CostModel, greedy_table, make_topology, score_table
from routelens.plan import Plan
from routelens.reroute import routing_stats
from routelens.runner import plan_routes
from routelens.synthetic import synthetic_topk_ids


class _OneLayer:
    """The two trace methods :func:`plan_routes` reads, over in-memory arrays."""

    def __init__(self, layer: str, topk_ids: np.ndarray):
        self.layer, self.ids = layer, topk_ids
        self.weights = np.full(topk_ids.shape, 1.0 / topk_ids.shape[1], dtype=np.float32)

    def topk_ids(self, layer: str) -> np.ndarray:
        return self.ids

    def topk_weights(self, layer: str) -> np.ndarray:
        return self.weights


def best_of(repeats: int, fn) -> tuple[float, float]:
    """``(wall s, process CPU s)``, each the least of ``repeats`` runs of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), min(cpu)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (replica choice prefers the node)")
    parser.add_argument("--redundant", type=int, default=None, help="extra replicas (default: G, one per GPU)")
    parser.add_argument("--policies", nargs="+", default=["nearest-then-least-loaded", "round-robin", "first"])
    parser.add_argument("--callers", nargs="+", default=["cost", "runner", "reroute"])
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the reroute metrics' torch part; everything else is single-threaded numpy

    ids = synthetic_topk_ids(args.tokens, args.experts, args.top_k, num_groups=16, in_group=0.8, skew=1.0, seed=0)
    ids = ids.astype(np.int64)
    load = np.bincount(ids.ravel(), minlength=args.experts)
    stats_takes_policy = "replica_policy" in inspect.signature(routing_stats).parameters
    rows = []
    print(f"{args.tokens:,} tokens × top-{args.top_k} of {args.experts} experts", flush=True)
    for num_gpus in args.gpus:
        redundant = num_gpus if args.redundant is None else args.redundant
        per_node = min(args.gpus_per_node, num_gpus)
        topology = make_topology(num_gpus=num_gpus, gpus_per_node=per_node)
        table = greedy_table(load, num_gpus, redundant)
        cost = CostModel(topology)
        for policy in args.policies if redundant else ["first"]:
            plan = Plan({"layer": table}, args.experts, num_nodes=topology.num_nodes, replica_policy=policy,
                        meta={"topology": topology.to_json()})
            trace = _OneLayer("layer", ids)
            index = np.arange(args.tokens)
            extra = {"replica_policy": policy, "topology": topology} if stats_takes_policy else {}

            def reroute():
                for start in range(0, args.tokens, args.batch_tokens):
                    routing_stats(ids[start:start + args.batch_tokens], args.experts, table, **extra)

            run = {"cost": lambda: score_table(ids, table, cost, policy),
                   "runner": lambda: plan_routes(trace, plan, ["layer"], index),
                   "reroute": reroute}
            for caller in args.callers:
                wall, cpu = best_of(args.repeats, run[caller])
                rows.append({"gpus": num_gpus, "redundant": redundant, "policy": policy, "caller": caller,
                             "wall_s": wall, "cpu_s": cpu})
                print(f"G={num_gpus:3d} R={redundant:3d} {policy:26s} {caller:8s} wall {wall:8.3f} s  cpu {cpu:8.3f} s",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:], "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
