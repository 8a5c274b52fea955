"""Events a training run streams to its caller (CLI progress bar, GUI wizard), over a pipe when run in a child."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainPhase:
    """What a run does before its first step and after its last (on a big model loading, dequantizing and
    hashing take minutes).
    `total` > 0: `done` of `total` (examples tokenized)."""

    name: str  # before the steps: "tokenizer", "tokenizing", "model"; after them: "validation", "saving"
    text: str
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class TrainStarted:
    total_steps: int
    start_step: int
    train_examples: int
    val_examples: int
    dataset_stats: dict = field(default_factory=dict)
    trainable_params: int = 0
    bf16: bool = False
    steps_per_epoch: float = 0.0  # optimizer steps in one pass over the training set
    epochs: float = 0.0  # passes the run makes: total_steps / steps_per_epoch
    max_steps: int = 0  # the setting, when it chose total_steps (it overrides epochs)


@dataclass(frozen=True)
class TrainStep:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    memory_bytes: int
    tokens_done: int = 0  # tokens (prompt and reply, no padding) trained on so far in this run


@dataclass(frozen=True)
class ValLoss:
    step: int
    loss: float


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str


@dataclass(frozen=True)
class TrainDone:
    adapter_path: str
    steps: int
    final_loss: float
    val_loss: float | None
    seconds: float
    cancelled: bool = False
