"""Continuous batching (engine/slots.py): several requests in one context, decoded together, each equal to the
same request made alone; cancel, prefix reuse, limits; through the host, beside an ordinary chat."""

from __future__ import annotations

import json
import threading

import pytest

from engine.errors import ContextFullError, EngineError, SettingsError
from engine.events import Message, PromptEvaluated, ReplyDone, StopReason, Token
from engine.host import EngineHost
from engine.runtime import Runtime
from engine.settings import LoadSettings, SamplingSettings
from engine.textstream import common_prefix

NO_EOS = ((2, float("-inf")), (4, float("-inf")))
# Batched kernels may round differently from single-sequence ones: a greedy reply may then take the other of
# two nearly tied candidates. Divergence is accepted only at a token whose top two logprobs are this close.
# Measured on the starter (Q4_K_M): the quantized matrix kernels for a batch of 4 tokens move a logprob by up
# to ~0.15-0.2 from the one-token kernels over 16 tokens (the same with a split KV cache: it is the weights'
# kernels, not attention across slots); the F32 tiny model agrees exactly.
TIE_GAP = 0.25
TINY_TIE_GAP = 0.01  # the F32 tiny model rounds far less; its random weights make near ties common
PROMPTS = [
    f"Story {i}: the {w} went to the" for i, w in enumerate("cat dog bird fish frog owl bee ant".split())
]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
    rt.start_slots(4, 256)
    yield rt
    rt.close()


def run(stream) -> tuple[list, ReplyDone]:
    events = list(stream)
    assert isinstance(events[-1], ReplyDone)
    return events, events[-1]


def concurrently(fn, args: list) -> list:
    out: list = [None] * len(args)
    errors: list = []

    def work(i: int) -> None:
        try:
            out[i] = fn(args[i])
        except BaseException as err:  # handed to the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return out


def agree(alone: list, batched: ReplyDone, tie_gap: float) -> bool:
    """True when equal; False when they part at a near tie (counted and shown by the caller); fails otherwise."""
    tokens = [e for e in alone if isinstance(e, Token) and e.token_id >= 0]
    ours = list(batched.tokens)
    n = common_prefix([t.token_id for t in tokens], ours)
    if n == len(tokens) == len(ours):
        return True
    assert n < len(tokens), "the batched reply went on after the alone reply ended"
    first, second = tokens[n].alternatives[:2]
    gap = first.logprob - second.logprob
    print(f"parted at token {n}: top two logprobs {first.logprob:.3f} and {second.logprob:.3f}")
    assert gap < tie_gap, f"diverged at token {n} with a clear winner (gap {gap:.3f})"
    return False


def check_against_alone(make_alone, results: list[ReplyDone], label: str, tie_gap: float = TIE_GAP) -> None:
    ties = sum(not agree(make_alone(i), done, tie_gap) for i, done in enumerate(results))
    print(f"{label}: {len(results) - ties}/{len(results)} equal, {ties} parted at a near tie")
    assert ties <= len(results) // 2  # rounding differences part some replies, not most


def test_eight_concurrent_greedy_requests_equal_the_same_requests_alone(tiny):
    greedy = SamplingSettings(temperature=0, max_tokens=24, logit_bias=NO_EOS)
    before = tiny._slots.evaluations
    results = concurrently(lambda p: run(tiny.slot_complete(p, greedy))[1], PROMPTS)
    assert all(
        r.stats.generated_tokens == 24 and r.stats.stop_reason == StopReason.MAX_TOKENS for r in results
    )
    # 8 requests x 24 tokens in 4 slots: batched steps, far fewer than one decode per token
    assert tiny._slots.evaluations - before < 8 * 24 / 2
    assert len({r.tokens for r in results}) > 1  # different prompts, different replies: nothing mixed up
    alone = [list(tiny.complete(p, greedy.replace(top_logprobs=2))) for p in PROMPTS]
    check_against_alone(lambda i: alone[i], results, "tiny, 8 streams", TINY_TIE_GAP)
    assert not any(s.busy for s in tiny.slot_states())
    # nothing leaks between slots: with logprobs, every batched token scores as it does alone
    logged = concurrently(lambda p: list(tiny.slot_complete(p, greedy.replace(top_logprobs=2))), PROMPTS)
    for ours, theirs in zip(logged, alone, strict=True):
        mine, alone_tokens = (
            [e for e in events if isinstance(e, Token) and e.token_id >= 0] for events in (ours, theirs)
        )
        n = common_prefix([t.token_id for t in mine], [t.token_id for t in alone_tokens])
        worst = max(abs(a.logprob - b.logprob) for a, b in zip(mine[:n], alone_tokens[:n], strict=True))
        assert n > 0 and worst < 0.01  # rounding moves a logprob by ~1e-3 here; a leak would move it far more


def test_starter_batched_greedy_chats_equal_the_chats_alone(starter_model):
    rt = Runtime()
    try:
        list(rt.load(starter_model, LoadSettings(n_ctx=512, n_threads=2)))
        rt.start_slots(4, 512)
        questions = ["What is the capital of France?", "Name three colours.", "Count to five.",
                     "Say hello in Spanish.", "What do bees make?", "Why is the sky blue?",
                     "Write a haiku about rain.", "What is 2 + 2?"]  # fmt: skip
        greedy = SamplingSettings(temperature=0, max_tokens=16)
        results = concurrently(lambda q: run(rt.slot_chat([Message("user", q)], greedy))[1], questions)
        alone = greedy.replace(top_logprobs=2)
        check_against_alone(lambda i: list(rt.chat([Message("user", questions[i])], alone)), results,
                            "starter, 8 chats in 4 slots")  # fmt: skip
        assert all(r.text and r.stats.prompt_tokens > 0 for r in results)
    finally:
        rt.close()


def test_sampled_requests_with_a_seed_reproduce(tiny):
    settings = [SamplingSettings(temperature=1.0, top_k=3, seed=seed, max_tokens=20, logit_bias=NO_EOS)
                for seed in (1, 2, 3, 4)]  # fmt: skip
    first = concurrently(lambda s: run(tiny.slot_complete("Once upon a time", s))[1], settings)
    again = concurrently(lambda s: run(tiny.slot_complete("Once upon a time", s))[1], settings)
    alone = [run(tiny.complete("Once upon a time", s))[1] for s in settings]
    same = sum(a.tokens == b.tokens == c.tokens for a, b, c in zip(first, again, alone, strict=True))
    print(f"seeded: {same}/4 reproduced in both batched runs and alone")
    # batched rounding (~1e-3 in a logprob) may, rarely, move a draw across the boundary of two tokens
    assert same >= 3
    assert [r.stats.seed for r in first] == [1, 2, 3, 4]
    assert len({r.tokens for r in first}) > 1  # the seeds matter


def test_cancel_frees_the_slot_before_the_next_step(tiny):
    endless = SamplingSettings(temperature=0, max_tokens=100_000, logit_bias=NO_EOS)
    stream = tiny.slot_complete("a long story", endless)
    seen = 0
    for event in stream:
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                assert sum(s.busy for s in tiny.slot_states()) == 1
                stream.cancel()
        done = event
    assert done.stats.stop_reason == StopReason.CANCELLED and done.stats.generated_tokens < 200
    assert not any(s.busy for s in tiny.slot_states())
    # closing the iterator cancels too, and a request still waiting for a slot can be cancelled
    streams = [tiny.slot_complete(p, endless) for p in PROMPTS[:5]]
    next(streams[0])
    streams[4].cancel()
    *_, waited = list(streams[4])
    assert waited.stats.stop_reason == StopReason.CANCELLED and waited.stats.generated_tokens == 0
    for s in streams[:4]:
        s.close()
    for _ in range(500):
        if not any(s.busy for s in tiny.slot_states()):
            break
        threading.Event().wait(0.01)
    assert not any(s.busy for s in tiny.slot_states())


def test_prefix_reuse_evaluates_only_the_new_tokens(tiny):
    greedy = SamplingSettings(temperature=0, max_tokens=8, logit_bias=NO_EOS)
    first = [Message("user", "Tell me about the sea and its long history of ships.")]
    _, done = run(tiny.slot_chat(first, greedy))
    follow = [*first, Message("assistant", done.text), Message("user", "And rivers?")]
    events, done2 = run(tiny.slot_chat(follow, greedy))
    evaluated = next(e for e in events if isinstance(e, PromptEvaluated))
    tokens = tiny.render_tokens(follow)
    held = tiny.render_tokens(first) + list(done.tokens)
    expected = min(common_prefix(held, tokens), len(tokens) - 1)
    assert evaluated.reused_tokens == expected > len(tiny.render_tokens(first)) // 2
    assert evaluated.evaluated_tokens == len(tokens) - expected == done2.stats.evaluated_tokens
    # and the reply is the one an empty cache gives
    alone = run(tiny.chat(follow, greedy))[1]
    assert alone.tokens == done2.tokens


def test_limits_and_bad_input(tiny, tiny_model):
    with pytest.raises(ContextFullError) as err:
        list(tiny.slot_complete("word " * 400, SamplingSettings(max_tokens=16)))
    assert "plus 16 for the reply" in str(err.value) and "holds 256" in str(err.value)
    # the context of a slot fills mid-reply: the reply stops there
    _, done = run(
        tiny.slot_complete("hi", SamplingSettings(temperature=0, max_tokens=10**5, logit_bias=NO_EOS))
    )
    assert done.stats.stop_reason == StopReason.CONTEXT_FULL and done.stats.n_past == 256
    with pytest.raises(SettingsError, match="logit_bias"):
        tiny.slot_complete("x", SamplingSettings(logit_bias=((10**8, 1.0),)))
    with pytest.raises(EngineError, match="end with a user message"):
        tiny.slot_chat([Message("assistant", "hm")], SamplingSettings())
    schema = '{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}'
    _, done = run(tiny.slot_chat([Message("user", "json")], SamplingSettings(json_schema=schema, max_tokens=40,
                                                                              temperature=0)))  # fmt: skip
    if done.stats.stop_reason == StopReason.EOS:
        assert isinstance(json.loads(done.text)["n"], int)
    else:
        assert done.text.startswith("{")  # cut short by max_tokens, still following the grammar
    rt = Runtime()
    try:
        list(rt.load(tiny_model, LoadSettings(n_ctx=256)))
        with pytest.raises(EngineError, match="start_slots"):
            rt.slot_chat([Message("user", "hi")])
        with pytest.raises(SettingsError, match="parallel"):
            rt.start_slots(0, 256)
        with pytest.raises(SettingsError, match="ctx-size"):
            rt.start_slots(2, 8)
    finally:
        rt.close()


def test_logprobs_of_a_slot_match_the_alone_run(tiny):
    s = SamplingSettings(temperature=0, max_tokens=6, logprobs=True, top_logprobs=3, logit_bias=NO_EOS)
    batched = [e for e in tiny.slot_complete("the river", s) if isinstance(e, Token) and e.token_id >= 0]
    alone = [e for e in tiny.complete("the river", s) if isinstance(e, Token) and e.token_id >= 0]
    assert [t.token_id for t in batched] == [t.token_id for t in alone]
    for b, a in zip(batched, alone, strict=True):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-3) and b.piece == a.piece
        assert [x.token_id for x in b.alternatives] == [x.token_id for x in a.alternatives]


def test_host_slot_calls_run_concurrently_beside_an_ordinary_chat(tiny_model, tiny):
    greedy = SamplingSettings(temperature=0, max_tokens=12, logit_bias=NO_EOS)
    with EngineHost(hang_timeout=120) as host:
        list(host.load(tiny_model, LoadSettings(n_ctx=512)))
        host.start_slots(4, 256)
        results = concurrently(
            lambda p: run(host.slot_complete(p, greedy))[1] if p else run(host.complete("plain", greedy))[1],
            [*PROMPTS[:4], None],  # four slot calls and one ordinary call at once
        )
        for prompt, done in zip(PROMPTS[:4], results, strict=False):
            assert done.tokens == run(tiny.slot_complete(prompt, greedy))[1].tokens
        assert results[4].tokens == run(tiny.complete("plain", greedy))[1].tokens
        # a slot call is cancelled by its id; closing its iterator cancels it too
        stream = host.slot_complete("long", greedy.replace(max_tokens=100_000))
        next(stream)
        stream.cancel()
        *_, done = list(stream)
        assert done.stats.stop_reason == StopReason.CANCELLED
        states = host.slot_states()
        assert len(states) == 4 and not any(s.busy for s in states)
        # a cancel sent before its ordinary call started is not lost
        events = host.complete("x", greedy.replace(max_tokens=100_000))
        host.cancel()
        *_, done = list(events)
        assert done.stats.stop_reason == StopReason.CANCELLED and done.stats.generated_tokens < 1000
        host.stop_slots()
        assert host.slot_states() == []


def test_the_runtimes_lora_adapter_applies_to_the_slots_too(tiny_model, tiny, tmp_path):
    import numpy as np

    from training.export import write_adapter

    rng = np.random.default_rng(0)
    lora = {f"model.layers.{i}.self_attn.q_proj": (rng.normal(0, 0.5, (4, 64)), rng.normal(0, 0.5, (64, 4)))
            for i in range(2)}  # fmt: skip
    adapter = write_adapter(tmp_path / "lora.gguf", tiny_model, lora, alpha=8.0)
    greedy = SamplingSettings(temperature=0, max_tokens=16, logit_bias=NO_EOS)
    rt = Runtime()
    try:
        list(rt.load(tiny_model, LoadSettings(n_ctx=256), adapters=[(str(adapter), 1.0)]))
        rt.start_slots(2, 256)
        with_adapter = run(rt.complete("the adapter", greedy))[1].tokens
        assert run(rt.slot_complete("the adapter", greedy))[1].tokens == with_adapter
        assert (
            run(tiny.slot_complete("the adapter", greedy))[1].tokens != with_adapter
        )  # it changes the reply
    finally:
        rt.close()


def test_a_long_prompt_joins_in_chunks_so_decoding_slots_keep_their_pace(tiny):
    from engine.slots import PREFILL_WITH_DECODERS

    tiny.start_slots(2, 1024)
    try:
        endless = SamplingSettings(temperature=0, max_tokens=100_000, logit_bias=NO_EOS)
        running = tiny.slot_complete("keep going", endless)
        next(e for e in running if isinstance(e, Token))
        pool = tiny._slots
        long_prompt = tiny.tokenize(" ".join(["river"] * 300), add_special=True)[:900]
        before = pool.evaluations
        joining = pool.submit(long_prompt, SamplingSettings(temperature=0, max_tokens=1))
        evaluated = next(e for e in joining if isinstance(e, PromptEvaluated))
        # every step carried the running reply's next token and at most a chunk of the new prompt (one batch
        # of 512 would have taken two steps)
        assert pool.evaluations - before >= -(-evaluated.evaluated_tokens // PREFILL_WITH_DECODERS) >= 7
        running.close()
        list(joining)
    finally:
        tiny.start_slots(4, 256)


def test_the_slots_run_on_the_threads_chosen_like_the_chats(tiny_model):
    """The batch's threads come from the idle cores when the pool wakes (as a chat reply's do), unless the
    load settings give a count."""
    sampling = SamplingSettings(temperature=0, max_tokens=3)
    for n_threads, source in ((1, "setting"), (0, "idle cores")):
        rt = Runtime()
        try:
            list(rt.load(tiny_model, LoadSettings(n_ctx=256, n_threads=n_threads)))
            rt.start_slots(2, 128)
            assert rt.slot_pool().threads is None  # nothing chosen before a request
            run(rt.slot_complete("Once upon a time", sampling))
            chosen = rt.slot_pool().threads
            assert chosen.source == source and chosen.threads >= 1
            if n_threads:
                assert chosen.threads == n_threads
        finally:
            rt.close()


def test_requests_sent_together_to_an_idle_pool_are_read_in_one_batch(tiny):
    """A client's parallel calls arrive a few ms apart: the idle pool gathers them (GATHER_SECONDS) so their
    prompts share the first llama_decode instead of queueing behind the first one's prefill."""
    pool = tiny._slots
    before = pool.evaluations
    sampling = SamplingSettings(temperature=0, max_tokens=1)
    streams = [
        pool.submit(tiny.tokenize(f"Gathered prompt number {i}", add_special=True), sampling)
        for i in range(3)
    ]
    for stream in streams:
        assert isinstance(next(e for e in stream if isinstance(e, PromptEvaluated)), PromptEvaluated)
        list(stream)
    assert pool.evaluations - before == 1  # one batch held all three prompts (and gave each its first token)
