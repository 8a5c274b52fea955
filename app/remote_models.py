"""Remote models in the GUI: each saved remote's models (its /v1/models, fetched off the GUI thread) in the model
picker beside the library's, the dialog that adds and removes remotes, and loading one: the bridge then runs chats
on a RemoteEngine (httpx only, no llama.cpp in this process) instead of the engine child."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.forms import MessageLabel
from app.ops import Op
from engine.errors import IngleError
from engine.events import ModelLoaded
from engine.remote import RemoteEngine
from engine.remotes import (
    Remote,
    add_remote,
    get_remote,
    key_path,
    list_remotes,
    load_key,
    read_key_file,
    remove_remote,
)
from engine.text import printable

LIST_TIMEOUT = 8.0  # seconds a server may take to list its models before the picker calls it down


@dataclass(frozen=True)
class RemoteChoice:
    """A model on a saved remote, as the picker's item data."""

    remote: str  # the saved remote's name
    model: str  # the server's model id
    host: str

    def label(self) -> str:
        return f"{printable(self.model)}  ·  remote on {self.host}  ({self.remote})"


@dataclass(frozen=True)
class Listing:
    """What one saved remote answered: its model ids, or why it could not be asked."""

    remote: Remote
    models: tuple[str, ...] = ()
    error: str = ""


def fetch_listing(remote: Remote) -> Listing:
    try:
        with RemoteEngine(remote.url, load_key(remote.name), read_timeout=LIST_TIMEOUT) as engine:
            return Listing(remote, tuple(m["id"] for m in engine.list_models()))
    except IngleError as err:
        return Listing(remote, (), str(err))


def fetch_all(remotes: list[Remote]) -> list[Listing]:
    """Every remote at once: a server that is down costs its own timeout, not everyone's."""
    if not remotes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(remotes))) as pool:
        return list(pool.map(fetch_listing, remotes))


class RemotePicker:
    """The remote half of the model picker: keeps the last listing and fills the combo box's remote items."""

    def __init__(self, owner: QWidget, changed):
        self.owner = owner
        self.changed = changed  # called on the GUI thread when a listing arrived (the panel refills its box)
        self.listings: list[Listing] = []
        self.fetching = False
        self._op: Op | None = None

    def fetch(self) -> None:
        """List every saved remote's models in the background; the picker shows them when they arrive."""
        try:
            remotes = list_remotes()
        except IngleError as err:
            self.listings = [Listing(Remote("remotes.json", "http://invalid"), (), str(err))]
            self.changed()
            return
        self.fetching = bool(remotes)
        self.listings = [Listing(r) for r in remotes]

        def arrived(listings: list[Listing]) -> None:
            self.fetching = False
            self.listings = listings
            self.changed()

        if remotes:
            self._op = Op(self.owner, lambda _progress: fetch_all(remotes)).success(arrived)
            self._op.failure(lambda err: arrived([Listing(r, (), str(err)) for r in remotes])).run()
        self.changed()

    def add_items(self, box: QComboBox) -> None:
        """Append the remote models; a remote still listing, or down, is one item that cannot be chosen."""
        for listing in self.listings:
            remote = listing.remote
            for model in listing.models:
                box.addItem(
                    RemoteChoice(remote.name, model, remote.host).label(),
                    RemoteChoice(remote.name, model, remote.host),
                )
            if listing.models:
                continue
            if self.fetching and not listing.error:
                text, tip = f"{remote.name} ({remote.host})  ·  remote  ·  listing its models…", ""
            elif listing.error:
                text, tip = f"{remote.name} ({remote.host})  ·  remote  ·  not reachable", listing.error
            else:
                text, tip = f"{remote.name} ({remote.host})  ·  remote  ·  lists no models", ""
            box.addItem(text, None)
            index = box.count() - 1
            box.model().item(index).setEnabled(False)
            if tip:
                box.setItemData(index, tip, Qt.ToolTipRole)

    def describe(self, choice: RemoteChoice) -> str:
        return (
            f"{printable(choice.model)} on the server {choice.host} (saved as {choice.remote!r}). It runs there: "
            "the load settings below do not apply, and the visualizers that need the model's logits or KV cache "
            "need a local model."
        )

    def down(self) -> list[Listing]:
        return [listing for listing in self.listings if listing.error]


class RemotesDialog(QDialog):
    """Add and remove remote servers: URL, an optional model, and the API key (pasted or from a file), which is
    stored 0600 and never shown again."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Remote servers")
        layout = QVBoxLayout(self)
        self.saved = QListWidget()
        layout.addWidget(self.saved)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        layout.addWidget(self.remove_button, 0, Qt.AlignRight)
        form = QFormLayout()
        self.name = QLineEdit(placeholderText="a short name, e.g. gpu-box")
        self.url = QLineEdit(placeholderText="http://host:8080/v1 (any OpenAI-compatible server)")
        self.model = QLineEdit(placeholderText="optional: the server's model to use")
        self.key = QLineEdit(placeholderText="optional: paste the API key (stored privately, never shown)")
        self.key.setEchoMode(QLineEdit.Password)
        key_row = QHBoxLayout()
        key_row.addWidget(self.key, 1)
        self.key_file_button = QPushButton("From file…")
        self.key_file_button.clicked.connect(self._key_file)
        key_row.addWidget(self.key_file_button)
        form.addRow("Name", self.name)
        form.addRow("Address", self.url)
        form.addRow("Model", self.model)
        form.addRow("API key", key_row)
        layout.addLayout(form)
        self.message = MessageLabel(hide_when_empty=True)
        layout.addWidget(self.message)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.add_button = buttons.addButton("Add", QDialogButtonBox.ActionRole)
        self.add_button.clicked.connect(self.add)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(640, 420)
        self.refresh()

    def refresh(self) -> None:
        self.saved.clear()
        try:
            remotes = list_remotes()
        except IngleError as err:
            self.message.show_error(str(err))
            return
        for remote in remotes:
            key = "key saved" if key_path(remote.name).exists() else "no key"
            model = f"  ·  model {remote.model}" if remote.model else ""
            self.saved.addItem(f"{remote.name}  ·  {remote.url}{model}  ·  {key}")
            self.saved.item(self.saved.count() - 1).setData(Qt.UserRole, remote.name)
        self.remove_button.setEnabled(bool(remotes))
        if remotes:
            self.saved.setCurrentRow(0)

    def use_key_file(self, path: str) -> None:
        """Read a key file into the (hidden) key field."""
        try:
            self.key.setText(read_key_file(path))
        except IngleError as err:
            self.message.show_error(str(err))
            return
        self.message.show_message("The key was read from the file; press Add to save it.")

    def _key_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "API key file")
        if path:
            self.use_key_file(path)

    def add(self) -> bool:
        try:
            remote = add_remote(
                self.name.text().strip(), self.url.text(), self.key.text() or None, self.model.text()
            )
        except IngleError as err:
            self.message.show_error(str(err))
            return False
        self.key.clear()
        self.name.clear()
        self.url.clear()
        self.model.clear()
        self.message.show_message(
            f"Saved {remote.name} ({remote.host}); its models are listed in the picker."
        )
        self.refresh()
        self.changed.emit()
        return True

    def remove_selected(self) -> None:
        item = self.saved.currentItem()
        if item is None:
            return
        name = item.data(Qt.UserRole)
        try:
            remove_remote(name)
        except IngleError as err:
            self.message.show_error(str(err))
            return
        self.message.show_message(f"Removed {name} and its key.")
        self.refresh()
        self.changed.emit()


# ------------------------------------------------------------ the window's side
def load_remote(window, choice: RemoteChoice) -> None:
    """Load a remote model: once its server has answered, the bridge runs chats on it (the engine child's local
    model is unloaded, to free its memory). A server that fails leaves the current model in place."""
    try:
        remote = get_remote(choice.remote)
        engine = RemoteEngine(remote.url, load_key(choice.remote), choice.model)
    except IngleError as err:
        window._load_failed(err)
        return
    bridge = window.bridge

    def work(_current):
        events = list(engine.load())  # the server answered: chats move there now
        if bridge.remote is None and bridge.host.alive:
            try:
                bridge.host.unload()
            except IngleError:
                pass  # a child that cannot unload is reported when it is next used
        bridge.use_engine(engine)
        return iter(events)

    def failed(err: Exception) -> None:
        engine.close()
        window._load_failed(err)

    window.model_panel.set_loading(0.0)
    window.model_label.setText(f"Connecting to {remote.host}…")
    bridge.stream(work, event=window._on_load_event, done=window._load_done, failed=failed)


def remote_loaded(window, ev: ModelLoaded) -> None:
    """The status line and banners for a remote model (nothing is remembered for the next start)."""
    info = ev.info
    window.model_label.setText(f"{printable(info.get('name', ''))} · remote on {info.get('remote_host', '')}")
    window.context_label.setText(f"Context 0 / {ev.n_ctx:,}" if ev.n_ctx else "Context: the server's")
    window.info_banner.hide()


def show_notices(window, mid: int) -> None:
    """After a remote reply: a stream cut midway, and the settings the server ignored or refused (shown rather
    than dropped)."""
    remote = window.bridge.remote
    if remote is None:
        return
    if window.store.message(mid).status == "interrupted":
        window.fault_banner.show_message(
            f"The server at {remote.host} cut the reply off midway; what arrived is kept, marked interrupted."
        )
    if remote.notices:
        window.info_banner.show_message(" ".join(remote.notices))
