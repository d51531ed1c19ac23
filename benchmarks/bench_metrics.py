"""`/metrics` latency with 10M delivery rows on PostgreSQL, stored counts against a full scan.

Run: `.venv/bin/python benchmarks/bench_metrics.py [--rows 10000000] [--issues 10]
[--sending 100000] [--mid-send 1000000] [--scrapes 30]` (also run by `make bench`).

The rows are built with `INSERT … SELECT generate_series` (`benchmarks/sent_rows.py`): `--issues`
sent issues sharing `--rows` deliveries, in accepted batches of 1000 with a mix of provider
states, each issue marked sent with its counts stored by `digest.sending.snapshot.take` (as
`ledger.finish_if_done` does). A real send of 10M is `bench_send.py`'s business; here only
what a scrape reads matters. Then `GET /metrics` through the FastAPI app in-process
(TestClient: routing, the handler, the queries, the text format; no socket), `--scrapes`
times after one warm-up: median and worst. For comparison, the query the scrape used to run
(every delivery ever made, grouped by issue and effective status) is timed once, and the
scrape again with one more issue still *sending* of `--sending` deliveries, and with one of
`--mid-send` recipients stopped half-way (`mid_send`: half its batches accepted with provider
states on their rows, one unknown, one in flight, the rest pending, as a large send looks while
it runs). Since migration 0012 the database keeps a sending issue's counts too
(`digest.sending.snapshot`), so neither scrape counts rows; each checks the kept counts against
a scan of that issue's deliveries. Target: under 50 ms with 10M rows, and mid-send.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from benchmarks.sent_rows import NOW, fill, mark_sending, mark_sent  # noqa: E402
from digest.app import App, fixed_clock  # noqa: E402
from digest.config import settings_from_mapping  # noqa: E402
from digest.sending import snapshot  # noqa: E402
from digest.sending.counts import counts_by  # noqa: E402
from digest.storage.db import make_engine, upgrade  # noqa: E402
from digest.storage.models import Delivery  # noqa: E402
from digest.web.server import create_app  # noqa: E402
from tests.support.sending import make_issue  # noqa: E402

PG_URL = os.environ.get("DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NEWSLETTERS = ("turkey-unpacked", "climate-weekly")
TARGET_MS = 50.0


def _settings(url: str) -> object:
    return settings_from_mapping(
        {
            "database": {"url": url},
            "site": {"base_url": "http://127.0.0.1:8000"},
            "newsletters": [{"slug": s, "title": s.title()} for s in NEWSLETTERS],
        },
        env={"DIGEST_SECRET_KEY": "bench-secret-key-0123456789abcdef"},
    )


def _period(n: int) -> str:
    return f"2026-{1 + n // 28:02d}-{1 + n % 28:02d}T05:00:00+00:00"


def scrape_ms(client: TestClient, scrapes: int) -> tuple[float, float, int]:
    client.get("/metrics")  # warm-up: imports, plans, connections
    times = []
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        answer = client.get("/metrics")
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
        size = len(answer.content)
    return statistics.median(times), max(times), size


def mid_send(engine: Engine, issue_id: int, count: int, first: int) -> None:
    """`count` recipients half sent: the first half of the batches accepted with provider states
    on their rows (`fill`), one unknown, one in flight, the rest pending with nothing on theirs."""
    fill(engine, issue_id, count, first=first)
    mark_sending(engine, issue_id)
    with engine.begin() as connection:
        low, high = connection.execute(
            text("SELECT min(id), max(id) FROM send_batch WHERE issue_id = :i"), {"i": issue_id}
        ).one()
        half = (low + high) // 2
        connection.execute(
            text("UPDATE delivery SET status = 'pending', opened = false, clicked = false "
                 "WHERE issue_id = :i AND batch_id > :half"),
            {"i": issue_id, "half": half},
        )  # fmt: skip
        connection.execute(
            text("UPDATE send_batch SET status = CASE WHEN id = :half THEN 'unknown' "
                 "WHEN id = :half + 1 THEN 'sending' ELSE 'pending' END "
                 "WHERE issue_id = :i AND id >= :half"),
            {"i": issue_id, "half": half},
        )  # fmt: skip
        connection.exec_driver_sql("ANALYZE")


def check_kept(engine: Engine, issue_id: int) -> None:
    """The kept counts of `issue_id` are what a scan of its deliveries says."""
    with engine.connect() as connection:
        kept = snapshot.stored(connection, [issue_id])[issue_id]
        scan = snapshot.live(connection, [issue_id])[issue_id]
    if {s: n for s, n in kept.items() if n} != {s: n for s, n in scan.items() if n}:
        raise AssertionError(f"kept {kept} != scanned {scan}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--issues", type=int, default=10)
    parser.add_argument("--sending", type=int, default=100_000)
    parser.add_argument("--mid-send", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=30)
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        engine = make_engine(url)
        upgrade(engine)
        per_issue = args.rows // args.issues
        started = time.perf_counter()
        issues = []
        for n in range(args.issues):
            issue_id = make_issue(engine, NEWSLETTERS[n % 2], period=_period(n))
            fill(engine, issue_id, per_issue, first=1 + (n % 2) * per_issue)
            issues.append(issue_id)
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
        built = time.perf_counter() - started
        print(f"built {per_issue * args.issues:,} deliveries in {args.issues} issues "
              f"in {built:.0f} s", flush=True)  # fmt: skip
        started = time.perf_counter()
        for issue_id in issues:
            mark_sent(engine, issue_id)
        take = (time.perf_counter() - started) / args.issues
        print(f"snapshot.take: {take:.2f} s per issue of {per_issue:,} (once, when it is sent)")

        started = time.perf_counter()
        with engine.connect() as connection:
            rows = connection.execute(counts_by(Delivery.issue_id)).all()  # type: ignore[arg-type]
        full = time.perf_counter() - started
        print(f"before (every delivery grouped, as /metrics read them): {full * 1000:,.0f} ms "
              f"({len(rows)} groups)", flush=True)  # fmt: skip

        app = App(settings=_settings(url), clock=fixed_clock(NOW), _engine=engine)  # type: ignore[arg-type]
        client = TestClient(create_app(app), base_url="http://127.0.0.1:8000")
        median, worst, size = scrape_ms(client, args.scrapes)
        verdict = "ok" if median < TARGET_MS else "over target"
        print(f"/metrics, {per_issue * args.issues:,} rows, all sent: median {median:.1f} ms, "
              f"worst {worst:.1f} ms ({size:,} bytes) — target < {TARGET_MS:.0f} ms: {verdict}",
              flush=True)  # fmt: skip

        if args.sending:
            issue_id = make_issue(engine, NEWSLETTERS[0], period=_period(args.issues))
            fill(engine, issue_id, args.sending, first=10 * args.rows)
            mark_sending(engine, issue_id)
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE delivery")
            check_kept(engine, issue_id)
            median, worst, _ = scrape_ms(client, args.scrapes)
            print(f"/metrics with one issue of {args.sending:,} still sending: "
                  f"median {median:.1f} ms, worst {worst:.1f} ms", flush=True)  # fmt: skip
        if args.mid_send:
            issue_id = make_issue(engine, NEWSLETTERS[1], period=_period(args.issues + 1))
            mid_send(engine, issue_id, args.mid_send, first=20 * args.rows)
            check_kept(engine, issue_id)
            median, worst, _ = scrape_ms(client, args.scrapes)
            verdict = "ok" if median < TARGET_MS else "over target"
            print(f"/metrics with one issue of {args.mid_send:,} recipients half sent: "
                  f"median {median:.1f} ms, worst {worst:.1f} ms — target < {TARGET_MS:.0f} ms: "
                  f"{verdict}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
                  flush=True)  # fmt: skip
        engine.dispose()
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
