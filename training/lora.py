"""LoRA training of a GGUF base model on CPU: transformers loads (dequantizes) the GGUF, peft adds the adapters."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Cancelled, SettingsError
from engine.gguf_info import inspect_gguf, sha256_file
from engine.hardware import cpu_flags
from engine.library import ADAPTER_BASE_SHA_KEY
from engine.settings import LoadSettings, SettingsBase, spec
from training.errors import TrainingError
from training.events import CheckpointSaved, TrainDone, TrainPhase, TrainStarted, TrainStep, ValLoss
from training.export import DATASET_SHA_KEY, SETTINGS_KEY, TRAINABLE_ARCHS, write_adapter

SCHEDULERS = ("constant", "linear", "cosine")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAIN_EXTRA_HINT = "Install the training extra: pip install -e .[train]"


@dataclass(frozen=True)
class TrainSettings(SettingsBase):
    rank: int = spec(
        8, 1, 256, "Rank", "LoRA rank r: size of the low-rank update; more learns more, costs more."
    )
    alpha: float = spec(
        16.0, 0.0, 1024.0, "Alpha", "LoRA scale numerator: the update is multiplied by alpha/r."
    )
    dropout: float = spec(0.0, 0.0, 0.9, "Dropout", "Dropout on the LoRA input during training.")
    target_modules: tuple[str, ...] = spec(
        TARGETS, label="Target modules", help="Linear layers that get adapters."
    )
    learning_rate: float = spec(
        2e-4, 1e-7, 1.0, "Learning rate", "AdamW step size at the top of the schedule."
    )
    scheduler: str = spec(
        "cosine", label="Scheduler", help="Learning-rate schedule: constant, linear or cosine."
    )
    warmup_steps: int = spec(0, 0, 100000, "Warmup steps", "Steps of linear warmup from 0.")
    epochs: float = spec(1.0, 0.01, 1000.0, "Epochs", "Passes over the training set.")
    max_steps: int = spec(
        0, 0, 10_000_000, "Max steps", "Stop after this many optimizer steps (0: no limit)."
    )
    batch_size: int = spec(4, 1, 1024, "Batch size", "Examples per forward pass.")
    grad_accum: int = spec(1, 1, 1024, "Gradient accumulation", "Forward passes per optimizer step.")
    cutoff_len: int = spec(256, 8, 65536, "Cutoff length", "Examples are cut to this many tokens.")
    val_fraction: float = spec(
        0.1, 0.0, 0.9, "Validation fraction", "Share of examples held out for val loss."
    )
    train_on_prompt: bool = spec(False, label="Train on prompt", help="Also learn the user/system tokens.")
    eval_every: int = spec(
        0, 0, 1_000_000, "Eval every", "Validation loss every N steps (0: at the end only)."
    )
    checkpoint_every: int = spec(
        0, 0, 1_000_000, "Checkpoint every", "Save a checkpoint every N steps (0: never)."
    )
    seed: int = spec(0, 0, 2**31 - 1, "Seed", "Seed for data order, split, init and dropout.")
    bf16: bool = spec(True, label="bf16 autocast", help="Use bf16 autocast when the CPU supports it.")
    threads: int = spec(0, 0, 1024, "Threads", "CPU threads for torch (0: the cores that are idle now).")

    def _validate_more(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise SettingsError("scheduler", f"'{self.scheduler}' is not one of {', '.join(SCHEDULERS)}")
        if not self.target_modules:
            raise SettingsError("target_modules", "choose at least one module")
        unknown = sorted(set(self.target_modules) - set(TARGETS))
        if unknown:
            raise SettingsError(
                "target_modules", f"unknown module '{unknown[0]}'; known: {', '.join(TARGETS)}"
            )


def check_trainable(base: str | Path) -> None:
    """Refuse, before any work, a base model this route cannot train, with the reason."""
    info = inspect_gguf(base)
    if info.architecture not in TRAINABLE_ARCHS:
        raise TrainingError(
            f"{base}: '{info.architecture}' models cannot be trained here; LoRA training supports "
            f"{', '.join(sorted(TRAINABLE_ARCHS))} (architectures transformers loads from GGUF and whose adapters "
            "Ingle writes back)."
        )


def cpu_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def idle_cores() -> int:
    """Cores not busy right now: oversubscribed OpenMP threads spin on barriers and run ~10x slower (measured:
    1 thread 1.1 s/step, 2 threads 10-19 s/step on a 2-core machine with load 4)."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _torch():
    try:
        import torch
    except ImportError:
        raise TrainingError(f"Training needs torch, transformers and peft. {TRAIN_EXTRA_HINT}") from None
    return torch


def load_base(base: str | Path):
    """The GGUF base as a transformers model (dequantized to float32)."""
    torch = _torch()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    base = Path(base).resolve()
    return AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, dtype=torch.float32)


def add_lora(model, settings: TrainSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, config)


def lora_weights(peft_model) -> dict[str, tuple]:
    """{transformers module name: (A, B)} as numpy float32."""
    pairs: dict[str, dict] = {}
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            module = name.split(".lora_")[0].removeprefix("base_model.model.")
            pairs.setdefault(module, {})["A" if ".lora_A." in name else "B"] = param.detach().float().numpy()
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}


def masked_loss(model, ids, attention, mask, reduction: str = "mean"):
    """Cross-entropy on masked positions only; the (huge) output layer runs on those positions alone."""
    torch = _torch()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids, attention_mask=attention).last_hidden_state[:, :-1]
    keep = mask[:, 1:]
    logits = base.lm_head(hidden[keep])
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][keep], reduction=reduction)


def collate(items, pad_id: int = 0):
    torch = _torch()
    width = max(len(x.tokens) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.bool)
    for i, x in enumerate(items):
        n = len(x.tokens)
        ids[i, :n] = torch.tensor(x.tokens)
        attention[i, :n] = 1
        mask[i, :n] = torch.tensor(x.loss_mask)
    return ids, attention, mask


def lr_factor(step: int, total: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / (settings.warmup_steps + 1)
    if settings.scheduler == "constant":
        return 1.0
    progress = (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)
    if settings.scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def plan_steps(per_epoch: int, settings: TrainSettings) -> tuple[int, int]:
    """(optimizer steps, micro-batches) of a run over `per_epoch` micro-batches per pass. As in Hugging Face's
    Trainer, max_steps > 0 is the total number of optimizer steps and overrides epochs: the data is cycled,
    epoch after epoch (each in its own seeded order), until that many steps are done."""
    if settings.max_steps:
        return settings.max_steps, settings.max_steps * settings.grad_accum
    n_micro = max(1, math.ceil(per_epoch * settings.epochs))
    return math.ceil(n_micro / settings.grad_accum), n_micro


def _throttled(emit: Callable[[object], None], seconds: float = 0.5) -> Callable[[int, int], None]:
    """A tokenizing progress callback that sends a TrainPhase at most every `seconds` (and the last one)."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= seconds:
            last[0] = now
            emit(TrainPhase("tokenizing", "tokenizing the examples (llama.cpp)", done, total))

    return progress


def total_steps(n_train: int, settings: TrainSettings) -> int:
    """Optimizer steps of a run on `n_train` examples (see plan_steps); the wizard's estimate and the training
    loop both count with this."""
    return plan_steps(math.ceil(n_train / settings.batch_size), settings)[0]


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def _memory() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def tokenizer_runtime(base: str | Path):
    """A llama.cpp runtime on the base, used only for the chat template and llama.cpp's own tokens."""
    from engine.runtime import Runtime

    rt = Runtime()
    for _ in rt.load(base, LoadSettings(n_ctx=64, n_batch=64, n_ubatch=64)):
        pass
    return rt


def train(
    base: str | Path,
    data: str | Path,
    out: str | Path,
    settings: TrainSettings | None = None,
    emit: Callable[[object], None] = lambda e: None,
    cancel: threading.Event | None = None,
    resume: bool = False,
    data_format: str | None = None,
    skip_bad_lines: bool = False,
) -> TrainDone:
    """Train a LoRA adapter on `data` and write it to `out` (GGUF). Streams events to `emit`."""
    from training.datasets import prepare

    settings = settings or TrainSettings()
    cancel = cancel or threading.Event()
    check_trainable(base)
    torch = _torch()
    started = time.perf_counter()
    emit(TrainPhase("tokenizer", "loading the tokenizer and chat template (llama.cpp)"))
    rt = tokenizer_runtime(base)
    try:
        prepared = prepare(rt, data, data_format, settings.cutoff_len, settings.val_fraction, settings.seed,
                           settings.train_on_prompt, skip_bad_lines, _throttled(emit))  # fmt: skip
    finally:
        rt.close()
    torch.set_num_threads(settings.threads or idle_cores())
    torch.manual_seed(settings.seed)
    size = Path(base).stat().st_size / 2**20
    emit(TrainPhase("model", f"loading and dequantizing the base model ({size:,.0f} MiB GGUF to float32)"))
    model = add_lora(load_base(base), settings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)

    train_set = prepared.train
    per_epoch = math.ceil(len(train_set) / settings.batch_size)  # micro-batches in one pass
    total, n_micro = plan_steps(per_epoch, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, settings))

    ckpt = checkpoint_dir(out) / "state.pt"
    step, losses = 0, []
    if resume:
        step, losses = _load_checkpoint(ckpt, model, optimizer, scheduler, settings, prepared.sha256)
    start_step = step
    use_bf16 = settings.bf16 and cpu_bf16()
    emit(TrainStarted(total, step, len(train_set), len(prepared.val), prepared.stats,
                      sum(p.numel() for p in params), use_bf16, per_epoch / settings.grad_accum,
                      n_micro / per_epoch, settings.max_steps))  # fmt: skip

    def batches(micro: int):
        epoch, index = divmod(micro, per_epoch)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(settings.seed + epoch))
        chosen = order[index * settings.batch_size : (index + 1) * settings.batch_size].tolist()
        return collate([train_set[i] for i in chosen])

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16)

    model.train()
    tokens_done, run_started = 0, time.perf_counter()
    val = None
    cancelled = False
    while step < total:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for k in range(settings.grad_accum):
            if cancel.is_set():
                cancelled = True
                break
            micro = step * settings.grad_accum + k
            if micro >= n_micro:
                break
            ids, attention, mask = batches(micro)
            with autocast():
                loss = masked_loss(model, ids, attention, mask)
            (loss / settings.grad_accum).backward()
            step_loss += loss.item() / settings.grad_accum
            tokens_done += int(attention.sum())
        if cancelled:
            break
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(step_loss)
        elapsed = time.perf_counter() - run_started
        rate = tokens_done / elapsed if elapsed else 0.0
        per_step = elapsed / max(1, step - start_step)
        emit(TrainStep(step, total, micro / per_epoch if per_epoch else 0.0, step_loss,
                       scheduler.get_last_lr()[0], rate, per_step * (total - step), _memory(), tokens_done))  # fmt: skip
        if settings.eval_every and step % settings.eval_every == 0 and step < total and prepared.val:
            val = validation_loss(model, prepared.val, settings.batch_size, autocast)
            emit(ValLoss(step, val))
        if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < total:
            _save_checkpoint(ckpt, model, optimizer, scheduler, settings, prepared.sha256, step, losses)
            emit(CheckpointSaved(step, str(ckpt)))
    if cancelled:
        if step:
            _save_checkpoint(ckpt, model, optimizer, scheduler, settings, prepared.sha256, step, losses)
            emit(CheckpointSaved(step, str(ckpt)))
        raise Cancelled(f"Training was cancelled at step {step} of {total}"
                        + (f"; resume from {ckpt}." if step else "."))  # fmt: skip
    if prepared.val:
        emit(TrainPhase("validation", f"validation loss on {len(prepared.val)} held-out examples"))
        val = validation_loss(model, prepared.val, settings.batch_size, autocast)
        emit(ValLoss(step, val))
    emit(TrainPhase("saving", "hashing the base model and writing the adapter"))
    metadata = {
        ADAPTER_BASE_SHA_KEY: sha256_file(base),
        DATASET_SHA_KEY: prepared.sha256,
        SETTINGS_KEY: json.dumps(settings.to_dict(), sort_keys=True),
    }
    write_adapter(out, base, lora_weights(model), settings.alpha, metadata)
    from training.export import write_sidecar

    write_sidecar(Path(out), {"kind": "adapter", "base": str(base), "dataset": str(data), "losses": losses,
                              "val_loss": val, "dataset_stats": prepared.stats, **metadata})  # fmt: skip
    done = TrainDone(
        str(out), step, losses[-1] if losses else float("nan"), val, time.perf_counter() - started
    )
    emit(done)
    return done


def validation_loss(model, items, batch_size: int, autocast) -> float:
    torch = _torch()
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            ids, attention, mask = collate(items[i : i + batch_size])
            with autocast():
                total += float(masked_loss(model, ids, attention, mask, reduction="sum"))
            count += int(mask[:, 1:].sum())
    model.train()
    return total / max(1, count)


def _save_checkpoint(path: Path, model, optimizer, scheduler, settings, data_sha, step, losses) -> None:
    torch = _torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "losses": losses,
        "settings": settings.to_dict(),
        "dataset_sha256": data_sha,
        "lora": {k: v for k, v in model.state_dict().items() if "lora_" in k},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model, optimizer, scheduler, settings, data_sha):
    torch = _torch()
    if not path.exists():
        raise TrainingError(f"No checkpoint to resume from at {path}.")
    state = torch.load(path, weights_only=False)
    if state["dataset_sha256"] != data_sha:
        raise TrainingError(f"{path}: the checkpoint was made on a different dataset; start a new run.")
    if state["settings"] != settings.to_dict():
        changed = sorted(k for k in state["settings"] if state["settings"][k] != settings.to_dict().get(k))
        raise TrainingError(
            f"{path}: the checkpoint used other settings ({', '.join(changed)}); use the same ones."
        )
    model.load_state_dict(state["lora"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], list(state["losses"])
