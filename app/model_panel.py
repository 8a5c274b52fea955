"""Model picker: library models, load settings with a memory estimate and fit verdict, LoRA adapter, load/unload."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.forms import ERROR_STYLE
from app.ops import Op
from app.remote_models import RemoteChoice, RemotePicker, RemotesDialog
from app.rope_panel import RopePanel
from engine.chat_template import BUILTIN_TEMPLATES
from engine.errors import IngleError, LibraryError
from engine.fit import RAM_SHARE, Budget, Fit, Verdict, available_memory, choose, estimate
from engine.gguf_info import ModelInfo, inspect_cached
from engine.library import Entry, Library
from engine.rpc_fit import describe as describe_split
from engine.rpc_fit import local_fit, placements
from engine.settings import CacheType, FlashAttention, LoadSettings

_FROM_FILE = "\0file"  # the combo entry that opens a file dialog


def estimate_memory(info: ModelInfo, settings: LoadSettings, hardware=None) -> Fit:
    """Weights + the exact KV cache for these load settings + runtime, against free RAM, plus free VRAM when
    layers are offloaded and the engine child reported GPUs (`hardware`: engine.hardware.Hardware, or None)."""
    available = available_memory()  # RAM, now
    if hardware is not None and hardware.gpu_offload and settings.n_gpu_layers != 0:
        available += hardware.vram_free
    return estimate(info.file_size, info.quant_label, settings.n_ctx, available, info=info,
                    type_k=settings.type_k, type_v=settings.type_v, n_ubatch=settings.n_ubatch,
                    swa_full=settings.swa_full)  # fmt: skip


def entry_label(entry: Entry) -> str:
    size = entry.total_size / (1 << 20)
    params = f"{entry.parameters / 1e6:.0f}M" if entry.parameters < 1e9 else f"{entry.parameters / 1e9:.1f}B"
    return f"{entry.name}  ·  {entry.architecture} {params}  ·  {entry.quant}  ·  {size:.0f} MB"


class ModelPanel(QWidget):
    """Emits `load_requested(path, LoadSettings, adapters)` and `unload_requested()`; the window runs them."""

    load_requested = Signal(str, object, object)
    remote_load_requested = Signal(object)  # app.remote_models.RemoteChoice
    unload_requested = Signal()

    def __init__(self, library: Library):
        super().__init__()
        self.library = library
        self._read: set[Path] = set()  # model files whose header was read (engine.gguf_info caches it)
        self._reading: set[Path] = set()
        self.hardware = None  # engine.hardware.Hardware from the engine child, once it has started
        self.advanced_fields: dict[str, QWidget] = {}
        layout = QVBoxLayout(self)
        self.model_box = QComboBox()
        self.model_box.currentIndexChanged.connect(self._update_estimate)
        self.remotes = RemotePicker(self, self.refresh)
        self.remotes_button = QPushButton("Remote servers…")
        self.remotes_button.setToolTip(
            "Add or remove OpenAI-compatible servers whose models the picker lists"
        )
        self.remotes_button.clicked.connect(self.open_remotes)
        picker_row = QHBoxLayout()
        picker_row.addWidget(self.model_box, 1)
        picker_row.addWidget(self.remotes_button)
        layout.addLayout(picker_row)
        self.description = QLabel()
        self.description.setTextFormat(Qt.PlainText)  # descriptions quote file names (a dataset's, a model's)
        self.description.setWordWrap(True)
        layout.addWidget(self.description)
        form = QFormLayout()
        specs = {f.name: f for f in LoadSettings.field_specs()}
        self.n_ctx = QSpinBox()
        self.n_ctx.setRange(specs["n_ctx"].metadata["min"], 1 << 20)
        self.n_ctx.setSingleStep(1024)
        self.n_ctx.setValue(4096)
        self.gpu_layers = QSpinBox()
        self.gpu_layers.setRange(-1, 10_000)
        self.threads = QSpinBox()
        self.threads.setRange(0, 512)
        self.type_k, self.type_v = QComboBox(), QComboBox()
        for box in (self.type_k, self.type_v):
            box.addItems([t.value for t in CacheType])
            box.setCurrentText("f16")
        self.flash = QComboBox()
        self.flash.addItems([f.value for f in FlashAttention])
        for name, widget in (("n_ctx", self.n_ctx), ("n_gpu_layers", self.gpu_layers), ("n_threads", self.threads),
                             ("type_k", self.type_k), ("type_v", self.type_v), ("flash_attn", self.flash)):  # fmt: skip
            widget.setToolTip(specs[name].metadata["help"])
            form.addRow(specs[name].metadata["label"], widget)
            (widget.valueChanged if isinstance(widget, QSpinBox) else widget.currentTextChanged).connect(
                self._update_estimate
            )
        self.fit = QCheckBox(specs["fit"].metadata["label"])
        self.fit.setToolTip(
            specs["fit"].metadata["help"]
            + " The context length above is then the longest wanted; full offload comes "
            "first, then the longest context, then an F16 cache before Q8_0."
        )
        self.fit.toggled.connect(self._fit_toggled)
        form.addRow("", self.fit)
        self.rpc, self.rpc_split = QLineEdit(), QLineEdit()
        self.rpc.setPlaceholderText("none (HOST:PORT,… of `ingle worker`s)")
        self.rpc_split.setPlaceholderText("equal shares")
        for name, widget in (("rpc", self.rpc), ("rpc_split", self.rpc_split)):
            widget.setToolTip(specs[name].metadata["help"])
            widget.textChanged.connect(self._update_estimate)
            form.addRow(specs[name].metadata["label"], widget)
        self.adapter_box = QComboBox()
        self.adapter_scale = QDoubleSpinBox()
        self.adapter_scale.setRange(-4.0, 4.0)
        self.adapter_scale.setSingleStep(0.1)
        self.adapter_scale.setValue(1.0)
        adapter_row = QHBoxLayout()
        adapter_row.addWidget(self.adapter_box, 1)
        adapter_row.addWidget(self.adapter_scale)
        form.addRow("LoRA adapter", adapter_row)
        layout.addLayout(form)
        self.rope = RopePanel()
        self.rope.changed.connect(self._update_estimate)
        self.rope.eval_requested.connect(self.open_context_eval)
        layout.addWidget(self.rope)
        layout.addWidget(self._build_advanced(specs))
        self.estimate = QLabel()
        self.estimate.setTextFormat(Qt.PlainText)  # error messages quote file names
        self.estimate.setWordWrap(True)
        layout.addWidget(self.estimate)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.hide()
        layout.addWidget(self.progress)
        buttons = QHBoxLayout()
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self._load)
        self.unload_button = QPushButton("Unload")
        self.unload_button.clicked.connect(self.unload_requested)
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.unload_button)
        layout.addLayout(buttons)
        self.force = QCheckBox("Load even if it may not fit")
        layout.addWidget(self.force)
        layout.addStretch(1)
        self.refresh()
        self.remotes.fetch()

    def _build_advanced(self, specs: dict) -> QWidget:
        """The rest of LoadSettings (batch sizes, threads for the prompt, mmap/mlock, SWA cache, repacking),
        folded away under a toggle: defaults suit almost everyone."""
        box = QWidget()
        outer = QVBoxLayout(box)
        outer.setContentsMargins(0, 0, 0, 0)
        self.advanced_toggle = QToolButton(text="Advanced load settings", checkable=True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        outer.addWidget(self.advanced_toggle)
        self.advanced = QWidget()
        form = QFormLayout(self.advanced)
        form.setContentsMargins(12, 0, 0, 0)
        names = ("n_threads_batch", "n_batch", "n_ubatch", "use_mmap", "use_mlock", "swa_full", "repack",
                 "draft", "draft_max", "lookup", "lookup_ngram")  # fmt: skip
        for name in names:
            meta = specs[name].metadata
            default = specs[name].default
            if name == "draft":  # speculative decoding's draft model: a library model (filled by refresh)
                widget = self.draft_box = QComboBox()
                widget.addItem("none", "")
            elif isinstance(default, bool):
                widget = QCheckBox()
                widget.setChecked(default)
                widget.toggled.connect(self._update_estimate)
            else:
                widget = QSpinBox()
                widget.setRange(meta["min"], meta["max"])
                widget.setValue(default)
                widget.valueChanged.connect(self._update_estimate)
            widget.setToolTip(meta["help"])
            label = QLabel(meta["label"])
            label.setToolTip(meta["help"])
            form.addRow(label, widget)
            self.advanced_fields[name] = widget
        self.template_box = QComboBox()
        self.template_box.addItem("Model's own", "")
        for name in BUILTIN_TEMPLATES:
            self.template_box.addItem(f"Built-in: {name}", name)
        self.template_box.addItem("From file…", _FROM_FILE)
        self.template_box.setToolTip(
            "The chat template that turns the conversation into the prompt: the model's own (a built-in one "
            "stands in when it fails), a built-in one, or a Jinja file (as the command line's --template)."
        )
        self._template_index = 0
        self.template_box.activated.connect(self._template_chosen)
        form.addRow("Chat template", self.template_box)
        self.advanced.hide()
        outer.addWidget(self.advanced)

        def toggle(shown: bool) -> None:
            self.advanced.setVisible(shown)
            self.advanced_toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

        self.advanced_toggle.toggled.connect(toggle)
        return box

    def _advanced_values(self) -> dict:
        return {
            name: (
                w.isChecked()
                if isinstance(w, QCheckBox)
                else w.currentData()
                if isinstance(w, QComboBox)
                else w.value()
            )
            for name, w in self.advanced_fields.items()
        }

    def chat_template(self) -> str | None:
        """What to pass as the engine's chat_template: a built-in's name, a file's path, or None (the model's)."""
        return self.template_box.currentData() or None

    def use_template_file(self, path: str) -> None:
        """Choose a .jinja file as the chat template (listed above "From file…" so it can be chosen again)."""
        index = self.template_box.findData(path)
        if index < 0:
            index = self.template_box.count() - 1
            self.template_box.insertItem(index, f"File: {Path(path).name}", path)
            self.template_box.setItemData(index, path, Qt.ToolTipRole)
        self.template_box.setCurrentIndex(index)
        self._template_index = index

    def _template_chosen(self, index: int) -> None:
        if self.template_box.itemData(index) != _FROM_FILE:
            self._template_index = index
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Chat template", "", "Jinja templates (*.jinja *.j2 *.txt);;All files (*)"
        )
        if path:
            self.use_template_file(path)
        else:
            self.template_box.setCurrentIndex(self._template_index)

    def refresh(self) -> None:
        chosen = self.model_box.currentData()  # a listing that arrives must not undo the user's choice
        self.model_box.blockSignals(True)
        self.model_box.clear()
        # embedding models are for document search (ingle docs add --embed-model), not for chat
        chat_models = [e for e in self.library.entries("model") if not e.is_embedding]
        for entry in chat_models:
            self.model_box.addItem(entry_label(entry), entry.name)
        self.remotes.add_items(self.model_box)
        if chosen is not None and self._index_of(chosen) >= 0:
            self.model_box.setCurrentIndex(self._index_of(chosen))
        self.model_box.blockSignals(False)
        chosen = self.adapter_box.currentData()  # a library change must not undo the user's choice
        self.adapter_box.clear()
        self.adapter_box.addItem("none", "")
        for entry in self.library.entries("adapter"):
            self.adapter_box.addItem(entry.name, entry.name)
        self.adapter_box.setCurrentIndex(max(0, self.adapter_box.findData(chosen or "")))
        chosen = self.draft_box.currentData()
        self.draft_box.clear()
        self.draft_box.addItem("none", "")
        for entry in chat_models:
            self.draft_box.addItem(entry.name, entry.name)
        self.draft_box.setCurrentIndex(max(0, self.draft_box.findData(chosen or "")))
        self._update_estimate()

    def select_adapter(self, name: str, scale: float = 1.0) -> None:
        """Show the adapter a load used (the starter's chat adapter at start); "" selects none."""
        index = self.adapter_box.findData(name)
        if index >= 0:
            self.adapter_box.setCurrentIndex(index)
            self.adapter_scale.setValue(scale)

    def _index_of(self, data) -> int:
        """findData by equality (it cannot compare Python objects such as a RemoteChoice)."""
        box = self.model_box
        return next((i for i in range(box.count()) if box.itemData(i) == data), -1)

    def select(self, name) -> None:
        """Select a library model by name, or a remote one by its RemoteChoice."""
        index = self._index_of(name)
        if index >= 0:
            self.model_box.setCurrentIndex(index)

    def entry(self) -> Entry | None:
        """The selected library entry; None when nothing is selected or it was removed meanwhile."""
        name = self.model_box.currentData()
        if not name or not isinstance(name, str):  # nothing, or a remote model
            return None
        try:
            return self.library.get(name)
        except LibraryError:
            return None

    def load_settings(self) -> LoadSettings:
        return LoadSettings(n_ctx=self.n_ctx.value(), n_gpu_layers=self.gpu_layers.value(),
                            n_threads=self.threads.value(), type_k=CacheType(self.type_k.currentText()),
                            type_v=CacheType(self.type_v.currentText()),
                            flash_attn=FlashAttention(self.flash.currentText()), fit=self.fit.isChecked(),
                            fit_check=not self.force.isChecked(), rpc=self.rpc.text().strip(), rpc_split=self.rpc_split.text().strip(),
                            **self._advanced_values(), **self.rope.values())  # fmt: skip

    def _fit_toggled(self, on: bool) -> None:
        # the engine picks these when fitting automatically
        for widget in (self.gpu_layers, self.type_k, self.type_v):
            widget.setEnabled(not on)
        self._update_estimate()

    def fit_preview(self):
        """What "Fit automatically" would choose for the selected model (engine.fit.FitChoice, or None), against
        the engine child's view of free memory (RAM only until it has reported)."""
        entry = self.entry()
        if entry is None:
            return None
        budget = Budget.from_hardware(self.hardware) if self.hardware is not None else Budget(
            int(available_memory() * RAM_SHARE)
        )  # fmt: skip
        return choose(inspect_cached(entry.file), self.load_settings(), budget)

    def current_estimate(self) -> Fit | None:
        """The memory estimate for the selected model (its header is read here if it was not yet)."""
        entry = self.entry()
        if entry is None:
            return None
        info, settings = inspect_cached(entry.file), self.load_settings()
        fit = estimate_memory(info, settings, self.hardware)
        return local_fit(fit, places) if (places := placements(info, settings)) else fit

    def split_text(self) -> str:
        """Where the weights and KV cache land with RPC workers; '' without them."""
        entry = self.entry()
        if entry is None or entry.file not in self._read:
            return ""
        return describe_split(placements(inspect_cached(entry.file), self.load_settings()))

    def _header_ready(self, entry: Entry) -> bool:
        """True when the model's header is known; else read it off the GUI thread and update when done."""
        if entry.file in self._read:
            return True
        if entry.file not in self._reading:
            self._reading.add(entry.file)

            def read(_progress):
                return inspect_cached(entry.file)

            def finished(_result=None) -> None:
                self._reading.discard(entry.file)
                self._read.add(entry.file)
                self._update_estimate()

            Op(self, read).success(finished).failure(finished).run()
        return False

    def set_hardware(self, hardware) -> None:
        """The engine child's view of RAM and GPUs (engine.hardware.Hardware), for the fit verdict."""
        self.hardware = hardware
        self._update_estimate()

    def remote_choice(self) -> RemoteChoice | None:
        data = self.model_box.currentData()
        return data if isinstance(data, RemoteChoice) else None

    def open_remotes(self) -> RemotesDialog:
        dialog = RemotesDialog(self)
        dialog.changed.connect(self.remotes.fetch)
        dialog.show()
        return dialog

    def _update_estimate(self, *_args) -> None:
        choice = self.remote_choice()
        for widget in (self.n_ctx, self.threads, self.flash, self.adapter_box, self.adapter_scale, self.rope,
                       self.advanced, self.force, self.fit, self.rpc, self.rpc_split):  # fmt: skip
            widget.setEnabled(choice is None)  # a remote server loads its model its own way
        for widget in (self.gpu_layers, self.type_k, self.type_v):  # and fitting automatically picks these
            widget.setEnabled(choice is None and not self.fit.isChecked())
        if choice is not None:
            self.description.setText(self.remotes.describe(choice))
            self.estimate.setText("")
            self.estimate.setStyleSheet("")
            return
        entry = self.entry()
        self.description.setText(entry.description if entry else "No models in the library yet.")
        if entry is not None and not self._header_ready(entry):
            self.estimate.setText("Reading the model's header…")
            return
        if entry is not None:
            try:
                trained = inspect_cached(entry.file).context_length
            except IngleError:
                trained = 0
            self.rope.blockSignals(True)  # the note only: no second round of this update
            self.rope.set_context(self.n_ctx.value(), trained)
            self.rope.blockSignals(False)
        try:
            estimate = self.current_estimate()
        except IngleError as err:
            self.estimate.setText(str(err))
            return
        if self.fit.isChecked() and estimate is not None:
            choice = self.fit_preview()
            text = (
                choice.reason
                if choice
                else "Nothing fits the free memory, even at a short context: loading says what would."
            )
            self.estimate.setText(text)
            self.estimate.setStyleSheet("" if choice else ERROR_STYLE)
            return
        split = self.split_text()
        self.estimate.setText(
            (estimate.describe() if estimate else "") + (f"\nSplit: {split}" if split else "")
        )
        self.estimate.setStyleSheet(
            "" if estimate is None or estimate.verdict is Verdict.FITS else ERROR_STYLE
        )

    def _load(self) -> None:
        if (choice := self.remote_choice()) is not None:
            self.remote_load_requested.emit(choice)
            return
        entry = self.entry()
        if entry is None:
            return
        try:
            settings = self.load_settings()
            estimate = self.current_estimate()
        except IngleError as err:
            self.estimate.setText(str(err))
            return
        if (
            estimate
            and estimate.verdict is Verdict.WONT_FIT
            and not (self.force.isChecked() or self.fit.isChecked())
        ):
            self.estimate.setText(estimate.describe() + ". Lower the context length or tick 'Load even if…'.")
            return
        adapters = ()
        if self.adapter_box.currentData():
            adapters = (
                (str(self.library.get(self.adapter_box.currentData()).file), self.adapter_scale.value()),
            )
        self.load_requested.emit(str(entry.file), settings, adapters)

    def open_context_eval(self):
        """The context-length eval for the selected model with these settings (its own engine child)."""
        from app.eval_context_dialog import ContextEvalDialog

        entry = self.entry()
        if entry is None:
            return None
        try:
            settings = self.load_settings()
        except IngleError as err:
            self.estimate.setText(str(err))
            return None
        adapters = ()
        if self.adapter_box.currentData():
            adapters = (
                (str(self.library.get(self.adapter_box.currentData()).file), self.adapter_scale.value()),
            )
        dialog = ContextEvalDialog(entry.file, settings, adapters, self)
        dialog.resize(900, 520)
        dialog.show()
        return dialog

    def set_loading(self, fraction: float | None) -> None:
        """Show load progress (None hides it)."""
        self.progress.setVisible(fraction is not None)
        self.load_button.setEnabled(fraction is None)
        if fraction is not None:
            self.progress.setValue(int(fraction * 100))
