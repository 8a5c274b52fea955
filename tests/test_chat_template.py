"""Chat templates: the GGUF's own rendered exactly as transformers renders it (checked on 71 published models'
templates), bounded in time and memory and stopped by Stop; built-in fallbacks; past reasoning left to the
template; plain errors for broken ones."""

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from gguf_factory import write_tiny_llama

from engine.chat_template import BUILTIN_TEMPLATES, ChatTemplate, builtin_for, strip_reasoning, template_for
from engine.errors import Cancelled, EngineError
from engine.events import Message
from engine.runtime import Runtime
from engine.settings import LoadSettings

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "tests" / "data" / "templates"
CONVO = [
    Message("system", "Be kind."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", "Bye"),
]


def test_gemma_fallback_folds_the_system_prompt_into_the_first_turn():
    t = template_for(None, "gemma3", [], "<bos>", "<eos>")
    assert t.source == "gemma"
    assert t.render(CONVO) == (
        "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    "family, marker",
    [("chatml", "<|im_start|>assistant\n"), ("llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
     ("mistral", "[INST] Be kind.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]")],
)  # fmt: skip
def test_builtin_families_render(family, marker):
    text = ChatTemplate(BUILTIN_TEMPLATES[family], family, "<s>", "</s>").render(CONVO)
    assert marker in text


def test_family_detection_from_architecture_and_vocab():
    assert builtin_for("gemma2") == "gemma"
    assert builtin_for("llama", ["<|start_header_id|>"]) == "llama3"
    assert builtin_for("llama", ["[INST]"]) == "mistral"
    assert builtin_for("qwen2", ["<|im_start|>"]) == "chatml"
    assert builtin_for("unknownarch") == "chatml"


def test_the_models_own_template_is_used(tmp_path):
    own = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}"
    path = write_tiny_llama(tmp_path / "templated.gguf", chat_template=own)
    rt = Runtime()
    loaded = list(rt.load(path, LoadSettings(n_ctx=256)))[-1]
    assert loaded.template_source == "gguf" and loaded.template_warning == ""
    assert rt.template.render([Message("user", "hi")]) == "<<user>>hi<<assistant>>"
    rt.close()


def test_sandbox_blocks_unsafe_templates():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(EngineError, match="failed|refused"):
        ChatTemplate(evil, "gguf").render(CONVO)
    with pytest.raises(EngineError, match="underscore"):
        ChatTemplate("{% set ns = namespace(__class__=1) %}", "gguf").render(CONVO)


def test_broken_templates_give_plain_errors():
    with pytest.raises(EngineError, match="does not compile"):
        ChatTemplate("{% for %}", "gguf")
    strict = ChatTemplate("{{ raise_exception('Roles must alternate') }}", "gguf")
    with pytest.raises(EngineError, match="Roles must alternate"):
        strict.render(CONVO)
    with pytest.raises(EngineError, match="Unknown chat template 'zephyr'"):
        template_for(None, "llama", [], "", "", override="zephyr")


# ------------------------------------------------------------------ transformers' environment
def render_one(text: str, **kw) -> str:
    return ChatTemplate(text, "gguf", "<s>", "</s>").render([Message("user", "Hi")], **kw)


def test_loop_controls_and_the_generation_tag_compile_as_in_transformers():
    # command-r7b and Cohere's newer templates use {% break %}; LFM2 uses transformers' {% generation %}
    looped = "{% for m in messages + messages %}{% if loop.index > 1 %}{% break %}{% endif %}[{{ m.content }}]{% endfor %}"
    assert render_one(looped) == "[Hi]"
    skipped = "{% for i in range(4) %}{% if i % 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}"
    assert render_one(skipped) == "02"
    tagged = "{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}"
    assert render_one(tagged) == "<Hi>"


def test_tojson_keeps_key_order_and_unicode_and_takes_transformers_options():
    # Jinja's own tojson sorts keys and escapes non-ASCII and HTML characters: transformers' does neither
    assert render_one("{{ {'b': 1, 'a': 'é<>'}|tojson }}") == '{"b": 1, "a": "é<>"}'
    assert render_one("{{ {'b': 1}|tojson(indent=2) }}") == '{\n  "b": 1\n}'
    assert render_one("{{ [1, 2]|tojson(separators=(',', ':')) }}") == "[1,2]"


def test_tools_and_documents_are_defined_as_none_and_globals_exist():
    assert (
        render_one("{{ tools is none }} {{ documents is none }} {{ tools is defined }}") == "True True True"
    )
    assert render_one("{{ strftime_now('%Y') | int > 2000 }}") == "True"
    assert render_one("{{ dict.fromkeys(['a'], 1) }} {{ dict(b=2) }}") == "{'a': 1} {'b': 2}"
    assert render_one("{{ bos_token }}|{{ eos_token }}") == "<s>|</s>"


@pytest.fixture(scope="module")
def transformers_render():
    """transformers' own renderer (the train extra installs it)."""
    utils = pytest.importorskip(
        "transformers.utils.chat_template_utils", reason="transformers (the train extra) is not installed"
    )

    def render(text: str, messages: list[Message], add_generation_prompt: bool) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        rendered, _ = utils.render_jinja_template(
            [chat], chat_template=text, add_generation_prompt=add_generation_prompt,
            bos_token="<s>", eos_token="</s>",
        )  # fmt: skip
        return rendered[0]

    return render


CONVERSATIONS = {
    "user": [Message("user", "Hello")],
    "system": [Message("system", "You are terse."), Message("user", "Hi there")],
    "multi-turn": CONVO,
    "unicode": [
        Message("user", "Grüße, 世界! 🌍 «q» \"dq\" 'sq' <tag> & \\ \t tab\nline"),
        Message("assistant", "Ça va? ✓ — ок"),
        Message("user", "日本語で"),
    ],
    "reasoning": [
        Message("user", "2+2?"),
        Message("assistant", "<think>\nadd them\n</think>\n\n4"),
        Message("user", "and 3+3?"),
    ],
}
# Templates that need what a plain chat does not give: transformers fails on them just the same.
FAIL_IN_TRANSFORMERS_TOO = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": "the tool_use variant iterates `tools`, which is None",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "the tool_use variant iterates `tools`, which is None",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "the tool_use variant iterates `tools`, which is None",
    "fireworks-ai-llama-3-firefunction-v2.jinja": "needs a `functions` variable, which transformers never passes",
}
# Templates that refuse a system message (transformers raises): Ingle moves it into the first user message.
REFUSES_SYSTEM = {"google-gemma-2-2b-it.jinja"}
REQUIRED = [
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "Cohere2MoE.jinja", "LFM2-8B-A1B.jinja",
    "LFM2.5-Instruct.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "HuggingFaceTB-SmolLM3-3B.jinja",
    "ibm-granite-granite-3.3-2B-Instruct.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
    "meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja", "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "google-gemma-2-2b-it.jinja", "microsoft-phi-4.jinja", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
]  # fmt: skip
PUBLISHED = sorted(p.name for p in TEMPLATES.glob("*.jinja"))


def test_the_published_template_set_is_representative():
    assert len(PUBLISHED) >= 30
    assert not set(REQUIRED) - set(PUBLISHED)
    assert (TEMPLATES / "README.md").is_file()


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_templates_render_exactly_as_transformers_does(name, transformers_render):
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    ours = ChatTemplate(text, "gguf", "<s>", "</s>")  # every one compiles
    compared = 0
    for kind, convo in CONVERSATIONS.items():
        # templates that do not handle reasoning get replies without it (as Ingle always sent them before)
        given = (
            convo if ours.handles_reasoning else [Message(m.role, strip_reasoning(m.content)) for m in convo]
        )
        for add_generation_prompt in (True, False):
            try:
                expected = transformers_render(text, given, add_generation_prompt)
            except Exception as err:
                if name in REFUSES_SYSTEM and given[0].role == "system":
                    folded = [Message("user", f"{given[0].content}\n\n{given[1].content}"), *given[2:]]
                    expected = transformers_render(text, folded, add_generation_prompt)
                else:
                    assert name in FAIL_IN_TRANSFORMERS_TOO, err
                    with pytest.raises(EngineError):
                        ours.render(convo, add_generation_prompt)
                    continue
            assert name not in FAIL_IN_TRANSFORMERS_TOO
            assert ours.render(convo, add_generation_prompt) == expected, (kind, add_generation_prompt)
            compared += 1
    assert compared or name in FAIL_IN_TRANSFORMERS_TOO


def test_a_template_that_refuses_system_messages_gets_the_system_prompt_in_the_first_turn():
    gemma2 = ChatTemplate((TEMPLATES / "google-gemma-2-2b-it.jinja").read_text(), "gguf", "<bos>", "<eos>")
    assert gemma2.render(CONVO[:2]) == (
        "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(EngineError, match="must alternate"):  # other refusals still say why
        gemma2.render([Message("system", "x"), Message("user", "a"), Message("user", "b")])


# ------------------------------------------------------------------ past reasoning
REASONING_TURNS = CONVERSATIONS["reasoning"]


def test_templates_that_handle_reasoning_get_it_whole():
    r1 = ChatTemplate((TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text(), "gguf")
    assert r1.handles_reasoning
    # the template keeps what follows </think>, blank line included
    assert "<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>" in r1.render(REASONING_TURNS)
    for name in ("HuggingFaceTB-SmolLM3-3B.jinja", "ibm-granite-granite-3.3-2B-Instruct.jinja"):
        keeps = ChatTemplate((TEMPLATES / name).read_text(), "gguf")
        assert keeps.handles_reasoning
        assert "<think>\nadd them\n</think>" in keeps.render(REASONING_TURNS), name


def test_templates_that_do_not_handle_reasoning_get_replies_without_it():
    plain = ChatTemplate(BUILTIN_TEMPLATES["chatml"], "chatml")
    assert not plain.handles_reasoning
    text = plain.render(REASONING_TURNS + [Message("assistant", "<think>unfinished")], False)
    assert "add them" not in text and "unfinished" not in text
    assert "<|im_start|>assistant\n4<|im_end|>" in text
    llama = ChatTemplate((TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(), "gguf")
    assert not llama.handles_reasoning and "add them" not in llama.render(REASONING_TURNS)


# ------------------------------------------------------------------ hostile templates
HOSTILE = {
    "repeat a string": "{{ 'x' * 10**9 }}",
    "repeat a big string": "{% set s = 'x' * 10000000 %}{{ s * 100 }}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "empty nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops over a string": "{% set s = 'a' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "captured loop": "{% set s = 'y' * 10000000 %}{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}",
    "captured text": "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}"
    + "z" * 1000
    + "{% endfor %}{% endfor %}{% endset %}",
    "nested list literals": "{% set s = 'y' * 10000000 %}{% set b = [s,s,s,s,s,s,s,s] %}{% set c = [b,b,b,b,b,b,b,b] %}"
    "{% set d = [c,c,c,c,c,c,c,c] %}{{ '' ~ d }}",
    "join": "{% set s = 'y' * 10000000 %}{% set b = [s,s,s,s,s,s,s,s] %}{{ (b+b+b+b+b+b+b+b)|join }}",
    "tojson": "{% set s = 'y' * 10000000 %}{% set b = [s,s,s,s,s,s,s,s] %}{{ [b,b,b,b]|tojson }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "ljust method": "{{ 'x'.ljust(1000000000) }}",
    "printf width": "{{ '%999999999s'|format('x') }}",
    "format width": "{{ '{:>999999999}'.format('x') }}",
    "star width": "{{ '%*s' % (1000000000, 'x') }}",
    "power": "{{ 10 ** 100000000 }}",
    "squaring": "{% set ns = namespace(n=10) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "lipsum": "{{ lipsum(10000000) }}",
    "replace": "{% set s = 'a' * 1000000 %}{{ s|replace('a', 'b' * 100) }}",
    "indent": "{% set s = '\n' * 1000000 %}{{ s|indent(1000, true, true) }}",
    "batch": "{{ [1]|batch(1000000000, 'x')|list }}",
    "to_bytes": "{{ (1).to_bytes(1000000000, 'big') }}",
    "translate": "{% set s = 'a' * 100000 %}{{ s.translate({97: 'b' * 100000}) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(1000000) }}",
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_templates_stop_with_a_clear_error(kind):
    template = ChatTemplate(HOSTILE[kind], "gguf", time_limit=2.0)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"^The chat template \(gguf\) .*it may be hostile; use --template"):
        template.render(CONVO)
    assert time.monotonic() - started < 60  # 2 s of budget; generous for a busy machine


def test_hostile_templates_stay_small_in_memory():
    """All of them in a fresh process, whose peak RSS says what they cost (without the bounds: over 1 GB)."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(REPO)!r})
        from engine.chat_template import ChatTemplate
        from engine.errors import EngineError
        from engine.events import Message
        HOSTILE = {HOSTILE!r}
        ChatTemplate("{{{{ 1 }}}}", "warm-up").render([Message("user", "hi")])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for kind, text in HOSTILE.items():
            try:
                ChatTemplate(text, "gguf", time_limit=1.0).render([Message("user", "hi")])
                print("rendered", kind)
            except EngineError:
                pass
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    assert "rendered" not in lines
    assert int(lines[-1]) < 200, f"peak RSS grew by {lines[-1]} MiB"


SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_cancel_stops_a_render_in_progress():
    cancel = threading.Event()
    template = ChatTemplate(SLOW, "gguf", cancel=cancel, time_limit=600)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        template.render(CONVO)
    assert time.monotonic() - started < 60  # the time limit is 600 s: only the cancel ended it


# a template that renders one message (the check at load passes) but not a conversation
SLOW_ON_REPLY = (
    "{% if messages|length > 1 %}" + SLOW + "{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
)


def test_stop_during_a_chats_template_render_returns_promptly(tmp_path):
    path = write_tiny_llama(tmp_path / "slow.gguf", chat_template=SLOW_ON_REPLY)
    rt = Runtime()
    list(rt.load(path, LoadSettings(n_ctx=256)))
    rt.template.time_limit = 600
    rt.cancel()  # a Stop from before the request is not for it: only the one below counts
    threading.Timer(1.0, rt.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="template"):
        list(rt.chat(CONVO))
    assert time.monotonic() - started < 60
    # the next request starts clean, and renders that are not a chat do not listen to a stale Stop
    rt.cancel()
    assert rt.render_tokens([Message("user", "hi")])
    rt.close()


def test_stop_reaches_a_render_in_the_engine_child(tmp_path):
    from engine.host import EngineHost

    path = write_tiny_llama(tmp_path / "slow.gguf", chat_template=SLOW_ON_REPLY)
    host = EngineHost()
    done = threading.Event()
    try:
        list(host.load(path, LoadSettings(n_ctx=256)))

        def press_stop() -> None:  # again each second: one that lands before the chat starts is not for it
            while not done.wait(1.0):
                host.cancel()

        threading.Thread(target=press_stop, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            list(host.chat(CONVO))
        assert time.monotonic() - started < 60  # a time limit of 10 s would raise EngineError, not Cancelled
    finally:
        done.set()
        host.close()


def test_ctrl_c_in_the_terminal_chat_stops_a_slow_render(tmp_path):
    import queue
    import signal

    path = write_tiny_llama(tmp_path / "slow.gguf", chat_template=SLOW_ON_REPLY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", str(path), "--system", "x", "-n", "2", "--ctx-size", "256"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()

    def wait_for(phrase: str, seconds: float = 120) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if phrase in line:
                return line
        raise AssertionError(f"no line with {phrase!r} within {seconds} s")

    try:
        wait_for("template: gguf")  # loaded; the prompt is waiting
        proc.stdin.write("hi\n")
        proc.stdin.flush()
        time.sleep(3)  # rendering now: the system message makes the template loop
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert "Rendering the chat template was cancelled" in wait_for("cancelled", 60)
        assert time.monotonic() - started < 60
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


# ------------------------------------------------------------------ fallbacks and overrides
@pytest.mark.parametrize(
    "own, why",
    [("{% for %}", "does not compile"), ("{{ 'x' * 10**9 }}", "may be hostile"),
     ("{{ raise_exception('no') }}", "refused"), (12, "not text"), ("{{ 'a' }}" * 30000, "characters long")],
)  # fmt: skip
def test_a_failing_model_template_falls_back_to_a_builtin_with_a_warning(own, why):
    t = template_for(own, "llama", ["<|im_start|>"], "<s>", "</s>")
    assert t.source == "chatml (fallback)"
    assert why in t.warning and "built-in 'chatml'" in t.warning and "--template" in t.warning
    assert t.render([Message("user", "hi")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_model_with_a_broken_template_loads_with_the_fallback(tmp_path):
    path = write_tiny_llama(tmp_path / "broken.gguf", chat_template="{% for m in messages %}{{ m.content }")
    rt = Runtime()
    loaded = list(rt.load(path, LoadSettings(n_ctx=256)))[-1]
    assert loaded.template_source.endswith("(fallback)") and "does not compile" in loaded.template_warning
    assert rt.render_tokens([Message("user", "hi")])
    rt.close()


def test_a_template_file_overrides_the_models(tmp_path):
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", encoding="utf-8")
    t = template_for("{% for %}", "llama", [], "", "", override=str(jinja))
    assert t.source == "file mine.jinja" and not t.warning
    assert t.render(CONVO[:2]) == "system: Be kind.\nuser: Hi\n"
    (tmp_path / "bad.jinja").write_bytes(b"\xff\xfe{{")
    with pytest.raises(EngineError, match="UTF-8"):
        template_for(None, "llama", [], "", "", override=str(tmp_path / "bad.jinja"))


def test_the_cli_shows_the_fallback_warning(tmp_path):
    path = write_tiny_llama(tmp_path / "broken.gguf", chat_template="{% if %}")
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(path), "hi", "-n", "2", "--ctx-size", "256"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "ingle: warning: The chat template (gguf) does not compile" in run.stderr
    assert "Traceback" not in run.stderr


# ------------------------------------------------------------------ the window
def open_window(qtbot, db: Path, model: Path):
    from app.main import MainWindow
    from engine.conversations import ConversationStore

    window = MainWindow(store=ConversationStore(db), model=model)
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.model_ready, timeout=120_000):
        pass
    return window


def test_window_warns_of_a_fallback_offers_an_override_and_sends_reasoning_whole(qtbot, tmp_path):
    path = write_tiny_llama(tmp_path / "broken.gguf", chat_template="{% for %}")
    window = open_window(qtbot, tmp_path / "chats.sqlite3", path)
    try:
        assert window.loaded.template_source.endswith("(fallback)")
        assert window.info_banner.isVisible() and "does not compile" in window.info_banner.label.text()
        # the override in the advanced load settings reaches the engine
        panel = window.model_panel
        panel.template_box.setCurrentIndex(panel.template_box.findData("llama3"))
        assert panel.chat_template() == "llama3"
        with qtbot.waitSignal(window.model_ready, timeout=120_000):
            window.load_model(str(path))
        assert window.loaded.template_source == "llama3" and not window.info_banner.isVisible()
        jinja = tmp_path / "mine.jinja"
        jinja.write_text("{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
        panel.use_template_file(str(jinja))
        assert panel.chat_template() == str(jinja) and "mine.jinja" in panel.template_box.currentText()
        with qtbot.waitSignal(window.model_ready, timeout=120_000):
            window.load_model(str(path))
        assert window.loaded.template_source == "file mine.jinja"
        # earlier replies go to the engine whole; the template decides what to keep of their reasoning
        window.new_chat()
        user = window.store.add_message(window.conversation, None, "user", "2+2?")
        window.store.add_message(window.conversation, user.id, "assistant", "<think>\nadd\n</think>\n\n4")
        sent = window.engine_messages()
        assert sent[-1] == Message("assistant", "<think>\nadd\n</think>\n\n4")
    finally:
        window.close()
