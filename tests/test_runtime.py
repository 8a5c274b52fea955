"""The in-process runtime against real llama.cpp: greedy parity, seeds, stops, logprobs, cache reuse, overflow."""

import re
import threading

import llama_cpp
import numpy as np
import pytest

from engine.errors import ContextFullError, EngineError, ModelFileError, SettingsError
from engine.events import ContextTrimmed, Message, ReplyDone, StopReason, Token
from engine.runtime import Runtime
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings
from engine.textstream import common_prefix

GREEDY = SamplingSettings(temperature=0, max_tokens=24)
NO_EOS = ((2, float("-inf")), (4, float("-inf")))  # </s> and <end_of_turn> of the tiny vocab


def run(events):
    events = list(events)
    done = events[-1]
    assert isinstance(done, ReplyDone)
    return done, events


@pytest.fixture
def tiny_rt(tiny_runtime):
    return tiny_runtime


@pytest.fixture(scope="module")
def starter_rt(starter_model):
    rt = Runtime()
    list(rt.load(starter_model, LoadSettings(n_ctx=2048)))
    yield rt
    rt.close()


@pytest.fixture
def no_repack(monkeypatch):
    """llama-cpp-python's high-level Llama cannot switch off weight repacking, which crashes on AMX CPUs."""
    original = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", params)


@pytest.mark.parametrize("which", ["tiny", "starter"])
def test_greedy_matches_llama_cpp_python(which, tiny_model, starter_model, no_repack, request):
    path = tiny_model if which == "tiny" else starter_model
    rt = request.getfixturevalue(f"{which}_rt")
    prompt = "The cat and the dog are"
    done, _ = run(rt.complete(prompt, GREEDY))
    ref = llama_cpp.Llama(str(path), n_ctx=512, verbose=False, n_threads=2)
    ref_tokens = []
    for tok in ref.generate(ref.tokenize(prompt.encode()), temp=0.0, top_k=1, repeat_penalty=1.0):
        if tok == ref.token_eos() or llama_cpp.llama_vocab_is_eog(ref._model.vocab, tok):
            break
        ref_tokens.append(tok)
        if len(ref_tokens) == GREEDY.max_tokens:
            break
    ref_text = ref.detokenize(ref_tokens).decode("utf-8", errors="replace")
    ref.close()
    assert list(done.tokens) == ref_tokens
    assert done.text == ref_text
    assert done.stats.generated_tokens > 0


def test_fixed_seed_reproduces_a_sampled_reply(tiny_rt):
    s = SamplingSettings(
        temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=1234, max_tokens=20, logit_bias=NO_EOS
    )
    a, _ = run(tiny_rt.complete("hello world", s))
    b, _ = run(tiny_rt.complete("hello world", s))
    c, _ = run(tiny_rt.complete("hello world", s.replace(seed=99)))
    assert a.tokens == b.tokens and a.stats.seed == 1234
    assert a.tokens != c.tokens


def test_max_tokens_and_stop_strings_end_replies(tiny_rt):
    s = SamplingSettings(temperature=0, max_tokens=30, logit_bias=NO_EOS)
    full, _ = run(tiny_rt.complete("one two three", s))
    assert full.stats.stop_reason == StopReason.MAX_TOKENS and full.stats.generated_tokens == 30
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut, events = run(tiny_rt.complete("one two three", s.replace(stop=(stop,))))
    assert cut.stats.stop_reason == StopReason.STOP_STRING
    assert cut.text == full.text[: full.text.index(stop)]
    assert "".join(e.text for e in events if isinstance(e, Token)) == cut.text


def test_logprobs_are_normalized(tiny_rt):
    s = SamplingSettings(temperature=0, max_tokens=5, logprobs=True, top_logprobs=50, logit_bias=NO_EOS)
    done, events = run(tiny_rt.complete("the sun and the moon", s))
    tokens = [e for e in events if isinstance(e, Token) and e.token_id >= 0]
    for tok in tokens:
        probs = np.exp([a.logprob for a in tok.alternatives])
        assert probs.sum() <= 1.0 + 1e-6 and probs[0] == probs.max()
        assert tok.alternatives[0].token_id == tok.token_id  # greedy picks the most likely
        assert tok.logprob == pytest.approx(tok.alternatives[0].logprob)
    # the whole distribution sums to one
    prompt = tiny_rt.tokenize("the sun and the moon", add_special=True, parse_special=False)
    tiny_rt.evaluate(prompt)
    logits = tiny_rt.last_logits().astype(np.float64)
    logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    assert np.exp(logp).sum() == pytest.approx(1.0)
    assert logp[tokens[0].token_id] == pytest.approx(tokens[0].logprob, abs=1e-5)


def test_cancel_stops_before_the_next_token(tiny_rt):
    s = SamplingSettings(temperature=0, max_tokens=400, logit_bias=NO_EOS)
    seen = 0
    events = tiny_rt.complete("hello", s)
    for event in events:
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                threading.Thread(target=tiny_rt.cancel).start()
                threading.Event().wait(0.05)
        if isinstance(event, ReplyDone):
            done = event
    assert done.stats.stop_reason == StopReason.CANCELLED
    assert done.stats.generated_tokens <= 4


@pytest.mark.parametrize("which", ["tiny", "starter"])
def test_second_turn_evaluates_only_new_tokens(which, request):
    rt = request.getfixturevalue(f"{which}_rt")
    s = SamplingSettings(temperature=0, max_tokens=12)
    first = [Message("system", "Be brief."), Message("user", "hello there, how are you?")]
    done1, _ = run(rt.chat(first, s))
    prompt1 = rt.render_tokens(first)
    second = first + [Message("assistant", done1.text), Message("user", "and the cat?")]
    done2, events = run(rt.chat(second, s))
    prompt2 = rt.render_tokens(second)
    cached = (prompt1 + list(done1.tokens))[
        : done1.stats.n_past
    ]  # a reply cut by max_tokens leaves its last token out
    expected_reuse = common_prefix(cached, prompt2)
    assert done2.stats.reused_tokens == expected_reuse >= len(prompt1)
    assert done2.stats.evaluated_tokens == len(prompt2) - expected_reuse
    assert done2.stats.evaluated_tokens < len(prompt2) // 2 or which == "tiny"


def test_overflow_policies(tiny_model):
    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=128, n_batch=128, n_ubatch=128)))
    s = SamplingSettings(temperature=0, max_tokens=16, logit_bias=NO_EOS)
    long_turns = [Message("system", "sun moon")]
    for _i in range(8):
        long_turns += [
            Message("user", "the red cat and the blue dog " * 2),
            Message("assistant", "yes good " * 3),
        ]
    long_turns.append(Message("user", "hello"))
    with pytest.raises(ContextFullError, match="drop oldest"):
        list(rt.chat(long_turns, s, OverflowPolicy.STOP))
    done, events = run(rt.chat(long_turns, s, OverflowPolicy.DROP_OLDEST))
    trimmed = [e for e in events if isinstance(e, ContextTrimmed)]
    assert trimmed and trimmed[0].dropped_messages >= 2 and trimmed[0].dropped_messages % 2 == 0
    assert done.stats.prompt_tokens + 16 <= done.stats.n_ctx  # llama.cpp may round the context up
    done, events = run(rt.chat(long_turns, s, OverflowPolicy.SLIDING_WINDOW))
    assert any(isinstance(e, ContextTrimmed) for e in events)
    # a reply longer than the context: stop at the edge, or slide the window and go on
    long_reply = s.replace(max_tokens=400)
    done, _ = run(rt.complete("hello", long_reply, OverflowPolicy.STOP))
    assert done.stats.stop_reason == StopReason.CONTEXT_FULL
    done, events = run(rt.complete("hello", long_reply, OverflowPolicy.SLIDING_WINDOW))
    assert done.stats.generated_tokens == 400 and done.stats.stop_reason == StopReason.MAX_TOKENS
    assert any(isinstance(e, ContextTrimmed) for e in events)
    rt.close()


def test_grammar_and_json_schema_constrain_output(tiny_rt):
    done, _ = run(
        tiny_rt.complete("answer:", SamplingSettings(temperature=0, grammar='root ::= "yes" | "no"'))
    )
    assert done.text in ("yes", "no")
    schema = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'
    done, _ = run(
        tiny_rt.complete(
            "json:", SamplingSettings(temperature=0.7, seed=3, json_schema=schema, max_tokens=60)
        )
    )
    import json

    assert isinstance(json.loads(done.text)["ok"], bool)
    with pytest.raises(SettingsError, match="grammar"):
        list(tiny_rt.complete("x", SamplingSettings(grammar="root ::= ???")))


def tokens_of(rt, prompt: str, sampling: SamplingSettings) -> list[int]:
    done, _ = run(rt.complete(prompt, sampling))
    return list(done.tokens)


def test_top_k_1_and_min_p_1_are_greedy(tiny_rt):
    greedy = tokens_of(tiny_rt, "the cat", SamplingSettings(temperature=0, max_tokens=10, logit_bias=NO_EOS))
    for extra in (dict(top_k=1), dict(min_p=1.0)):
        sampled = SamplingSettings(temperature=1.5, seed=11, max_tokens=10, logit_bias=NO_EOS, **extra)
        assert tokens_of(tiny_rt, "the cat", sampled) == greedy, extra


def test_a_minus_infinity_logit_bias_never_appears(tiny_rt):
    greedy = tokens_of(tiny_rt, "the cat", SamplingSettings(temperature=0, max_tokens=10, logit_bias=NO_EOS))
    banned = tuple((t, float("-inf")) for t in set(greedy)) + NO_EOS
    for seed in (1, 2):
        out = tokens_of(tiny_rt, "the cat", SamplingSettings(seed=seed, max_tokens=10, logit_bias=banned))
        assert out and not set(out) & set(greedy)


def test_repeat_penalties_change_what_repeats(tiny_rt):
    base = SamplingSettings(temperature=0, max_tokens=40, logit_bias=NO_EOS)
    plain = tokens_of(tiny_rt, "the the the", base)
    penalised = tokens_of(tiny_rt, "the the the", base.replace(repeat_penalty=2.0, penalty_last_n=-1))
    # the random tiny model loops; a strong repeat penalty must break the loop into more distinct tokens
    assert len(set(penalised)) > len(set(plain))


def test_grammar_output_parses(tiny_rt):
    # short enough to finish within max_tokens, so the whole reply must match
    grammar = 'root ::= "[" num ("," num)? "]"\nnum ::= [0-9] [0-9]?'
    for seed in (1, 2, 3):
        done, _ = run(tiny_rt.complete("list:", SamplingSettings(seed=seed, max_tokens=30, grammar=grammar)))
        assert re.fullmatch(r"\[[0-9]{1,2}(,[0-9]{1,2})?\]", done.text), done.text


@pytest.mark.parametrize(
    "extra",
    [
        dict(dynatemp_range=0.5, top_n_sigma=2.0, typical_p=0.9, xtc_probability=0.5, xtc_threshold=0.05),
        dict(dry_multiplier=0.8, presence_penalty=0.5, frequency_penalty=0.5, penalty_last_n=-1),
        dict(mirostat=1, mirostat_tau=3.0),
        dict(mirostat=2, mirostat_eta=0.2),
    ],
)
def test_every_sampler_is_seeded_and_changes_the_pick(tiny_rt, extra):
    """Same seed, same tokens; and each chain picks differently from plain sampling at the same seed."""
    sampling = SamplingSettings(seed=5, max_tokens=16, logit_bias=NO_EOS, **extra)
    first = tokens_of(tiny_rt, "the cat", sampling)
    assert first == tokens_of(tiny_rt, "the cat", sampling) and len(first) == 16
    plain = tokens_of(tiny_rt, "the cat", SamplingSettings(seed=5, max_tokens=16, logit_bias=NO_EOS))
    assert first != plain


def test_reply_reports_its_figures(tiny_rt):
    done, _ = run(
        tiny_rt.complete("the big red dog", SamplingSettings(temperature=0, max_tokens=8, logit_bias=NO_EOS))
    )
    st = done.stats
    assert st.prompt_tokens == st.reused_tokens + st.evaluated_tokens
    assert st.ttft_seconds > 0 and st.prefill_tok_s > 0 and st.decode_tok_s > 0
    assert (
        st.n_past == st.prompt_tokens + st.generated_tokens - 1
    )  # the last token is sampled, not yet evaluated


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "wrong_magic", "truncated_header", "data_past_eof", "adapter", "unknown_arch"],
)
def test_broken_files_refused_before_llama_cpp_and_runtime_lives_on(tiny_rt, corrupt_files, case):
    with pytest.raises(ModelFileError):
        list(Runtime().load(corrupt_files[case]))
    done, _ = run(tiny_rt.complete("hello", GREEDY))
    assert done.stats.generated_tokens >= 0


def test_continue_a_cut_off_reply(starter_rt):
    s = SamplingSettings(temperature=0, max_tokens=8)
    convo = [Message("user", "Write one sentence about the sea.")]
    cut, _ = run(starter_rt.chat(convo, s))
    assert cut.stats.stop_reason == StopReason.MAX_TOKENS
    more, _ = run(starter_rt.chat(convo + [Message("assistant", cut.text)], s, continue_last=True))
    whole, _ = run(starter_rt.chat(convo, s.replace(max_tokens=16)))
    assert cut.text + more.text == whole.text  # continuing equals never having stopped (greedy)
    assert more.stats.reused_tokens >= cut.stats.prompt_tokens  # the cut reply's cache is reused
    with pytest.raises(EngineError, match="must end with that assistant message"):
        list(starter_rt.chat(convo, s, continue_last=True))
