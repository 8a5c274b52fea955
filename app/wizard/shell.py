"""The wizard's QWizard shell: the state its pages share (base, dataset, settings, adapter) and the six pages."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget, QWizard

from app.jobs import ChildJobs
from app.wizard.base_page import BasePage
from app.wizard.data_page import DataPage
from app.wizard.evaluate_page import EvaluatePage
from app.wizard.export_page import ExportPage
from app.wizard.settings_page import SettingsPage
from app.wizard.train_page import TrainPage
from engine.gguf_info import ModelInfo
from engine.library import Entry, Library, data_dir
from training.presets import preset


class FineTuneWizard(QWizard):
    """From a base model and examples to a conversation with the fine-tuned model."""

    chat_requested = Signal(str, str, float)  # base model, adapter, scale

    def __init__(
        self, library: Library | None = None, parent: QWidget | None = None, output_dir: Path | None = None
    ):
        super().__init__(parent)
        self.setWindowTitle("Fine-tune a model")
        self.setWizardStyle(QWizard.ClassicStyle)
        self.setOption(QWizard.NoBackButtonOnLastPage, False)
        self.library = library or Library()
        self.output_dir = output_dir or data_dir() / "training"
        self.jobs = ChildJobs(self)
        self.base: Path | None = None
        self.base_info: ModelInfo | None = None
        self.data: str | None = None
        self.data_format: str | None = None
        self.stats: dict | None = None
        self.settings = preset("Quick")
        self.adapter: Path | None = None
        self.adapter_entry: Entry | None = None
        self.base_page = BasePage(self)
        self.data_page = DataPage(self)
        self.settings_page = SettingsPage(self)
        self.train_page = TrainPage(self)
        self.evaluate_page = EvaluatePage(self)
        self.export_page = ExportPage(self)
        for page in (
            self.base_page,
            self.data_page,
            self.settings_page,
            self.train_page,
            self.evaluate_page,
            self.export_page,
        ):
            self.addPage(page)
        self.resize(900, 720)

    def training_active(self) -> bool:
        return self.train_page.training_active()

    def done(self, result: int) -> None:  # Qt override: closing stops the children
        if self.training_active():
            self.train_page.stop_for_exit()
        self.jobs.close()
        super().done(result)
