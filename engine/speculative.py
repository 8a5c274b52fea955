"""Speculative decoding: draft tokens cheaply (prompt lookup, or a small draft model sharing the vocabulary), let
the target verify them in one batch, and keep drafting on only while it pays.

Acceptance follows the target's own sampler chain: at each drafted position the chain samples from the target's
logits and the draft token is accepted while it equals that sample. Every emitted token is therefore exactly the
token the target alone would have sampled (greedy: identical; seeded sampling: the same random draws, one per
emitted token), and the chain accepts only emitted tokens.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from engine.errors import ContextFullError, EngineError, ModelFileError
from engine.llama_params import context_params, model_params
from engine.settings import LoadSettings
from engine.text import printable
from engine.textstream import common_prefix


class PromptLookup:
    """Drafts the tokens that followed the latest earlier occurrence of the last `ngram` tokens.

    One per reply: `history` (prompt + reply so far) only grows, so the n-gram index is built incrementally.
    """

    def __init__(self, ngram: int):
        self.n = max(1, ngram)
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence
        self._upto = 0  # n-grams ending before this index are indexed

    def draft(self, history: Sequence[int], k: int) -> list[int]:
        n, end = self.n, len(history)
        if end <= n or k <= 0:
            return []
        for e in range(max(n, self._upto), end):  # every n-gram that ends before the current one
            self._index[tuple(history[e - n : e])] = e
        self._upto = end
        start = self._index.get(tuple(history[end - n :]))
        if start is None:
            return []
        out: list[int] = []
        for i in range(k):  # a match that runs into the present continues periodically (a repeat loop)
            j = start + i
            out.append(history[j] if j < end else out[j - end])
        return out


def _vocab_texts(vocab, n: int) -> list[bytes]:
    return [llama_cpp.llama_vocab_get_text(vocab, t) or b"" for t in range(n)]


def vocab_mismatch(target_vocab, draft_vocab) -> str | None:
    """Why a draft model cannot draft for the target (None when the vocabularies are the same)."""
    ll = llama_cpp
    n_t, n_d = ll.llama_vocab_n_tokens(target_vocab), ll.llama_vocab_n_tokens(draft_vocab)
    if n_t != n_d:
        return f"its vocabulary has {n_d:,} tokens, the model's has {n_t:,}"
    for what, fn in (
        ("beginning-of-sequence", ll.llama_vocab_bos),
        ("end-of-sequence", ll.llama_vocab_eos),
        ("end-of-turn", ll.llama_vocab_eot),
        ("padding", ll.llama_vocab_pad),
    ):
        if fn(target_vocab) != fn(draft_vocab):
            return f"its {what} token is {fn(draft_vocab)}, the model's is {fn(target_vocab)}"
    if ll.llama_vocab_get_add_bos(target_vocab) != ll.llama_vocab_get_add_bos(draft_vocab):
        return "one adds a beginning-of-sequence token to prompts and the other does not"
    texts_t, texts_d = _vocab_texts(target_vocab, n_t), _vocab_texts(draft_vocab, n_d)
    for tok, (a, b) in enumerate(zip(texts_t, texts_d, strict=True)):
        if a != b:
            return f"token {tok} is {printable(b.decode(errors='replace'))!r} there but {printable(a.decode(errors='replace'))!r} here"
        if ll.llama_vocab_get_attr(target_vocab, tok) != ll.llama_vocab_get_attr(draft_vocab, tok):
            return (
                f"token {tok} ({printable(a.decode(errors='replace'))!r}) is special in one and not the other"
            )
    return None


class DraftModel:
    """A second, smaller model in the same process that drafts greedily; its KV cache follows the target's."""

    def __init__(self, path: str | Path, target, settings: LoadSettings):
        self.path = Path(path)
        self.model = self.ctx = self._batch = None
        mparams = model_params(settings)
        self.model = llama_cpp.llama_model_load_from_file(os.fsencode(self.path), mparams)
        if not self.model:
            raise ModelFileError(f"{self.path}: llama.cpp could not load this draft model.")
        try:
            self.vocab = llama_cpp.llama_model_get_vocab(self.model)
            why = vocab_mismatch(target.vocab, self.vocab)
            if why:
                raise ModelFileError(
                    f"{self.path.name} cannot draft for this model: {why}. A draft model must share the model's "
                    "vocabulary (pick one of the same family)."
                )
            # rollback of rejected drafts needs every position kept, also in sliding-window layers
            draft_settings = settings.replace(swa_full=True, n_batch=512, n_ubatch=512)
            self.ctx = llama_cpp.llama_init_from_model(self.model, context_params(draft_settings))
            if not self.ctx:
                raise EngineError(
                    f"{self.path.name}: llama.cpp could not create a context for the draft model."
                )
        except Exception:
            self.close()
            raise
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._cached: list[int] = []

    def _decode(self, tokens: Sequence[int], start: int) -> None:
        batch = self._batch
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            batch.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + offset + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = offset + i == len(tokens) - 1
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                self._forget()
                raise ContextFullError("The draft model could not evaluate the conversation.")
            self._cached.extend(chunk)

    def _forget(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), False)
        self._cached = []

    def draft(self, sequence: Sequence[int], k: int) -> list[int]:
        """Up to `k` greedy tokens after `sequence` (the target's cached tokens plus the newest one)."""
        if k <= 0 or not sequence or len(sequence) + k > self.n_ctx:
            return []
        n = min(common_prefix(self._cached, sequence), len(sequence) - 1)
        if n < len(self._cached):
            if not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), 0, n, -1):
                self._forget()
                n = 0
            del self._cached[n:]
        self._decode(list(sequence[n:]), n)
        out: list[int] = []
        while True:
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)
            )
            tok = int(np.argmax(logits))
            out.append(tok)
            if len(out) >= k or llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                return out
            self._decode([tok], len(self._cached))

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Governor:
    """Keeps drafting on only while it pays: seconds per emitted token with drafting against plain decoding.

    Plain steps (no draft found, or drafting off) keep the plain cost current; after a few drafted steps that
    cost more per token than plain ones, drafting goes off for a while, then is probed again (longer each time
    it fails, up to MAX_BACKOFF tokens)."""

    WINDOW = 4  # drafted steps judged together
    MIN_BACKOFF, MAX_BACKOFF = 16, 256
    MARGIN = 0.97  # drafting must beat plain decoding by 3% to stay on

    BASELINE = 2  # plain steps measured before drafting starts

    def __init__(self) -> None:
        self._plain: collections.deque[float] = collections.deque(maxlen=16)  # recent plain steps' seconds
        self.backoff = self.MIN_BACKOFF
        self.reset()

    @property
    def plain_s(self) -> float | None:
        """One plain step's usual cost: the median of the recent ones (a descheduled step does not count)."""
        return statistics.median(self._plain) if self._plain else None

    def reset(self) -> None:
        """A new reply: probe drafting from its start (the plain cost is kept)."""
        self.off_until = 0
        self.switched_off = False
        self._seconds = 0.0
        self._tokens = 0
        self._steps = 0

    def active(self, produced: int) -> bool:
        return produced >= self.off_until

    def needs_baseline(self) -> bool:
        return len(self._plain) < self.BASELINE

    def plain_step(self, seconds: float) -> None:
        self._plain.append(seconds)

    def drafted_step(self, seconds: float, emitted: int, produced: int) -> None:
        self._seconds += seconds
        self._tokens += emitted
        self._steps += 1
        plain = self.plain_s
        if self._steps < self.WINDOW or plain is None:
            return
        per_token = self._seconds / max(1, self._tokens)
        if per_token * self.MARGIN > plain:
            self.off_until = produced + self.backoff
            self.backoff = min(self.MAX_BACKOFF, self.backoff * 2)
            self.switched_off = True
        else:
            self.backoff = self.MIN_BACKOFF
        self._seconds, self._tokens, self._steps = 0.0, 0, 0


@dataclass
class DraftCounts:
    drafted: int = 0
    accepted: int = 0


class Speculator:
    """The drafting setup of a loaded model: prompt lookup and/or a draft model, and the governor."""

    def __init__(self, settings: LoadSettings, draft_model: DraftModel | None = None):
        self.max_k = settings.draft_max
        self.lookup_ngram = settings.lookup_ngram if settings.lookup else 0
        self.draft_model = draft_model
        self.governor = Governor()

    @property
    def source(self) -> str:
        parts = (["prompt lookup"] if self.lookup_ngram else []) + (
            [f"draft {self.draft_model.path.name}"] if self.draft_model else []
        )
        return " + ".join(parts)

    def close(self) -> None:
        if self.draft_model:
            self.draft_model.close()
            self.draft_model = None


class SpeculativeSteps:
    """One reply's drafting: proposes tokens after the newest one; the decode loop verifies them."""

    def __init__(self, spec: Speculator, history: list[int]):
        self.spec = spec
        self.history = history  # prompt + emitted tokens (grows as the loop emits)
        self.lookup = PromptLookup(spec.lookup_ngram) if spec.lookup_ngram else None
        self.counts = DraftCounts()
        spec.governor.reset()

    def propose(self, cached: Sequence[int], newest: int, produced: int, room: int) -> list[int]:
        """Draft tokens to follow `newest`; [] for a plain step. `room`: free KV cells after `newest`."""
        gov = self.spec.governor
        k = min(self.spec.max_k, room)
        if k <= 0 or gov.needs_baseline() or not gov.active(produced):
            return []
        draft = self.lookup.draft(self.history, k) if self.lookup else []
        if not draft and self.spec.draft_model:
            draft = self.spec.draft_model.draft([*cached, newest], k)
        return draft

    def record(self, drafted: int, accepted: int, emitted: int, seconds: float, produced: int) -> None:
        if drafted:
            self.counts.drafted += drafted
            self.counts.accepted += accepted
            self.spec.governor.drafted_step(seconds, emitted, produced)
        else:
            self.spec.governor.plain_step(seconds)


def timer() -> float:
    return time.perf_counter()
