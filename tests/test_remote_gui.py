"""Remote models in the GUI: the picker lists each saved remote's models (a server that is down shown as such), the
remotes dialog keeps keys private, and the chat window runs on a RemoteEngine against a real `ingle serve` on
loopback (and small real HTTP servers that misbehave), then switches back to the local engine child."""

from __future__ import annotations

import json
import stat

import pytest
import test_remote
from test_chat_window import after_tokens, new_chat, open_window, send_and_wait
from test_remote import KEY, delta, free_port, sse

from app.main import MainWindow
from app.model_panel import ModelPanel
from app.remote_models import RemoteChoice, RemotesDialog
from engine.conversations import ConversationStore
from engine.library import Library
from engine.remotes import add_remote, key_path, list_remotes

TIMEOUT = 120_000
ingle_server = (
    test_remote.ingle_server
)  # the fixtures: `ingle serve` on the tiny model, small real HTTP servers
fake = test_remote.fake


def remote_items(panel: ModelPanel) -> list[tuple[str, bool, object]]:
    box = panel.model_box
    return [(box.itemText(i), box.model().item(i).isEnabled(), box.itemData(i)) for i in range(box.count())]


def listed(qtbot, panel: ModelPanel) -> list[tuple[str, bool, object]]:
    qtbot.waitUntil(lambda: not panel.remotes.fetching, timeout=TIMEOUT)
    return remote_items(panel)


def choose(window: MainWindow, qtbot, choice: RemoteChoice) -> None:
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT):
        window.load_remote(choice)
    assert window.bridge.remote is not None


def test_picker_lists_remote_models_beside_local_ones_and_a_down_server(
    qtbot, fresh_home, ingle_server, tiny_model
):
    Library().import_file(tiny_model, link=True, name="tiny-local")
    add_remote("box", ingle_server, KEY)
    add_remote("dead", f"http://127.0.0.1:{free_port()}")
    panel = ModelPanel(Library())
    qtbot.addWidget(panel)
    items = listed(qtbot, panel)
    host = ingle_server.split("/")[2]
    assert items[0][0].startswith("tiny-local") and items[0][1]
    assert (f"tiny  ·  remote on {host}  (box)", True, RemoteChoice("box", "tiny", host)) in items
    down = [i for i, (text, _, _) in enumerate(items) if text.startswith("dead")]
    assert len(down) == 1 and "not reachable" in items[down[0]][0] and not items[down[0]][1]
    assert "Cannot reach the server" in panel.model_box.itemData(down[0], 3)  # Qt.ToolTipRole
    panel.select(RemoteChoice("box", "tiny", host))
    assert f"on the server {host}" in panel.description.text() and panel.estimate.text() == ""
    with qtbot.waitSignal(panel.remote_load_requested) as blocker:
        panel.load_button.click()
    assert blocker.args == [RemoteChoice("box", "tiny", host)]
    panel.resize(520, 360)
    panel.model_box.showPopup()
    panel.grab().save("/tmp/j-remote-picker.png")
    panel.model_box.view().window().grab().save("/tmp/j-remote-picker-list.png")


def test_remotes_dialog_stores_a_pasted_or_file_key_privately_and_never_shows_it(qtbot, fresh_home, tmp_path):
    dialog = RemotesDialog()
    qtbot.addWidget(dialog)
    dialog.name.setText("box")
    dialog.url.setText("http://127.0.0.1:9/v1")
    dialog.key.setText("sk-secret-123")
    assert dialog.key.echoMode() == dialog.key.EchoMode.Password
    with qtbot.waitSignal(dialog.changed):
        assert dialog.add()
    assert stat.S_IMODE(key_path("box").stat().st_mode) == 0o600
    assert key_path("box").read_text() == "sk-secret-123"
    shown = [dialog.saved.item(i).text() for i in range(dialog.saved.count())]
    assert shown == ["box  ·  http://127.0.0.1:9/v1  ·  key saved"] and dialog.key.text() == ""
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-from-file\n")
    dialog.use_key_file(str(key_file))
    dialog.name.setText("other")
    dialog.url.setText("https://example.org")
    assert dialog.add() and key_path("other").read_text() == "sk-from-file"
    assert "sk-" not in dialog.message.text()
    dialog.name.setText("bad")
    dialog.url.setText("ftp://nowhere")
    assert not dialog.add()
    assert "not an http:// or https:// address" in dialog.message.text()
    assert [r.name for r in list_remotes()] == ["box", "other"]
    dialog.saved.setCurrentRow(0)
    with qtbot.waitSignal(dialog.changed):
        dialog.remove_selected()
    assert [r.name for r in list_remotes()] == ["other"] and not key_path("box").exists()
    dialog.grab().save("/tmp/j-remote-dialog.png")


@pytest.fixture
def local_window(qtbot, fresh_home, tmp_path, tiny_model):
    return open_window(qtbot, tmp_path / "chats.db", tiny_model)


def test_chat_on_a_remote_then_switch_back_regenerating_locally_gives_the_same_greedy_reply(
    qtbot, local_window, ingle_server, tiny_model
):
    window = local_window
    add_remote("box", ingle_server, KEY)
    host = ingle_server.split("/")[2]
    panel = window.model_panel
    panel.remotes.fetch()
    qtbot.waitUntil(lambda: not panel.remotes.fetching, timeout=TIMEOUT)
    panel.select(RemoteChoice("box", "tiny", host))
    assert not panel.n_ctx.isEnabled() and not panel.fit.isEnabled()  # the server loads its model its own way
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT):
        panel.load_button.click()
    assert window.bridge.remote is not None
    assert window.model_label.text() == f"tiny · remote on {host}"
    assert not window.bridge.host.alive or window.bridge.host.pid  # the child stays for local models
    new_chat(window, temperature=0, max_tokens=12, logit_bias=((2, -100.0),))
    window.store.set_system_prompt(window.conversation, "You are terse.")
    window.inspector.show("probabilities")
    remote = send_and_wait(qtbot, window, "Hello there")
    assert remote.content and remote.status == "done"
    probs = window.inspector.probabilities
    assert probs.tokens and all(t.logprob is not None and t.alternatives for t in probs.tokens)
    probs.select(0)
    assert "← chosen" in "".join(probs.alternatives.item(i).text() for i in range(probs.alternatives.count()))
    # the visualizers that need logits or the KV cache say so plainly
    window.inspector.show("context")
    qtbot.waitUntil(lambda: "needs a local model" in window.inspector.context_bar.note, timeout=TIMEOUT)
    window.resize(1100, 700)
    window.grab().save("/tmp/j-remote-chat.png")
    window.inspector.show("probabilities")
    window.grab().save("/tmp/j-remote-probabilities.png")
    # continuing needs a local model: said in the status bar, nothing is sent
    window.continue_reply(remote.id)
    assert "needs a local model" in window.statusBar().currentMessage() and not window.bridge.busy
    # back to the local engine child: the same greedy reply as a second branch
    Library().import_file(tiny_model, link=True, name="tiny-local")
    panel.refresh()
    panel.select("tiny-local")
    assert panel.n_ctx.isEnabled() and panel.gpu_layers.isEnabled()
    panel.fit.setChecked(True)  # fitting automatically still greys out what it picks
    assert panel.n_ctx.isEnabled() and not panel.gpu_layers.isEnabled()
    panel.fit.setChecked(False)
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT):
        panel.load_button.click()
    assert window.bridge.remote is None
    with qtbot.waitSignal(window.reply_finished, timeout=TIMEOUT) as blocker:
        window.regenerate(remote.id)
    local = window.store.message(blocker.args[0])
    assert local.id != remote.id and local.content == remote.content


def test_stop_on_a_remote_keeps_the_partial_reply_stopped(qtbot, fresh_home, tmp_path, ingle_server):
    window = MainWindow(store=ConversationStore(tmp_path / "c.db"), start_engine=False)
    qtbot.addWidget(window)
    add_remote("box", ingle_server, KEY)
    choose(window, qtbot, RemoteChoice("box", "tiny", ingle_server.split("/")[2]))
    new_chat(window, temperature=0, max_tokens=400, logit_bias=((2, -100.0), (4, -100.0)))
    after_tokens(window, 3, window.stop)
    reply = send_and_wait(qtbot, window, "Count")
    assert reply.status == "stopped" and reply.content
    assert not window.bridge.host.alive  # no engine child was needed


def test_a_cut_stream_and_a_garbage_server_lose_nothing_and_say_what_happened(
    qtbot, fresh_home, tmp_path, fake
):
    chunks = [delta("Once"), delta(" upon"), delta(" a"), delta(" time")]
    cut = fake({"/v1/chat/completions": lambda h: sse(h, chunks, cut_after=2)})
    add_remote("cut", cut.url)
    window = MainWindow(store=ConversationStore(tmp_path / "c.db"), start_engine=False)
    qtbot.addWidget(window)
    choose(window, qtbot, RemoteChoice("cut", "m", cut.url.split("/")[2]))
    new_chat(window, top_k=5)
    window.store.set_system_prompt(window.conversation, "Be brief.")
    first = send_and_wait(qtbot, window, "story")
    sent = json.loads(cut.seen[-1][3])  # the system prompt and the samplers reach the server
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "story"},
    ]
    assert sent["top_k"] == 5 and sent["stream"] is True
    assert first.content == "Once upon" and first.status == "interrupted"
    assert "cut the reply off midway" in window.fault_banner.label.text()
    # the extra sampler fields an unknown server may ignore are shown, not dropped
    assert (
        not window.info_banner.isHidden()
        and "extra fields it may ignore: top_k" in window.info_banner.label.text()
    )

    def garbage(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        h.wfile.write(b"data: <html>oops</html>\n\n")

    cut.plan["/v1/chat/completions"] = garbage
    second = send_and_wait(qtbot, window, "again")
    assert "not JSON" in window.fault_banner.label.text() and not window.fault_banner.isHidden()
    path = window.store.path(window.conversation)
    assert [m.content for m in path if m.role == "user"] == ["story", "again"]
    assert second.status == "interrupted"
    # a server that is down: the load fails with one clear line and the remote model stays chosen
    cut.shutdown()
    cut.server_close()
    add_remote("gone", f"http://127.0.0.1:{free_port()}")
    window.load_remote(RemoteChoice("gone", "m", "x"))
    qtbot.waitUntil(lambda: "Cannot reach the server" in window.fault_banner.label.text(), timeout=TIMEOUT)
    assert window.bridge.remote is not None and window.bridge.remote.host == cut.url.split("/")[2]


def test_a_remote_engine_answers_every_engine_method_the_gui_may_call():
    """The bridge hands the visualizers whichever engine is current: each method exists, and those that need
    logits or the KV cache raise NeedsLocalModel (shown in the dock), never AttributeError."""
    from engine.interface import METHODS
    from engine.remote import NeedsLocalModel, RemoteEngine

    engine = RemoteEngine("http://127.0.0.1:9")
    assert sorted(m for m in METHODS if not callable(getattr(engine, m, None))) == []
    for call in (
        lambda: engine.attention("x"),
        lambda: engine.token_neighbours(1),
        engine.embedding_projection,
    ):
        with pytest.raises(NeedsLocalModel, match="needs a local model: the server at 127.0.0.1:9"):
            call()
    engine.close()


def test_bench_remote_times_the_engine_and_the_direct_client_on_a_real_server(
    ingle_server, fresh_home, tmp_path
):
    import os
    import subprocess
    import sys

    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    env = dict(os.environ, INGLE_HOME=str(fresh_home))
    out = tmp_path / "bench.json"
    run = [sys.executable, "-m", "app.cli", "bench", "--remote", ingle_server, "--api-key-file", str(key_file),
           "--gen-tokens", "12", "--reps", "2", "--warmup", "0", "--json", str(out)]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| RemoteEngine.complete |" in done.stdout and "Overhead:" in done.stdout
    figures = json.loads(out.read_text())
    assert len(figures["direct_tok_s"]) == len(figures["engine_tok_s"]) == 2
    assert all(rate > 0 for rate in figures["direct_tok_s"] + figures["engine_tok_s"])
    assert figures["server_kind"] == "ingle" and KEY not in done.stdout + done.stderr
    dead = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--remote", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert dead.returncode == 2 and dead.stderr.startswith("ingle: error: Cannot reach the server")
    bad = subprocess.run(run[:8] + ["--gen-tokens", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "gen_tokens" in bad.stderr and "Traceback" not in bad.stderr


def test_a_damaged_remotes_file_is_one_greyed_line_in_the_picker_and_an_error_in_the_dialog(
    qtbot, fresh_home
):
    from engine.remotes import remotes_path

    remotes_path().parent.mkdir(parents=True, exist_ok=True)
    remotes_path().write_text("{not json")
    panel = ModelPanel(Library())
    qtbot.addWidget(panel)
    items = listed(qtbot, panel)
    assert len(items) == 1 and not items[0][1] and "not reachable" in items[0][0]
    assert "Cannot read the list of remote servers" in panel.model_box.itemData(0, 3)
    dialog = panel.open_remotes()
    assert "Cannot read the list of remote servers" in dialog.message.text() and dialog.saved.count() == 0
    dialog.close()
