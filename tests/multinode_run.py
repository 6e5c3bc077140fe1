"""Run a small spec on a two-node Ray cluster (ray.cluster_utils.Cluster, on this machine) and
print its metrics and the nodes the worker actors ran on as JSON. Run in its own process by
tests/test_multinode.py, because it owns its Ray cluster."""

from __future__ import annotations

import json
import sys
import tempfile

import ray
from ray.cluster_utils import Cluster

from harness.engine import run
from tests.conftest import small_config


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    with tempfile.TemporaryDirectory() as tmp:
        from pathlib import Path

        from harness.engine import executor as executor_module

        placed = []

        class Recording(executor_module.RayExecutor):
            def __init__(self, cfg, data):
                super().__init__(cfg, data)
                placed.extend(ray.get([a.node_id.remote() for a in self.actors]))

        cfg = small_config(Path(tmp), "workers.use_ray=true", "workers.num_workers=2", "workers.num_cpus=1",
                           f"workers.address={cluster.address}", "rounds=2")
        result = run(cfg, progress=False, executor_factory=Recording)
    print(json.dumps({"nodes": len(nodes), "actor_nodes": len(set(placed)),
                      "history": [{k: v for k, v in h.items() if k != "wall_round_time"} for h in result.history]}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
