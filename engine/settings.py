"""Validated, frozen settings for loading a model and for sampling; each field carries its range and help text."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from engine.errors import SettingsError


def spec(
    default: Any, lo: float | None = None, hi: float | None = None, label: str = "", help: str = "", **kw
):
    """A dataclass field with the range and one-line help the GUI shows beside its slider."""
    return field(default=default, metadata={"min": lo, "max": hi, "label": label, "help": help, **kw})


class FlashAttention(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class RopeScaling(StrEnum):
    """How RoPE positions are stretched for a context longer than the model was trained on."""

    MODEL = "model"  # as the GGUF says (most say none)
    NONE = "none"
    LINEAR = "linear"
    YARN = "yarn"


class CacheType(StrEnum):
    """KV cache element types llama.cpp accepts (quantized V needs flash attention)."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
    Q5_1 = "q5_1"
    Q5_0 = "q5_0"
    Q4_1 = "q4_1"
    Q4_0 = "q4_0"
    IQ4_NL = "iq4_nl"

    @property
    def bytes_per_element(self) -> float:
        return {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}[self.value]  # fmt: skip


class OverflowPolicy(StrEnum):
    """What happens when the conversation outgrows the context."""

    STOP = "stop"  # refuse / end the reply, keep everything
    DROP_OLDEST = "drop_oldest"  # drop the oldest turns, keep the system prompt
    SLIDING_WINDOW = "sliding_window"  # drop the oldest tokens after the system prompt, shift the KV cache


def _check(obj: Any) -> None:
    """Validate every field of a settings dataclass against its spec; name the field on failure."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if f.type in ("int", "float", "int | None") and value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f.name, f"expected a number, got {value!r}")
            if f.type == "int" and not float(value).is_integer():
                raise SettingsError(f.name, f"expected a whole number, got {value!r}")
            if value != value:  # NaN
                raise SettingsError(f.name, "is not a number (NaN)")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise SettingsError(f.name, f"{value} is out of range; allowed {lo} to {hi}")
        if f.type == "bool" and not isinstance(value, bool):
            raise SettingsError(f.name, f"expected true or false, got {value!r}")


def _coerce(cls, data: dict[str, Any]) -> Any:
    """Build a settings object from plain values (JSON, CLI, SQLite), rejecting unknown keys by name."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise SettingsError(unknown[0], f"unknown setting (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        ftype = names[key].type
        try:
            if ftype == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif ftype == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif ftype.startswith("tuple[str"):
                value = tuple(value)
            elif ftype.startswith("tuple[tuple"):
                value = tuple(
                    (int(k), float(v)) for k, v in (value.items() if isinstance(value, dict) else value)
                )
            elif ftype in ("FlashAttention", "CacheType", "OverflowPolicy", "RopeScaling"):
                value = globals()[ftype](value)
        except (TypeError, ValueError) as err:
            raise SettingsError(key, f"cannot use {value!r}: {err}") from None
        kwargs[key] = value
    return cls(**kwargs)


class SettingsBase:
    def __post_init__(self) -> None:
        _check(self)
        self._validate_more()

    def _validate_more(self) -> None:
        pass

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _coerce(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
            )
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_specs(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))


@dataclass(frozen=True)
class LoadSettings(SettingsBase):
    n_ctx: int = spec(
        4096,
        64,
        1 << 20,
        "Context length",
        "How many tokens the model can see at once; more costs KV-cache memory.",
    )
    n_threads: int = spec(
        0, 0, 512, "Threads", "CPU threads for generation; 0 picks the physical core count."
    )
    n_threads_batch: int = spec(
        0, 0, 512, "Batch threads", "CPU threads for reading the prompt; 0 = same as threads."
    )
    n_gpu_layers: int = spec(
        0, -1, 10_000, "GPU layers", "Layers offloaded to the GPU; -1 offloads all, 0 runs on the CPU."
    )
    n_batch: int = spec(512, 1, 65536, "Batch size", "Prompt tokens submitted per llama_decode call.")
    n_ubatch: int = spec(512, 1, 65536, "Micro-batch", "Tokens computed per step inside a batch.")
    flash_attn: FlashAttention = spec(
        FlashAttention.AUTO,
        label="Flash attention",
        help="Faster, leaner attention; needed for a quantized V cache.",
    )
    type_k: CacheType = spec(
        CacheType.F16,
        label="K cache type",
        help="Element type of the key cache; q8_0 halves its memory at a small quality cost.",
    )
    type_v: CacheType = spec(
        CacheType.F16,
        label="V cache type",
        help="Element type of the value cache; quantized types need flash attention.",
    )
    use_mmap: bool = spec(
        True, label="Memory-map", help="Map the file instead of reading it; loads faster, shares pages."
    )
    use_mlock: bool = spec(
        False, label="Lock in RAM", help="Pin the weights in RAM so the OS never swaps them out."
    )
    swa_full: bool = spec(
        False,
        label="Full SWA cache",
        help="Keep every position for sliding-window layers; more memory, more cache reuse.",
    )
    repack: bool = spec(
        True,
        label="Weight repacking",
        help="Repack weights for faster CPU matmul (off automatically on AMX CPUs).",
    )
    rope_scaling: RopeScaling = spec(
        RopeScaling.MODEL,
        label="RoPE scaling",
        help="Stretch positions for a context past the model's trained length: linear or yarn "
        "(model: as its file says, none: never).",
    )
    rope_freq_scale: float = spec(
        0.0,
        0.0,
        1.0,
        "RoPE frequency scale",
        "With linear or yarn scaling: trained length / context (0.25 stretches 4x); 0 works it out from both.",
    )
    yarn_ext_factor: float = spec(
        -1.0,
        -1.0,
        1.0,
        "YaRN extrapolation mix",
        "With yarn: how much of the unscaled (extrapolated) rotation fast dimensions keep, 0 to 1; -1: 1.",
    )
    yarn_beta_fast: float = spec(
        -1.0,
        -1.0,
        1000.0,
        "YaRN beta fast",
        "With yarn: dimensions turning more often than this over the trained length are not stretched; -1: 32.",
    )
    yarn_beta_slow: float = spec(
        -1.0,
        -1.0,
        1000.0,
        "YaRN beta slow",
        "With yarn: dimensions turning less often than this are stretched fully; between, a ramp; -1: 1.",
    )
    yarn_orig_ctx: int = spec(
        0,
        0,
        1 << 20,
        "YaRN original context",
        "With yarn: the context the model was trained on, YaRN's reference length; 0 reads it from the model.",
    )
    fit: bool = spec(
        False,
        label="Fit automatically",
        help="Pick GPU layers, context length and KV cache type so the model fits the free memory.",
    )
    fit_check: bool = spec(
        True,
        label="Refuse what won't fit",
        help="Refuse a load that needs more memory than is free, before llama.cpp runs out of it.",
    )

    rpc: str = spec(
        "",
        label="RPC workers",
        help="llama.cpp RPC workers as HOST:PORT,... (started with `ingle worker`); the layers are split "
        "across this machine and them.",
    )
    rpc_split: str = spec(
        "",
        label="RPC split",
        help="Shares of the layers, this machine first, then each worker (e.g. 1,1,2); empty: equal shares.",
    )

    draft: str = spec(
        "",
        label="Draft model",
        help="A smaller model of the same family (library name or file) that drafts tokens for this one to check "
        "in one batch; replies stay the same, only faster when it pays.",
        metavar="MODEL",
    )
    draft_max: int = spec(
        8,
        1,
        64,
        "Draft tokens",
        "Most tokens drafted per step (by prompt lookup or the draft model).",
        metavar="K",
    )
    lookup: bool = spec(
        False,
        label="Prompt lookup",
        help="Draft by copying what followed the last few tokens earlier in the conversation; "
        "fast when a reply repeats its input.",
    )
    lookup_ngram: int = spec(
        3,
        1,
        16,
        "Lookup n-gram",
        "How many recent tokens must match earlier text before prompt lookup drafts.",
        metavar="N",
    )

    @property
    def speculative(self) -> bool:
        return bool(self.draft) or self.lookup

    def _validate_more(self) -> None:
        from engine.rpc_split import SplitError, parse_endpoints, parse_weights

        for name in ("rpc", "rpc_split"):
            if not isinstance(getattr(self, name), str):
                raise SettingsError(name, f"expected text, got {getattr(self, name)!r}")
        try:
            workers = parse_endpoints(self.rpc)
        except SplitError as err:
            raise SettingsError("rpc", str(err)) from None
        if self.rpc_split and not workers:
            raise SettingsError("rpc_split", "needs RPC workers (--rpc HOST:PORT)")
        try:
            parse_weights(self.rpc_split, len(workers))
        except SplitError as err:
            raise SettingsError("rpc_split", str(err)) from None
        if (
            self.type_v not in (CacheType.F16, CacheType.F32, CacheType.BF16)
            and self.flash_attn == FlashAttention.OFF
        ):
            raise SettingsError(
                "type_v", f"a {self.type_v.value} V cache needs flash attention (set it to auto or on)"
            )
        if self.n_ubatch > self.n_batch:
            raise SettingsError("n_ubatch", f"{self.n_ubatch} is larger than n_batch ({self.n_batch})")


@dataclass(frozen=True)
class SamplingSettings(SettingsBase):
    temperature: float = spec(
        0.8,
        0.0,
        5.0,
        "Temperature",
        "Divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 is greedy.",
    )
    dynatemp_range: float = spec(
        0.0,
        0.0,
        5.0,
        "Dynamic temp range",
        "Lets temperature vary by ±range with the distribution's entropy.",
    )
    dynatemp_exponent: float = spec(
        1.0, 0.0, 10.0, "Dynamic temp exponent", "How strongly entropy moves the dynamic temperature."
    )
    top_k: int = spec(40, 0, 1_000_000, "Top-k", "Keeps only the k most likely tokens; 0 keeps all.")
    top_p: float = spec(
        0.95, 0.0, 1.0, "Top-p", "Keeps the smallest set of tokens whose probabilities sum to p; 1 keeps all."
    )
    min_p: float = spec(
        0.05, 0.0, 1.0, "Min-p", "Drops tokens less likely than min_p times the top token's probability."
    )
    typical_p: float = spec(
        1.0,
        0.0,
        1.0,
        "Typical-p",
        "Keeps tokens whose surprise is close to the average (locally typical); 1 is off.",
    )
    xtc_probability: float = spec(
        0.0,
        0.0,
        1.0,
        "XTC probability",
        "Chance per token of excluding the top choices (all above the threshold but the least likely).",
    )
    xtc_threshold: float = spec(
        0.1,
        0.0,
        1.0,
        "XTC threshold",
        "Tokens above this probability count as 'top choices' for XTC; above 0.5 disables it.",
    )
    top_n_sigma: float = spec(
        -1.0, -1.0, 10.0, "Top-nσ", "Keeps tokens within n standard deviations of the top logit; -1 is off."
    )
    repeat_penalty: float = spec(
        1.0, 0.0, 3.0, "Repeat penalty", "Divides the logits of recently seen tokens; 1 is off."
    )
    presence_penalty: float = spec(
        0.0, -2.0, 2.0, "Presence penalty", "Subtracts a flat amount from any token already in the window."
    )
    frequency_penalty: float = spec(
        0.0, -2.0, 2.0, "Frequency penalty", "Subtracts an amount per occurrence of a token in the window."
    )
    penalty_last_n: int = spec(
        64,
        -1,
        1 << 20,
        "Penalty window",
        "How many recent tokens the penalties look at; -1 = whole context, 0 = off.",
    )
    dry_multiplier: float = spec(
        0.0, 0.0, 5.0, "DRY multiplier", "Penalises tokens that would extend a repeated sequence; 0 is off."
    )
    dry_base: float = spec(
        1.75, 1.0, 4.0, "DRY base", "Growth of the DRY penalty with the repeated sequence's length."
    )
    dry_allowed_length: int = spec(
        2, 0, 1000, "DRY allowed length", "Repeats up to this length go unpenalised."
    )
    dry_penalty_last_n: int = spec(
        -1, -1, 1 << 20, "DRY window", "How many recent tokens DRY scans; -1 = whole context."
    )
    dry_sequence_breakers: tuple[str, ...] = spec(
        ("\n", ":", '"', "*"), label="DRY breakers", help="Strings that end a repeated sequence for DRY."
    )
    mirostat: int = spec(
        0,
        0,
        2,
        "Mirostat",
        "0 off; 1 or 2 replaces top-k/p with a controller that targets a fixed surprise (tau).",
    )
    mirostat_tau: float = spec(
        5.0, 0.0, 20.0, "Mirostat tau", "Target surprise in bits: lower is more focused."
    )
    mirostat_eta: float = spec(0.1, 0.0, 1.0, "Mirostat eta", "How fast mirostat corrects toward tau.")
    seed: int = spec(
        -1, -1, 0xFFFFFFFE, "Seed", "Random seed; the same seed and settings reproduce a reply. -1 picks one."
    )
    max_tokens: int = spec(512, 1, 1 << 20, "Max tokens", "Longest reply, in tokens.")
    stop: tuple[str, ...] = spec((), label="Stop strings", help="The reply ends before any of these strings.")
    logit_bias: tuple[tuple[int, float], ...] = spec(
        (), label="Logit bias", help="Token id -> value added to its logit (-inf bans it)."
    )
    grammar: str = spec("", label="Grammar", help="A GBNF grammar the reply must follow.")
    json_schema: str = spec(
        "", label="JSON schema", help="A JSON schema the reply must follow (turned into a grammar)."
    )
    grammar_triggers: tuple[str, ...] = spec(
        (), label="Grammar triggers",
        help="Regexes over the reply: the grammar applies only from the first group of the first match on "
        "(a lazy grammar; tool calls in auto mode). Empty: the grammar applies from the first token.",
    )  # fmt: skip
    logprobs: bool = spec(
        False, label="Log-probabilities", help="Report each token's log-probability under the model."
    )
    top_logprobs: int = spec(
        0,
        0,
        50,
        "Top alternatives",
        "How many alternatives to report per token with their log-probabilities.",
    )

    def _validate_more(self) -> None:
        if self.grammar and self.json_schema:
            raise SettingsError("json_schema", "give either a grammar or a JSON schema, not both")
        if self.json_schema:
            try:
                json.loads(self.json_schema)
            except json.JSONDecodeError as err:
                raise SettingsError(
                    "json_schema", f"is not valid JSON ({err.msg} at line {err.lineno})"
                ) from None
        if self.grammar_triggers and not self.grammar:
            raise SettingsError("grammar_triggers", "need a grammar to switch on")
        from engine.tools import check_trigger_pattern  # here: engine.tools imports the events, not settings

        for pattern in self.grammar_triggers:
            if why := check_trigger_pattern(pattern) if isinstance(pattern, str) else "is not text":
                raise SettingsError("grammar_triggers", f"{pattern!r:.60} {why}")
        for item in self.stop:
            if not isinstance(item, str) or not item:
                raise SettingsError("stop", f"stop strings must be non-empty text, got {item!r}")
        for tok, _bias in self.logit_bias:
            if tok < 0:
                raise SettingsError("logit_bias", f"token id {tok} is negative")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 and self.mirostat == 0


PRESETS: dict[str, SamplingSettings] = {
    "Precise": SamplingSettings(temperature=0.2, top_k=20, top_p=0.9, min_p=0.1, repeat_penalty=1.05),
    "Balanced": SamplingSettings(),
    "Creative": SamplingSettings(
        temperature=1.1, top_k=0, top_p=1.0, min_p=0.05, xtc_probability=0.3, dry_multiplier=0.8
    ),
}
