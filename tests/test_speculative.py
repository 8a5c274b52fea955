"""Speculative decoding: prompt lookup and a draft model change how fast a reply comes, never what it says."""

from __future__ import annotations

import gguf
import pytest
from gguf_factory import build_vocab, write_tiny_llama

from engine.errors import ModelFileError
from engine.events import ReplyDone
from engine.runtime import Runtime
from engine.settings import LoadSettings, SamplingSettings
from engine.speculative import Governor, PromptLookup

COPY_PROMPT = (
    "the cat is on the moon and the dog is in the sun. one two three four five six seven eight nine ten. "
    "the cat is on the moon and the dog is in the sun. one two three four five six seven eight nine ten. "
    "the cat is on the"
)


@pytest.fixture(scope="module")
def draft_tiny(models_dir):
    """Same vocabulary as the tiny model, other weights."""
    return write_tiny_llama(models_dir / "tiny-draft.gguf", seed=1)


@pytest.fixture(scope="module")
def foreign_tiny(models_dir):
    """One token's text differs from the tiny model's vocabulary."""
    tokens = build_vocab()[0]
    tokens[tokens.index("▁moon")] = "▁mooN"
    return write_tiny_llama(
        models_dir / "tiny-foreign.gguf", kv={"tokenizer.ggml.tokens": (tokens, gguf.GGUFValueType.ARRAY)}
    )


def reply(
    path, settings: LoadSettings, sampling: SamplingSettings, prompt: str = COPY_PROMPT, always: bool = False
) -> ReplyDone:
    """One reply on a fresh runtime; `always`: the governors never switch drafting off (a random tiny model's
    drafts are rarely worth it, and whether they are depends on timing: the acceptance rule is what is tested)."""
    rt = Runtime()
    try:
        list(rt.load(path, settings))
        if always:
            for gov in rt.speculator.governors:
                gov.margin, gov.HOPELESS = 0.0, float("inf")
        return next(e for e in rt.complete(prompt, sampling) if isinstance(e, ReplyDone))
    finally:
        rt.close()


GREEDY = SamplingSettings(temperature=0, max_tokens=64)


def test_prompt_lookup_greedy_is_identical_and_drafts(tiny_model):
    plain = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1), GREEDY)
    fast = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, lookup=True, lookup_ngram=2), GREEDY)
    assert fast.tokens == plain.tokens
    assert fast.text == plain.text
    assert plain.stats.drafted_tokens == 0 and plain.stats.drafting == ""
    assert fast.stats.drafting == "prompt lookup"
    assert fast.stats.drafted_tokens > 0
    assert 0 < fast.stats.accepted_tokens <= fast.stats.drafted_tokens


def test_drafting_fits_a_small_batch_and_a_full_context(tiny_model):
    """A verify batch never outgrows one llama_decode (n_batch 4 with K 8), nor the context: a reply longer than
    the context with the sliding window drafts up to the edge, and the shifted cache goes on as without drafting."""
    from engine.settings import OverflowPolicy

    small = LoadSettings(n_ctx=512, n_threads=1, n_batch=4, n_ubatch=4)
    plain = reply(tiny_model, small, GREEDY)
    looked = reply(tiny_model, small.replace(lookup=True, lookup_ngram=2, draft_max=8), GREEDY)
    assert looked.tokens == plain.tokens and looked.stats.accepted_tokens > 0
    tight = LoadSettings(n_ctx=256, n_threads=1)  # llama.cpp's smallest (it pads shorter ones to 256)
    sampling = GREEDY.replace(max_tokens=300)
    runs = []
    for settings in (tight, tight.replace(lookup=True, lookup_ngram=2)):
        rt = Runtime()
        list(rt.load(tiny_model, settings))
        runs.append([e for e in rt.complete(COPY_PROMPT[:150], sampling, OverflowPolicy.SLIDING_WINDOW)])
        rt.close()
    plain_done, looked_done = runs[0][-1], runs[1][-1]
    assert looked_done.tokens == plain_done.tokens
    assert looked_done.stats.generated_tokens == 300 and looked_done.stats.accepted_tokens > 0
    assert sum(type(e).__name__ == "ContextTrimmed" for e in runs[1]) >= 1


def test_draft_model_greedy_is_identical(tiny_model, draft_tiny):
    plain = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1), GREEDY)
    other = reply(
        tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft=str(draft_tiny), draft_max=4), GREEDY
    )
    same = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft=str(tiny_model), draft_max=4), GREEDY)
    assert other.tokens == plain.tokens
    assert same.tokens == plain.tokens
    assert same.stats.drafting == "draft tiny.gguf"
    # the model drafting for itself is right nearly always; another model's guesses mostly are not
    assert same.stats.drafted_tokens > 0
    assert same.stats.acceptance > 0.9
    assert same.stats.acceptance > other.stats.acceptance


@pytest.mark.parametrize("seed", [1, 7])
def test_seeded_sampling_is_identical(tiny_model, draft_tiny, seed):
    sampling = SamplingSettings(seed=seed, temperature=0.7, top_k=5, max_tokens=48)
    plain = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1), sampling)
    looked = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, lookup=True, lookup_ngram=1), sampling)
    drafted = reply(
        tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft=str(tiny_model)), sampling, always=True
    )
    assert looked.tokens == plain.tokens
    assert drafted.tokens == plain.tokens
    assert drafted.stats.accepted_tokens > 0


def test_a_draft_with_another_vocabulary_is_refused(tiny_model, foreign_tiny):
    with pytest.raises(
        ModelFileError, match=r"cannot draft for this model: token \d+ is '▁mooN' there but '▁moon'"
    ):
        reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft=str(foreign_tiny)), GREEDY)


def test_a_draft_with_other_special_tokens_is_refused(tiny_model, models_dir):
    odd = write_tiny_llama(
        models_dir / "tiny-eos.gguf", kv={"tokenizer.ggml.eos_token_id": (3, gguf.GGUFValueType.UINT32)}
    )
    with pytest.raises(ModelFileError, match="end-of-sequence token is 3, the model's is 2"):
        reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft=str(odd)), GREEDY)


def test_a_missing_draft_model_is_named(tiny_model, fresh_home):
    from engine.errors import IngleError

    with pytest.raises(IngleError, match="no-such-draft"):
        reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft="no-such-draft"), GREEDY)


def test_a_draft_that_does_not_pay_switches_itself_off(tiny_model, draft_tiny):
    """Eight draft-model decodes per step to win about one token: slower than decoding alone."""
    done = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, draft=str(draft_tiny), draft_max=8), GREEDY)
    assert done.stats.drafting_switched_off
    assert "switched itself off" in done.stats.describe()


def test_prompt_lookup_switches_off_on_a_prompt_without_overlap(tiny_model):
    """Hot sampling from a random model repeats nothing: 1-gram matches are found and nearly all rejected."""
    sampling = SamplingSettings(seed=3, temperature=3.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=200)
    prompt = "one two three four five six seven eight nine ten"
    plain = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1), sampling, prompt)
    looked = reply(
        tiny_model, LoadSettings(n_ctx=512, n_threads=1, lookup=True, lookup_ngram=1), sampling, prompt
    )
    assert looked.tokens == plain.tokens
    assert looked.stats.drafted_tokens > 0
    assert looked.stats.acceptance < 0.1
    assert looked.stats.drafting_switched_off


def test_starter_greedy_identical_with_lookup_and_draft(starter_model):
    prompt = "Repeat exactly: The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the"
    sampling = SamplingSettings(temperature=0, max_tokens=24)
    plain = reply(starter_model, LoadSettings(n_ctx=512, n_threads=1), sampling, prompt)
    looked = reply(starter_model, LoadSettings(n_ctx=512, n_threads=1, lookup=True), sampling, prompt)
    drafted = reply(
        starter_model,
        LoadSettings(n_ctx=512, n_threads=1, draft=str(starter_model), draft_max=4),
        sampling,
        prompt,
    )
    assert looked.tokens == plain.tokens
    assert drafted.tokens == plain.tokens
    assert looked.stats.accepted_tokens > 0
    assert drafted.stats.accepted_tokens > 0


# ---------------------------------------------------------------- the pieces, with plain numbers
def test_lookup_drafts_what_followed_the_latest_match():
    lookup = PromptLookup(2)
    history = [1, 2, 3, 4, 5, 9, 1, 2]
    assert lookup.draft(history, 3) == [3, 4, 5]
    history += [3, 7, 1, 2]  # the latest occurrence of (1, 2) is now followed by 3, 7
    assert lookup.draft(history, 2) == [3, 7]
    assert lookup.draft([5, 6, 7, 8], 4) == []  # nothing matches (a fresh history for a fresh lookup)


def test_lookup_continues_a_repeat_loop_periodically():
    lookup = PromptLookup(1)
    assert lookup.draft([4, 5, 4, 5], 5) == [4, 5, 4, 5, 4]
    assert PromptLookup(3).draft([1, 2], 4) == []  # shorter than the n-gram


def test_governor_switches_off_then_probes_again():
    gov = Governor()
    assert not gov.plain.known
    gov.plain.add(0.010)
    assert not gov.plain.known  # one step is not a baseline yet
    gov.plain.add(0.500)  # a descheduled step does not make drafting look cheap
    gov.plain.add(0.010)
    for _ in range(Governor.WINDOW):
        assert gov.active()
        gov.drafted_step(0.015, 1)  # 15 ms per token against 10 ms plain
        gov.tick(1)
    assert gov.switched_off and not gov.active()
    gov.tick(Governor.MIN_BACKOFF - 1)
    assert not gov.active()
    gov.tick(1)
    assert gov.active()  # probes again later
    for _ in range(Governor.WINDOW):
        gov.drafted_step(0.015, 1)
        gov.tick(1)
    assert not gov.active()
    gov.tick(Governor.MIN_BACKOFF)
    assert not gov.active()  # failing again: a pause GROWTH times longer
    gov.tick(Governor.MIN_BACKOFF * (Governor.GROWTH - 1))
    assert gov.active()


def test_governor_pause_carries_over_to_the_next_reply():
    """A source that does not pay stays off from one reply to the next: a new reply does not probe it again."""
    gov = Governor()
    gov.plain.add(0.010)
    gov.plain.add(0.010)
    gov.drafted_step(0.100, 1)  # ten times dearer per token: the probe ends after two steps
    assert gov.active()
    gov.drafted_step(0.100, 1)
    assert gov.switched_off and not gov.active()
    gov.reset()  # the next reply
    assert not gov.active() and gov.switched_off  # still off, and the reply says so
    gov.tick(Governor.MIN_BACKOFF + 1)
    gov.reset()
    assert gov.active() and not gov.switched_off


def test_governor_keeps_drafting_that_pays():
    gov = Governor()
    gov.plain.add(0.010)
    gov.plain.add(0.010)
    for _ in range(3 * Governor.WINDOW):
        gov.drafted_step(0.015, 3)  # 5 ms per token
        gov.tick(3)
    assert not gov.switched_off
    assert gov.active()


def test_lookup_steps_are_judged_by_the_lookup_governor():
    """A lookup draft is judged by its own governor (a draft model, when loaded, has another)."""
    from engine.settings import LoadSettings
    from engine.speculative import SpeculativeSteps, Speculator

    spec = Speculator(LoadSettings(lookup=True, lookup_ngram=2, draft_max=4))
    steps = SpeculativeSteps(spec, [1, 2, 3, 1, 2])
    steps.record(0, 0, 1, 0.010)
    steps.record(0, 0, 1, 0.010)
    # the history ends "1 2" (the newest token included), which came before "3 1 2 ...": the lookup drafts that
    assert steps.propose([], 2, 8) == [3, 1, 2, 3]
    steps.record(4, 4, 5, 0.015)  # 3 ms per token
    assert spec.lookup_governor.active() and not spec.switched_off
    assert spec.governors == (spec.lookup_governor,)  # no draft model loaded: only lookup is judged


# ---------------------------------------------------------------- the command line (through the engine child)
def test_cli_run_with_lookup_and_draft_reports_drafting(tiny_model, tmp_path):
    from test_cli import ingle

    flags = ["-t", "1", "--temp", "0", "-n", "40", "--stats", "--no-chat"]
    plain = ingle("run", tiny_model, "the cat and the dog the cat and the", *flags, home=tmp_path)
    spec = ingle("run", tiny_model, "the cat and the dog the cat and the", *flags, "--lookup", "--lookup-ngram",
                 "2", "--draft", tiny_model, "--draft-max", "3", home=tmp_path)  # fmt: skip
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout
    assert "drafting (prompt lookup + draft tiny.gguf):" in spec.stderr
    assert "drafting" not in plain.stderr


def test_cli_refuses_a_bad_draft_in_one_line(tiny_model, foreign_tiny, tmp_path):
    from test_cli import assert_one_line_error, ingle

    assert_one_line_error(
        ingle("run", tiny_model, "hi", "--draft", foreign_tiny, home=tmp_path), "cannot draft for this model"
    )
    assert_one_line_error(
        ingle("run", tiny_model, "hi", "--draft", "nothing-here", home=tmp_path), "nothing-here"
    )
    assert_one_line_error(ingle("run", tiny_model, "hi", "--draft-max", "0", home=tmp_path), "draft_max")


# ---------------------------------------------------------------- the GUI: model panel and Timing view
def test_model_panel_offers_drafting_settings(qtbot, tiny_model, fresh_home, tmp_path):
    from app.model_panel import ModelPanel
    from engine.library import Library

    library = Library()
    library.import_file(tiny_model, name="tiny-target", link=True)
    library.import_file(tiny_model, name="tiny-drafter", link=True)
    panel = ModelPanel(library)
    qtbot.addWidget(panel)
    assert panel.load_settings().speculative is False
    assert [panel.draft_box.itemText(i) for i in range(panel.draft_box.count())] == [
        "none",
        "tiny-drafter",
        "tiny-target",
    ]
    panel.draft_box.setCurrentIndex(panel.draft_box.findData("tiny-drafter"))
    panel.advanced_fields["lookup"].setChecked(True)
    panel.advanced_fields["draft_max"].setValue(5)
    settings = panel.load_settings()
    assert (settings.draft, settings.lookup, settings.draft_max, settings.lookup_ngram) == (
        "tiny-drafter",
        True,
        5,
        3,
    )
    panel.advanced_toggle.setChecked(True)
    panel.resize(420, 900)
    panel.grab().save(str(tmp_path / "model-panel-drafting.png"))


def test_timing_view_shows_drafting_and_its_switch_off(qtbot, tiny_model, tmp_path):
    from app.visualizers.timing import TimingBar

    looked = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1, lookup=True, lookup_ngram=2), GREEDY)
    plain = reply(tiny_model, LoadSettings(n_ctx=512, n_threads=1), GREEDY)
    bar = TimingBar()
    qtbot.addWidget(bar)
    bar.add_reply(plain.stats)
    assert bar.replies[0]["drafting"] == ""
    bar.add_reply(looked.stats)
    s = looked.stats
    assert bar.replies[0]["drafting"].startswith(
        f"drafting by prompt lookup: {s.accepted_tokens} of {s.drafted_tokens} drafted tokens accepted ({s.acceptance:.0%})"
    )
    off = ReplyDone("", s.__class__(**{**s.__dict__, "drafting_switched_off": True}))
    bar.add_reply(off.stats)
    assert "switched itself off" in bar.replies[0]["drafting"]
    bar.resize(760, bar.heightForWidth(760))
    bar.grab().save(str(tmp_path / "timing-drafting.png"))
