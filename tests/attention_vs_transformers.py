"""Measure (not a test: loading the starter in transformers takes minutes on 2 cores) how far the attention
llama.cpp computes for the starter is from transformers' eager attention on the same GGUF, dequantized to F32.

PYTHONPATH=. python tests/attention_vs_transformers.py [MODEL.gguf]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.events import Message
    from engine.runtime import Runtime
    from engine.settings import LoadSettings

    rt = Runtime()
    list(rt.load(path, LoadSettings(n_ctx=1024)))
    messages = [
        Message("user", "Write one sentence about the sea."),
        Message("assistant", "The sea is a vast, restless blue that carries the moon in its waves."),
    ]
    tokens = rt.render_tokens(messages, add_generation_prompt=False)
    ours = rt.attention(tokens).weights
    rt.close()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(torch.tensor([tokens]), output_attentions=True)
    theirs = np.stack([a[0].numpy() for a in out.attentions])
    gap = np.abs(theirs - ours)
    print(f"{len(tokens)} tokens, {ours.shape[0]} layers x {ours.shape[1]} heads")
    print(
        f"|llama.cpp - transformers|: max {gap.max():.4f}, mean {gap.mean():.5f}, p99 {np.quantile(gap, 0.99):.4f}"
    )
    print(f"same strongest key per query: {(theirs.argmax(-1) == ours.argmax(-1)).mean():.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        from engine.library import Library

        main(Library().ensure_starter().file)
