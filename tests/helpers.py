"""Drive episodes in-process (no Ray): a scripted policy answers generations, a local env the steps."""

from __future__ import annotations

from collections.abc import Callable

from skill1.agent.episode import Generate, Reset, Retrieve, Step, run_episode
from skill1.envs.builtin import HouseholdEnv
from skill1.types import Candidate, Episode, EpisodeSettings, Generated, Task

# the benchmark configs are laid out for GPUs (8 for the 7B, 2 for the 1.5B); these put the same run on one CPU
# machine (README "Running on a GPU cluster"; tests/test_e2e.py trains the WebShop one so, test_config.py validates all)
CPU_OVERRIDES = ["rollout.backend=hf", "rollout.num_samplers=1", "rollout.num_gpus_per_sampler=0",
                 "rollout.num_cpus_per_sampler=0.5", "learner.num_ranks=1", "learner.num_gpus=0", "learner.num_cpus=0.5",
                 "learner.zero_stage=2", "learner.shard_reference=false", "learner.weight_sync=object_store",
                 "placement.mode=none"]


def drive(task: Task, tokenizer, settings: EpisodeSettings, policy: Callable[[Generate], str],
          candidates: list[Candidate] | None = None) -> tuple[Episode, list]:
    """Run one episode; `policy(request) -> text`. Returns the episode and the requests it made."""
    env, requests = HouseholdEnv(max_steps=50), []
    gen = run_episode(task, "ep", "grp", tokenizer, settings)
    request = gen.send(None)
    while True:
        requests.append(request)
        if isinstance(request, Generate):
            text = policy(request)
            ids = tokenizer.encode(text, add_special_tokens=False) or [tokenizer.eos_token_id]
            result = Generated(ids, [-1.0] * len(ids), text)
        elif isinstance(request, Retrieve):
            result = list(candidates or [])
        elif isinstance(request, Reset):
            result = env.reset(request.task)
        else:
            assert isinstance(request, Step)
            result = env.step(request.action)
        try:
            request = gen.send(result)
        except StopIteration as stop:
            return stop.value, requests


def record_weight_syncs(monkeypatch, syncs: list, before: Callable | None = None) -> None:
    """Every weight sync of a run in this process (`Fleet.push_weights`, both schedules) completes before it
    returns, then appends (version, learner digest, sampler digests) to `syncs`: read while nothing else
    can change the weights. `before(fleet, version)`, if given, runs first (what the samplers hold before it)."""
    import ray

    from skill1.runtime import Fleet

    push = Fleet.push_weights

    def push_then_read(fleet, version: int):
        if before is not None:
            before(fleet, version)
        acks, others = push(fleet, version)
        ray.get([*acks, *others])
        syncs.append((version, *fleet.weights_digests()))
        return acks, others

    monkeypatch.setattr(Fleet, "push_weights", push_then_read)
