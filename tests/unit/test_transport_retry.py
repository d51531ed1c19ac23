"""Retry timing (injected clock and sleep) and the send rate limiter."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from digest.sending.send import RateLimiter
from digest.transports import RetryPolicy
from tests.support.seeds import Seed, draw_seed
from tests.support.sending import FakeTime

START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()


def _policy(seed: Seed, **overrides: object) -> RetryPolicy:
    fake = FakeTime(START)
    return RetryPolicy(sleep=fake.sleep, clock=fake.clock, rng=seed.rng(), **overrides)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    seed = draw_seed("backoff jitter")
    policy = _policy(seed, base_delay=1.0, max_delay=8.0)
    for attempt, step in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        waits = [policy.backoff(attempt) for _ in range(50)]
        assert all(step / 2 <= w <= step for w in waits), f"{waits} ({seed})"
        # jittered: senders do not come back in lockstep
        assert len(set(waits)) > 1, f"{waits} ({seed})"


def test_a_429_waits_what_the_provider_asks() -> None:
    seed = draw_seed("429 jitter")
    policy = _policy(seed, base_delay=0.5, max_wait=120.0)
    assert 30 <= policy.requested_wait({"Retry-After": "30"}, 1) <= 30.5, seed
    http_date = format_datetime(datetime.fromtimestamp(START + 45, UTC), usegmt=True)
    assert 45 <= policy.requested_wait({"retry-after": http_date}, 1) <= 45.5, seed
    reset = str(int(START + 12))
    assert 12 <= policy.requested_wait({"X-RateLimit-Reset": reset}, 1) <= 12.5, seed
    assert policy.requested_wait({"Retry-After": "86400"}, 1) == 120.0, seed  # capped
    assert 0 <= policy.requested_wait({"X-RateLimit-Reset": str(int(START - 5))}, 1) <= 0.5, seed
    assert 0.25 <= policy.requested_wait({}, 1) <= 0.5, seed  # no hint: the backoff


def test_rate_limiter_paces_batches_across_threads() -> None:
    fake = FakeTime(0.0)
    limiter = RateLimiter(100.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):
        limiter.acquire(50)
    assert fake.sleeps == [0.5, 0.5]  # 50 messages at 100/s: half a second apart
    unlimited = RateLimiter(0, clock=fake.clock, sleep=fake.sleep)
    unlimited.acquire(10_000)
    assert fake.sleeps == [0.5, 0.5]
