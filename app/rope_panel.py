"""RoPE scaling in the model panel: the scaling type, its frequency scale and YaRN's parameters, each with its
one-line help; a note when the context is longer than the model was trained for; the context-eval button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.forms import ERROR_STYLE, MessageLabel, add_field_rows
from engine.settings import LoadSettings, RopeScaling

YARN_FIELDS = ("yarn_ext_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx")


class RopePanel(QGroupBox):
    """The RoPE fields of LoadSettings. `values()` gives them for LoadSettings; `set_context(n_ctx, trained)`
    updates the note; `eval_requested` asks the window to run the context-length eval."""

    changed = Signal()
    eval_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Context length and RoPE scaling", parent)
        self.n_ctx, self.trained = 0, 0
        specs = {f.name: f for f in LoadSettings.field_specs()}
        layout = QVBoxLayout(self)
        # folded by default (most models are used within their trained context); the note stays visible
        self.toggle = QToolButton(text="RoPE scaling settings", checkable=True, autoRaise=True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.RightArrow)
        layout.addWidget(self.toggle)
        self.fields = QWidget()
        fields = QVBoxLayout(self.fields)
        fields.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.widgets = add_field_rows(form, [specs["rope_scaling"], specs["rope_freq_scale"]], self._make)
        fields.addLayout(form)
        self.yarn = QWidget()
        yarn_form = QFormLayout(self.yarn)
        yarn_form.setContentsMargins(12, 0, 0, 0)
        self.widgets |= add_field_rows(yarn_form, [specs[n] for n in YARN_FIELDS], self._make)
        fields.addWidget(self.yarn)
        layout.addWidget(self.fields)
        self.fields.hide()
        self.toggle.toggled.connect(self.show_fields)
        self.note = MessageLabel(hide_when_empty=True)
        layout.addWidget(self.note)
        self.eval_button = QPushButton("Evaluate context length…")
        self.eval_button.setToolTip(
            "Needle-in-a-haystack and perplexity at several lengths, the model's own positions against these "
            "RoPE settings side by side (as `ingle eval-context --compare`)."
        )
        self.eval_button.clicked.connect(self.eval_requested)
        layout.addWidget(self.eval_button)
        self._update()

    def _make(self, f) -> QWidget:
        if f.name == "rope_scaling":
            widget = QComboBox()
            widget.addItems([r.value for r in RopeScaling])
            widget.currentTextChanged.connect(self._update)
        elif f.type == "int":
            widget = QSpinBox()
            widget.setRange(f.metadata["min"], f.metadata["max"])
            widget.setValue(f.default)
            widget.setSpecialValueText("from the model")  # shown at the minimum, 0
            widget.valueChanged.connect(self._update)
        else:
            widget = QDoubleSpinBox()
            widget.setDecimals(3)
            widget.setSingleStep(0.05)
            widget.setRange(f.metadata["min"], f.metadata["max"])
            widget.setValue(f.default)
            widget.setSpecialValueText("auto" if f.name == "rope_freq_scale" else "default")
            widget.valueChanged.connect(self._update)
        widget.setToolTip(f.metadata["help"])
        return widget

    def show_fields(self, shown: bool = True) -> None:
        self.toggle.setChecked(shown)
        self.fields.setVisible(shown)
        self.toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    def scaling(self) -> RopeScaling:
        return RopeScaling(self.widgets["rope_scaling"].currentText())

    def values(self) -> dict:
        """The RoPE fields for LoadSettings."""
        out: dict = {"rope_scaling": self.scaling()}
        for name, widget in self.widgets.items():
            if name != "rope_scaling":
                out[name] = widget.value()
        return out

    def set_values(self, **values) -> None:
        for name, value in values.items():
            widget = self.widgets[name]
            if name == "rope_scaling":
                widget.setCurrentText(RopeScaling(value).value)
                self.show_fields(self.show_fields_needed() or self.fields.isVisible())
            else:
                widget.setValue(value)

    def show_fields_needed(self) -> bool:
        return self.scaling() != RopeScaling.MODEL

    def stretched(self) -> bool:
        return self.scaling() in (RopeScaling.LINEAR, RopeScaling.YARN)

    def set_context(self, n_ctx: int, trained: int) -> None:
        """The context length chosen and the model's trained context (0: unknown)."""
        self.n_ctx, self.trained = n_ctx, trained
        self._update()

    def _update(self, *_args) -> None:
        scaling = self.scaling()
        self.yarn.setVisible(scaling == RopeScaling.YARN)
        self.widgets["rope_freq_scale"].setEnabled(self.stretched())
        n_ctx, trained = self.n_ctx, self.trained
        if trained and n_ctx > trained and not self.stretched():
            self.note.setStyleSheet(ERROR_STYLE)
            self.note.setText(
                f"Context {n_ctx:,} is {n_ctx / trained:.3g}x the {trained:,} tokens this model was trained on: "
                "past that its replies degrade unless RoPE scaling (linear or yarn) stretches its positions."
            )
            self.note.show()
        elif trained and self.stretched():
            scale = self.widgets["rope_freq_scale"].value() or min(1.0, trained / max(1, n_ctx))
            self.note.show_message(
                f"Positions stretched {1 / scale:.3g}x (frequency scale {scale:.3g}): the {trained:,} trained "
                f"tokens cover {trained / scale:,.0f}. Evaluate what it costs below."
            )
        else:
            self.note.clear()
        self.changed.emit()
