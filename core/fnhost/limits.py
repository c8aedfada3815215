"""In-process limits: token-bucket rate limits and concurrency caps.

They are per fnhost process: behind a load balancer with N processes the
effective limit is N times the configured one, which the README states.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fnhost.errors import RateLimited

MAX_TRACKED_KEYS = 100_000


class RateLimiter:
    """A token bucket per key: `rate` tokens per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * 2)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def acquire(self, key: str, what: str) -> None:
        """Take one token or raise RateLimited with the time until one is available."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(
                f"rate limit of {what} exceeded ({self.rate:g}/s)",
                retry_after=(1.0 - tokens) / self.rate,
            )
        if len(self._buckets) >= MAX_TRACKED_KEYS and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)


class ConcurrencyLimiter:
    """At most `limit` holders per key at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str, what: str) -> Iterator[None]:
        count = self._in_flight.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            raise RateLimited(
                f"too many concurrent invocations of {what} (limit {self.limit})", retry_after=1.0
            )
        self._in_flight[key] = count + 1
        try:
            yield
        finally:
            remaining = self._in_flight[key] - 1
            if remaining:
                self._in_flight[key] = remaining
            else:
                del self._in_flight[key]
