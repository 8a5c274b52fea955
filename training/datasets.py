"""Training data: read JSONL chat / Alpaca / ShareGPT / plain text, validate every line, render and tokenize like chat."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from engine.events import Message
from engine.textstream import common_prefix
from training.errors import DatasetError, DatasetProblem

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant"}  # fmt: skip


class DataFormat(StrEnum):
    CHAT = "chat"  # {"messages": [{"role": ..., "content": ...}, ...]}
    ALPACA = "alpaca"  # {"instruction": ..., "input": ..., "output": ...}
    SHAREGPT = "sharegpt"  # {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}
    TEXT = "text"  # {"text": ...} per line, or a plain .txt file (paragraphs split by blank lines)


@dataclass(frozen=True)
class Example:
    """One training example: a conversation (messages) or a plain text."""

    line: int
    messages: tuple[Message, ...] = ()
    text: str = ""


@dataclass
class TokenizedExample:
    tokens: list[int]
    loss_mask: list[bool]  # True where the token is a training target
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(self.loss_mask)


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    val: list[TokenizedExample]
    format: DataFormat
    sha256: str
    problems: tuple[DatasetProblem, ...] = ()
    stats: dict = field(default_factory=dict)


def detect_format(record: dict) -> DataFormat | None:
    if "messages" in record:
        return DataFormat.CHAT
    if "conversations" in record:
        return DataFormat.SHAREGPT
    if "instruction" in record and "output" in record:
        return DataFormat.ALPACA
    if "text" in record:
        return DataFormat.TEXT
    return None


def _nonempty_str(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _chat_messages(turns, role_key: str, content_key: str, role_map: dict[str, str]) -> tuple[Message, ...]:
    if not isinstance(turns, list) or not turns:
        raise ValueError("the conversation must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i + 1} is not an object")
        role = role_map.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise ValueError(
                f"turn {i + 1} has role {turn.get(role_key)!r}; expected one of {', '.join(role_map)}"
            )
        out.append(Message(role, _nonempty_str(turn.get(content_key), f"turn {i + 1} '{content_key}'")))
    if not any(m.role == "assistant" for m in out):
        raise ValueError("no assistant turn to learn from")
    if out[0].role == "assistant" or (out[0].role == "system" and len(out) > 1 and out[1].role != "user"):
        raise ValueError("the conversation must start with a user turn (after an optional system turn)")
    return tuple(out)


def parse_record(record, fmt: DataFormat, line: int) -> Example:
    """One JSON record in the given format -> Example; raises ValueError with the reason."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == DataFormat.CHAT:
        if "messages" not in record:
            raise ValueError("missing 'messages'")
        return Example(line, _chat_messages(record["messages"], "role", "content", {r: r for r in ROLES}))
    if fmt == DataFormat.SHAREGPT:
        if "conversations" not in record:
            raise ValueError("missing 'conversations'")
        return Example(line, _chat_messages(record["conversations"], "from", "value", _SHAREGPT_ROLES))
    if fmt == DataFormat.ALPACA:
        for key in ("instruction", "output"):
            if key not in record:
                raise ValueError(f"missing '{key}'")
        prompt = _nonempty_str(record["instruction"], "'instruction'")
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("'input' must be a string")
        user = prompt + ("\n\n" + extra if extra.strip() else "")
        return Example(
            line, (Message("user", user), Message("assistant", _nonempty_str(record["output"], "'output'")))
        )
    if "text" not in record:
        raise ValueError("missing 'text'")
    return Example(line, text=_nonempty_str(record["text"], "'text'"))


_BOM = b"\xef\xbb\xbf"


def _utf8_reason(byte: int, column: int) -> str:
    return f"not valid UTF-8 (byte 0x{byte:02x} at column {column})"


def read_dataset(
    path: str | Path, fmt: DataFormat | str | None = None
) -> tuple[list[Example], DataFormat, tuple[DatasetProblem, ...]]:
    """Read every line; returns the good examples, the format and every problem (line number and reason)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file.")
    fmt = DataFormat(fmt) if fmt else None
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the dataset ({err.strerror}).") from None
    raw = raw.removeprefix(_BOM)  # editors on Windows start UTF-8 files with one; json.loads refuses it
    if path.suffix.lower() in (".txt", ".md") and fmt in (None, DataFormat.TEXT):
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
            raise DatasetError(
                f"{path}: line {line}: {_utf8_reason(raw[err.start], column)}; save the file as UTF-8."
            ) from None
        blocks = [b.strip() for b in content.split("\n\n")]
        examples = [Example(i + 1, text=b) for i, b in enumerate(blocks) if b]
        if not examples:
            raise DatasetError(f"{path}: the text file is empty.")
        return examples, DataFormat.TEXT, ()
    examples: list[Example] = []
    problems: list[DatasetProblem] = []
    # JSON Lines are split on "\n" only, as bytes: one line that is not UTF-8 is one bad line (skippable), and
    # U+2028 or U+0085 inside a JSON string (str.splitlines would cut there) stays part of its line
    for number, raw_line in enumerate(raw.split(b"\n"), 1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(DatasetProblem(number, _utf8_reason(raw_line[err.start], err.start + 1)))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(DatasetProblem(number, f"not valid JSON ({err.msg} at column {err.colno})"))
            continue
        except RecursionError:
            problems.append(DatasetProblem(number, "not valid JSON (nested too deeply)"))
            continue
        if fmt is None and isinstance(record, dict):
            fmt = detect_format(record)
        if fmt is None:
            problems.append(DatasetProblem(number, "unknown format: expected 'messages', 'conversations', "
                                                   "'instruction'+'output' or 'text'"))  # fmt: skip
            continue
        try:
            examples.append(parse_record(record, fmt, number))
        except ValueError as err:
            problems.append(DatasetProblem(number, str(err)))
    if not examples:
        detail = "; ".join(str(p) for p in problems[:5])
        raise DatasetError(f"{path}: no usable examples. {detail}", tuple(problems))
    return examples, fmt, tuple(problems)


MAX_LISTED_PROBLEMS = 20  # a file of 100,000 bad lines is told in a screenful


def problems_message(path, problems: Sequence[DatasetProblem], n_good: int) -> str:
    lines = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines += f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more"
    return (f"{path}: {len(problems)} bad line(s), {n_good} good:\n{lines}\n"
            "Fix them, or accept skipping them (--skip-bad-lines).")  # fmt: skip


def tokenize_example(runtime, example: Example, train_on_prompt: bool = False) -> TokenizedExample:
    """Render through the chat template chat uses and tokenize with llama.cpp; mask all but assistant turns."""
    if not example.messages:
        tokens = runtime.tokenize(example.text, add_special=True, parse_special=False)
        eos = runtime.special_text(_eos(runtime))
        if eos:
            tokens += runtime.tokenize(eos, parse_special=True)
        return TokenizedExample(tokens, [True] * len(tokens))
    messages = list(example.messages)
    tokens = runtime.render_tokens(messages, add_generation_prompt=False)
    if train_on_prompt:
        return TokenizedExample(tokens, [True] * len(tokens))
    mask = [False] * len(tokens)
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        start = common_prefix(tokens, runtime.render_tokens(messages[:i], add_generation_prompt=True))
        end = common_prefix(tokens, runtime.render_tokens(messages[: i + 1], add_generation_prompt=False))
        for j in range(start, end):
            mask[j] = True
    return TokenizedExample(tokens, mask)


def _eos(runtime) -> int:
    import llama_cpp

    return llama_cpp.llama_vocab_eos(runtime.vocab)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare(
    runtime,
    path: str | Path,
    fmt: DataFormat | str | None = None,
    cutoff_len: int = 512,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_on_prompt: bool = False,
    skip_bad_lines: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """Read, validate, tokenize, cut and split a dataset. Bad lines raise unless `skip_bad_lines`.
    `progress(done, total)` is called as examples are tokenized."""
    examples, fmt, problems = read_dataset(path, fmt)
    if problems and not skip_bad_lines:
        raise DatasetError(problems_message(path, problems, len(examples)), problems)
    tokenized = []
    for number, ex in enumerate(examples, 1):
        if progress is not None:
            progress(number - 1, len(examples))
        item = tokenize_example(runtime, ex, train_on_prompt)
        if len(item.tokens) > cutoff_len:
            item = TokenizedExample(item.tokens[:cutoff_len], item.loss_mask[:cutoff_len], truncated=True)
        if any(item.loss_mask[1:]):  # position 0 is never predicted
            tokenized.append(item)
    if progress is not None:
        progress(len(examples), len(examples))
    if not tokenized:
        raise DatasetError(f"{path}: after cutting to {cutoff_len} tokens no example has a token to learn.")
    order = list(range(len(tokenized)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction)) if len(order) > 1 else 0
    n_val = min(n_val, len(order) - 1)
    val = [tokenized[i] for i in sorted(order[:n_val])]
    train = [tokenized[i] for i in sorted(order[n_val:])]
    lengths = sorted(len(t.tokens) for t in tokenized)
    stats = {
        "examples": len(tokenized),
        "train_examples": len(train),
        "val_examples": len(val),
        "skipped_lines": len(problems),
        "truncated": sum(t.truncated for t in tokenized),
        "tokens": sum(lengths),
        "target_tokens": sum(t.n_targets for t in tokenized),
        "min_len": lengths[0],
        "median_len": lengths[len(lengths) // 2],
        "max_len": lengths[-1],
    }
    return PreparedData(train, val, fmt, file_sha256(path), problems, stats)
