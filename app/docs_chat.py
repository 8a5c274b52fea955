"""A chat turn with the conversation's documents: runs in the engine queue's worker, retrieves passages for the
last user message (hybrid search, within the token budget), puts them into that message as numbered sources,
then streams the reply (plain, or through the tool loop when MCP servers are enabled). The stored conversation
keeps the user's own words; the hits go back to the window as the turn's first event."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from engine.docs.cli import retrieve
from engine.docs.search import Hit, sources_prompt
from engine.events import Message
from engine.visual import ContextBudget


@dataclass(frozen=True)
class SourcesRetrieved:
    """The passages a reply is given, before it starts. `index`: the message (in the messages sent) that holds
    them; `budget`: the context as sent, sources included (None when it could not be measured)."""

    hits: tuple[Hit, ...]
    index: int
    roles: tuple[str, ...]
    budget: ContextBudget | None = None


def with_sources(engine, collection: str, budget: int, messages: Sequence[Message], continue_last: bool,
                 measure=None) -> tuple[list[Message], SourcesRetrieved | None]:  # fmt: skip
    """`messages` with the last user message's sources put in; `measure(messages)` (optional) gives the
    context budget of what is sent, for the context bar."""
    messages = list(messages)
    if not messages or messages[-1].role != "user" or continue_last:
        return messages, None
    hits = retrieve(engine, collection, messages[-1].content, budget)
    if not hits:
        return messages, None
    messages[-1] = Message("user", sources_prompt(messages[-1].content, hits))
    measured = None
    if measure is not None:
        try:
            measured = measure(messages)
        except Exception:  # a remote engine cannot count tokens: the bar shows the sources after the reply
            measured = None
    found = SourcesRetrieved(tuple(hits), len(messages) - 1, tuple(m.role for m in messages), measured)
    return messages, found


def chat_with_sources(engine, collection: str, budget: int, messages: Sequence[Message], settings, policy,
                      continue_last: bool, hits_out: list[Hit], reply: Callable | None = None,
                      measure=None) -> Iterator:  # fmt: skip
    """SourcesRetrieved (when passages were found), then the reply's events: `engine.chat`, or
    `reply(engine, messages)` (the tool loop) on the messages with their sources."""
    sent, found = with_sources(engine, collection, budget, messages, continue_last, measure)
    if found is not None:
        hits_out.extend(found.hits)
        yield found
    if reply is not None:
        yield from reply(engine, sent)
    else:
        yield from engine.chat(sent, settings, policy, continue_last)
