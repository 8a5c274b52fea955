"""The training cost model: peak memory and time of a LoRA run, before it starts (the wizard shows both)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.gguf_info import ModelInfo
from training.lora import TrainSettings

FLOPS_PER_THREAD = 4.5e10  # CPU LoRA training throughput measured with `ingle bench` (mode 7) on the starter
TORCH_BYTES = 700 << 20  # torch's own memory once loaded
ACTIVATION_FACTOR = 34  # float32 activations kept per token, layer and embedding dimension (measured)


def training_estimate(
    info: ModelInfo, settings: TrainSettings, stats: Mapping[str, Any] | None
) -> tuple[int, float | None]:
    """(peak memory in bytes, seconds or None without a dataset) for training `info` with `settings`.

    Memory: the base dequantized to float32 plus its load-time copies (9 bytes per parameter), activations per
    token of the batch, LoRA weights with their AdamW state, torch's own ~700 MB. Time: starting the child and
    dequantizing the GGUF (~5 s + 0.1 s per million parameters), then 6 FLOPs per parameter and token on the
    layers that compute (the embedding table is a lookup), at the throughput `ingle bench` measured. Checked on
    the starter + sample (Quick): estimated 3.4 GiB / 114 s, measured 3.2 GiB / ~120 s.
    """
    params = info.parameter_count
    embed = info.vocab_size * info.n_embd
    compute = max(params - embed, params // 10)
    tokens_per_batch = settings.batch_size * min(settings.cutoff_len, (stats or {}).get("max_len", 256))
    activations = tokens_per_batch * info.n_embd * info.n_layers * ACTIVATION_FACTOR * 4
    lora = settings.rank * 2 * info.n_embd * info.n_layers * len(settings.target_modules) * 16
    memory = 9 * params + activations + lora + TORCH_BYTES
    if not stats:
        return memory, None
    tokens = stats["tokens"] * stats["train_examples"] / max(1, stats["examples"]) * settings.epochs
    if settings.max_steps:  # the total number of steps, overriding epochs (training cycles the data)
        per_step = stats["tokens"] / max(1, stats["examples"]) * settings.batch_size * settings.grad_accum
        tokens = per_step * settings.max_steps
    threads = settings.threads or max(1, (os.cpu_count() or 2))
    start = 5.0 + params / 1e7
    return memory, start + tokens * 6 * compute / (FLOPS_PER_THREAD * threads)
