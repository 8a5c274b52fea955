"""The overflow policies: what to do when a conversation and the reply's reserve do not fit the context.

`drop_oldest` removes whole turns after the system prompt; `fit_prompt` slides the window (or refuses, for
'stop'); `system_tokens` says how much of the prompt the sliding window keeps. The mid-reply context shift
itself is KV-cache work and stays in the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import llama_cpp

from engine.errors import ContextFullError
from engine.events import ContextTrimmed, Message
from engine.settings import OverflowPolicy
from engine.textstream import common_prefix

if TYPE_CHECKING:
    from engine.runtime import Runtime


def drop_oldest(
    rt: Runtime, messages: list[Message], tokens: list[int], reserve: int, continue_last: bool = False
):
    """Drop whole turns after the system prompt until prompt + reply reserve fits."""
    first = 1 if messages[0].role == "system" else 0
    dropped, before = 0, len(tokens)
    last_turn = 2 if continue_last else 1  # never drop the message being answered (or continued)
    while len(tokens) + reserve > rt.n_ctx and len(messages) - first > last_turn:
        del messages[first]
        dropped += 1
        # drop up to the next user message, so the conversation still starts with a user turn
        while len(messages) - first > last_turn and messages[first].role != "user":
            del messages[first]
            dropped += 1
        tokens = rt.render_tokens(messages, continue_last=continue_last)
    if len(tokens) + reserve > rt.n_ctx:
        raise ContextFullError(
            f"The last message alone needs {len(tokens)} tokens plus {reserve} for the reply, "
            f"but the context holds {rt.n_ctx}. Shorten it or load the model with a longer context."
        )
    event = ContextTrimmed(
        OverflowPolicy.DROP_OLDEST.value, dropped, before - len(tokens),
        f"Dropped the {dropped} oldest message(s) ({before - len(tokens)} tokens) to fit the context.",
    )  # fmt: skip
    return messages, tokens, event


def system_tokens(rt: Runtime, messages: Sequence[Message], tokens: Sequence[int]) -> int:
    """How many leading prompt tokens hold BOS and the system prompt (kept by the sliding window)."""
    base = 1 if tokens and tokens[0] == llama_cpp.llama_vocab_bos(rt.vocab) else 0
    if not messages or messages[0].role != "system":
        return base
    marker = "\u2063\u2063"  # invisible separators, never in a real message
    probe = rt.template.render([messages[0], Message("user", marker)], False)
    head = probe.split(marker)[0]
    return max(base, common_prefix(tokens, rt.tokenize_rendered(head)))


def fit_prompt(n_ctx: int, tokens: list[int], reserve: int, policy: OverflowPolicy, keep: int):
    if len(tokens) + reserve <= n_ctx:
        return tokens, None
    if policy == OverflowPolicy.SLIDING_WINDOW:
        excess = len(tokens) + reserve - n_ctx
        if keep + excess >= len(tokens) - 1:
            raise ContextFullError(
                f"The prompt needs {len(tokens)} tokens plus {reserve} for the reply, but the context holds "
                f"{n_ctx} and the system prompt alone takes {keep}."
            )
        trimmed = tokens[:keep] + tokens[keep + excess :]
        return trimmed, ContextTrimmed(
            policy.value, 0, excess, f"Slid the window: dropped {excess} tokens after the system prompt."
        )
    raise ContextFullError(
        f"The conversation needs {len(tokens)} tokens plus {reserve} for the reply, but the context holds "
        f"{n_ctx}. Start a new chat, load the model with a longer context, or choose the 'drop oldest' "
        "or 'sliding window' overflow policy."
    )
