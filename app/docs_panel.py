"""The documents panel of a conversation: attach files or folders (buttons or drag and drop), index them in the
background with progress, set how many tokens retrieval may use, and list a reply's sources; clicking a source
opens its file with the passage highlighted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.ops import Op
from engine.docs.extract import Unreadable, extract
from engine.docs.index import AddReport, index_job, open_store
from engine.docs.search import Hit
from engine.errors import IngleError

DEFAULT_BUDGET = 1024
LAST_REPLY = "Sources of the last reply"
HIGHLIGHT = QColor("#ffe08a")


class DocsPanel(QWidget):
    """One conversation's documents. `indexed` fires with the AddReport when a batch is in the index."""

    indexed = Signal(object)
    budget_changed = Signal(int)

    def __init__(self, collection: str | Callable[[], str], model: str | None = None, parent: QWidget | None = None,
                 engine_factory=None):  # fmt: skip
        """`collection`: the name, or a function that gives the open conversation's (the chat window's)."""
        super().__init__(parent)
        self._collection = collection
        self.model = model
        self.engine_factory = (
            engine_factory  # tests inject an in-process engine; the app uses an engine child
        )
        self.op: Op | None = None
        self.hits: list[Hit] = []
        self.setAcceptDrops(True)

        self.files_button = QPushButton("Attach files…")
        self.folder_button = QPushButton("Attach folder…")
        self.files_button.clicked.connect(self._pick_files)
        self.folder_button.clicked.connect(self._pick_folder)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("Drop files or folders here to chat with them.")
        self.status.setWordWrap(True)
        self.budget = QSpinBox()
        self.budget.setRange(64, 32768)
        self.budget.setSingleStep(128)
        self.budget.setValue(DEFAULT_BUDGET)
        self.budget.setSuffix(" tokens")
        self.budget.setToolTip("How many tokens of the prompt the retrieved passages may use")
        self.budget.valueChanged.connect(self.budget_changed)
        self.embed_model = QComboBox()
        self.embed_model.setToolTip(
            "The model that embeds passages for vector search (beside full-text search). Automatic: the "
            "collection's own, else the bundled one, else the library's first; the Models window offers one."
        )
        self.embed_model.addItem("Automatic", None)  # the library's models are listed when the tab is shown
        self.sources = QListWidget()
        self.sources.itemActivated.connect(self._open_source)
        self.sources.itemClicked.connect(self._open_source)

        buttons = QHBoxLayout()
        buttons.addWidget(self.files_button)
        buttons.addWidget(self.folder_button)
        budget_row = QHBoxLayout()
        budget_row.addWidget(QLabel("Retrieval budget"))
        budget_row.addWidget(self.budget)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(budget_row)
        embed_row = QHBoxLayout()
        embed_row.addWidget(QLabel("Embedding model"))
        embed_row.addWidget(self.embed_model, 1)
        layout.addLayout(embed_row)
        self.sources_title = QLabel(LAST_REPLY)
        layout.addWidget(self.sources_title)
        layout.addWidget(self.sources)

    @property
    def collection(self) -> str:
        return self._collection() if callable(self._collection) else self._collection

    def refresh_embed_models(self) -> None:
        """List the library's embedding models (after a download, they appear here)."""
        from engine.docs.embed_model import library_embedding_models
        from engine.library import Library

        chosen = self.embed_model.currentData()
        self.embed_model.clear()
        self.embed_model.addItem("Automatic", None)
        try:
            names = [e.name for e in library_embedding_models(Library())]
        except IngleError:
            names = []  # an unreadable library: the panel still indexes (full-text) and says why then
        for name in names:
            self.embed_model.addItem(name, name)
        index = self.embed_model.findData(chosen)
        self.embed_model.setCurrentIndex(max(0, index))

    def showEvent(self, event) -> None:
        self.refresh_embed_models()
        super().showEvent(event)

    def retrieval(self) -> tuple[str, int] | None:
        """(collection, token budget) when the open conversation has documents, else None."""
        store = open_store()
        try:
            names = {c.name for c in store.collections() if c.files}
        finally:
            store.close()
        name = self.collection
        return (name, self.budget.value()) if name in names else None

    # ------------------------------------------------------------ attaching
    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Attach documents")
        if files:
            self.attach(files)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Attach a folder")
        if folder:
            self.attach([folder])

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and all(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.attach(paths)

    def attach(self, paths: list[str]) -> Op | None:
        """Index `paths` into this conversation's collection in the background."""
        if self.op is not None:
            self.status.setText("Still indexing the last files; drop these again when it is done.")
            return None
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.files_button.setEnabled(False)
        self.folder_button.setEnabled(False)
        collection, model, factory = self.collection, self.model, self.engine_factory
        embed = self.embed_model.currentData()
        self.op = (
            Op(self, lambda progress: index_job(collection, list(paths), model, progress, factory, embed))
            .on_progress(self._on_progress)
            .success(self._on_indexed)
            .failure(self._on_failed)
            .run()
        )
        return self.op

    def _on_progress(self, fraction: float | None, text: str) -> None:
        if fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        self.status.setText(text)

    def _finish(self) -> None:
        self.op = None
        self.progress.setVisible(False)
        self.files_button.setEnabled(True)
        self.folder_button.setEnabled(True)

    def _on_indexed(self, report: AddReport) -> None:
        self._finish()
        chunks = sum(n for _, n in report.indexed)
        lines = [
            f"{len(report.indexed)} files indexed ({chunks} passages), {len(report.unchanged)} unchanged."
        ]
        if report.embedded:
            lines.append(f"Vector search: {report.embedded} passages embedded with {report.embed_model}.")
        elif report.vectors_note:
            lines.append(report.vectors_note)
        lines += [f"Skipped {Path(p).name}: {reason}" for p, reason in report.unreadable]
        self.status.setText("\n".join(lines))
        self.indexed.emit(report)

    def _on_failed(self, err: BaseException) -> None:
        self._finish()
        from app.ops import describe_error

        self.status.setText(f"Indexing failed: {describe_error(err)}")

    # ------------------------------------------------------------ sources
    def set_sources(self, hits: list[Hit], title: str = LAST_REPLY) -> None:
        """The passages a reply was given (the last one unless `title` says which), numbered as it cites them,
        with their token cost."""
        self.sources_title.setText(title)
        self.hits = list(hits)
        self.sources.clear()
        for i, h in enumerate(self.hits, 1):
            where = f", {h.where}" if h.where else ""
            item = QListWidgetItem(
                f"[{i}] {Path(h.path).name}{where} · {h.tokens} tokens · {h.method} {h.score:.3g}"
            )
            item.setToolTip(h.text)
            item.setData(Qt.UserRole, i - 1)
            self.sources.addItem(item)

    def retrieved_tokens(self) -> int:
        """What the sources cost in the context (the context bar shows it as its own segment)."""
        return sum(h.tokens for h in self.hits)

    def _open_source(self, item: QListWidgetItem) -> SourceDialog:
        hit = self.hits[item.data(Qt.UserRole)]
        dialog = SourceDialog(hit, self, readable=hit.path in indexed_files())
        dialog.open()
        return dialog


def indexed_files() -> set[str]:
    """Every file in the document index: the only files a stored source may open (an imported conversation's
    sources name paths of another machine, or any path its author chose)."""
    store = open_store()
    try:
        return {path for c in store.collections() for path, _ in store.files(c.name)}
    finally:
        store.close()


class SourceDialog(QDialog):
    """A source's whole file with the retrieved passage highlighted and scrolled into view (`readable` False:
    the stored passage alone, the file is not read)."""

    def __init__(self, hit: Hit, parent: QWidget | None = None, readable: bool = True):
        super().__init__(parent)
        self.setWindowTitle(f"{Path(hit.path).name} {hit.where}".strip())
        self.resize(640, 480)
        self.view = QTextEdit(readOnly=True)
        try:
            if not readable:
                raise Unreadable("it is not in your document index; the passage as the reply got it")
            text = "\n\n".join(b.text for b in extract(Path(hit.path)))
        except Unreadable as err:
            text = f"(the file cannot be read now: {err})\n\n{hit.text}"
        self.view.setPlainText(text)
        self.found = self._highlight(hit.text)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(hit.path))
        layout.addWidget(self.view)

    def _highlight(self, passage: str) -> bool:
        """Mark the passage (the chunk joins blocks as the file view does, so it is found verbatim)."""
        doc = self.view.document()
        cursor = doc.find(passage.split("\n\n")[0])
        if cursor.isNull():
            return False
        end = doc.find(passage.split("\n\n")[-1], cursor.selectionStart())
        if not end.isNull():
            cursor.setPosition(cursor.selectionStart())
            cursor.setPosition(end.selectionEnd(), QTextCursor.KeepAnchor)
        selection = QTextEdit.ExtraSelection()
        fmt = QTextCharFormat()
        fmt.setBackground(HIGHLIGHT)
        selection.format, selection.cursor = fmt, cursor
        self.view.setExtraSelections([selection])
        caret = QTextCursor(
            cursor
        )  # scroll there without selecting: the selection colour would hide the mark
        caret.setPosition(cursor.selectionStart())
        self.view.setTextCursor(caret)
        self.view.ensureCursorVisible()
        return True
