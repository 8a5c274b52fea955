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


def test_a_line_that_is_not_utf8_is_one_bad_line_with_its_number_and_can_be_skipped(tmp_path, rt):
    good = json.dumps(CHAT).encode()
    bad = b'{"text": "caf\xff"}'
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([good] * 6 + [bad, good]) + b"\n")
    examples, _, problems = read_dataset(path)
    assert len(examples) == 7
    assert [str(p) for p in problems] == ["line 7: not valid UTF-8 (byte 0xff at column 14)"]
    with pytest.raises(DatasetError) as err:
        prepare(rt, path)
    assert "line 7: not valid UTF-8" in str(err.value) and "--skip-bad-lines" in str(err.value)
    data = prepare(rt, path, skip_bad_lines=True, val_fraction=0)
    assert data.stats["skipped_lines"] == 1 and data.stats["examples"] == 7


def test_a_text_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"the cat\n\nthe dog \xc3\x28 is blue\n")
    with pytest.raises(DatasetError, match=r"line 3: not valid UTF-8 \(byte 0xc3 at column 9\)"):
        read_dataset(path)


def test_line_separators_inside_json_strings_and_a_bom_are_kept(tmp_path):
    # str.splitlines() cuts at U+2028, U+0085 and friends, which JSON allows raw inside strings
    record = {"messages": [{"role": "user", "content": "one\u2028two\x85three"},
                           {"role": "assistant", "content": "ok\u2029"}]}  # fmt: skip
    path = tmp_path / "seps.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(record, ensure_ascii=False) + "\r\n").encode() * 2)
    examples, _, problems = read_dataset(path)
    assert problems == () and len(examples) == 2
    assert examples[0].messages[0].content == "one\u2028two\x85three"


def test_thousands_of_bad_lines_are_told_in_a_screenful(tmp_path, rt):
    path = _write(tmp_path / "many.jsonl", [CHAT] + ["{oops"] * 500)
    with pytest.raises(DatasetError) as err:
        prepare(rt, path)
    message = str(err.value)
    assert "500 bad line(s), 1 good" in message and "... and 480 more" in message
    assert len(message.splitlines()) < 30 and len(err.value.problems) == 500


def test_tokenizing_reports_progress_to_the_last_example(tmp_path, rt):
    path = _write(tmp_path / "d.jsonl", [CHAT] * 5)
    seen = []
    prepare(rt, path, val_fraction=0, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_wizard_report_lists_a_non_utf8_line_as_a_skippable_bad_line(tmp_path, tiny_model):
    from training.tasks import dataset_report

    path = tmp_path / "wizard.jsonl"
    path.write_bytes(json.dumps(CHAT).encode() + b"\n\xfe\n" + json.dumps(CHAT).encode() + b"\n")
    report = dataset_report(str(tiny_model), str(path), None, 256, 0.0, 0, False)
    # the wizard lists these and offers "skip the bad ones"; before, the whole file was refused
    assert report["problems"] == [(2, "not valid UTF-8 (byte 0xfe at column 1)")]
    assert report["stats"]["examples"] == 2 and report["stats"]["skipped_lines"] == 1
