"""Wizard step 6: merge the adapter into standalone models, measure what each quantization costs, chat with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWizardPage,
)

from app.forms import MessageLabel, text_label
from engine import units
from training import tasks

QUANTS = ("F16", "Q8_0", "Q6_K", "Q4_K_M")  # the merge types offered; F16 is always made, as the yardstick

if TYPE_CHECKING:
    from app.wizard.shell import FineTuneWizard


class ExportPage(QWizardPage):
    """Step 6: merged exports in the chosen quant types, measured against the F16 merge, then chat with it."""

    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.owner = wizard
        self.setTitle("6. Export")
        self.setSubTitle(
            "The adapter is saved; merge it into the base as standalone models if you like, and see "
            "what each quantization costs."
        )
        layout = QVBoxLayout(self)
        self.adapter_label = text_label()
        layout.addWidget(self.adapter_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("Merged models:"))
        self.quants = {q: QCheckBox(q) for q in QUANTS}
        for q, box in self.quants.items():
            box.setChecked(q in ("Q8_0", "Q4_K_M"))
            row.addWidget(box)
        self.export_button = QPushButton("Export and measure")
        self.export_button.clicked.connect(self.export)
        row.addStretch(1)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        self.status = MessageLabel()
        layout.addWidget(self.status)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["file", "size", "perplexity", "KL vs F16", "top-1 agreement"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        layout.addWidget(self.table, 1)
        self.chat_button = QPushButton("Chat with it")
        self.chat_button.setDefault(True)
        self.chat_button.clicked.connect(self.chat)
        layout.addWidget(self.chat_button, 0, Qt.AlignRight)
        self.report: dict | None = None

    def initializePage(self) -> None:
        entry = self.owner.adapter_entry
        size = units.mib(self.owner.adapter.stat().st_size, 1)
        name = entry.name if entry else "?"
        self.adapter_label.setText(
            f"LoRA adapter: {self.owner.adapter} ({size}), in the library as '{name}'."
        )

    def export(self) -> None:
        quants = [q for q, box in self.quants.items() if box.isChecked()]
        if not quants or self.owner.jobs.busy:
            self.status.setText("Tick at least one quantization type.")
            return
        s = self.owner.settings
        self.export_button.setEnabled(False)
        self.status.show_message(
            f"Merging and quantizing ({', '.join(quants)}), then measuring each against F16…"
        )
        base, adapter = self.owner.base, self.owner.adapter
        args = (
            str(base),
            str(adapter),
            str(adapter.parent),
            adapter.stem,
            quants,
            self.owner.data,
            s.val_fraction,
            s.seed,
        )
        self.owner.jobs.run(tasks.export_models, args, self._exported, self._failed)

    def _failed(self, message: str) -> None:
        self.export_button.setEnabled(True)
        self.status.show_error(message)

    def _exported(self, report: dict) -> None:
        self.report = report
        self.export_button.setEnabled(True)
        wanted = {q for q, box in self.quants.items() if box.isChecked()}
        self.table.setRowCount(len(report))
        added = []
        for i, (name, row) in enumerate(report.items()):
            kl = f"{row['kl_divergence']:.5f}" if "kl_divergence" in row else "reference"
            top1 = f"{row['top1_agreement']:.1%}" if "top1_agreement" in row else "reference"
            cells = (
                Path(row["path"]).name,
                units.mib(row["bytes"]),
                f"{row['perplexity']:.3f}",
                kl,
                top1,
            )
            for j, value in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(value))
            if name in wanted:
                description = f"{self.owner.base.stem} + {self.owner.adapter.stem}, {name}"
                entry = self.owner.library.register(row["path"], source="training", description=description)
                added.append(entry.name)
            else:  # the F16 merge was only the yardstick: do not leave its gigabytes behind
                Path(row["path"]).unlink(missing_ok=True)
                self.table.setItem(i, 0, QTableWidgetItem(f"{Path(row['path']).name} (reference, not kept)"))
        self.table.resizeColumnsToContents()
        self.status.setText(
            f"Added to the library: {', '.join(added)}. KL divergence and top-1 agreement compare each quantized "
            "merge with the F16 merge on held-out examples."
        )

    def chat(self) -> None:
        self.owner.chat_requested.emit(str(self.owner.base), str(self.owner.adapter), 1.0)
        self.owner.accept()
