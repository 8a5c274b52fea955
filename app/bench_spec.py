"""`ingle bench` modes (8) speculation and (9) sampling: speculative decoding against the target decoding alone in the
same run, and the engine's decode rate against llama-bench's `tg` (and the minimal llama.cpp loop) for greedy and
the default sampling chain.

(8) runs three cases, each interleaving a plain run and a drafting run per repetition on the same target:
  draft              the target (an F16 copy of the model unless --draft names a pair) with a draft model
                     (the model itself, in its own quant, unless --draft names one);
  lookup_copy        prompt lookup on a prompt whose continuation copies a paragraph;
  lookup_no_overlap  prompt lookup on a prompt whose continuation repeats nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from app.bench_modes import BenchConfig
from engine.events import ReplyDone, Token
from engine.settings import LoadSettings, SamplingSettings

# llama-bench from packaging/build_llama_tools.sh: on the PATH, or named by INGLE_LLAMA_BENCH
DEFAULT_LLAMA_BENCH = os.environ.get("INGLE_LLAMA_BENCH") or shutil.which("llama-bench") or "llama-bench"

PARAGRAPH = (
    "The river runs past the old mill, under the stone bridge and along the market square, where the "
    "fishermen sell their morning catch. In spring the water rises over the meadows; in summer children swim "
    "near the sandbank; in autumn the mist lies on it until noon."
)
COPY_PROMPT = f"Here is a paragraph:\n\n{PARAGRAPH}\n\nHere is the same paragraph again, word for word:\n\n"
NO_OVERLAP_PROMPT = "Q: Name ten animals that live in Africa.\nA: 1."


def llama_bench_tg(
    binary: str | None, model: Path, threads: int, n_gen: int, reps: int = 3
) -> tuple[float | None, str]:
    """llama-bench's `tg` rate for `model` (tok/s, the mean of `reps` runs after its own warm-up) and a note;
    (None, why) when it cannot be run."""
    path = Path(binary or DEFAULT_LLAMA_BENCH)
    if not path.is_file():
        return None, f"llama-bench not found at {path} (give --llama-bench PATH); column skipped"
    cmd = [
        str(path),
        "-m",
        str(model),
        "-p",
        "0",
        "-n",
        str(n_gen),
        "-t",
        str(threads),
        "-r",
        str(reps),
        "-o",
        "json",
    ]
    proc = subprocess.run([*cmd, "--repack", "0"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # a build without the repack flag
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return (
            None,
            f"llama-bench failed (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}",
        )
    try:
        rows = json.loads(proc.stdout)
        return float(next(r["avg_ts"] for r in rows if r.get("n_gen"))), " ".join(cmd)
    except (ValueError, StopIteration, KeyError, TypeError):
        return None, "llama-bench printed no tg result"


def _runtime(model: Path, settings: LoadSettings):
    from engine.runtime import Runtime

    rt = Runtime()
    for _ in rt.load(model, settings):
        pass
    return rt


def _reply(rt, prompt: str, sampling: SamplingSettings) -> ReplyDone:
    return next(e for e in rt.complete(prompt, sampling) if isinstance(e, ReplyDone))


def _banned_sampling(rt, base: SamplingSettings, n: int) -> SamplingSettings:
    from engine.reference import eog_tokens

    banned = eog_tokens(rt.vocab, rt.n_vocab)  # every reply writes exactly n tokens
    return base.replace(max_tokens=n, logit_bias=tuple((t, -math.inf) for t in banned))


NEAR_TIE = 0.05  # nats between the two likeliest tokens


def _top_two_gap(rt, prompt: str, sampling: SamplingSettings, at: int) -> float:
    """The target alone (`rt`), once more with log-probabilities: how far apart its two likeliest tokens were
    at token `at` of the reply."""
    tokens = [e for e in rt.complete(prompt, sampling.replace(top_logprobs=2)) if isinstance(e, Token)]
    alternatives = [t.alternatives for t in tokens if t.token_id >= 0][at]
    return alternatives[0].logprob - alternatives[1].logprob


def compare(
    target: Path, spec: LoadSettings, plain: LoadSettings, prompt: str, cfg: BenchConfig, reps: int
) -> dict:
    """The target alone and with drafting, one run of each per repetition (after a warm-up)."""
    alone, drafting = _runtime(target, plain), _runtime(target, spec)
    try:
        sampling = _banned_sampling(alone, SamplingSettings(temperature=0.0, seed=0), cfg.gen_tokens)
        runs: dict[str, list[ReplyDone]] = {"alone": [], "drafting": []}
        for rep in range(reps + 1):
            order = (("alone", alone), ("drafting", drafting))
            for name, rt in order if rep % 2 else order[::-1]:
                done = _reply(rt, prompt, sampling)
                if rep:
                    runs[name].append(done)
        first_difference = next(
            (
                i
                for r in runs["drafting"]
                for i, (x, y) in enumerate(zip(r.tokens, runs["alone"][0].tokens, strict=False))
                if x != y
            ),
            None,
        )
        tie_gap = (
            None if first_difference is None else _top_two_gap(alone, prompt, sampling, first_difference)
        )
    finally:
        alone.close()
        drafting.close()
    a = [r.stats.decode_tok_s for r in runs["alone"]]
    d = [r.stats.decode_tok_s for r in runs["drafting"]]
    stats = [r.stats for r in runs["drafting"]]
    drafted, accepted = sum(s.drafted_tokens for s in stats), sum(s.accepted_tokens for s in stats)
    return {
        "target": target.name,
        "drafting": stats[-1].drafting,
        "alone_tok_s": statistics.median(a),
        "drafting_tok_s": statistics.median(d),
        "speedup": statistics.median(d) / statistics.median(a) if statistics.median(a) else 0.0,
        "paired_speedup": statistics.median(x / y for x, y in zip(d, a, strict=True) if y),
        "identical": all(r.tokens == runs["alone"][0].tokens for r in runs["alone"] + runs["drafting"]),
        # where a drafting run first left the target's own tokens (None: never); see README "Speculative decoding"
        "first_difference": first_difference,
        # log-probability between the target's two likeliest tokens there, decoding alone: a near tie (below
        # NEAR_TIE) is where the verify batch's kernels may round the other way than one-token decoding
        "tie_gap": tie_gap,
        "near_tie": tie_gap is not None and tie_gap < NEAR_TIE,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": accepted / drafted if drafted else 0.0,
        "switched_off": any(s.drafting_switched_off for s in stats),
        "generated_tokens": runs["drafting"][-1].stats.generated_tokens,
        "reps": reps,
    }


def run_speculation(cfg: BenchConfig, log: Callable[[str], None]) -> dict:
    """Mode (8). Without --draft, an F16 copy of the model (in a temporary folder) is the target and the model
    itself drafts for it; with --draft, the model is the target and --draft drafts."""
    from engine.reference import f16_copy

    reps = max(1, min(cfg.reps, 3))
    base = cfg.load_settings()
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="ingle-bench-") as tmp:
        target, draft = cfg.model, cfg.draft
        if draft is None:
            log("speculation: writing an F16 copy of the model as the target of the draft pair")
            target, draft = (
                f16_copy(cfg.model, Path(tmp) / f"{cfg.model.stem}-F16.gguf", cfg.threads),
                cfg.model,
            )
        log(f"speculation: draft {draft.name} for {target.name}")
        out["draft"] = compare(target, base.replace(draft=str(draft), draft_max=4), base, "Tell me about the "
                               "river near the old town.", cfg, reps)  # fmt: skip
        for name, prompt in (("lookup_copy", COPY_PROMPT), ("lookup_no_overlap", NO_OVERLAP_PROMPT)):
            log(f"speculation: prompt lookup, {name.removeprefix('lookup_').replace('_', '-')} prompt")
            out[name] = compare(cfg.model, base.replace(lookup=True), base, prompt, cfg, reps)
        for key, model in (("draft", target), ("lookup_copy", cfg.model)):
            tg, note = llama_bench_tg(cfg.llama_bench, model, cfg.threads, cfg.gen_tokens)
            for case in [key] if key == "draft" else ["lookup_copy", "lookup_no_overlap"]:
                out[case]["llama_bench_tg"] = tg
                out[case]["vs_llama_bench"] = out[case]["drafting_tok_s"] / tg if tg else None
            out.setdefault("llama_bench_note", note)
    return out


def run_sampling(cfg: BenchConfig, log: Callable[[str], None]) -> dict:
    """Mode (11): decode tok/s of the engine for greedy and the default chain, the minimal llama.cpp loop (greedy)
    and llama-bench's tg (no sampling at all), on the same model and threads.

    Each repetition runs all four in turn (llama-bench for one run after its own warm-up), so a shared machine
    whose speed drifts over minutes slows them alike; the ratios are also given paired (the median over
    repetitions of the engine's rate over llama-bench's in the same repetition)."""
    from engine.reference import Reference, eog_tokens
    from engine.sampling import SamplerChain

    settings = cfg.load_settings()
    rt = _runtime(cfg.model, settings)
    banned = eog_tokens(rt.vocab, rt.n_vocab)
    reference = Reference(cfg.model, settings, banned)
    chains = {
        "greedy": _banned_sampling(rt, SamplingSettings(temperature=0.0, seed=0), cfg.gen_tokens),
        "default": _banned_sampling(rt, SamplingSettings(seed=0), cfg.gen_tokens),
    }
    prompt = "Tell me about the river near the old town."
    tokens = reference.tokenize(prompt)
    rows: list[dict[str, float]] = []
    note, runs_llama_bench = "", True
    try:
        for rep in range(cfg.warmup + cfg.reps):
            row = {name: _reply(rt, prompt, sampling).stats.decode_tok_s for name, sampling in chains.items()}
            row["reference"] = reference.run(tokens, cfg.gen_tokens)["decode_tok_s"]
            if runs_llama_bench:
                tg, said = llama_bench_tg(cfg.llama_bench, cfg.model, cfg.threads, cfg.gen_tokens, reps=1)
                runs_llama_bench = tg is not None  # not again once it could not run
                if tg:
                    row["llama_bench"] = tg
                note = said if tg or not note else note  # a later failure keeps the command that ran
            if rep >= cfg.warmup:
                log(f"sampling: rep {len(rows) + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
                rows.append(row)
        paths = {}
        for name, sampling in chains.items():
            chain = SamplerChain(rt.vocab, rt.n_vocab, sampling, rt.n_ctx)
            paths[name] = chain.path.value
            chain.close()
    finally:
        rt.close()
        reference.close()
    med = {k: statistics.median(r[k] for r in rows) for k in ("greedy", "default", "reference")}
    with_tg = [r for r in rows if "llama_bench" in r]
    tg = statistics.median(r["llama_bench"] for r in with_tg) if with_tg else None
    if tg:
        note = note.replace("-r 1", f"-r 1, once in each of {len(with_tg)} repetitions")
    chain_names = ("greedy", "default")
    return {
        "decode_tok_s": med,
        "sampling_path": paths,
        "llama_bench_tg": tg,
        "llama_bench_tg_reps": [r["llama_bench"] for r in with_tg],
        "llama_bench_note": note,
        "vs_llama_bench": {k: med[k] / tg for k in chain_names} if tg else None,
        # the median over repetitions of the engine's rate over llama-bench's in the same repetition
        "vs_llama_bench_paired": {
            k: statistics.median(r[k] / r["llama_bench"] for r in with_tg) for k in chain_names
        }
        if tg
        else None,
        "vs_reference": {k: med[k] / med["reference"] for k in chain_names} if med["reference"] else None,
        "reps": cfg.reps,
    }


def _identical(r: dict) -> str:
    if r["identical"]:
        return "yes"
    if r.get("tie_gap") is None:
        return "NO"
    tie = "a near tie" if r["near_tie"] else "NOT a near tie"
    return f"NO: from token {r['first_difference']}, where the top two were {r['tie_gap']:.3f} nats apart ({tie})"


def markdown_lines(speculation: dict, sampling: dict) -> list[str]:
    lines: list[str] = []
    # (the reopen mode, 9, puts its figures in `speculation` too; app/bench_load.py reports those)
    if speculation.get("draft"):
        lines += [
            "",
            "| speculation (10) | target | alone tok/s | drafting tok/s | speedup (paired) | identical | accepted / "
            "drafted | switched off | vs llama-bench tg |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for case in ("draft", "lookup_copy", "lookup_no_overlap"):
            r = speculation[case]
            vs = (
                f"{r['vs_llama_bench']:.2f}x of {r['llama_bench_tg']:.1f}" if r.get("vs_llama_bench") else "-"
            )
            lines.append(
                f"| {case} ({r['drafting']}) | {r['target']} | {r['alone_tok_s']:.1f} | {r['drafting_tok_s']:.1f} | "
                f"{r['speedup']:.2f}x ({r['paired_speedup']:.2f}x) | {_identical(r)} | "
                f"{r['accepted']}/{r['drafted']} ({r['acceptance']:.0%}) | {'yes' if r['switched_off'] else 'no'} "
                f"| {vs} |"
            )
        lines.append(f"\nllama-bench: {speculation.get('llama_bench_note', '')}")
    if sampling:
        d, tg = sampling["decode_tok_s"], sampling["llama_bench_tg"]
        lines += [
            "",
            "| sampling (11) | decode tok/s | sampling path | / llama.cpp loop (greedy) | / llama-bench tg "
            "(paired) |",
            "|---|---|---|---|---|",
        ]
        for name in ("greedy", "default"):
            ref = sampling["vs_reference"][name] if sampling["vs_reference"] else 0.0
            vs = (
                f"{sampling['vs_llama_bench'][name]:.3f} ({sampling['vs_llama_bench_paired'][name]:.3f})"
                if tg
                else "-"
            )
            lines.append(
                f"| engine, {name} chain | {d[name]:.1f} | {sampling['sampling_path'][name]} | {ref:.3f} | {vs} |"
            )
        lines.append(
            f"| llama.cpp loop (greedy, llama_sampler_sample) | {d['reference']:.1f} | full | 1 | - |"
        )
        lines.append(
            f"| llama-bench tg | {f'{tg:.1f}' if tg else '-'} | none | | {sampling['llama_bench_note']} |"
        )
    return lines
