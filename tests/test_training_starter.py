"""Training on the real starter model (Gemma 3 270M): adapter export equals torch, and one short run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lora_helpers import llama_logits, random_lora

from training.evaluate import open_runtime

pytestmark = pytest.mark.training
torch = pytest.importorskip("torch", reason="training extra not installed (pip install -e .[train])")
from training.export import merge_f16, read_adapter  # noqa: E402
from training.lora import TrainSettings, train  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample_chat.jsonl"


def test_gemma_adapter_in_llama_cpp_matches_torch(starter_model, tmp_path):
    """Against the dequantized base (our F16 merge at scale 0, so no quantization noise): llama.cpp's adapted
    logits correlate > 0.9999 with torch's at every position, differ by < 0.5 (they span ~80), and the adapter's
    effect correlates > 0.999. On the Q4_K_M file itself llama.cpp also quantizes activations, so there we ask
    for per-position correlation > 0.99 and the same top-1 token at 90% of positions."""
    model, adapter = random_lora(starter_model, tmp_path / "gemma-random.gguf", std=0.02)
    assert len(read_adapter(adapter)[1]) == 7 * 18  # q k v o gate up down in each of the 18 layers
    dequantized = merge_f16(starter_model, adapter, tmp_path / "base-f16.gguf", scale=0.0)
    rt = open_runtime(starter_model, n_ctx=64)
    tokens = rt.tokenize("<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n", True)
    rt.close()
    model.eval()
    with torch.no_grad():
        ours = model(torch.tensor([tokens])).logits[0].numpy()
        with model.disable_adapter():
            plain = model(torch.tensor([tokens])).logits[0].numpy()
    cpp = llama_logits(dequantized, [(str(adapter), 1.0)], tokens)
    cpp0 = llama_logits(dequantized, (), tokens)
    assert np.abs(ours - plain).max() > 1.0
    assert min(np.corrcoef(cpp[i], ours[i])[0, 1] for i in range(len(tokens))) > 0.9999
    centered = (cpp - cpp.mean(-1, keepdims=True)) - (
        ours - ours.mean(-1, keepdims=True)
    )  # softmax ignores shifts
    assert np.abs(centered).max() < 0.5
    assert np.corrcoef((cpp - cpp0).ravel(), (ours - plain).ravel())[0, 1] > 0.999
    quantized = llama_logits(starter_model, [(str(adapter), 1.0)], tokens)
    assert min(np.corrcoef(quantized[i], ours[i])[0, 1] for i in range(len(tokens))) > 0.99
    assert (quantized.argmax(-1) == ours.argmax(-1)).mean() >= 0.9


def test_gemma_short_run_on_the_sample_dataset(starter_model, tmp_path):
    events = []
    settings = TrainSettings(max_steps=3, batch_size=2, cutoff_len=48, val_fraction=0.01, learning_rate=5e-4)
    out = tmp_path / "gemma-sample.gguf"
    done = train(starter_model, SAMPLE, out, settings, emit=events.append)
    steps = [e for e in events if type(e).__name__ == "TrainStep"]
    assert done.steps == 3 and len(steps) == 3 and np.isfinite(done.val_loss)
    print(
        f"starter model training: {steps[-1].tokens_per_second:.0f} tok/s, bf16 {next(e for e in events if type(e).__name__ == 'TrainStarted').bf16}"
    )
    rt = open_runtime(starter_model, [(str(out), 1.0)], 128)
    rt.close()
    assert json.loads(out.with_name(out.name + ".json").read_text())["dataset_stats"]["examples"] == 320
