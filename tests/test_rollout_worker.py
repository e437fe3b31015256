"""The rollout worker's own bookkeeping, in-process and without Ray: samplers and pools are plain objects whose
calls are answered on the spot, and the worker's `ray` is a stand-in that hands those answers back. What is
checked is the worker's, not Ray's: the weights version an episode is stamped with, and the library version
its retrieval reads."""

from __future__ import annotations

import dataclasses
import types
import zlib

import numpy as np
import pytest

import skill1.rollout.worker as worker_module
from skill1.agent.action_grammar import ActionTargets
from skill1.envs.builtin import HouseholdEnv, HouseholdTaskSource
from skill1.envs.pool import EnvPool
from skill1.rollout.protocol import GenerationBatch
from skill1.rollout.worker import RolloutWorker
from skill1.types import EpisodeSettings, Generated, RetrievalSettings, RolloutRequest, SkillDraft, Stage


class _Answered:
    """A call that has already returned: what the worker keeps in flight, waits on and reads."""

    def __init__(self, value):
        self.value = value


class _Actor:
    """`actor.method.remote(*args)` calls the object's method now; the answer is ready at once."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name: str):
        method = getattr(self._obj, name)
        return types.SimpleNamespace(remote=lambda *args, **kwargs: _Answered(method(*args, **kwargs)))


class _Ray:
    """The part of `ray` the worker's loop uses, for calls that are all answered already."""

    @staticmethod
    def wait(refs, num_returns: int = 1, timeout=None):
        return list(refs), []

    @staticmethod
    def get(ref):
        return ref.value

    @staticmethod
    def kill(actor, no_restart: bool = True):
        raise AssertionError("nothing here hangs or dies: the worker should kill no actor")


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setattr(worker_module, "ray", _Ray)


class _Sampler:
    """Answers every prompt with text that holds no action (each step of an episode is then one generation,
    and the environment is never stepped). Its weights move on between calls: call i is answered by weights
    version `versions[i]`."""

    def __init__(self, versions: list[int]):
        self.versions, self.calls = list(versions), []  # calls: (version, number of prompts)
        self.constraints = []  # what each call was handed

    def generate(self, prompts, params, seeds=None, constraints=None) -> GenerationBatch:
        version = self.versions[len(self.calls)]
        self.calls.append((version, len(prompts)))
        self.constraints.append(constraints)
        return GenerationBatch(version, [Generated([7], [-1.0], "no action here") for _ in prompts])


def _settings(use_library: bool, max_steps: int, distill: bool) -> EpisodeSettings:
    return EpisodeSettings(use_library=use_library, enable_query_generation=False, enable_rerank=False,
                           enable_distillation=distill, max_steps=max_steps, history_length=1, max_skill_chars=200,
                           max_new_tokens={s: 8 for s in Stage})


def _request(n: int, settings: EpisodeSettings, library_version: int | None, policy_version: int,
             seed: int = 0) -> RolloutRequest:
    tasks = HouseholdTaskSource().sample("train", n, seed=seed)
    return RolloutRequest(tasks, ["g"] * n, [f"e{seed}-{i}" for i in range(n)], settings,
                          RetrievalSettings(top_k=3, top_m=16, exploration=0.0, similarity_weight=1.0),
                          1.0, 1.0, library_version, policy_version)


def test_an_episode_is_stamped_with_the_oldest_weights_version_that_generated_for_it(no_ray, small_model_dir):
    """Two episodes, one per sampler (an episode keeps its sampler for life); each makes 4 generations (3 steps
    without an action, then distillation) and the sampler's weights change between them. Sampler 0's oldest
    version answers its second call, neither its first nor its last; the driver believes version 1."""
    samplers = [_Sampler([6, 4, 7, 5]), _Sampler([3, 8, 8, 9])]
    pool = EnvPool("builtin", 3, {})
    worker = RolloutWorker(small_model_dir, [_Actor(s) for s in samplers], [_Actor(pool)], None, "")
    episodes = worker.run(_request(2, _settings(use_library=False, max_steps=3, distill=True), None, 1))
    # each sampler answered exactly its own episode's four generations, one prompt per call
    assert [s.calls for s in samplers] == [[(6, 1), (4, 1), (7, 1), (5, 1)], [(3, 1), (8, 1), (8, 1), (9, 1)]]
    assert [len(e.segments) for e in episodes] == [4, 4] and not any(e.env_failed for e in episodes)
    assert [e.policy_version for e in episodes] == [4, 3]  # the oldest; not 7 and 9 (the newest), nor 1


def test_constrained_acting_hands_each_acting_prompt_its_admissible_actions_and_nothing_else(no_ray,
                                                                                              small_model_dir):
    sampler = _Sampler([0] * 8)
    worker = RolloutWorker(small_model_dir, [_Actor(sampler)], [_Actor(EnvPool("builtin", 1, {}))], None, "")
    settings = dataclasses.replace(_settings(use_library=False, max_steps=3, distill=True), constrain_actions=True)
    [episode] = worker.run(_request(1, settings, None, 0))
    acts, distill = sampler.constraints[:3], sampler.constraints[3]
    first = HouseholdEnv(3).reset(episode.task).admissible_actions  # nothing was stepped: the same list each time
    assert all(c == [ActionTargets.from_admissible(first)] for c in acts) and distill == [None]


class _Encoder:
    """A deterministic stand-in for the sentence encoder: a fixed unit vector per text (dim 8)."""

    name, dim = "fake-encoder", 8

    def __init__(self, name: str = "fake-encoder"):
        assert name == self.name

    def encode(self, texts) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def _write_skill(library, encoder, name: str) -> str:
    draft = SkillDraft(f"{name}: a household scenario", f"{name}: look everywhere once")
    report = library.add([draft], encoder.encode([draft.scenario]), iteration=1, source_tasks=["t"],
                         source_episodes=[name], initial_utility=0.5)
    [skill_id] = report.accepted
    return skill_id


def test_retrieval_reads_the_pinned_library_version_not_skills_written_to_the_head_after_it(no_ray, monkeypatch,
                                                                                           small_model_dir, tmp_path):
    import skill1.library
    from skill1.library import SkillLibrary

    monkeypatch.setattr(skill1.library, "Encoder", _Encoder)  # what the worker builds to embed its queries
    encoder = _Encoder()
    library = SkillLibrary.open(str(tmp_path / "library"), encoder.name, encoder.dim)
    pinned_skill = _write_skill(library, encoder, "pinned")
    pinned = library.tag("iter-1")
    written_before = _write_skill(library, encoder, "written before the request")  # the head moves on

    pool = EnvPool("builtin", 1, {})
    worker = RolloutWorker(small_model_dir, [_Actor(_Sampler([0] * 100))], [_Actor(pool)],
                           str(tmp_path / "library"), encoder.name)
    settings = _settings(use_library=True, max_steps=1, distill=False)

    def candidates(version: int, seed: int) -> list[set[str]]:
        return [{c.skill_id for c in e.candidates} for e in worker.run(_request(2, settings, version, 0, seed))]

    # top_k 3 over a library of at most 3 skills: every skill of the version read is a candidate
    assert candidates(pinned, seed=0) == [{pinned_skill}] * 2
    written_after = _write_skill(library, encoder, "written after the first request")  # the pin is in use now
    assert candidates(pinned, seed=1) == [{pinned_skill}] * 2
    # the control: pinned to the head, the same worker does retrieve what was written to it
    assert candidates(library.version, seed=2) == [{pinned_skill, written_before, written_after}] * 2
