"""GPU offload (CUDA, Metal, Vulkan builds of llama.cpp), through engine children as the app runs them: the
hardware report, "Fit automatically" choosing full offload, llama.cpp's own count of offloaded layers, and an
offloaded model replying as the CPU does (greedy, up to near ties), alone, in batched slots and with prompt
lookup. On a CPU build of llama-cpp-python these are skipped: there is nothing to offload to."""

from __future__ import annotations

import os
import re

import llama_cpp
import pytest
from test_slots import NO_EOS, PROMPTS, TINY_TIE_GAP, agree, concurrently, run

from engine.events import ModelLoaded, ReplyDone
from engine.host import EngineHost
from engine.settings import LoadSettings, SamplingSettings

pytestmark = pytest.mark.skipif(
    not llama_cpp.llama_supports_gpu_offload(),
    reason="this llama.cpp build cannot offload to a GPU (a CPU build)",
)
GREEDY = SamplingSettings(temperature=0, max_tokens=24, logit_bias=NO_EOS)


def start(tiny_model, settings: LoadSettings) -> tuple[EngineHost, ModelLoaded]:
    host = EngineHost(hang_timeout=120)
    loaded = list(host.load(tiny_model, settings))[-1]
    assert isinstance(loaded, ModelLoaded)
    return host, loaded


@pytest.fixture(scope="module")
def on_gpu(tiny_model):
    """An engine child with the tiny model's layers where "Fit automatically" puts them (llama.cpp logs all)."""
    os.environ["INGLE_LLAMA_LOG"] = "1"  # the child inherits it: llama.cpp's load report lands in its log
    try:
        host, loaded = start(tiny_model, LoadSettings(n_ctx=512, fit=True))
    finally:
        del os.environ["INGLE_LLAMA_LOG"]
    if not host.hardware().gpus:
        host.close()
        pytest.skip("llama.cpp found no GPU on this machine")
    yield host, loaded
    host.close()


@pytest.fixture(scope="module")
def on_cpu(tiny_model):
    host, _ = start(tiny_model, LoadSettings(n_ctx=512, n_gpu_layers=0))
    yield host
    host.close()


def test_the_engine_reports_the_gpu_and_fit_puts_every_layer_there(on_gpu):
    host, loaded = on_gpu
    hw = host.hardware()
    (gpu, *_) = hw.gpus
    assert hw.gpu_offload and gpu.memory_total > 0 and 0 < gpu.memory_free <= gpu.memory_total
    print(hw.describe(), loaded.fit_note, sep="\n")
    assert loaded.n_gpu_layers == loaded.info["layers"] + 1  # every layer and the output
    assert "all layers on the GPU" in loaded.fit_note
    log = host.stderr_tail(max_bytes=1 << 24)  # the child's whole log
    counts = re.findall(r"offloaded (\d+)/(\d+) layers to GPU", log)
    assert counts and counts[-1][0] == counts[-1][1]  # llama.cpp's own count: all of them


def test_offloaded_replies_match_the_cpu(on_gpu, on_cpu):
    gpu = on_gpu[0]
    for prompt in PROMPTS[:4]:
        cpu_events = list(on_cpu.complete(prompt, GREEDY.replace(top_logprobs=2)))
        done = [e for e in gpu.complete(prompt, GREEDY) if isinstance(e, ReplyDone)][-1]
        agree(cpu_events, done, TINY_TIE_GAP)  # equal, or parted only where the CPU's top two nearly tied


def test_batched_slots_on_the_gpu_equal_the_same_requests_alone(on_gpu):
    host = on_gpu[0]
    host.start_slots(4, 128)
    try:
        results = concurrently(lambda p: run(host.slot_complete(p, GREEDY))[1], PROMPTS)
        assert all(r.stats.generated_tokens == 24 for r in results)
    finally:
        host.stop_slots()
    alone = [list(host.complete(p, GREEDY.replace(top_logprobs=2))) for p in PROMPTS]
    ties = sum(not agree(alone[i], done, TINY_TIE_GAP) for i, done in enumerate(results))
    assert ties <= len(results) // 2


def test_prompt_lookup_on_the_gpu_keeps_the_greedy_tokens(tiny_model, on_gpu):
    text = "one two three four five six seven eight. one two three four five six seven eight. one two"
    want = list(on_gpu[0].complete(text, GREEDY.replace(top_logprobs=2)))
    looked, _ = start(tiny_model, LoadSettings(n_ctx=512, n_gpu_layers=-1, lookup=True, lookup_ngram=2))
    try:
        got = [e for e in looked.complete(text, GREEDY) if isinstance(e, ReplyDone)][-1]
    finally:
        looked.close()
    agree(want, got, TINY_TIE_GAP)
    assert got.stats.drafting == "prompt lookup"
