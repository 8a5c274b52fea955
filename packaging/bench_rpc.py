"""Prefill and decode tok/s of a model loaded here, or split across RPC workers (README "RPC workers" figures).

Usage: python packaging/bench_rpc.py [--rpc HOST:PORT,...] [--threads 1] [--reps 3] [MODEL]
(start the workers first: `ingle worker --port 50071 --threads 1`, one per port)
"""

from __future__ import annotations

import argparse
import statistics

from engine.library import Library
from engine.runtime import Runtime
from engine.settings import LoadSettings, SamplingSettings

WORDS = ("river stone light window garden paper music winter table orange " * 40).split()
NO_END = ((1, float("-inf")), (106, float("-inf")))  # Gemma's <eos> and <end_of_turn>: every reply runs to -n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--rpc", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    library = Library()
    path = library.resolve(args.model) if args.model else library.ensure_starter().file
    runtime = Runtime()
    list(runtime.load(path, LoadSettings(n_ctx=1024, n_threads=args.threads, rpc=args.rpc)))
    sampling = SamplingSettings(temperature=0, max_tokens=64, logit_bias=NO_END)
    prefill, decode = [], []
    for rep in range(args.reps + 1):  # the first is a warm-up
        # a different first word each time: nothing of the last prompt is reused from the KV cache
        *_, done = runtime.complete(f"{rep} " + " ".join(WORDS[rep : rep + 230]), sampling)
        if rep:
            prefill.append(done.stats.prefill_tok_s)
            decode.append(done.stats.decode_tok_s)
    where = f"split across {args.rpc}" if args.rpc else "local"
    print(f"{where}: prefill {statistics.median(prefill):.1f} tok/s ({done.stats.evaluated_tokens} tokens), "
          f"decode {statistics.median(decode):.1f} tok/s ({done.stats.generated_tokens} tokens), "
          f"median of {args.reps}")  # fmt: skip


if __name__ == "__main__":
    main()
