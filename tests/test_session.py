"""The chat session's state machine with a real in-process engine and a real SQLite store: no Qt, no qtbot."""

from __future__ import annotations

import threading

import pytest

from engine.conversations import ConversationStore
from engine.errors import EngineDied
from engine.events import ReplyDone, StopReason, Token
from engine.session import ChatSession, Phase, SessionError
from engine.settings import SamplingSettings

GREEDY = SamplingSettings(temperature=0, max_tokens=12, logit_bias=((2, float("-inf")), (4, float("-inf"))))


@pytest.fixture
def engine(tiny_runtime):
    return tiny_runtime


@pytest.fixture
def store(tmp_path):
    s = ConversationStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def run_turn(engine, session, turn, sampling=GREEDY, stop_after: int | None = None):
    """Stream a turn's events into the session (as the window does), optionally pressing Stop midway."""
    seen = 0
    for ev in engine.chat(list(turn.messages), sampling, continue_last=turn.continue_last):
        session.on_event(ev)
        if isinstance(ev, Token):
            seen += 1
            if stop_after is not None and seen == stop_after:
                engine.cancel()
    if session.phase is Phase.STREAMING:
        session.stopped_without_reply()
    return session.store.message(turn.reply)


def test_send_streams_into_a_stored_reply_and_titles_the_chat(engine, store):
    conv = store.create()
    session = ChatSession(store, conv.id)
    turn = session.send("Hello there\nsecond line")
    assert session.phase is Phase.STREAMING and not turn.continue_last
    assert [m.role for m in turn.messages] == ["user"] and turn.messages[-1].content.startswith("Hello")
    reply = run_turn(engine, session, turn)
    assert session.phase is Phase.IDLE
    assert reply.status == "done" and reply.content and reply.stats["generated"] == 12
    assert store.get(conv.id).title == "Hello there"
    assert [m.role for m in store.path(conv.id)] == ["user", "assistant"]


def test_a_second_action_while_streaming_is_refused(engine, store):
    session = ChatSession(store, store.create().id)
    session.send("one")
    with pytest.raises(SessionError, match="being written"):
        session.send("two")


def test_stop_keeps_the_partial_reply_as_stopped(engine, store):
    session = ChatSession(store, store.create().id)
    turn = session.send("Tell me a long story")
    reply = run_turn(engine, session, turn, SamplingSettings(temperature=0, max_tokens=200), stop_after=3)
    assert reply.status == "stopped" and reply.stats["stop"] == StopReason.CANCELLED.value
    assert 0 < reply.stats["generated"] < 200


def test_regenerate_keeps_both_replies_as_branches(engine, store):
    conv = store.create()
    session = ChatSession(store, conv.id)
    first = run_turn(engine, session, session.send("Question"))
    second = run_turn(engine, session, session.regenerate(first.id), SamplingSettings(seed=3, max_tokens=8))
    assert [m.id for m in store.siblings(first.id)] == [first.id, second.id]
    assert store.path(conv.id)[-1].id == second.id


def test_edit_makes_a_new_branch_and_the_old_one_stays(engine, store):
    conv = store.create()
    session = ChatSession(store, conv.id)
    first = run_turn(engine, session, session.send("Question one"))
    user_one = store.message(first.parent)
    edited = run_turn(engine, session, session.send("Question two", editing=user_one.id))
    assert [m.content for m in store.siblings(user_one.id)] == ["Question one", "Question two"]
    assert [m.content for m in store.path(conv.id)][0] == "Question two" and edited.status == "done"
    store.select(first.id)
    assert store.path(conv.id)[-1].id == first.id  # the old branch is still reachable


def test_continue_grows_the_same_message(engine, store):
    session = ChatSession(store, store.create().id)
    cut = run_turn(engine, session, session.send("Go"), SamplingSettings(temperature=0, max_tokens=4))
    turn = session.continue_reply(cut.id)
    assert turn.continue_last and turn.messages[-1].role == "assistant"
    assert turn.messages[-1].content == cut.content
    grown = run_turn(engine, session, turn)
    assert (
        grown.id == cut.id and grown.content.startswith(cut.content) and len(grown.content) > len(cut.content)
    )


def test_engine_failure_keeps_the_partial_reply_as_interrupted(engine, store, tmp_path):
    session = ChatSession(store, store.create().id, save_interval=0.0)
    turn = session.send("Write a lot")
    with pytest.raises(EngineDied):
        for i, ev in enumerate(engine.chat(list(turn.messages), SamplingSettings(max_tokens=50))):
            session.on_event(ev)
            if i == 4:
                raise EngineDied("The engine process was killed by signal SIGKILL.", -9)
    partial = session.text
    assert session.fail() == turn.reply
    stored = store.message(turn.reply)
    assert stored.status == "interrupted" and stored.content == partial and partial
    engine.cancel()  # the abandoned generator is closed by the garbage collector; nothing else runs


def test_saves_while_streaming_so_a_kill_loses_little(engine, store):
    now = [0.0]
    session = ChatSession(store, store.create().id, save_interval=0.5, clock=lambda: now[0])
    turn = session.send("Count")
    texts = []
    for ev in engine.chat(list(turn.messages), GREEDY):
        if isinstance(ev, ReplyDone):
            break  # the app is killed before the reply ends
        now[0] += 0.2
        session.on_event(ev)
        texts.append(session.text)
    stored = store.message(turn.reply)
    # a token every 0.2 s of the (fake) clock, a save every 0.5 s: what is on disk is at most 2 tokens old
    assert stored.status == "streaming" and stored.content
    assert stored.content in texts[-3:]


def test_cancel_from_another_thread_ends_the_turn(engine, store):
    session = ChatSession(store, store.create().id)
    turn = session.send("Long")
    timer = threading.Timer(0.05, engine.cancel)
    timer.start()
    reply = run_turn(engine, session, turn, SamplingSettings(temperature=0, max_tokens=5000))
    timer.cancel()
    assert reply.status in ("stopped", "done") and session.phase is Phase.IDLE
