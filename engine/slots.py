"""Continuous batching: several requests decoded together, one llama_decode per step, in the engine child.

A SlotPool shares the Runtime's model (one copy of the weights) but owns its own llama_context with one
sequence per slot in a unified KV cache. A decode thread runs the steps: every decoding slot contributes its
next token and prefilling slots contribute prompt chunks to ONE batch; after llama_decode each slot is sampled
at its own batch index with its own sampler chain. Requests join and leave between steps. Each slot keeps the
tokens it holds, so a new request takes the free slot sharing the longest prefix and evaluates only the rest.
Callers (any thread) render and tokenize before a request enters the pool; they read events from a SlotStream.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import llama_cpp

from engine.errors import EngineError, SettingsError
from engine.events import Event, Message, PromptEvaluated, ReplyDone, ReplyStats, StopReason, Token
from engine.interface import MAX_SLOTS, SlotState
from engine.llama_params import context_params, free_context
from engine.overflow import fit_prompt
from engine.preview import token_logprobs
from engine.sampling import SamplerChain
from engine.settings import OverflowPolicy, SamplingSettings
from engine.textstream import TextStream, common_prefix
from engine.threads import ThreadChooser

if TYPE_CHECKING:
    from engine.runtime import Runtime


# With replies decoding, a step takes at most this many prompt tokens, so a long prompt joining the pool
# delays the others' next token by one short chunk instead of a whole batch.
PREFILL_WITH_DECODERS = 128
GATHER_SECONDS = 0.05
_END = object()


class SlotRequest:
    """One request in the pool: its prompt, sampler chain and progress; events go to `events`."""

    def __init__(self, tokens: list[int], sampling: SamplingSettings, chain: SamplerChain, started: float):
        self.tokens = tokens
        self.sampling = sampling
        self.chain = chain
        self.started = started
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.stream = TextStream(sampling.stop)
        self.want_logprobs = sampling.logprobs or sampling.top_logprobs > 0
        self.generated: list[int] = []
        self.next = 0  # index in `tokens` of the next prompt token to evaluate
        self.reused = 0
        self.admitted = 0.0
        self.evaluated: PromptEvaluated | None = None
        self.pending = -1  # the sampled token to feed in the next step
        self.ttft = 0.0
        self.decode_started = 0.0


class SlotStream:
    """The events of one pooled request. Iterate it from one thread; `cancel()` from any thread ends the reply
    (ReplyDone with stop reason 'cancelled'); `close()` cancels and stops reading."""

    def __init__(self, pool: SlotPool, request: SlotRequest):
        self._pool = pool
        self._request = request
        self._finished = False

    def __iter__(self) -> SlotStream:
        return self

    def __next__(self) -> Event:
        if self._finished:
            raise StopIteration
        item = self._request.events.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item

    def cancel(self) -> None:
        self._pool.cancel(self._request)

    def close(self) -> None:
        if not self._finished:
            self.cancel()
            self._finished = True

    def __del__(self) -> None:
        self.close()


class _Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.cached: list[int] = []
        self.request: SlotRequest | None = None


class SlotPool:
    """`n_slots` sequences of `n_ctx` tokens each in one context on the Runtime's model. Thread-safe."""

    def __init__(self, rt: Runtime, n_slots: int, n_ctx: int):
        if not 1 <= n_slots <= MAX_SLOTS:
            raise SettingsError("parallel", f"{n_slots} slots is out of range; use 1 to {MAX_SLOTS}")
        if n_ctx < 64:
            raise SettingsError("ctx-size", f"{n_ctx} tokens per slot is too small; use 64 or more")
        rt.require_model()
        self.rt = rt
        self.n_slots = n_slots
        self.n_ctx = n_ctx  # per slot
        settings = rt.load_settings.replace(
            n_ctx=n_slots * n_ctx, n_batch=max(rt.load_settings.n_batch, n_slots)
        )
        cparams = context_params(settings, llama_cpp.llama_model_n_ctx_train(rt.model))
        cparams.n_seq_max = n_slots
        cparams.kv_unified = True  # one cache for all slots: a slot may use any free cell
        self.ctx = llama_cpp.llama_init_from_model(rt.model, cparams)
        if not self.ctx:
            raise EngineError(
                f"llama.cpp could not create a context for {n_slots} slots of {n_ctx} tokens; "
                "try fewer slots or a smaller context."
            )
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._apply_adapters()
        self._threads = ThreadChooser()
        self.threads = None  # engine.events.ThreadsChosen: what the batch runs on now
        self.evaluations = 0  # llama_decode calls, for tests
        self._slots = [_Slot(i) for i in range(n_slots)]
        self._waiting: deque[SlotRequest] = deque()
        self._lock = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="ingle-slots", daemon=True)
        self._thread.start()

    def _apply_adapters(self) -> None:
        handles, scales = self.rt._adapters, self.rt.adapter_scales
        if not handles:
            return
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
        values = (ctypes.c_float * len(handles))(*scales)
        if llama_cpp.llama_set_adapters_lora(self.ctx, arr, len(handles), values) != 0:
            self.close()
            raise EngineError("llama.cpp refused to apply the adapters to the slots' context.")

    # ------------------------------------------------------------ requests (any thread)
    def chat(self, messages: Sequence[Message], sampling: SamplingSettings) -> SlotStream:
        if not messages or messages[-1].role not in ("user", "system"):
            raise EngineError("The conversation must end with a user message to get a reply.")
        started = time.perf_counter()
        return self.submit(self.rt.render_tokens(list(messages)), sampling, started)

    def complete(self, prompt: str, sampling: SamplingSettings) -> SlotStream:
        started = time.perf_counter()
        tokens = self.rt.tokenize(prompt, add_special=True, parse_special=False)
        if not tokens:
            raise EngineError("The prompt is empty.")
        return self.submit(tokens, sampling, started)

    def submit(
        self, tokens: list[int], sampling: SamplingSettings, started: float | None = None
    ) -> SlotStream:
        """Queue a tokenized prompt; a prompt that cannot fit a slot with the reply's reserve is refused."""
        reserve = min(sampling.max_tokens, self.n_ctx // 4)
        fit_prompt(self.n_ctx, tokens, reserve, OverflowPolicy.STOP, 0)
        chain = SamplerChain(self.rt.vocab, self.rt.n_vocab, sampling, self.n_ctx)
        if not (sampling.grammar or sampling.json_schema):  # as Runtime: penalties see the prompt too
            chain.accept_history(
                tokens[-sampling.penalty_last_n :] if sampling.penalty_last_n > 0 else tokens
            )
        request = SlotRequest(list(tokens), sampling, chain, started or time.perf_counter())
        with self._lock:
            if not self._running:
                chain.close()
                raise EngineError("The slots were stopped; start them again.")
            self._waiting.append(request)
            self._lock.notify_all()
        return SlotStream(self, request)

    def cancel(self, request: SlotRequest) -> None:
        with self._lock:
            request.cancelled.set()
            self._lock.notify_all()

    def states(self) -> list[SlotState]:
        with self._lock:
            return [
                SlotState(
                    s.seq, s.request is not None, len(s.cached), len(s.request.generated) if s.request else 0
                )
                for s in self._slots
            ]

    def close(self) -> None:
        """Stop the decode thread; requests still running end with an error; the context is freed."""
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        stopped = EngineError("The slots were stopped while this request ran.")
        for request in [*self._waiting, *(s.request for s in self._slots if s.request)]:
            request.chain.close()
            request.events.put(stopped)
            request.events.put(_END)
        self._waiting.clear()
        for s in self._slots:
            s.request = None
        free_context(self.ctx, self._batch)
        self.ctx = self._batch = None

    # ------------------------------------------------------------ the decode thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self._waiting and not any(s.request for s in self._slots):
                    self._lock.wait()
                if not self._running:
                    return
                if not any(s.request for s in self._slots):
                    # waking from idle: requests sent together (a client's parallel calls) arrive a few ms
                    # apart; gather them so their prompts share the first batches instead of queueing behind
                    # the first one's prefill
                    deadline = time.monotonic() + GATHER_SECONDS
                    while self._running and len(self._waiting) < self.n_slots:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._lock.wait(left)
                self._drop_cancelled()
                self._admit()
            try:
                self._step()
            except Exception as err:  # a failed step ends the requests in it; the pool goes on
                with self._lock:
                    for s in self._slots:
                        if s.request is not None:
                            self._fail(s, err if isinstance(err, EngineError) else EngineError(str(err)))

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._waiting if r.cancelled.is_set()]:
            self._waiting.remove(request)
            self._finish(None, request, StopReason.CANCELLED)
        for s in self._slots:
            if s.request is not None and s.request.cancelled.is_set():
                self._finish(s, s.request, StopReason.CANCELLED)

    def _admit(self) -> None:
        """Give waiting requests (in arrival order) the free slot whose cached tokens share the longest prefix."""
        if self._waiting and not any(s.request for s in self._slots):
            self._choose_threads()  # the pool wakes up: as the chat does per reply, from the cores idle now
        while self._waiting:
            free = [s for s in self._slots if s.request is None]
            if not free:
                return
            request = self._waiting.popleft()
            slot = max(free, key=lambda s: common_prefix(s.cached, request.tokens))
            request.reused = request.next = self._reuse_prefix(slot, request.tokens)
            request.admitted = time.perf_counter()
            slot.request = request

    def _choose_threads(self) -> None:
        """llama.cpp's threads wait for each other at every step, so one on a core that other work keeps busy
        stalls the batch: run on the cores idle since the pool last went quiet (engine.threads), unless the
        load settings give a count."""
        settings = self.rt.load_settings
        chosen = self._threads.pick(settings.n_threads, settings.n_threads_batch)
        llama_cpp.llama_set_n_threads(self.ctx, chosen.threads, chosen.threads_batch)
        self.threads = chosen

    def _reuse_prefix(self, slot: _Slot, tokens: Sequence[int]) -> int:
        """Keep the slot's cached tokens that start `tokens` (at least one token is left to evaluate)."""
        mem = llama_cpp.llama_get_memory(self.ctx)
        n = min(common_prefix(slot.cached, tokens), len(tokens) - 1)
        if n < len(slot.cached) and not llama_cpp.llama_memory_seq_rm(mem, slot.seq, n, -1):
            n = 0
        n_swa = llama_cpp.llama_model_n_swa(self.rt.model)
        if n > 0 and n_swa > 0 and not self.rt.load_settings.swa_full:
            # sliding-window layers drop old cells; reuse only if the window before `n` is still there
            if llama_cpp.llama_memory_seq_pos_min(mem, slot.seq) > max(0, n - n_swa):
                n = 0
        if n == 0:
            llama_cpp.llama_memory_seq_rm(mem, slot.seq, -1, -1)
            slot.cached = []
        else:
            del slot.cached[n:]
        return n

    def _step(self) -> None:
        """One llama_decode: the next token of every decoding slot, then prompt chunks of prefilling slots."""
        batch = self._batch
        plan: list[
            tuple[_Slot, list[int], int]
        ] = []  # slot, tokens added, batch index of its logits (-1: none)
        n = 0
        active = [s for s in self._slots if s.request is not None]
        decoding = [s for s in active if s.request.pending >= 0]
        for s in decoding:
            self._put(batch, n, s.request.pending, len(s.cached), s.seq, True)
            plan.append((s, [s.request.pending], n))
            n += 1
        budget = self.n_batch - n
        if decoding:
            budget = min(budget, PREFILL_WITH_DECODERS)
        for s in active:
            r = s.request
            if r.pending >= 0 or budget <= 0:
                continue
            chunk = r.tokens[r.next : r.next + budget]
            last = r.next + len(chunk) == len(r.tokens)
            for i, tok in enumerate(chunk):
                self._put(batch, n + i, tok, len(s.cached) + i, s.seq, last and i == len(chunk) - 1)
            plan.append((s, chunk, n + len(chunk) - 1 if last else -1))
            n += len(chunk)
            budget -= len(chunk)
        if n == 0:
            return
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, batch)
        self.evaluations += 1
        if self.rt.heartbeat:
            self.rt.heartbeat()
        with self._lock:
            if rc != 0:
                mem = llama_cpp.llama_get_memory(self.ctx)
                for s, _, _ in plan:  # the cache may hold part of the batch: forget these slots' tokens
                    llama_cpp.llama_memory_seq_rm(mem, s.seq, -1, -1)
                    s.cached = []
                    if s.request is not None:
                        what = "no room in the KV cache" if rc == 1 else f"llama_decode failed with code {rc}"
                        self._fail(s, EngineError(f"Batched decoding failed: {what}."))
                return
            for s, added, idx in plan:
                s.cached.extend(added)
                r = s.request
                if r.pending < 0:
                    r.next += len(added)
                if idx >= 0 and not r.cancelled.is_set():
                    self._sample(s, r, idx)

    @staticmethod
    def _put(batch, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _sample(self, s: _Slot, r: SlotRequest, idx: int) -> None:
        rt = self.rt
        now = time.perf_counter()
        if r.evaluated is None:
            r.evaluated = PromptEvaluated(len(r.tokens), r.reused, len(r.tokens) - r.reused, now - r.admitted)
            r.events.put(r.evaluated)
        token = r.chain.sample(self.ctx, idx)
        if not r.generated:
            r.ttft = time.perf_counter() - r.started
            r.decode_started = time.perf_counter()
        if rt.is_eog(token):
            return self._finish(s, r, StopReason.EOS)
        r.generated.append(token)
        logprob, alternatives = None, ()
        if r.want_logprobs:
            logprob, alternatives = token_logprobs(
                r.chain.logits(self.ctx, idx), token, r.sampling.top_logprobs, rt.token_text
            )
        text = r.stream.push(rt.token_bytes(token))
        r.events.put(
            Token(token, text, logprob, alternatives, rt.token_text(token) if r.want_logprobs else "")
        )
        if r.stream.stopped:
            return self._finish(s, r, StopReason.STOP_STRING)
        if len(r.generated) >= r.sampling.max_tokens:
            return self._finish(s, r, StopReason.MAX_TOKENS)
        if len(s.cached) >= self.n_ctx:
            return self._finish(s, r, StopReason.CONTEXT_FULL)
        r.pending = token

    def _finish(self, s: _Slot | None, r: SlotRequest, reason: StopReason) -> None:
        """End a request with its ReplyDone and free its slot (the slot keeps its tokens as a prefix cache)."""
        tail = r.stream.flush()
        if tail:
            r.events.put(Token(-1, tail))
        evaluated = r.evaluated or PromptEvaluated(len(r.tokens), r.reused, 0, 0.0)
        stats = ReplyStats(
            prompt_tokens=evaluated.prompt_tokens,
            reused_tokens=evaluated.reused_tokens,
            evaluated_tokens=evaluated.evaluated_tokens,
            generated_tokens=len(r.generated),
            ttft_seconds=r.ttft,
            prefill_seconds=evaluated.seconds,
            decode_seconds=time.perf_counter() - r.decode_started if r.generated else 0.0,
            stop_reason=reason,
            n_ctx=self.n_ctx,
            n_past=len(s.cached) if s else 0,
            seed=r.chain.seed,
        )
        r.chain.close()
        r.events.put(ReplyDone(r.stream.text, stats, tuple(r.generated)))
        r.events.put(_END)
        if s is not None:
            s.request = None
        if not any(slot.request for slot in self._slots):
            self._threads.start_window()  # quiet now: what keeps the cores busy from here is other work

    def _fail(self, s: _Slot, err: Exception) -> None:
        r = s.request
        s.request = None
        r.chain.close()
        r.events.put(err)
        r.events.put(_END)


def not_started() -> SlotPool:
    raise EngineError("The slots are not started: call start_slots first (the server does).")
