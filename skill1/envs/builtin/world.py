"""World generation for the built-in household environment: receptacles, objects, the goal.

A world is a pure function of (seed, family). Object placement follows per-type priors (mugs mostly in
cabinets or on the coffeemachine, eggs in the fridge, pens on desks), so a written strategy such as
"look in the cabinets first for a mug" is true more often than not and worth retrieving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FAMILIES = [
    "pick_and_place",
    "pick_two_obj_and_place",
    "look_at_obj_in_light",
    "pick_clean_then_place",
    "pick_heat_then_place",
    "pick_cool_then_place",
]

OPENABLE = frozenset({"cabinet", "drawer", "fridge", "microwave"})
DESKLAMP = "desklamp"  # a place to go and a thing to use, never a container
INSTANCES = {"cabinet": (1, 2, 2, 3), "drawer": (1, 1, 2)}  # how many of a type a room may have; else 1

# The appliance each transforming family needs and the verb it is used with.
APPLIANCE = {"pick_clean_then_place": "sinkbasin", "pick_heat_then_place": "microwave",
             "pick_cool_then_place": "fridge"}
VERB = {"sinkbasin": "clean", "microwave": "heat", "fridge": "cool"}

# Where each object type tends to be: receptacle type -> relative weight.
PRIORS: dict[str, dict[str, int]] = {
    "mug": {"cabinet": 6, "coffeemachine": 4, "countertop": 2, "sinkbasin": 1},
    "cup": {"cabinet": 6, "coffeemachine": 3, "countertop": 2, "fridge": 1},
    "plate": {"cabinet": 6, "countertop": 2, "diningtable": 2, "shelf": 1},
    "bowl": {"cabinet": 5, "shelf": 2, "diningtable": 2, "countertop": 1, "fridge": 1},
    "apple": {"fridge": 6, "countertop": 4, "diningtable": 2},
    "tomato": {"fridge": 6, "countertop": 4, "diningtable": 1, "sinkbasin": 1},
    "potato": {"fridge": 4, "countertop": 4, "diningtable": 2, "sinkbasin": 1},
    "egg": {"fridge": 7, "countertop": 2, "diningtable": 1},
    "bread": {"countertop": 5, "diningtable": 3, "fridge": 2, "cabinet": 1},
    "lettuce": {"fridge": 7, "countertop": 3, "diningtable": 1},
    "knife": {"drawer": 6, "countertop": 3, "diningtable": 1},
    "fork": {"drawer": 7, "countertop": 2, "diningtable": 1},
    "spoon": {"drawer": 7, "countertop": 2, "sinkbasin": 1},
    "book": {"shelf": 5, "desk": 5, "drawer": 1},
    "pen": {"desk": 6, "drawer": 3, "shelf": 1},
    "pencil": {"desk": 6, "drawer": 3, "shelf": 1},
    "cd": {"shelf": 5, "desk": 3, "drawer": 2},
    "cellphone": {"desk": 6, "shelf": 2, "drawer": 2},
    "keychain": {"drawer": 5, "desk": 3, "shelf": 2},
    "creditcard": {"drawer": 5, "desk": 3, "shelf": 2},
    "alarmclock": {"desk": 6, "shelf": 4},
}
KITCHEN = ["mug", "cup", "plate", "bowl", "apple", "tomato", "potato", "bread", "knife", "fork", "spoon"]
OFFICE = ["book", "pen", "pencil", "cd", "cellphone", "keychain", "creditcard", "alarmclock"]


@dataclass(frozen=True)
class FamilySpec:
    objects: tuple[str, ...]
    kitchen_targets: tuple[str, ...]  # target receptacle types for kitchen objects
    office_targets: tuple[str, ...] = ("desk", "shelf", "drawer")
    templates: tuple[str, ...] = ()


_KITCHEN_TARGETS = ("countertop", "diningtable", "cabinet", "drawer", "shelf")
SPECS: dict[str, FamilySpec] = {
    "pick_and_place": FamilySpec(tuple(KITCHEN + OFFICE), _KITCHEN_TARGETS,
                                 templates=("put a {o} in {t}", "put some {o} on {t}")),
    # Open surfaces only: two round trips plus three opens would not fit a 10-step budget.
    "pick_two_obj_and_place": FamilySpec(tuple(KITCHEN + OFFICE), ("countertop", "diningtable", "shelf"),
                                         ("desk", "shelf"),
                                         ("put two {o} in {t}", "find two {o} and put them in {t}")),
    "look_at_obj_in_light": FamilySpec(tuple(OFFICE) + ("mug", "bowl"), (), (),
                                       ("look at {o} under the desklamp", "examine the {o} with the desklamp")),
    "pick_clean_then_place": FamilySpec(("mug", "cup", "plate", "bowl", "apple", "tomato", "potato", "lettuce",
                                         "knife", "fork", "spoon"), _KITCHEN_TARGETS,
                                        templates=("put a clean {o} in {t}", "clean some {o} and put it in {t}")),
    "pick_heat_then_place": FamilySpec(("mug", "cup", "plate", "apple", "tomato", "potato", "egg", "bread"),
                                       ("countertop", "diningtable", "cabinet", "shelf"),
                                       templates=("put a hot {o} in {t}", "heat some {o} and put it in {t}")),
    "pick_cool_then_place": FamilySpec(("mug", "cup", "plate", "bowl", "apple", "tomato", "potato", "egg",
                                        "bread", "lettuce"), ("countertop", "diningtable", "cabinet", "shelf"),
                                       templates=("put a cool {o} in {t}", "cool some {o} and put it in {t}")),
}


@dataclass
class Receptacle:
    name: str
    kind: str
    openable: bool
    is_open: bool = False
    contents: list[str] = field(default_factory=list)  # object names, in arrival order

    @property
    def visible(self) -> bool:
        return self.is_open or not self.openable


@dataclass
class Obj:
    name: str
    kind: str
    location: str | None  # receptacle name; None while held
    clean: bool = False
    temperature: str = "room"  # room | hot | cold


@dataclass
class World:
    family: str
    goal_kind: str
    target_kind: str | None  # None for look_at_obj_in_light
    description: str
    receptacles: dict[str, Receptacle]  # sorted by name
    objects: dict[str, Obj]
    at: str | None = None  # None: the middle of the room
    holding: str | None = None
    lamp_on: bool = False
    searched: set[str] = field(default_factory=set)  # receptacles the agent has visited (explore skips them)

    def __post_init__(self) -> None:
        self.searched |= set(self.of_kind(DESKLAMP))  # a lamp holds nothing: there is nothing to search

    def unsearched(self) -> list[str]:
        """Receptacles not visited yet, in the room's listing order."""
        return [n for n in self.receptacles if n not in self.searched]

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, r in self.receptacles.items() if r.kind == kind]


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    kinds = list(weights)
    return rng.choices(kinds, weights=[weights[k] for k in kinds])[0]


def generate_world(seed: int, family: str) -> World:
    if family not in SPECS:
        raise ValueError(f"unknown family {family!r} (known: {FAMILIES})")
    spec = SPECS[family]
    rng = random.Random(f"{family}/{seed}")  # str seeds hash stably (sha512), unlike hash()
    goal = rng.choice(spec.objects)
    targets = spec.office_targets if goal in OFFICE else spec.kitchen_targets
    target = rng.choice(targets) if targets else None
    description = rng.choice(spec.templates).format(o=goal, t=target)

    counts: dict[str, int] = {}  # receptacle type -> number of instances

    def add(kind: str) -> None:
        if kind not in counts:
            counts[kind] = rng.choice(INSTANCES.get(kind, (1,)))

    # Goal objects never start in a receptacle of the target type: the task must need a move.
    source_prior = {k: w for k, w in PRIORS[goal].items() if k != target}
    n_goal = rng.choice((2, 2, 3)) if family == "pick_two_obj_and_place" else rng.choice((1, 1, 1, 2))
    goal_kinds = [_weighted(rng, source_prior) for _ in range(n_goal)]
    for kind in [target, APPLIANCE.get(family), DESKLAMP if target is None else None, *goal_kinds]:
        if kind is not None:
            add(kind)
    extras = sorted({k for p in PRIORS.values() for k in p} | {"microwave"})
    rng.shuffle(extras)
    size = rng.randint(5, 8)
    for kind in extras:
        if sum(counts.values()) >= size:
            break
        add(kind)

    def instance(kind: str) -> str:
        return f"{kind} {rng.randint(1, counts[kind])}"

    placed = [(goal, instance(k)) for k in goal_kinds]
    n_distractors = max(0, rng.randint(3, 6) - n_goal)
    # A distractor type is as likely as its prior's mass in this room: pens turn up where there is a desk.
    fit = {o: sum(w for k, w in p.items() if k in counts) / sum(p.values()) for o, p in PRIORS.items() if o != goal}
    for _ in range(n_distractors):
        kind = rng.choices(list(fit), weights=list(fit.values()))[0]
        placed.append((kind, instance(_weighted(rng, {k: w for k, w in PRIORS[kind].items() if k in counts}))))

    receptacles = {name: Receptacle(name, kind, kind in OPENABLE)
                   for kind, n in counts.items() for name in (f"{kind} {i}" for i in range(1, n + 1))}
    receptacles = dict(sorted(receptacles.items()))
    rng.shuffle(placed)  # otherwise the goal object would always be listed first and numbered 1
    objects: dict[str, Obj] = {}
    numbers: dict[str, int] = {}
    for kind, where in placed:
        numbers[kind] = numbers.get(kind, 0) + 1
        name = f"{kind} {numbers[kind]}"
        objects[name] = Obj(name, kind, where)
        receptacles[where].contents.append(name)
    return World(family, goal, target, description, receptacles, objects)
