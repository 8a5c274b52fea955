"""Build a llama.cpp sampler chain from SamplingSettings, in llama.cpp's own order."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
import tempfile
from collections.abc import Iterator

import llama_cpp

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


class SamplerChain:
    """Owns a llama_sampler chain built from SamplerStages; the chain frees its samplers."""

    def __init__(self, vocab, n_vocab: int, settings: SamplingSettings, n_ctx: int):
        self.chain = None  # set last: a bad setting raises before there is a chain to free
        self.settings = settings
        self.seed = resolve_seed(settings.seed)
        built = SamplerStages(vocab, n_vocab, settings, n_ctx, self.seed)
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(params)
        self._keep = built._keep
        for _, smpl in built.stages:
            llama_cpp.llama_sampler_chain_add(self.chain, smpl)  # the chain owns them from here

    def accept_history(self, tokens) -> None:
        """Feed the prompt to penalty/DRY samplers so they see the conversation, like llama.cpp's server."""
        for tok in tokens:
            llama_cpp.llama_sampler_accept(self.chain, tok)

    def sample(self, ctx) -> int:
        return llama_cpp.llama_sampler_sample(self.chain, ctx, -1)

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:
        self.close()
