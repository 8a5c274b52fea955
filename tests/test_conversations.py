"""The conversation store: message tree, branches, settings, presets, export/import, crash recovery."""

from __future__ import annotations

import json
import sqlite3

import pytest

from engine.conversations import (
    EXPORT_FORMAT,
    MAX_IMPORT_BYTES,
    ConversationError,
    ConversationStore,
    StoreDamaged,
    open_store,
)
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
    with pytest.raises(ConversationError, match="message 1: 'role'"):
        store.import_json({"format": data["format"], "messages": [{"id": 1}]})


def _export(messages, **extra) -> dict:
    return {"format": EXPORT_FORMAT, "title": "Imported", "messages": messages, **extra}


GOOD = [
    {"id": 10, "parent": None, "role": "user", "content": "q", "stats": {}},
    {"id": 11, "parent": 10, "role": "assistant", "content": "a", "stats": {"n_past": 3, "stop": "eos"}},
]
DEEP: dict = {}
_node = DEEP
for _ in range(40):
    _node["x"] = {}
    _node = _node["x"]
MALFORMED = {
    "stats not an object": _export([GOOD[0], {**GOOD[1], "stats": "oops"}]),
    "stats nested deep": _export([GOOD[0], {**GOOD[1], "stats": DEEP}]),
    "content a number": _export([GOOD[0], {**GOOD[1], "content": 5}]),
    "unknown role": _export([GOOD[0], {**GOOD[1], "role": "tool"}]),
    "unknown status": _export([GOOD[0], {**GOOD[1], "status": "exploded"}]),
    "parent unknown": _export([GOOD[0], {**GOOD[1], "parent": 99}]),
    "parent is itself": _export([{**GOOD[0], "parent": 10}]),
    "duplicate id": _export([GOOD[0], {**GOOD[1], "id": 10}]),
    "id a string": _export([GOOD[0], {**GOOD[1], "id": "11"}]),
    "messages not a list": _export({"id": 1}),
    "leaf unknown": _export(GOOD, leaf=12),
    "title an object": _export(GOOD, title={"a": 1}),
    "settings wrong": _export(GOOD, settings={"temperature": "hot"}),
    "created not a number": _export([GOOD[0], {**GOOD[1], "created": "yesterday"}]),
    "message not an object": _export([GOOD[0], ["a"]]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_import_is_refused_whole(store, case):
    keep = store.create("Existing")
    store.add_message(keep.id, None, "user", "x")
    before = store._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    with pytest.raises(ConversationError):
        store.import_json(MALFORMED[case])
    assert [c.title for c in store.conversations()] == ["Existing"]  # nothing half-imported
    assert store._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1
    assert store._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == before


def test_a_good_import_keeps_its_stats_and_a_store_with_bad_rows_still_reads(store):
    conv = store.import_json(_export(GOOD, leaf=11))
    assert [m.stats for m in store.path(conv.id)] == [{}, {"n_past": 3, "stop": "eos"}]
    # rows written by an older version that accepted anything: read as "no stats", not a crash
    store._db.execute("UPDATE messages SET stats='\"oops\"' WHERE conversation=?", (conv.id,))
    store._db.execute("UPDATE messages SET stats='{broken' WHERE role='user'")
    assert [m.stats for m in store.path(conv.id)] == [{}, {}]
    assert store.export_json(conv.id)["messages"][1]["stats"] == {}


def test_import_file_refuses_deep_nesting_bad_encoding_and_huge_files(store, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(f'{{"format": "{EXPORT_FORMAT}", "messages": {"[" * 200_000 + "]" * 200_000}}}')
    with pytest.raises(ConversationError, match="deep.json.*nested too deeply"):
        store.import_file(deep)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"title": "caf\xe9"}')
    with pytest.raises(ConversationError, match="Cannot read latin.json"):
        store.import_file(latin)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_IMPORT_BYTES + 1)  # sparse: refused by its size, before anything is read
    with pytest.raises(ConversationError, match="huge.json: it is 256 MiB"):
        store.import_file(huge)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_export(GOOD, leaf=11)))
    assert store.import_file(good).title == "Imported"
    assert store.conversations()[0].title == "Imported"


def test_message_delete_undo_restores_the_branch_and_purge_removes_it(store):
    conv = store.create("c")
    u = store.add_message(conv.id, None, "user", "q")
    a1 = store.add_message(conv.id, u.id, "assistant", "a1")
    f = store.add_message(conv.id, a1.id, "user", "follow")
    ticket = store.delete_message(a1.id)
    assert [m.id for m in store.path(conv.id)] == [u.id]
    with pytest.raises(ConversationError):
        store.message(f.id)  # hidden with its parent
    newer = store.add_message(conv.id, u.id, "assistant", "a2")  # work goes on before the undo
    assert store.undelete_message(ticket) == conv.id
    assert [m.id for m in store.path(conv.id)] == [u.id, a1.id, f.id]
    assert [m.id for m in store.siblings(a1.id)] == [a1.id, newer.id]
    with pytest.raises(ConversationError, match="no longer be undone"):
        store.undelete_message(ticket)
    store.delete_message(f.id)
    store.purge()
    assert store._db.execute("SELECT COUNT(*) FROM messages WHERE id=?", (f.id,)).fetchone()[0] == 0


def test_a_store_from_before_message_undo_is_upgraded(tmp_path):
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, "
        "updated REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0, "
        "system_prompt TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL DEFAULT '{}', "
        "model TEXT NOT NULL DEFAULT '', leaf INTEGER);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL, parent INTEGER, "
        "role TEXT NOT NULL, content TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'done', "
        "stats TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);"
        "INSERT INTO conversations VALUES (1, 'old', 0, 0, 0, 0, '', '{}', '', 1);"
        "INSERT INTO messages VALUES (1, 1, NULL, 'user', 'hello', 'done', '{}', 0);"
    )
    con.commit()
    con.close()
    store = ConversationStore(db)
    assert [m.content for m in store.path(1)] == ["hello"]
    store.undelete_message(store.delete_message(1))
    assert [m.content for m in store.path(1)] == ["hello"]


def _filled_store(path, n: int = 60):
    store = ConversationStore(path)
    for i in range(n):
        conv = store.create(f"chat {i}")
        u = store.add_message(conv.id, None, "user", f"question {i} " + "x" * 400)
        store.add_message(conv.id, u.id, "assistant", f"answer {i} " + "y" * 400)
        store.set_tool_servers(conv.id, ["time"])
        store.set_tool_choice(conv.id, "required")
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def test_a_corrupt_store_is_kept_aside_and_what_can_be_read_is_recovered(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    _filled_store(db)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 12 * page
    data[8 * page : 9 * page] = bytes(range(256)) * 16  # one page of garbage in the middle
    db.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged):
        ConversationStore(db)
    store, recovery = open_store(db)
    assert recovery is not None and recovery.damaged.exists()
    assert recovery.damaged.read_bytes() == bytes(data)  # the damaged file is kept as it was
    assert recovery.damaged.parent == tmp_path and ".damaged-" in recovery.damaged.name
    assert 0 < recovery.conversations <= 60 and recovery.messages > 0
    titles = {c.title for c in store.conversations()}
    assert len(titles) == recovery.conversations
    for conv in store.conversations():
        store.path(conv.id)  # every recovered conversation opens
        assert store.tool_choice(conv.id) == "required"  # with its tool choice
    # and the servers it enabled, where their rows could be read
    assert sum(store.tool_servers(c.id) == ["time"] for c in store.conversations()) > 0
    assert "kept, unchanged, as" in recovery.describe()
    store.close()
    again, second = open_store(db)  # the new file is healthy: no second recovery
    assert second is None and len(again.conversations()) == recovery.conversations


def test_a_store_that_is_not_a_database_starts_empty_and_is_never_overwritten(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    db.write_bytes(b"this is not sqlite at all" * 100)
    (tmp_path / "conversations.sqlite3-wal").write_bytes(b"junk wal")
    stores = []
    for _ in range(2):  # two damaged starts in the same second: two kept files, none overwritten
        store, recovery = open_store(db)
        assert recovery is not None and recovery.conversations == 0 and store.conversations() == []
        stores.append(recovery.damaged)
        store.close()
        db.write_bytes(b"damaged again" * 100)
    assert stores[0] != stores[1] and stores[0].read_bytes() == b"this is not sqlite at all" * 100
    assert (tmp_path / f"{stores[0].name}-wal").read_bytes() == b"junk wal"


def test_a_locked_store_is_reported_and_left_alone(tmp_path):
    db = tmp_path / "conversations.sqlite3"
    _filled_store(db, 2)
    before = db.read_bytes()
    holder = sqlite3.connect(db, isolation_level=None, timeout=0)
    holder.execute("PRAGMA journal_mode=DELETE")  # out of WAL mode, so a writer's lock keeps readers out
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConversationError, match="another Ingle is running"):
            open_store(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert db.read_bytes() == before or len(ConversationStore(db).conversations()) == 2


def test_values_of_the_wrong_type_in_the_file_still_read(store):
    conv = store.create("fine")
    msg = store.add_message(conv.id, None, "user", "hello")
    # SQLite keeps any type in any column: what a hand edit or a recovered page can leave behind
    store._db.execute(
        "UPDATE conversations SET title=42, system_prompt=X'C3A9', created='x' WHERE id=?", (conv.id,)
    )
    store._db.execute("UPDATE messages SET content=7, created='soon' WHERE id=?", (msg.id,))
    [got] = store.conversations()
    assert (got.title, got.system_prompt, got.created) == ("42", "é", 0.0)
    assert store.message(msg.id).content == "7" and store.message(msg.id).created == 0.0
