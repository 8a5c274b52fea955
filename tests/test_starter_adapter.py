"""The starter's bundled chat adapter: its dataset generator, the adapter in the real engine, and `ingle run`."""

from __future__ import annotations

import json

import pytest
from test_cli import ingle

from engine.events import Message, ReplyDone, StopReason
from engine.library import STARTER_ADAPTER_FILE, STARTER_ADAPTER_NAME, Library
from engine.runtime import Runtime
from engine.settings import LoadSettings, SamplingSettings
from training import starter_data
from training.datasets import read_dataset

HELLO = "Hello! What can you do?"
MAX_REPLY = 96  # tokens: the adapter's hello reply is ~50; the base model rambles to the limit


def test_generator_is_deterministic_and_matches_the_shipped_files():
    train, heldout = starter_data.generate()
    assert (train, heldout) == starter_data.generate()
    assert starter_data.generate(seed=1)[0] != train
    for path, records in ((starter_data.OUT, train), (starter_data.HELDOUT, heldout)):
        assert [json.loads(line) for line in path.read_text().splitlines()] == records, f"regenerate {path}"
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in heldout}


def test_generated_lines_are_short_chat_examples():
    examples, fmt, problems = read_dataset(starter_data.OUT)
    assert not problems and fmt.value == "chat" and len(examples) == starter_data.N_TRAIN
    replies = 0
    for ex in examples:
        roles = [m.role for m in ex.messages if m.role != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles, roles
        for m in ex.messages:
            if m.role == "assistant":
                replies += 1
                assert 0 < len(m.content) <= 300 and "<end_of_turn>" not in m.content
    assert replies > len(examples)  # some conversations are multi-turn
    hello = [ex for ex in examples if ex.messages[0].content == HELLO]
    assert hello and all("small" in ex.messages[1].content for ex in hello)


def _greedy(model, adapters=()) -> ReplyDone:
    rt = Runtime()
    try:
        for _ in rt.load(str(model), LoadSettings(n_ctx=512), adapters):
            pass
        sampling = SamplingSettings(temperature=0.0, max_tokens=MAX_REPLY)
        return [e for e in rt.chat([Message("user", HELLO)], sampling) if isinstance(e, ReplyDone)][-1]
    finally:
        rt.close()


def test_bundled_adapter_makes_the_starter_answer_and_end_its_turn(starter_model):
    library = Library()
    library.ensure_starter()
    adapter = library.starter_adapter()
    assert adapter is not None and adapter.name == STARTER_ADAPTER_NAME and adapter.linked
    assert (
        adapter.file == STARTER_ADAPTER_FILE
        and adapter.base_sha256 == library.get("gemma-3-270m-q4_k_m").sha256
    )
    assert STARTER_ADAPTER_FILE.stat().st_size < 6 << 20  # small enough to ship in the repository
    adapted = _greedy(starter_model, [(str(adapter.file), 1.0)])
    base = _greedy(starter_model)
    assert adapted.stats.stop_reason is StopReason.EOS, adapted.text
    assert adapted.stats.generated_tokens < MAX_REPLY and adapted.text.strip()
    assert adapted.text != base.text


@pytest.mark.parametrize("flag", [None, "--no-adapter"])
def test_run_without_a_model_uses_the_starter_adapter(starter_model, flag):
    extra = [flag] if flag else []
    result = ingle("run", HELLO, "--temp", "0", "-n", str(MAX_REPLY), "--stats", *extra)
    assert result.returncode == 0, result.stderr
    uses = f"adapter {STARTER_ADAPTER_FILE.name} at scale 1 on" in result.stderr
    if flag:
        assert not uses and "stop: eos" not in result.stderr  # the base model continues text to the limit
    else:
        assert uses and "stop: eos" in result.stderr and result.stdout.strip(), result.stderr


def test_the_window_loads_the_starter_with_its_adapter_and_remembers_none(qtbot, fresh_home, starter_model):
    from app.main import MainWindow
    from engine.conversations import ConversationStore

    library = Library(fresh_home)
    library.import_file(starter_model, link=True, name="gemma-3-270m-q4_k_m", source="starter")

    def start() -> MainWindow:
        window = MainWindow(store=ConversationStore(fresh_home / "chats.sqlite3"), library=library)
        qtbot.addWidget(window)
        window.show()
        with qtbot.waitSignal(window.model_ready, timeout=120_000):
            pass
        return window

    window = start()
    panel = window.model_panel
    assert window.last_load[2] == ((str(STARTER_ADAPTER_FILE), 1.0),)
    assert panel.adapter_box.currentData() == STARTER_ADAPTER_NAME and panel.adapter_scale.value() == 1.0
    assert "starter-chat" in window.info_banner.label.text()
    panel.adapter_box.setCurrentIndex(panel.adapter_box.findData(""))  # the user turns it off
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        panel.load_button.click()
    assert window.last_load[2] == ()
    window.close()
    again = start()  # the next start keeps the choice
    assert again.last_load[2] == () and again.model_panel.adapter_box.currentData() == ""
    again.close()


def test_the_library_links_the_bundled_adapter_and_never_deletes_or_overrides(fresh_home, starter_model):
    library = Library(fresh_home)
    library.import_file(starter_model, link=True, name="gemma-3-270m-q4_k_m", source="starter")
    assert library.starter_adapter() is None  # linked when the starter is prepared
    library.ensure_starter()
    linked = library.starter_adapter()
    assert linked is not None and linked.file == STARTER_ADAPTER_FILE and linked.kind == "adapter"
    assert linked.base_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    library.remove(STARTER_ADAPTER_NAME)
    assert STARTER_ADAPTER_FILE.is_file() and library.starter_adapter() is None
    library.import_file(STARTER_ADAPTER_FILE, name=STARTER_ADAPTER_NAME)  # the user's own copy, same name
    library.ensure_starter()
    assert library.get(STARTER_ADAPTER_NAME).file.parent == fresh_home / "adapters"  # left alone
