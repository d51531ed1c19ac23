"""Sign and verify a million unsubscribe tokens, the per-recipient work of a 1M send.

python benchmarks/bench_tokens.py [--count 1000000]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from subscribers.tokens import Purpose, make_token, verify_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    args = parser.parse_args()
    key, now = b"bench-secret-key-0123456789abcdef", datetime.now(UTC)
    start = time.perf_counter()
    for subscriber_id in range(args.count):
        token = make_token(
            key,
            subscriber_id=subscriber_id,
            newsletter="turkey-unpacked",
            purpose=Purpose.UNSUBSCRIBE,
            issued_at=now,
        )
    made = time.perf_counter() - start
    print(f"make_token: {args.count:,} in {made:.2f} s ({made / args.count * 1e6:.2f} µs each)")
    checks = min(args.count, 100_000)
    keys = [b"new-key-0123456789abcdef", key]  # a rotation: the old key verifies second
    start = time.perf_counter()
    for _ in range(checks):
        verify_token(token, keys, purpose=Purpose.UNSUBSCRIBE, now=now, max_age=timedelta(days=400))
    checked = time.perf_counter() - start
    each = checked / checks * 1e6
    print(f"verify_token (2 keys): {checks:,} in {checked:.2f} s ({each:.2f} µs each)")
    print(f"token length: {len(token)} characters")


if __name__ == "__main__":
    main()
