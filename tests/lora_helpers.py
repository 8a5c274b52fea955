"""Helpers shared by the training tests: a LoRA with random B weights, and llama.cpp's logits for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.evaluate import open_runtime


def random_lora(base: Path, out: Path, std: float, rank: int = 4, alpha: float = 8.0):
    """A torch model with a LoRA whose B matrices are random (so it changes the logits), and its GGUF adapter."""
    import torch

    from training.export import write_adapter
    from training.lora import TrainSettings, add_lora, load_base, lora_weights

    model = add_lora(load_base(base), TrainSettings(rank=rank, alpha=alpha))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, std)
    return model, write_adapter(out, base, lora_weights(model), alpha)


def llama_logits(model_path, adapters, tokens, n_ctx: int = 128) -> np.ndarray:
    """llama.cpp's logits at every position of `tokens`, with the given adapters applied."""
    rt = open_runtime(model_path, adapters, n_ctx)
    try:
        return np.concatenate(list(rt.logits_all(tokens)))
    finally:
        rt.close()
