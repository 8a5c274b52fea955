"""Measured quality, run by llama.cpp: perplexity, KL divergence and top-1 agreement against a reference, replies."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from engine.events import Message, ReplyDone
from engine.runtime import Runtime
from engine.settings import LoadSettings, SamplingSettings
from training.datasets import TokenizedExample, prepare


def open_runtime(model: str | Path, adapters: Sequence[tuple[str, float]] = (), n_ctx: int = 1024) -> Runtime:
    rt = Runtime()
    for _ in rt.load(
        model, LoadSettings(n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512)), adapters
    ):
        pass
    return rt


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _targets(item: TokenizedExample) -> tuple[np.ndarray, np.ndarray]:
    """Positions whose logits predict a target token, and those tokens."""
    pos = np.array([i - 1 for i in range(1, len(item.tokens)) if item.loss_mask[i]], dtype=np.int64)
    return pos, np.array(item.tokens, dtype=np.int64)[pos + 1]


def _all_logits(rt: Runtime, tokens: Sequence[int]) -> np.ndarray:
    return np.concatenate(list(rt.logits_all(tokens)))


Progress = Callable[[int, int], None]  # (done, total) as items are measured


def perplexity(rt: Runtime, items: Sequence[TokenizedExample], progress: Progress | None = None) -> dict:
    """exp(mean negative log-likelihood) over the target tokens of `items`."""
    nll, count = 0.0, 0
    for number, item in enumerate(items):
        if progress is not None:
            progress(number, len(items))
        pos, tgt = _targets(item)
        if not len(pos):
            continue
        logp = _log_softmax(_all_logits(rt, item.tokens)[pos])
        nll -= float(logp[np.arange(len(pos)), tgt].sum())
        count += len(pos)
    if progress is not None:
        progress(len(items), len(items))
    mean = nll / max(1, count)
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": count}


def compare(
    reference: Runtime, other: Runtime, items: Sequence[TokenizedExample], progress: Progress | None = None
) -> dict:
    """Mean KL(reference || other) and top-1 agreement over the target positions of `items`."""
    kl, agree, count = 0.0, 0, 0
    for number, item in enumerate(items):
        if progress is not None:
            progress(number, len(items))
        pos, _ = _targets(item)
        if not len(pos):
            continue
        p = _log_softmax(_all_logits(reference, item.tokens)[pos])
        q = _log_softmax(_all_logits(other, item.tokens)[pos])
        kl += float((np.exp(p) * (p - q)).sum())
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        count += len(pos)
    if progress is not None:
        progress(len(items), len(items))
    return {"kl_divergence": kl / max(1, count), "top1_agreement": agree / max(1, count), "tokens": count}


def evaluation_items(
    rt: Runtime, data: str | Path, cutoff_len: int = 512, skip_bad_lines: bool = False,
    progress: Progress | None = None,
):  # fmt: skip
    """Every example of `data`, tokenized by `rt` as training does."""
    prepared = prepare(rt, data, cutoff_len=min(cutoff_len, rt.n_ctx), val_fraction=0.0,
                       skip_bad_lines=skip_bad_lines, progress=progress)  # fmt: skip
    return prepared.train


def reply(rt: Runtime, prompt: str, max_tokens: int = 48) -> str:
    sampling = SamplingSettings(temperature=0.0, max_tokens=max_tokens)
    for event in rt.chat([Message("user", prompt)], sampling):
        if isinstance(event, ReplyDone):
            return event.text
    return ""


def side_by_side(
    base: str | Path, adapter: str | Path, prompts: Sequence[str], max_tokens: int = 48
) -> list[dict]:
    """Greedy replies of the base and of base + adapter, prompt by prompt."""
    rows = [{"prompt": p} for p in prompts]
    for key, adapters in (("base", ()), ("adapted", ((str(adapter), 1.0),))):
        rt = open_runtime(base, adapters)
        try:
            for row in rows:
                row[key] = reply(rt, row["prompt"], max_tokens)
        finally:
            rt.close()
    return rows


def export_report(
    base: str | Path, adapter: str | Path, exports: dict[str, str | Path], data: str | Path,
    progress: Callable[[str], Progress | None] = lambda _what: None,
) -> dict:  # fmt: skip
    """Perplexity of base, base + adapter and each export; KL and top-1 of each export vs the F16 merge.
    `progress(what)` gives the (done, total) callback for each measurement ("base", "Q8_0 KL", ...)."""
    report: dict = {}
    rt = open_runtime(base)
    try:
        items = evaluation_items(rt, data, skip_bad_lines=True, progress=progress("tokenizing"))
        report["base"] = perplexity(rt, items, progress("base"))
    finally:
        rt.close()
    rt = open_runtime(base, [(str(adapter), 1.0)])
    try:
        report["base+adapter"] = perplexity(rt, items, progress("base+adapter"))
    finally:
        rt.close()
    report.update(measure_exports(exports, items, progress=progress))
    return report


def measure_exports(
    exports: Mapping[str, str | Path],
    items: Sequence[TokenizedExample],
    reference: Runtime | None = None,
    progress: Callable[[str], Progress | None] = lambda _what: None,
) -> dict[str, dict]:
    """Perplexity of each export on `items`, and KL divergence and top-1 agreement of each against the "F16"
    export (the reference, when there is one), in the order of `exports`. `reference`: the F16 export already
    open (its caller closes it); otherwise it is opened here."""
    report: dict[str, dict] = {}
    own = reference is None and "F16" in exports
    if own:
        reference = open_runtime(exports["F16"])
    try:
        for name, path in exports.items():
            if name == "F16" and reference is not None:
                report[name] = perplexity(reference, items, progress(name))
                continue
            rt = open_runtime(path)
            try:
                report[name] = perplexity(rt, items, progress(name))
                if reference is not None and name != "F16":
                    report[name].update(compare(reference, rt, items, progress(f"{name} vs F16")))
            finally:
                rt.close()
    finally:
        if own:
            reference.close()
    return report
