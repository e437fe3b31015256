"""Data that crosses a boundary: Ray actor calls, the library schema, trajectories, training batches.

Plain dataclasses so that they pickle cheaply through the Ray object store and read well in tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Stage(str, enum.Enum):
    """Which part of the episode a generated segment belongs to; decides its credit."""

    QUERY = "query"  # selection, part 1: the retrieval query
    RERANK = "rerank"  # selection, part 2: the chosen candidate id
    ACT = "act"  # utilization: one environment action
    DISTILL = "distill"  # distillation: the new skill

    @property
    def is_selection(self) -> bool:
        return self in (Stage.QUERY, Stage.RERANK)


@dataclass
class Skill:
    """One row of the skill library (the schema of SKILL1.md)."""

    id: str
    scenario: str  # when the skill applies; this text is embedded
    strategy: str  # what to do
    utility: float = 0.0  # EMA of outcomes of episodes that used it
    uses: int = 0
    wins: int = 0
    created_iteration: int = 0
    source_task: str = ""
    source_episode: str = ""
    parent_ids: list[str] = field(default_factory=list)
    status: str = "active"  # active | retired


@dataclass
class Candidate:
    """A retrieved skill as the policy sees it, with the scores that ranked it."""

    skill_id: str
    scenario: str
    strategy: str
    utility: float
    uses: int
    similarity: float  # cosine(query, scenario)
    score: float  # retrieval score (greedy or UCB), what ranked it


@dataclass
class SkillDraft:
    """A skill as parsed from the policy's distillation output, before admission."""

    scenario: str
    strategy: str


@dataclass
class Task:
    """One task instance; `payload` is environment-specific (a seed, a game path, a goal index)."""

    task_id: str
    env: str
    family: str
    description: str
    payload: dict = field(default_factory=dict)


@dataclass
class Segment:
    """One generation of the policy: context tokens (mask 0) then generated tokens (mask 1)."""

    stage: Stage
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # behaviour log-probs of response_ids, one per token
    text: str  # decoded response
    valid: bool = True  # did it parse into what the stage needs


@dataclass
class Episode:
    """A finished select → utilize → distill episode, everything the learner and the library need."""

    episode_id: str
    group_id: str  # the G rollouts of one task share it
    task: Task
    segments: list[Segment]
    candidates: list[Candidate]  # what retrieval offered (empty without a library)
    chosen_skill_id: str | None
    outcome: float  # task outcome r in [0, 1]
    success: bool
    num_steps: int
    num_invalid_actions: int
    draft: SkillDraft | None = None  # parsed distillation, if it parsed
    draft_rejection: str | None = None  # why it did not, if it did not
    query: str = ""
    parse_errors: dict[str, int] = field(default_factory=dict)  # "act/inadmissible" -> count
    library_version: int = 0
    policy_version: int = 0
    env_failed: bool = False  # the environment kept failing: left out of training, never scored 0
    env_restarts: int = 0  # times this episode was re-queued after an environment fault

    def tokens_generated(self) -> int:
        return sum(len(s.response_ids) for s in self.segments)


@dataclass
class RolloutGroup:
    """The G finished episodes of one task, waiting in the asynchronous buffer (and in checkpoints)."""

    seq: int  # group number in the task plan
    episodes: list[Episode]
    behaviour_version: int  # the oldest weights that generated for any of its episodes
    library_iteration: int = 0  # the library tag iter-k it retrieved from (0: the start)


@dataclass
class TrainSample:
    """One segment, ready for the learner: its tokens, which of them learn, and their advantage."""

    input_ids: list[int]
    prompt_len: int  # tokens [0, prompt_len) are context; the rest were generated
    old_logprobs: list[float]  # behaviour log-probs of input_ids[prompt_len:]
    advantage: float
    stage: Stage
    policy_version: int = 0  # weights that sampled it (staleness = learner version - this)
    proximal_logprobs: list[float] | None = None  # set inside the learner when it recomputes them (async)


@dataclass
class WeightsPacket:
    """All policy weights in one flat buffer: one object-store put and one call per sync."""

    version: int
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtype: str
    flat: object  # 1-D numpy array holding every parameter back to back (bf16 viewed as int16)

    @property
    def num_bytes(self) -> int:
        return int(self.flat.nbytes)


@dataclass(frozen=True)
class EnvFaultPolicy:
    """How a rollout treats environment faults (part of every rollout request)."""

    step_timeout_s: float = 60.0  # per reset/step; a pool call's deadline is this times its operations
    max_env_retries: int = 2  # re-queues of one episode after environment faults


# --- what a rollout takes and returns (driver ↔ rollout worker ↔ samplers) ------------------------------------------


@dataclass
class Generated:
    """One completion: its token ids, the behaviour log-prob of each, and its text."""

    response_ids: list[int]
    logprobs: list[float]
    text: str


@dataclass(frozen=True)
class EpisodeSettings:
    """What one episode needs to know; built once per iteration from the config."""

    use_library: bool
    enable_query_generation: bool
    enable_rerank: bool
    enable_distillation: bool
    max_steps: int
    history_length: int
    max_skill_chars: int
    max_new_tokens: dict  # Stage -> int
    constrain_actions: bool = False  # decode acting steps under the admissible-action grammar


@dataclass(frozen=True)
class RetrievalSettings:
    """Retrieve `top_m` by similarity, re-score with UCB, hand the policy `top_k` candidates."""

    top_k: int = 3
    top_m: int = 16
    exploration: float = 0.5  # UCB c; 0 = greedy
    similarity_weight: float = 1.0


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
    policy_version: int  # the version the driver believes the samplers hold (stamp when nothing generated)
    faults: EnvFaultPolicy = EnvFaultPolicy()
    tag: str = ""  # the driver's name for it in streaming mode (a group id)


@dataclass
class RolloutStats:
    env_faults: int = 0  # environment failures seen (raised, pool died or hung)
    pool_restarts: int = 0
    requeued: int = 0
    failed_episodes: int = 0  # gave up after max_env_retries
    generate_calls: int = 0
    env_calls: int = 0
    sampler_restarts: int = 0  # sampler actors lost (and brought back by Ray)
    regenerated: int = 0  # generation requests asked again after their sampler died
    fault_log: list[str] = field(default_factory=list)


@dataclass
class RolloutProgress:
    """What `poll` hands back: finished requests (by tag) and the worker's cumulative counters."""

    completed: list[tuple[str, list[Episode]]]
    stats: RolloutStats
    busy_s: dict[str, float]  # "sampler-0" / "pool-1" -> seconds with a call in flight, cumulative
    live_episodes: int
