"""Wizard step 4: training in a child process, polled by a timer: loss chart, figures, log, pause/resume, cancel."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QPushButton, QVBoxLayout, QWizardPage

from app.forms import MessageLabel
from app.wizard.loss_chart import LossChart
from engine import units
from engine.errors import Cancelled, IngleError
from training.events import CheckpointSaved, TrainDone, TrainStarted, TrainStep, ValLoss

if TYPE_CHECKING:
    from app.wizard.shell import FineTuneWizard


class TrainPage(QWizardPage):
    """Step 4: the training child's progress (chart, figures, log) with Pause/Resume and Cancel."""

    def __init__(self, wizard: FineTuneWizard):
        super().__init__()
        self.owner = wizard
        self.setTitle("4. Train")
        self.setSubTitle("Training runs in its own process; Pause keeps a checkpoint to resume from.")
        layout = QVBoxLayout(self)
        self.chart = LossChart()
        layout.addWidget(self.chart, 2)
        self.figures = MessageLabel()
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

    def initializePage(self) -> None:
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
            ("Resuming" if resume else "Starting") + f" training of {self.owner.adapter.name}…"
        )
        self.run = TrainingRun(
            self.owner.base,
            self.owner.data,
            self.owner.adapter,
            self.owner.settings,
            resume=resume,
            data_format=self.owner.data_format,
            skip_bad_lines=True,
        )
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
                f"{ev.tokens_per_second:,.0f} tokens/s · ETA {units.duration(ev.eta_seconds)} · memory "
                f"{units.gib(ev.memory_bytes, 2)} · learning rate {ev.learning_rate:.2e}"
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
            description = f"LoRA adapter trained on {Path(self.owner.data).name}"
            entry = self.owner.library.register(ev.adapter_path, source="training", description=description)
            self.owner.adapter_entry = entry
            val = f", validation loss {ev.val_loss:.4f}" if ev.val_loss is not None else ""
            self._ended(
                "done",
                f"Done: {ev.steps} steps in {units.duration(ev.seconds)}, final loss {ev.final_loss:.4f}{val}. "
                f"Adapter saved as {ev.adapter_path} and added to the library as '{entry.name}'.",
            )

    def _ended(self, state: str, message: str) -> None:
        self._timer.stop()
        if self.run is not None:
            self.run.close()
            self.run = None
        self.state = state
        self.log.appendPlainText(message)
        text = message if state != "done" else self.figures.text() + "\n" + message
        if state == "failed":
            self.figures.show_error(text)
        else:
            self.figures.show_message(text)
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

    def isComplete(self) -> bool:
        return self.state == "done"
