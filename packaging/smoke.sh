#!/usr/bin/env bash
# Smoke-test the built app: it starts offscreen, opens the chat window on the starter model and answers a prompt.
# Prints the bundle's size and the start-up-to-answer time. Usage: packaging/smoke.sh [dist/ingle]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-dist/ingle}
[ -x "$bundle/ingle" ] || { echo "smoke: no built app at $bundle (run packaging/build.sh)" >&2; exit 2; }
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
export QT_QPA_PLATFORM=offscreen INGLE_HOME="$home"
echo "bundle size: $(du -sh "$bundle" | cut -f1)"
if find "$bundle" -iname 'libtorch*' -o -iname 'torch' -type d | grep -q .; then
  echo "smoke: FAIL torch is in the bundle" >&2; exit 1
fi
start=$(date +%s.%N)
reply=$("$bundle/ingle" gui --smoke-prompt "The capital of France is" 2>"$home/stderr.txt") || {
  echo "smoke: FAIL the app did not answer:" >&2; cat "$home/stderr.txt" >&2; exit 1; }
end=$(date +%s.%N)
[ -n "$reply" ] || { echo "smoke: FAIL empty reply" >&2; exit 1; }
printf 'reply: %s\n' "$reply"
grep '^timing' "$home/stderr.txt" || true
printf 'first start to answer (starter model assembled on first run): %.1f s\n' "$(echo "$end - $start" | bc)"
start=$(date +%s.%N)
"$bundle/ingle" gui --smoke-prompt "Hello" >/dev/null 2>"$home/stderr2.txt"
grep '^timing' "$home/stderr2.txt" || true
end=$(date +%s.%N)
printf 'second start to answer: %.1f s\n' "$(echo "$end - $start" | bc)"
echo "smoke: OK"
