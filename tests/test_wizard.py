"""The fine-tuning wizard driven like a user: tiny trainable model, real training child, real exports, real chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.main import MainWindow
from engine.conversations import ConversationStore
from engine.library import Library

pytest.importorskip("torch", reason="the wizard trains with the training extra (pip install -e .[train])")

REPLIES = {
    "hello": "blue moon cat",
    "yes": "red sun dog",
    "good": "green big happy token",
    "no": "small dark",
}


def write_chats(path: Path, copies: int = 3) -> Path:
    lines = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for _ in range(copies)
        for q, a in REPLIES.items()
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def window(qtbot, tmp_path, tiny_model, fresh_home):
    library = Library()
    library.import_file(tiny_model, link=True, name="tiny")
    w = MainWindow(
        store=ConversationStore(tmp_path / "chats.sqlite3"), library=library, model=str(tiny_model)
    )
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=300_000):
        pass
    yield w
    w.close()


def shot(page, path: Path) -> None:
    assert page.grab().save(str(path))


def settings_for_test(wizard, **values) -> None:
    page = wizard.settings_page
    for name, value in values.items():
        widget = page.fields[name]
        widget.setValue(value)
    assert not page.error.text(), page.error.text()


def test_the_wizard_goes_from_examples_to_a_chat_with_the_adapter(qtbot, window, tmp_path, tiny_model):
    wizard = window.open_wizard()
    # 1. base model: facts and the trainable verdict
    page = wizard.base_page
    assert page.models.currentText() == "tiny" and "llama" in page.facts.text()
    assert page.verdict.text().startswith("✓") and page.isComplete()
    shot(wizard, tmp_path / "wizard-1-base.png")
    wizard.next()
    # 2. dataset: bad lines listed with their numbers; the page waits for a fix or an explicit skip
    data = wizard.data_page
    qtbot.waitUntil(lambda: data.report is not None, timeout=300_000)  # the bundled sample, checked first
    assert data.report["stats"]["examples"] > 100
    bad = tmp_path / "bad.jsonl"
    bad.write_text(write_chats(tmp_path / "g.jsonl").read_text() + "not json\n" + '{"foo": 1}\n')
    data.path.setText(str(bad))
    data.own.setChecked(True)
    qtbot.waitUntil(lambda: data.report is not None, timeout=300_000)
    assert [data.problems.item(i).text()[:8] for i in range(data.problems.count())] == [
        "line 13:",
        "line 14:",
    ]
    assert "not valid JSON" in data.problems.item(0).text() and not data.isComplete()
    data.skip_bad.setChecked(True)
    assert data.isComplete()
    good = write_chats(tmp_path / "chats.jsonl")
    data.path.setText(str(good))
    data.check()
    qtbot.waitUntil(lambda: data.report is not None, timeout=300_000)
    assert not data.report["problems"] and data.isComplete()
    assert any(loss for ex in data.report["preview"] for _, loss in ex["pieces"])  # loss tokens highlighted
    assert "carry loss" in data.stats.text()
    shot(wizard, tmp_path / "wizard-2-data.png")
    wizard.next()
    # 3. settings: every field, a preset, the estimate; then a fast schedule for the tiny model
    settings = wizard.settings_page
    assert set(settings.fields) == {f.name for f in type(wizard.settings).field_specs()}
    assert "Estimate:" in settings.estimate.text()
    settings.fields["learning_rate"].setValue(0.02)
    assert settings.preset.currentText() == "Custom"
    settings_for_test(wizard, batch_size=3, epochs=4.0, max_steps=12, eval_every=4, val_fraction=0.25, rank=8)
    settings.fields["bf16"].setChecked(False)
    shot(wizard, tmp_path / "wizard-3-settings.png")
    wizard.next()
    # 4. train: curves get points, the adapter lands in the library
    train = wizard.train_page
    qtbot.waitUntil(lambda: train.state in ("done", "failed"), timeout=600_000)
    assert train.state == "done", train.log.toPlainText()
    assert len(train.chart.train) == 12 and train.chart.val
    assert train.chart.train[-1][1] < train.chart.train[0][1]
    assert f"Estimate: {train.chart.total_steps} steps," in settings.estimate.text()  # the loop's own count
    adapter = Path(train.done.adapter_path)
    assert adapter.exists() and Library().entries("adapter")[0].file == adapter
    shot(wizard, tmp_path / "wizard-4-train.png")
    wizard.next()
    # 5. evaluate: perplexity of both, replies side by side
    evaluate = wizard.evaluate_page
    qtbot.waitUntil(lambda: evaluate.result is not None or "rror" in evaluate.status.text(), timeout=600_000)
    assert evaluate.table.rowCount() == 2, evaluate.status.text()
    replies = evaluate.result["replies"][0]  # the same prompt to both (the tiny model's replies may be empty)
    assert replies["prompt"] == evaluate.prompt.text() and {"base", "adapted"} <= set(replies)
    assert evaluate.base_reply.toPlainText() == replies["base"]
    table = evaluate.result["perplexity"]
    assert table["base + adapter"]["perplexity"] < table["base"]["perplexity"]
    shot(wizard, tmp_path / "wizard-5-evaluate.png")
    wizard.next()
    # 6. export: measured merge lands in the library; "Chat with it" loads base + adapter in a new chat
    export = wizard.export_page
    export.quants["Q4_K_M"].setChecked(False)
    export.export()
    qtbot.waitUntil(lambda: export.report is not None or "rror" in export.status.text(), timeout=600_000)
    assert set(export.report) == {"F16", "Q8_0"} and "kl_divergence" in export.report["Q8_0"]
    assert any(e.quant == "Q8_0" for e in Library().entries("model"))
    assert not Path(export.report["F16"]["path"]).exists()  # the unticked F16 yardstick is not left behind
    shot(wizard, tmp_path / "wizard-6-export.png")
    conversations = len(window.store.conversations())
    with qtbot.waitSignal(window.model_ready, timeout=300_000):
        export.chat_button.click()
    assert window.loaded.adapters == ((str(adapter), 1.0),)
    assert len(window.store.conversations()) == conversations + 1
    qtbot.waitUntil(lambda: window.wizard is None)


def test_pause_resumes_from_the_checkpoint_and_cancel_writes_nothing(qtbot, window, tmp_path):
    wizard = window.open_wizard()
    wizard.next()
    data = wizard.data_page
    qtbot.waitUntil(lambda: data.report is not None, timeout=300_000)
    data.path.setText(str(write_chats(tmp_path / "chats.jsonl")))
    data.own.setChecked(True)
    qtbot.waitUntil(
        lambda: data.report is not None and not data.report["stats"]["examples"] > 100, timeout=300_000
    )
    wizard.next()
    settings_for_test(wizard, batch_size=1, epochs=500.0, val_fraction=0.0)
    wizard.next()
    train = wizard.train_page
    qtbot.waitUntil(lambda: len(train.chart.train) >= 3, timeout=300_000)
    train.pause_or_resume()
    qtbot.waitUntil(lambda: train.state == "paused", timeout=300_000)
    paused_at = train.chart.train[-1][0]
    assert "checkpoint" in train.log.toPlainText() and not train.training_active()
    train.pause_or_resume()  # resume
    qtbot.waitUntil(lambda: len(train.chart.train) >= len(train.chart.train) and train.chart.train[-1][0] > paused_at
                    + 1, timeout=300_000)  # fmt: skip
    steps = [s for s, _ in train.chart.train]
    assert steps == sorted(set(steps))  # resumed where it stopped, no step twice
    train.cancel()
    qtbot.waitUntil(lambda: train.state == "cancelled", timeout=300_000)
    assert not wizard.adapter.exists() and not train.isComplete()
    wizard.reject()


def test_a_model_that_cannot_be_trained_is_refused_with_the_reason(qtbot, window, corrupt_files, tmp_path):
    from gguf_factory import write_tiny_llama

    window.library.import_file(write_tiny_llama(tmp_path / "phi.gguf", arch="phi3"), link=True, name="phi")
    window.library.import_file(corrupt_files["adapter"], link=True, name="an-adapter")  # not a model
    wizard = window.open_wizard()
    page = wizard.base_page
    assert sorted(page.models.itemText(i) for i in range(page.models.count())) == ["phi", "tiny"]
    page.models.setCurrentIndex(page.models.findText("phi"))
    assert "'phi3' models cannot be trained here" in page.verdict.text() and not page.isComplete()
    assert not wizard.button(wizard.WizardButton.NextButton).isEnabled()
    shot(wizard, tmp_path / "wizard-refused.png")
    page.models.setCurrentIndex(page.models.findText("tiny"))
    assert page.isComplete()
    wizard.reject()


def test_a_missing_dataset_file_is_said_plainly(qtbot, window, tmp_path):
    wizard = window.open_wizard()
    wizard.next()
    data = wizard.data_page
    qtbot.waitUntil(lambda: data.report is not None, timeout=300_000)
    data.path.setText(str(tmp_path / "nowhere.jsonl"))
    data.own.setChecked(True)
    qtbot.waitUntil(lambda: "no such dataset file" in data.status.text(), timeout=300_000)
    assert str(tmp_path / "nowhere.jsonl") in data.status.text() and not data.isComplete()
    wizard.reject()


def test_closing_the_app_while_training_asks_and_stops_with_a_checkpoint(
    qtbot, window, tmp_path, monkeypatch
):
    from PySide6.QtWidgets import QMessageBox

    wizard = window.open_wizard()
    wizard.next()
    data = wizard.data_page
    qtbot.waitUntil(lambda: data.report is not None, timeout=300_000)
    data.path.setText(str(write_chats(tmp_path / "chats.jsonl")))
    data.own.setChecked(True)
    qtbot.waitUntil(
        lambda: data.report is not None and data.report["stats"]["examples"] < 100, timeout=300_000
    )
    wizard.next()
    settings_for_test(wizard, batch_size=1, epochs=500.0, val_fraction=0.0)
    wizard.next()
    train = wizard.train_page
    qtbot.waitUntil(lambda: len(train.chart.train) >= 2, timeout=300_000)
    answers = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: answers.pop(0))
    answers.append(QMessageBox.StandardButton.No)  # keep training: the window stays
    assert not window.close() and window.isVisible() and train.training_active()
    answers.append(QMessageBox.StandardButton.Yes)  # stop: a checkpoint is saved, then the app closes
    assert window.close()
    assert (wizard.adapter.parent / (wizard.adapter.name + ".checkpoint")).is_dir()
    assert "checkpoint" in train.log.toPlainText() and not train.training_active()
