"""How long to wait before trying a provider again, and when to stop.

Injected into transports rather than switched on "am I under test": tests pass a policy with a
fake clock and a recording `sleep`, production uses the defaults. Backoff is exponential with
"equal jitter" (half fixed, half random) so that several senders hit by the same outage do not
come back in lockstep, and bounded both in attempts and in total time per batch.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime


@dataclass
class RetryPolicy:
    max_attempts: int = 6  # tries per request, the first included
    base_delay: float = 0.5  # seconds before the first retry (before jitter)
    max_delay: float = 30.0  # cap of one backoff step
    max_wait: float = 120.0  # cap of one wait a provider asks for (Retry-After, 429)
    give_up_after: float = 600.0  # total seconds one batch may spend waiting and retrying
    # A request whose answer was lost (read timeout, connection dropped after sending) may have
    # been accepted: resending risks a double send. False marks it unknown for the operator.
    retry_ambiguous: bool = False
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time  # wall clock: X-RateLimit-Reset is epoch seconds
    rng: random.Random = field(default_factory=random.Random)
    # Told of every wait a provider asks for (429), so that other senders honour it too (on
    # PostgreSQL, digest.sending.fleet_rate shares it with the whole fleet).
    on_pause: Callable[[float], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        step = min(self.max_delay, self.base_delay * (2 ** max(attempt - 1, 0)))
        with self._lock:  # random.Random is not thread-safe for concurrent seeding/state
            return step / 2 + self.rng.uniform(0, step / 2)

    def requested_wait(self, headers: Mapping[str, str] | None, attempt: int) -> float:
        """The wait a 429 asks for (Retry-After, else X-RateLimit-Reset), else the backoff."""
        wait = _retry_after(headers, self.clock) if headers else None
        if wait is None:
            return self.backoff(attempt)
        with self._lock:
            jitter = self.rng.uniform(0, min(self.base_delay, 1.0))
        return min(self.max_wait, max(0.0, wait) + jitter)

    def deadline(self) -> float:
        return self.clock() + self.give_up_after


def _header(headers: Mapping[str, str], name: str) -> str | None:
    getter = getattr(headers, "get", None)
    value = getter(name) if getter else None
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return None if value is None else str(value).strip()


def _retry_after(headers: Mapping[str, str], clock: Callable[[], float]) -> float | None:
    """Seconds from now, from `Retry-After` (seconds or HTTP date) or `X-RateLimit-Reset`."""
    value = _header(headers, "Retry-After")
    if value:
        try:
            return float(value)
        except ValueError:
            try:
                return parsedate_to_datetime(value).timestamp() - clock()
            except (TypeError, ValueError):
                pass
    reset = _header(headers, "X-RateLimit-Reset")
    if reset:
        try:
            return float(reset) - clock()
        except ValueError:
            return None
    return None
