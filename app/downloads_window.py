"""The model manager window: Hub search, quant picker with fit verdicts, download queue, and the library."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QComboBox,
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
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.library_tab import LibraryTab, item, table
from app.ops import Op, describe_error
from engine import fit, hub, units
from engine.docs import embed_model
from engine.downloads import DownloadManager, Job, State
from engine.errors import IngleError
from engine.library import Library
from engine.text import printable

VERDICT_COLORS = {fit.Verdict.FITS: "#2e7d32", fit.Verdict.TIGHT: "#b26a00", fit.Verdict.WONT_FIT: "#c62828"}


class _JobBridge(QObject):
    """Download worker threads -> the GUI thread (the signal is queued across threads)."""

    changed = Signal(object)


class DownloadManagerWindow(LibraryTab, QMainWindow):
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
        offer = self._build_embedding_offer()

        self.results = table(["Repository", "Downloads", "Likes", "Updated", "License", "Access"])
        self.results.itemSelectionChanged.connect(self._repo_selected)
        self.options = table(["File", "Quant", "Size", "Fit at context", ""])
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

        self.queue = table(["Download", "Status", "Progress", "Speed", "ETA"])
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
        layout.addLayout(offer)
        layout.addWidget(split, 3)
        layout.addLayout(buttons)
        layout.addWidget(self.queue, 2)
        layout.addWidget(self.status)
        self._update_buttons()
        return page

    def _build_embedding_offer(self) -> QHBoxLayout:
        """The embedding model document search needs: what the library has, and the one we recommend."""
        self.embed_note = QLabel(wordWrap=True)
        self.embed_note.setTextFormat(Qt.TextFormat.PlainText)  # it names library entries
        self.embed_button = QPushButton("Show embedding model")
        self.embed_button.setToolTip(f"{embed_model.RECOMMENDED_REPO}: {embed_model.RECOMMENDED_WHY}")
        self.embed_button.clicked.connect(self.show_embedding_model)
        row = QHBoxLayout()
        title = QLabel("<b>For document search:</b>")
        row.addWidget(title)
        row.addWidget(self.embed_note, 1)
        row.addWidget(self.embed_button)
        return row

    def _update_embedding_offer(self) -> None:
        have = [e.name for e in embed_model.library_embedding_models(self.library)]
        recommended = f"{embed_model.RECOMMENDED_FILE} from {embed_model.RECOMMENDED_REPO}"
        if have:
            self.embed_note.setText(f"embedding model{'s' if len(have) > 1 else ''} in the library: "
                                    f"{printable(', '.join(have))}. Another: {recommended}.")  # fmt: skip
        else:
            self.embed_note.setText(f"no embedding model in the library yet (search is full-text only). "
                                    f"Recommended: {recommended} (25 MB).")  # fmt: skip

    @Slot()
    def show_embedding_model(self) -> Op:
        """List the recommended embedding model's repository with its file selected: Download takes it."""
        repo = embed_model.RECOMMENDED_REPO
        self.options.setRowCount(0)
        self.show_info(f"Listing files of {repo}…")
        token = self.token.text().strip() or None

        def listed(files: hub.RepoFiles) -> None:
            self.results.setRowCount(0)
            self._show_results([files.summary])
            self._got_files(files)

        return self._run(lambda: hub.repo_files(repo, token=token), listed)

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
            name = printable(r.repo_id) + ("  (embedding)" if r.embedding else "")
            cells = [item(name, r), item(f"{r.downloads:,}", align_right=True),
                     item(f"{r.likes:,}", align_right=True), item(updated), item(printable(r.license or "?")),
                     item("gated" if r.gated else "open")]  # fmt: skip
            if r.embedding:
                cells[0].setToolTip("A sentence-embedding model: for document search, not for chat.")
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
        for_search = files.summary.repo_id == embed_model.RECOMMENDED_REPO
        embedding = for_search or files.summary.embedding  # no KV cache: the context does not count
        self._recommended = fit.recommend(files.options, n_ctx, available, embedding=embedding)
        if for_search:  # the file we name, whatever else would fit
            self._recommended = next(
                (o for o in files.models if o.label == embed_model.RECOMMENDED_FILE), self._recommended
            )
        self.options.setRowCount(0)
        bold = QFont()
        bold.setBold(True)
        for o in files.options:
            row = self.options.rowCount()
            self.options.insertRow(row)
            label = printable(o.label) + (f"  ({len(o.files)} parts)" if o.split else "")
            cells = [item(label, o), item(o.quant), item(units.any_size(o.size), align_right=True)]
            if o.projector:
                note = item("projector")
                note.setToolTip("A vision projector (mmproj) for image input, not a chat model by itself.")
                cells += [item("—"), note]
            else:
                f = fit.estimate(o.size, o.quant, n_ctx, available, embedding=embedding)
                verdict = item(f"{f.verdict.value}  ({units.any_size(f.total)})")
                verdict.setForeground(QColor(VERDICT_COLORS[f.verdict]))
                verdict.setToolTip(f.describe())
                mark = "★ for document search" if for_search else "★ recommended"
                cells += [verdict, item(mark if o is self._recommended else "")]
            for col, cell in enumerate(cells):
                if o.projector:
                    cell.setForeground(QColor("#888"))
                    cell.setFlags(cell.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                if o is self._recommended:
                    cell.setFont(bold)
                    cell.setBackground(QColor("#e8f5e9"))
                self.options.setItem(row, col, cell)
        self.fit_note.setText(
            f"For document search: {embed_model.RECOMMENDED_WHY}, 8-bit. Once downloaded the library lists it as "
            "an embedding model (not for chat): ingle docs add COLLECTION PATH --embed-model NAME."
            if for_search
            else "An embedding model (tagged for sentence similarity on the Hub): for document search, not chat. "
            f"Fit: weights + runtime vs {units.any_size(available)} available; it keeps no KV cache."
            if embedding
            else f"Fit: weights + KV cache at {n_ctx:,} tokens vs {units.any_size(available)} available "
            "(RAM free + GPU memory). Recommended: the largest quant that fits, 4-bit or better when possible."
        )
        if self._recommended is not None:
            self.select_option(self._recommended.label if for_search else self._recommended.quant)

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
        self.queue.setItem(row, 0, item(f"{printable(job.repo_id)} · {job.name}", job.id))
        for col in (1, 3, 4):
            self.queue.setItem(row, col, item(""))
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
        bar.setFormat(f"{units.any_size(job.done_bytes)} / {units.any_size(job.total_bytes)}")
        running = job.state is State.RUNNING
        self.queue.item(row, 3).setText(f"{units.any_size(job.speed)}/s" if running and job.speed else "")
        self.queue.item(row, 4).setText(
            (units.clock(job.eta) if job.eta is not None else "--") if running else ""
        )
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
    def closeEvent(self, event) -> None:
        self.manager.shutdown()  # running downloads pause; their .part files resume next time
        super().closeEvent(event)
