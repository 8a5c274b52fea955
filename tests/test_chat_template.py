"""Chat templates: the GGUF's own in a sandbox, built-in fallbacks per family, plain errors for broken ones."""

import pytest
from gguf_factory import write_tiny_llama

from engine.chat_template import BUILTIN_TEMPLATES, ChatTemplate, builtin_for, template_for
from engine.errors import EngineError
from engine.events import Message
from engine.runtime import Runtime
from engine.settings import LoadSettings

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
    assert loaded.template_source == "gguf"
    assert rt.template.render([Message("user", "hi")]) == "<<user>>hi<<assistant>>"
    rt.close()


def test_sandbox_blocks_unsafe_templates():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(EngineError, match="failed|refused"):
        ChatTemplate(evil, "gguf").render(CONVO)


def test_broken_templates_give_plain_errors():
    with pytest.raises(EngineError, match="does not compile"):
        ChatTemplate("{% for %}", "gguf")
    strict = ChatTemplate("{{ raise_exception('Roles must alternate') }}", "gguf")
    with pytest.raises(EngineError, match="Roles must alternate"):
        strict.render(CONVO)
    with pytest.raises(EngineError, match="Unknown chat template 'zephyr'"):
        template_for(None, "llama", [], "", "", override="zephyr")
