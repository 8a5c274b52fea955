"""Instant reopen: a conversation's saved KV cache is reused after a restart only when it matches the model, the
load settings, the adapters and the conversation; anything else is deleted, never trusted."""

from __future__ import annotations

import os
import time

import pytest

from engine.events import Message, ReplyDone
from engine.kv_store import MAGIC, StateFolder
from engine.settings import CacheType, LoadSettings, SamplingSettings

GREEDY = SamplingSettings(temperature=0.0, max_tokens=8, seed=1)
FIRST = [Message("system", "You are terse."), Message("user", "Tell me about cats and the moon, at length.")]


def _reply(engine, messages) -> ReplyDone:
    return [e for e in engine.chat(messages, GREEDY) if isinstance(e, ReplyDone)][-1]


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    """A conversation with one reply, its state saved by one engine child that then exits."""
    from engine.host import EngineHost

    path = tmp_path_factory.mktemp("states") / "conversation-1.ingle-kv"
    with EngineHost() as host:
        list(host.load(tiny_model, LoadSettings(n_ctx=512)))
        done = _reply(host, FIRST)
        conversation = [*FIRST, Message("assistant", done.text)]
        result = host.save_state(str(path), conversation)
    assert result.tokens > 20 and path.stat().st_size > result.bytes > 0
    return path, conversation, path.read_bytes()


def _fresh_copy(saved, tmp_path):
    path, conversation, data = saved
    copy = tmp_path / path.name
    copy.write_bytes(data)
    return copy, conversation


def test_a_saved_state_after_a_restart_gives_the_same_next_tokens(saved, tiny_model, tmp_path):
    from engine.host import EngineHost
    from engine.runtime import Runtime

    path, conversation = _fresh_copy(saved, tmp_path)
    follow_up = [*conversation, Message("user", "And dogs?")]
    with EngineHost() as host:  # a new engine child: nothing of the first one is left
        list(host.load(tiny_model, LoadSettings(n_ctx=512)))
        restored = host.restore_state(str(path), conversation)
        assert restored.reason == "" and restored.tokens > 20
        reopened = _reply(host, follow_up)
    fresh = Runtime()
    list(fresh.load(tiny_model, LoadSettings(n_ctx=512)))
    prefilled = _reply(fresh, follow_up)
    fresh.close()
    assert reopened.tokens == prefilled.tokens and len(reopened.tokens) > 0
    # only the new message was evaluated
    assert reopened.stats.reused_tokens == restored.tokens
    assert reopened.stats.evaluated_tokens == prefilled.stats.prompt_tokens - restored.tokens
    assert prefilled.stats.evaluated_tokens == prefilled.stats.prompt_tokens
    assert path.exists()


@pytest.fixture(scope="module")
def runtime(tiny_model):
    from engine.runtime import Runtime

    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
    yield rt
    rt.close()


def _refused(rt, path, conversation, why: str) -> None:
    result = rt.restore_state(str(path), conversation)
    assert result.tokens == 0 and result.deleted, result
    assert why in result.reason and not path.exists()
    assert rt.cached_tokens == [] and rt.positions() == (-1, -1)  # nothing of it was kept


def test_a_changed_conversation_is_refused_and_deleted(saved, runtime, tmp_path):
    path, conversation = _fresh_copy(saved, tmp_path)
    edited = [conversation[0], Message("user", "Tell me about dogs instead."), conversation[2]]
    _refused(runtime, path, edited, "the conversation changed")


def test_another_model_is_refused_and_deleted(saved, models_dir, tmp_path):
    from gguf_factory import write_tiny_llama

    from engine.runtime import Runtime

    other = write_tiny_llama(models_dir / "other-seed.gguf", seed=7)
    path, conversation = _fresh_copy(saved, tmp_path)
    rt = Runtime()
    list(rt.load(other, LoadSettings(n_ctx=512)))
    try:
        _refused(rt, path, conversation, "another model file")
    finally:
        rt.close()


@pytest.mark.parametrize(
    "settings, why",
    [(LoadSettings(n_ctx=1024), "other load settings"),
     (LoadSettings(n_ctx=512, type_k=CacheType.F32), "other load settings")],
)  # fmt: skip
def test_other_settings_are_refused_and_deleted(saved, tiny_model, tmp_path, settings, why):
    from engine.runtime import Runtime

    path, conversation = _fresh_copy(saved, tmp_path)
    rt = Runtime()
    list(rt.load(tiny_model, settings))
    try:
        _refused(rt, path, conversation, why)
    finally:
        rt.close()


def test_threads_do_not_invalidate_a_state(saved, tiny_model, tmp_path):
    from engine.runtime import Runtime

    path, conversation = _fresh_copy(saved, tmp_path)
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512, n_threads=1, use_mmap=False)))
    try:
        assert rt.restore_state(str(path), conversation).tokens > 20
    finally:
        rt.close()


def test_an_adapter_changes_the_state(saved, tiny_model, tmp_path):
    from gguf_factory import write_lora_adapter

    from engine.runtime import Runtime

    adapter = write_lora_adapter(tmp_path / "a.gguf")
    path, conversation = _fresh_copy(saved, tmp_path)
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512), adapters=[(str(adapter), 1.0)]))
    try:
        _refused(rt, path, conversation, "other adapters")
    finally:
        rt.close()


@pytest.mark.parametrize("damage", ["magic", "header", "data", "truncated", "tokens", "empty"])
def test_a_damaged_state_is_refused_and_deleted(saved, runtime, tmp_path, damage):
    path, conversation = _fresh_copy(saved, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[:8] = b"NOTASTAT"
    elif damage == "header":
        data[20:40] = b"\xff" * 20
    elif damage == "data":
        data[-100] ^= 0xFF
    elif damage == "truncated":
        del data[len(data) // 2 :]
    elif damage == "tokens":  # a valid file whose token list is not what the cache holds
        data = bytearray(bytes(data).replace(b'"tokens": [', b'"tokens": [999999, ', 1))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    result = runtime.restore_state(str(path), conversation)
    assert result.tokens == 0 and result.deleted and not path.exists(), result
    assert runtime.cached_tokens == []


def test_a_missing_state_is_not_an_error(runtime, tmp_path):
    result = runtime.restore_state(str(tmp_path / "none.ingle-kv"), FIRST)
    assert result.tokens == 0 and result.reason == "no saved state" and not result.deleted


def test_saving_an_empty_cache_removes_the_old_state(runtime, tmp_path):
    path = tmp_path / "conversation-9.ingle-kv"
    path.write_bytes(MAGIC + b"old")
    runtime.keep_prefix(0)
    assert runtime.save_state(str(path), None).tokens == 0 and not path.exists()


def test_lru_eviction_keeps_the_cap(runtime, tmp_path):
    folder = StateFolder(tmp_path / "states", cap=1 << 40)
    for cid in range(4):
        runtime.evaluate(
            runtime.tokenize(f"conversation {cid} " + "words " * (20 + 10 * cid), add_special=True)
        )
        runtime.save_state(str(folder.path_for(cid)))
        past = time.time() - 100 + cid  # conversation 0 least recently used
        os.utime(folder.path_for(cid), (past, past))
    sizes = {cid: folder.path_for(cid).stat().st_size for cid in range(4)}
    assert folder.usage() == sum(sizes.values())
    assert runtime.restore_state(str(folder.path_for(1))).tokens > 0  # using 1 makes it the most recent
    folder.cap = sizes[1] + sizes[3] + sizes[2] - 1  # three do not fit: 0 then 2 go
    removed = folder.evict()
    assert [p.name for p in removed] == ["conversation-0.ingle-kv", "conversation-2.ingle-kv"]
    assert folder.usage() <= folder.cap and folder.path_for(1).exists() and folder.path_for(3).exists()
    folder.cap = 1  # nothing fits: even the one just saved goes, last
    assert [p.name for p in folder.evict(keep=folder.path_for(3))][-1] == "conversation-3.ingle-kv"
    assert folder.usage() == 0


def test_the_cap_is_kept_in_the_folder_and_a_bad_one_is_ignored(tmp_path):
    folder = StateFolder(tmp_path / "states")
    assert folder.cap == 2 << 30
    (tmp_path / "states").mkdir()
    (tmp_path / "states" / "keep.ingle-kv").write_bytes(b"x" * 1000)
    assert folder.set_cap(10) == [tmp_path / "states" / "keep.ingle-kv"]
    assert StateFolder(tmp_path / "states").cap == 10
    (tmp_path / "states" / "cap.json").write_text('{"cap_bytes": "lots"}')
    assert StateFolder(tmp_path / "states").cap == 2 << 30
