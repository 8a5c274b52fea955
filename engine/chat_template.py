"""Turn chat messages into a prompt: the GGUF's own Jinja template rendered as transformers renders it, in a
sandbox bounded in time and memory, or a built-in template per model family."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from engine.errors import Cancelled, EngineError
from engine.events import Message
from engine.template_sandbox import (
    MAX_OUTPUT_CHARS,
    RENDER_SECONDS,
    BoundedEnvironment,
    LimitExceeded,
    render,
)

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

# The largest published templates are ~17 KB; compiling takes ~10 s per MB and cannot be interrupted.
MAX_TEMPLATE_CHARS = 200_000

# The reasoning sections models emit (an opened but unclosed one runs to the end of the reply).
_REASONING_RE = re.compile(r"<(think|thinking|reasoning)>(.*?)(</\1>|$)", re.S)
# A template that mentions these reads or removes past reasoning itself (Qwen3, DeepSeek-R1, SmolLM3, granite).
_REASONING_MARKERS = ("</think>", "reasoning_content", "thinking")


def strip_reasoning(text: str) -> str:
    """A reply without its reasoning section, for templates that do not handle reasoning themselves."""
    m = _REASONING_RE.search(text)
    if not m:
        return text
    return (text[: m.start()] + text[m.end() :]).strip()


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


@dataclass
class ChatTemplate:
    """A compiled chat template. `source` says where it came from: 'gguf', a built-in family name, or a file;
    `warning` is set when the model's own template could not be used and this one stands in for it."""

    text: str
    source: str
    bos_token: str = ""
    eos_token: str = ""
    cancel: threading.Event | None = None  # set from another thread: a render in progress stops
    time_limit: float = RENDER_SECONDS
    warning: str = ""
    _template: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise EngineError(
                f"The chat template ({self.source}) is not text but {type(self.text).__name__}."
            )
        if len(self.text) > MAX_TEMPLATE_CHARS:
            raise EngineError(
                f"The chat template ({self.source}) is {len(self.text):,} characters long (at most "
                f"{MAX_TEMPLATE_CHARS:,}); it may be hostile; use --template to override."
            )
        try:
            self._template = BoundedEnvironment().from_string(self.text)
        except jinja2.TemplateError as err:
            raise EngineError(f"The chat template ({self.source}) does not compile: {err}") from None
        except (RecursionError, MemoryError):
            raise EngineError(f"The chat template ({self.source}) nests too deeply to compile.") from None

    @property
    def handles_reasoning(self) -> bool:
        """True when the template reads or removes past reasoning itself (Qwen3, DeepSeek-R1, SmolLM3,
        granite): it then gets replies whole, <think> sections included; other templates get them without."""
        return any(marker in self.text for marker in _REASONING_MARKERS)

    @property
    def uses_tools(self) -> bool:
        """True when the template reads the `tools` variable (Qwen, Llama 3.1+, Mistral, Hermes styles): it then
        gets the tool list, assistant tool calls and tool results as transformers passes them."""
        return re.search(r"\btools\b", self.text) is not None

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> str:
        """The prompt text, as transformers' apply_chat_template(tokenize=False) makes it with this template,
        the model's BOS/EOS text, `tools` (OpenAI-style function tools, or None) and documents=None. A template
        that refuses a system message (Gemma 2, early Mistral) gets it at the top of the first user message, as
        Gemma 3's own does."""
        strip = not self.handles_reasoning
        chat = [_message_dict(m, strip) for m in messages]
        try:
            return self._render(chat, add_generation_prompt, tools)
        except jinja2.TemplateError as err:
            refusal = err
        folded = _fold_system(chat)
        if folded is not None:
            try:
                return self._render(folded, add_generation_prompt, tools)
            except jinja2.TemplateError as err:
                refusal = err  # what is wrong once the system message is out of the way
        raise EngineError(f"The chat template ({self.source}) refused these messages: {refusal}")

    def _render(self, chat: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        """Render; every failure but the template's own refusal (jinja2.TemplateError) becomes an EngineError."""
        variables = {
            "messages": chat,
            "tools": tools or None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        max_chars = (
            MAX_OUTPUT_CHARS + 4 * sum(len(m["content"] or "") for m in chat) + 4 * len(str(tools or ""))
        )
        try:
            return render(self._template, variables, self.time_limit, max_chars, self.cancel)
        except LimitExceeded as err:
            raise EngineError(
                f"The chat template ({self.source}) {err.what}; it may be hostile; use --template to override."
            ) from None
        except (Cancelled, jinja2.TemplateError):
            raise
        except Exception as err:  # a template is code from the model file; contain whatever it raises
            raise EngineError(
                f"The chat template ({self.source}) failed: {type(err).__name__}: {err}"
            ) from None

    def check(self) -> None:
        """Render a one-message conversation: a template that cannot do that cannot chat."""
        self.render([Message("user", "Hello")], True)


def _message_dict(m: Message, strip: bool) -> dict:
    """One message as transformers passes it to a template: tool calls with their arguments as an object."""
    out: dict = {
        "role": m.role,
        "content": strip_reasoning(m.content) if strip and m.role == "assistant" else m.content,
    }
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.loads(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
        out["name"] = m.name
    return out


def _fold_system(chat: list[dict]) -> list[dict] | None:
    """The conversation with its system message moved into the first user message, or None if it has none."""
    if len(chat) < 2 or chat[0]["role"] != "system" or chat[1]["role"] != "user":
        return None
    first = {"role": "user", "content": f"{chat[0]['content']}\n\n{chat[1]['content']}"}
    return [first, *chat[2:]]


def read_template_file(path: str | Path) -> str:
    """A chat template from a .jinja file (a user's override)."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_TEMPLATE_CHARS * 4:
            raise EngineError(f"{path}: {size:,} bytes is too large for a chat template.")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EngineError(
            f"{path}: a chat template must be UTF-8 text ({err.reason} at byte {err.start})."
        ) from None
    except OSError as err:
        raise EngineError(f"{path}: cannot read the chat template: {err.strerror or err}.") from None


def template_for(
    gguf_template: str | None,
    architecture: str,
    special_tokens: Sequence[str],
    bos_token: str,
    eos_token: str,
    override: str | None = None,
    cancel: threading.Event | None = None,
) -> ChatTemplate:
    """The template chat uses: an explicit override (a built-in name or a .jinja file), else the GGUF's own,
    else a built-in. A GGUF template that does not compile or cannot render one message is replaced by the
    built-in for its family, with `warning` saying why."""
    if override:
        if override in BUILTIN_TEMPLATES:
            return ChatTemplate(BUILTIN_TEMPLATES[override], override, bos_token, eos_token, cancel)
        if Path(override).expanduser().is_file():
            text = read_template_file(override)
            chosen = ChatTemplate(text, f"file {Path(override).name}", bos_token, eos_token, cancel)
            chosen.check()
            return chosen
        raise EngineError(
            f"Unknown chat template '{override}'; choose one of {', '.join(BUILTIN_TEMPLATES)} "
            "or give the path of a .jinja file."
        )
    family = builtin_for(architecture, special_tokens)
    if gguf_template:
        try:
            own = ChatTemplate(gguf_template, "gguf", bos_token, eos_token, cancel)
            own.check()
            return own
        except EngineError as err:
            fallback = ChatTemplate(
                BUILTIN_TEMPLATES[family], f"{family} (fallback)", bos_token, eos_token, cancel
            )
            reason = str(err)
            if len(reason) > 300:
                reason = reason[:300] + "…"
            fallback.warning = (
                f"{reason} Using the built-in '{family}' template instead; replies may be poorer. Choose "
                "another with --template, or in the window under Advanced load settings > Chat template."
            )
            return fallback
    return ChatTemplate(BUILTIN_TEMPLATES[family], family, bos_token, eos_token, cancel)
