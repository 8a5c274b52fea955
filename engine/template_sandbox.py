"""Render untrusted Jinja chat templates exactly as transformers does, bounded in time and memory.

The environment is transformers' (utils/chat_template_utils.py `_compile_jinja_template`): an immutable sandbox
with trim_blocks, lstrip_blocks, loop controls, the `{% generation %}` tag, its tojson, raise_exception,
strftime_now, dict and namespace. On top, every call, attribute, operator, filter, loop step and printed value
checks a deadline, a size budget and a cancel flag. The checks never change what a template prints; they only
stop one that runs too long or grows too big (nested range() loops, 'x' * 10**9, a list printed a million
times), before it takes the engine's memory.

Over 500 lines on purpose: the environment and its guards must be read together, one guard per way a template
can run away; split, a missing guard would be harder to see.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context
from jinja2.visitor import NodeTransformer

from engine.errors import Cancelled

# Bounds on one render. A template is code from the model file: real ones take milliseconds and print the
# conversation plus a few KB of markup, so these only stop hostile or broken ones.
RENDER_SECONDS = 10.0
MAX_OUTPUT_CHARS = 16_000_000  # plus 4x the conversation's own length
_MAX_ITEMS = 1_000_000  # items in one list (batch/slice counts, repeated lists)
_MAX_INT_BITS = 1 << 17  # a number of ~40,000 digits; templates count messages and format dates
_MAX_PAD = 100_000  # widths in format specs and json indents


class LimitExceeded(Exception):
    """A render went past a bound; `what` completes "the chat template ...". Never caught by Jinja."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class _Budget:
    """Time, size and cancel checks for the render in progress (found through a context variable, so a
    template cannot reach it)."""

    def __init__(self, seconds: float, max_chars: int, cancel: threading.Event | None):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.max_chars = max_chars
        self.max_emitted = 4 * max_chars  # text printed inside macros and {% set %} blocks is counted again
        self.emitted = 0
        self.cancel = cancel
        self.weights: dict[int, tuple[Any, int]] = {}  # see _weight

    def tick(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Rendering the chat template was cancelled.")
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"ran longer than {self.seconds:g} s")

    def emit(self, n: int) -> None:
        self.emitted += n
        if self.emitted > self.max_emitted:
            raise LimitExceeded(f"produced more than {_mb(self.max_chars)} MB")
        self.tick()


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "ingle_template_budget", default=None
)


def _mb(chars: int) -> str:
    return f"{chars / 1e6:g}"


def _limit() -> int:
    budget = _BUDGET.get()
    return budget.max_chars if budget else MAX_OUTPUT_CHARS


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def _too_big(estimate: float) -> None:
    limit = _limit()
    if estimate > limit:
        raise LimitExceeded(f"produced more than {_mb(limit)} MB")


def _weight(value: Any) -> int:
    """About how many characters str() or JSON would print for `value`, counting a list that holds the same
    string many times as many copies (that is what printing it costs). Stops counting far past the budget.
    Lists and dicts cannot change inside the immutable sandbox, so a render measures each one once."""
    budget = _BUDGET.get()
    limit = budget.max_emitted if budget else 4 * MAX_OUTPUT_CHARS
    seen: dict[int, tuple[Any, int]] = (
        budget.weights if budget else {}
    )  # id -> (the object, kept alive; weight)

    def walk(v: Any) -> int:
        if isinstance(v, str):
            return len(v) + 2
        if isinstance(v, (bytes, bytearray)):
            return 4 * len(v) + 3
        if isinstance(v, bool) or v is None:
            return 5
        if isinstance(v, int):
            return v.bit_length() // 3 + 2
        if isinstance(v, Namespace):  # its attributes can be reassigned: measured anew each time
            return walk(dict(v._Namespace__attrs))  # type: ignore[attr-defined]
        if isinstance(v, (list, tuple, set, frozenset, dict)):
            known = seen.get(id(v))
            if known is not None:
                return known[1]
            total = 2
            if isinstance(v, dict):
                for key, item in v.items():
                    total += walk(key) + walk(item) + 4
                    if total > limit:
                        break
            else:
                for item in v:
                    total += walk(item) + 2
                    if total > limit:
                        break
            seen[id(v)] = (v, total)
            return total
        return 24

    try:
        return walk(value)
    except RecursionError:
        raise LimitExceeded("nests its data too deeply") from None


def _check_value(value: Any) -> Any:
    limit = _limit()
    if isinstance(value, str):
        if len(value) > limit:
            _too_big(len(value))
    elif isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise LimitExceeded(f"made a number of more than {_MAX_INT_BITS} bits")
    elif isinstance(value, (list, tuple, dict, set, frozenset, bytes)):
        if len(value) > _MAX_ITEMS:
            raise LimitExceeded(f"made a list of more than {_MAX_ITEMS:,} items")
        _too_big(_weight(value))
    return value


_FORMAT_NUMBER = re.compile(r"\d+")


def _check_format_string(fmt: str, args: Sequence[Any]) -> None:
    """Widths and precisions in a %- or {}-format string stay small ('%999999999s' is 1 GB of spaces)."""
    if any(len(n) > 6 or int(n) > _MAX_PAD for n in _FORMAT_NUMBER.findall(fmt)):
        raise LimitExceeded(f"asked for a field wider than {_MAX_PAD:,} characters")
    if ("*" in fmt or re.search(r"\{[^{}]*:[^{}]*\{", fmt)) and any(
        isinstance(a, int) and abs(a) > _MAX_PAD for a in args
    ):
        raise LimitExceeded(f"asked for a field wider than {_MAX_PAD:,} characters")


def _flat_args(args: Any) -> list:
    if isinstance(args, dict):
        return list(args.values())
    if isinstance(args, (list, tuple)):
        return list(args)
    return [args]


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple, bytes)) and isinstance(n, int):
                if len(seq) * max(n, 0) > _MAX_ITEMS and not isinstance(seq, (str, bytes)):
                    raise LimitExceeded(f"made a list of more than {_MAX_ITEMS:,} items")
                _too_big(_weight(seq) * max(n, 0))
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise LimitExceeded(f"made a number of more than {_MAX_INT_BITS} bits")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > _MAX_INT_BITS:
                raise LimitExceeded(f"made a number of more than {_MAX_INT_BITS} bits")
    elif operator == "%" and isinstance(left, str):
        _check_format_string(left, _flat_args(right))
        _too_big(len(left) + _weight(right))


def _check_method(obj: Any, args: tuple, kwargs: dict) -> None:
    """Methods that can make a result far larger than their inputs: check the size they would make first."""
    target = getattr(obj, "__wrapped__", obj)  # str.format comes wrapped by the sandbox
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(owner, (str, bytes)):
        size = len(owner)
        if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
            _too_big(max(size, args[0]))
        elif name == "expandtabs":
            tab = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tab, int):
                _too_big(size + owner.count("\t" if isinstance(owner, str) else b"\t") * tab)
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            if isinstance(old, type(owner)) and isinstance(new, type(owner)):
                hits = owner.count(old) if old else size + 1
                if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                    hits = min(hits, args[2])
                _too_big(size + hits * max(0, len(new) - len(old)))
        elif name in ("format", "format_map") and isinstance(owner, str):
            _check_format_string(
                owner, list(args) + list(kwargs.values()) + _flat_args(args[0] if args else ())
            )
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            _too_big(size * max(1, longest))
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            _too_big(length)
    _too_big(sum(_weight(a) for a in (*args, *kwargs.values())))


class _Guarded:
    """An iterable a {% for %} loop walks: each step checks the time budget and the cancel flag."""

    def __init__(self, iterable: Any):
        self.iterable = iterable

    def __iter__(self):
        for item in self.iterable:
            _tick()
            yield item

    def __len__(self) -> int:
        return len(self.iterable)


@pass_context
def _loop_guard(_context, iterable: Any) -> Any:
    return _Guarded(iterable)


@pass_context
def _count_text(_context, n: int) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.emit(n)
    return ""


@pass_context
def _concat(context, items: list) -> str:
    """The `~` operator, counted: it turns lists into text without passing any other check."""
    _too_big(sum(_weight(i) for i in items))
    return (markup_join if context.eval_ctx.autoescape else str_join)(items)


@pass_context
def _finalize(_context, value: Any) -> Any:
    """Every {{ ... }} passes here before it is printed: count what it prints."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.emit(len(value) if isinstance(value, str) else _weight(value))
    return value


_GUARD_FILTERS = {"ingle_loop_guard": _loop_guard, "ingle_count_text": _count_text, "ingle_concat": _concat}


class _Instrument(NodeTransformer):
    """Adds the checks that no sandbox hook sees: each loop step, static text printed, and `~`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "ingle_loop_guard", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        static = sum(len(child.data) for child in node.nodes if isinstance(child, nodes.TemplateData))
        if static:
            count = nodes.Filter(
                nodes.Const(static), "ingle_count_text", [], [], None, None, lineno=node.lineno
            )
            node.nodes.insert(0, count)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes), "ingle_concat", [], [], None, None, lineno=node.lineno)


def _guard_filter(name: str, func: Any) -> Any:
    """A built-in filter with its inputs and the size it would make checked first."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        bound = None
        if signature is not None:
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
            except TypeError:
                bound = None  # the filter itself raises the same error
        if bound is not None:
            args, kwargs = _check_filter(name, bound)
        return _check_value(func(*args, **kwargs))

    wrapper.__name__ = getattr(func, "__name__", name)
    wrapper.__doc__ = getattr(func, "__doc__", None)
    if hasattr(func, "jinja_pass_arg"):
        wrapper.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


def _check_filter(name: str, bound: inspect.BoundArguments) -> tuple[tuple, dict]:
    a = bound.arguments
    value = a.get("value", a.get("s", a.get("x")))
    if name == "join" and value is not None and not isinstance(value, (str, list, tuple, dict)):
        a["value"] = value = list(value)  # a generator: materialize it to measure it
    for key, arg in a.items():
        if key not in ("eval_ctx", "environment", "context"):
            _too_big(_weight(arg))
    text = value if isinstance(value, str) else None
    if name == "center" and isinstance(a.get("width"), int):
        _too_big(max(len(text or ""), a["width"]))
    elif name == "indent" and text is not None:
        width = a.get("width")
        pad = width if isinstance(width, int) else len(str(width))
        _too_big(len(text) + (text.count("\n") + 1) * pad)
    elif name == "wordwrap" and text is not None and isinstance(a.get("width"), int):
        wrap = a.get("wrapstring") or "\n"
        _too_big(len(text) + (len(text) // max(1, a["width"]) + 1) * len(str(wrap)))
    elif name == "replace" and text is not None:
        old, new, count = str(a.get("old", "")), str(a.get("new", "")), a.get("count")
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _too_big(len(text) + hits * max(0, len(new) - len(old)))
    elif name == "join" and isinstance(value, (list, tuple)):
        _too_big(_weight(value) + len(value) * len(str(a.get("d", ""))))
    elif name == "format" and text is not None:
        _check_format_string(text, list(a.get("args", ())) + list(a.get("kwargs", {}).values()))
    elif name in ("batch", "slice"):
        count = a.get("linecount", a.get("slices"))
        if isinstance(count, int) and count > _MAX_ITEMS:
            raise LimitExceeded(f"made a list of more than {_MAX_ITEMS:,} items")
    elif name == "tojson":
        indent = a.get("indent")
        if (
            isinstance(indent, int)
            and indent > _MAX_PAD
            or isinstance(indent, str)
            and len(indent) > _MAX_PAD
        ):
            raise LimitExceeded(f"asked for a field wider than {_MAX_PAD:,} characters")
    return bound.args, bound.kwargs


# ------------------------------------------------------------------ transformers' environment
def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
):
    """transformers' tojson: keeps key order and non-ASCII text, no HTML escaping."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # the name templates call it with
    return datetime.now().strftime(format)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if isinstance(n, int) and isinstance(max, int):
        _too_big(n * max * 12)
    from jinja2.utils import generate_lorem_ipsum

    return generate_lorem_ipsum(n, html, min, max)


class _TemplateDict:
    """transformers' `dict` global: builds dicts, exposes nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(Namespace):
    """transformers' `namespace`: no underscore names, so a template cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick for namespace(self=...)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}."
            )


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}`: marks the assistant's part of the text (for
    training masks); rendering prints its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    def _generation_support(self, caller: Any) -> str:
        return caller()


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment (immutable sandbox, trim_blocks, lstrip_blocks, loop controls,
    the generation tag, its tojson, raise_exception, strftime_now, dict and namespace), plus checks of time,
    size and cancel at every call, attribute, operator, filter, loop step and printed value. They never change
    what a template prints, only stop one that runs too long or grows too big."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
            finalize=_finalize,
        )
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}
        self.filters.update(_GUARD_FILTERS)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.globals["dict"] = _TemplateDict()
        self.globals["namespace"] = _TemplateNamespace
        self.globals["lipsum"] = _lipsum

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Instrument().visit(super()._parse(source, name, filename))
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _check_value(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_method(__obj, args, kwargs)
        return _check_value(super().call(__context, __obj, *args, **kwargs))


def render(
    template: jinja2.Template, variables: dict[str, Any], seconds: float, max_chars: int,
    cancel: threading.Event | None = None,
) -> str:  # fmt: skip
    """Render a template compiled by a BoundedEnvironment. Raises LimitExceeded past `seconds` or `max_chars`
    (anything printed or built along the way counts), Cancelled when `cancel` is set meanwhile; whatever
    else the template raises passes through."""
    budget = _Budget(seconds, max_chars, cancel)
    token = _BUDGET.set(budget)
    try:
        budget.tick()
        blocks, parts, total = [], [], 0
        for chunk in template.generate(**variables):
            total += len(chunk)
            if total > max_chars:
                raise LimitExceeded(f"produced more than {_mb(max_chars)} MB")
            budget.tick()
            parts.append(chunk)
            if len(parts) >= 4096:  # millions of tiny strings would cost ~50 bytes per character
                blocks.append("".join(parts))
                parts.clear()
        return "".join(blocks) + "".join(parts)
    finally:
        _BUDGET.reset(token)
