"""Episodes in one process, without Ray: a sampler, an env per episode, generations batched across episodes.

For checks that need a policy's behaviour but not the machinery (the warm start's competence check, its
test, notebooks). Training and evaluation go through `rollout.worker.RolloutWorker`, which drives the
same `run_episode` generators over Ray actors with fault handling.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from skill1.agent.episode import Generate, Reset, Retrieve, Step, run_episode
from skill1.rollout.protocol import SamplingParams
from skill1.types import Candidate, Episode, EpisodeSettings, Task


def answer(request: Retrieve | Reset | Step, env, retrieve: Callable[[str], list[Candidate]]):
    """What an episode's non-generation request gets back in-process: candidates, or the env's reply."""
    if isinstance(request, Retrieve):
        return retrieve(request.query)
    if isinstance(request, Reset):
        return env.reset(request.task)
    return env.step(request.action)


def run_local(tasks: list[Task], tokenizer, sampler, settings: EpisodeSettings, make_env: Callable[[], object],
              retrieve: Callable[[Task, str], list[Candidate]] = lambda task, query: [],
              temperature: float = 0.0, seed: int = 0) -> list[Episode]:
    """Play every task once; returns the episodes in task order. `retrieve(task, query)` answers retrievals."""
    live = {}
    for i, task in enumerate(tasks):
        gen = run_episode(task, f"local-{seed}-{i}", task.task_id, tokenizer, settings)
        live[i] = (gen, make_env(), gen.send(None))
    done: dict[int, Episode] = {}
    while live:
        # answer every non-generation request at once, then batch the generations per stage
        for i, (gen, env, req) in list(live.items()):
            while not isinstance(req, Generate):
                result = answer(req, env, lambda query, task=tasks[i]: retrieve(task, query))
                try:
                    req = gen.send(result)
                except StopIteration as stop:
                    done[i] = stop.value
                    del live[i]
                    break
            else:
                live[i] = (gen, env, req)
        by_budget: dict[int, list[int]] = {}
        for i, (_, _, req) in live.items():
            by_budget.setdefault(req.max_new_tokens, []).append(i)
        for budget, idx in by_budget.items():
            reqs = [live[i][2] for i in idx]
            outs = sampler.generate([r.prompt_ids for r in reqs], SamplingParams(temperature, 1.0, budget),
                                    seeds=[zlib.crc32(f"{seed}/{r.seed}".encode()) for r in reqs],
                                    constraints=[r.constraint for r in reqs])
            for i, out in zip(idx, outs):
                gen, env, _ = live[i]
                try:
                    live[i] = (gen, env, gen.send(out))
                except StopIteration as stop:
                    done[i] = stop.value
                    del live[i]
    return [done[i] for i in range(len(tasks))]
