"""A token bucket rate limiter for the Pellet HTTP client."""

import threading
import time


class TokenBucket:
    """Allows `rate` requests per second on average, with bursts of up to `capacity` requests.

    Tokens are added continuously; each request takes one token. When the bucket is empty the caller
    waits until a token has accumulated instead of failing.
    """

    def __init__(self, rate: float, capacity: int) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = float(capacity)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def acquire(self) -> None:
        """Block until one token is available, then take it."""
        while True:
            with self.lock:
                self._refill()
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


def retry_after_seconds(headers: dict) -> float:
    """The server's Retry-After header in seconds (default 5 seconds when missing or malformed)."""
    try:
        return max(0.0, float(headers.get("Retry-After", 5)))
    except ValueError:
        return 5.0
