"""The model manager window: Hub search, quant picker with fit verdicts, download queue, and the library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QUrl, Signal, Slot
from PySide6.QtGui import QColor, QDesktopServices, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.dialogs import show_error
from app.ops import Op, describe_error
from app.wording import count
from engine import fit, hub, units
from engine.downloads import DownloadManager, Job, State
from engine.errors import Cancelled, IngleError
from engine.gguf_info import inspect_cached
from engine.library import Entry, Library
from engine.text import printable

VERDICT_COLORS = {fit.Verdict.FITS: "#2e7d32", fit.Verdict.TIGHT: "#b26a00", fit.Verdict.WONT_FIT: "#c62828"}


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def human_count(n: int) -> str:
    for limit, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return str(n)


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _JobBridge(QObject):
    """Download worker threads -> the GUI thread (the signal is queued across threads)."""

    changed = Signal(object)


def _item(text: str, data=None, align_right: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if data is not None:
        item.setData(Qt.ItemDataRole.UserRole, data)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _table(headers: list[str]) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().setVisible(False)
    table.setWordWrap(False)
    table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    for col in range(1, len(headers)):
        table.horizontalHeader().setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
    return table


class DownloadManagerWindow(QMainWindow):
    """Find, download and keep models. Network and disk work runs off the GUI thread."""

    library_changed = Signal()

    def __init__(self, parent: QWidget | None = None, library: Library | None = None, concurrency: int = 2):
        super().__init__(parent)
        self.setWindowTitle("Ingle — Models")
        self.library = library or Library()
        self._bridge = _JobBridge(self)
        self._bridge.changed.connect(self._on_job_changed)
        token_problem = ""
        try:
            token = hub.load_token()
        except IngleError as err:  # a damaged token file or HF_TOKEN: say so, open without it
            token, token_problem = None, str(err)
        self.manager = DownloadManager(
            self.library, concurrency=concurrency, token=token, on_update=self._bridge.changed.emit
        )
        self._repo_files: hub.RepoFiles | None = None
        self._asked: set[int] = set()  # jobs whose "download unverified?" question was shown
        self.unverified_box: QMessageBox | None = None
        self._recommended: hub.QuantOption | None = None
        tabs = QTabWidget()
        tabs.addTab(self._build_find_tab(), "Find models")
        tabs.addTab(self._build_library_tab(), "Library")
        self.tabs = tabs
        self.setCentralWidget(tabs)
        self.resize(1100, 720)
        self.manager.restore()
        self.refresh_library()
        if token_problem:
            self.show_error(token_problem)

    # ================================================================ find tab
    def _build_find_tab(self) -> QWidget:
        self.query = QLineEdit(placeholderText="Search the Hugging Face Hub for GGUF models, e.g. qwen 0.5b")
        self.query.returnPressed.connect(self.search)
        self.sort = QComboBox()
        self.sort.addItems(["downloads", "likes", "recent"])
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.ctx = QSpinBox(minimum=256, maximum=1_048_576, singleStep=1024, value=4096, prefix="context ")
        self.ctx.valueChanged.connect(self._show_options)
        self.token = QLineEdit(
            placeholderText="access token (gated repos)", echoMode=QLineEdit.EchoMode.Password
        )
        self.token.setMaximumWidth(200)
        save_token = QPushButton("Save token")
        save_token.clicked.connect(self.save_token)
        top = QHBoxLayout()
        for w in (self.query, self.sort, self.search_button, self.ctx, self.token, save_token):
            top.addWidget(w)
        top.setStretch(0, 1)

        self.results = _table(["Repository", "Downloads", "Likes", "Updated", "License", "Access"])
        self.results.itemSelectionChanged.connect(self._repo_selected)
        self.options = _table(["File", "Quant", "Size", "Fit at context", ""])
        self.options.setTextElideMode(
            Qt.TextElideMode.ElideLeft
        )  # the quant at the end of a name matters most
        self.options.itemSelectionChanged.connect(self._update_buttons)
        self.options.itemDoubleClicked.connect(lambda _item: self.download_selected())
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download_selected)
        self.fit_note = QLabel(wordWrap=True)
        self.fit_note.setTextFormat(Qt.TextFormat.PlainText)  # it quotes file names from the Hub
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.options)
        rl.addWidget(self.fit_note)
        rl.addWidget(self.download_button)
        split = QSplitter()
        split.addWidget(self.results)
        split.addWidget(right)
        split.setSizes([490, 610])

        self.queue = _table(["Download", "Status", "Progress", "Speed", "ETA"])
        self.queue.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        self.queue.setColumnWidth(2, 220)
        self.queue.itemSelectionChanged.connect(self._update_buttons)
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.cancel_button = QPushButton("Cancel")
        self.pause_button.clicked.connect(lambda: self._job_action(self.manager.pause))
        self.resume_button.clicked.connect(lambda: self._job_action(self.manager.resume))
        self.cancel_button.clicked.connect(lambda: self._job_action(self.manager.cancel))
        buttons = QHBoxLayout()
        buttons.addWidget(QLabel("<b>Downloads</b>"))
        buttons.addStretch(1)
        for b in (self.pause_button, self.resume_button, self.cancel_button):
            buttons.addWidget(b)
        self.status = QLabel(wordWrap=True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)  # it quotes repo names and server errors
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addLayout(top)
        layout.addWidget(split, 3)
        layout.addLayout(buttons)
        layout.addWidget(self.queue, 2)
        layout.addWidget(self.status)
        self._update_buttons()
        return page

    def _run(self, fn: Callable[[], object], done: Callable[[object], None], failed=None) -> Op:
        """Network and disk calls run off the GUI thread (app/ops.py); failures land in the status line."""
        report = failed or self.show_error
        return (
            Op(self, lambda _progress: fn())
            .success(done)
            .failure(lambda err: report(describe_error(err)))
            .run()
        )

    def show_error(self, message: str) -> None:
        self.status.setStyleSheet("color: #c62828")
        self.status.setText(message)

    def show_info(self, message: str) -> None:
        self.status.setStyleSheet("")
        self.status.setText(message)

    @Slot()
    def search(self) -> None:
        query, sort = self.query.text().strip(), self.sort.currentText()
        self.show_info(f"Searching for '{query}'…")
        self.search_button.setEnabled(False)
        self._run(lambda: hub.search(query, sort=sort), self._show_results, self._search_failed)

    def _search_failed(self, message: str) -> None:
        self.search_button.setEnabled(True)
        self.show_error(message)

    def _show_results(self, found: list[hub.RepoSummary]) -> None:
        self.search_button.setEnabled(True)
        self.results.setRowCount(0)
        for r in found:
            row = self.results.rowCount()
            self.results.insertRow(row)
            updated = r.last_modified.date().isoformat() if r.last_modified else "?"
            cells = [_item(printable(r.repo_id), r), _item(f"{r.downloads:,}", align_right=True),
                     _item(f"{r.likes:,}", align_right=True), _item(updated), _item(printable(r.license or "?")),
                     _item("gated" if r.gated else "open")]  # fmt: skip
            for col, cell in enumerate(cells):
                self.results.setItem(row, col, cell)
        self.show_info(f"{len(found)} repositories with GGUF files." if found else "No GGUF models match.")

    def _repo_selected(self) -> None:
        rows = self.results.selectionModel().selectedRows()
        if not rows:
            return
        summary: hub.RepoSummary = self.results.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        self.options.setRowCount(0)
        self.show_info(f"Listing files of {printable(summary.repo_id)}…")
        token = self.token.text().strip() or None
        self._run(lambda: hub.repo_files(summary.repo_id, token=token), self._got_files)

    def _got_files(self, files: hub.RepoFiles) -> None:
        self._repo_files = files
        self._show_options()
        self.show_info(
            f"{printable(files.summary.repo_id)}: {len(files.models)} model files, "
            f"{len(files.projectors)} projectors."
        )

    def _show_options(self) -> None:
        files = self._repo_files
        if files is None:
            return
        n_ctx = self.ctx.value()
        available = fit.available_memory()
        self._recommended = fit.recommend(files.options, n_ctx, available)
        self.options.setRowCount(0)
        bold = QFont()
        bold.setBold(True)
        for o in files.options:
            row = self.options.rowCount()
            self.options.insertRow(row)
            label = printable(o.label) + (f"  ({len(o.files)} parts)" if o.split else "")
            cells = [_item(label, o), _item(o.quant), _item(human_size(o.size), align_right=True)]
            if o.projector:
                note = _item("projector")
                note.setToolTip("A vision projector (mmproj) for image input, not a chat model by itself.")
                cells += [_item("—"), note]
            else:
                f = fit.estimate(o.size, o.quant, n_ctx, available)
                verdict = _item(f"{f.verdict.value}  ({human_size(f.total)})")
                verdict.setForeground(QColor(VERDICT_COLORS[f.verdict]))
                verdict.setToolTip(f.describe())
                cells += [verdict, _item("★ recommended" if o is self._recommended else "")]
            for col, cell in enumerate(cells):
                if o.projector:
                    cell.setForeground(QColor("#888"))
                    cell.setFlags(cell.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                if o is self._recommended:
                    cell.setFont(bold)
                    cell.setBackground(QColor("#e8f5e9"))
                self.options.setItem(row, col, cell)
        self.fit_note.setText(
            f"Fit: weights + KV cache at {n_ctx:,} tokens vs {human_size(available)} available "
            "(RAM free + GPU memory). Recommended: the largest quant that fits, 4-bit or better when possible."
        )
        if self._recommended is not None:
            self.select_option(self._recommended.quant)

    def select_option(self, quant_or_file: str) -> None:
        for row in range(self.options.rowCount()):
            o: hub.QuantOption = self.options.item(row, 0).data(Qt.ItemDataRole.UserRole)
            if not o.projector and quant_or_file in (o.quant, o.label):
                self.options.selectRow(row)
                return

    def selected_option(self) -> hub.QuantOption | None:
        rows = self.options.selectionModel().selectedRows()
        return self.options.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole) if rows else None

    @Slot()
    def download_selected(self) -> Job | None:
        option, files = self.selected_option(), self._repo_files
        if option is None or files is None or option.projector:
            return None
        try:
            job = self.manager.add(files.summary.repo_id, option.files, revision=files.revision)
        except IngleError as err:
            self.show_error(str(err))
            return None
        self.show_info(f"Queued {job.name}.")
        return job

    @Slot()
    def save_token(self) -> None:
        text = self.token.text().strip()
        try:
            if not text:
                hub.clear_token()
                self.show_info("Access token removed.")
            else:
                path = hub.save_token(text)
                self.show_info(f"Access token saved to {path} (readable by you only).")
            self.manager.set_token(hub.load_token())
        except IngleError as err:
            self.show_error(str(err))

    # ---------------------------------------------------------------- queue
    def _queue_row(self, job: Job) -> int:
        for row in range(self.queue.rowCount()):
            if self.queue.item(row, 0).data(Qt.ItemDataRole.UserRole) == job.id:
                return row
        row = self.queue.rowCount()
        self.queue.insertRow(row)
        self.queue.setItem(row, 0, _item(f"{printable(job.repo_id)} · {job.name}", job.id))
        for col in (1, 3, 4):
            self.queue.setItem(row, col, _item(""))
        bar = QProgressBar()
        bar.setRange(0, 1000)
        self.queue.setCellWidget(row, 2, bar)
        return row

    @Slot(object)
    def _on_job_changed(self, job: Job) -> None:
        row = self._queue_row(job)
        status = job.status if not job.error else f"{job.status}: {job.error}"
        self.queue.item(row, 1).setText(job.status)
        self.queue.item(row, 1).setToolTip(status)
        if job.state is State.DONE and not job.verified:
            self.queue.item(row, 1).setForeground(QColor("#b26a00"))
        bar: QProgressBar = self.queue.cellWidget(row, 2)
        bar.setValue(int(job.fraction * 1000))
        bar.setFormat(f"{human_size(job.done_bytes)} / {human_size(job.total_bytes)}")
        running = job.state is State.RUNNING
        self.queue.item(row, 3).setText(f"{human_size(job.speed)}/s" if running and job.speed else "")
        self.queue.item(row, 4).setText(human_eta(job.eta) if running else "")
        if job.state in (State.QUEUED, State.RUNNING):
            self._asked.discard(job.id)  # a new attempt: a new failure may ask again
        if job.state is State.FAILED:
            self.show_error(job.error)
            if job.needs_consent and job.id not in self._asked:
                self._ask_unverified(job)
        elif job.state is State.DONE:
            if job.verified:
                how = "sha256 verified" if job.check == "sha256" else "verified by its git hash"
                self.show_info(f"{job.name} downloaded, {how}, and added to the library.")
            else:
                self.show_error(
                    f"{job.name} was added to the library NOT verified: the Hub gave no hash for it, only its "
                    "size was checked."
                )
            self.refresh_library()
            self.library_changed.emit()
        self._update_buttons()

    def _ask_unverified(self, job: Job) -> None:
        """The Hub gives no hash for this file: the user decides whether to take it with only its size checked."""
        self._asked.add(job.id)
        box = QMessageBox(
            QMessageBox.Icon.Warning, "Cannot verify this download",
            f"{job.error}\n\nDownload {job.name} anyway? Its size is checked, and the library marks it "
            "'not verified'.", QMessageBox.StandardButton.No, self,
        )  # fmt: skip
        box.addButton("Download anyway", QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.No)

        def answered(button) -> None:
            self.unverified_box = None
            box.deleteLater()
            if box.buttonRole(button) == QMessageBox.ButtonRole.AcceptRole:
                self.manager.resume(job.id, allow_unverified=True)

        box.buttonClicked.connect(answered)
        self.unverified_box = box
        box.open()  # not modal to the app: downloads and the window keep running while the user decides

    def selected_job(self) -> Job | None:
        rows = self.queue.selectionModel().selectedRows()
        if not rows:
            return None
        return self.manager.get(self.queue.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole))

    def _job_action(self, action: Callable[[int], None]) -> None:
        job = self.selected_job()
        if job is not None:
            action(job.id)
            self._update_buttons()

    def _update_buttons(self) -> None:
        option = self.selected_option() if hasattr(self, "options") else None
        self.download_button.setEnabled(option is not None and not option.projector)
        job = self.selected_job() if hasattr(self, "queue") else None
        state = job.state if job else None
        self.pause_button.setEnabled(state in (State.QUEUED, State.RUNNING))
        self.resume_button.setEnabled(state in (State.PAUSED, State.FAILED))
        self.cancel_button.setEnabled(state is not None and (not state.finished or state is State.FAILED))

    # ================================================================ library tab
    def _build_library_tab(self) -> QWidget:
        self.lib_table = _table(
            ["Name", "Kind", "Architecture", "Quant", "Parameters", "Size", "Source", "Adapters / base"]
        )
        self.lib_table.itemSelectionChanged.connect(self._library_selected)
        self.lib_details = QTextEdit(readOnly=True)
        self.disk_label = QLabel()
        import_button = QPushButton("Import file…")
        import_button.clicked.connect(lambda: self.import_file())
        self.reveal_button = QPushButton("Show in file manager")
        self.reveal_button.clicked.connect(self.reveal_selected)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(lambda: self.delete_selected())
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_library)
        buttons = QHBoxLayout()
        buttons.addWidget(self.disk_label)
        buttons.addStretch(1)
        for b in (import_button, self.reveal_button, self.delete_button, refresh):
            buttons.addWidget(b)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.lib_table)
        split.addWidget(self.lib_details)
        split.setSizes([420, 240])
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addLayout(buttons)
        layout.addWidget(split)
        return page

    def refresh_library(self) -> None:
        try:
            entries = self.library.entries()
        except IngleError as err:
            self.show_error(str(err))
            entries = self.library.entries()
        self.lib_table.setRowCount(0)
        for e in sorted(entries, key=lambda e: (e.kind, e.name.lower())):
            row = self.lib_table.rowCount()
            self.lib_table.insertRow(row)
            params = human_count(e.parameters) if e.parameters else ""
            cells = [_item(e.name, e.name), _item(e.kind), _item(e.architecture), _item(e.quant),
                     _item(params, align_right=True), _item(human_size(e.total_size), align_right=True),
                     _item(e.source + (" (linked)" if e.linked else "")), _item(self._relation(e, entries))]  # fmt: skip
            for col, cell in enumerate(cells):
                if not e.present:
                    cell.setForeground(QColor("#c62828"))
                    cell.setToolTip(f"missing: {e.path}")
                self.lib_table.setItem(row, col, cell)
        self.disk_label.setText(
            f"{count(len(entries), 'item')} · {human_size(self.library.disk_usage())} on disk in {self.library.root}"
        )
        self._library_selected()

    @staticmethod
    def _relation(entry: Entry, entries: list[Entry]) -> str:
        """Models: how many adapters name them as base; adapters: their base model's name."""
        if entry.kind == "model":
            n = sum(
                1 for a in entries if a.kind == "adapter" and entry.sha256 and a.base_sha256 == entry.sha256
            )
            return f"{n} adapter{'s' if n != 1 else ''}" if n else ""
        base = next(
            (m.name for m in entries if m.kind == "model" and m.sha256 and m.sha256 == entry.base_sha256), ""
        )
        return f"base: {base}" if base else ("base not in library" if entry.base_sha256 else "base unknown")

    def selected_entry(self) -> Entry | None:
        rows = self.lib_table.selectionModel().selectedRows()
        if not rows:
            return None
        try:
            return self.library.get(self.lib_table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole))
        except IngleError:
            return None

    def select_entry(self, name: str) -> None:
        for row in range(self.lib_table.rowCount()):
            if self.lib_table.item(row, 0).data(Qt.ItemDataRole.UserRole) == name:
                self.lib_table.selectRow(row)

    def _library_selected(self) -> None:
        entry = self.selected_entry()
        self.reveal_button.setEnabled(entry is not None)
        self.delete_button.setEnabled(entry is not None)
        self.lib_details.setPlainText(self.describe_entry(entry) if entry else "Select a model or adapter.")

    def describe_entry(self, entry: Entry) -> str:
        lines = [f"{entry.name} ({entry.kind})", f"file: {entry.path}", f"source: {printable(entry.source)}"]
        if entry.sha256:
            lines.append(f"sha256: {entry.sha256}")
        if entry.extra.get("verified") is False:
            lines.append("NOT verified: the Hub gave no hash for this download; only its size was checked.")
        elif entry.extra.get("check") in ("sha256", "git-sha1"):
            lines.append(f"verified: the download matched the Hub's {entry.extra['check']}.")
        if entry.description:
            lines.append(entry.description)
        if not entry.present:
            return "\n".join([*lines, "The file is missing: delete this entry or import it again."])
        try:
            info = inspect_cached(entry.path, expect="any")
        except IngleError as err:
            return "\n".join([*lines, f"Cannot read the file: {err}"])
        s = info.summary()
        if entry.kind == "model":
            lines.append(
                f"{s['architecture']} · {human_count(s['parameters'])} parameters · {s['file_type']} · "
                f"{s['layers']} layers · context {s['context_length']:,} · vocab {s['vocab_size']:,} · "
                f"chat template: {'yes' if s['chat_template'] else 'no'}"
            )
            f = fit.estimate(entry.total_size, entry.quant, self.ctx.value(), info=info)
            lines.append(f"At {self.ctx.value():,} tokens: {f.describe()}")
            adapters = self.library.adapters_for(entry.sha256) if entry.sha256 else []
            lines.append("Adapters for this model: " + (", ".join(a.name for a in adapters) or "none"))
        else:
            alpha = info.metadata.get("adapter.lora.alpha", "?")
            lines.append(
                f"{s['architecture']} LoRA adapter · {human_count(s['parameters'])} parameters · "
                f"{len(info.tensors)} tensors · alpha {alpha}"
            )
            bases = [
                m.name for m in self.library.entries("model") if m.sha256 and m.sha256 == entry.base_sha256
            ]
            if bases:
                lines.append("Base model: " + ", ".join(bases))
            elif entry.base_sha256:
                lines.append(f"Base model: sha256 {entry.base_sha256[:16]}… (not in the library)")
            else:
                lines.append("Base model: unknown (the adapter does not name one)")
        return "\n".join(lines)

    def import_file(self, path: str | None = None) -> Op | None:
        """Copy a GGUF into the library off the GUI thread, with a progress dialog (Cancel leaves nothing)."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Import a GGUF model or adapter", "", "GGUF files (*.gguf)"
            )
            if not path:
                return None
        name = Path(path).name

        def work(progress):
            def copied(done: int, total: int) -> None:
                progress(
                    done / total if total else None,
                    f"Copying {name}: {units.size(done)} of {units.size(total)}",
                )

            return self.library.import_file(path, progress=copied)

        def failed(err: BaseException) -> None:
            if isinstance(err, Cancelled):
                self.show_info(f"Import of {name} cancelled; nothing was added.")
                return
            self.show_error(describe_error(err))
            show_error(self, describe_error(err), "Import failed")

        self.show_info(f"Importing {name}…")
        return (
            Op(self, work).with_progress(f"Importing {name}…").success(self._imported).failure(failed).run()
        )

    def _imported(self, entry: Entry) -> None:
        self.show_info(f"Imported {entry.name}.")
        self.refresh_library()
        self.select_entry(entry.name)
        self.library_changed.emit()

    def reveal_path(self, entry: Entry) -> Path:
        return entry.file.parent

    @Slot()
    def reveal_selected(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.reveal_path(entry))))

    def delete_selected(self) -> bool:
        entry = self.selected_entry()
        if entry is None:
            return False
        what = (
            "forget the link (your file stays)"
            if entry.linked
            else f"delete {human_size(entry.total_size)} from disk"
        )
        answer = QMessageBox.question(
            self, "Delete from library", f"Remove '{entry.name}' from the library and {what}?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )  # fmt: skip
        if answer != QMessageBox.StandardButton.Yes:
            return False
        try:
            self.library.remove(entry.name)
            if not entry.linked:  # the other parts of a split model lie beside the first
                for part in entry.extra.get("parts", [])[1:]:
                    (entry.file.parent / part).unlink(missing_ok=True)
        except IngleError as err:
            self.show_error(str(err))
            return False
        self.refresh_library()
        self.library_changed.emit()
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt)
        self.manager.shutdown()  # running downloads pause; their .part files resume next time
        super().closeEvent(event)
