"""RolloutWorker: drives many episodes at once, batching their requests across episodes.

Every tick it gathers the one pending request of each live episode, sends all generations of a stage
to the samplers (an episode always goes to the same sampler: prefix-cache friendly), all resets/steps
to the environment pools, answers retrievals locally from the pinned library version, and feeds the
results back. Environment and sampler calls of a tick run concurrently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import ray

from skill1.agent.episode import EpisodeSettings, Generate, Reset, Retrieve, Step, run_episode
from skill1.library.retrieval import RetrievalSettings, retrieve
from skill1.rollout.sampler import SamplingParams
from skill1.types import Episode, Task


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


class RolloutWorker:
    def __init__(self, tokenizer_path: str, samplers: list, pools: list, library_path: str | None,
                 encoder_name: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.samplers, self.pools = samplers, pools
        self.library_path, self.encoder_name = library_path, encoder_name
        self._encoder = None

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

    def run(self, req: RolloutRequest) -> list[Episode]:
        encoder, library, total_uses = self._encoder_and_library(req.library_version)
        n = len(req.tasks)
        episodes = [run_episode(t, e, g, self.tokenizer, req.settings)
                    for t, e, g in zip(req.tasks, req.episode_ids, req.group_ids)]
        pending = {i: ep.send(None) for i, ep in enumerate(episodes)}
        finished: dict[int, Episode] = {}
        while pending:
            results = self._serve(pending, req, encoder, library, total_uses)
            for i, result in results.items():
                try:
                    pending[i] = episodes[i].send(result)
                except StopIteration as stop:
                    finished[i] = stop.value
                    del pending[i]
        for pool_idx, pool in enumerate(self.pools):
            ray.get(pool.release.remote([i for i in range(n) if i % len(self.pools) == pool_idx]))
        out = [finished[i] for i in range(n)]
        for ep in out:
            ep.library_version = req.library_version or 0
            ep.policy_version = req.policy_version
        return out

    def _serve(self, pending: dict, req: RolloutRequest, encoder, library, total_uses: int) -> dict:
        futures: list[tuple[list[int], ray.ObjectRef]] = []
        gens: dict[tuple, list[int]] = defaultdict(list)
        env: dict[tuple, list[int]] = defaultdict(list)
        retrievals: list[int] = []
        for i, r in pending.items():
            if isinstance(r, Generate):
                gens[(r.stage, r.max_new_tokens, i % len(self.samplers))].append(i)
            elif isinstance(r, (Reset, Step)):
                env[(type(r), i % len(self.pools))].append(i)
            elif isinstance(r, Retrieve):
                retrievals.append(i)
            else:
                raise TypeError(f"episode {i} yielded an unknown request {r!r}")
        for (stage, max_new, s_idx), idx in gens.items():
            params = SamplingParams(req.temperature, req.top_p, max_new)
            futures.append((idx, self.samplers[s_idx].generate.remote([pending[i].prompt_ids for i in idx], params)))
        for (kind, p_idx), idx in env.items():
            pool = self.pools[p_idx]
            if kind is Reset:
                futures.append((idx, pool.reset.remote([(i, pending[i].task) for i in idx])))
            else:
                futures.append((idx, pool.step.remote([(i, pending[i].action) for i in idx])))
        results: dict[int, object] = {}
        if retrievals:  # runs here while the samplers and pools work
            found = retrieve(library, encoder, [pending[i].query for i in retrievals], req.retrieval, total_uses)
            results.update(zip(retrievals, found))
        for idx, values in zip([i for i, _ in futures], ray.get([f for _, f in futures])):
            results.update(zip(idx, values))
        return results
