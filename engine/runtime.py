"""The in-process llama.cpp runtime: load a model, keep its KV cache across turns, stream sampled tokens.

Over 500 lines on purpose: loading, tokens and evaluation share the model and context handles and the list of
cached tokens, which no other module may touch. What does not need them lives beside it: engine.decode_loop (the
reply loop, speculative decoding), engine.runtime_services (the delegates for tools, embeddings, slots, saved
states and the visualizers), engine.overflow (overflow policies), engine.llama_params (settings as llama.cpp
parameters), engine.textstream (UTF-8 and stop strings), engine.preview (sampling math).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from engine import (
    embeddings,
    fit,
    threads,
)
from engine.chat_template import ChatTemplate, template_for
from engine.decode_loop import sample_loop
from engine.errors import Cancelled, ContextFullError, EngineError, ModelFileError
from engine.events import (
    ContextTrimmed,
    Event,
    LoadProgress,
    Message,
    ModelLoaded,
    PromptEvaluated,
)
from engine.gguf_info import ModelInfo, inspect_gguf
from engine.hardware import Hardware, current
from engine.kv import parse_kv_report
from engine.llama_params import context_params, free_context, model_params
from engine.overflow import drop_oldest, fit_prompt, system_tokens
from engine.runtime_services import RuntimeServices
from engine.sampling import SamplerChain
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.speculative import DraftModel, Speculator
from engine.text import printable
from engine.textstream import common_prefix

log = logging.getLogger("ingle.engine")
_TEMPLATE_MARKERS = ("<start_of_turn>", "<|start_header_id|>", "[INST]", "<|im_start|>")


# llama.cpp's own reports of the KV caches it allocated (see engine.kv.parse_kv_report)
_kv_reports: list[dict] = []
# llama.cpp's latest error lines: a failed load says why in the error itself, not only in a log
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)


@llama_cpp.llama_log_callback
def _llama_log(level: int, text: bytes, _user) -> None:
    # llama.cpp is chatty; keep warnings and errors (ggml levels 3, 4; they land in the host's stderr tail),
    # drop the rest unless INGLE_LLAMA_LOG asks for everything.
    line = text.decode(errors="replace")
    if "llama_kv_cache: size" in line and (report := parse_kv_report(line)):
        _kv_reports.append(report)
    if level == 4 and line.strip():
        _recent_errors.append(line.strip())
    if level in (3, 4) or os.environ.get("INGLE_LLAMA_LOG"):
        log.warning("llama.cpp: %s", line.rstrip())


_backend_ready = False


def init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_log_set(_llama_log, None)
        llama_cpp.llama_backend_init()
        _backend_ready = True


def _load_failure_reason() -> str:
    """llama.cpp's own words for why the last load failed (one line, control characters made visible)."""
    lines = [line for line in _recent_errors if "error loading model" in line] or list(_recent_errors)
    _recent_errors.clear()
    if not lines:
        return "it gave no reason (run with -v to see its log)."
    reason = lines[-1].split("error loading model:", 1)[-1].strip()
    return printable(reason)[:300] + "."


class Runtime(RuntimeServices):
    """One loaded model and one context (sequence 0). Not thread-safe except `cancel()`."""

    def __init__(self) -> None:
        init_backend()
        self.model = None
        self.ctx = None
        self.vocab = None
        self.info: ModelInfo | None = None
        self.load_settings: LoadSettings | None = None
        self.template: ChatTemplate | None = None
        self._adapters: list = []
        self.adapter_scales: list[float] = []  # the scale of each of _adapters, in order
        self.adapter_specs: tuple[tuple[str, float], ...] = ()  # (path, scale) of the adapters applied
        self._slots = None  # engine.slots.SlotPool, once start_slots is called
        self.speculator: Speculator | None = None  # drafting for speculative decoding, when asked for
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        # set by cancel() from any thread; each piece of work clears it when it starts and stops when it is set
        self.stop_flag = threading.Event()
        self._batch = None
        self.n_ctx = 0
        self.n_vocab = 0
        self.n_batch = 0
        self.evaluations = 0  # llama_decode calls, for tests and visualizers
        self.heartbeat = None  # called after every llama_decode; the host uses it to prove it is alive
        self.kv_reports: list[dict] = []
        self.last_evaluation: PromptEvaluated | None = None
        self.logits_snapshot: np.ndarray | None = None  # next-token logits after the last prompt evaluation

    # ---------------------------------------------------------------- loading
    def load(
        self,
        path: str | Path,
        settings: LoadSettings | None = None,
        adapters: Sequence[tuple[str, float]] = (),
        chat_template: str | None = None,
    ) -> Iterator[Event]:
        """Validate and load a model; yields LoadProgress events, then ModelLoaded."""
        settings = settings or LoadSettings()
        info = inspect_gguf(path)
        adapter_infos = [(inspect_gguf(a, expect="adapter"), scale) for a, scale in adapters]
        for ainfo, _ in adapter_infos:
            if ainfo.architecture != info.architecture:
                raise ModelFileError(
                    f"{ainfo.path}: adapter is for '{ainfo.architecture}' models but the model is '{info.architecture}'."
                )
        extra = sum(a.file_size for a, _ in adapter_infos)
        settings, fit_note = fit.settings_for_load(info, settings, extra)  # refuse up front what cannot fit
        self.unload()
        self.stop_flag.clear()
        _recent_errors.clear()
        started = time.perf_counter()
        progress: queue.Queue = queue.Queue()
        result: dict = {}

        @llama_cpp.llama_progress_callback
        def on_progress(fraction: float, _user) -> bool:
            progress.put(fraction)
            return not self.stop_flag.is_set()

        mparams = model_params(settings, info.n_layers)
        mparams.progress_callback = on_progress

        def worker() -> None:
            result["model"] = llama_cpp.llama_model_load_from_file(os.fsencode(path), mparams)
            progress.put(None)

        thread = threading.Thread(target=worker, name="ingle-load", daemon=True)
        thread.start()
        while (fraction := progress.get()) is not None:
            yield LoadProgress(min(1.0, float(fraction)))
        thread.join()
        model = result.get("model")
        if self.stop_flag.is_set():
            if model:
                llama_cpp.llama_model_free(model)
            raise Cancelled("Loading was cancelled.")
        if not model:
            raise EngineError(f"{path}: llama.cpp could not load this model: {_load_failure_reason()}")
        self.model = model
        self.info = info
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        try:
            self._create_context(settings)
            self._apply_adapters(adapter_infos)
            self.template = self._make_template(chat_template)
            self.template.cancel = None  # from now on only a running chat's render listens to Stop
            if settings.speculative:
                self.speculator = Speculator(settings, self._draft_model(settings))
        except Exception:
            self.unload()
            raise
        self.load_settings = settings
        self.adapter_specs = tuple((str(a.path), s) for a, s in adapter_infos)
        threads.at_load(self)
        yield ModelLoaded(
            path=str(path),
            info=info.summary(),
            n_ctx=self.n_ctx,
            n_gpu_layers=min(mparams.n_gpu_layers, info.n_layers + 1),
            load_seconds=time.perf_counter() - started,
            adapters=tuple((str(a.path), s) for a, s in adapter_infos),
            template_source=self.template.source,
            template_warning=self.template.warning,
            fit_note=fit_note,
        )

    def _draft_model(self, settings: LoadSettings) -> DraftModel | None:
        if not settings.draft:
            return None
        from engine.library import Library

        return DraftModel(Library().resolve(settings.draft), self, settings)

    def _create_context(self, settings: LoadSettings) -> None:
        # dropping rejected drafts needs every position kept, sliding-window layers included
        full_swa = settings.replace(swa_full=True) if settings.speculative else settings
        cparams = context_params(full_swa, llama_cpp.llama_model_n_ctx_train(self.model))
        _kv_reports.clear()
        ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        self.kv_reports = list(_kv_reports)
        if not ctx:
            raise EngineError(
                f"llama.cpp could not create a context of {settings.n_ctx} tokens "
                f"(K {settings.type_k.value}, V {settings.type_v.value}); try a smaller context or other cache types."
            )
        self.ctx = ctx
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.n_batch = llama_cpp.llama_n_batch(ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._cached = []

    def _apply_adapters(self, adapter_infos) -> None:
        if not adapter_infos:
            return
        handles = []
        for ainfo, _scale in adapter_infos:
            handle = llama_cpp.llama_adapter_lora_init(self.model, os.fsencode(ainfo.path))
            if not handle:
                raise ModelFileError(f"{ainfo.path}: llama.cpp could not apply this adapter to the model.")
            handles.append(handle)
        self._adapters = handles
        self.adapter_scales = [s for _, s in adapter_infos]
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
        scales = (ctypes.c_float * len(handles))(*(s for _, s in adapter_infos))
        if llama_cpp.llama_set_adapters_lora(self.ctx, arr, len(handles), scales) != 0:
            raise EngineError("llama.cpp refused to apply the adapters to this context.")

    def _make_template(self, override: str | None) -> ChatTemplate:
        present = [m for m in _TEMPLATE_MARKERS if len(self.tokenize(m, parse_special=True)) == 1]
        return template_for(
            self.info.chat_template,
            self.info.architecture,
            present,
            bos_token=self.special_text(llama_cpp.llama_vocab_bos(self.vocab)),
            eos_token=self.special_text(llama_cpp.llama_vocab_eos(self.vocab)),
            override=override,
            cancel=self.stop_flag,  # cancelling the load also stops a slow test render of the template
        )

    def unload(self) -> None:
        self.stop_slots()
        embeddings.release(self)  # its contexts belong to this model (or its own): free them first
        if self.speculator is not None:
            self.speculator.close()
            self.speculator = None
        free_context(self.ctx, self._batch)
        self.ctx = self._batch = None
        for handle in self._adapters:
            llama_cpp.llama_adapter_lora_free(handle)
        self._adapters = []
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
        self.info = None
        self._cached = []

    close = unload

    @property
    def loaded(self) -> bool:
        return self.ctx is not None

    def require_model(self) -> None:
        if not self.loaded:
            raise EngineError("No model is loaded. Load a model first.")

    def cancel(self) -> None:
        """Safe from any thread: the running reply stops before its next token."""
        self.stop_flag.set()

    # ------------------------------------------------------------- tokens
    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        self.require_model()  # llama.cpp aborts the process on a freed vocab
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def special_text(self, token: int) -> str:
        return "" if token < 0 else self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @property
    def cached_tokens(self) -> list[int]:
        return list(self._cached)

    def piece(self, token: int) -> str:
        """A token as text, special tokens included (for the visualizers)."""
        return self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    def is_control(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_control(self.vocab, token))

    def positions(self) -> tuple[int, int]:
        """(first, last) KV cache position of the sequence (-1, -1 when empty)."""
        mem = self._memory()
        return llama_cpp.llama_memory_seq_pos_min(mem, 0), llama_cpp.llama_memory_seq_pos_max(mem, 0)

    # ---------------------------------------------------------- evaluation
    def _decode(
        self, tokens: Sequence[int], start_pos: int, want_logits_last: bool = True, all_logits: bool = False
    ) -> None:
        batch = self._batch
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            batch.n_tokens = len(chunk)
            last_chunk = offset + len(chunk) == len(tokens)
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = start_pos + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or (want_logits_last and last_chunk and i == len(chunk) - 1)
            rc = llama_cpp.llama_decode(self.ctx, batch)
            self.evaluations += 1
            if self.heartbeat:
                self.heartbeat()
            if rc != 0:
                # the cache may hold part of this batch now; forget what we know so the next turn rebuilds it
                self._clear_cache()
                if rc == 1:
                    raise ContextFullError("The context is full: no room in the KV cache for these tokens.")
                if rc == 2:
                    raise Cancelled("Evaluation was aborted.")
                raise EngineError(f"llama_decode failed with code {rc}.")
            self._cached.extend(chunk)

    def _memory(self):
        return llama_cpp.llama_get_memory(self.ctx)

    def keep_prefix(self, n: int) -> None:
        """Keep the first `n` cached tokens, drop the rest (for engine.kv_store)."""
        if n <= 0 or not llama_cpp.llama_memory_seq_rm(self._memory(), 0, n, -1):
            return self._clear_cache()
        del self._cached[n:]

    def adopt_cache(self, tokens: Sequence[int]) -> None:
        """The cache now holds `tokens` (restored by engine.kv_store)."""
        self._cached = list(tokens)

    def drop_after(self, n: int) -> None:
        """Forget cached tokens from position `n` on (rejected drafts)."""
        if 0 <= n < len(self._cached):
            if llama_cpp.llama_memory_seq_rm(self._memory(), 0, n, -1):
                del self._cached[n:]
            else:
                self._clear_cache()

    def _clear_cache(self) -> None:
        llama_cpp.llama_memory_clear(self._memory(), False)
        self._cached = []

    def _reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the cached tokens that start `tokens`; returns how many. At least one token is left to evaluate."""
        n = min(common_prefix(self._cached, tokens), len(tokens) - 1)
        mem = self._memory()
        if n < len(self._cached) and not llama_cpp.llama_memory_seq_rm(mem, 0, n, -1):
            n = 0
        n_swa = llama_cpp.llama_model_n_swa(self.model)
        if n > 0 and n_swa > 0 and not (self.load_settings.swa_full or self.load_settings.speculative):
            # sliding-window layers drop old cells; reuse only if the window before `n` is still there
            if llama_cpp.llama_memory_seq_pos_min(mem, 0) > max(0, n - n_swa):
                n = 0
        if n == 0:
            self._clear_cache()
        else:
            del self._cached[n:]
        return n

    def evaluate(self, tokens: Sequence[int]) -> PromptEvaluated:
        """Bring the cache to exactly `tokens` (reusing the common prefix); logits of the last token are ready."""
        self.require_model()
        if not tokens:
            raise EngineError("Nothing to evaluate: the prompt is empty.")
        if len(tokens) > self.n_ctx:
            raise ContextFullError(f"The prompt has {len(tokens)} tokens but the context holds {self.n_ctx}.")
        started = time.perf_counter()
        reused = self._reuse_prefix(tokens)
        self._decode(tokens[reused:], reused)
        self.logits_snapshot = self.last_logits().copy()
        self.last_evaluation = PromptEvaluated(
            len(tokens), reused, len(tokens) - reused, time.perf_counter() - started
        )
        return self.last_evaluation

    def last_logits(self) -> np.ndarray:
        """Raw logits of the last evaluated token (a view valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def logits_all(self, tokens: Sequence[int]) -> Iterator[np.ndarray]:
        """Evaluate `tokens` from an empty cache; yields a copy of the logits of every position, chunk by chunk."""
        self.require_model()
        if len(tokens) > self.n_ctx:
            raise ContextFullError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}.")
        self._clear_cache()
        batch = self._batch
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset : offset + self.n_batch]
            batch.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, offset + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            rc = llama_cpp.llama_decode(self.ctx, batch)
            self.evaluations += 1
            if rc != 0:
                self._clear_cache()
                raise EngineError(f"llama_decode failed with code {rc}.")
            self._cached.extend(chunk)
            ptr = llama_cpp.llama_get_logits(self.ctx)
            yield np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab)).copy()

    # ---------------------------------------------------------- generation
    def complete(
        self,
        prompt: str,
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
    ) -> Iterator[Event]:
        """Raw completion of `prompt` (BOS added as the model wants)."""
        self.require_model()
        self.stop_flag.clear()
        tokens = self.tokenize(prompt, add_special=True, parse_special=False)
        if not tokens:
            raise EngineError("The prompt is empty.")
        keep = 1 if llama_cpp.llama_vocab_get_add_bos(self.vocab) else 0
        yield from self._generate(tokens, sampling or SamplingSettings(), policy, keep)

    def chat(
        self,
        messages: Sequence[Message],
        sampling: SamplingSettings | None = None,
        policy: OverflowPolicy = OverflowPolicy.STOP,
        continue_last: bool = False,
    ) -> Iterator[Event]:
        """Reply to a conversation, rendered through the chat template; reuses the KV cache of earlier turns.

        With `continue_last`, the conversation ends with a cut-off assistant message and the model goes on
        writing it (ReplyDone.text is then only the new part).
        """
        self.require_model()
        self.stop_flag.clear()  # a Stop from before this request is not for it
        sampling = sampling or SamplingSettings()
        expected = ("assistant",) if continue_last else ("user", "system")
        if not messages or messages[-1].role not in expected:
            raise EngineError(
                "To continue a reply, the conversation must end with that assistant message."
                if continue_last
                else "The conversation must end with a user message to get a reply."
            )
        messages = list(messages)
        self.template.cancel = self.stop_flag  # Stop also ends a slow template render
        try:
            tokens = self.render_tokens(messages, continue_last=continue_last)
            reserve = self.reply_reserve(sampling)
            event = None
            if len(tokens) + reserve > self.n_ctx and policy == OverflowPolicy.DROP_OLDEST:
                messages, tokens, event = drop_oldest(self, messages, tokens, reserve, continue_last)
            keep = system_tokens(self, messages, tokens)
        finally:
            self.template.cancel = None
        if event is not None:
            yield event
        yield from self._generate(tokens, sampling, policy, keep)

    def render_tokens(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, continue_last: bool = False
    ) -> list[int]:
        return self.render_tokens_with(self.template.render, messages, add_generation_prompt, continue_last)

    def render_tokens_with(
        self,
        render,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        continue_last: bool = False,
    ) -> list[int]:
        """render_tokens with the text written by `render(messages, add_generation_prompt)` (engine.tool_chat
        adds the tool list to the chat template's)."""
        self.require_model()  # after an unload the template outlives the vocab; tokenizing with it aborts
        if continue_last:  # the open assistant turn, then its text so far (as llama.cpp's server continues)
            text = render(messages[:-1], True) + messages[-1].content
        else:
            text = render(messages, add_generation_prompt)
        return self.tokenize_rendered(text)

    def tokenize_rendered(self, text: str) -> list[int]:
        """Tokens of text the chat template wrote: BOS added unless the template wrote it, specials parsed."""
        add_bos = not (self.template.bos_token and text.startswith(self.template.bos_token))
        return self.tokenize(text, add_special=add_bos, parse_special=True)

    def reply_reserve(self, sampling: SamplingSettings) -> int:
        return min(sampling.max_tokens, self.n_ctx // 4)

    def _shift_context(self, keep: int) -> ContextTrimmed:
        """Discard half of the tokens after `keep` to make room mid-reply (llama.cpp's context shift)."""
        n_past = len(self._cached)
        discard = (n_past - keep) // 2
        mem = self._memory()
        if llama_cpp.llama_memory_can_shift(mem):
            llama_cpp.llama_memory_seq_rm(mem, 0, keep, keep + discard)
            llama_cpp.llama_memory_seq_add(mem, 0, keep + discard, n_past, -discard)
            del self._cached[keep : keep + discard]
        else:
            remaining = self._cached[:keep] + self._cached[keep + discard :]
            self._clear_cache()
            self._decode(remaining, 0)
        return ContextTrimmed(
            OverflowPolicy.SLIDING_WINDOW.value,
            0,
            discard,
            f"Context full: slid the window by {discard} tokens.",
        )

    def _generate(
        self, tokens: list[int], sampling: SamplingSettings, policy: OverflowPolicy, keep: int
    ) -> Iterator[Event]:
        started = time.perf_counter()
        tokens, trimmed = fit_prompt(self.n_ctx, tokens, self.reply_reserve(sampling), policy, keep)
        if trimmed:
            yield trimmed
        yield threads.apply(self)  # from the cores idle now, unless the settings say how many
        chain = SamplerChain(self.vocab, self.n_vocab, sampling, self.n_ctx)
        try:
            yield from sample_loop(self, tokens, sampling, policy, keep, chain, started, self.speculator)
        finally:
            chain.close()
            threads.reply_ended(self)

    def evaluation_count(self) -> int:
        """How many llama_decode calls this runtime has made (the visualizers prove sliders run none)."""
        return self.evaluations

    @staticmethod
    def hardware() -> Hardware:
        """What llama.cpp can use in this process: CPU features, RAM, GPUs with free memory (for fit verdicts)."""
        return current()  # free memory as of now, not as of start-up
