"""The Server panel: the API server started from the chat window, on the chat window's own engine child, with
the real `openai` client, real sockets and the real tiny model."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest
from PySide6.QtCore import QSettings
from PySide6.QtGui import QGuiApplication
from test_chat_window import open_window

from app.main import MainWindow
from app.server_panel import ServerPanel, curl_example
from engine.conversations import ConversationStore
from engine.errors import SettingsError
from engine.events import Token
from engine.server.keyfile import check_key, key_path, load_key, save_key
from engine.server.request_log import error_code, prompt_text
from engine.settings import SamplingSettings

REPO = Path(__file__).resolve().parents[1]
LOAD_TIMEOUT = 300_000
TINY_EOG = {"2": -100, "4": -100}  # </s> and <end_of_turn> banned: replies run to max_tokens


def in_thread(qtbot, work, timeout: int = 120_000):
    """Run a blocking client call off the GUI thread (the server's engine calls need the GUI thread's event
    loop), keep the event loop running, and return its result or raise its error."""
    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except BaseException as err:  # handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=timeout)
    if "error" in box:
        raise box["error"]
    return box["result"]


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)


def ask(url: str, key: str, text: str, max_tokens: int = 6) -> str:
    reply = client(url, key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0,
        logit_bias=TINY_EOG,
    )  # fmt: skip
    return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def window(qtbot, tmp_path, tiny_model):
    w = open_window(qtbot, tmp_path / "chats.sqlite3", tiny_model)
    yield w
    w.close()


def start_panel(qtbot, window: MainWindow, port: int | None = None) -> ServerPanel:
    panel = window.server_panel
    window.server_dock.show()
    panel.host.setText("127.0.0.1")
    panel.port.setValue(port or free_port())
    panel.require_key.setChecked(True)
    panel.key.clear()  # Start generates and saves one
    with qtbot.waitSignal(window.server.started, timeout=30_000):
        assert panel.start(), panel.message.text()
    return panel


def all_log_text(panel: ServerPanel) -> str:
    return "\n".join(" | ".join(row) for row in panel.log_texts())


def test_panel_serves_the_loaded_model_to_the_openai_client_with_its_key(qtbot, window):
    panel = start_panel(qtbot, window)
    url, key = panel.url.text(), panel.key.text()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert panel.status_note.isVisible() and url in panel.status_note.text()
    assert key and key == load_key() and stat.S_IMODE(os.stat(key_path()).st_mode) == 0o600
    assert panel.key.echoMode() == panel.key.EchoMode.Password  # shown masked
    curl = panel.curl.toPlainText()
    assert "$INGLE_API_KEY" in curl and key not in curl and url in curl

    reply = in_thread(qtbot, lambda: ask(url, key, "secret-prompt-one"))
    assert reply.usage.completion_tokens == 6 and reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        in_thread(qtbot, lambda: ask(url, "wrong-key-12345", "hello"))
    qtbot.waitUntil(lambda: len(panel.log_texts()) >= 2, timeout=10_000)
    rows = panel.log_texts()
    assert rows[0][1:3] == ["POST", "/v1/chat/completions"] and int(rows[0][4]) > 0
    assert rows[0][5] == "6" and rows[0][7] == "200" and rows[0][3] == "tiny"
    assert rows[1][7] == "401 invalid_api_key"
    panel.copy_url.click()
    assert QGuiApplication.clipboard().text() == url
    panel.copy_key.click()
    assert QGuiApplication.clipboard().text() == key
    text = all_log_text(panel)
    assert key not in text and "wrong-key-12345" not in text
    assert "secret-prompt-one" not in text  # "log prompts" is off

    panel.log_prompts.setChecked(True)
    in_thread(qtbot, lambda: ask(url, key, "secret-prompt-two"))
    qtbot.waitUntil(lambda: len(panel.log_texts()) >= 3, timeout=10_000)
    assert panel.log_texts()[2][8] == "secret-prompt-two"
    assert window.gui_settings.value("server/log_prompts") in (True, "true")

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert not port_is_free(port)
    with qtbot.waitSignal(window.server.stopped, timeout=30_000):
        panel.start_stop.click()
    assert port_is_free(port)
    assert panel.start_stop.text() == "Start server" and "Stopped" in panel.status.text()
    assert not panel.status_note.isVisible()
    with pytest.raises(openai.APIConnectionError):
        in_thread(qtbot, lambda: ask(url, key, "hello"))


def test_chat_window_replies_while_the_server_streams(qtbot, window):
    panel = start_panel(qtbot, window)
    url, key = panel.url.text(), panel.key.text()
    streamed: list[str] = []
    broadcast: list = []  # what the chat window's visualizers would see
    window.bridge.event.connect(lambda ev: broadcast.append(ev) if isinstance(ev, Token) else None)

    def long_stream():
        stream = client(url, key).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "go on"}], max_tokens=120, temperature=0,
            logit_bias=TINY_EOG, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        usage = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                streamed.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        return usage.completion_tokens

    box: dict = {}
    server_thread = threading.Thread(target=lambda: box.setdefault("n", long_stream()), daemon=True)
    server_thread.start()
    qtbot.waitUntil(lambda: len(streamed) >= 3, timeout=60_000)
    assert not window.bridge.busy  # the server's request does not make the chat window wait to send
    assert window.server.slot_usage()[0] == 1
    window.stop()  # the chat window's Stop (nothing of its own runs) leaves the API request alone
    window.new_chat()
    banned = (
        (2, -100.0),
        (4, -100.0),
    )  # a random model may end its turn at once: this reply must show tokens
    window.store.set_settings(window.conversation, SamplingSettings(max_tokens=10, seed=1, logit_bias=banned))
    with qtbot.waitSignal(window.reply_finished, timeout=120_000) as blocker:
        assert window.send("hello from the chat window")
    reply = window.store.message(blocker.args[0])
    assert reply.content and reply.role == "assistant"
    qtbot.waitUntil(lambda: not server_thread.is_alive(), timeout=120_000)
    assert box["n"] == 120  # the server's stream ran to its end, not stopped by the chat window
    chat_tokens = [t for t in broadcast if t.token_id >= 0]
    assert 0 < len(chat_tokens) <= 10  # the window's event stream carried its own reply's tokens only


def test_model_unload_and_engine_crash_stop_the_server_with_a_message(qtbot, window):
    panel = start_panel(qtbot, window)
    port = int(panel.url.text().rsplit(":", 1)[1].split("/")[0])
    with qtbot.waitSignal(window.server.stopped, timeout=30_000):
        window.unload_model()
    assert "model was unloaded" in panel.message.text() and port_is_free(port)

    window.load_model(*window.last_load)
    with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT):
        pass
    panel = start_panel(qtbot, window, port)
    with qtbot.waitSignal(window.server.stopped, timeout=30_000):
        window.bridge.host._proc.kill()  # the engine child dies
        window.bridge.call(lambda engine: engine.tokenize("x"))  # the next call notices
    assert "engine stopped" in panel.message.text() and port_is_free(port)
    assert panel.start_stop.text() == "Start server"


def test_refusals_are_one_clear_line_in_the_panel(qtbot, window):
    panel = window.server_panel
    panel.require_key.setChecked(False)
    panel.insecure.setChecked(False)
    panel.host.setText("0.0.0.0")
    assert not panel.start()
    assert panel.message.text() == (
        "host: listening on 0.0.0.0 makes the model reachable from other machines: give an API key "
        "(--api-key-file FILE or $INGLE_API_KEY), or pass --insecure to serve without one"
    )
    assert not window.server.running

    panel.host.setText("127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        panel.port.setValue(taken.getsockname()[1])
        assert not panel.start()
    assert panel.message.text().startswith(f"port: cannot listen on 127.0.0.1:{panel.port.value()}:")
    assert "choose another in the Port box" in panel.message.text() and not window.server.running

    panel.require_key.setChecked(True)
    panel.key.setText("short")
    assert not panel.start()
    assert panel.message.text() == "api-key: use 8 to 1000 printable characters without spaces"


def test_settings_persist_and_bad_values_fall_back(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "gui.ini"), QSettings.IniFormat)
    window = MainWindow(store=ConversationStore(tmp_path / "c.sqlite3"), start_engine=False)
    qtbot.addWidget(window)
    panel = ServerPanel(window.server, settings, lambda: None)
    panel.host.setText("::1")
    panel.host.editingFinished.emit()
    panel.port.setValue(9123)
    panel.slots.setValue(3)
    panel.log_prompts.setChecked(True)
    again = ServerPanel(window.server, settings, lambda: None)
    assert (again.host.text(), again.port.value(), again.slots.value()) == ("::1", 9123, 3)
    assert again.log_prompts.isChecked() and len(again.slot_boxes) == 3
    for key, value in (("server/port", "99999"), ("server/slots", "lots"), ("server/host", "  ")):
        settings.setValue(key, value)
    third = ServerPanel(window.server, settings, lambda: None)
    assert (third.host.text(), third.port.value(), third.slots.value()) == ("127.0.0.1", 8080, 1)
    assert not third.start() and "Load a model" in third.message.text()


def test_key_file_is_private_and_bad_keys_are_refused_without_echo(fresh_home):
    path = save_key("ingle-0123456789abcdef")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and load_key() == "ingle-0123456789abcdef"
    for bad in ("short", "has a space in it", "tab\there-and-more"):
        with pytest.raises(SettingsError) as err:
            check_key(bad)
        assert bad not in str(err.value)
    path.write_text("x y")  # hand-edited into something unusable
    assert load_key() is None


def test_prompt_text_and_curl_example():
    assert (
        prompt_text(b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}')
        == "b"
    )
    parts = b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'
    assert prompt_text(parts) == "hi"
    assert prompt_text(b'{"prompt": "line1\\nline2\\u001b[31m"}') == "line1 line2\\x1b[31m"
    assert prompt_text(b'{"prompt": "' + b"x" * 3000 + b'"}').endswith("…")
    for bad in (b"not json", b"[1, 2]", b'{"messages": "no"}', b"\xff\xfe", b'{"prompt": 5}'):
        assert prompt_text(bad) is None
        assert error_code(bad) == ""
    assert error_code(b'{"error": {"code": "invalid_api_key"}}') == "invalid_api_key"
    assert error_code(b'{"error": "ollama style"}') == ""
    curl = curl_example("http://127.0.0.1:8080/v1", "it's", with_key=True)
    assert "Authorization: Bearer $INGLE_API_KEY" in curl and "'\"'\"'" in curl  # quoted for the shell
    assert "Authorization" not in curl_example("http://127.0.0.1:8080/v1", "m", with_key=False)


def test_the_gui_process_never_loads_llama_cpp_for_the_server():
    code = ("import sys; import app.main, app.server_panel, app.server_control, engine.server.runner; "
            "sys.exit('llama_cpp' in sys.modules)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, timeout=120).returncode == 0


def test_closing_the_window_stops_the_server_and_frees_the_port(qtbot, tmp_path, tiny_model):
    w = open_window(qtbot, tmp_path / "chats.sqlite3", tiny_model)
    panel = start_panel(qtbot, w)
    port = int(panel.url.text().rsplit(":", 1)[1].split("/")[0])
    assert not port_is_free(port)
    w.close()
    assert port_is_free(port) and not w.server.running
