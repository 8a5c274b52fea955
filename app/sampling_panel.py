"""Sampling panel: a slider and a number box for every SamplingSettings field, built from the field metadata."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.dialogs import show_error
from app.forms import HELP_STYLE, MessageLabel, add_field_rows
from engine.conversations import ConversationStore
from engine.errors import SettingsError
from engine.settings import PRESETS, OverflowPolicy, SamplingSettings

POLICY_LABELS = {
    OverflowPolicy.STOP: "Stop and say so",
    OverflowPolicy.DROP_OLDEST: "Drop the oldest turns (keep the system prompt)",
    OverflowPolicy.SLIDING_WINDOW: "Sliding window (drop oldest tokens)",
}

SLIDER_STEPS = 1000
# Fields whose range is too wide for a linear slider get one over this span; the number box takes any value.
SLIDER_CAP = 4096


class _NumberField(QWidget):
    """Slider + spin box kept in step; the spin box is the value."""

    changed = Signal()

    def __init__(self, kind: str, lo: float, hi: float):
        super().__init__()
        self.is_int = kind == "int"
        self.lo, self.hi = lo, min(hi, lo + SLIDER_CAP) if self.is_int else hi
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.box = QSpinBox() if self.is_int else QDoubleSpinBox()
        if self.is_int:
            self.box.setRange(int(max(lo, -(2**31))), int(min(hi, 2**31 - 1)))
        else:
            self.box.setRange(lo, hi)
            self.box.setDecimals(3)
            self.box.setSingleStep((hi - lo) / 100)
        self.box.setMinimumWidth(80)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.slider, 1)
        row.addWidget(self.box)
        self.slider.valueChanged.connect(self._from_slider)
        self.box.valueChanged.connect(self._from_box)

    def _from_slider(self, pos: int) -> None:
        value = self.lo + (self.hi - self.lo) * pos / SLIDER_STEPS
        if self.slider.isSliderDown() or self.slider.hasFocus():
            self.box.setValue(round(value) if self.is_int else value)

    def _from_box(self, value: float) -> None:
        self.slider.blockSignals(True)
        span = (self.hi - self.lo) or 1
        self.slider.setValue(round((min(max(value, self.lo), self.hi) - self.lo) / span * SLIDER_STEPS))
        self.slider.blockSignals(False)
        self.changed.emit()

    def value(self):
        return self.box.value()

    def set_value(self, value) -> None:
        self.box.blockSignals(True)
        self.box.setValue(value)
        self.box.blockSignals(False)
        self._from_box(value)


class SamplingPanel(QWidget):
    """Edits one SamplingSettings; emits `settings_changed` with a validated object."""

    settings_changed = Signal(object)

    def __init__(self, store: ConversationStore):
        super().__init__()
        self.store = store
        self.fields: dict[str, QWidget] = {}
        self._settings = SamplingSettings()
        layout = QVBoxLayout(self)
        # Everything here must fit the side panel's width: long texts elide or wrap, never widen the panel.
        self.preset_box = QComboBox()
        self.preset_box.setToolTip("Built-in presets (Precise, Balanced, Creative) and your own")
        self.preset_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.preset_box.setMinimumContentsLength(8)
        self.preset_box.activated.connect(lambda _i: self.apply_preset(self.preset_box.currentText()))
        preset_row = QHBoxLayout()
        preset_row.addWidget(QLabel("Preset"))
        preset_row.addWidget(self.preset_box, 1)
        layout.addLayout(preset_row)
        presets = QHBoxLayout()
        presets.addStretch(1)
        for text, slot in (
            ("Save as…", self._save_preset),
            ("Rename…", self._rename_preset),
            ("Delete", self._delete_preset),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            presets.addWidget(button)
        layout.addLayout(presets)
        self.error = MessageLabel(hide_when_empty=True, selectable=False)
        layout.addWidget(self.error)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.policy_box = QComboBox()
        self.policy_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.policy_box.setMinimumContentsLength(10)
        for policy, text in POLICY_LABELS.items():
            self.policy_box.addItem(text, policy.value)
        self.policy_box.setToolTip("What happens when the conversation outgrows the model's context")
        policy_label = QLabel("Context full")
        policy_label.setToolTip(self.policy_box.toolTip())
        form.addRow(policy_label, self.policy_box)
        self.fields = add_field_rows(
            form, SamplingSettings.field_specs(), self._make_field, f"{HELP_STYLE}; font-size: small"
        )
        layout.addLayout(form)
        layout.addStretch(1)
        self.reload_presets()
        self.set_settings(self._settings)

    def _make_field(self, f) -> QWidget:
        if f.type in ("int", "float"):
            widget = _NumberField(f.type, f.metadata["min"], f.metadata["max"])
            widget.changed.connect(self._edited)
        elif f.type == "bool":
            widget = QCheckBox()
            widget.toggled.connect(self._edited)
        else:  # tuples as JSON, text as text
            widget = QLineEdit()
            widget.setPlaceholderText("JSON list" if f.type.startswith("tuple") else "")
            widget.editingFinished.connect(self._edited)
        widget.setToolTip(f.metadata["help"])
        return widget

    def policy(self) -> OverflowPolicy:
        return OverflowPolicy(self.policy_box.currentData())

    def set_policy(self, policy: OverflowPolicy) -> None:
        self.policy_box.setCurrentIndex(max(0, self.policy_box.findData(OverflowPolicy(policy).value)))

    def settings(self) -> SamplingSettings:
        return self._settings

    def set_settings(self, settings: SamplingSettings) -> None:
        self._settings = settings
        for f in SamplingSettings.field_specs():
            widget, value = self.fields[f.name], getattr(settings, f.name)
            if isinstance(widget, _NumberField):
                widget.set_value(value)
            elif isinstance(widget, QCheckBox):
                widget.blockSignals(True)
                widget.setChecked(value)
                widget.blockSignals(False)
            else:
                widget.setText(
                    json.dumps([list(v) if isinstance(v, tuple) else v for v in value])
                    if isinstance(value, tuple)
                    else value
                )
        self.error.clear()
        match = [name for name, preset in self.store.presets().items() if preset == settings]
        self.preset_box.setCurrentText(match[0] if match else "")
        if not match:
            self.preset_box.setCurrentIndex(-1)

    def _read(self) -> SamplingSettings:
        data = {}
        for f in SamplingSettings.field_specs():
            widget = self.fields[f.name]
            if isinstance(widget, _NumberField):
                data[f.name] = widget.value()
            elif isinstance(widget, QCheckBox):
                data[f.name] = widget.isChecked()
            elif f.type.startswith("tuple"):
                text = widget.text().strip() or "[]"
                try:
                    data[f.name] = json.loads(text)
                except json.JSONDecodeError:
                    raise SettingsError(
                        f.name, f'expected a JSON list such as ["END"], got {text!r}'
                    ) from None
            else:
                data[f.name] = widget.text()
        return SamplingSettings.from_dict(data)

    def _edited(self) -> None:
        try:
            settings = self._read()
        except SettingsError as err:
            self.error.show_error(str(err))
            return
        self.error.clear()
        if settings != self._settings:
            self._settings = settings
            self.preset_box.setCurrentIndex(-1)
            self.settings_changed.emit(settings)

    # ------------------------------------------------------------ presets
    def reload_presets(self) -> None:
        self.preset_box.clear()
        self.preset_box.addItems(list(self.store.presets()))

    def apply_preset(self, name: str) -> None:
        settings = self.store.presets()[name]
        self.set_settings(settings)
        self.preset_box.setCurrentText(name)
        self.settings_changed.emit(settings)

    def _ask(self, title: str, text: str = "") -> str | None:
        name, ok = QInputDialog.getText(self, title, "Preset name:", text=text)
        return name if ok else None

    def _guard(self, action) -> None:
        try:
            action()
        except SettingsError as err:
            show_error(self, str(err), "Preset")
        self.reload_presets()
        self.set_settings(self._settings)

    def _save_preset(self) -> None:
        if (name := self._ask("Save preset")) is not None:
            self._guard(lambda: self.store.save_preset(name, self._settings))

    def _rename_preset(self) -> None:
        old = self.preset_box.currentText()
        if old in PRESETS or not old:
            QMessageBox.information(self, "Preset", "Choose one of your own presets to rename it.")
            return
        if (new := self._ask("Rename preset", old)) is not None:
            self._guard(lambda: self.store.rename_preset(old, new))

    def _delete_preset(self) -> None:
        name = self.preset_box.currentText()
        self._guard(lambda: self.store.delete_preset(name))
