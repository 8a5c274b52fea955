"""The fine-tuning wizard: base model -> dataset -> settings -> train -> evaluate -> export, then chat with it.

Training runs in its own child process (training.runner.TrainingRun, polled by a timer); the dataset report,
evaluation and exports run in a child too (app.jobs, training.tasks): the GUI process loads neither torch nor
llama.cpp.
"""

from __future__ import annotations

import html
import importlib.util
import math
import os
from pathlib import Path

from PySide6.QtCore import QPointF, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from app.jobs import ChildJobs
from engine.errors import Cancelled, IngleError
from engine.gguf_info import inspect_gguf
from engine.library import Library, data_dir
from training import tasks
from training.events import CheckpointSaved, TrainDone, TrainStarted, TrainStep, ValLoss
from training.export import TRAINABLE
from training.lora import SCHEDULERS, TARGETS, TRAIN_EXTRA_HINT, TrainSettings, plan_steps
from training.sample_data import OUT as SAMPLE_DATA

ERROR_STYLE = "color: #c0392b"
PRESETS = {
    "Quick": dict(rank=8, alpha=16.0, learning_rate=1e-3, epochs=1.0, batch_size=4, eval_every=20),
    "Balanced": dict(
        rank=16, alpha=32.0, learning_rate=5e-4, epochs=2.0, batch_size=4, eval_every=40, checkpoint_every=50
    ),  # fmt: skip
    "Thorough": dict(
        rank=32, alpha=64.0, learning_rate=2e-4, epochs=4.0, batch_size=4, eval_every=50, checkpoint_every=100
    ),  # fmt: skip
}
FLOPS_PER_THREAD = 4.5e10  # CPU LoRA training throughput measured with `ingle bench` (mode 7) on the starter
QUANTS = ("F16", "Q8_0", "Q6_K", "Q4_K_M")


def _label(text: str = "", wrap: bool = True) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(wrap)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label


def training_estimate(info, settings: TrainSettings, stats: dict | None) -> tuple[int, float | None]:
    """(peak memory in bytes, seconds or None without a dataset) for training `info` with `settings`.

    Memory: the base dequantized to float32 plus its load-time copies (9 bytes per parameter), activations per
    token of the batch, LoRA weights with their AdamW state, torch's own ~700 MB. Time: starting the child and
    dequantizing the GGUF (~5 s + 0.1 s per million parameters), then 6 FLOPs per parameter and token on the
    layers that compute (the embedding table is a lookup), at the throughput `ingle bench` measured. Checked on
    the starter + sample (Quick): estimated 3.4 GiB / 114 s, measured 3.2 GiB / ~120 s.
    """
    params = info.parameter_count
    embed = info.vocab_size * info.n_embd
    compute = max(params - embed, params // 10)
    tokens_per_batch = settings.batch_size * min(settings.cutoff_len, (stats or {}).get("max_len", 256))
    activations = tokens_per_batch * info.n_embd * info.n_layers * 34 * 4
    lora = settings.rank * 2 * info.n_embd * info.n_layers * len(settings.target_modules) * 16
    memory = 9 * params + activations + lora + (700 << 20)
    if not stats:
        return memory, None
    tokens = stats["tokens"] * stats["train_examples"] / max(1, stats["examples"]) * settings.epochs
    if settings.max_steps:  # the total number of steps, overriding epochs (training cycles the data)
        per_step = stats["tokens"] / max(1, stats["examples"]) * settings.batch_size * settings.grad_accum
        tokens = per_step * settings.max_steps
    threads = settings.threads or max(1, (os.cpu_count() or 2))
    start = 5.0 + params / 1e7
    return memory, start + tokens * 6 * compute / (FLOPS_PER_THREAD * threads)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LossChart(QWidget):
    """Train loss per step (line) and validation loss (dots), on shared axes."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.total_steps = 1
        self.setMinimumHeight(180)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(560, 220)

    def clear(self) -> None:
        self.train, self.val = [], []
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt override)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fm = QFontMetrics(self.font())
        text = self.palette().color(QPalette.WindowText)
        left, bottom = fm.horizontalAdvance("00.000") + 12, fm.height() + 8
        plot = QRect(left, 8, self.width() - left - 12, self.height() - bottom - 16)
        p.setPen(QPen(text, 1))
        p.drawRect(plot)
        points = self.train + self.val
        if not points:
            p.drawText(plot, Qt.AlignCenter, "The loss curves appear with the first steps.")
            p.end()
            return
        lo = min(v for _, v in points)
        hi = max(v for _, v in points)
        hi = hi if hi > lo else lo + 1
        steps = max(self.total_steps, max(s for s, _ in points), 1)

        def at(step: int, value: float) -> QPointF:
            return QPointF(plot.left() + plot.width() * step / steps,
                           plot.bottom() - plot.height() * (value - lo) / (hi - lo))  # fmt: skip

        p.drawText(2, plot.top() + fm.ascent(), f"{hi:.3f}")
        p.drawText(2, plot.bottom(), f"{lo:.3f}")
        p.drawText(plot.left(), plot.bottom() + fm.height() + 2, "step 0")
        last = f"step {steps}"
        p.drawText(plot.right() - fm.horizontalAdvance(last), plot.bottom() + fm.height() + 2, last)
        p.setPen(QPen(QColor("#3f83cc"), 2))
        p.drawPolyline(QPolygonF([at(s, v) for s, v in self.train]))
        p.setPen(QPen(QColor("#e09a2b"), 2))
        p.setBrush(QColor("#e09a2b"))
        for s, v in self.val:
            p.drawEllipse(at(s, v), 4, 4)
        p.setPen(text)
        legend = "blue: training loss · orange: validation loss"
        p.drawText(plot.right() - fm.horizontalAdvance(legend) - 4, plot.top() + fm.ascent() + 2, legend)
        p.end()


# ------------------------------------------------------------------ 1. base model
class BasePage(QWizardPage):
    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("1. Base model")
        self.setSubTitle("The model from your library that the adapter will be trained on.")
        layout = QVBoxLayout(self)
        self.models = QComboBox()
        self.models.currentIndexChanged.connect(self._changed)
        layout.addWidget(self.models)
        self.facts = _label()
        layout.addWidget(self.facts)
        self.verdict = _label()
        layout.addWidget(self.verdict)
        self.estimate = _label()
        layout.addWidget(self.estimate)
        layout.addStretch(1)
        self.torch_missing = importlib.util.find_spec("torch") is None

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        current = self.models.currentData()
        self.models.blockSignals(True)
        self.models.clear()
        for entry in self.w.library.entries("model"):
            self.models.addItem(entry.name, str(entry.file))
        if current or self.w.base:
            self.models.setCurrentIndex(max(0, self.models.findData(current or str(self.w.base))))
        self.models.blockSignals(False)
        self._changed()

    def _changed(self, *_args) -> None:
        path = self.models.currentData()
        self.w.base, self.w.base_info = None, None
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
        self.w.base, self.w.base_info = Path(path), info
        self.facts.setText(
            f"{info.architecture} · {info.parameter_count / 1e6:,.0f}M parameters · {info.quant_label} · "
            f"{info.file_size / 2**20:,.0f} MiB · {info.n_layers} layers · context {info.context_length:,}"
        )
        if info.architecture not in TRAINABLE:
            self.verdict.setText(
                f"'{info.architecture}' models cannot be trained here: training supports "
                f"{', '.join(sorted(TRAINABLE))} (architectures transformers loads from GGUF and whose adapters "
                "Ingle writes back). Pick another model."
            )
            self.verdict.setStyleSheet(ERROR_STYLE)
        elif self.torch_missing:
            self.verdict.setText(f"Training needs torch, transformers and peft, which are not installed. "
                                 f"{TRAIN_EXTRA_HINT}, then open the wizard again.")  # fmt: skip
            self.verdict.setStyleSheet(ERROR_STYLE)
        else:
            self.verdict.setText(
                "✓ This architecture can be trained (LoRA on CPU, bf16 where the CPU has it)."
            )
            self.verdict.setStyleSheet("")
        self.update_estimate()
        self.completeChanged.emit()

    def update_estimate(self) -> None:
        if self.w.base_info is None:
            return
        memory, seconds = training_estimate(self.w.base_info, self.w.settings, self.w.stats)
        when = (
            f", about {_duration(seconds)}" if seconds is not None else " (time: once the dataset is chosen)"
        )
        self.estimate.setText(f"Estimated training: {memory / 2**30:.1f} GiB of RAM{when}, with the settings of "
                              "step 3.")  # fmt: skip

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        info = self.w.base_info
        return info is not None and info.architecture in TRAINABLE and not self.torch_missing


# ------------------------------------------------------------------ 2. dataset
class DataPage(QWizardPage):
    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.w = wizard
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
        self.status = _label()
        layout.addWidget(self.status)
        self.problems = QListWidget()
        self.problems.setMaximumHeight(110)
        self.problems.hide()
        layout.addWidget(self.problems)
        self.skip_bad = QCheckBox("Train on the good lines and skip the bad ones")
        self.skip_bad.hide()
        self.skip_bad.toggled.connect(self.completeChanged)
        layout.addWidget(self.skip_bad)
        self.stats = _label()
        layout.addWidget(self.stats)
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        layout.addWidget(self.preview, 1)
        self.report: dict | None = None

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
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
        if self.w.base is None:
            return
        if self.w.jobs.busy:  # another check is still running: look again when it is done
            QTimer.singleShot(300, self.check)
            return
        fmt = None if self.format.currentText() == "detect" else self.format.currentText()
        s = self.w.settings
        self.status.setStyleSheet("")
        self.status.setText(f"Reading and tokenizing {Path(data).name} with {self.w.base.name}'s tokenizer…")
        args = (str(self.w.base), data, fmt, s.cutoff_len, s.val_fraction, s.seed, s.train_on_prompt)
        self.w.jobs.run(tasks.dataset_report, args, self._reported, self._failed)

    def _failed(self, message: str) -> None:
        self.status.setText(message)
        self.status.setStyleSheet(ERROR_STYLE)

    def _reported(self, report: dict) -> None:
        self.report = report
        self.w.data = self.data_path()
        self.w.data_format = None if self.format.currentText() == "detect" else self.format.currentText()
        self.w.stats = report["stats"]
        st = report["stats"]
        self.status.setStyleSheet("")
        self.status.setText(f"Format: {report['format']} · {st['examples']} usable examples.")
        if report["problems"]:
            self.problems.show()
            for line, reason in report["problems"]:
                self.problems.addItem(f"line {line}: {reason}")
            self.status.setText(self.status.text() + f" {len(report['problems'])} bad line(s), listed below: fix "
                                "them, or tick the box to skip them.")  # fmt: skip
            self.status.setStyleSheet(ERROR_STYLE)
            self.skip_bad.show()
        self.stats.setText(
            f"Split: {st['train_examples']} for training, {st['val_examples']} held out for validation "
            f"(validation fraction {self.w.settings.val_fraction:g}, step 3). Tokens: {st['tokens']:,} in all, "
            f"{st['target_tokens']:,} carry loss (highlighted below); length min {st['min_len']} / median "
            f"{st['median_len']} / max {st['max_len']}; {st['truncated']} cut at {self.w.settings.cutoff_len}."
        )
        self.preview.setHtml(self._preview_html(report["preview"]))
        self.w.base_page.update_estimate()
        self.completeChanged.emit()

    @staticmethod
    def _preview_html(preview: list[dict]) -> str:
        parts = ["<p style='color:gray'>Rendered as training sees them; <span style='background:#bfe6c8'>"
                 "highlighted</span> tokens carry loss (what the model learns to write).</p>"]  # fmt: skip
        for ex in preview:
            spans = []
            for piece, loss in ex["pieces"]:
                text = html.escape(piece).replace("\n", "↵<br>")
                style = "background:#bfe6c8;color:black" if loss else "color:gray"
                spans.append(f"<span style='{style}'>{text}</span>")
            parts.append(f"<p><b>line {ex['line']}</b><br><tt>{''.join(spans)}</tt></p>")
        return "".join(parts)

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        if self.report is None:
            return False
        return not self.report["problems"] or self.skip_bad.isChecked()


# ------------------------------------------------------------------ 3. settings
class SettingsPage(QWizardPage):
    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.w = wizard
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
        self.estimate = _label()
        outer.addWidget(self.estimate)
        self.error = _label()
        self.error.setStyleSheet(ERROR_STYLE)
        outer.addWidget(self.error)
        form_host = QWidget()
        form = QFormLayout(form_host)
        self.fields: dict[str, QWidget] = {}
        for f in TrainSettings.field_specs():
            widget = self._field(f)
            self.fields[f.name] = widget
            help_label = QLabel(f.metadata["help"])
            help_label.setWordWrap(True)
            help_label.setStyleSheet("color: palette(mid)")
            box = QVBoxLayout()
            box.setSpacing(0)
            box.addWidget(widget)
            box.addWidget(help_label)
            form.addRow(f.metadata["label"], box)
        self.out = QLineEdit()
        form.addRow("Save the adapter as", self.out)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(form_host)
        outer.addWidget(scroll, 1)
        self.apply_preset("Quick")

    def _field(self, f) -> QWidget:
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

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        if not self.out.text() and self.w.base is not None:
            stem = f"{self.w.base.stem}-{Path(self.w.data or 'data').stem}-lora"
            self.out.setText(str(self.w.output_dir / f"{stem}.gguf"))
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
            self.set_values(TrainSettings(**PRESETS[name]))

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
            self.error.setText(str(err))
            self.completeChanged.emit()
            return
        self.error.clear()
        if self.sender() is not None and self.sender() is not self.preset:
            matching = [n for n, p in PRESETS.items() if TrainSettings(**p) == settings]
            self.preset.setCurrentText(matching[0] if matching else "Custom")
        self.w.settings = settings
        if self.w.base_info is not None:
            memory, seconds = training_estimate(self.w.base_info, settings, self.w.stats)
            steps = ""
            if self.w.stats:
                per_epoch = math.ceil(self.w.stats["train_examples"] / settings.batch_size)
                steps = f"{plan_steps(per_epoch, settings)[0]} steps, "
            when = _duration(seconds) if seconds is not None else "?"
            self.estimate.setText(f"Estimate: {steps}about {when}, {memory / 2**30:.1f} GiB of RAM.")
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return not self.error.text() and bool(self.out.text().strip())

    def validatePage(self) -> bool:  # noqa: N802 (Qt override)
        out = Path(self.out.text().strip()).expanduser()
        if out.suffix.lower() != ".gguf":
            self.error.setText(f"{out.name}: the adapter is a GGUF file; end the name with .gguf.")
            return False
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.error.setText(f"Cannot create {out.parent}: {err.strerror}. Choose another folder.")
            return False
        self.w.adapter = out
        return True


# ------------------------------------------------------------------ 4. train
class TrainPage(QWizardPage):
    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("4. Train")
        self.setSubTitle("Training runs in its own process; Pause keeps a checkpoint to resume from.")
        layout = QVBoxLayout(self)
        self.chart = LossChart()
        layout.addWidget(self.chart, 2)
        self.figures = _label()
        layout.addWidget(self.figures)
        buttons = QHBoxLayout()
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self.pause_or_resume)
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(2000)
        layout.addWidget(self.log, 1)
        self.run = None
        self.state = "idle"  # idle, running, pausing, paused, cancelling, cancelled, done, failed
        self.done: TrainDone | None = None
        self._timer = QTimer(self, interval=200)
        self._timer.timeout.connect(self._poll)

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        if self.state in ("idle", "cancelled", "failed"):
            self.start(resume=False)

    def start(self, resume: bool) -> None:
        from training.runner import TrainingRun

        if not resume:
            self.chart.clear()
            self.log.clear()
        self.done = None
        self.state = "running"
        self.log.appendPlainText(
            ("Resuming" if resume else "Starting") + f" training of {self.w.adapter.name}…"
        )
        self.run = TrainingRun(self.w.base, self.w.data, self.w.adapter, self.w.settings, resume=resume,
                               data_format=self.w.data_format, skip_bad_lines=True)  # fmt: skip
        self._timer.start()
        self._buttons()

    def _buttons(self) -> None:
        self.pause_button.setText("Resume" if self.state == "paused" else "Pause")
        self.pause_button.setEnabled(self.state in ("running", "paused"))
        self.cancel_button.setEnabled(self.state in ("running", "paused"))
        self.completeChanged.emit()

    def pause_or_resume(self) -> None:
        if self.state == "running":
            self.state = "pausing"
            self.log.appendPlainText("Pausing at the end of this step (saving a checkpoint)…")
            self.run.cancel()
        elif self.state == "paused":
            self.start(resume=True)
        self._buttons()

    def cancel(self) -> None:
        if self.state == "running":
            self.state = "cancelling"
            self.run.cancel()
        elif self.state == "paused":
            self.state = "cancelled"
            self.log.appendPlainText("Training cancelled.")
        self._buttons()

    def _poll(self) -> None:
        try:
            events = self.run.poll()
        except Cancelled as err:
            self._ended("paused" if self.state == "pausing" else "cancelled", str(err))
            return
        except IngleError as err:
            self._ended("failed", str(err))
            return
        for ev in events:
            self._event(ev)

    def _event(self, ev) -> None:
        if isinstance(ev, TrainStarted):
            self.chart.total_steps = ev.total_steps
            s = ev.dataset_stats
            self.log.appendPlainText(
                f"{ev.trainable_params:,} LoRA parameters, {ev.train_examples} training and {ev.val_examples} "
                f"validation examples ({s.get('target_tokens', 0):,} tokens carry loss); {ev.total_steps} steps"
                f"{', from step ' + str(ev.start_step) if ev.start_step else ''}; bf16 {'on' if ev.bf16 else 'off'}"
            )
        elif isinstance(ev, TrainStep):
            self.chart.train.append((ev.step, ev.loss))
            self.chart.update()
            self.figures.setText(
                f"Step {ev.step} of {ev.total_steps} · epoch {ev.epoch:.2f} · loss {ev.loss:.4f} · "
                f"{ev.tokens_per_second:,.0f} tokens/s · ETA {_duration(ev.eta_seconds)} · memory "
                f"{ev.memory_bytes / 2**30:.2f} GiB · learning rate {ev.learning_rate:.2e}"
            )
            self.log.appendPlainText(f"step {ev.step}: loss {ev.loss:.4f}")
        elif isinstance(ev, ValLoss):
            self.chart.val.append((ev.step, ev.loss))
            self.chart.update()
            self.log.appendPlainText(f"step {ev.step}: validation loss {ev.loss:.4f}")
        elif isinstance(ev, CheckpointSaved):
            self.log.appendPlainText(f"checkpoint at step {ev.step}")
        elif isinstance(ev, TrainDone):
            self.done = ev
            entry = self.w.library.register(ev.adapter_path, source="training",
                                            description=f"LoRA adapter trained on {Path(self.w.data).name}")  # fmt: skip
            self.w.adapter_entry = entry
            self._ended("done", f"Done: {ev.steps} steps in {_duration(ev.seconds)}, final loss {ev.final_loss:.4f}"
                        + (f", validation loss {ev.val_loss:.4f}" if ev.val_loss is not None else "")
                        + f". Adapter saved as {ev.adapter_path} and added to the library as '{entry.name}'.")  # fmt: skip

    def _ended(self, state: str, message: str) -> None:
        self._timer.stop()
        if self.run is not None:
            self.run.close()
            self.run = None
        self.state = state
        self.log.appendPlainText(message)
        self.figures.setText(message if state != "done" else self.figures.text() + "\n" + message)
        self.figures.setStyleSheet(ERROR_STYLE if state == "failed" else "")
        self._buttons()

    def training_active(self) -> bool:
        return self.run is not None

    def stop_for_exit(self) -> None:
        """Stop with a checkpoint (the app is closing): wait for the child to save and leave."""
        if self.run is None:
            return
        self.state = "pausing"
        self.run.cancel()
        try:
            for _ in self.run.events():
                pass
        except IngleError as err:
            self.log.appendPlainText(str(err))
        self._ended(
            "paused", "Stopped with a checkpoint; resume from the wizard or with `ingle train --resume`."
        )

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return self.state == "done"


# ------------------------------------------------------------------ 5. evaluate
class EvaluatePage(QWizardPage):
    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("5. Evaluate")
        self.setSubTitle("Perplexity on the held-out examples, and the same prompt to both models.")
        layout = QVBoxLayout(self)
        self.status = _label()
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

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        prompts = (self.w.data_page.report or {}).get("prompts") or ["Hello!"]
        self.prompt.setText(prompts[0])
        if self.result is None and not self.w.jobs.busy:
            self.status.setText(
                "Measuring the base model and the adapted one (llama.cpp, in a child process)…"
            )
            s = self.w.settings
            args = (str(self.w.base), str(self.w.adapter), self.w.data, s.val_fraction, s.seed, prompts[:1])
            self.ask.setEnabled(False)
            self.w.jobs.run(tasks.evaluate, args, self._measured, self._failed)

    def _failed(self, message: str) -> None:
        self.ask.setEnabled(True)
        self.status.setText(message)
        self.status.setStyleSheet(ERROR_STYLE)

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
        self.status.setStyleSheet("")
        self.status.setText(f"Perplexity {'fell' if change < 0 else 'rose'} by {abs(change):.0%} with the adapter "
                            "on examples it did not train on.")  # fmt: skip
        self._show_replies(result["replies"][0])
        self.completeChanged.emit()

    def _show_replies(self, row: dict) -> None:
        self.base_reply.setPlainText(row["base"])
        self.adapted_reply.setPlainText(row["adapted"])

    def ask_both(self) -> None:
        prompt = self.prompt.text().strip()
        if not prompt or self.w.jobs.busy:
            return
        self.ask.setEnabled(False)
        self.base_reply.setPlainText("…")
        self.adapted_reply.setPlainText("…")

        def done(row: dict) -> None:
            self.ask.setEnabled(True)
            self._show_replies(row)

        self.w.jobs.run(tasks.ask_both, (str(self.w.base), str(self.w.adapter), prompt), done, self._failed)

    def isComplete(self) -> bool:  # noqa: N802 (Qt override)
        return self.result is not None


# ------------------------------------------------------------------ 6. export
class ExportPage(QWizardPage):
    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.w = wizard
        self.setTitle("6. Export")
        self.setSubTitle("The adapter is saved; merge it into the base as standalone models if you like, and see "
                         "what each quantization costs.")  # fmt: skip
        layout = QVBoxLayout(self)
        self.adapter_label = _label()
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
        self.status = _label()
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

    def initializePage(self) -> None:  # noqa: N802 (Qt override)
        entry = self.w.adapter_entry
        self.adapter_label.setText(f"LoRA adapter: {self.w.adapter} ({self.w.adapter.stat().st_size / 2**20:.1f} MiB"
                                   f"), in the library as '{entry.name if entry else '?'}'.")  # fmt: skip

    def export(self) -> None:
        quants = [q for q, box in self.quants.items() if box.isChecked()]
        if not quants or self.w.jobs.busy:
            self.status.setText("Tick at least one quantization type.")
            return
        s = self.w.settings
        self.export_button.setEnabled(False)
        self.status.setStyleSheet("")
        self.status.setText(f"Merging and quantizing ({', '.join(quants)}), then measuring each against F16…")
        args = (str(self.w.base), str(self.w.adapter), str(self.w.adapter.parent), self.w.adapter.stem, quants,
                self.w.data, s.val_fraction, s.seed)  # fmt: skip
        self.w.jobs.run(tasks.export_models, args, self._exported, self._failed)

    def _failed(self, message: str) -> None:
        self.export_button.setEnabled(True)
        self.status.setText(message)
        self.status.setStyleSheet(ERROR_STYLE)

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
                f"{row['bytes'] / 2**20:.0f} MiB",
                f"{row['perplexity']:.3f}",
                kl,
                top1,
            )
            for j, value in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(value))
            if name in wanted:
                entry = self.w.library.register(row["path"], source="training",
                                                description=f"{self.w.base.stem} + {self.w.adapter.stem}, {name}")  # fmt: skip
                added.append(entry.name)
            else:  # the F16 merge was only the yardstick: do not leave its gigabytes behind
                Path(row["path"]).unlink(missing_ok=True)
                self.table.setItem(i, 0, QTableWidgetItem(f"{Path(row['path']).name} (reference, not kept)"))
        self.table.resizeColumnsToContents()
        self.status.setText(f"Added to the library: {', '.join(added)}. KL divergence and top-1 agreement compare "
                            "each quantized merge with the F16 merge on held-out examples.")  # fmt: skip

    def chat(self) -> None:
        self.w.chat_requested.emit(str(self.w.base), str(self.w.adapter), 1.0)
        self.w.accept()


# ------------------------------------------------------------------ the wizard
class FineTuneWizard(QWizard):
    """From a base model and examples to a conversation with the fine-tuned model."""

    chat_requested = Signal(str, str, float)  # base model, adapter, scale

    def __init__(self, library: Library | None = None, parent: QWidget | None = None,
                 output_dir: Path | None = None):  # fmt: skip
        super().__init__(parent)
        self.setWindowTitle("Fine-tune a model")
        self.setWizardStyle(QWizard.ClassicStyle)
        self.setOption(QWizard.NoBackButtonOnLastPage, False)
        self.library = library or Library()
        self.output_dir = output_dir or data_dir() / "training"
        self.jobs = ChildJobs(self)
        self.base: Path | None = None
        self.base_info = None
        self.data: str | None = None
        self.data_format: str | None = None
        self.stats: dict | None = None
        self.settings = TrainSettings(**PRESETS["Quick"])
        self.adapter: Path | None = None
        self.adapter_entry = None
        self.base_page = BasePage(self)
        self.data_page = DataPage(self)
        self.settings_page = SettingsPage(self)
        self.train_page = TrainPage(self)
        self.evaluate_page = EvaluatePage(self)
        self.export_page = ExportPage(self)
        for page in (self.base_page, self.data_page, self.settings_page, self.train_page, self.evaluate_page,
                     self.export_page):  # fmt: skip
            self.addPage(page)
        self.resize(900, 720)

    def training_active(self) -> bool:
        return self.train_page.training_active()

    def done(self, result: int) -> None:  # noqa: D102 (Qt override: closing stops the children)
        if self.training_active():
            self.train_page.stop_for_exit()
        self.jobs.close()
        super().done(result)
