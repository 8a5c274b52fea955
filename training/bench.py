"""LoRA training speed for `ingle bench` (mode 7): a few optimizer steps on the bundled sample chats.

Runs the same path the CLI and the wizard use (`TrainingRun`, a child process), so the figure includes what a user
gets, not a hand-tuned loop. The first steps (allocator and autograd warm-up) are timed apart from the rest.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path

from training.events import TrainStarted, TrainStep
from training.sample_data import OUT as SAMPLE_DATA

WARMUP_STEPS = 2
MEASURED_STEPS = 6


def lora_tokens_per_second(
    model_path: str, threads: int, steps: int = MEASURED_STEPS, warmup: int = WARMUP_STEPS,
    data: str | Path = SAMPLE_DATA,
) -> dict:  # fmt: skip
    """Train `warmup + steps` steps (rank 8, batch 4, all projections) and time the last `steps` of them.

    tokens/s counts every token a step trains on (prompt and reply, not padding), between the arrival of the
    warm-up's last step and the run's last step, as the parent sees the events.
    """
    from training.lora import TrainSettings
    from training.runner import TrainingRun

    warmup, steps = max(1, warmup), max(1, steps)  # the clock starts at the end of the last warm-up step

    settings = TrainSettings(
        max_steps=warmup + steps, batch_size=4, rank=8, val_fraction=0.0, threads=threads
    )
    arrivals: list[tuple[float, int]] = []
    started = time.perf_counter()
    first_step_at = None
    trainable, bf16 = 0, False
    with tempfile.TemporaryDirectory(prefix="ingle-bench-train-") as tmp:
        with TrainingRun(model_path, data, Path(tmp) / "bench-adapter.gguf", settings) as run:
            for ev in run.events():
                now = time.perf_counter()
                if isinstance(ev, TrainStarted):
                    trainable = ev.trainable_params
                    bf16 = ev.bf16
                elif isinstance(ev, TrainStep):
                    first_step_at = first_step_at or now
                    arrivals.append((now, ev.tokens_done, ev.memory_bytes))
    timed = arrivals[warmup - 1 :]
    (t0, n0, _), (t1, n1, _) = timed[0], timed[-1]
    step_seconds = [b[0] - a[0] for a, b in itertools.pairwise(timed)]
    step_tokens = [b[1] - a[1] for a, b in itertools.pairwise(timed)]
    return {
        "tokens_per_s": (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0,
        "steps": steps,
        "warmup_steps": warmup,
        "step_seconds": statistics.median(step_seconds) if step_seconds else 0.0,
        "step_seconds_min_max": [min(step_seconds), max(step_seconds)] if step_seconds else [],
        "tokens_per_step": statistics.median(step_tokens) if step_tokens else 0,
        "start_to_first_step_seconds": (first_step_at or started) - started,
        "peak_memory_bytes": max(m for _, _, m in arrivals) if arrivals else 0,
        "trainable_params": trainable,
        "bf16": bf16,
        "threads": threads,
        "settings": {
            "rank": settings.rank,
            "batch_size": settings.batch_size,
            "cutoff_len": settings.cutoff_len,
        },
        "data": str(data),
    }
