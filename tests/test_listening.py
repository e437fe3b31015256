"""A local run listens on loopback only, for every socket Skill1 opens: the learner ranks' rendezvous (a torch
TCPStore the driver hosts), the collective weight-sync store, gloo's own listeners, the single-rank DeepSpeed
init. torch's TCPStore binds every interface ("*:port", no authentication) whatever host it is given, and gloo
binds the address the hostname resolves to; Ray's own servers are reported, not asserted (they bind 0.0.0.0
and are guarded by Ray's token auth, see cluster/README.md)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def _lan_interface() -> str | None:
    """A non-loopback interface with an IPv4 address: pointing GLOO_SOCKET_IFNAME at it stands in for a machine
    whose hostname resolves to a LAN address (the usual case; here it resolves to 127.0.0.1)."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and not _loopback(a.address) for a in addrs):
            return name
    return None


def test_store_server_listens_only_on_the_host_it_is_given():
    import datetime

    import torch.distributed as dist

    from skill1.weights.wire import serve_store

    store = serve_store("127.0.0.1")  # port 0: a free one, never released between pick and bind
    assert store.port > 0
    assert {ip for ip, port in _listening(os.getpid()) if port == store.port} == {"127.0.0.1"}
    client = dist.TCPStore("127.0.0.1", store.port, is_master=False, timeout=datetime.timedelta(seconds=10))
    client.set("k", "v")
    assert store.get("k") == b"v"


def test_on_a_cluster_a_store_listens_on_the_node_address_only():
    from skill1.weights.wire import serve_store

    lan = next((a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family == socket.AF_INET and not _loopback(a.address)), None)
    if lan is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    store = serve_store(lan)
    assert {ip for ip, port in _listening(os.getpid()) if port == store.port} == {lan}  # not '*' / '::'


def test_the_rendezvous_is_loopback_unless_the_run_can_span_machines(monkeypatch):
    import ray

    from skill1 import runtime

    monkeypatch.setattr(runtime, "_LOCAL_GCS", None)  # joined a cluster (RAY_ADDRESS / ray job submit)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.1.2.3")
    assert runtime.rendezvous_host() == "10.1.2.3"  # peers on other nodes must reach it
    # a fleet placement group on this node alone: every rank and sampler is on this machine
    here = type("Ctx", (), {"get_node_id": lambda self: "node-a"})()
    monkeypatch.setattr(ray, "get_runtime_context", lambda: here)
    for bundles, host in (({0: "node-a", 1: "node-a"}, "127.0.0.1"), ({0: "node-a", 1: "node-b"}, "10.1.2.3")):
        monkeypatch.setattr(ray.util, "placement_group_table", lambda pg, b=bundles: {"bundles_to_node_id": b})
        assert runtime.rendezvous_host(placement_group=object()) == host


def test_single_rank_deepspeed_learner_opens_no_rendezvous_port(small_model_dir):
    """One learner rank on its own needs no TCPStore (DeepSpeed's env:// init used to open one on '*'), and its
    gloo groups listen on loopback; the process's own setting is back afterwards, for a weight channel to peers
    on other machines that it may open later."""
    script = (
        "import json, os, psutil\n"
        "from skill1.config import LearnerConfig\n"
        "from skill1.learner.learner import Learner\n"
        f"Learner({small_model_dir!r}, LearnerConfig(backend='deepspeed', torch_threads=1), seed=0)\n"
        "print('LISTEN ' + json.dumps({'ips': sorted({c.laddr.ip for c in psutil.Process().net_connections('tcp')"
        " if c.status == psutil.CONN_LISTEN}), 'gloo': os.environ.get('GLOO_SOCKET_IFNAME'),"
        " 'nccl': os.environ.get('NCCL_SOCKET_IFNAME')}))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    if _lan_interface():
        env["GLOO_SOCKET_IFNAME"] = _lan_interface()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LISTEN ")), None)
    assert line, f"rc {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(line[len("LISTEN "):])
    assert out["ips"] and all(_loopback(ip) for ip in out["ips"]), out  # gloo's listeners, on loopback
    assert out["gloo"] == env.get("GLOO_SOCKET_IFNAME") and out["nccl"] is None, out


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only(small_model_dir, monkeypatch, capsys):
    """Two DeepSpeed learner ranks (the driver's rendezvous store, gloo) + collective weight sync to a sampler
    (learner rank 0's store, gloo): every listener Skill1 opens in the driver and in its actors is loopback."""
    import ray
    from ray._private import state

    from skill1.config import load_config
    from skill1.runtime import init_ray, start_fleet

    if _lan_interface():  # workers inherit it from the local raylet: gloo would listen on the LAN address
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", _lan_interface())
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = load_config(None, ["name=listen", f"model.path={small_model_dir}", "learner.num_ranks=2",
                             "learner.torch_threads=1", "learner.num_cpus=0", "rollout.num_samplers=1",
                             "rollout.num_cpus_per_sampler=0", "env.num_cpus_per_pool=0", "env.num_pools=1",
                             "learner.weight_sync=collective", "learner.weight_sync_bucket_mb=64"])
    init_ray(cfg)
    fleet = start_fleet(cfg, small_model_dir, None, with_learner=True)
    try:
        acks, others = fleet.push_weights(0)  # the channel carries weights: every listener is up
        assert ray.get(acks) == [0] and ray.get(others)
        actors = state.actors()
        ours, rays = {}, {}
        driver_ray_port = None
        for actor in [*fleet.learners, *fleet.samplers, fleet.worker, *fleet.pools]:
            info = actors[actor._actor_id.hex()]
            driver_ray_port = info["OwnerAddress"]["Port"]  # the driver owns every fleet actor
            sockets = _listening(info["Pid"])
            rays[info["Name"]] = {s for s in sockets if s[1] == info["Address"]["Port"]}  # Ray's core worker
            ours[info["Name"]] = sockets - rays[info["Name"]]
        sockets = _listening(os.getpid())
        rays["driver"] = {s for s in sockets if s[1] == driver_ray_port}
        ours["driver"] = sockets - rays["driver"]
        with capsys.disabled():
            print(f"\nSkill1's listeners: {ours}\nRay's core-worker listeners in the same processes: {rays}")
        assert ours["driver"], "the learner ranks' rendezvous store should be listening in the driver"
        assert ours["listen:learner-0"], "learner rank 0 hosts the weight-sync store"
        exposed = {name: sorted(s for s in socks if not _loopback(s[0])) for name, socks in ours.items()}
        assert not any(exposed.values()), exposed
    finally:
        fleet.shutdown()
        ray.shutdown()
