"""The wizard's cost model, step count and presets, Qt-free: plain functions of settings and dataset statistics."""

from __future__ import annotations

import dataclasses

import pytest

from engine.gguf_info import inspect_gguf
from training.estimate import training_estimate
from training.lora import TrainSettings, total_steps
from training.presets import PRESETS, matching_preset, preset

STATS = {"examples": 100, "train_examples": 90, "tokens": 20_000, "max_len": 200}


@pytest.fixture(scope="module")
def info(tiny_model):
    return inspect_gguf(tiny_model)


@pytest.mark.parametrize(
    ("n_train", "values", "steps"),
    [
        (90, dict(batch_size=4), 23),  # ceil(90 / 4) batches, one epoch
        (90, dict(batch_size=4, epochs=2.0), 46),  # 23 batches an epoch (the last one short)
        (90, dict(batch_size=4, epochs=2.0, grad_accum=2), 23),  # 46 batches, 2 a step
        (90, dict(batch_size=4, epochs=0.5), 12),  # ceil(23 * 0.5)
        (90, dict(batch_size=4, epochs=2.0, max_steps=10), 10),  # the cap
        (90, dict(batch_size=4, max_steps=100), 100),  # max_steps is the total, as in HF's Trainer
        (0, dict(batch_size=4), 1),  # no examples: one (empty) step, as the loop runs it
    ],
)
def test_total_steps_counts_batches_epochs_accumulation_and_the_cap(n_train, values, steps):
    assert total_steps(n_train, TrainSettings(**values)) == steps


def test_estimate_has_no_time_without_a_dataset(info):
    memory, seconds = training_estimate(info, TrainSettings(), None)
    assert seconds is None and memory > 9 * info.parameter_count


def test_estimate_grows_with_the_work(info):
    base = TrainSettings(batch_size=4, threads=2)
    memory, seconds = training_estimate(info, base, STATS)
    start = 5.0 + info.parameter_count / 1e7  # the child's start and the GGUF's dequantization
    work = seconds - start
    assert work > 0
    _, twice = training_estimate(info, dataclasses.replace(base, epochs=2.0), STATS)
    assert twice - start == pytest.approx(2 * work)
    _, more_threads = training_estimate(info, dataclasses.replace(base, threads=4), STATS)
    assert more_threads - start == pytest.approx(work / 2)
    _, capped = training_estimate(info, dataclasses.replace(base, max_steps=2), STATS)
    assert start < capped < seconds
    bigger = [
        training_estimate(info, dataclasses.replace(base, **v), STATS)[0]
        for v in (dict(rank=64), dict(batch_size=16), dict(cutoff_len=512))
    ]
    assert bigger[0] > memory and bigger[1] > memory
    assert bigger[2] == memory  # the longest example (200 tokens) is shorter than either cutoff


def test_presets_are_valid_distinct_and_recognised():
    settings = {name: preset(name) for name in PRESETS}
    assert list(settings) == ["Quick", "Balanced", "Thorough"]
    assert len(set(settings.values())) == 3
    assert settings["Quick"].epochs < settings["Balanced"].epochs < settings["Thorough"].epochs
    for name, value in settings.items():
        assert matching_preset(value) == name
    assert matching_preset(dataclasses.replace(settings["Quick"], rank=4)) is None
    with pytest.raises(KeyError):
        preset("Custom")
