"""Training presets (Quick, Balanced, Thorough): named TrainSettings for a first run, a real one, a long one."""

from __future__ import annotations

from typing import Any

from training.lora import TrainSettings

# Values that differ from TrainSettings' defaults; every other setting keeps its default.
PRESETS: dict[str, dict[str, Any]] = {
    "Quick": dict(rank=8, alpha=16.0, learning_rate=1e-3, epochs=1.0, batch_size=4, eval_every=20),
    "Balanced": dict(
        rank=16, alpha=32.0, learning_rate=5e-4, epochs=2.0, batch_size=4, eval_every=40, checkpoint_every=50
    ),
    "Thorough": dict(
        rank=32, alpha=64.0, learning_rate=2e-4, epochs=4.0, batch_size=4, eval_every=50, checkpoint_every=100
    ),
}


def preset(name: str) -> TrainSettings:
    """The settings of preset `name` (KeyError for a name that is not one)."""
    return TrainSettings(**PRESETS[name])


def matching_preset(settings: TrainSettings) -> str | None:
    """The first preset whose settings equal `settings`, or None (the user's own mix: "Custom")."""
    return next((name for name in PRESETS if preset(name) == settings), None)
