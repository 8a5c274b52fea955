"""Wizard step 5: measure base vs base + adapter (perplexity on held-out examples) and ask both the same prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWizardPage,
)

from app.forms import MessageLabel
from training import tasks

if TYPE_CHECKING:
    from app.wizard.shell import FineTuneWizard


class EvaluatePage(QWizardPage):
    """Step 5: perplexity of base and base + adapter on held-out examples, and both models' replies."""

    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.owner = wizard
        self.setTitle("5. Evaluate")
        self.setSubTitle("Perplexity on the held-out examples, and the same prompt to both models.")
        layout = QVBoxLayout(self)
        self.status = MessageLabel()
        layout.addWidget(self.status)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["model", "perplexity (lower is better)", "tokens measured"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.table.setMaximumHeight(110)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        self.prompt = QLineEdit()
        self.ask = QPushButton("Ask both")
        self.ask.clicked.connect(self.ask_both)
        row.addWidget(QLabel("Prompt"))
        row.addWidget(self.prompt, 1)
        row.addWidget(self.ask)
        layout.addLayout(row)
        pair = QHBoxLayout()
        self.base_reply = QPlainTextEdit(readOnly=True)
        self.adapted_reply = QPlainTextEdit(readOnly=True)
        for title, box in (("Base model", self.base_reply), ("With the adapter", self.adapted_reply)):
            col = QVBoxLayout()
            col.addWidget(QLabel(f"<b>{title}</b>"))
            col.addWidget(box)
            pair.addLayout(col)
        layout.addLayout(pair, 1)
        self.result: dict | None = None

    def initializePage(self) -> None:
        prompts = (self.owner.data_page.report or {}).get("prompts") or ["Hello!"]
        self.prompt.setText(prompts[0])
        if self.result is None and not self.owner.jobs.busy:
            self.status.setText(
                "Measuring the base model and the adapted one (llama.cpp, in a child process)…"
            )
            s = self.owner.settings
            args = (
                str(self.owner.base),
                str(self.owner.adapter),
                self.owner.data,
                s.val_fraction,
                s.seed,
                prompts[:1],
            )
            self.ask.setEnabled(False)
            self.owner.jobs.run(tasks.evaluate, args, self._measured, self._failed)

    def _failed(self, message: str) -> None:
        self.ask.setEnabled(True)
        self.status.show_error(message)

    def _measured(self, result: dict) -> None:
        self.result = result
        self.ask.setEnabled(True)
        table = result["perplexity"]
        self.table.setRowCount(len(table))
        for i, (name, row) in enumerate(table.items()):
            for j, value in enumerate((name, f"{row['perplexity']:.3f}", str(row["tokens"]))):
                self.table.setItem(i, j, QTableWidgetItem(value))
        self.table.resizeColumnsToContents()
        base, adapted = table["base"]["perplexity"], table["base + adapter"]["perplexity"]
        change = (adapted - base) / base
        self.status.show_message(
            f"Perplexity {'fell' if change < 0 else 'rose'} by {abs(change):.0%} with the adapter on examples it "
            "did not train on."
        )
        self._show_replies(result["replies"][0])
        self.completeChanged.emit()

    def _show_replies(self, row: dict) -> None:
        self.base_reply.setPlainText(row["base"])
        self.adapted_reply.setPlainText(row["adapted"])

    def ask_both(self) -> None:
        prompt = self.prompt.text().strip()
        if not prompt or self.owner.jobs.busy:
            return
        self.ask.setEnabled(False)
        self.base_reply.setPlainText("…")
        self.adapted_reply.setPlainText("…")

        def done(row: dict) -> None:
            self.ask.setEnabled(True)
            self._show_replies(row)

        self.owner.jobs.run(
            tasks.ask_both, (str(self.owner.base), str(self.owner.adapter), prompt), done, self._failed
        )

    def isComplete(self) -> bool:
        return self.result is not None
