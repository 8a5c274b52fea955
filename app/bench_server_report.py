"""The ratios, targets (issue 16) and Markdown table of `ingle bench --server` (app/bench_server.py)."""

from __future__ import annotations

from pathlib import Path

from app.bench_server import INGLE, LLAMA

# Issue 16's targets for Ingle's server
SCALE_TARGET = 1.8  # aggregate decode at 4 streams / at 1 stream
VS_LLAMA_TARGET = 0.9  # Ingle's aggregate decode at 4 streams / llama-server's
BUSY_TTFT_TARGET = 2.0  # time to first token with 4 busy streams / idle


def _get(figures: dict, kind: str, n: int) -> dict | None:
    return figures.get(kind, {}).get(str(n))


def ratios_and_targets(out: dict) -> dict:
    """{"ratios": {...}, "targets": [{name, target, value, pass}]} from a run's results."""
    figures = out["results"]
    ratios: dict = {"scale_4_vs_1": {}, "ingle_vs_llama_server": {}, "busy_vs_idle_ttft": {}}
    for kind in figures:
        one, four = _get(figures, kind, 1), _get(figures, kind, 4)
        if one and four and one["aggregate_tok_s"]:
            ratios["scale_4_vs_1"][kind] = four["aggregate_tok_s"] / one["aggregate_tok_s"]
        for block in figures[kind].values():
            if "busy" in block and block["ttft_idle_ms"]:
                ratios["busy_vs_idle_ttft"][kind] = block["busy"]["ttft_ms"] / block["ttft_idle_ms"]
    if LLAMA in figures:
        for n, block in figures[INGLE].items():
            other = figures[LLAMA].get(n)
            if other and other["aggregate_tok_s"]:
                ratios["ingle_vs_llama_server"][n] = block["aggregate_tok_s"] / other["aggregate_tok_s"]
    busy = out["config"]["busy"]
    targets = [
        _target(f"aggregate decode at 4 streams >= {SCALE_TARGET}x 1 stream",
                ratios["scale_4_vs_1"].get(INGLE), lambda v: v >= SCALE_TARGET,
                "needs stream counts 1 and 4"),
        _target(f"aggregate decode at 4 streams >= {VS_LLAMA_TARGET}x llama-server's",
                ratios["ingle_vs_llama_server"].get("4"), lambda v: v >= VS_LLAMA_TARGET,
                "needs --llama-server and stream count 4"),
        _target(f"time to first token with {busy} busy streams < {BUSY_TTFT_TARGET}x idle",
                ratios["busy_vs_idle_ttft"].get(INGLE), lambda v: v < BUSY_TTFT_TARGET, "not measured"),
    ]  # fmt: skip
    return {"ratios": ratios, "targets": targets}


def _target(name: str, value: float | None, ok, missing: str) -> dict:
    if value is None:
        return {"target": name, "value": None, "pass": None, "why": missing}
    return {"target": name, "value": value, "pass": bool(ok(value))}


def markdown(out: dict) -> str:
    c, figures = out["config"], out["results"]
    lines = [
        f"Model `{Path(c['model']).name}`, {c['threads']} threads, {c['tokens']} tokens per stream "
        f"(greedy, EOS ignored), prompts of about {c['prompt_words']} words, {c['reps']} rounds per stream "
        f"count, context {c['slot_ctx']} per slot; {c['endpoint']}.",
        "",
        "| streams | server | slots asked / accepted | aggregate decode tok/s, all streams decoding (median, "
        "min-max) | end-to-end tok/s | per-stream tok/s | TTFT ms (all streams) | TTFT ms idle "
        "| streams decoding at once |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in c["streams"]:
        for kind in figures:
            b = _get(figures, kind, n)
            lo, hi = b["aggregate_min_max"]
            lines.append(
                f"| {n} | {kind} | {b['parallel_requested']} / {b['parallel_accepted']} "
                f"| {b['aggregate_tok_s']:.1f} ({lo:.1f}-{hi:.1f}) | {b['end_to_end_tok_s']:.1f} "
                f"| {b['per_stream_tok_s']:.1f} "
                f"| {b['ttft_ms']:.0f} | {b['ttft_idle_ms']:.0f} | {b['decoding_at_once']} |"
            )
    notes = sorted({b["note"] for k in figures for b in figures[k].values() if b["note"]})
    lines += [
        "",
        "Aggregate decode: tokens per second while every stream decodes (from the last stream's first token to "
        "the first stream's last). End-to-end: every token over the time from the first request sent to the last "
        "token (prompt evaluation included).",
    ]
    lines += [f"Note: {note}." for note in notes]
    if out.get("skipped"):
        lines.append(f"llama-server column skipped: {out['skipped']}.")
    r = out["ratios"]
    for kind in figures:
        busy = next((b for b in figures[kind].values() if "busy" in b), None)
        if busy:
            lines.append(
                f"{kind}: time to first token {busy['ttft_idle_ms']:.0f} ms idle, {busy['busy']['ttft_ms']:.0f} ms "
                f"with {busy['busy']['streams']} busy streams ({busy['parallel_accepted']} slots); ratio "
                f"{r['busy_vs_idle_ttft'].get(kind, 0):.2f}."
            )
    if r["scale_4_vs_1"]:
        lines.append(
            "4 streams vs 1 (aggregate decode): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in r["scale_4_vs_1"].items())
            + "."
        )
    if r["ingle_vs_llama_server"]:
        lines.append(
            "Ingle / llama-server (aggregate decode): "
            + ", ".join(f"{n} stream(s) {v:.2f}" for n, v in r["ingle_vs_llama_server"].items())
            + "."
        )
    lines += ["", "| target (issue 16) | value | result |", "|---|---|---|"]
    for t in out["targets"]:
        verdict = "not measured: " + t["why"] if t["pass"] is None else ("pass" if t["pass"] else "FAIL")
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"| {t['target']} | {value} | {verdict} |")
    return "\n".join(lines)
