"""Token bytes to displayable text: incremental UTF-8, stop strings held back across tokens; token-prefix helper."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TextStream:
    """Turns token bytes into safe text: holds back partial UTF-8 and any tail that may start a stop string."""

    def __init__(self, stop: Sequence[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._pending = ""
        self.text = ""  # everything released so far
        self.stopped = False

    def push(self, data: bytes) -> str:
        self._pending += self._decoder.decode(data)
        if self._stop:
            hits = [(i, s) for s in self._stop if (i := self._pending.find(s)) >= 0]
            if hits:
                cut = min(i for i, _ in hits)
                out = self._pending[:cut]
                self._pending = ""
                self.stopped = True
                self.text += out
                return out
            hold = max(
                (k for s in self._stop for k in range(1, len(s)) if self._pending.endswith(s[:k])), default=0
            )
        else:
            hold = 0
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        self.text += out
        return out

    def flush(self) -> str:
        out = self._pending + self._decoder.decode(b"", final=True) if not self.stopped else ""
        self._pending = ""
        self.text += out
        return out
