"""`digest bounces fetch` end to end: N Postfix-style DSNs in a maildir, each to the signed VERP
address of a real delivery (an issue frozen and sent by the real ledger through the outbox),
read, classified, applied (suppression, delivery marked bounced, message recorded once) and
moved to `Processed`. Prints messages/s and the load average.

    .venv/bin/python benchmarks/bench_bounces.py [--messages 2000] [--pg]
"""

from __future__ import annotations

import argparse
import mailbox
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from digest.app import App, fixed_clock  # noqa: E402
from digest.config import settings_from_mapping  # noqa: E402
from digest.sending.send import send_issue  # noqa: E402
from digest.storage.db import make_engine, upgrade  # noqa: E402
from digest.storage.models import Delivery  # noqa: E402
from digest.tracking.fetch import fetch_bounces  # noqa: E402
from digest.tracking.verp import VerpSigner  # noqa: E402
from tests.support.sending import add_audience, make_issue  # noqa: E402

SECRET = "bench-secret-key-for-bounces-0123456789"
DOMAIN = "bounces.example.com"
TEMPLATE = (ROOT / "tests" / "fixtures" / "bounces" / "postfix_hard.eml").read_text()
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        url = _database(work, args.pg)
        box = work / "bounces"
        app = _app(url, work, box)
        upgrade(app.engine)
        deliveries = _sent_audience(app, args.messages)
        _fill_maildir(box, deliveries)
        started = time.perf_counter()
        cpu = time.process_time()
        report = fetch_bounces(app)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        load = os.getloadavg()[0]
        print(
            f"bounces fetch: {args.messages:,} DSNs in {seconds:.2f} s "
            f"({args.messages / seconds:,.0f} messages/s, {cpu:.2f} CPU-s) on "
            f"{'PostgreSQL' if args.pg else 'SQLite'}; load average {load:.2f}"
        )
        print(f"    {report}")
        left = len(list((box / "new").iterdir())) + len(list((box / "cur").iterdir()))
        print(f"    left in the inbox: {left}; moved to Processed: "
              f"{len(list((box / '.Processed' / 'cur').iterdir()))}")  # fmt: skip
        app.engine.dispose()


def _database(work: Path, pg: bool) -> str:
    if not pg:
        return f"sqlite:///{work / 'bench.db'}"
    base = os.environ.get("DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
    admin = make_engine(base)
    with admin.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS bench_bounces CASCADE"))
        connection.execute(text("CREATE SCHEMA bench_bounces"))
    admin.dispose()
    return f"{base}?options=-csearch_path%3Dbench_bounces"


def _app(url: str, work: Path, box: Path) -> App:
    settings = settings_from_mapping(
        {
            "database": {"url": url},
            "site": {"base_url": "https://news.example.com"},
            "delivery": {"transport": "outbox", "outbox_dir": str(work / "outbox")},
            "bounces": {"domain": DOMAIN, "mailbox": str(box)},
            "newsletters": [{"slug": "turkey-unpacked", "title": "Turkey Unpacked"}],
        },
        env={"DIGEST_SECRET_KEY": SECRET},
    )
    return App(settings=settings, clock=fixed_clock(NOW), _engine=make_engine(url))


def _sent_audience(app: App, count: int) -> list[tuple[int, str]]:
    """(delivery id, address) of an issue really frozen and sent to `count` readers."""
    add_audience(app.engine, "turkey-unpacked", count)
    issue_id = make_issue(app.engine, "turkey-unpacked")
    send_issue(app, issue_id)
    with app.session() as session:
        rows = session.exec(  # type: ignore[call-overload]
            text("SELECT id, email FROM delivery WHERE issue_id = :i ORDER BY id"),
            params={"i": issue_id},
        ).all()
    assert rows and Delivery
    return [(int(r[0]), str(r[1])) for r in rows]


def _fill_maildir(box: Path, deliveries: list[tuple[int, str]]) -> None:
    signer = VerpSigner(SECRET.encode(), DOMAIN)
    inbox = mailbox.Maildir(box, create=True)
    for delivery_id, address in deliveries:
        verp = signer.address(delivery_id=delivery_id, subscriber_id=None) or ""
        inbox.add(TEMPLATE.replace("{VERP}", verp).replace("{RCPT}", address).encode())
    inbox.close()


if __name__ == "__main__":
    main()
