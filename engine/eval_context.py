"""The context-length eval: a needle in a haystack at each length and depth (found by the greedy answer? the
needle's log-probability given the question) and perplexity at each length, run by llama.cpp in the engine.

`evaluate_context(rt, ...)` is the Runtime's streaming engine method (progress events, then the result);
`run_eval` loads a model once per settings (base, stretched) through any Engine and collects a report for the
CLI and the GUI. Nothing here imports llama.cpp, so the GUI process can unpickle the results."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import Cancelled, EngineError, SettingsError
from engine.events import LoadProgress
from engine.haystack import filler_sentences, needle
from engine.settings import LoadSettings, RopeScaling

DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)
ANSWER_TOKENS = 12  # the greedy answer's length: the value is a few words
MARGIN = 128  # context kept beyond the longest haystack for the question, the needle and the answer
ROPE_FIELDS = ("rope_scaling", "rope_freq_scale", "yarn_ext_factor", "yarn_beta_fast",
               "yarn_beta_slow", "yarn_orig_ctx")  # fmt: skip


@dataclass(frozen=True)
class EvalProgress:
    done: int
    total: int
    label: str


@dataclass(frozen=True)
class NeedleResult:
    length: int  # haystack tokens (filler + needle)
    depth: int  # percent of the haystack before the needle
    found: bool  # the greedy answer contains the needle's value
    logprob: float  # log-probability of the value's tokens given the haystack and the question
    n_tokens: int  # tokens of the value
    answer: str

    @property
    def token_p(self) -> float:
        """Geometric mean probability per token of the value: 1 is certain, near 0 lost."""
        return math.exp(self.logprob / max(1, self.n_tokens))


@dataclass(frozen=True)
class LengthPerplexity:
    length: int
    perplexity: float
    tokens: int  # predictions measured


@dataclass(frozen=True)
class ContextEval:
    n_ctx: int
    n_ctx_train: int
    rope: dict
    cells: tuple[NeedleResult, ...]
    perplexity: tuple[LengthPerplexity, ...]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "n_ctx": self.n_ctx, "n_ctx_train": self.n_ctx_train, "rope": dict(self.rope),
            "needle": [asdict(c) | {"token_p": c.token_p} for c in self.cells],
            "perplexity": [asdict(p) for p in self.perplexity], "seconds": self.seconds,
        }  # fmt: skip


# ---------------------------------------------------------------------------- arguments
def parse_lengths(text: str) -> tuple[int, ...]:
    """'512,1k,2k' -> (512, 1024, 2048): token counts, k = 1024."""
    out = []
    for item in (t.strip().lower() for t in text.split(",")):
        try:
            value = int(float(item[:-1]) * 1024) if item.endswith("k") else int(item)
        except ValueError:
            raise SettingsError(
                "lengths", f"'{item}' is not a length; give token counts like 512,1k,2k"
            ) from None
        if not 64 <= value <= 1 << 20:
            raise SettingsError("lengths", f"{value} is out of range; lengths go from 64 to {1 << 20} tokens")
        out.append(value)
    return tuple(sorted(set(out)))


def parse_depths(text: str) -> tuple[int, ...]:
    """'0,50,100' -> (0, 50, 100): percent of the haystack before the needle."""
    out = []
    for item in (t.strip().rstrip("%") for t in text.split(",")):
        try:
            value = int(item)
        except ValueError:
            raise SettingsError(
                "depths", f"'{item}' is not a depth; give percentages like 0,50,100"
            ) from None
        if not 0 <= value <= 100:
            raise SettingsError("depths", f"{value} is out of range; depths go from 0 to 100 (percent)")
        out.append(value)
    return tuple(sorted(set(out)))


def needed_context(lengths: Sequence[int]) -> int:
    return max(lengths) + MARGIN


def base_settings(stretched: LoadSettings) -> LoadSettings:
    """The same load settings with positions as the model's file says (no stretching), for --compare."""
    defaults = {f: getattr(LoadSettings(), f) for f in ROPE_FIELDS}
    return stretched.replace(**defaults)


# ---------------------------------------------------------------------------- in the engine
def _log_softmax_at(logits: np.ndarray, token: int) -> float:
    top = float(logits.max())
    return float(logits[token]) - top - math.log(float(np.exp(logits - top).sum()))


def evaluate_context(rt, lengths: Sequence[int], depths: Sequence[int], perplexity: bool = True) -> Iterator:
    """Engine method: for each length, the needle at each depth, then perplexity of the bare filler."""
    rt.require_model()
    lengths, depths = sorted(set(lengths)), sorted(set(depths), reverse=True)
    if not lengths or not depths:
        raise EngineError("Give at least one length and one depth.")
    if needed_context(lengths) > rt.n_ctx:
        raise EngineError(
            f"A haystack of {max(lengths)} tokens needs a context of {needed_context(lengths)}; the model is loaded "
            f"with {rt.n_ctx}. Load it with a longer context (--ctx-size) or use shorter lengths."
        )
    cancel = rt.stop_flag  # the Runtime's Stop flag: cancel() from any thread ends the eval between steps
    cancel.clear()
    started = time.perf_counter()
    bos = rt.tokenize("", add_special=True)
    sentences: list[list[int]] = []
    total = 0
    for sentence in filler_sentences(max(lengths) // 8 + 64):
        sentences.append(rt.tokenize(sentence, add_special=False, parse_special=False))
        total += len(sentences[-1])
        if total >= max(lengths):
            break
    filler = [t for s in sentences for t in s]
    bounds = np.cumsum([0] + [len(s) for s in sentences])  # where each sentence starts
    steps = len(lengths) * len(depths) + perplexity
    done = 0
    cells = []
    for length in lengths:
        for (
            depth
        ) in depths:  # deepest first: the next needle's haystack reuses this one's prefix in the cache
            if cancel.is_set():
                raise Cancelled("The context eval was cancelled.")
            cells.append(_needle_cell(rt, bos, filler, bounds, length, depth))
            done += 1
            yield EvalProgress(done, steps, f"needle at {depth}% of {length} tokens")
    ppl: list[LengthPerplexity] = []
    if perplexity:
        ppl = _perplexity(rt, lengths, bos + filler[: max(lengths)], cancel)
        yield EvalProgress(steps, steps, "perplexity")
    settings = rt.load_settings
    yield ContextEval(
        rt.n_ctx, int(rt.info.context_length), {f: _plain(getattr(settings, f)) for f in ROPE_FIELDS},
        tuple(sorted(cells, key=lambda c: (c.length, c.depth))), tuple(ppl), time.perf_counter() - started,
    )  # fmt: skip


def _plain(value):
    return value.value if isinstance(value, RopeScaling) else value


def _needle_cell(rt, bos, filler, bounds, length: int, depth: int) -> NeedleResult:
    item = needle(length, depth)
    needle_tokens = rt.tokenize(item.sentence, add_special=False, parse_special=False)
    room = length - len(needle_tokens)
    # the sentence boundary nearest the asked depth, so the needle never splits a sentence
    target = room * depth / 100
    candidates = bounds[bounds <= room]
    at = int(candidates[np.argmin(np.abs(candidates - target))])
    haystack = filler[:at] + needle_tokens + filler[at:room]
    prompt = bos + haystack + rt.tokenize(item.question, add_special=False, parse_special=False)
    value_tokens = rt.tokenize(" " + item.value, add_special=False, parse_special=False)
    rt.evaluate(prompt)
    logprob = 0.0
    for i, token in enumerate(value_tokens):
        logprob += _log_softmax_at(rt.last_logits(), token)
        if i + 1 < len(value_tokens):
            rt.evaluate(prompt + value_tokens[: i + 1])
    answer: list[int] = []
    rt.evaluate(prompt)  # back to the question's end (the cache keeps the haystack)
    for _ in range(ANSWER_TOKENS):
        token = int(np.argmax(rt.last_logits()))
        if rt.is_eog(token):
            break
        answer.append(token)
        if "\n" in rt.detokenize(answer):
            break
        rt.evaluate(prompt + answer)
    text = rt.detokenize(answer).split("\n")[0].strip()
    found = item.value.lower() in text.lower()
    return NeedleResult(length, depth, found, logprob, len(value_tokens), text)


def _perplexity(rt, lengths: Sequence[int], tokens: list[int], cancel) -> list[LengthPerplexity]:
    """Perplexity of the first `length` predictions of `tokens`, for each length, from one pass over the longest
    (a prediction sees only the tokens before it, so the longer pass scores the shorter prefixes exactly as their
    own pass would; the output layer over a 262k vocabulary is the dear part, paid once)."""
    nll = np.zeros(len(tokens) - 1)
    offset = 0
    for rows in rt.logits_all(tokens):
        if cancel.is_set():
            raise Cancelled("The context eval was cancelled.")
        n = min(len(rows), len(tokens) - 1 - offset)
        for start in range(0, max(0, n), 64):  # 64 rows at a time: a 262k vocabulary makes each row 1 MB
            block = rows[start : min(n, start + 64)]
            top = block.max(axis=1)
            lse = top + np.log(np.exp(block - top[:, None]).sum(axis=1))
            at = offset + start
            targets = np.asarray(tokens[at + 1 : at + 1 + len(block)])
            nll[at : at + len(block)] = lse - block[np.arange(len(block)), targets]
        offset += len(rows)
    return [LengthPerplexity(n, math.exp(float(nll[:n].mean())), n) for n in lengths if n <= len(nll)]


# ---------------------------------------------------------------------------- driving an engine
def run_eval(
    engine,
    path: str | Path,
    runs: Sequence[tuple[str, LoadSettings]],
    lengths: Sequence[int],
    depths: Sequence[int],
    adapters: Sequence[tuple[str, float]] = (),
    progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Load the model once per (label, settings) through `engine` and run the eval; the JSON-ready report."""
    report = {"model": str(path), "lengths": list(lengths), "depths": list(depths), "runs": []}
    for index, (label, settings) in enumerate(runs):
        if settings.n_ctx < needed_context(lengths):
            settings = settings.replace(n_ctx=needed_context(lengths))
        for event in engine.load(path, settings, adapters):
            if progress and isinstance(event, LoadProgress):
                progress(index / len(runs), f"{label}: loading {event.fraction:.0%}")
        result = None
        for event in engine.eval_context(list(lengths), list(depths), True):
            if isinstance(event, EvalProgress):
                if progress:
                    progress((index + event.done / event.total) / len(runs), f"{label}: {event.label}")
            else:
                result = event
        report["runs"].append({"label": label, **result.to_dict()})
    return report


def save_json(report: dict, path: str | Path) -> None:
    """Write the report atomically: a temporary file in the same folder, renamed over the target."""
    import json

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- the terminal picture
def _cell_colour(p: float) -> str:
    """An ANSI 256-colour background from red (lost) through yellow to green (found with certainty)."""
    steps = [196, 202, 208, 214, 220, 226, 190, 154, 118, 46]
    return f"\x1b[48;5;{steps[min(9, int(p * 10))]}m\x1b[30m"


def heatmap_lines(run: dict, colour: bool = False) -> list[str]:
    """A depth x length table of one run: ✓/✗ (the greedy answer found the needle) and the per-token
    probability of the needle's value; perplexity per length underneath."""
    cells = {(c["length"], c["depth"]): c for c in run["needle"]}
    lengths = sorted({c["length"] for c in run["needle"]})
    depths = sorted({c["depth"] for c in run["needle"]})
    lines = [f"{run['label']} (rope {run['rope']['rope_scaling']}, context {run['n_ctx']}, "
             f"trained {run['n_ctx_train']})", "depth " + "".join(f"{n:>9}" for n in lengths)]  # fmt: skip
    for depth in depths:
        row = f"{depth:>4}% "
        for length in lengths:
            c = cells[(length, depth)]
            text = f" {'✓' if c['found'] else '✗'} {c['token_p']:.2f} "
            row += f"{_cell_colour(c['token_p'])}{text:>9}\x1b[0m" if colour else f"{text:>9}"
        lines.append(row)
    by_length = {p["length"]: p["perplexity"] for p in run["perplexity"]}
    if by_length:
        lines.append("ppl   " + "".join(f"{by_length.get(n, float('nan')):>9.2f}" for n in lengths))
    return lines


def side_by_side(blocks: list[list[str]], gap: int = 4) -> list[str]:
    """Print several heatmaps next to each other (ANSI codes take no columns)."""
    import re

    def width(line: str) -> int:
        return len(re.sub(r"\x1b\[[0-9;]*m", "", line))

    widths = [max(width(line) for line in block) for block in blocks]
    rows = max(len(b) for b in blocks)
    out = []
    for i in range(rows):
        parts = []
        for block, w in zip(blocks, widths, strict=True):
            line = block[i] if i < len(block) else ""
            parts.append(line + " " * (w - width(line)))
        out.append((" " * gap).join(parts).rstrip())
    return out
