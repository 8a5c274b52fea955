"""Embeddings on a Runtime: a separate llama_context with embeddings on, over the loaded model or over an
embedding model (BERT-style GGUF) loaded for it; vectors pooled and scaled to unit length as OpenAI's are.

Pooling: the model's own (its GGUF's `<arch>.pooling_type`), else mean over the input's tokens. The chat
context and its KV cache are untouched: embedding a text does not disturb a conversation's prefix cache.
One embedding context is kept (for the loaded model, or for one embedding model at a time). Its threads are
chosen before each request from the cores idle now (engine.threads, as the chat and the slots do), unless the
load settings give a count.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp

from engine.errors import EngineError, ModelFileError, SettingsError
from engine.events import ThreadsChosen
from engine.gguf_info import inspect_gguf
from engine.interface import Embeddings
from engine.llama_params import model_params
from engine.settings import LoadSettings
from engine.threads import ThreadChooser

if TYPE_CHECKING:
    from engine.runtime import Runtime

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_EMBED_CTX = 8192  # the largest input we accept, in tokens, whatever the model was trained for
OUTPUT_BUDGET_BYTES = 128 << 20  # llama.cpp keeps every token's logits per batch: bound them for chat models
POOLING_NAMES = {llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean", llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
                 llama_cpp.LLAMA_POOLING_TYPE_LAST: "last"}  # fmt: skip


@dataclass
class _Embedder:
    """An embedding context (and its own model, when it is not the chat model)."""

    key: str  # "" for the loaded model, else the embedding model's path
    model: object
    ctx: object
    vocab: object
    n_ctx: int
    pooling: int
    owns_model: bool
    chunk: int  # tokens per llama_decode
    chooser: ThreadChooser = field(default_factory=ThreadChooser)
    threads: ThreadsChosen | None = None  # what the last request ran on

    def free(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.owns_model and self.model:
            llama_cpp.llama_model_free(self.model)
        self.model = None


def release(rt: Runtime) -> None:
    """Free the runtime's embedding context (before its model is unloaded)."""
    embedder = getattr(rt, "_embedder", None)
    if embedder is not None:
        embedder.free()
        rt._embedder = None


def embed(rt: Runtime, texts: Sequence[str | Sequence[int]], model: str | None = None) -> Embeddings:
    """Unit-length vectors for `texts` (strings, or token id lists as OpenAI's API allows), in order."""
    if not texts:
        raise SettingsError("input", "give at least one text to embed")
    if len(texts) > MAX_INPUTS:
        raise SettingsError("input", f"{len(texts)} inputs is more than {MAX_INPUTS} in one request")
    embedder = _embedder_for(rt, model or "")
    n_vocab = llama_cpp.llama_vocab_n_tokens(embedder.vocab)
    inputs = []
    for i, item in enumerate(texts):
        if isinstance(item, str):
            tokens = _tokenize(embedder.vocab, item)
        else:
            tokens = list(item)
            bad = next(
                (t for t in tokens if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab),
                None,
            )
            if bad is not None:
                raise SettingsError(
                    f"input[{i}]", f"{bad!r} is not a token id of this model (0 to {n_vocab - 1})"
                )
        if not tokens:
            raise SettingsError(f"input[{i}]", "is empty; an embedding needs at least one token")
        if len(tokens) > embedder.n_ctx:
            raise SettingsError(
                f"input[{i}]",
                f"is {len(tokens)} tokens long; the embedding model takes at most {embedder.n_ctx} tokens",
            )
        inputs.append(tokens)
    threads = choose_threads(rt, embedder)
    try:
        vectors = tuple(_embed_one(embedder, tokens) for tokens in inputs)
    finally:
        embedder.chooser.start_window()  # the cores idle from now to the next request decide its threads
    name = Path(model).name if model else Path(rt.info.path).name
    pooling = POOLING_NAMES.get(embedder.pooling, "mean")
    return Embeddings(vectors, tuple(len(t) for t in inputs), name, pooling, threads.threads_batch)


def choose_threads(rt: Runtime, embedder: _Embedder) -> ThreadsChosen:
    """Set the embedding context's threads: the load settings' count when given, else one per core idle since
    the last request (a thread on a busy core stalls all of them at every step; see engine.threads)."""
    settings = getattr(rt, "load_settings", None)
    chosen = embedder.chooser.pick(
        settings.n_threads if settings else 0, settings.n_threads_batch if settings else 0
    )
    llama_cpp.llama_set_n_threads(embedder.ctx, chosen.threads, chosen.threads_batch)
    embedder.threads = chosen
    return chosen


def _tokenize(vocab, text: str) -> list[int]:
    data = text.encode("utf-8")
    n = len(data) + 2
    buf = (llama_cpp.llama_token * n)()
    got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n, True, False)
    if got < 0:
        buf = (llama_cpp.llama_token * -got)()
        got = llama_cpp.llama_tokenize(vocab, data, len(data), buf, -got, True, False)
    return list(buf[:got])


def _embedder_for(rt: Runtime, key: str) -> _Embedder:
    current = getattr(rt, "_embedder", None)
    if current is not None and current.key == key:
        return current
    release(rt)
    if key:
        info = inspect_gguf(key)
        model = llama_cpp.llama_model_load_from_file(
            os.fsencode(info.path), model_params(LoadSettings(n_gpu_layers=0))
        )
        if not model:
            raise ModelFileError(f"{info.path}: llama.cpp could not load this embedding model.")
        owns, limit = True, MAX_EMBED_CTX
    else:
        rt.require_model()
        model, owns, limit = rt.model, False, rt.n_ctx
    try:
        rt._embedder = _new_embedder(key, model, owns, limit)
    except Exception:
        if owns:
            llama_cpp.llama_model_free(model)
        raise
    return rt._embedder


def _meta(model, key: bytes) -> str:
    buf = (ctypes.c_char * 128)()
    return (
        buf.value.decode("utf-8", "replace")
        if llama_cpp.llama_model_meta_val_str(model, key, buf, 128) > 0
        else ""
    )


def _declared_pooling(model) -> int:
    """The pooling type the model's GGUF declares, or MEAN when it declares none (a chat model)."""
    arch = _meta(model, b"general.architecture")
    declared = _meta(model, f"{arch}.pooling_type".encode()) if arch else ""
    if declared.isdigit() and int(declared) in POOLING_NAMES:
        return int(declared)
    return llama_cpp.LLAMA_POOLING_TYPE_MEAN


def _new_embedder(key: str, model, owns: bool, limit: int, chunk: int | None = None) -> _Embedder:
    """An embedding context. A chat model's input goes in chunks that bound llama.cpp's output buffer (with
    embeddings on it keeps every token's logits: n_vocab floats each, 1 MB per token for a 262k vocabulary);
    an embedding model (small vocabulary, maybe bidirectional attention) gets the whole input in one batch."""
    n_ctx = max(8, min(limit, llama_cpp.llama_model_n_ctx_train(model) or limit, MAX_EMBED_CTX))
    vocab = llama_cpp.llama_model_get_vocab(model)
    if chunk is None:
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        chunk = n_ctx if key else max(32, min(n_ctx, OUTPUT_BUDGET_BYTES // (4 * n_vocab)))
    pooling = _declared_pooling(model)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = min(chunk, n_ctx)
    params.n_seq_max = 1
    params.embeddings = True
    params.pooling_type = pooling  # threads: set per request (choose_threads)
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise EngineError(f"llama.cpp could not create an embedding context of {n_ctx} tokens.")
    return _Embedder(
        key, model, ctx, vocab, llama_cpp.llama_n_ctx(ctx), pooling, owns, llama_cpp.llama_n_ubatch(ctx)
    )


def _embed_one(e: _Embedder, tokens: list[int]) -> tuple[float, ...]:
    """Pooled per chunk (llama.cpp pools each batch; the cache carries the context between them), combined as
    one pooling over the whole input would be: the token-weighted mean, the first chunk's CLS, the last's."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(e.ctx), True)
    n_embd = llama_cpp.llama_model_n_embd(e.model)
    total = [0.0] * n_embd
    batch = llama_cpp.llama_batch_init(e.chunk, 0, 1)
    try:
        for start in range(0, len(tokens), e.chunk):
            part = tokens[start : start + e.chunk]
            for i, tok in enumerate(part):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = len(part)
            if llama_cpp.llama_decode(e.ctx, batch) != 0:
                raise EngineError("llama.cpp failed to compute the embedding.")
            ptr = llama_cpp.llama_get_embeddings_seq(e.ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding for this input.")
            if e.pooling == llama_cpp.LLAMA_POOLING_TYPE_MEAN:
                total = [t + float(ptr[i]) * len(part) for i, t in enumerate(total)]
            elif e.pooling == llama_cpp.LLAMA_POOLING_TYPE_LAST or start == 0:
                total = [float(ptr[i]) for i in range(n_embd)]
    finally:
        llama_cpp.llama_batch_free(batch)
    norm = math.sqrt(sum(v * v for v in total))
    return tuple(v / norm for v in total) if norm > 0 else tuple(total)
