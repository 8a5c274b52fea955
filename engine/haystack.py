"""Deterministic text for the context-length eval: a filler of plain sentences (the haystack) and the facts hidden
in it (the needles), generated here from fixed word lists and a seeded generator, so every run reads the same."""

from __future__ import annotations

import random
from dataclasses import dataclass

_PLACES = ["Alder", "Brisk", "Cobalt", "Dunmore", "Elmstead", "Fenwick", "Garrow", "Hollis", "Ivybridge",
           "Juniper", "Kestrel", "Larkspur", "Marlow", "Northam", "Oakhurst", "Pennant", "Quarry", "Redmere"]  # fmt: skip
_THINGS = ["the old mill", "the harbour wall", "the lending library", "the railway bridge", "the orchard",
           "the weather station", "the ferry", "the clock tower", "the school garden", "the river path",
           "the bakery", "the town archive", "the glass works", "the printing press", "the beehives"]  # fmt: skip
_PEOPLE = ["a carpenter", "two students", "the mayor", "a retired sailor", "the librarian", "a beekeeper",
           "the ferry captain", "a visiting painter", "the night watchman", "a young engineer"]  # fmt: skip
_VERBS = ["repaired", "measured", "painted", "described", "photographed", "cleaned", "studied", "visited",
          "mapped", "restored"]  # fmt: skip
_TIMES = ["in early spring", "after the long winter", "on a quiet Sunday", "during the autumn fair",
          "before the first frost", "late one summer evening", "in the dry season", "at the turn of the year"]  # fmt: skip
_TEMPLATES = [
    "{Person} {verb} {thing} in {place} {time}.",
    "In {place}, {thing} was {verb} by {person} {time}, and people still talk about it.",
    "{Time}, {person} walked from {place} to {thing} and wrote down what had changed.",
    "Most visitors to {place} never notice {thing}, although {person} {verb} it {time}.",
    "The records of {place} say that {thing} needed care {time}, so {person} {verb} it.",
    "Nobody in {place} remembers who built {thing}, but {person} {verb} it {time}.",
    "When the road to {place} flooded {time}, {person} stayed near {thing} for three days.",
    "A short note in the {place} newsletter thanked {person}, who {verb} {thing} {time}.",
]
_COLOURS = ["amber", "cobalt", "crimson", "olive", "silver", "violet", "saffron", "teal", "ivory", "umber"]
QUESTION = "\n\nQuestion: What is the secret passphrase for the {place} archive?\nAnswer: The secret passphrase for the {place} archive is"  # fmt: skip


def filler_sentences(count: int, seed: int = 20) -> list[str]:
    """`count` filler sentences, each starting with a space so they join and tokenize cleanly."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = {
            "place": rng.choice(_PLACES), "thing": rng.choice(_THINGS), "person": rng.choice(_PEOPLE),
            "verb": rng.choice(_VERBS), "time": rng.choice(_TIMES),
        }  # fmt: skip
        words |= {"Person": words["person"][0].upper() + words["person"][1:],
                  "Time": words["time"][0].upper() + words["time"][1:]}  # fmt: skip
        out.append(" " + rng.choice(_TEMPLATES).format(**words))
    return out


@dataclass(frozen=True)
class Needle:
    """A fact hidden in the haystack, the question that asks for it, and the value the answer must contain."""

    sentence: str  # " The secret passphrase for the X archive is amber-4721."
    question: str
    value: str  # "amber-4721"


def needle(length: int, depth: int, seed: int = 7) -> Needle:
    """The needle for one cell of the grid: a different place and value per (length, depth), always the same."""
    rng = random.Random(f"{seed}:{length}:{depth}")
    place = rng.choice(_PLACES)
    value = f"{rng.choice(_COLOURS)}-{rng.randint(1000, 9999)}"
    return Needle(
        f" The secret passphrase for the {place} archive is {value}.", QUESTION.format(place=place), value
    )
