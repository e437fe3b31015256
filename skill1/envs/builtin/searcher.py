"""A demonstrator that does not know where things are: it searches, and follows advice when it has some.

The expert in `household.py` plans with the hidden world in view, so a policy that imitates it is asked to
guess locations it cannot see. The searcher acts only on what it has seen: it visits receptacles in the
order they are listed in the room (alphabetical), opening closed ones, until the goal object shows up, then
carries out the family's procedure (`explore`, the env's walk to the next receptacle not searched yet,
where that is the search's next stop; a destination is always named: `go to countertop 1`). Given a piece of
advice ("look for the egg in the fridge first", the kind of thing a written skill carries), it searches
receptacles of the advised kind first.

Searching in listed order wastes steps that knowledge of where object kinds tend to live (world.PRIORS)
would save: that gap is what reinforcement learning and the skill library can close; imitating the
searcher teaches the formats and the procedures, not the priors.
"""

from __future__ import annotations

from dataclasses import dataclass

from skill1.envs.builtin.world import APPLIANCE, DESKLAMP, VERB, World, generate_world
from skill1.types import Task


@dataclass(frozen=True)
class SearchOutcome:
    actions: list[str]
    found_kind: str | None  # receptacle kind where the (first) goal object was found; None if never found


def search_order(world: World, first_kind: str | None = None) -> list[str]:
    """Receptacles in the order the searcher visits them: the advised kind's first, then the room's listing."""
    names = [n for n, r in world.receptacles.items() if r.kind != DESKLAMP]  # the lamp never holds objects
    advised = [n for n in names if first_kind is not None and world.receptacles[n].kind == first_kind]
    return advised + [n for n in names if n not in advised]


def search_actions(task: Task, first_kind: str | None = None, limit: int = 50) -> SearchOutcome:
    """The searcher's actions for `task` (at most `limit`), planned from what each visit reveals.

    Simulated on the generated world: a receptacle's contents are used only once the searcher stands at it
    with it open, which is exactly what the environment's observations show.
    """
    world = generate_world(int(task.payload["seed"]), task.family)
    need = 2 if world.family == "pick_two_obj_and_place" else 1
    acts: list[str] = []
    at: str | None = None
    opened: set[str] = set()
    searched = {n for n, r in world.receptacles.items() if r.kind == DESKLAMP}  # as the env counts them
    seen: dict[str, str] = {}  # goal object -> receptacle it was seen in
    found_kind: str | None = None

    def go(rec: str, searching: bool = False) -> None:
        nonlocal at
        if at != rec:
            # the env's `explore` walks to the first receptacle not searched yet: a search uses it when that is
            # the next stop; a destination (the object seen, the target) is always named, so that `explore`
            # means "look further" and never "the target happens to be next" (a policy cannot see that order)
            nxt = next((r for r in world.receptacles if r not in searched and r != at), None)
            # advice is followed by name, so that a policy learns to read the kind off the skill
            advised = first_kind is not None and world.receptacles[rec].kind == first_kind
            acts.append("explore" if searching and rec == nxt and not advised else f"go to {rec}")
            at = rec
            searched.add(rec)
        if world.receptacles[rec].openable and rec not in opened:
            acts.append(f"open {rec}")
            opened.add(rec)

    def look_here() -> None:
        nonlocal found_kind
        for obj in world.receptacles[at].contents:
            if world.objects[obj].kind == world.goal_kind and obj not in seen:
                seen[obj] = at
                found_kind = found_kind or world.receptacles[at].kind

    order = iter(search_order(world, first_kind))
    done = 0
    while done < need and len(acts) < limit:
        todo = [o for o in seen if seen[o] is not None]
        if not todo:
            nxt = next(order, None)
            if nxt is None:
                break  # searched everything (cannot happen in a generated world: the goal is somewhere)
            go(nxt, searching=True)
            look_here()
            continue
        obj = todo[0]
        src = seen[obj]
        go(src)
        acts.append(f"take {obj} from {src}")
        seen[obj] = None  # carried
        if world.target_kind is None:  # look_at_obj_in_light
            lamp = world.of_kind(DESKLAMP)[0]
            acts += [f"go to {lamp}", f"use {lamp}"]
            done = need
            break
        if world.family in APPLIANCE:
            tool = world.of_kind(APPLIANCE[world.family])[0]
            if at != tool:  # the appliance works closed: no need to open it
                acts.append(f"go to {tool}")
                at = tool
            acts.append(f"{VERB[APPLIANCE[world.family]]} {obj} with {tool}")
        dst = world.of_kind(world.target_kind)[0]
        go(dst)
        look_here()  # the target may show a second goal object (never the first: goals start elsewhere)
        acts.append(f"move {obj} to {dst}")
        done += 1
    return SearchOutcome(acts[:limit], found_kind)
