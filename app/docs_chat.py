"""A chat turn with the conversation's documents: runs in the engine queue's worker, retrieves passages for the
last user message (hybrid search, within the token budget), puts them into that message as numbered sources,
then streams the reply. The stored conversation keeps the user's own words; the hits go back to the window."""

from __future__ import annotations

from collections.abc import Sequence

from engine.docs.cli import retrieve
from engine.docs.search import Hit, sources_prompt
from engine.events import Message


def chat_with_sources(engine, collection: str, budget: int, messages: Sequence[Message], settings, policy,
                      continue_last: bool, hits_out: list[Hit]):  # fmt: skip
    messages = list(messages)
    if messages and messages[-1].role == "user" and not continue_last:
        hits = retrieve(engine, collection, messages[-1].content, budget)
        hits_out.extend(hits)
        messages[-1] = Message("user", sources_prompt(messages[-1].content, hits))
    return engine.chat(messages, settings, policy, continue_last)
