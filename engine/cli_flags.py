"""Command-line flags for settings: one flag per LoadSettings/SamplingSettings field, typed from the dataclass and
validated by it; adapter specs; untrusted text from the command line (shared by run, chat, inspect, serve, eval)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from enum import Enum
from pathlib import Path

from engine import settings as settings_module
from engine.errors import SettingsError
from engine.text import printable

# Short aliases users know from llama.cpp's own tools.
_ALIASES = {"n_ctx": ["-c", "--ctx-size"], "n_threads": ["-t", "--threads"], "n_gpu_layers": ["-ngl", "--gpu-layers"],
            "max_tokens": ["-n"], "temperature": ["--temp"]}  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One flag per settings field, typed from the dataclass; values are validated by the settings class."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flags = [_flag(f.name), *_ALIASES.get(f.name, [])]
        helptext = f.metadata.get("help", "")
        if f.type == "bool":
            group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        elif f.type.startswith("tuple[str"):
            group.add_argument(
                *flags, dest=f.name, action="append", metavar="TEXT", help=helptext + " (repeatable)"
            )
        elif f.type.startswith("tuple[tuple"):
            group.add_argument(
                *flags, dest=f.name, action="append", metavar="ID=BIAS", help=helptext + " (repeatable)"
            )
        elif isinstance(choices := getattr(settings_module, f.type, None), type) and issubclass(
            choices, Enum
        ):
            values = [c.value for c in choices]
            group.add_argument(
                *flags,
                dest=f.name,
                default=None,
                choices=values,
                metavar="{" + ",".join(values) + "}",
                help=helptext,
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(
                *flags,
                dest=f.name,
                type=kind,
                default=None,
                metavar=f.metadata.get("metavar", f.type.upper()),
                help=helptext,
            )


def settings_from_args(args: argparse.Namespace, cls):
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.type.startswith("tuple[tuple"):
            value = [parse_bias(item) for item in value]
        elif f.name in ("grammar", "json_schema") and value.startswith("@"):
            value = read_text(value[1:], f.name)
        elif isinstance(value, str):
            value = valid_text(value, _flag(f.name))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [valid_text(v, _flag(f.name)) for v in value]
        values[f.name] = value
    return cls.from_dict(values)


def resolve_draft(load, library):
    """The draft model as an absolute file path (a library name or a path relative to here), so the engine child
    finds the same file; the load settings unchanged without one."""
    if not load.draft:
        return load
    return load.replace(draft=str(Path(library.resolve(load.draft)).resolve()))


def parse_bias(item: str) -> tuple[int, float]:
    tok, sep, bias = item.partition("=")
    try:
        return int(tok), float(bias if sep else "nan")
    except ValueError:
        raise SettingsError("logit_bias", f"'{item}' is not ID=BIAS (e.g. 42=-100)") from None


def read_text(path: str, field: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SettingsError(field, f"cannot read {printable(path)}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SettingsError(
            field, f"{printable(path)} is not UTF-8 text (byte {err.start:,} is not); give a text file"
        ) from None
    if "\0" in text:
        raise SettingsError(
            field, f"{printable(path)} holds NUL bytes, so it is not a text file; give a text file"
        )
    return text


def valid_text(text: str, what: str) -> str:
    """Text from argv or a terminal that was not valid UTF-8 (Python keeps such bytes as surrogates, which
    cannot be tokenized): decode it with U+FFFD for the bad bytes, and say so."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        print(
            f"ingle: note: the {what} is not valid UTF-8; the bad bytes were replaced by \ufffd.",
            file=sys.stderr,
        )
        return fixed


def parse_adapter(spec: str) -> tuple[str, float]:
    """'FILE[:SCALE]' -> (path, scale)."""
    path, sep, scale = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        try:
            return path, float(scale)
        except ValueError:
            pass
    return spec, 1.0
