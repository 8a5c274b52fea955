"""Writes assets/sample_chat.jsonl: short chat exchanges generated from our own templates, to teach turn-taking."""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "assets" / "sample_chat.jsonl"

OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "early": "late", "light": "dark", "full": "empty",
             "open": "closed", "happy": "sad", "loud": "quiet", "up": "down", "wet": "dry", "old": "new"}  # fmt: skip
COLORS = {"grass": "green", "the clear sky": "blue", "snow": "white", "coal": "black", "a ripe banana": "yellow",
          "a ripe tomato": "red", "an orange": "orange", "a plum": "purple"}  # fmt: skip
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo"}  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
GREETINGS = ["Hi!", "Hello there.", "Good morning!", "Hey, how are you?", "Hello, can you help me?"]
GREET_REPLIES = ["Hello! How can I help you today?", "Hi! What would you like to talk about?",
                 "Good to see you. What can I do for you?"]  # fmt: skip
SYSTEMS = ["You are a helpful assistant. Answer briefly.", "You are a friendly tutor. Keep answers short."]


def _arith(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    q = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"Can you work out {a} {op} {b}?"])
    return q, f"{a} {op} {b} is {value}."


def _opposite(rng):
    word, other = rng.choice(list(OPPOSITES.items()))
    return rng.choice([f"What is the opposite of '{word}'?", f"Give me the opposite of {word}."]), \
        f"The opposite of '{word}' is '{other}'."  # fmt: skip


def _color(rng):
    thing, color = rng.choice(list(COLORS.items()))
    return f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is usually {color}."


def _capital(rng):
    country, city = rng.choice(list(CAPITALS.items()))
    return rng.choice([f"What is the capital of {country}?", f"Name the capital city of {country}."]), \
        f"The capital of {country} is {city}."  # fmt: skip


def _day(rng):
    i = rng.randrange(7)
    n = rng.randint(1, 3)
    return f"If today is {DAYS[i]}, what day is it in {n} day{'s' if n > 1 else ''}?", \
        f"It will be {DAYS[(i + n) % 7]}."  # fmt: skip


def _spell(rng):
    word = rng.choice(["ingle", "lamp", "river", "garden", "pencil", "window", "cloud", "piano"])
    return f"How do you spell '{word}' letter by letter?", f"{'-'.join(word.upper())}."


def _count(rng):
    word = rng.choice(["apple", "banana", "letter", "orbit", "moon", "cabbage"])
    vowels = sum(c in "aeiou" for c in word)
    return (
        f"How many vowels are in the word '{word}'?",
        f"'{word}' has {vowels} vowel{'s' if vowels != 1 else ''}.",
    )


def _greet(rng):
    return rng.choice(GREETINGS), rng.choice(GREET_REPLIES)


MAKERS = [_arith, _opposite, _color, _capital, _day, _spell, _count, _greet]


def generate(n: int = 320, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    records, seen = [], set()
    while len(records) < n:
        turns = []
        if rng.random() < 0.2:
            turns.append({"role": "system", "content": rng.choice(SYSTEMS)})
        for _ in range(1 if rng.random() < 0.75 else 2):
            q, a = rng.choice(MAKERS)(rng)
            turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        key = json.dumps(turns)
        if key not in seen:
            seen.add(key)
            records.append({"messages": turns})
    return records


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r) + "\n" for r in generate()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
