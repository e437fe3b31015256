"""Constrained decoding of an acting step: the completion can only be a well-formed, admissible action.

With `rollout.constrain_actions` the sampler masks, token by token, everything that would leave the grammar

    <think> [^<]* </think><action> ONE_OF(admissible) </action> EOS

(a template such as WebShop's `search[<query>]` admits any non-empty argument without `]` or `<`). This is
invalid-action masking (Huang & Ontañón, 2020) applied to text: the policy still chooses, but only among what
the environment accepts, so every rollout's reward says something about the task, not about spelling.

The mask is built from decoded token strings, so it holds whatever tokenizer the policy has. Per step it
costs dictionary lookups where the grammar is a literal (the tags, the action names) and one check per
token containing `<` or `]` where it is free text (the thought, a template's argument); the other tokens
there are allowed by a precomputed mask.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from skill1.agent.parsing import ACTION_TEMPLATE

OPEN, MID, CLOSE = "<think>", "</think><action>", "</action>"
SLACK = 2  # tokens of margin before closing: a token can leave a remainder that takes one more to write


@dataclass(frozen=True)
class ActionTargets:
    """What may stand between `<action>` and `</action>`: literal actions, and template verbs (`search` for
    `search[<query>]`) whose bracketed argument is free text."""

    literals: tuple[str, ...]
    templates: tuple[str, ...] = ()

    @classmethod
    def from_admissible(cls, admissible: Sequence[str]) -> "ActionTargets":
        literals, templates = [], []
        for a in admissible:
            template = ACTION_TEMPLATE.match(a)
            if template:
                templates.append(template.group(1))
            else:
                literals.append(a)
        return cls(tuple(dict.fromkeys(literals)), tuple(dict.fromkeys(templates)))


def _action_state(rest: str, targets: ActionTargets) -> tuple[bool, bool, list[str], list[str]]:
    """After `<action>`: (viable, complete, literal continuations, the continuations that end the sentence).
    A continuation list that is empty while viable and not complete means free text (a template's argument)."""
    viable = complete = free = False
    conts: list[str] = []
    closing: list[str] = []

    def ending(written: str, full: str) -> None:
        """`written` so far of `full`, which ends the sentence: viable if a prefix, complete if all of it."""
        nonlocal viable, complete
        if full.startswith(written):
            viable = True
            complete |= written == full
            if written != full:
                conts.append(full[len(written):])
                closing.append(full[len(written):])

    for a in targets.literals:
        ending(rest, a + CLOSE)
    for verb in targets.templates:
        head = verb + "["
        if len(rest) <= len(head):
            if head.startswith(rest):
                viable = True
                conts.append(head[len(rest):])
            continue
        if not rest.startswith(head):
            continue
        arg = rest[len(head):]
        j = arg.find("]")
        if j < 0:
            if "<" not in arg:
                viable = free = True
            continue
        if not arg[:j].strip() or "<" in arg[:j]:
            continue
        ending(arg[j + 1:], CLOSE)
    if not viable:
        return False, False, [], []
    return True, complete, [] if free else conts, closing


@dataclass(frozen=True)
class GrammarState:
    viable: bool  # the text is a prefix of some sentence of the grammar
    complete: bool  # the text is a whole sentence: only EOS may follow
    free: str | None  # inside free text: the characters that end it ("<" in the thought, "]<" in an argument)
    literals: tuple[str, ...] = ()  # otherwise: the literal strings that may follow
    closing: tuple[str, ...] = ()  # texts that complete the sentence from here the shortest way


def parse_state(text: str, targets: ActionTargets) -> GrammarState:
    """Where `text` (the completion so far) stands in the acting grammar (pure)."""
    dead = GrammarState(False, False, None)
    ends = tuple(MID + a + CLOSE for a in targets.literals)  # from an open thought, the literal actions
    if len(text) < len(OPEN):
        if not OPEN.startswith(text):
            return dead
        rest = OPEN[len(text):]
        return GrammarState(True, False, None, (rest,), tuple(rest + e for e in ends))
    if not text.startswith(OPEN):
        return dead
    body = text[len(OPEN):]
    i = body.find("<")
    if i < 0:
        return GrammarState(True, False, "<", (), ends)
    tail = body[i:]
    if len(tail) < len(MID):
        if not MID.startswith(tail):
            return dead
        head = MID[len(tail):]
        firsts = [a + CLOSE for a in targets.literals] + [v + "[" for v in targets.templates]
        return GrammarState(True, False, None, tuple(head + f for f in firsts),
                            tuple(head + a + CLOSE for a in targets.literals))
    if not tail.startswith(MID):
        return dead
    rest = tail[len(MID):]
    viable, complete, conts, closing = _action_state(rest, targets)
    if not viable:
        return dead
    if complete:
        return GrammarState(True, True, None)
    if conts:
        return GrammarState(True, False, None, tuple(conts), tuple(closing))
    arg = rest[rest.index("[") + 1:]  # inside a template's argument: close it once it says something
    return GrammarState(True, False, "]<", (), ("]" + CLOSE,) if arg.strip() else ())


@dataclass(eq=False)  # hashed by identity: its per-string caches live as long as it does
class ActionGrammar:
    """The allowed-token mask for the acting grammar over one tokenizer's vocabulary (built once per sampler)."""

    pieces: list[str]  # decoded string of every token id
    eos_ids: list[int]
    _by_string: dict[str, list[int]] = field(default_factory=dict)
    _sorted: list[tuple[str, int]] = field(default_factory=list)
    _free_ok: dict[str, torch.Tensor] = field(default_factory=dict)
    _special: dict[str, list[int]] = field(default_factory=dict)
    _longest: int = 1

    def __post_init__(self):
        eos = set(self.eos_ids)
        for i, s in enumerate(self.pieces):
            if s and i not in eos:
                self._by_string.setdefault(s, []).append(i)
                self._sorted.append((s, i))
        self._sorted.sort()
        self._longest = max((len(s) for s in self._by_string), default=1)
        for stops in ("<", "]<"):
            ok = torch.zeros(len(self.pieces), dtype=torch.bool)
            special = []
            for s, ids in self._by_string.items():
                if any(c in s for c in stops):
                    special.extend(ids)
                else:
                    ok[ids] = True
            self._free_ok[stops], self._special[stops] = ok, special

    @classmethod
    def for_tokenizer(cls, tokenizer, eos_ids: Sequence[int], vocab_size: int) -> "ActionGrammar":
        pieces = [tokenizer.decode([i]) if i < len(tokenizer) else "" for i in range(vocab_size)]
        return cls(pieces, list(eos_ids))

    def _starting_with(self, prefix: str) -> list[int]:
        lo = bisect.bisect_left(self._sorted, (prefix, -1))
        out = []
        for s, i in self._sorted[lo:]:
            if not s.startswith(prefix):
                break
            out.append(i)
        return out

    @functools.lru_cache(maxsize=65536)
    def _longest_first(self, text: str) -> tuple[int, int]:
        """(token id, its length) of the longest token that `text` starts with."""
        for k in range(min(len(text), self._longest), 0, -1):
            ids = self._by_string.get(text[:k])
            if ids:
                return ids[0], k
        raise ValueError(f"no token starts {text[:8]!r}: a byte-level vocabulary has one per character")

    @functools.lru_cache(maxsize=65536)
    def tokens_to_write(self, text: str) -> int:
        """Tokens to write `text` taking the longest token each time (what the closing mode does)."""
        n = 0
        while text:
            text, n = text[self._longest_first(text)[1]:], n + 1
        return n

    def allowed(self, text: str, targets: ActionTargets, tokens_left: int | None = None) -> torch.Tensor | None:
        """Boolean mask over the vocabulary of the tokens that keep `text` in the grammar (EOS only once it is
        complete); None where the text has already left it (nothing to constrain: it will parse as invalid).

        With `tokens_left` (this one included), the mask closes the sentence in time: once the budget is
        within `SLACK` tokens of what the longest closing needs, only the first tokens of closings that still
        fit are allowed (a thought that runs on would otherwise be cut off by the budget, unparseable)."""
        state = parse_state(text, targets)
        if not state.viable:
            return None
        mask = torch.zeros(len(self.pieces), dtype=torch.bool)
        if state.complete:
            mask[self.eos_ids] = True
            return mask
        if tokens_left is not None and state.closing:
            need = {c: self.tokens_to_write(c) + 1 for c in state.closing}  # + EOS
            if tokens_left <= max(need.values()) + SLACK:
                fits = [c for c, n in need.items() if n <= tokens_left] or list(need)
                mask[[self._longest_first(c)[0] for c in fits]] = True
                return mask
        if state.free is not None:
            mask |= self._free_ok[state.free]
            candidates = self._special[state.free]
        else:
            candidates = []
            for lit in state.literals:
                for k in range(1, min(len(lit), self._longest) + 1):
                    mask[self._by_string.get(lit[:k], [])] = True
                candidates.extend(self._starting_with(lit))  # tokens that run on past the literal
        for i in candidates:
            if not mask[i] and parse_state(text + self.pieces[i], targets).viable:
                mask[i] = True
        return mask if bool(mask.any()) else None
