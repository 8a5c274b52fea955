"""Training datasets: formats, validation of every line, tokens identical to llama.cpp chat, masks, cutoff, split."""

from __future__ import annotations

import json

import pytest

from engine.events import Message
from training.datasets import DataFormat, prepare, read_dataset, tokenize_example
from training.errors import DatasetError
from training.evaluate import open_runtime


@pytest.fixture(scope="module")
def rt(tiny_model):
    runtime = open_runtime(tiny_model, n_ctx=256)
    yield runtime
    runtime.close()


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


CHAT = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "blue moon"}]}


@pytest.mark.parametrize(
    "record, fmt",
    [
        (CHAT, DataFormat.CHAT),
        ({"instruction": "say", "input": "hello", "output": "blue"}, DataFormat.ALPACA),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]},
            DataFormat.SHAREGPT,
        ),
        ({"text": "the cat is on the moon"}, DataFormat.TEXT),
    ],
)
def test_each_format_is_detected_and_read(tmp_path, record, fmt):
    examples, detected, problems = read_dataset(_write(tmp_path / "d.jsonl", [record, record]))
    assert detected == fmt and len(examples) == 2 and problems == ()
    if fmt == DataFormat.ALPACA:
        assert examples[0].messages == (Message("user", "say\n\nhello"), Message("assistant", "blue"))
    if fmt == DataFormat.SHAREGPT:
        assert [m.role for m in examples[0].messages] == ["user", "assistant"]


def test_plain_text_file_splits_paragraphs_and_format_can_be_overridden(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("the cat\nis red\n\nthe dog is blue\n")
    examples, fmt, _ = read_dataset(txt)
    assert fmt == DataFormat.TEXT and [e.text for e in examples] == ["the cat\nis red", "the dog is blue"]
    # a chat record read as Alpaca is a bad line, with the reason
    alpaca = {"instruction": "say", "output": "blue"}
    examples, _, problems = read_dataset(_write(tmp_path / "d.jsonl", [CHAT, alpaca]), "alpaca")
    assert len(examples) == 1
    assert problems[0].line == 1 and "missing 'instruction'" in problems[0].reason


def test_every_bad_line_is_reported_with_number_and_reason(tmp_path, rt):
    path = _write(tmp_path / "bad.jsonl", [
        CHAT,
        "{not json",
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
        [1, 2],
        CHAT,
    ])  # fmt: skip
    examples, _, problems = read_dataset(path)
    assert len(examples) == 2
    reasons = {p.line: p.reason for p in problems}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "not valid JSON" in reasons[2]
    assert "no assistant turn" in reasons[3]
    assert "'robot'" in reasons[4]
    assert "empty" in reasons[5]
    assert "JSON object" in reasons[6]
    with pytest.raises(DatasetError) as err:
        prepare(rt, path)
    assert "5 bad line(s), 2 good" in str(err.value) and "line 4:" in str(err.value)
    assert len(err.value.problems) == 5
    assert prepare(rt, path, skip_bad_lines=True, val_fraction=0).stats["skipped_lines"] == 5


def test_no_usable_example_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no usable examples"):
        read_dataset(_write(tmp_path / "d.jsonl", ["{}", "3"]))
    with pytest.raises(DatasetError, match="no such dataset"):
        read_dataset(tmp_path / "missing.jsonl")


def test_tokens_match_llama_cpp_chat_and_only_assistant_tokens_carry_loss(rt):
    from training.datasets import Example

    messages = (Message("user", "hello"), Message("assistant", "blue moon"), Message("user", "yes"),
                Message("assistant", "red sun"))  # fmt: skip
    item = tokenize_example(rt, Example(1, messages))
    assert item.tokens == rt.render_tokens(list(messages), add_generation_prompt=False)
    # the prompt the engine sends for a reply is exactly the prefix of the training example
    prompt = rt.render_tokens(list(messages[:1]))
    assert item.tokens[: len(prompt)] == prompt
    learned = rt.detokenize([t for t, m in zip(item.tokens, item.loss_mask, strict=True) if m], special=True)
    # each reply and its end-of-turn marker (so the model learns to stop), nothing of the user turns
    assert [part.strip() for part in learned.split("<end_of_turn>")] == ["blue moon", "red sun", ""]
    everything = tokenize_example(rt, Example(1, messages), train_on_prompt=True)
    assert all(everything.loss_mask)


def test_cutoff_counts_truncated_examples_and_split_is_seeded(tmp_path, rt):
    long = {
        "messages": [
            {"role": "user", "content": "hello " * 40},
            {"role": "assistant", "content": "cat " * 40},
        ]
    }
    path = _write(tmp_path / "d.jsonl", [CHAT] * 8 + [long] * 2)
    data = prepare(rt, path, cutoff_len=60, val_fraction=0.2, seed=3)
    assert data.stats["truncated"] == 2 and data.stats["max_len"] == 60
    assert (len(data.train), len(data.val)) == (8, 2)
    assert data.stats["target_tokens"] == sum(t.n_targets for t in data.train + data.val)
    again = prepare(rt, path, cutoff_len=60, val_fraction=0.2, seed=3)
    assert [t.tokens for t in again.val] == [t.tokens for t in data.val]
    assert len(data.sha256) == 64
