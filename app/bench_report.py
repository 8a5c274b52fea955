"""The Markdown report of an `ingle bench` run (the JSON report is BenchResult.to_dict())."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.bench_modes import MODES, TIMED_MODES
from engine import units

if TYPE_CHECKING:
    from app.bench import BenchResult


def markdown(result: BenchResult) -> str:
    c, m = result.config, result.modes
    timed = [mode for mode in TIMED_MODES if mode in m]
    lines = [
        f"Model `{Path(c['model']).name}`, {c['threads']} threads, prompt {c['prompt_tokens']} tokens, "
        f"{c['gen_tokens']} generated (greedy), {c['reps']} reps after {c['warmup']} warm-up, modes interleaved."
        + (f" Modes run: {', '.join(c['modes'])}." if "modes" in c and len(c["modes"]) < len(MODES) else ""),
    ]
    if timed:
        lines += [
            "",
            "| mode | prefill tok/s (median, min-max) | decode tok/s (median, min-max) | prefill ratio (paired) "
            "| decode ratio (paired) |",
            "|---|---|---|---|---|",
        ]
    labels = {
        "reference": "(1) llama.cpp loop",
        "engine": "(2) engine in-process",
        "host": "(3) engine via host",
    }
    for mode in timed:
        r = m[mode]
        if "reference" in m:
            ratio = result.ratios.get(mode, {"prefill_tok_s": 1.0, "decode_tok_s": 1.0})
            paired = r.get("paired_ratio", ratio)
            ratios = (
                f"| {ratio['prefill_tok_s']:.3f} ({paired['prefill_tok_s']:.3f}) "
                f"| {ratio['decode_tok_s']:.3f} ({paired['decode_tok_s']:.3f}) |"
            )
        else:
            ratios = "| - (no reference run) | - |"
        lines.append(
            f"| {labels[mode]} | {r['prefill_tok_s']:.1f} ({r['prefill']['min']:.1f}-{r['prefill']['max']:.1f}) "
            f"| {r['decode_tok_s']:.2f} ({r['decode']['min']:.2f}-{r['decode']['max']:.2f}) " + ratios
        )
    if timed:
        cpu_ref = m["reference"]["cpu_decode_tok_s"] or 1.0 if "reference" in m else 0.0
        lines.append(
            "| decode tok per CPU-second (all processes) | "
            + " / ".join(f"{mode} {m[mode]['cpu_decode_tok_s']:.2f}" for mode in timed)
            + " | | "
            + (
                "ratios " + " / ".join(f"{m[mode]['cpu_decode_tok_s'] / cpu_ref:.3f}" for mode in timed[1:])
                if cpu_ref
                else ""
            )
            + " | |"
        )
    agree = m.get("agreement", {})
    if agree:
        lines.append("")
        lines.append(
            "Same greedy tokens as the reference: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in agree.items())
            + "; targets: ratios >= 0.95. Ratio = median of the mode / median of (1); "
            "paired = median over reps of the mode / (1) in the same rep."
        )
    if result.chat:
        lines += [
            "",
            "| chat turn | history tokens | reused from cache | evaluated | new (not in cache before) |",
            "|---|---|---|---|---|",
        ]
        for t in result.chat["turns"]:
            lines.append(
                f"| {t['turn']} | {t['history_tokens']} | {t['reused_tokens']} | {t['evaluated_tokens']} | {t['new_tokens']} |"
            )
        lines.append(
            f"\nChat: {result.chat['total_evaluated_tokens']} tokens evaluated for {result.chat['total_history_tokens']} "
            f"of history in total; prefix reuse {'ok' if result.chat['prefix_reuse_ok'] else 'BROKEN'}."
        )
    ld, gui = result.load, result.gui
    lines += ["", "| other figure | value |", "|---|---|"]
    if ld:
        lines.append(
            f"| model load, reference (first, cold cache) | {ld['reference_load_seconds'] * 1000:.0f} ms |"
        )
        if "engine_load_seconds" in ld:
            lines.append(f"| model load, engine in-process | {ld['engine_load_seconds'] * 1000:.0f} ms |")
        if "host_load_seconds" in ld:
            lines.append(
                f"| engine host: start / load | {ld['host_start_seconds'] * 1000:.0f} ms / {ld['host_load_seconds'] * 1000:.0f} ms |"
            )
    if not gui:
        lines.append("| GUI process RSS | not run (not in --modes) |")
    elif "rss_bytes" in gui:
        lines.append(f"| GUI process RSS, no model ({gui['window']}) | {units.mib(gui['rss_bytes'])} |")
        lines.append(f"| GUI process start-up to window shown | {gui['startup_seconds'] * 1000:.0f} ms |")
    elif gui:
        lines.append(f"| GUI process RSS | error: {gui.get('error')} |")
    for name, block in (
        ("chat window streaming (5)", result.streaming),
        ("LoRA training (7)", result.training),
    ):
        if not block:
            lines.append(f"| {name} | not run (not in --modes) |")
        elif not block.get("available"):
            lines.append(f"| {name} | not available: {block.get('reason', block.get('error'))} |")
        elif "tokens_shown_per_s" in block:
            lines.append(
                f"| {name} | {block['tokens_shown_per_s']:.1f} tok/s shown, longest stall while streaming "
                f"{block['longest_stall_ms']} ms (target 50); set-up (window + model load) "
                f"{block['setup_seconds']:.2f} s, longest set-up stall {block['longest_setup_stall_ms']} ms |"
            )
        else:
            lo, hi = block.get("step_seconds_min_max") or (0, 0)
            lines.append(
                f"| {name} | {block['tokens_per_s']:.1f} tok/s trained ({block['steps']} steps after "
                f"{block['warmup_steps']} warm-up, batch {block['settings']['batch_size']}, rank "
                f"{block['settings']['rank']}, {block['threads']} threads; step {block['step_seconds']:.2f} s "
                f"({lo:.2f}-{hi:.2f}), {block['tokens_per_step']:.0f} tokens/step, peak "
                f"{units.mib(block['peak_memory_bytes'])}) |"
            )
    from app.bench_load import markdown_sections

    lines += markdown_sections(result.under_load, result.speculation.get("reopen", {}))
    if result.speculation or result.sampling:
        from app.bench_spec import markdown_lines

        lines += markdown_lines(result.speculation, result.sampling)
    return "\n".join(lines)
