"""One rate limit for every sender sharing a PostgreSQL database.

`delivery.rate_limit` is the provider's limit for the account, not for one process: with three
workers on three hosts each pacing itself, the account would see three times the rate. So on
PostgreSQL the senders pace themselves through one `rate_limit` row per transport, with GCRA
(the generic cell rate algorithm): the row holds the moment the next message may go
(`next_at`), and a batch of n reserves its slot in one statement,

    next_at = greatest(next_at, paused_until, now) + n / rate   RETURNING the slot's start,

then sleeps until that start. The row lock serialises reservations, so however many senders
there are, slots never overlap and the fleet stays at `rate` (no burst allowance: a batch
waits its turn). The clock is the database's (`clock_timestamp()`, not `now()`, which stands
still for a transaction), so hosts whose clocks disagree still agree on the slots.

A provider's 429 pauses everyone: the sender that got it sets `paused_until`, and every
reservation starts after it. With no rate there is nothing to reserve, and a sender reads the
pause at most every PAUSE_POLL seconds, not once per batch (a transaction per batch, a thousand
in a million-recipient send); a pause it sets itself applies at once. On SQLite there is one
process, and `digest.sending.run.RateLimiter` paces its threads as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)
# With no rate: how stale a sender's knowledge of the fleet's pause may be. A 429's pause lasts
# seconds (Retry-After); a sender that has not seen it yet sends one more batch at most, gets
# its own 429 and waits as well.
PAUSE_POLL = 0.5

_ENSURE = text(
    "INSERT INTO rate_limit (name, next_at, paused_until) VALUES (:name, 0, 0) "
    "ON CONFLICT (name) DO NOTHING"
)
# The slot of a batch: its start is the old next_at (or now, or the end of a pause), and it
# pushes next_at by its cost. Returns how long to wait for the start.
_RESERVE = text(
    "UPDATE rate_limit SET next_at = greatest(next_at, paused_until, "
    "extract(epoch FROM clock_timestamp())) + :cost WHERE name = :name "
    "RETURNING next_at - :cost - extract(epoch FROM clock_timestamp())"
)
_PAUSED = text(
    "SELECT paused_until - extract(epoch FROM clock_timestamp()) FROM rate_limit WHERE name = :name"
)
_PAUSE = text(
    "UPDATE rate_limit SET paused_until = greatest(paused_until, "
    "extract(epoch FROM clock_timestamp()) + :seconds) WHERE name = :name"
)


class FleetRateLimiter:
    """At most `rate` messages per second across every sender of the database (0 = no limit,
    but a provider's pause is still shared). Same interface as `run.RateLimiter`, plus `pause`.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        rate: float,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.name = name
        self.rate = rate
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_until = 0.0  # on `clock`: the fleet's pause as last read, or our own
        self._read_at: float | None = None
        with engine.begin() as db:
            db.execute(_ENSURE, {"name": name})

    def acquire(self, messages: int) -> None:
        """Wait for this batch's slot (and for any provider pause)."""
        if messages <= 0:
            return
        if self.rate > 0:
            with self.engine.begin() as db:
                wait = db.execute(_RESERVE, {"name": self.name, "cost": messages / self.rate})
                seconds = float(wait.scalar() or 0.0)
        else:
            seconds = self._pause_left()
        if seconds > 0:
            self._sleep(seconds)

    def _pause_left(self) -> float:
        now = self._clock()
        with self._lock:
            fresh = self._read_at is not None and now - self._read_at < PAUSE_POLL
        if not fresh:
            with self.engine.begin() as db:
                left = float(db.execute(_PAUSED, {"name": self.name}).scalar() or 0.0)
            with self._lock:
                self._paused_until = max(self._paused_until, now + left)
                self._read_at = now
        with self._lock:
            return self._paused_until - now

    def pause(self, seconds: float) -> None:
        """A provider asked us to wait (429): every sender waits until then."""
        if seconds <= 0:
            return
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
        try:
            with self.engine.begin() as db:
                db.execute(_PAUSE, {"name": self.name, "seconds": float(seconds)})
        except Exception as exc:  # this sender still waits (its transport does); others may not
            log.warning("could not share the provider's pause: %s", exc)


def shared_limiter(
    engine: Engine, transport: str, rate: float, *, sleep: Callable[[float], None]
) -> FleetRateLimiter | None:
    """The fleet's limiter for `transport` on PostgreSQL; None on SQLite (one process paces
    itself) and when there is nothing to share (no rate and a transport that is never told to
    wait: the outbox)."""
    if engine.dialect.name != "postgresql":
        return None
    if rate <= 0 and transport == "outbox":
        return None
    return FleetRateLimiter(engine, f"delivery:{transport}", rate, sleep=sleep)
