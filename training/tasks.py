"""The wizard's llama.cpp work, as plain functions a child process runs (the GUI process never loads llama.cpp or
torch): a dataset report with loss masks, evaluation of base vs adapted, side-by-side replies, measured exports.

Each returns plain data (dicts, lists, tuples) that pickles back to the GUI. Errors are IngleErrors with messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

PREVIEW_EXAMPLES = 3
EVAL_ITEMS = 48  # examples measured for perplexity / KL: enough for a stable figure, quick on a CPU


def dataset_report(
    base: str, data: str, fmt: str | None, cutoff_len: int, val_fraction: float, seed: int,
    train_on_prompt: bool,
) -> dict:  # fmt: skip
    """Format, bad lines (with numbers), token statistics, split sizes and a few rendered examples as
    (piece, carries loss) pairs, tokenized by llama.cpp with the base model's template, as training will."""
    from training.datasets import prepare, read_dataset, tokenize_example
    from training.lora import tokenizer_runtime

    examples, detected, problems = read_dataset(data, fmt)
    rt = tokenizer_runtime(base)
    try:
        prepared = prepare(
            rt, data, detected, cutoff_len, val_fraction, seed, train_on_prompt, skip_bad_lines=True
        )
        preview = []
        for example in examples[:PREVIEW_EXAMPLES]:
            item = tokenize_example(rt, example, train_on_prompt)
            pieces = [rt.token_bytes(tok, special=True).decode("utf-8", "replace") for tok in item.tokens]
            preview.append({"line": example.line, "pieces": list(zip(pieces, item.loss_mask, strict=True))})
    finally:
        rt.close()
    prompts = [next(m.content for m in ex.messages if m.role == "user") for ex in examples
               if any(m.role == "user" for m in ex.messages)][:2]  # fmt: skip
    return {
        "format": str(detected.value if hasattr(detected, "value") else detected),
        "problems": [(p.line, p.reason) for p in problems],
        "stats": dict(prepared.stats),
        "preview": preview,
        "prompts": prompts or [examples[0].text[:200]],
    }


def _items(rt, data: str, val_fraction: float, seed: int) -> list:
    """The validation split training held out (the same seed splits the same way); the first examples when the
    split is empty."""
    from training.datasets import prepare

    prepared = prepare(rt, data, cutoff_len=min(512, rt.n_ctx), val_fraction=val_fraction, seed=seed,
                       skip_bad_lines=True)  # fmt: skip
    return (prepared.val or prepared.train)[:EVAL_ITEMS]


def evaluate(
    base: str, adapter: str, data: str, val_fraction: float, seed: int, prompts: Sequence[str]
) -> dict:
    """Perplexity of the base and of base + adapter on held-out examples, and greedy replies of both."""
    from training.evaluate import open_runtime, perplexity, side_by_side

    table = {}
    for name, adapters in (("base", ()), ("base + adapter", ((adapter, 1.0),))):
        rt = open_runtime(base, adapters)
        try:
            table[name] = perplexity(rt, _items(rt, data, val_fraction, seed))
        finally:
            rt.close()
    return {"perplexity": table, "replies": side_by_side(base, adapter, list(prompts))}


def ask_both(base: str, adapter: str, prompt: str, max_tokens: int = 64) -> dict:
    from training.evaluate import side_by_side

    return side_by_side(base, adapter, [prompt], max_tokens)[0]


def export_models(
    base: str, adapter: str, out_dir: str, stem: str, quants: Sequence[str], data: str, val_fraction: float,
    seed: int,
) -> dict:  # fmt: skip
    """Merged models in each quant type (F16 always, as the reference), with what each costs against it:
    perplexity, KL divergence and top-1 agreement on held-out examples."""
    from training.evaluate import measure_exports, open_runtime
    from training.export import export

    out = Path(out_dir)
    paths = {"F16": str(export(base, adapter, out / f"{stem}-F16.gguf", "F16"))}
    for q in quants:
        if q.upper() != "F16":
            paths[q.upper()] = str(export(base, adapter, out / f"{stem}-{q.upper()}.gguf", q))
    reference = open_runtime(paths["F16"])
    try:
        report = measure_exports(paths, _items(reference, data, val_fraction, seed), reference)
    finally:
        reference.close()
    for name in report:
        report[name]["path"] = paths[name]
        report[name]["bytes"] = Path(paths[name]).stat().st_size
    return report
