"""Counted nouns for labels: "1 item", "2 items"."""

from __future__ import annotations


def count(n: int, singular: str, plural: str | None = None) -> str:
    """`n` with the noun in the right number, thousands separated."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"
