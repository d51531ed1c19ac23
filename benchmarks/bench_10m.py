"""Ten million subscribers on PostgreSQL, frozen and sent to a minimal local SendGrid sink (#15).

Run: `.venv/bin/python benchmarks/bench_10m.py [--size 10000000]` (develop with
`--size 200000`).

On a fresh PostgreSQL schema: `--size` subscribers with an active subscription, bulk inserted
(`tests.support.sending.add_audience`, the `unnest` path, in steps of `--step` with progress),
and an approved, rendered issue. The measured `send_issue` runs in a child process so that its
peak RSS (VmHWM: `bench_send.peak_rss_mb`) and CPU are its own: the freeze of the audience into
deliveries (overlapped with sending) and every batch through the SendGrid transport, 1000
recipients a request, 4 threads, like `bench_send.py`.

The sink is not the project's test server (which checks every request against SendGrid's
schema rules): it is a `ThreadingHTTPServer` in its own process that answers every
`POST /v3/mail/send` with 202 and an X-Message-Id, reading the body (Content-Length) and
discarding it. It counts recipients as the occurrences of `"to":[` in the body (one per
personalization, which is what digest's transport writes; a `"` inside a JSON string is
escaped, so the pattern only matches a key), requests and bytes, and records the wall time
(`time.time()`, shared by the processes) of the first request. It reports these as one JSON
line when its stdin closes.

Reported: setup seconds (the audience insert, and the whole preparation), the send's total
seconds, recipients/s, freeze seconds (`SendReport.freeze_seconds`, overlapped with sending),
the time from the start of `send_issue` to the sink's first request, the sender's peak RSS
(target ≤ 300 MB) and CPU seconds, the sink's CPU, and the load average. Checks that every
recipient was accepted, that the sink counted `--size` recipients, and that the issue holds
`--size` deliveries. The schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("DIGEST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SLUG = "turkey-unpacked"
TARGET_RSS_MB = 300.0
API_KEY = "SG.bench"
RECIPIENT = b'"to":['


# -- the sink (its own process) -----------------------------------------------------------------


class _SinkState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: float | None = None
        self.last: float | None = None
        self.requests = 0
        self.recipients = 0
        self.bytes = 0
        self.other = 0  # requests that were not POST /v3/mail/send


class _SinkHandler(BaseHTTPRequestHandler):
    state: _SinkState  # set on the class by sink()

    def do_POST(self) -> None:
        arrived = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        recipients = body.count(RECIPIENT)
        state = self.state
        with state.lock:
            if state.first is None:
                state.first = arrived
            if self.path == "/v3/mail/send":
                state.requests += 1
                state.recipients += recipients
                state.bytes += len(body)
            else:
                state.other += 1
        self.send_response(202)
        self.send_header("X-Message-Id", f"sink{arrived:.6f}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        with state.lock:
            state.last = time.time()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def sink() -> None:
    """Serve until stdin closes, then print the counts as one JSON line."""
    state = _SinkState()
    _SinkHandler.state = state
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    server.daemon_threads = True
    server.request_queue_size = 128
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with state.lock:
        summary = {
            "first": state.first,
            "last": state.last,
            "requests": state.requests,
            "recipients": state.recipients,
            "bytes": state.bytes,
            "other": state.other,
            "cpu": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024,  # started before the parent grew
        }
    print(json.dumps(summary), flush=True)


@contextmanager
def sink_process() -> Iterator[tuple[str, dict[str, Any]]]:
    """The sink in its own process: its URL, and a dict filled with its summary on exit."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--sink"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    summary: dict[str, Any] = {}
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the sink did not start: {url!r}")
        yield url, summary
    finally:
        output, _ = process.communicate(timeout=60)  # closes stdin: the sink reports
        lines = output.strip().splitlines()
        if lines:
            summary.update(json.loads(lines[-1]))


# -- the database and the measured send ---------------------------------------------------------


def _config(url: str, api_url: str) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "site": {"name": "The Meridian Post", "base_url": "https://news.meridian.example"},
        "sender": {
            "from_email": "newsletters@meridian.example",
            "from_name": "The Meridian Post",
            "unsubscribe_mailto": "unsubscribe@meridian.example",
        },
        "delivery": {"transport": "sendgrid", "batch_size": 1000, "concurrency": 4},
        "sendgrid": {"api_url": api_url, "batch_size": 1000, "timeout": 60},
        "newsletters": [{"slug": SLUG, "title": "Turkey Unpacked", "timezone": "Europe/Istanbul"}],
    }


def _env() -> dict[str, str]:
    return {"DIGEST_SECRET_KEY": "bench-secret-key-0123456789abcdef", "SENDGRID_API_KEY": API_KEY}


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for this run, dropped at the end whatever happens."""
    from sqlalchemy import text

    from digest.storage.db import make_engine

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    print(f"schema {schema}", flush=True)
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        print(f"dropping schema {schema}", flush=True)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def prepare(url: str, size: int, step: int) -> tuple[int, float]:
    """A migrated database with `size` subscribers and an approved, rendered issue: the issue's
    id and the seconds the audience insert took."""
    from digest.rendering.render import Renderer
    from digest.storage.db import make_engine, upgrade
    from tests.support.sample_issue import sample_contents
    from tests.support.sending import add_audience, make_issue

    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    for first in range(1, size + 1, step):
        count = min(step, size + 1 - first)
        add_audience(engine, SLUG, count, start=first)
        done = first + count - 1
        elapsed = time.perf_counter() - started
        print(
            f"  audience {done:>11,} / {size:,} ({done / elapsed:,.0f} rows/s, {elapsed:.0f} s)",
            flush=True,
        )
    insert = time.perf_counter() - started
    rendered = Renderer().render(sample_contents(12))
    issue_id = make_issue(
        engine, SLUG, subject=rendered.subject, html=rendered.html, text=rendered.text
    )
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    return issue_id, insert


def child(url: str, api_url: str, issue_id: int) -> None:
    """Runs in its own process: the measured send. Progress on stderr, one JSON line on stdout."""
    from bench_send import peak_rss_mb  # (benchmarks/ is this script's own folder)

    from digest.app import App, fixed_clock
    from digest.config import settings_from_mapping
    from digest.sending.send import send_issue
    from tests.support.sample_issue import PERIOD

    settings = settings_from_mapping(_config(url, api_url), env=_env())
    app = App(settings=settings, clock=fixed_clock(PERIOD))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 15:
            last[0] = now
            print(
                f"  sent {done:>11,} / {total:,} after {now - started:.0f} s "
                f"(peak RSS so far {peak_rss_mb():.0f} MB)",
                file=sys.stderr,
                flush=True,
            )

    wall_start = time.time()
    started = last[0] = time.perf_counter()
    report = send_issue(app, issue_id, progress=progress)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {
        "wall_start": wall_start,
        "seconds": seconds,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_mb": peak_rss_mb(),
        "freeze": report.freeze_seconds,
        "accepted": report.accepted,
        "failed": report.failed,
        "skipped": report.skipped,
        "unknown": report.unknown,
        "pending": report.pending,
        "total": report.total,
        "batches": report.batches,
        "errors": report.errors,
    }
    print(json.dumps(figures), flush=True)


def delivery_rows(url: str, issue_id: int) -> int:
    from digest.storage.db import make_engine

    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT count(*) FROM delivery WHERE issue_id = %(i)s", {"i": issue_id}
        ).scalar_one()
    engine.dispose()
    return int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument(
        "--step", type=int, default=500_000, help="subscribers per insert transaction"
    )
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "API_URL", "ISSUE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.sink:
        sink()
        return 0
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    size: int = args.size
    print(f"{size:,} subscribers on PostgreSQL; load average {os.getloadavg()}", flush=True)
    with pg_schema() as url, sink_process() as (api_url, sink_summary):
        started = time.perf_counter()
        issue_id, insert = prepare(url, size, args.step)
        setup = time.perf_counter() - started
        print(f"setup {setup:.0f} s (audience insert {insert:.0f} s); sending", flush=True)
        load_before = os.getloadavg()
        output = subprocess.run(
            [sys.executable, __file__, "--child", url, api_url, str(issue_id)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        load_after = os.getloadavg()
        if output.returncode != 0:
            raise RuntimeError(f"the send failed (exit {output.returncode}); see stderr above")
        result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
        rows = delivery_rows(url, issue_id)
    # the sink has reported now
    seconds = result["seconds"]
    first = sink_summary.get("first")
    to_first = first - result["wall_start"] if first is not None else float("nan")
    print(
        f"PostgreSQL {size:,} recipients: {seconds:.1f} s ({size / seconds:,.0f}/s), "
        f"freeze {result['freeze']:.1f} s (overlapped), first request after {to_first:.2f} s, "
        f"peak RSS {result['peak_mb']:.0f} MB, sender CPU {result['cpu']:.1f} s "
        f"({result['cpu'] / size * 1e6:.0f} µs/recipient)",
        flush=True,
    )
    print(
        f"    setup {setup:.0f} s (audience insert {insert:.0f} s, "
        f"{size / insert:,.0f} subscribers/s); accepted {result['accepted']:,}, "
        f"failed {result['failed']:,}, unknown {result['unknown']:,}, "
        f"batches {result['batches']:,}; deliveries {rows:,}",
        flush=True,
    )
    print(
        f"    sink: {sink_summary.get('recipients', 0):,} recipients in "
        f"{sink_summary.get('requests', 0):,} requests, "
        f"{sink_summary.get('bytes', 0) / 2**30:.1f} GiB, CPU {sink_summary.get('cpu', 0):.1f} s, "
        f"peak RSS {sink_summary.get('peak_mb', 0):.0f} MB; load average before the send "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)",
        flush=True,
    )
    ok = True
    checks = {
        "accepted == size": result["accepted"] == size,
        "sink recipients == size": sink_summary.get("recipients") == size,
        "deliveries == size": rows == size,
        "no other requests": sink_summary.get("other") == 0,
    }
    for name, passed in checks.items():
        if not passed:
            print(f"    CHECK FAILED: {name} ({result}, {sink_summary})", flush=True)
            ok = False
    if result["errors"]:
        print(f"    errors: {result['errors']}", flush=True)
    met = result["peak_mb"] <= TARGET_RSS_MB
    print(
        f"    target peak RSS ≤ {TARGET_RSS_MB:.0f} MB: {'ok' if met else 'MISSED'}; "
        f"checks: {'ok' if ok else 'FAILED'}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
