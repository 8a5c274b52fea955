#!/bin/sh
# Rebuilds assets/starter-chat.lora.gguf, the LoRA adapter that teaches the starter model (Gemma 3 270M
# Q4_K_M) the chat turn format, with Ingle's own training module. About 10 minutes on 2 idle CPU cores (25 on a busy machine).
# Usage (from the repository root): sh training/build_starter_adapter.sh [python]
set -eu
PY="${1:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m training.starter_data  # assets/starter_chat.jsonl + assets/starter_chat_heldout.jsonl (seeded)
STARTER="$("$PY" -c 'from engine.library import Library; print(Library().ensure_starter().path)')"
"$PY" -m app.cli train "$STARTER" assets/starter_chat.jsonl --out assets/starter-chat.lora.gguf --no-library \
    --rank 4 --alpha 8 --target-modules q_proj --target-modules k_proj --target-modules v_proj \
    --target-modules o_proj --target-modules gate_proj --target-modules up_proj --target-modules down_proj \
    --learning-rate 1e-3 --scheduler cosine --warmup-steps 8 --max-steps 128 --batch-size 4 \
    --cutoff-len 128 --val-fraction 0.05 --eval-every 0 --seed 20
# Held-out perplexity, before and after:
"$PY" -m app.cli eval "$STARTER" assets/starter_chat_heldout.jsonl
"$PY" -m app.cli eval "$STARTER" assets/starter_chat_heldout.jsonl --adapter assets/starter-chat.lora.gguf
