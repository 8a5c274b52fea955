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
from engine.llama_params import context_params, free_context, model_params
from engine.sampling import LogitsView
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

    P_MIN = 0.75  # a drafted token after the first needs this probability under the draft (llama.cpp's p_min)

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
        self._logits = LogitsView(self.n_vocab)
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
        # catching up on tokens the draft has not seen (a new prompt, tokens decoded while drafting was off) is
        # part of what drafting costs: the step's time includes it
        self._decode(list(sequence[n:]), n)
        out: list[int] = []
        while True:
            logits = self._logits(self.ctx)
            tok = int(np.argmax(logits))
            if out and self._unsure(logits, tok):
                return out  # the target would likely reject it: stop drafting here (llama.cpp's p_min)
            out.append(tok)
            if len(out) >= k or llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                return out
            self._decode([tok], len(self._cached))

    @staticmethod
    def _unsure(logits: np.ndarray, tok: int) -> bool:
        """The draft's own probability of its greedy token is below P_MIN."""
        top = float(logits[tok])
        return 1.0 / float(np.exp(logits - top, dtype=np.float32).sum()) < DraftModel.P_MIN

    def close(self) -> None:
        free_context(self.ctx, self._batch)
        self.ctx = self._batch = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class PlainCost:
    """What a plain step (one token, no draft) costs now: the median of the recent ones, so a descheduled step
    does not make drafting look cheap."""

    BASELINE = 2  # plain steps measured before drafting starts

    def __init__(self) -> None:
        self._seconds: collections.deque[float] = collections.deque(maxlen=16)

    def add(self, seconds: float) -> None:
        self._seconds.append(seconds)

    @property
    def known(self) -> bool:
        return len(self._seconds) >= self.BASELINE

    @property
    def seconds(self) -> float | None:
        return statistics.median(self._seconds) if self._seconds else None


class Governor:
    """Keeps one draft source on only while it pays: seconds per emitted token of its drafted steps against a
    plain step's.

    Judged over windows of a few drafted steps (two when they cost twice a plain one or more): when the
    source costs more per token than plain decoding it goes off, then is probed again later, the pause growing
    fourfold each time it fails (up to MAX_BACKOFF tokens) and back to the minimum when a probe pays. The
    pause counts tokens across replies (`clock`): a draft model that does not pay on this machine stays off
    from one reply to the next instead of being probed again at the start of each."""

    WINDOW = 4  # drafted steps judged together
    MIN_BACKOFF, MAX_BACKOFF = 16, 4096
    GROWTH = 4
    MARGIN = 0.97  # drafting must beat plain decoding by 3% to stay on (by default)
    HOPELESS = 2.0  # two drafted steps this many times dearer per token than plain end the probe early

    def __init__(self, plain: PlainCost | None = None, margin: float = MARGIN) -> None:
        self.plain = plain or PlainCost()
        self.margin = margin
        self.backoff = self.MIN_BACKOFF
        self.clock = 0  # tokens produced while this governor's source could draft (all replies)
        self.off_until = 0
        self.reset()

    def reset(self) -> None:
        """A new reply: its judging window starts empty; a pause from earlier replies goes on."""
        self.switched_off = not self.active()
        self._seconds = 0.0
        self._tokens = 0
        self._steps = 0

    def tick(self, tokens: int) -> None:
        self.clock += tokens

    def active(self) -> bool:
        return self.clock >= self.off_until

    def drafted_step(self, seconds: float, emitted: int) -> None:
        self._seconds += seconds
        self._tokens += emitted
        self._steps += 1
        plain = self.plain.seconds
        if plain is None:
            return
        per_token = self._seconds / max(1, self._tokens)
        hopeless = self._steps >= 2 and per_token > self.HOPELESS * plain
        if self._steps < self.WINDOW and not hopeless:
            return
        if per_token > plain * self.margin:
            self.off_until = self.clock + emitted + self.backoff
            self.backoff = min(self.MAX_BACKOFF, self.backoff * self.GROWTH)
            self.switched_off = True
        else:
            self.backoff = self.MIN_BACKOFF
        self._seconds, self._tokens, self._steps = 0.0, 0, 0


@dataclass
class DraftCounts:
    drafted: int = 0
    accepted: int = 0


class Speculator:
    """The drafting setup of a loaded model: prompt lookup and/or a draft model, each with its own governor
    (a lookup draft costs almost nothing to make, a draft model's costs its decoding) over one plain cost."""

    def __init__(self, settings: LoadSettings, draft_model: DraftModel | None = None):
        self.max_k = settings.draft_max
        self.lookup_ngram = settings.lookup_ngram if settings.lookup else 0
        self.draft_model = draft_model
        self.plain = PlainCost()
        self.lookup_governor = Governor(self.plain)
        # a draft model must win clearly: switching it back on costs a catch-up, and its gain is never large here
        self.draft_governor = Governor(self.plain, margin=0.9)

    @property
    def governors(self) -> tuple[Governor, ...]:
        return (self.lookup_governor,) * bool(self.lookup_ngram) + (self.draft_governor,) * bool(
            self.draft_model
        )

    @property
    def switched_off(self) -> bool:
        """Whether a source was off during the current reply (it did not pay)."""
        return any(g.switched_off for g in self.governors)

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
        self._drafted_by: Governor | None = None
        for gov in spec.governors:
            gov.reset()

    def propose(self, cached: Sequence[int], newest: int, room: int) -> list[int]:
        """Draft tokens to follow `newest`; [] for a plain step. `room`: free KV cells after `newest`."""
        spec = self.spec
        k = min(spec.max_k, room)
        self._drafted_by = None
        if k <= 0 or not spec.plain.known:
            return []
        if self.lookup and spec.lookup_governor.active():
            draft = self.lookup.draft(self.history, k)
            if draft:
                self._drafted_by = spec.lookup_governor
                return draft
        if spec.draft_model and spec.draft_governor.active():
            self._drafted_by = spec.draft_governor
            return spec.draft_model.draft([*cached, newest], k)
        return []

    def record(self, drafted: int, accepted: int, emitted: int, seconds: float) -> None:
        for gov in self.spec.governors:
            gov.tick(emitted)
        if drafted and self._drafted_by is not None:
            self.counts.drafted += drafted
            self.counts.accepted += accepted
            self._drafted_by.drafted_step(seconds, emitted)
        else:
            self.spec.plain.add(seconds)
        for gov in self.spec.governors:
            gov.switched_off = gov.switched_off or not gov.active()


def timer() -> float:
    return time.perf_counter()
