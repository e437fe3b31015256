"""RolloutWorker: drives many episodes at once, each at its own pace.

Every episode is a generator of requests (generate / retrieve / reset / step). The worker keeps at most
one call in flight per sampler and per environment pool; whatever requests become ready while an actor is
busy go out together in its next call. So generation is batched across episodes (continuous-batching
style) and an episode advances the moment its own result is back: no lock-step across the batch, and one
slow environment delays only the episodes in the same pool call. An episode gets the least-loaded sampler
and pool when it (re)starts and keeps that sampler for life (its prompts share prefixes: prefix caching).
Retrievals are answered here, from the library version the request pinned.

Two modes over one event loop: `run(request)` returns when that request is done (synchronous training,
evaluation); `submit(requests)` / `poll()` stream — the loop runs on a background thread, requests join
at any time, finished ones are handed back by tag (asynchronous training). Every generation result carries
the weights version that produced it; an episode is stamped with the oldest one it used.

Sampler and environment faults are handled in `skill1.rollout.faults` (a mixin over this event loop's state).
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from skill1.agent.episode import Generate, Reset, Retrieve, Step, run_episode
from skill1.envs.pool import EnvFailure
from skill1.library.retrieval import retrieve
from skill1.rollout.faults import FaultHandling
from skill1.rollout.live import LiveEpisode, PendingCall
from skill1.rollout.protocol import SamplingParams
from skill1.types import Episode, RolloutProgress, RolloutRequest, RolloutStats


@dataclass
class _Job:
    """One submitted request and what has come back of it."""

    req: RolloutRequest
    encoder: object
    library: object
    total_uses: int
    finished: dict[int, Episode] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.req.tasks)

    def episodes(self) -> list[Episode]:
        return [self.finished[i] for i in range(len(self.req.tasks))]


class RolloutWorker(FaultHandling):
    """Runs episodes for one request at a time (`run`, synchronous training and evaluation), or streams:
    `submit` requests at any time, `poll` for the finished ones (asynchronous training). Both drive the same
    event loop; in streaming mode it runs on a background thread of this actor."""

    STREAM_TICK_S = 0.02  # longest a streaming loop waits before it looks at new submissions

    def __init__(self, tokenizer_path: str, samplers: list, pools: list, library_path: str | None,
                 encoder_name: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.samplers, self.pools = samplers, pools
        self.library_path, self.encoder_name = library_path, encoder_name
        self._encoder = None
        self._pinned: dict[int, tuple] = {}  # library version -> (snapshot, total uses), a few recent ones
        self._slots = itertools.count()
        self._keys = itertools.count()
        self.last_stats = self._stats = RolloutStats()
        self._live: dict[int, LiveEpisode] = {}
        self._jobs: dict[int, _Job] = {}
        self._inflight: dict[ray.ObjectRef, PendingCall] = {}
        self._backoff: dict[int, float] = {}  # pool -> monotonic time before which it is still coming back
        self._recovering: set[int] = set()  # pools lost and not yet heard from since
        self._busy: dict[str, float] = defaultdict(float)
        self._sampler_down: set[int] = set()  # lost samplers, until they hold the current weights again
        self._weights_ref = None  # the newest weights packet (object store), for a restarted sampler
        self._weights_learner = None  # or the learner to ask for one (other transports)
        # streaming
        self._incoming: queue.Queue = queue.Queue()
        self._completed: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None

    # ---------------------------------------------------------------- public API
    def stats(self) -> RolloutStats:
        return self.last_stats

    def busy(self) -> dict[str, float]:
        """Seconds each sampler / pool has had a call in flight, cumulative ("sampler-0", "pool-1", ...)."""
        return dict(self._busy)

    def run(self, req: RolloutRequest) -> list[Episode]:
        """Run every episode of `req` and return them in request order. Not while streaming: `stop()` first."""
        if self._thread is not None:
            raise RuntimeError("run() called on a worker that is streaming; use submit/poll, or stop() it first")
        self.last_stats = self._stats = RolloutStats()
        key = self._add(req)
        while not self._jobs[key].complete:
            self._tick(streaming=False)
        return self._jobs.pop(key).episodes()

    def submit(self, requests: list[RolloutRequest]) -> int:
        """Queue requests for the streaming loop (started on first use); returns how many are queued."""
        if self._error is not None:
            raise RuntimeError("the rollout loop failed") from self._error
        for r in requests:
            self._incoming.put(r)
        if self._thread is None:
            self._thread = threading.Thread(target=self._stream, name="rollout-loop", daemon=True)
            self._thread.start()
        return len(requests)

    def poll(self, wait_s: float = 1.0) -> RolloutProgress:
        """Finished requests since the last poll; waits up to `wait_s` for the first one."""
        completed = []
        try:
            completed.append(self._completed.get(timeout=wait_s))
            while True:
                completed.append(self._completed.get_nowait())
        except queue.Empty:
            pass
        if self._error is not None and not completed:
            raise RuntimeError("the rollout loop failed") from self._error
        stats = dataclasses.replace(self._stats, fault_log=list(self._stats.fault_log))  # a copy: the loop runs on
        return RolloutProgress(completed, stats, dict(self._busy), len(self._live))

    def stop(self, timeout_s: float = 30.0) -> None:
        """End streaming: stop the loop thread, drop what it still had (live episodes, their environment slots,
        queued and finished-but-unpolled requests, a loop error), and leave the worker as new, so `run()`
        works again and a later `submit()` starts a fresh loop. Calls already sent to samplers and pools
        are left to finish; their answers are ignored. Raises if the loop does not end within `timeout_s`
        (the worker then stays in streaming mode). A no-op when not streaming (a `run` may be under way)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"the rollout loop did not stop within {timeout_s:g} s")
        abandoned: dict[int, list[int]] = defaultdict(list)
        for ep in self._live.values():
            ep.gen.close()
            abandoned[ep.pool].append(ep.slot)  # whatever it holds there, or will once a reset in flight lands
        for p, slots in abandoned.items():  # sent after any call in flight to that pool: frees what it creates
            self.pools[p].release.remote(slots)
        self._live.clear()
        self._jobs.clear()
        for q in (self._incoming, self._completed):
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        self._error = None
        self._thread = None
        self._stop.clear()

    # ---------------------------------------------------------------- the loop
    def _stream(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    while True:
                        self._add(self._incoming.get(block=not self._live, timeout=0.1))
                except queue.Empty:
                    pass
                if self._live:
                    self._tick(streaming=True)
        except BaseException as exc:  # surfaces on the next submit/poll
            self._error = exc

    def _pinned_library(self, version: int | None):
        if version is None or self.library_path is None:
            return None, None, 0
        if version not in self._pinned:
            from skill1.library import Encoder, SkillLibrary

            if self._encoder is None:
                self._encoder = Encoder(self.encoder_name)
            head = SkillLibrary.open(self.library_path, self._encoder.name, self._encoder.dim)
            pinned = head.checkout(version)
            self._pinned[version] = (pinned, sum(s.uses for s in pinned.all_skills()))
            for old in sorted(self._pinned)[:-4]:  # staleness keeps only a few versions in use
                del self._pinned[old]
        library, total_uses = self._pinned[version]
        return self._encoder, library, total_uses

    def _add(self, req: RolloutRequest) -> int:
        key = next(self._keys)
        self._jobs[key] = _Job(req, *self._pinned_library(req.library_version))
        for i in range(len(req.tasks)):
            self._start(key, i, 0)
        if self._jobs[key].complete:  # an empty request
            self._done(key)
        return key

    def _done(self, job_key: int) -> None:
        if self._thread is not None:
            job = self._jobs.pop(job_key)
            self._completed.put((job.req.tag, job.episodes()))

    def _start(self, job_key: int, index: int, attempt: int) -> None:
        pool_load, sampler_load = defaultdict(int), defaultdict(int)
        for ep in self._live.values():
            pool_load[ep.pool] += 1
            sampler_load[ep.sampler] += 1
        pool = min(range(len(self.pools)), key=lambda p: (pool_load[p], p))
        # an episode stays on one sampler for its whole life (its prompts share prefixes: prefix caching)
        sampler = self._least_loaded_sampler(sampler_load)
        req = self._jobs[job_key].req
        gen = run_episode(req.tasks[index], req.episode_ids[index], req.group_ids[index], self.tokenizer,
                          req.settings)
        key = next(self._keys)
        ep = self._live[key] = LiveEpisode(job_key, index, attempt, gen, pool, sampler, next(self._slots), key)
        self._advance(ep, None)

    def _advance(self, ep: LiveEpisode, result) -> None:
        """Feed a result; answer retrievals on the spot; stop at the next remote request."""
        job = self._jobs[ep.job]
        while True:
            try:
                ep.request = ep.gen.send(result)
            except StopIteration as stop:
                self._finish(ep, stop.value)
                return
            ep.dispatched = False
            if not isinstance(ep.request, Retrieve):
                return
            result = retrieve(job.library, job.encoder, [ep.request.query], job.req.retrieval, job.total_uses)[0]

    def _finish(self, ep: LiveEpisode, episode: Episode) -> None:
        del self._live[ep.key]
        if ep.has_env:  # fire and forget: nothing waits on freeing a slot
            self.pools[ep.pool].release.remote([ep.slot])
        job = self._jobs[ep.job]
        episode.library_version = job.req.library_version or 0
        # the oldest weights that generated any of its tokens: staleness is counted from there
        episode.policy_version = job.req.policy_version if ep.min_version is None else ep.min_version
        episode.env_restarts = ep.attempt
        job.finished[ep.index] = episode
        if job.complete:
            self._done(ep.job)

    def _tick(self, streaming: bool) -> None:
        """One turn of the event loop: send what is ready, wait for something to come back, handle it."""
        now = time.monotonic()
        for p in [p for p, t in self._backoff.items() if t <= now]:
            del self._backoff[p]
        self._dispatch(set(self._backoff))
        if not self._inflight and not self._backoff:
            raise RuntimeError("rollout stalled: live episodes but nothing in flight (worker bug)")
        wake = min([c.deadline for c in self._inflight.values()] + list(self._backoff.values()))
        timeout = min(max(0.0, wake - now), self.STREAM_TICK_S if streaming else 3600.0)
        if not self._inflight:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=0)
        for ref in ready:
            call = self._inflight.pop(ref, None)
            if call is None:  # dropped with a lost pool
                continue
            if call.actor[0] != "rejoin":
                self._busy[f"{call.actor[0]}-{call.actor[1]}"] += time.monotonic() - call.sent
            self._handle(ref, call)
        self._kill_hung_pools()

    def _handle(self, ref: ray.ObjectRef, call: PendingCall) -> None:
        try:
            values = ray.get(ref)
        except RayActorError as exc:  # died, or unavailable while Ray restarts it
            self._actor_lost(call, exc)
            return
        if call.actor[0] == "rejoin":
            self._sampler_down.discard(call.actor[1])  # holds the current weights: back in service
            return
        if call.actor[0] == "pool":
            self._recovering.discard(call.actor[1])  # it answered: back in service
        else:  # a GenerationBatch: every output of one call comes from one weights version
            version, values = values.version, values.outputs
        for (key, attempt), value in zip(call.members, values):
            ep = self._live.get(key)
            if ep is None or ep.attempt != attempt:
                continue  # an answer for an attempt that was dropped
            if isinstance(value, EnvFailure):
                p = ep.pool
                if value.pool_restarted and p not in self._recovering:
                    # died between calls and came back empty before anything of ours failed: a pool loss
                    self._stats.pool_restarts += 1
                    self._pool_lost(p, f"env pool {p} restarted (its environments are gone)")
                    continue
                self.pools[p].release.remote([ep.slot])
                self._fault(ep, value.error)
                continue
            if isinstance(ep.request, Reset):
                ep.has_env = True
            elif isinstance(ep.request, Generate):
                ep.min_version = version if ep.min_version is None else min(ep.min_version, version)
            self._advance(ep, value)

    def _dispatch(self, restarting: set[int]) -> None:
        busy = {c.actor for c in self._inflight.values()}  # at most one call in flight per actor
        busy |= {("pool", p) for p in restarting} | {("sampler", s) for s in self._sampler_down}
        gens: dict[tuple, list[LiveEpisode]] = defaultdict(list)
        resets: dict[int, list[LiveEpisode]] = defaultdict(list)
        steps: dict[int, list[LiveEpisode]] = defaultdict(list)
        for ep in self._live.values():
            if ep.dispatched:
                continue
            r = ep.request
            if isinstance(r, Generate):
                if ("sampler", ep.sampler) not in busy:
                    req = self._jobs[ep.job].req
                    gens[(ep.sampler, r.stage, r.max_new_tokens, req.temperature, req.top_p)].append(ep)
            elif isinstance(r, (Reset, Step)) and ("pool", ep.pool) not in busy:
                (resets if isinstance(r, Reset) else steps)[ep.pool].append(ep)
            elif not isinstance(r, (Reset, Step)):
                raise TypeError(f"episode {ep.key} yielded an unknown request {r!r}")
        calls: list[tuple[tuple[str, int], list[LiveEpisode], ray.ObjectRef]] = []
        for (s, _stage, max_new, temperature, top_p), eps in gens.items():
            params = SamplingParams(temperature, top_p, max_new)
            ref = self.samplers[s].generate.remote([e.request.prompt_ids for e in eps], params,
                                                   [e.request.seed for e in eps],
                                                   [e.request.constraint for e in eps])
            calls.append((("sampler", s), eps, ref))
            self._stats.generate_calls += 1
        for p, eps in resets.items():
            calls.append((("pool", p), eps, self.pools[p].reset.remote([(e.slot, e.request.task) for e in eps])))
        for p, eps in steps.items():
            calls.append((("pool", p), eps, self.pools[p].step.remote([(e.slot, e.request.action) for e in eps])))
        now = time.monotonic()
        for actor, eps, ref in calls:
            deadline = float("inf")
            if actor[0] == "pool":
                self._stats.env_calls += 1
                # calls to one actor run one after another: a deadline covers the queue ahead of it too
                timeout = max(self._jobs[e.job].req.faults.step_timeout_s for e in eps)
                queued = [c.deadline for c in self._inflight.values() if c.actor == actor]
                deadline = max([now, *queued]) + timeout * len(eps)
            self._inflight[ref] = PendingCall(actor, [(e.key, e.attempt) for e in eps], deadline, now)
            for e in eps:
                e.dispatched = True
