"""The conversation store: message tree, branches, settings, presets, export/import, crash recovery."""

from __future__ import annotations

import pytest

from engine.conversations import ConversationError, ConversationStore
from engine.errors import SettingsError
from engine.settings import SamplingSettings


@pytest.fixture
def store(tmp_path):
    s = ConversationStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def test_messages_form_a_path_and_survive_reopening(tmp_path):
    db = tmp_path / "c.sqlite3"
    store = ConversationStore(db)
    conv = store.create("Hello")
    u = store.add_message(conv.id, None, "user", "hi")
    a = store.add_message(conv.id, u.id, "assistant", "hello")
    store.close()
    again = ConversationStore(db)
    assert [(m.role, m.content) for m in again.path(conv.id)] == [("user", "hi"), ("assistant", "hello")]
    assert again.leaf(conv.id) == a.id
    assert again.path(conv.id)[0].id == u.id


def test_regenerate_and_edit_keep_every_branch(store):
    conv = store.create()
    u1 = store.add_message(conv.id, None, "user", "q")
    a1 = store.add_message(conv.id, u1.id, "assistant", "first")
    a2 = store.add_message(conv.id, u1.id, "assistant", "second")
    assert [m.content for m in store.siblings(a1.id)] == ["first", "second"]
    assert store.path(conv.id)[-1].id == a2.id
    store.select(a1.id)
    assert store.path(conv.id)[-1].id == a1.id
    # editing the user message = a sibling user message with its own reply
    u2 = store.add_message(conv.id, None, "user", "q edited")
    store.add_message(conv.id, u2.id, "assistant", "reply to edit")
    assert [m.content for m in store.path(conv.id)] == ["q edited", "reply to edit"]
    store.select(u1.id)  # follows the newest child down
    assert [m.content for m in store.path(conv.id)] == ["q", "second"]


def test_streamed_reply_left_streaming_reads_as_interrupted_after_restart(tmp_path):
    db = tmp_path / "c.sqlite3"
    store = ConversationStore(db)
    conv = store.create()
    u = store.add_message(conv.id, None, "user", "q")
    a = store.add_message(conv.id, u.id, "assistant", "", status="streaming")
    store.update_message(a.id, "partial rep")
    # no close: like a killed app
    again = ConversationStore(db)
    msg = again.message(a.id)
    assert (msg.content, msg.status) == ("partial rep", "interrupted")


def test_delete_message_moves_to_sibling_or_parent(store):
    conv = store.create()
    u = store.add_message(conv.id, None, "user", "q")
    a1 = store.add_message(conv.id, u.id, "assistant", "one")
    a2 = store.add_message(conv.id, u.id, "assistant", "two")
    store.delete_message(a2.id)
    assert store.leaf(conv.id) == a1.id
    store.delete_message(a1.id)
    assert store.leaf(conv.id) == u.id
    with pytest.raises(ConversationError, match="does not exist"):
        store.message(a1.id)


def test_list_search_pin_rename_delete_undo(store):
    a = store.create("Alpha")
    b = store.create("Beta")
    store.add_message(b.id, None, "user", "talk about zebras")
    store.set_pinned(a.id, True)
    assert [c.title for c in store.conversations()] == ["Alpha", "Beta"]
    assert [c.title for c in store.conversations("zebra")] == ["Beta"]
    store.rename(b.id, "Zebras")
    assert store.get(b.id).title == "Zebras"
    with pytest.raises(ConversationError, match="empty"):
        store.rename(b.id, "  ")
    store.delete(a.id)
    assert [c.title for c in store.conversations()] == ["Zebras"]
    store.undelete(a.id)
    assert len(store.conversations()) == 2
    store.delete(a.id)
    assert store.purge() == 1
    with pytest.raises(ConversationError):
        store.get(a.id)


def test_settings_per_conversation_and_presets(store):
    conv = store.create()
    assert store.settings(conv.id) == SamplingSettings()
    store.set_settings(conv.id, SamplingSettings(temperature=0.3, stop=("END",)))
    assert store.settings(conv.id).temperature == 0.3
    assert store.settings(conv.id).stop == ("END",)
    assert {"Precise", "Balanced", "Creative"} <= set(store.presets())
    store.save_preset("Mine", SamplingSettings(top_k=7))
    store.rename_preset("Mine", "Ours")
    assert store.presets()["Ours"].top_k == 7
    with pytest.raises(SettingsError, match="built-in"):
        store.save_preset("Precise", SamplingSettings())
    with pytest.raises(SettingsError, match="no user preset"):
        store.delete_preset("Nope")
    store.delete_preset("Ours")
    assert "Ours" not in store.presets()


def test_bad_role_status_and_parent_are_refused(store):
    c1, c2 = store.create(), store.create()
    m = store.add_message(c1.id, None, "user", "x")
    with pytest.raises(ConversationError, match="role"):
        store.add_message(c1.id, None, "robot", "x")
    with pytest.raises(ConversationError, match="status"):
        store.add_message(c1.id, None, "user", "x", status="weird")
    with pytest.raises(ConversationError, match="another conversation"):
        store.add_message(c2.id, m.id, "assistant", "x")


def test_json_export_import_round_trip_and_markdown(store):
    conv = store.create("Trip", system_prompt="Be brief.", settings=SamplingSettings(top_k=3))
    u = store.add_message(conv.id, None, "user", "q")
    store.add_message(conv.id, u.id, "assistant", "a1")
    store.add_message(conv.id, u.id, "assistant", "a2", status="interrupted")
    data = store.export_json(conv.id)
    copy = store.import_json(data)
    assert copy.title == "Trip" and copy.system_prompt == "Be brief."
    assert store.settings(copy.id).top_k == 3
    assert [m.content for m in store.path(copy.id)] == ["q", "a2"]
    assert len(store.siblings(store.path(copy.id)[-1].id)) == 2
    md = store.export_markdown(copy.id)
    assert "# Trip" in md and "## Assistant *(interrupted)*" in md and "a2" in md
    with pytest.raises(ConversationError, match="not an Ingle conversation"):
        store.import_json({"format": "other"})
    with pytest.raises(ConversationError, match="damaged"):
        store.import_json({"format": data["format"], "messages": [{"id": 1}]})
