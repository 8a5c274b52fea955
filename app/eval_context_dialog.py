"""The context-length eval in the GUI: runs engine.eval_context in its own engine child (the chat's model stays
loaded), with progress and Cancel, and draws each run's length x depth heatmap side by side."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.forms import MessageLabel
from app.ops import Op, describe_error
from app.visualizers.common import dim_color, text_color
from engine.errors import Cancelled, IngleError
from engine.eval_context import base_settings, parse_depths, parse_lengths, run_eval
from engine.settings import LoadSettings, RopeScaling


def cell_colour(p: float) -> QColor:
    """Red (the needle lost) through amber to green (certain)."""
    return QColor.fromHsvF(max(0.0, min(1.0, p)) * 0.33, 0.6, 0.92)


class Heatmap(QWidget):
    """One run: a depth (rows) x length (columns) grid; each cell's colour is the needle's probability per token
    and its mark says whether the greedy answer contained it; perplexity per length underneath."""

    CELL_W, CELL_H = 74, 30

    def __init__(self, run: dict, parent: QWidget | None = None):
        super().__init__(parent)
        self.run = run
        self.cells = {(c["length"], c["depth"]): c for c in run["needle"]}
        self.lengths = sorted({c["length"] for c in run["needle"]})
        self.depths = sorted({c["depth"] for c in run["needle"]})
        fm = QFontMetrics(self.font())
        self.setMinimumSize(60 + self.CELL_W * len(self.lengths),
                            3 * fm.height() + 24 + self.CELL_H * (len(self.depths) + 1))  # fmt: skip

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        fm = QFontMetrics(self.font())
        text, dim = text_color(self), dim_color(self)
        run = self.run
        rope = run["rope"]["rope_scaling"]
        scale = run["rope"]["rope_freq_scale"]
        title = f"{run['label']}: rope {rope}" + (f" (scale {scale:g})" if scale else "")
        p.setPen(text)
        p.drawText(4, fm.ascent() + 2, title)
        p.setPen(dim)
        p.drawText(4, 2 * fm.height() + 2, f"context {run['n_ctx']:,}, trained {run['n_ctx_train']:,}")
        top, left = 2 * fm.height() + 10, 52
        for j, length in enumerate(self.lengths):
            p.drawText(
                QRectF(left + j * self.CELL_W, top, self.CELL_W, fm.height()), Qt.AlignCenter, f"{length:,}"
            )
        top += fm.height() + 2
        for i, depth in enumerate(self.depths):
            y = top + i * self.CELL_H
            p.setPen(dim)
            p.drawText(QRectF(0, y, left - 6, self.CELL_H), Qt.AlignRight | Qt.AlignVCenter, f"{depth}%")
            for j, length in enumerate(self.lengths):
                cell = self.cells[(length, depth)]
                rect = QRectF(left + j * self.CELL_W, y, self.CELL_W - 2, self.CELL_H - 2)
                p.fillRect(rect, cell_colour(cell["token_p"]))
                p.setPen(QColor("#111111"))
                p.drawText(rect, Qt.AlignCenter, f"{'✓' if cell['found'] else '✗'} {cell['token_p']:.2f}")
        y = top + len(self.depths) * self.CELL_H + 4
        ppl = {row["length"]: row["perplexity"] for row in run["perplexity"]}
        p.setPen(dim)
        p.drawText(QRectF(0, y, left - 6, fm.height()), Qt.AlignRight, "ppl")
        p.setPen(text)
        for j, length in enumerate(self.lengths):
            if length in ppl:
                p.drawText(QRectF(left + j * self.CELL_W, y, self.CELL_W, fm.height()), Qt.AlignCenter,
                           f"{ppl[length]:.2f}")  # fmt: skip
        p.end()


def _work(path: str, runs, lengths, depths, adapters):
    """The Op's work, on a pool thread: a fresh engine child for the eval, closed whatever happens."""

    def work(progress):
        from engine.host import EngineHost

        host = EngineHost()
        try:
            return run_eval(host, path, runs, lengths, depths, adapters, progress)
        finally:
            host.close()

    return work


class ContextEvalDialog(QDialog):
    """Lengths and depths to try, Run/Cancel with progress, and the heatmaps (base vs stretched) when done."""

    def __init__(self, path: str | Path, settings: LoadSettings, adapters=(), parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Context length eval")
        self.path, self.settings, self.adapters = str(path), settings, tuple(adapters)
        self.op: Op | None = None
        self.report: dict | None = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.lengths = QLineEdit("512,1k,2k")
        self.lengths.setToolTip("Haystack lengths in tokens (k = 1024).")
        self.depths = QLineEdit("0,25,50,75,100")
        self.depths.setToolTip("Where the needle sits: percent of the haystack before it.")
        form.addRow("Lengths", self.lengths)
        form.addRow("Depths", self.depths)
        layout.addLayout(form)
        stretched = settings.rope_scaling in (RopeScaling.LINEAR, RopeScaling.YARN)
        self.about = MessageLabel(
            "Runs the model's own positions and your RoPE settings side by side."
            if stretched
            else "Runs the current settings (choose linear or yarn scaling to compare base and stretched)."
        )
        layout.addWidget(self.about)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        layout.addLayout(row)
        self.status = MessageLabel(hide_when_empty=True)
        layout.addWidget(self.status)
        self.maps = QHBoxLayout()
        layout.addLayout(self.maps, 1)
        self.legend = MessageLabel(
            "Cells: ✓/✗ whether the greedy answer contains the needle; the figure and colour are the needle's "
            "probability per token given the question (green near 1, red near 0). ppl: perplexity of the "
            "filler text up to that length."
        )
        self.legend.setStyleSheet("color: palette(mid)")
        layout.addWidget(self.legend)

    def runs(self) -> list[tuple[str, LoadSettings]]:
        if self.settings.rope_scaling in (RopeScaling.LINEAR, RopeScaling.YARN):
            return [("base", base_settings(self.settings)), ("stretched", self.settings)]
        return [("current", self.settings)]

    def start(self) -> None:
        try:
            lengths, depths = parse_lengths(self.lengths.text()), parse_depths(self.depths.text())
        except IngleError as err:
            self.status.show_error(str(err))
            return
        self.status.show_message("Starting an engine for the eval…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        work = _work(self.path, self.runs(), lengths, depths, self.adapters)
        self.op = Op(self, work).on_progress(self._progress).success(self._done).failure(self._failed).run()

    def cancel(self) -> None:
        if self.op is not None:
            self.status.show_message("Cancelling…")
            self.op.cancel()

    def _progress(self, fraction, text: str) -> None:
        if fraction is not None:
            self.progress.setValue(int(fraction * 1000))
        if text:
            self.status.show_message(text)

    def _finish(self) -> None:
        self.op = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _done(self, report: dict) -> None:
        self._finish()
        self.report = report
        self.progress.setValue(1000)
        seconds = sum(run["seconds"] for run in report["runs"])
        self.status.show_message(f"Done in {seconds:.0f} s of evaluation.")
        while self.maps.count():
            item = self.maps.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        for run in report["runs"]:
            self.maps.addWidget(Heatmap(run))
        self.maps.addStretch(1)

    def _failed(self, err: BaseException) -> None:
        self._finish()
        self.progress.setValue(0)
        if isinstance(err, Cancelled):
            self.status.show_message("Cancelled.")
        else:
            self.status.show_error(describe_error(err))

    def closeEvent(self, event) -> None:
        if self.op is not None:
            self.op.abandon()
        super().closeEvent(event)
