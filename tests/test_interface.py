"""Both engines implement the one Engine interface, with the same signatures, and the host's wire carries
nothing but its methods."""

from __future__ import annotations

import inspect

import pytest

from engine.errors import EngineError
from engine.events import Message, ModelLoaded
from engine.host import EngineHost
from engine.interface import METHODS, STREAMING, Engine, Inspection, KVState
from engine.runtime import Runtime
from engine.settings import LoadSettings, OverflowPolicy, SamplingSettings


def _params(fn) -> list[tuple[str, object]]:
    sig = inspect.signature(fn)
    return [(p.name, p.default) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("impl", [Runtime, EngineHost])
def test_every_interface_method_is_implemented_with_the_same_signature(impl):
    for name in sorted(METHODS):
        ours = getattr(impl, name)
        assert _params(ours) == _params(getattr(Engine, name)), f"{impl.__name__}.{name}"
    assert STREAMING <= METHODS


def test_runtime_and_host_are_engines(tiny_model):
    rt = Runtime()
    host = EngineHost(start=False)
    assert isinstance(rt, Engine) and isinstance(host, Engine)


def test_host_answers_typed_results_and_refuses_other_names(tiny_model):
    with EngineHost(hang_timeout=120) as host:
        loaded = [ev for ev in host.load(tiny_model, LoadSettings(n_ctx=256)) if isinstance(ev, ModelLoaded)]
        assert loaded and loaded[0].n_ctx == 256
        state = host.inspect([Message("user", "hi")], "there", SamplingSettings(top_k=3), OverflowPolicy.STOP)
        assert isinstance(state, Inspection) and isinstance(state.kv, KVState)
        assert state.kv.n_past == sum(end - start for _, start, end in state.budget.spans)
        before = host.evaluation_count()
        stages = host.preview(SamplingSettings(top_k=2))
        assert stages[-1].kept <= 2 and host.evaluation_count() == before
        assert host.piece(host.tokenize("hello")[0])
        # the wire protocol dispatches Engine methods only: not private helpers, not attributes
        for name in ("_decode", "unload_everything", "__class__"):
            with pytest.raises(EngineError, match="not an engine method"):
                host._call(name)
        assert host.tokenize("still alive")  # the child lives on
