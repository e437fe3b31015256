"""Pools scale across nodes by config alone: on a simulated 3-node Ray cluster (`ray.cluster_utils.Cluster`,
one raylet per node on this machine), `env.num_pools` + `env.pool_resources` + SPREAD place the pools on the
environment nodes only, spread over both. Runs in a subprocess: it needs its own multi-node Ray instance.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ray_auth import token_env

SCRIPT = r"""
import json, sys
import ray
from ray.cluster_utils import Cluster
from skill1.config import load_config
from skill1.runtime import start_env_pools

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
env_nodes = [cluster.add_node(num_cpus=2, resources={"env_node": 4}) for _ in range(2)]
ray.init(address=cluster.address)
cluster.wait_for_nodes()
pools = start_env_pools(load_config(None, sys.argv[1:]))
stats = ray.get([p.stats.remote() for p in pools], timeout=120)
head = ray.get_runtime_context().get_node_id()
print("RESULT " + json.dumps({"head": head, "env_nodes": [n.node_id for n in env_nodes],
                              "pool_nodes": [s.node for s in stats]}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_pools_spread_over_environment_nodes_by_config(tmp_path):
    args = ["name=placement", "env.num_pools=4", "env.num_cpus_per_pool=0.5", "env.pool_resources.env_node=1",
            "env.pool_scheduling=SPREAD"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=240,
                          env=token_env(tmp_path))  # token auth on, for every raylet of the cluster
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"no result (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    out = json.loads(line[len("RESULT "):])
    assert len(out["pool_nodes"]) == 4
    assert out["head"] not in out["pool_nodes"]  # the custom resource keeps pools off the head node
    assert set(out["pool_nodes"]) == set(out["env_nodes"])  # SPREAD: both environment nodes host pools
