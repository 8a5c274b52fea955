""" "Fit automatically" in the model panel: what it would choose, shown before loading; what the engine chose,
shown after; "Load even if it may not fit" turns the engine's up-front refusal off."""

from __future__ import annotations

import dataclasses

import pytest

from app.main import MainWindow
from engine.conversations import ConversationStore
from engine.hardware import Device

LOAD_TIMEOUT = 300_000


@pytest.fixture
def window(qtbot, tmp_path, tiny_model, fresh_home):
    from engine.library import Library

    library = Library(tmp_path / "library")
    library.import_file(tiny_model, link=True, name="tiny")
    w = MainWindow(store=ConversationStore(tmp_path / "c.sqlite3"), library=library, model=tiny_model)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=LOAD_TIMEOUT):
        pass
    yield w
    w.close()


def test_fit_automatically_previews_loads_and_says_what_it_chose(qtbot, window):
    panel = window.model_panel
    panel.select("tiny")
    panel.n_ctx.setValue(8192)
    assert panel.load_settings().fit is False and panel.load_settings().fit_check is True
    panel.fit.setChecked(True)
    assert panel.load_settings().fit is True
    assert not panel.gpu_layers.isEnabled() and not panel.type_k.isEnabled()
    assert (
        panel.estimate.text().startswith("Fit automatically: on the CPU")
        and "context 8192" in panel.estimate.text()
    )
    # the engine child's view, with a GPU in it: full offload is previewed
    gpu = Device("CUDA0", "a 24 GiB GPU", "GPU", 20 << 30, 24 << 30)
    panel.set_hardware(dataclasses.replace(panel.hardware, gpu_offload=True, devices=(gpu,)))
    assert "all layers on the GPU" in panel.estimate.text()
    panel.set_hardware(dataclasses.replace(panel.hardware, gpu_offload=False, devices=()))
    qtbot.wait(100)  # let the layout take the longer text
    panel.grab().save("/tmp/f2-fit-panel.png")
    with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT):
        panel.load_button.click()
    assert window.loaded.fit_note.startswith("Fit automatically: on the CPU")
    assert window.loaded.n_ctx == 8192 and panel.estimate.text() == window.loaded.fit_note
    panel.fit.setChecked(False)
    assert panel.gpu_layers.isEnabled() and panel.estimate.text().startswith("fits:")


def test_load_anyway_turns_the_up_front_refusal_off(qtbot, window):
    panel = window.model_panel
    assert panel.load_settings().fit_check is True
    panel.force.setChecked(True)
    assert panel.load_settings().fit_check is False
