"""Wizard step 2: choose the dataset; a child process reads, validates and tokenizes it, and the page shows the report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QRadioButton,
    QTextBrowser,
    QVBoxLayout,
    QWizardPage,
)

from app.forms import MessageLabel, text_label
from training import tasks
from training.sample_data import OUT as SAMPLE_DATA

if TYPE_CHECKING:
    from app.wizard.shell import FineTuneWizard


class DataPage(QWizardPage):
    """Step 2: the dataset, checked and tokenized in a child process with the base model's tokenizer."""

    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.owner = wizard
        self.setTitle("2. Dataset")
        self.setSubTitle(
            "Examples of what the model should do: chat messages, Alpaca, ShareGPT or plain text."
        )
        layout = QVBoxLayout(self)
        self.sample = QRadioButton(
            f"The bundled sample ({SAMPLE_DATA.name}: short chats in the Gemma turn format)"
        )
        self.own = QRadioButton("My file:")
        self.path = QLineEdit(placeholderText="a .jsonl or .txt file")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.format = QComboBox()
        self.format.addItems(["detect", "chat", "alpaca", "sharegpt", "text"])
        row = QHBoxLayout()
        row.addWidget(self.own)
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        row.addWidget(QLabel("Format"))
        row.addWidget(self.format)
        layout.addWidget(self.sample)
        layout.addLayout(row)
        self.sample.setChecked(True)
        for signal in (self.sample.toggled, self.path.editingFinished, self.format.currentIndexChanged):
            signal.connect(self.check)
        self.status = MessageLabel()
        layout.addWidget(self.status)
        self.problems = QListWidget()
        self.problems.setMaximumHeight(110)
        self.problems.hide()
        layout.addWidget(self.problems)
        self.skip_bad = QCheckBox("Train on the good lines and skip the bad ones")
        self.skip_bad.hide()
        self.skip_bad.toggled.connect(self.completeChanged)
        layout.addWidget(self.skip_bad)
        self.stats = text_label()
        layout.addWidget(self.stats)
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        layout.addWidget(self.preview, 1)
        self.report: dict | None = None

    def initializePage(self) -> None:
        if self.report is None:
            self.check()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset", "", "Datasets (*.jsonl *.json *.txt *.md)")
        if path:
            self.path.setText(path)
            self.own.setChecked(True)
            self.check()

    def data_path(self) -> str:
        return str(SAMPLE_DATA) if self.sample.isChecked() else self.path.text().strip()

    def check(self, *_args) -> None:
        """Read, validate and tokenize the dataset in a child process (the base model's tokenizer)."""
        self.report = None
        self.problems.clear()
        self.problems.hide()
        self.skip_bad.hide()
        self.skip_bad.setChecked(False)
        self.stats.clear()
        self.preview.clear()
        self.completeChanged.emit()
        data = self.data_path()
        if not data:
            self.status.setText("Choose a file, or use the bundled sample.")
            return
        if self.owner.base is None:
            return
        if self.owner.jobs.busy:  # another check is still running: look again when it is done
            QTimer.singleShot(300, self.check)
            return
        fmt = None if self.format.currentText() == "detect" else self.format.currentText()
        s = self.owner.settings
        self.status.show_message(
            f"Reading and tokenizing {Path(data).name} with {self.owner.base.name}'s tokenizer…"
        )
        args = (str(self.owner.base), data, fmt, s.cutoff_len, s.val_fraction, s.seed, s.train_on_prompt)
        self.owner.jobs.run(tasks.dataset_report, args, self._reported, self._failed)

    def _failed(self, message: str) -> None:
        self.status.show_error(message)

    def _reported(self, report: dict) -> None:
        self.report = report
        self.owner.data = self.data_path()
        self.owner.data_format = None if self.format.currentText() == "detect" else self.format.currentText()
        self.owner.stats = report["stats"]
        st = report["stats"]
        self.status.show_message(f"Format: {report['format']} · {st['examples']} usable examples.")
        if report["problems"]:
            self.problems.show()
            for line, reason in report["problems"]:
                self.problems.addItem(f"line {line}: {reason}")
            self.status.show_error(
                f"{self.status.text()} {len(report['problems'])} bad line(s), listed below: fix them, or tick the "
                "box to skip them."
            )
            self.skip_bad.show()
        self.stats.setText(
            f"Split: {st['train_examples']} for training, {st['val_examples']} held out for validation "
            f"(validation fraction {self.owner.settings.val_fraction:g}, step 3). Tokens: {st['tokens']:,} in all, "
            f"{st['target_tokens']:,} carry loss (highlighted below); length min {st['min_len']} / median "
            f"{st['median_len']} / max {st['max_len']}; {st['truncated']} cut at {self.owner.settings.cutoff_len}."
        )
        self.preview.setHtml(self._preview_html(report["preview"]))
        self.owner.base_page.update_estimate()
        self.completeChanged.emit()

    @staticmethod
    def _preview_html(preview: list[dict]) -> str:
        parts = [
            "<p style='color:gray'>Rendered as training sees them; <span style='background:#bfe6c8'>"
            "highlighted</span> tokens carry loss (what the model learns to write).</p>"
        ]
        for ex in preview:
            spans = []
            for piece, loss in ex["pieces"]:
                text = html.escape(piece).replace("\n", "↵<br>")
                style = "background:#bfe6c8;color:black" if loss else "color:gray"
                spans.append(f"<span style='{style}'>{text}</span>")
            parts.append(f"<p><b>line {ex['line']}</b><br><tt>{''.join(spans)}</tt></p>")
        return "".join(parts)

    def isComplete(self) -> bool:
        if self.report is None:
            return False
        return not self.report["problems"] or self.skip_bad.isChecked()
