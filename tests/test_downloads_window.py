"""The model manager window driven like a user: search, pick a quant, download, cancel, resume; the library."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from fake_hub import FakeRepo
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.downloads_window import DownloadManagerWindow
from engine.downloads import State

pytest_plugins = ("fake_hub",)  # the fake Hub server and its tiny GGUF files, as fixtures

# INGLE_SCREENSHOTS=assets/screenshots refreshes the committed pictures; by default they go to a temp folder.
SHOTS = Path(os.environ.get("INGLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "ingle-screenshots")


@pytest.fixture
def window(qtbot, fake_hub, fresh_home):
    win = DownloadManagerWindow()
    qtbot.addWidget(win)
    win.show()
    yield win
    win.manager.shutdown()


def _search(qtbot, win, text: str) -> None:
    win.query.setText(text)
    qtbot.mouseClick(win.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.results.rowCount() > 0, timeout=120_000)


def _open_repo(qtbot, win, row: int = 0) -> None:
    win.results.selectRow(row)
    qtbot.waitUntil(lambda: win.options.rowCount() > 0, timeout=120_000)


def _job_state(win, state: State):
    def check():
        assert win.manager.jobs() and win.manager.jobs()[-1].state is state

    return check


def test_search_pick_quant_download_into_library(qtbot, window, gguf_bytes):
    _search(qtbot, window, "tiny")
    assert window.results.item(0, 0).text() == "tiny/Tiny-Llama-GGUF"
    _open_repo(qtbot, window)
    labels = [window.options.item(r, 0).text() for r in range(window.options.rowCount())]
    assert labels == ["tiny-llama.Q4_K_M.gguf", "tiny-llama.Q8_0.gguf", "mmproj-tiny-f16.gguf"]
    assert window.options.item(2, 4).text() == "projector"
    assert window.options.item(1, 4).text() == "★ recommended"  # both fit: the largest wins
    assert window.options.item(1, 3).text().startswith("fits")
    window.select_option("Q4_K_M")
    qtbot.mouseClick(window.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(_job_state(window, State.DONE), timeout=120_000)
    qtbot.waitUntil(lambda: window.lib_table.rowCount() == 1)
    assert window.lib_table.item(0, 0).text() == "tiny-llama.Q4_K_M"
    assert "verified" in window.status.text()
    window.tabs.setCurrentIndex(1)
    window.select_entry("tiny-llama.Q4_K_M")
    details = window.lib_details.toPlainText()
    assert (
        "hub:tiny/Tiny-Llama-GGUF" in details
        and "llama" in details
        and "Adapters for this model: none" in details
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(SHOTS / "model-library.png"))


def test_cancel_then_download_again_and_pause_resume(qtbot, window, fake_hub):
    fake_hub.bytes_per_second = 80_000
    _search(qtbot, window, "llama")
    _open_repo(qtbot, window)
    window.select_option("Q8_0")
    qtbot.mouseClick(window.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.manager.jobs()[-1].done_bytes > 40_000, timeout=120_000)
    window.queue.selectRow(0)
    assert window.pause_button.isEnabled() and not window.resume_button.isEnabled()
    qtbot.waitUntil(lambda: "/s" in window.queue.item(0, 3).text(), timeout=30_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(SHOTS / "model-downloads.png"))
    t0 = time.monotonic()
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.queue.item(0, 1).text() == "cancelled", timeout=30_000)
    # prompt, not instant: a busy machine may take a while to schedule the worker
    assert time.monotonic() - t0 < 30 and window.manager.jobs()[0].state is State.CANCELLED

    qtbot.mouseClick(window.download_button, Qt.MouseButton.LeftButton)  # again, from zero
    qtbot.waitUntil(lambda: len(window.manager.jobs()) == 2 and window.manager.jobs()[1].done_bytes > 40_000,
                    timeout=120_000)  # fmt: skip
    window.queue.selectRow(1)
    qtbot.mouseClick(window.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.queue.item(1, 1).text() == "paused", timeout=30_000)
    assert window.resume_button.isEnabled() and window.manager.jobs()[1].state is State.PAUSED
    kept = window.manager.jobs()[1].done_bytes
    fake_hub.bytes_per_second = None
    qtbot.mouseClick(window.resume_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(_job_state(window, State.DONE), timeout=120_000)
    requests = fake_hub.file_requests("tiny-llama.Q8_0.gguf")
    assert [r.range for r in requests] == [None, None, f"bytes={kept}-"]
    # the job is done in its worker thread first; the Library tab refreshes when the GUI thread hears of it
    qtbot.waitUntil(lambda: window.lib_table.rowCount() == 1, timeout=30_000)


def test_errors_show_in_the_window(qtbot, window, fake_hub):
    _search(qtbot, window, "gated")
    window.results.selectRow(0)
    qtbot.waitUntil(lambda: "is gated" in window.status.text(), timeout=120_000)
    window.query.setText("nothing-matches")
    qtbot.mouseClick(window.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.status.text() == "No GGUF models match.", timeout=120_000)
    _search(qtbot, window, "tiny")
    fake_hub.stop()  # the Hub goes away (a failed search would retry with backoff for ~20 s first)
    window.results.selectRow(1)
    qtbot.waitUntil(lambda: "could not reach" in window.status.text(), timeout=120_000)
    assert window.search_button.isEnabled() and window.options.rowCount() == 0


def _answer_next_dialog(button: QMessageBox.StandardButton) -> None:
    def click():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            box.button(button).click()
        else:
            QTimer.singleShot(20, click)

    QTimer.singleShot(20, click)


def imported(qtbot, window, path) -> None:
    """Import through the window (off the GUI thread) and wait until it has ended."""
    op = window.import_file(str(path))
    qtbot.waitUntil(lambda: op.finished, timeout=120_000)


def test_library_import_reveal_and_delete_with_confirmation(qtbot, window, tiny_model, corrupt_files):
    window.tabs.setCurrentIndex(1)
    imported(qtbot, window, tiny_model)
    entry = window.selected_entry()
    assert entry is not None and window.lib_table.rowCount() == 1
    assert window.reveal_path(window.selected_entry()) == Path(entry.path).parent
    _answer_next_dialog(QMessageBox.StandardButton.Ok)
    imported(qtbot, window, next(iter(corrupt_files.values())))
    assert window.status.text() and window.lib_table.rowCount() == 1
    window.select_entry(entry.name)
    _answer_next_dialog(QMessageBox.StandardButton.No)
    assert window.delete_selected() is False and window.lib_table.rowCount() == 1
    _answer_next_dialog(QMessageBox.StandardButton.Yes)
    assert window.delete_selected() is True
    assert window.lib_table.rowCount() == 0 and not Path(entry.path).exists()


def test_partial_download_reappears_paused_after_reopening(qtbot, fake_hub, fresh_home):
    fake_hub.bytes_per_second = 60_000
    first = DownloadManagerWindow()
    qtbot.addWidget(first)
    _search(qtbot, first, "llama")
    _open_repo(qtbot, first)
    first.select_option("Q8_0")
    qtbot.mouseClick(first.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: first.manager.jobs()[-1].done_bytes > 30_000, timeout=120_000)
    first.close()  # the app quits mid-download: the job pauses, its .part stays
    qtbot.waitUntil(lambda: first.manager.jobs()[-1].state is State.PAUSED, timeout=30_000)
    fake_hub.bytes_per_second = None
    again = DownloadManagerWindow()
    qtbot.addWidget(again)
    assert again.queue.rowCount() == 1 and again.queue.item(0, 1).text() == "paused"
    again.queue.selectRow(0)
    qtbot.mouseClick(again.resume_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: again.lib_table.rowCount() == 1, timeout=120_000)
    assert fake_hub.file_requests("tiny-llama.Q8_0.gguf")[-1].range.startswith("bytes=")


def _write_adapter(path: Path, base_sha256: str) -> Path:
    """A minimal LoRA adapter GGUF naming its base model's sha256, as training exports them."""
    import gguf
    import numpy as np

    from engine.library import ADAPTER_BASE_SHA_KEY

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    w.add_string(ADAPTER_BASE_SHA_KEY, base_sha256)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 64), np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((64, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_library_shows_which_adapters_belong_to_which_base(qtbot, window, tiny_model, tmp_path):
    from engine.gguf_info import sha256_file

    sha = sha256_file(tiny_model)
    window.library.import_file(tiny_model, name="tiny-base", sha256=sha)
    imported(qtbot, window, _write_adapter(tmp_path / "style.gguf", sha))
    imported(qtbot, window, _write_adapter(tmp_path / "orphan.gguf", "cd" * 32))
    window.tabs.setCurrentIndex(1)
    rows = {window.lib_table.item(r, 0).text(): window.lib_table.item(r, 7).text() for r in range(3)}
    assert rows == {"tiny-base": "1 adapter", "style": "base: tiny-base", "orphan": "base not in library"}
    window.select_entry("tiny-base")
    assert "Adapters for this model: style" in window.lib_details.toPlainText()
    window.select_entry("style")
    assert "Base model: tiny-base" in window.lib_details.toPlainText()
    window.grab().save(str(SHOTS / "model-library-adapters.png"))


def _accept_button(box: QMessageBox):
    return next(b for b in box.buttons() if box.buttonRole(b) == QMessageBox.ButtonRole.AcceptRole)


def test_unverifiable_download_asks_first_and_is_shown_not_verified(qtbot, window, fake_hub, gguf_bytes):
    fake_hub.add(
        FakeRepo("mirror/NoHash-GGUF", {"n-Q4_0.gguf": gguf_bytes["small"]}, meta={"n-Q4_0.gguf": "none"})
    )
    _search(qtbot, window, "nohash")
    _open_repo(qtbot, window)
    qtbot.mouseClick(window.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: window.unverified_box is not None and window.unverified_box.isVisible(), timeout=120_000
    )
    assert window.queue.item(0, 1).text() == "not verifiable" and "cannot be verified" in window.status.text()
    assert fake_hub.file_requests("n-Q4_0.gguf") == []  # nothing is fetched before the user decides
    window.unverified_box.button(QMessageBox.StandardButton.No).click()
    assert window.lib_table.rowCount() == 0 and window.manager.jobs()[0].state is State.FAILED
    window.queue.selectRow(0)
    qtbot.mouseClick(window.resume_button, Qt.MouseButton.LeftButton)  # asked again on the next attempt
    qtbot.waitUntil(
        lambda: window.unverified_box is not None and window.unverified_box.isVisible(), timeout=120_000
    )
    _accept_button(window.unverified_box).click()
    qtbot.waitUntil(_job_state(window, State.DONE), timeout=120_000)
    qtbot.waitUntil(lambda: window.queue.item(0, 1).text() == "done (not verified)", timeout=5_000)
    assert "NOT verified" in window.status.text() and window.lib_table.rowCount() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(SHOTS / "model-download-not-verified.png"))
    window.tabs.setCurrentIndex(1)
    window.select_entry("n-Q4_0")
    assert "NOT verified" in window.lib_details.toPlainText()


def test_hostile_names_from_the_hub_show_inert(qtbot, window, fake_hub, gguf_bytes):
    fake_hub.add(
        FakeRepo(
            "evil/Evil-GGUF", {"evil\x1b[31m\u202e\nx-Q4_0.gguf": gguf_bytes["small"]}, license="a\x1b[2J"
        )
    )
    _search(qtbot, window, "evil")
    _open_repo(qtbot, window)
    shown = [window.results.item(0, c).text() for c in range(6)] + [window.options.item(0, 0).text()]
    assert not any(ch in text for text in shown for ch in "\x1b\u202e\n"), shown
    assert "\\x1b" in window.options.item(0, 0).text()


def test_the_gui_keeps_ticking_while_a_1_gb_model_is_imported(qtbot, window, tiny_model, tmp_path):
    """The copy runs off the GUI thread: a 1 ms timer keeps firing all through a 1 GiB import."""
    import shutil
    import time

    from PySide6.QtCore import QTimer

    big = tmp_path / "big.gguf"
    shutil.copyfile(tiny_model, big)
    with open(big, "r+b") as fh:  # 1 GiB of padding after the tensor data (sparse on disk until copied)
        fh.truncate(big.stat().st_size + (1 << 30))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(1)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    started = time.perf_counter()
    op = window.import_file(str(big))
    qtbot.waitUntil(lambda: op.finished, timeout=600_000)
    ended = time.perf_counter()
    timer.stop()
    entry = window.selected_entry()
    assert entry is not None and entry.name == "big" and entry.file.stat().st_size == big.stat().st_size
    inside = [started] + [t for t in ticks if started < t < ended] + [ended]
    longest = max(b - a for a, b in zip(inside, inside[1:], strict=False))
    print(
        f"1 GiB import: {ended - started:.2f} s, {len(inside) - 2} ticks, longest gap {longest * 1000:.0f} ms"
    )
    # a copy on the GUI thread would be one gap as long as the whole import; busy machines get generous room
    assert len(inside) - 2 > 20 and longest < max(2.0, (ended - started) / 4)
