"""Wizard step 1: pick the base model; say whether it can be trained here and what training will cost."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QComboBox, QVBoxLayout, QWizardPage

from app.forms import MessageLabel, text_label
from engine import units
from engine.errors import IngleError
from engine.gguf_info import inspect_gguf
from training.estimate import training_estimate
from training.export import TRAINABLE_ARCHS
from training.lora import TRAIN_EXTRA_HINT

if TYPE_CHECKING:
    from app.wizard.shell import FineTuneWizard


class BasePage(QWizardPage):
    """Step 1: the base model from the library, whether it can be trained here, and the estimate."""

    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.owner = wizard
        self.setTitle("1. Base model")
        self.setSubTitle("The model from your library that the adapter will be trained on.")
        layout = QVBoxLayout(self)
        self.models = QComboBox()
        self.models.currentIndexChanged.connect(self._changed)
        layout.addWidget(self.models)
        self.facts = text_label()
        layout.addWidget(self.facts)
        self.verdict = MessageLabel()
        layout.addWidget(self.verdict)
        self.estimate = text_label()
        layout.addWidget(self.estimate)
        layout.addStretch(1)
        self.torch_missing = importlib.util.find_spec("torch") is None

    def initializePage(self) -> None:
        current = self.models.currentData()
        self.models.blockSignals(True)
        self.models.clear()
        for entry in self.owner.library.entries("model"):
            if not entry.is_embedding:  # an encoder for document search: no chat to fine-tune
                self.models.addItem(entry.name, str(entry.file))
        if current or self.owner.base:
            self.models.setCurrentIndex(max(0, self.models.findData(current or str(self.owner.base))))
        self.models.blockSignals(False)
        self._changed()

    def _changed(self, *_args) -> None:
        path = self.models.currentData()
        self.owner.base, self.owner.base_info = None, None
        if not path:
            self.facts.setText("The library has no models: download one (Models ▸ Download models…) first.")
            self.completeChanged.emit()
            return
        try:
            info = inspect_gguf(path)
        except IngleError as err:
            self.facts.setText(str(err))
            self.completeChanged.emit()
            return
        self.owner.base, self.owner.base_info = Path(path), info
        self.facts.setText(
            f"{info.architecture} · {info.parameter_count / 1e6:,.0f}M parameters · {info.quant_label} · "
            f"{units.mib(info.file_size)} · {info.n_layers} layers · context {info.context_length:,}"
        )
        if info.architecture not in TRAINABLE_ARCHS:
            self.verdict.show_error(
                f"'{info.architecture}' models cannot be trained here: training supports "
                f"{', '.join(sorted(TRAINABLE_ARCHS))} (architectures transformers loads from GGUF and whose adapters "
                "Ingle writes back). Pick another model."
            )
        elif self.torch_missing:
            self.verdict.show_error(
                f"Training needs torch, transformers and peft, which are not installed. {TRAIN_EXTRA_HINT}, "
                "then open the wizard again."
            )
        else:
            self.verdict.show_message(
                "✓ This architecture can be trained (LoRA on CPU, bf16 where the CPU has it)."
            )
        self.update_estimate()
        self.completeChanged.emit()

    def update_estimate(self) -> None:
        if self.owner.base_info is None:
            return
        memory, seconds = training_estimate(self.owner.base_info, self.owner.settings, self.owner.stats)
        when = (
            f", about {units.duration(seconds)}"
            if seconds is not None
            else " (time: once the dataset is chosen)"
        )
        self.estimate.setText(
            f"Estimated training: {units.gib(memory)} of RAM{when}, with the settings of step 3."
        )

    def isComplete(self) -> bool:
        info = self.owner.base_info
        return info is not None and info.architecture in TRAINABLE_ARCHS and not self.torch_missing
