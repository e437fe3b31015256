"""Drive a VLLMSampler through a fixed scenario and write its outputs as JSON (run by test_vllm_sampler.py).

Runs in whichever interpreter has vLLM (the GPU install, or .venv-vllm on CPU); the test compares the
outputs with transformers in its own interpreter. vLLM spawns its engine processes: keep the main guard.

    python tests/vllm_check.py MODEL_DIR REQUEST.json OUT.json
REQUEST: {"prompts": [[ids]], "packets": ["v1.npz", ...]} (packets from `save_packet`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

import numpy as np


def save_packet(packet, path: str) -> None:
    meta = dict(version=packet.version, names=packet.names, shapes=[list(s) for s in packet.shapes],
                dtype=packet.dtype)
    np.savez(path, flat=np.asarray(packet.flat), meta=np.array(json.dumps(meta)))


def read_packet(path: str):
    from skill1.types import WeightsPacket

    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        return WeightsPacket(meta["version"], meta["names"], [tuple(s) for s in meta["shapes"]], meta["dtype"],
                             z["flat"])


def run(model_dir: str, request: dict) -> dict:
    from skill1.rollout.protocol import SamplingParams
    from skill1.rollout.vllm import VLLMSampler

    prompts = request["prompts"]
    t0 = time.perf_counter()
    # 64 KiB pieces: every load goes in many staging RPCs, so reassembly is what the phases below test
    sampler = VLLMSampler(model_dir, seed=0, load_bucket_bytes=request.get("load_bucket_bytes", 64 * 2**10))
    out = {"startup_s": time.perf_counter() - t0, "eos_ids": sampler.eos_ids, "phases": []}

    def gen(temperature, top_p, max_new, ps=prompts, seeds=None):
        params = SamplingParams(temperature, top_p, max_new)
        return [asdict(g) for g in sampler.generate(ps, params, seeds)]

    def phase(full: bool):
        ph = {"version": sampler.version, "t1": gen(1.0, 1.0, 12), "t07": gen(0.7, 1.0, 12),
               "t07_p09": gen(0.7, 0.9, 12), "greedy": gen(0.0, 1.0, 10)}
        if full:  # the weight-independent checks, once
            sampler.rng = np.random.default_rng(123)
            ph["t1_a"] = gen(1.0, 1.0, 12)
            sampler.rng = np.random.default_rng(123)
            ph["t1_b"] = gen(1.0, 1.0, 12)  # the same generated request seeds: the same draws
            n = len(prompts)
            ph["seeded"] = gen(1.0, 1.0, 12, seeds=list(range(n)))
            ph["seeded_rev"] = gen(1.0, 1.0, 12, ps=prompts[::-1], seeds=list(range(n))[::-1])
            ph["max3"] = gen(1.0, 1.0, 3)
        return ph

    out["phases"].append(phase(full=True))
    for path in request["packets"]:
        t = time.perf_counter()
        sampler.load_weights(read_packet(path))
        out.setdefault("load_s", []).append(time.perf_counter() - t)
        out.setdefault("load_rpcs", []).append(sampler.load_rpcs)
        out["phases"].append(phase(full=False))
    sampler.close()
    return out


if __name__ == "__main__":
    model_dir, request_path, out_path = sys.argv[1:4]
    with open(request_path) as f:
        result = run(model_dir, json.load(f))
    with open(out_path, "w") as f:
        json.dump(result, f)
