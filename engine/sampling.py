"""Build a llama.cpp sampler chain from SamplingSettings, in llama.cpp's own order."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from enum import Enum

import llama_cpp
import numpy as np

from engine.errors import SettingsError
from engine.settings import SamplingSettings
from engine.text import printable

# Stage names in chain order; the visualizer shows the distribution after each of them.
STAGE_ORDER = (
    "logit_bias",
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typical",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
)


# llama_token_data as numpy sees it: the candidate arrays handed to llama.cpp are built without a Python loop
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def resolve_seed(seed: int) -> int:
    return random.randrange(0, 0xFFFFFFFE) if seed < 0 else seed


def json_schema_grammar(schema: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(schema)
    except Exception as err:  # the converter raises plain Exceptions for unsupported schema parts
        raise SettingsError("json_schema", f"cannot be turned into a grammar: {err}") from None


class SamplerStages:
    """The llama.cpp samplers for a settings object, in chain order, each with its stage name.

    The chain that generates uses them all; the sampling preview applies them one at a time to show what each does.
    """

    def __init__(self, vocab, n_vocab: int, settings: SamplingSettings, n_ctx: int, seed: int):
        self.stages: list[tuple[str, object]] = []
        self._keep = []  # ctypes buffers that must outlive the samplers
        try:
            self._build(vocab, n_vocab, settings, n_ctx, seed)
        except Exception:
            self.free()  # a bad setting found halfway must not leak the samplers made so far
            raise

    def _build(self, vocab, n_vocab: int, s: SamplingSettings, n_ctx: int, seed: int) -> None:
        grammar = s.grammar or (json_schema_grammar(s.json_schema) if s.json_schema else "")
        if grammar:
            with _stderr_of_llama() as said:
                if s.grammar_triggers:  # lazy: off until a trigger pattern matches the reply so far
                    patterns = (ctypes.c_char_p * len(s.grammar_triggers))(
                        *(p.encode() for p in s.grammar_triggers)
                    )
                    self._keep.append(patterns)
                    smpl = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                        vocab, grammar.encode(), b"root", patterns, len(s.grammar_triggers), None, 0
                    )
                else:
                    smpl = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not smpl:
                why = [line.split("error parsing grammar:", 1)[-1].strip() for line in said[0].splitlines()
                       if "error parsing grammar" in line]  # fmt: skip
                raise SettingsError(
                    "grammar",
                    f"llama.cpp could not parse the grammar: {printable(why[0])[:200] if why else 'no reason given'}",
                )
            self._add("grammar", smpl)
        if s.logit_bias:
            arr = (llama_cpp.llama_logit_bias * len(s.logit_bias))()
            for i, (tok, bias) in enumerate(s.logit_bias):
                if tok >= n_vocab:
                    raise SettingsError(
                        "logit_bias", f"token id {tok} is beyond the vocabulary ({n_vocab} tokens)"
                    )
                arr[i].token, arr[i].bias = tok, bias
            self._keep.append(arr)
            self._add("logit_bias", llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), arr))
        last_n = n_ctx if s.penalty_last_n < 0 else s.penalty_last_n
        if last_n and (s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty):
            self._add("penalties", llama_cpp.llama_sampler_init_penalties(
                n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty))  # fmt: skip
        if s.dry_multiplier > 0:
            breakers = (ctypes.c_char_p * len(s.dry_sequence_breakers))(
                *(b.encode() for b in s.dry_sequence_breakers)
            )
            self._keep.append(breakers)
            dry_last_n = n_ctx if s.dry_penalty_last_n < 0 else s.dry_penalty_last_n
            self._add("dry", llama_cpp.llama_sampler_init_dry(
                vocab, s.dry_multiplier, s.dry_base, s.dry_allowed_length, dry_last_n,
                breakers, len(s.dry_sequence_breakers)))  # fmt: skip
        if s.mirostat:
            self._add("temperature", llama_cpp.llama_sampler_init_temp(s.temperature))
            if s.mirostat == 1:
                self._add(
                    "mirostat",
                    llama_cpp.llama_sampler_init_mirostat(n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100),
                )
            else:
                self._add(
                    "mirostat_v2",
                    llama_cpp.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta),
                )
        elif s.temperature <= 0:
            self._add("greedy", llama_cpp.llama_sampler_init_greedy())
        else:
            self._add_truncation(s, seed)
            self._add("dist", llama_cpp.llama_sampler_init_dist(seed))

    def _add_truncation(self, s: SamplingSettings, seed: int) -> None:
        if s.top_n_sigma > 0:
            self._add("top_n_sigma", llama_cpp.llama_sampler_init_top_n_sigma(s.top_n_sigma))
        if s.top_k > 0:
            self._add("top_k", llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.typical_p < 1.0:
            self._add("typical_p", llama_cpp.llama_sampler_init_typical(s.typical_p, 1))
        if s.top_p < 1.0:
            self._add("top_p", llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            self._add("min_p", llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        if s.xtc_probability > 0:
            self._add("xtc", llama_cpp.llama_sampler_init_xtc(s.xtc_probability, s.xtc_threshold, 1, seed))
        if s.dynatemp_range > 0:
            self._add(
                "temperature",
                llama_cpp.llama_sampler_init_temp_ext(s.temperature, s.dynatemp_range, s.dynatemp_exponent),
            )
        else:
            self._add("temperature", llama_cpp.llama_sampler_init_temp(s.temperature))

    def _add(self, name: str, smpl) -> None:
        self.stages.append((name, smpl))

    def free(self) -> None:
        for _, smpl in self.stages:
            llama_cpp.llama_sampler_free(smpl)
        self.stages = []


@contextlib.contextmanager
def _stderr_of_llama() -> Iterator[list[str]]:
    """What llama.cpp writes to stderr meanwhile (its grammar parser says why with fprintf, not through the log
    callback), so the error can say it: the user may have no log to look at. Passed on to stderr afterwards."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            said.append(data.decode("utf-8", "replace"))
            if data and not any("error parsing grammar" in line for line in said[0].splitlines()):
                os.write(2, data)


class FastPath(Enum):
    """How a chain's first step can skip llama.cpp's 262k-entry candidate array without changing the result."""

    FULL = "full"  # llama.cpp's own llama_sampler_sample
    ARGMAX = "argmax"  # the chain is greedy alone: the first largest logit (as llama.cpp's greedy picks)
    TOP_K = "top_k"  # top-k comes first: its k tokens, sorted as llama.cpp sorts them, go to the chain
    MIN_P = "min_p"  # min-p comes first: only the tokens above its cut go to the chain (in id order)


MAX_FAST_K = 4096  # past this a partial selection saves little over llama.cpp's own bucket sort


def fast_path(names: list[str], settings: SamplingSettings) -> FastPath:
    if names == ["greedy"]:
        return FastPath.ARGMAX
    if names and names[0] == "top_k" and settings.top_k <= MAX_FAST_K:
        return FastPath.TOP_K
    if names and names[0] == "min_p":
        return FastPath.MIN_P
    return FastPath.FULL


def top_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of the `k` largest logits, unordered. Over a large vocabulary a threshold from a 1/64 sample picks a
    few hundred candidates first (one vectorised comparison instead of a partition of every logit); exact, since
    it falls back to the full partition when the threshold keeps fewer than k."""
    n = logits.size
    if n >= 16384 and 64 * k <= n:
        sample = logits[::64]
        r = k // 64 + 4
        threshold = np.partition(sample, sample.size - r)[sample.size - r]
        ids = np.flatnonzero(logits >= threshold)
        if k <= ids.size <= 64 * k + 4096:
            return ids[np.argpartition(logits[ids], ids.size - k)[ids.size - k :]]
    return np.argpartition(logits, n - k)[n - k :]


# llama_get_logits_ith answering the address as an int: a view of the logits is made only when the address moves
_LOGITS_ADDRESS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)(
    ctypes.cast(llama_cpp.llama_get_logits_ith, ctypes.c_void_p).value
)


class LogitsView:
    """The logits of output `idx` of the last decode as a numpy view, made once per address: llama.cpp keeps its
    logits buffer from decode to decode (it moves only when a batch asks for more outputs than it holds), and
    building a view through ctypes costs more per token than the argmax over it once a decode has flushed the
    CPU caches. A view is only read at the address llama.cpp has just given for a valid output, so one kept
    from a buffer that moved is never read unless that address holds logits again."""

    MAX_VIEWS = 64  # one per output of a verify batch; past this (a wider batch) they are made afresh

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self._views: dict[int, np.ndarray] = {}

    def __call__(self, ctx, idx: int = -1) -> np.ndarray:
        address = _LOGITS_ADDRESS(ctx, idx)
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for output {idx} of the last decode")
        view = self._views.get(address)
        if view is None:
            if len(self._views) >= self.MAX_VIEWS:
                self._views.clear()
            view = self._views[address] = np.ctypeslib.as_array(
                (ctypes.c_float * self.n_vocab).from_address(address)
            )
        return view


class SamplerChain:
    """Owns a llama_sampler chain built from SamplerStages; the chain frees its samplers."""

    def __init__(self, vocab, n_vocab: int, settings: SamplingSettings, n_ctx: int, fast: bool = True):
        self.chain = None  # set last: a bad setting raises before there is a chain to free
        self.settings = settings
        self.n_vocab = n_vocab
        self.seed = resolve_seed(settings.seed)
        built = SamplerStages(vocab, n_vocab, settings, n_ctx, self.seed)
        stages = built.stages
        names = [name for name, _ in stages]
        self.path = fast_path(names, settings) if fast else FastPath.FULL
        self._bias: tuple[np.ndarray, np.ndarray] | None = None
        self._bias_once: np.ndarray | None = None
        if fast and names[0] == "logit_bias" and (after := fast_path(names[1:], settings)) != FastPath.FULL:
            # a logit bias first: added here, on a copy of the logits, so the fast path still applies
            self.path = after
            llama_cpp.llama_sampler_free(stages[0][1])
            stages = stages[1:]
            ids = np.array([tok for tok, _ in settings.logit_bias], dtype=np.int64)
            self._bias = ids, np.array([bias for _, bias in settings.logit_bias], dtype=np.float32)
            self._bias_ids = np.unique(ids)
            self._bias_set = set(ids.tolist())
            if ids.size == self._bias_ids.size:  # each id listed once (the usual case): added in one step
                self._bias_once = self._bias[1][np.argsort(ids)]  # in the order of _bias_ids
                self._bias_dense = np.zeros(n_vocab, np.float32)  # a biased candidate's bias by its id
                self._bias_dense[self._bias_ids] = self._bias_once
                self._is_biased = np.zeros(n_vocab, bool)
                self._is_biased[self._bias_ids] = True
        self.logits = LogitsView(n_vocab)  # logits(ctx, idx): the raw logits the chain samples from
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(params)
        self._keep = built._keep
        for _, smpl in stages:
            llama_cpp.llama_sampler_chain_add(self.chain, smpl)  # the chain owns them from here
        if self.path in (FastPath.TOP_K, FastPath.MIN_P):
            size = settings.top_k if self.path == FastPath.TOP_K else n_vocab
            self._cand = np.zeros(size, dtype=_TOKEN_DATA)
            self._cand_data = self._cand.ctypes.data_as(llama_cpp.llama_token_data_p)
            self._array = llama_cpp.llama_token_data_array()
        # min-p keeps p >= min_p * p_max, i.e. logit >= max + logf(min_p): in float32, as llama.cpp computes it
        self._log_min_p = np.log(np.float32(settings.min_p)) if settings.min_p > 0 else None

    def accept_history(self, tokens) -> None:
        """Feed the prompt to penalty/DRY samplers so they see the conversation, like llama.cpp's server."""
        for tok in tokens:
            llama_cpp.llama_sampler_accept(self.chain, tok)

    def sample(self, ctx, idx: int = -1) -> int:
        """Sample from the logits of output `idx` of the last decode and accept the token (like
        llama_sampler_sample, which the FULL path calls)."""
        if self.path == FastPath.FULL:
            return llama_cpp.llama_sampler_sample(self.chain, ctx, idx)
        logits = self.logits(ctx, idx)
        if self.path == FastPath.ARGMAX:
            token = self._argmax(logits)
        else:
            token = self._apply(*self._candidates(logits))
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def _biased(self, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        np.add.at(out, self._bias[0], self._bias[1])  # as llama.cpp's logit_bias: += per listed entry
        return out

    def _argmax(self, logits: np.ndarray) -> int:
        """The first largest logit after the bias, as llama.cpp's greedy sampler picks it."""
        top = int(np.argmax(logits))
        if self._bias is None:
            return top
        if top in self._bias_set:  # the raw winner is biased: look at every logit
            return int(np.argmax(self._biased(logits)))
        if self._bias_once is not None:
            # the first largest biased logit (ids ascending) against the raw winner, which keeps its logit
            vals = logits[self._bias_ids] + self._bias_once
            j = int(np.argmax(vals))
            best, raw = vals[j], logits[top]
            return int(self._bias_ids[j]) if best > raw or (best == raw and self._bias_ids[j] < top) else top
        ids, vals = self._biased_few(logits)
        ids, vals = np.append(ids, top), np.append(vals, logits[top])
        return int(ids[vals == vals.max()].min())

    def _biased_few(self, logits: np.ndarray, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`ids` (sorted, holding every biased id; default: the biased ids) with their logits after the bias."""
        ids = self._bias_ids if ids is None else ids
        vals = logits[ids]
        np.add.at(vals, np.searchsorted(ids, self._bias[0]), self._bias[1])
        return ids, vals

    def _candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """The token ids the chain's first stage keeps, their logits, in the order it leaves them, and whether
        that order is sorted."""
        if self.path == FastPath.TOP_K:
            k = min(self.settings.top_k, logits.size)
            if self._bias is None:
                ids = top_ids(logits, k)
                vals = logits[ids]
            else:  # the biased ids and enough of the rest that pushing biased ones down cannot change the top k
                top = top_ids(logits, min(logits.size, k + self._bias_ids.size))
                if self._bias_once is None:
                    ids, vals = self._biased_few(logits, np.union1d(top, self._bias_ids))
                else:  # the same ids, ascending, in fewer steps
                    ids = np.concatenate((top[~self._is_biased[top]], self._bias_ids))
                    ids.sort()
                    vals = logits[ids] + self._bias_dense[ids]
                if ids.size > k:
                    keep = np.argpartition(vals, ids.size - k)[ids.size - k :]
                    ids, vals = ids[keep], vals[keep]
            # descending by logit; equal logits by id, the order llama.cpp's partial sort most often leaves
            order = np.lexsort((ids, -vals))
            return ids[order], vals[order], True
        if self._bias is not None:
            logits = self._biased(logits)
        ids = np.flatnonzero(logits >= logits.max() + self._log_min_p)
        return ids, logits[ids], False

    def _apply(self, ids: np.ndarray, vals: np.ndarray, is_sorted: bool) -> int:
        n = ids.size
        if n <= self._cand.size:
            cand, data = self._cand[:n], self._cand_data
        else:
            cand = np.zeros(n, dtype=_TOKEN_DATA)
            data = cand.ctypes.data_as(llama_cpp.llama_token_data_p)
        cand["id"] = ids
        cand["logit"] = vals
        cand["p"] = 0.0
        arr = self._array
        arr.data = data
        arr.size, arr.selected, arr.sorted = n, -1, is_sorted
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError(f"the sampler chain selected no token ({arr.selected} of {arr.size})")
        return int(arr.data[arr.selected].id)  # via the array's pointer: XTC moves its start

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:
        self.close()
