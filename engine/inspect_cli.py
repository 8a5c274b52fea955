"""`ingle inspect`: the visualizers' numbers in the terminal: prompt tokens, KV cache figures, sampling preview,
attention weights."""

from __future__ import annotations

import json

import numpy as np

from engine import units
from engine.attention_map import DENSE_LIMIT, MAX_TOKENS, SPARSE_TOP_K, AttentionMap
from engine.cli import add_engine_flags, load_model, open_engine
from engine.cli_flags import add_settings_flags, settings_from_args, valid_text
from engine.events import Message
from engine.settings import LoadSettings, SamplingSettings
from engine.text import printable


def cmd_inspect(args) -> int:
    from engine.library import Library

    if len(args.words) == 1:
        model, prompt = None, args.words[0]
    elif len(args.words) == 2:
        model, prompt = args.words
    else:
        from engine.errors import SettingsError

        raise SettingsError("inspect", "give [MODEL] PROMPT (quote the prompt)")
    prompt = valid_text(prompt, "prompt")
    sampling = settings_from_args(args, SamplingSettings)
    path = Library().resolve(model)
    load = settings_from_args(args, LoadSettings)
    # the engine child by default: a file that makes llama.cpp abort cannot take this command down
    engine = open_engine(in_process=args.in_process)
    try:
        load_model(engine, path, load)
        evaluation = engine.evaluate_text(prompt, args.chat)
        tokens = (
            engine.render_tokens([Message("user", prompt)]) if args.chat else engine.tokenize(prompt, True)
        )
        pieces = [{"token_id": t, "piece": engine.piece(t)} for t in tokens]
        kv = engine.kv_state()
        stages = engine.preview(sampling, args.top)
        # the same tokens the preview evaluated, in a context of their own (flash attention off for that pass)
        attention = engine.attention(tokens, MAX_TOKENS) if args.attention else None
    finally:
        engine.close()
    if args.json:
        print(json.dumps({
            "tokens": pieces,
            "prompt_tokens": evaluation.prompt_tokens,
            "kv_cache": kv.to_dict(),
            "preview_stages": [{"name": s.name, "kept": s.kept, "removed": list(s.removed)} for s in stages],
            "preview": [[{"token_id": t.token_id, "piece": t.piece, "p": t.p} for t in s.tokens] for s in stages],
            **({"attention": attention.to_json()} if attention else {}),
        }, indent=2))  # fmt: skip
        return 0
    print(f"Prompt: {len(pieces)} tokens")
    print("  " + " | ".join(f"{p['piece']!r}:{p['token_id']}" for p in pieces))
    layout = kv.layout
    print(f"\nKV cache: {kv.n_past} of {layout.n_ctx} cells used; {layout.formula()}")
    for group in layout.groups():
        print(f"  {group['cache']:<15} {group['layers']:>3} layers x {group['cells']} cells  "
              f"K {units.mib(group['bytes_k'], 2)}  V {units.mib(group['bytes_v'], 2)}")  # fmt: skip
    print("\nNext-token distribution after each sampler stage:")
    for stage in stages:
        top = ", ".join(f"{t.piece!r} {t.p:.3f}" for t in stage.tokens[:8])
        print(f"  {stage.name:<12} kept {stage.kept:>7}: {top}")
    if attention:
        _print_attention(attention)
    return 0


def _print_attention(amap: AttentionMap) -> None:
    """For the last token, the earlier tokens it attends to most, per layer (mean over heads)."""
    sliding = set(amap.sliding_window_layers)
    dropped = f", the first {amap.dropped} left out" if amap.dropped else ""
    print(
        f"\nAttention: {amap.n_layers} layers x {amap.n_heads} heads over {len(amap.tokens)} tokens{dropped}"
    )
    print(f"  what the last token {printable(amap.pieces[-1])!r} attends to most (mean over heads):")
    for layer in range(amap.n_layers):
        row = amap.matrix(layer, None)[-1]
        top = ", ".join(f"{printable(amap.pieces[k])!r} {row[k]:.2f}" for k in np.argsort(-row)[:4])
        kind = f"window {amap.sliding_window}" if layer in sliding else "global"
        print(f"  layer {layer:>2} ({kind}): {top}")


def register(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show a prompt's tokens, the KV cache and the next-token sampling preview"
    )
    p.add_argument("words", nargs="+", metavar="[MODEL] PROMPT")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top", type=int, default=20, help="tokens listed per preview stage")
    p.add_argument(
        "--attention",
        action="store_true",
        help=f"also capture every layer's attention weights (the last {MAX_TOKENS} tokens at most, fewer on big "
        f"models); with --json: "
        f"'attention' holds tokens, sliding_window_layers and weights[layer][head][query][key], "
        f"dense up to {DENSE_LIMIT} tokens, beyond that the top {SPARSE_TOP_K} [key, weight] pairs per query",
    )
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message in the chat template"
    )
    add_engine_flags(p)
    add_settings_flags(p, LoadSettings, "model loading")
    add_settings_flags(p, SamplingSettings, "sampling")
    p.set_defaults(func=cmd_inspect)
