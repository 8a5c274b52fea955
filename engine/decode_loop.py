"""The reply loop of the runtime: sample, emit, decode the newest token; or, with speculative decoding, verify
drafted tokens in one batch and emit the accepted ones (engine.speculative drafts them)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

from engine.events import Event, ReplyDone, ReplyStats, StopReason, Token
from engine.preview import token_logprobs
from engine.sampling import SamplerChain
from engine.settings import OverflowPolicy, SamplingSettings
from engine.speculative import SpeculativeSteps, Speculator
from engine.textstream import TextStream


class Stepper:
    """Hands out the reply's tokens one at a time with the index of the logits each was sampled from.

    The newest emitted token enters the KV cache lazily, when the next one is asked for: alone (a plain step) or
    followed by drafted tokens that the target checks in the same batch (a drafted step)."""

    def __init__(self, rt, chain: SamplerChain, steps: SpeculativeSteps | None):
        self.rt, self.chain, self.steps = rt, chain, steps
        self.queue: collections.deque[tuple[int, int, bool]] = (
            collections.deque()
        )  # token, logits index, cached
        self.pending: int | None = None  # the newest emitted token while it is not in the KV cache

    @property
    def will_decode(self) -> bool:
        return not self.queue and self.pending is not None

    def next(self) -> tuple[int, int]:
        if self.queue:
            token, idx, cached = self.queue.popleft()
        elif self.pending is None:  # the first token comes from the prompt's logits
            token, idx, cached = self.chain.sample(self.rt.ctx, -1), -1, False
        else:
            token, idx, cached = self._step(self.pending)
        self.pending = None if cached else token
        if self.steps:
            self.steps.history.append(token)
        return token, idx

    def _step(self, newest: int) -> tuple[int, int, bool]:
        rt, chain, steps = self.rt, self.chain, self.steps
        started = time.perf_counter()
        base = len(rt._cached)
        room = (
            min(rt.n_ctx - base, rt.n_batch) - 1
        )  # the verify batch is one llama_decode, inside the context
        draft = steps.propose(rt._cached, newest, room) if steps else []
        if not draft:
            rt._decode([newest], base)
            token = chain.sample(rt.ctx, -1)
            if steps:
                steps.record(0, 0, 1, time.perf_counter() - started)
            return token, -1, False
        rt._decode([newest, *draft], base, all_logits=True)
        out: list[tuple[int, int, bool]] = []
        for i in range(len(draft) + 1):
            token = chain.sample(rt.ctx, i)  # the target's own chain decides; it accepts only what is emitted
            accepted = i < len(draft) and token == draft[i]
            out.append((token, i, accepted))
            if not accepted:
                break
        n_accepted = len(out) - 1
        rt.drop_after(base + 1 + n_accepted)  # rejected drafts leave the KV cache
        steps.record(len(draft), n_accepted, len(out), time.perf_counter() - started)
        self.queue.extend(out[1:])
        return out[0]

    def finish(self) -> None:
        """Accepted drafts the reply did not reach (it stopped first) leave the KV cache."""
        extra = sum(1 for _, _, cached in self.queue if cached)
        if extra:
            self.rt.drop_after(len(self.rt._cached) - extra)
        self.queue.clear()


def sample_loop(
    rt,
    tokens: list[int],
    sampling: SamplingSettings,
    policy: OverflowPolicy,
    keep: int,
    chain: SamplerChain,
    started: float,
    speculator: Speculator | None = None,
) -> Iterator[Event]:
    evaluated = rt.evaluate(tokens)
    yield evaluated
    if not (sampling.grammar or sampling.json_schema):
        chain.accept_history(tokens[-sampling.penalty_last_n :] if sampling.penalty_last_n > 0 else tokens)
    steps = SpeculativeSteps(speculator, list(tokens)) if speculator else None
    stepper = Stepper(rt, chain, steps)
    stream = TextStream(sampling.stop)
    want_logprobs = sampling.logprobs or sampling.top_logprobs > 0
    generated: list[int] = []
    ttft = 0.0
    decode_started = time.perf_counter()
    reason = StopReason.MAX_TOKENS
    try:
        while True:
            if rt.stop_flag.is_set():
                reason = StopReason.CANCELLED
                break
            if stepper.will_decode and len(rt._cached) >= rt.n_ctx:
                if policy != OverflowPolicy.SLIDING_WINDOW:
                    reason = StopReason.CONTEXT_FULL
                    break
                yield rt._shift_context(keep)
            token, idx = stepper.next()
            if not generated:
                ttft = time.perf_counter() - started
                decode_started = time.perf_counter()
            if rt.is_eog(token):
                reason = StopReason.EOS
                break
            generated.append(token)
            logprob, alternatives = (
                token_logprobs(chain.logits(rt.ctx, idx), token, sampling.top_logprobs, rt.token_text)
                if want_logprobs
                else (None, ())
            )
            text = stream.push(rt.token_bytes(token))
            yield Token(token, text, logprob, alternatives, rt.token_text(token) if want_logprobs else "")
            if stream.stopped:
                reason = StopReason.STOP_STRING
                break
            if len(generated) >= sampling.max_tokens:
                break
    finally:
        stepper.finish()
    tail = stream.flush()
    if tail:
        yield Token(-1, tail)
    decode_seconds = time.perf_counter() - decode_started if generated else 0.0
    stats = ReplyStats(
        prompt_tokens=evaluated.prompt_tokens,
        reused_tokens=evaluated.reused_tokens,
        evaluated_tokens=evaluated.evaluated_tokens,
        generated_tokens=len(generated),
        ttft_seconds=ttft,
        prefill_seconds=evaluated.seconds,
        decode_seconds=decode_seconds,
        stop_reason=reason,
        n_ctx=rt.n_ctx,
        n_past=len(rt._cached),
        seed=chain.seed,
        drafted_tokens=steps.counts.drafted if steps else 0,
        accepted_tokens=steps.counts.accepted if steps else 0,
        drafting=speculator.source if speculator else "",
        drafting_switched_off=bool(steps and speculator.switched_off),
    )
    yield ReplyDone(stream.text, stats, tuple(generated))
