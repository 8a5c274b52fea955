"""The model manager's Library tab: every model and adapter with its facts, which adapter belongs to which base,
disk usage, import (off the GUI thread, with progress), reveal and delete (a mixin of DownloadManagerWindow)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Slot
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.dialogs import show_error
from app.ops import Op, describe_error
from app.wording import count
from engine import fit, units
from engine.errors import Cancelled, IngleError
from engine.gguf_info import inspect_cached
from engine.library import Entry
from engine.text import printable

POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}  # llama.cpp's LLAMA_POOLING_TYPE_* values


def item(text: str, data=None, align_right: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if data is not None:
        item.setData(Qt.ItemDataRole.UserRole, data)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def table(headers: list[str]) -> QTableWidget:
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


class LibraryTab:
    """The Library tab of DownloadManagerWindow (its status line and library are the window's)."""

    def _build_library_tab(self) -> QWidget:
        self.lib_table = table(
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
            params = units.quantity(e.parameters) if e.parameters else ""
            kind = item("embedding" if e.kind == "model" and e.is_embedding else e.kind)
            if kind.text() == "embedding":
                kind.setToolTip(
                    "An embedding model for document search (ingle docs add --embed-model), not for chat."
                )
            cells = [item(e.name, e.name), kind, item(e.architecture), item(e.quant),
                     item(params, align_right=True), item(units.any_size(e.total_size), align_right=True),
                     item(e.source + (" (linked)" if e.linked else "")), item(self._relation(e, entries))]  # fmt: skip
            for col, cell in enumerate(cells):
                if not e.present:
                    cell.setForeground(QColor("#c62828"))
                    cell.setToolTip(f"missing: {e.path}")
                self.lib_table.setItem(row, col, cell)
        self._update_embedding_offer()
        self.disk_label.setText(
            f"{count(len(entries), 'item')} · {units.any_size(self.library.disk_usage())} on disk in {self.library.root}"
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
        self.lib_details.setPlainText(self.entry_details(entry) if entry else "Select a model or adapter.")

    def entry_details(self, entry: Entry) -> str:
        kind = "embedding model" if entry.kind == "model" and entry.is_embedding else entry.kind
        lines = [f"{entry.name} ({kind})", f"file: {entry.path}", f"source: {printable(entry.source)}"]
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
        if entry.kind == "model" and entry.is_embedding:
            pooling = info.metadata.get(f"{info.architecture}.pooling_type", "")
            lines.append(
                f"Embedding model for document search: {s['architecture']} · {units.quantity(s['parameters'])} "
                f"parameters · {s['file_type']} · {info.n_embd} dimensions · reads {s['context_length']:,} tokens"
                + (f" · pooling {POOLING.get(pooling, pooling)}" if pooling != "" else "")
            )
            lines.append(f"Use it: ingle docs add COLLECTION PATH --embed-model {entry.name}")
        elif entry.kind == "model":
            lines.append(
                f"{s['architecture']} · {units.quantity(s['parameters'])} parameters · {s['file_type']} · "
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
                f"{s['architecture']} LoRA adapter · {units.quantity(s['parameters'])} parameters · "
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
            else f"delete {units.any_size(entry.total_size)} from disk"
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
