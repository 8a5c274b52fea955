"""Wizard step 3: the training settings (a preset or every field by hand) with the estimate, and the adapter's file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from app.forms import ERROR_STYLE, MessageLabel, add_field_rows, text_label
from engine import units
from engine.errors import IngleError
from training.estimate import training_estimate
from training.lora import SCHEDULERS, TARGETS, TrainSettings, total_steps
from training.presets import PRESETS, matching_preset, preset

if TYPE_CHECKING:
    from app.wizard.shell import FineTuneWizard


class SettingsPage(QWizardPage):
    """Step 3: a preset or every TrainSettings field by hand, the step count and the estimate, the output file."""

    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.owner = wizard
        self.setTitle("3. Settings")
        self.setSubTitle("A preset, or every setting by hand; the estimate follows.")
        outer = QVBoxLayout(self)
        top = QHBoxLayout()
        self.preset = QComboBox()
        self.preset.addItems([*PRESETS, "Custom"])
        self.preset.activated.connect(lambda _i: self.apply_preset(self.preset.currentText()))
        top.addWidget(QLabel("Preset"))
        top.addWidget(self.preset, 1)
        outer.addLayout(top)
        self.estimate = text_label()
        outer.addWidget(self.estimate)
        self.error = MessageLabel()
        self.error.setStyleSheet(ERROR_STYLE)
        outer.addWidget(self.error)
        form_host = QWidget()
        form = QFormLayout(form_host)
        self.fields = add_field_rows(form, TrainSettings.field_specs(), self._field)
        self.out = QLineEdit()
        form.addRow("Save the adapter as", self.out)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(form_host)
        outer.addWidget(scroll, 1)
        self.apply_preset("Quick")

    def _field(self, f: dataclasses.Field) -> QWidget:
        meta, default = f.metadata, f.default
        if f.name == "target_modules":
            widget = QWidget()
            grid = QGridLayout(widget)
            grid.setContentsMargins(0, 0, 0, 0)
            widget.boxes = {}
            for i, name in enumerate(TARGETS):
                box = QCheckBox(name)
                box.toggled.connect(self._changed)
                grid.addWidget(box, i // 4, i % 4)
                widget.boxes[name] = box
            return widget
        if f.name == "scheduler":
            widget = QComboBox()
            widget.addItems(SCHEDULERS)
            widget.currentIndexChanged.connect(self._changed)
            return widget
        if isinstance(default, bool):
            widget = QCheckBox()
            widget.toggled.connect(self._changed)
            return widget
        if isinstance(default, int):
            widget = QSpinBox()
            widget.setRange(int(meta["min"]), int(min(meta["max"], 2**31 - 1)))
        else:
            widget = QDoubleSpinBox()
            widget.setDecimals(6 if f.name == "learning_rate" else 3)
            widget.setRange(meta["min"], meta["max"])
            widget.setSingleStep(1e-4 if f.name == "learning_rate" else 0.05)
        widget.valueChanged.connect(self._changed)
        return widget

    def initializePage(self) -> None:
        if not self.out.text() and self.owner.base is not None:
            stem = f"{self.owner.base.stem}-{Path(self.owner.data or 'data').stem}-lora"
            self.out.setText(str(self.owner.output_dir / f"{stem}.gguf"))
        self._changed()

    def set_values(self, settings: TrainSettings) -> None:
        for name, widget in self.fields.items():
            widget.blockSignals(True)
            value = getattr(settings, name)
            if name == "target_modules":
                for module, box in widget.boxes.items():
                    box.blockSignals(True)
                    box.setChecked(module in value)
                    box.blockSignals(False)
            elif isinstance(widget, QComboBox):
                widget.setCurrentText(value)
            elif isinstance(widget, QCheckBox):
                widget.setChecked(value)
            else:
                widget.setValue(value)
            widget.blockSignals(False)
        self._changed()

    def apply_preset(self, name: str) -> None:
        if name in PRESETS:
            self.preset.setCurrentText(name)
            self.set_values(preset(name))

    def values(self) -> dict:
        out = {}
        for name, widget in self.fields.items():
            if name == "target_modules":
                out[name] = tuple(m for m, box in widget.boxes.items() if box.isChecked())
            elif isinstance(widget, QComboBox):
                out[name] = widget.currentText()
            elif isinstance(widget, QCheckBox):
                out[name] = widget.isChecked()
            else:
                out[name] = widget.value()
        return out

    def _changed(self, *_args) -> None:
        try:
            settings = TrainSettings(**self.values())
        except IngleError as err:
            self.error.show_error(str(err))
            self.completeChanged.emit()
            return
        self.error.clear()
        if self.sender() is not None and self.sender() is not self.preset:
            self.preset.setCurrentText(matching_preset(settings) or "Custom")
        self.owner.settings = settings
        if self.owner.base_info is not None:
            memory, seconds = training_estimate(self.owner.base_info, settings, self.owner.stats)
            stats = self.owner.stats
            steps = f"{total_steps(stats['train_examples'], settings)} steps, " if stats else ""
            when = units.duration(seconds) if seconds is not None else "?"
            self.estimate.setText(f"Estimate: {steps}about {when}, {units.gib(memory)} of RAM.")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return not self.error.text() and bool(self.out.text().strip())

    def validatePage(self) -> bool:
        out = Path(self.out.text().strip()).expanduser()
        if out.suffix.lower() != ".gguf":
            self.error.show_error(f"{out.name}: the adapter is a GGUF file; end the name with .gguf.")
            return False
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.error.show_error(f"Cannot create {out.parent}: {err.strerror}. Choose another folder.")
            return False
        self.owner.adapter = out
        return True
