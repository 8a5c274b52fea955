"""Render the Server panel offscreen to PNG in a real session: the starter (with its chat adapter) loaded in the
chat window's engine child, the API server started from the panel, and real requests from the `openai` and
`ollama` clients (one with a wrong key) while the chat window answers a message of its own.

QT_QPA_PLATFORM=offscreen python -m app.screenshot_server [OUT_DIR]   (default assets/screenshots)
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path


def _port(preferred: int = 8080) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return 0  # taken: let the panel pick a free one
    return preferred


def render(out_dir: Path) -> Path:
    from PySide6.QtCore import QEventLoop

    from app.screenshots import start_window

    app, window = start_window("shots.sqlite3")
    import ollama
    import openai

    from engine.settings import SamplingSettings

    def off_gui_thread(work) -> None:  # the server's engine calls need the GUI thread's event loop running
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while thread.is_alive():
            app.processEvents(QEventLoop.AllEvents, 50)

    panel = window.server_panel
    window.server_dock.show()
    panel.port.setValue(_port())
    panel.slots.setValue(2)
    panel.require_key.setChecked(True)
    panel.key.clear()
    if not panel.start():
        raise SystemExit(f"the server did not start: {panel.message.text()}")
    url, key = panel.url.text(), panel.key.text()
    oai = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    olm = ollama.Client(host=url.removesuffix("/v1"), headers={"Authorization": f"Bearer {key}"})
    model = window.server.model_name

    def chat(text: str, **kw):
        return oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=48, temperature=0, **kw
        )

    def stream(text: str) -> None:
        for _chunk in chat(text, stream=True):
            pass

    def requests() -> None:
        oai.models.list()
        chat("What is the capital of France?")
        stream("Write one sentence about the sea.")
        try:
            openai.OpenAI(base_url=url, api_key="not-the-key", max_retries=0).models.list()
        except openai.AuthenticationError:
            pass
        olm.chat(model=model, messages=[{"role": "user", "content": "Name a colour."}],
                 options={"num_predict": 32, "temperature": 0})  # fmt: skip

    off_gui_thread(requests)
    window.new_chat()
    greedy = SamplingSettings(temperature=0, max_tokens=48)
    window.store.set_settings(window.conversation, greedy)
    window.sampling_panel.set_settings(greedy)
    panel.log_prompts.setChecked(True)
    off_gui_thread(lambda: chat("Name a planet."))  # logged with its prompt
    server = threading.Thread(target=lambda: stream("Tell me about the moon."), daemon=True)
    server.start()
    while window.server.slot_usage()[0] == 0 and server.is_alive():  # the server's request is running
        app.processEvents(QEventLoop.AllEvents, 50)
    window.send("Hello! What can you do?")  # the chat window's turn comes next; the server keeps taking turns
    window.server_dock.setFloating(True)
    window.server_dock.resize(880, 760)
    for _ in range(10):
        app.processEvents(QEventLoop.AllEvents, 50)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "server-panel.png"
    panel.show_slots()
    window.server_dock.grab().save(str(path))  # running: a busy slot, the earlier requests in the log
    while server.is_alive() or window.bridge.busy:
        app.processEvents(QEventLoop.AllEvents, 50)
    for _ in range(10):
        app.processEvents(QEventLoop.AllEvents, 50)
    rows = panel.log_texts()
    print(f"{path}: log rows {[(r[2], r[5], r[6], r[7]) for r in rows]}")
    window.close()
    return path


if __name__ == "__main__":
    render(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("assets/screenshots"))
