"""Prompt templates for the four generations of an episode, rendered through the tokenizer's chat template.

Templates are versioned: a change to any text below bumps PROMPT_VERSION, which is logged with every run,
so that warm-start data, checkpoints and results can be matched to the prompts they were made with.
"""

from __future__ import annotations

from collections.abc import Sequence

from skill1.types import Candidate

# v2: the acting prompt opens with the environment, as verl-agent's; v3: compact builtin act; v4: the history
# shows what an invalid action tried ("go to cabinet 1 (invalid)")
PROMPT_VERSION = "v4"

QUERY = (
    "Your task is to: {task}\n"
    "Write a short search query for a skill library that would help with this task. "
    "Answer as <query>...</query>."
)

RERANK = (
    "Your task is to: {task}\n"
    "Skills retrieved for it:\n{candidates}\n"
    "Pick the skill that best helps with this task. Answer with its number as <choice>N</choice>."
)

# verl-agent's openings for its environments; the built-in env keeps the generic one
ENV_INTROS = {
    "alfworld": "You are an expert agent operating in the ALFRED Embodied Environment.",
    "webshop": "You are an expert autonomous agent operating in the WebShop e-commerce platform.",
}
DEFAULT_INTRO = "You are an expert agent operating in a text environment."

ACT = (
    "{intro}\n"
    "Your task is to: {task}\n"
    "{skill}"
    "{history}"
    "Your current observation is: {observation}\n"
    "Your admissible actions of the current situation are: [{actions}].\n"
    "Reason step by step within <think> </think> tags, then choose an admissible action and present it "
    "within <action> </action> tags."
)

# The built-in env's acting prompt says the same in fewer words: a CPU policy pays for every prompt token, and
# the tiny policy learns to read a short prompt much sooner than a long one (README "The tiny policy").
ACT_COMPACT = (
    "Task: {task}\n"
    "{skill}"
    "{history}"
    "Now: {observation}\n"
    "Actions: [{actions}].\n"
    "Answer <think>...</think><action>...</action>."
)
COMPACT_ENVS = frozenset({"builtin", "faulty"})

DISTILL = (
    "Your task was to: {task}\n"
    "Your actions: {trajectory}\n"
    "Outcome: {outcome}\n"
    "Write one reusable skill from this experience: the scenario it applies to and the strategy to follow. "
    "Answer as <scenario>...</scenario><strategy>...</strategy>."
)


def _chat(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
    )
    # transformers 5 returns a BatchEncoding here; older versions a list
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def query_prompt(tokenizer, task: str) -> list[int]:
    return _chat(tokenizer, QUERY.format(task=task))


def rerank_prompt(tokenizer, task: str, candidates: Sequence[Candidate]) -> list[int]:
    lines = "\n".join(f"[{i + 1}] {c.scenario}" for i, c in enumerate(candidates))
    return _chat(tokenizer, RERANK.format(task=task, candidates=lines))


def act_prompt(
    tokenizer,
    task: str,
    observation: str,
    admissible: Sequence[str],
    history: Sequence[tuple[str, str]],
    strategy: str | None,
    steps_taken: int,
    env: str = "",
) -> list[int]:
    actions = ", ".join(f"'{a}'" for a in admissible)
    if env in COMPACT_ENVS:
        skill = f"Skill: {strategy}\n" if strategy else ""
        hist = "".join(f"Before: {o} Did: {a}\n" for o, a in history)
        return _chat(tokenizer, ACT_COMPACT.format(task=task, skill=skill, history=hist, observation=observation,
                                                   actions=actions))
    skill = f"Skill to follow: {strategy}\n" if strategy else ""
    hist = ""
    if history:
        pairs = " ".join(f"[Observation: {o} Action: {a}]" for o, a in history)
        hist = f"You have taken {steps_taken} step(s). Your most recent steps: {pairs}\n"
    return _chat(tokenizer, ACT.format(intro=ENV_INTROS.get(env, DEFAULT_INTRO), task=task, skill=skill,
                                       history=hist, observation=observation, actions=actions))


def distill_prompt(tokenizer, task: str, actions: Sequence[str], success: bool, max_actions: int = 20) -> list[int]:
    shown = list(actions)[-max_actions:]
    prefix = "... " if len(actions) > max_actions else ""
    trajectory = prefix + "; ".join(shown) if shown else "(none)"
    return _chat(tokenizer, DISTILL.format(task=task, trajectory=trajectory,
                                           outcome="success" if success else "failure"))
