"""Turn chat messages into a prompt: the GGUF's own Jinja template, sandboxed, or a built-in per model family."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import EngineError
from engine.events import Message

BUILTIN_TEMPLATES: dict[str, str] = {
    "gemma": (
        "{{ bos_token }}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
    ),
    "chatml": (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{%- for message in messages -%}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
    ),
    "mistral": (
        "{{ bos_token }}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{%- else -%}{{ message['content'] + eos_token }}{%- endif -%}"
        "{%- endfor -%}"
    ),
}

# Markers in a vocabulary that identify a template family.
_VOCAB_MARKERS = (
    ("<start_of_turn>", "gemma"),
    ("<|start_header_id|>", "llama3"),
    ("[INST]", "mistral"),
    ("<|im_start|>", "chatml"),
)


def builtin_for(architecture: str, special_tokens: Sequence[str] = ()) -> str:
    """Pick the built-in template family for a model without its own template."""
    if architecture.startswith("gemma"):
        return "gemma"
    present = set(special_tokens)
    for marker, family in _VOCAB_MARKERS:
        if marker in present:
            return family
    if architecture in ("mistral", "mistral3"):
        return "mistral"
    return "chatml"


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@dataclass
class ChatTemplate:
    """A compiled chat template. `source` says where it came from: 'gguf' or a built-in family name."""

    text: str
    source: str
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.text)
        except jinja2.TemplateError as err:
            raise EngineError(f"The model's chat template ({self.source}) does not compile: {err}") from None

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as err:
            raise EngineError(f"The chat template ({self.source}) refused these messages: {err}") from None
        except Exception as err:  # a template is code from the model file; contain whatever it raises
            raise EngineError(
                f"The chat template ({self.source}) failed: {type(err).__name__}: {err}"
            ) from None


def template_for(
    gguf_template: str | None,
    architecture: str,
    special_tokens: Sequence[str],
    bos_token: str,
    eos_token: str,
    override: str | None = None,
) -> ChatTemplate:
    """The template chat uses: an explicit override (a built-in name), else the GGUF's own, else a built-in."""
    if override:
        if override not in BUILTIN_TEMPLATES:
            raise EngineError(
                f"Unknown chat template '{override}'; choose one of {', '.join(BUILTIN_TEMPLATES)}."
            )
        return ChatTemplate(BUILTIN_TEMPLATES[override], override, bos_token, eos_token)
    if gguf_template:
        return ChatTemplate(gguf_template, "gguf", bos_token, eos_token)
    family = builtin_for(architecture, special_tokens)
    return ChatTemplate(BUILTIN_TEMPLATES[family], family, bos_token, eos_token)
