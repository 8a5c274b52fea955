"""`ingle bench` modes 8 (under load) and 9 (reopen) on the tiny model: the figures they report, the tokens they
compare (no timed assertions: the machine is shared)."""

from __future__ import annotations

import json

from app.bench import DEFAULT_MODES, MODES, parse_modes
from app.cli import main


def test_under_load_and_reopen_report_their_figures(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        str(tiny_model),
        "--modes",
        "8,9",
        "--prompt-tokens",
        "24",
        "--gen-tokens",
        "6",
        "--reps",
        "1",
    ]
    assert main([*argv, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    u = data["under_load"]
    assert u["cpus"] >= 1 and u["busy_processes"] == u["cpus"] - 1
    fixed = [str(n) for n in range(1, u["cpus"] + 1)]
    assert set(u["engine"]) == {"auto", *fixed} and {"auto", *fixed} <= set(u["reference"])
    assert all(u["engine"][k]["decode_tok_s"] > 0 and u["reference"][k]["decode_tok_s"] > 0 for k in fixed)
    assert 1 <= u["engine"]["auto"]["threads"] <= u["cpus"] and "cores idle" in u["engine"]["auto"]["why"]
    best = max(u["engine"][k]["decode_tok_s"] for k in fixed)
    assert u["auto_vs_best_fixed"] == u["engine"]["auto"]["decode_tok_s"] / best
    assert u["auto_vs_idle_core"] == u["engine"]["auto"]["decode_tok_s"] / u["idle_one_thread_tok_s"]
    r = data["speculation"]["reopen"]
    assert r["conversation_tokens"] >= 3000 and r["restored_tokens"] == [r["conversation_tokens"]]
    assert r["identical"] is True  # the reply after the restored cache is the reply after a full prefill
    assert r["evaluated_with_state"] < 100 < r["evaluated_without_state"]  # only the new message was read
    assert r["speedup"] == r["ttft_without_state_s"] / r["ttft_with_state_s"]


def test_new_modes_are_named_and_numbered_and_off_by_default():
    assert parse_modes("8,9") == ("under_load", "reopen") == MODES[7:9]
    assert parse_modes("reopen") == ("reopen",)
    assert "under_load" not in DEFAULT_MODES and len(DEFAULT_MODES) == 7
