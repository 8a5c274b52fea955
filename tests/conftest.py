"""Shared fixtures: offscreen Qt, an isolated Ingle home, tiny generated GGUF models and the starter model."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

# Before anything imports Qt or the library: render offscreen, keep user data out of the real home.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ingle-test-home-"))
os.environ["INGLE_HOME"] = str(_SESSION_HOME)
# A suite started in the background by a shell (`cmd &`) inherits SIGINT ignored, and so would every child it
# starts: the Ctrl-C tests could not interrupt them. Python's own handler here is reset to the default in children.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from gguf_factory import corrupt_variants, write_tiny_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_unconfigure(config) -> None:
    """The session's Ingle home (the starter model's copy, indexes, logs: ~300 MB) goes with the session."""
    import shutil

    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir) -> Path:
    """A 600 KB random-weight llama model with a real SPM vocab; loads in milliseconds."""
    return write_tiny_llama(models_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def corrupt_files(models_dir, tiny_model) -> dict[str, Path]:
    return corrupt_variants(tiny_model, models_dir / "corrupt")


@pytest.fixture(scope="session")
def starter_model() -> Path:
    """The real Gemma 3 270M starter, assembled into the session's library once."""
    from engine.library import Library

    return Library().ensure_starter().file


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """An empty Ingle home for tests that change the library."""
    home = tmp_path / "home"
    monkeypatch.setenv("INGLE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_runtime(tiny_model):
    """One in-process engine on the tiny model (context 512) for the whole session: loading once keeps the
    suite fast; tests that need other load settings make their own."""
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    rt = Runtime()
    list(rt.load(tiny_model, LoadSettings(n_ctx=512)))
    yield rt
    rt.close()
