"""RolloutWorker: drives many episodes at once, each at its own pace.

Every episode is a generator of requests (generate / retrieve / reset / step). The worker keeps at most
one call in flight per sampler and per environment pool; whatever requests become ready while an actor is
busy go out together in its next call. So generation is batched across episodes (continuous-batching
style) and an episode advances the moment its own result is back: no lock-step across the batch, and one
slow environment delays only the episodes in the same pool call. An episode always uses the same sampler
(prefix-cache friendly); it gets the least-loaded pool when it (re)starts. Retrievals are answered here,
from the pinned library version.

Environment faults: a slot whose environment raised, a pool process that died, or a pool call that ran
past its deadline (`step_timeout_s` per operation in it; the pool is then killed and Ray restarts it)
re-queue the affected episodes from the start, up to `max_env_retries` times each; after that the episode
comes back with `env_failed=True` and is left out of training, never scored 0.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from skill1.agent.episode import EpisodeSettings, Generate, Reset, Retrieve, Step, run_episode
from skill1.envs.pool import EnvFailure
from skill1.library.retrieval import RetrievalSettings, retrieve
from skill1.rollout.sampler import SamplingParams
from skill1.types import Episode, Task


RESTART_BACKOFF_S = 0.5  # how long a lost pool is left alone while Ray brings it back


@dataclass(frozen=True)
class EnvFaultPolicy:
    step_timeout_s: float = 60.0  # per reset/step; a pool call's deadline is this times its operations
    max_env_retries: int = 2  # re-queues of one episode after environment faults


@dataclass(frozen=True)
class RolloutRequest:
    """One batch of episodes to run: tasks with their group and episode ids, and what to pin."""

    tasks: list[Task]
    group_ids: list[str]
    episode_ids: list[str]
    settings: EpisodeSettings
    retrieval: RetrievalSettings
    temperature: float
    top_p: float
    library_version: int | None  # None: no library (or an empty one)
    policy_version: int
    faults: EnvFaultPolicy = EnvFaultPolicy()


@dataclass
class _Live:
    """One running attempt of an episode."""

    index: int  # position in the request
    attempt: int
    gen: Generator
    pool: int
    slot: int  # unique per attempt: a restarted attempt never sees its predecessor's environment
    request: object = None
    dispatched: bool = False
    has_env: bool = False


@dataclass
class _Call:
    actor: tuple[str, int]  # ("sampler" | "pool", index)
    members: list[tuple[int, int]]  # (episode index, attempt)
    deadline: float = float("inf")


@dataclass
class RolloutStats:
    env_faults: int = 0  # environment failures seen (raised, pool died or hung)
    pool_restarts: int = 0
    requeued: int = 0
    failed_episodes: int = 0  # gave up after max_env_retries
    generate_calls: int = 0
    env_calls: int = 0
    fault_log: list[str] = field(default_factory=list)


class RolloutWorker:
    def __init__(self, tokenizer_path: str, samplers: list, pools: list, library_path: str | None,
                 encoder_name: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.samplers, self.pools = samplers, pools
        self.library_path, self.encoder_name = library_path, encoder_name
        self._encoder = None
        self._slots = itertools.count()
        self.last_stats = RolloutStats()

    def _encoder_and_library(self, version: int | None):
        if version is None or self.library_path is None:
            return None, None, 0
        from skill1.library import Encoder, SkillLibrary

        if self._encoder is None:
            self._encoder = Encoder(self.encoder_name)
        head = SkillLibrary.open(self.library_path, self._encoder.name, self._encoder.dim)
        pinned = head.checkout(version)
        total_uses = sum(s.uses for s in pinned.all_skills())
        return self._encoder, pinned, total_uses

    def stats(self) -> RolloutStats:
        return self.last_stats

    def run(self, req: RolloutRequest) -> list[Episode]:
        encoder, library, total_uses = self._encoder_and_library(req.library_version)
        stats = self.last_stats = RolloutStats()
        live: dict[int, _Live] = {}
        finished: dict[int, Episode] = {}
        inflight: dict[ray.ObjectRef, _Call] = {}
        backoff: dict[int, float] = {}  # pool -> monotonic time before which it is still coming back
        recovering: set[int] = set()  # pools lost and not yet heard from since

        def start(index: int, attempt: int) -> None:
            load = defaultdict(int)
            for ep in live.values():
                load[ep.pool] += 1
            pool = min(range(len(self.pools)), key=lambda p: (load[p], p))
            gen = run_episode(req.tasks[index], req.episode_ids[index], req.group_ids[index], self.tokenizer,
                              req.settings)
            ep = live[index] = _Live(index, attempt, gen, pool, next(self._slots))
            advance(ep, None)

        def advance(ep: _Live, result) -> None:
            """Feed a result; answer retrievals on the spot; stop at the next remote request."""
            while True:
                try:
                    ep.request = ep.gen.send(result)
                except StopIteration as stop:
                    finish(ep, stop.value)
                    return
                ep.dispatched = False
                if not isinstance(ep.request, Retrieve):
                    return
                result = retrieve(library, encoder, [ep.request.query], req.retrieval, total_uses)[0]

        def finish(ep: _Live, episode: Episode) -> None:
            del live[ep.index]
            if ep.has_env:  # fire and forget: nothing waits on freeing a slot
                self.pools[ep.pool].release.remote([ep.slot])
            episode.library_version = req.library_version or 0
            episode.policy_version = req.policy_version
            episode.env_restarts = ep.attempt
            finished[ep.index] = episode

        def fault(ep: _Live, why: str) -> None:
            """Drop this attempt; re-queue the episode or give up on it."""
            stats.env_faults += 1
            stats.fault_log.append(f"{req.episode_ids[ep.index]} attempt {ep.attempt}: {why}")
            ep.gen.close()
            del live[ep.index]
            if ep.attempt < req.faults.max_env_retries:
                stats.requeued += 1
                start(ep.index, ep.attempt + 1)
            else:
                stats.failed_episodes += 1
                finished[ep.index] = _failed_episode(req, ep.index, ep.attempt)

        def pool_lost(p: int, why: str) -> None:
            """Every episode with an environment, or a call, in pool `p` starts again (bounded retries)."""
            for ref in [r for r, c in inflight.items() if c.actor == ("pool", p)]:
                del inflight[ref]
            backoff[p] = time.monotonic() + RESTART_BACKOFF_S
            for ep in [e for e in live.values() if e.pool == p and (e.has_env or e.dispatched)]:
                fault(ep, why)

        for i in range(len(req.tasks)):
            start(i, 0)
        while live:
            now = time.monotonic()
            for p in [p for p, t in backoff.items() if t <= now]:
                del backoff[p]
            self._dispatch(live, inflight, req, stats, set(backoff))
            if not inflight and not backoff:
                raise RuntimeError("rollout stalled: live episodes but nothing in flight (worker bug)")
            wake = min([c.deadline for c in inflight.values()] + list(backoff.values()))
            timeout = min(max(0.0, wake - now), 3600.0)
            if not inflight:
                time.sleep(timeout)
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
            for ref in ready:
                call = inflight.pop(ref, None)
                if call is None:  # dropped with a lost pool
                    continue
                try:
                    values = ray.get(ref)
                except RayActorError as exc:  # died, or unavailable while Ray restarts it
                    if call.actor[0] != "pool":
                        raise
                    p = call.actor[1]
                    if p not in recovering:  # a new incident: its environments are gone
                        recovering.add(p)
                        stats.pool_restarts += 1
                        pool_lost(p, f"env pool {p} died ({type(exc).__name__})")
                        continue
                    # the same incident, a call that raced the restart: resets go again after a pause
                    backoff[p] = time.monotonic() + RESTART_BACKOFF_S
                    for index, attempt in call.members:
                        ep = live.get(index)
                        if ep is not None and ep.attempt == attempt:
                            if isinstance(ep.request, Reset):
                                ep.dispatched = False
                            else:
                                fault(ep, f"env pool {p} restarting")
                    continue
                if call.actor[0] == "pool":
                    recovering.discard(call.actor[1])  # it answered: back in service
                for (index, attempt), value in zip(call.members, values):
                    ep = live.get(index)
                    if ep is None or ep.attempt != attempt:
                        continue  # an answer for an attempt that was dropped
                    if isinstance(value, EnvFailure):
                        self.pools[ep.pool].release.remote([ep.slot])
                        fault(ep, value.error)
                        continue
                    if isinstance(ep.request, Reset):
                        ep.has_env = True
                    advance(ep, value)
            now = time.monotonic()
            for ref, call in list(inflight.items()):
                if call.actor[0] == "pool" and now > call.deadline and ref in inflight:
                    p = call.actor[1]
                    ray.kill(self.pools[p], no_restart=False)  # Ray brings the actor back empty
                    recovering.add(p)
                    stats.pool_restarts += 1
                    pool_lost(p, f"env pool {p} hung (call past its {req.faults.step_timeout_s:g} s/op deadline)")
        return [finished[i] for i in range(len(req.tasks))]

    def _dispatch(self, live: dict[int, _Live], inflight: dict, req: RolloutRequest, stats: RolloutStats,
                  restarting: set[int]) -> None:
        busy = {c.actor for c in inflight.values()}  # at most one call in flight per actor
        busy |= {("pool", p) for p in restarting}
        gens: dict[tuple, list[_Live]] = defaultdict(list)
        resets: dict[int, list[_Live]] = defaultdict(list)
        steps: dict[int, list[_Live]] = defaultdict(list)
        for ep in live.values():
            if ep.dispatched:
                continue
            r = ep.request
            if isinstance(r, Generate):
                s = ep.index % len(self.samplers)
                if ("sampler", s) not in busy:
                    gens[(s, r.stage, r.max_new_tokens)].append(ep)
            elif isinstance(r, (Reset, Step)) and ("pool", ep.pool) not in busy:
                (resets if isinstance(r, Reset) else steps)[ep.pool].append(ep)
            elif not isinstance(r, (Reset, Step)):
                raise TypeError(f"episode {ep.index} yielded an unknown request {r!r}")
        calls: list[tuple[tuple[str, int], list[_Live], ray.ObjectRef]] = []
        for (s, _stage, max_new), eps in gens.items():
            params = SamplingParams(req.temperature, req.top_p, max_new)
            ref = self.samplers[s].generate.remote([e.request.prompt_ids for e in eps], params)
            calls.append((("sampler", s), eps, ref))
            stats.generate_calls += 1
        for p, eps in resets.items():
            calls.append((("pool", p), eps, self.pools[p].reset.remote([(e.slot, e.request.task) for e in eps])))
        for p, eps in steps.items():
            calls.append((("pool", p), eps, self.pools[p].step.remote([(e.slot, e.request.action) for e in eps])))
        now = time.monotonic()
        for actor, eps, ref in calls:
            deadline = float("inf")
            if actor[0] == "pool":
                stats.env_calls += 1
                # calls to one actor run one after another: a deadline covers the queue ahead of it too
                queued = [c.deadline for c in inflight.values() if c.actor == actor]
                deadline = max([now, *queued]) + req.faults.step_timeout_s * len(eps)
            inflight[ref] = _Call(actor, [(e.index, e.attempt) for e in eps], deadline)
            for e in eps:
                e.dispatched = True


def _failed_episode(req: RolloutRequest, index: int, attempts: int) -> Episode:
    return Episode(episode_id=req.episode_ids[index], group_id=req.group_ids[index], task=req.tasks[index],
                   segments=[], candidates=[], chosen_skill_id=None, outcome=0.0, success=False, num_steps=0,
                   num_invalid_actions=0, library_version=req.library_version or 0,
                   policy_version=req.policy_version, env_failed=True, env_restarts=attempts)
