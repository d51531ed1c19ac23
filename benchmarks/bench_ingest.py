"""Ingest throughput: 100 RSS feeds × 50 items from a local HTTP server into SQLite.

Run: `.venv/bin/python benchmarks/bench_ingest.py [--feeds 100] [--items 50] [--db URL]
[--parse-workers N] [--runs 3]`.
Prints items/s for a cold run (everything new), a run where every server answers 304, and a
run where every feed changed (all updates), each `--runs` times on a fresh database, then the
medians. Target: ≥ 2,000 items/s cold on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import digest
from digest.app import App, fixed_clock
from digest.config import settings_from_mapping
from digest.ingest.run import IngestReport, run_ingest
from digest.storage.db import make_engine, upgrade

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WORDS = [
    "Ankara", "Istanbul", "lira", "budget", "drought", "climate", "wildfire", "council", "market",
    "rally", "exporters", "parliament", "harbour", "ferry", "school", "energy", "grid", "water",
    "farmers", "rates", "inflation", "coast",
]  # fmt: skip
NEWSLETTERS = [
    {"slug": "turkey", "title": "T", "topic": {"tags": ["Turkey"], "keywords": ["Ankara", "lira"]}},
    {
        "slug": "climate",
        "title": "C",
        "topic": {"keywords": ["drought", "climate", "wildfire"], "exclude_keywords": ["market"]},
    },
    {"slug": "ports", "title": "P", "topic": {"keywords": ["harbour", "ferry", "coast"]}},
]


def feed(number: int, items: int, edition: int) -> bytes:
    """A realistic RSS 2.0 feed: HTML descriptions, categories, media, dates, tracking links."""
    parts = []
    for i in range(items):
        words = " ".join(WORDS[(number + i + k) % len(WORDS)] for k in range(8))
        date = format_datetime(NOW - timedelta(hours=i + number % 7))
        parts.append(
            f"""<item><title>{words.title()} — story {number}-{i} (edition {edition})</title>
<link>https://news{number}.example/{2026}/story-{i}?utm_source=rss&amp;utm_medium=feed</link>
<guid isPermaLink="false">feed{number}-item{i}</guid><pubDate>{date}</pubDate>
<dc:creator>Reporter {i % 9}</dc:creator><category>{WORDS[i % len(WORDS)].title()}</category>
<category>Turkey</category>
<description><![CDATA[<p>{words}. The <b>committee</b> met on Tuesday; <a href="/more/{i}">more</a>
about {words} in the edition {edition}.</p><p>{words} {words}.</p>]]></description>
<media:content url="https://img{number}.example/{i}.jpg" medium="image"/></item>"""
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/">'
        f"<channel><title>Feed {number}</title><link>https://news{number}.example/</link>"
        f"<language>en</language>{''.join(parts)}</channel></rss>"
    ).encode()


def serve(port_queue: Any, feeds: int, items: int, edition_path: str) -> None:
    """The feed server: ETag per (feed, edition), 304 on a matching If-None-Match."""

    cache: dict[tuple[int, int], tuple[bytes, str]] = {}

    def document(number: int, edition: int) -> tuple[bytes, str]:
        """Built once, served like a static file: the server should cost next to nothing."""
        if (number, edition) not in cache:
            body = feed(number, items, edition)
            cache[(number, edition)] = body, f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        return cache[(number, edition)]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            number = int(self.path.strip("/").split(".")[0].removeprefix("feed"))
            body, etag = document(number, int(Path(edition_path).read_text()))
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    for number in range(feeds):
        for edition in (1, 2):
            document(number, edition)
    server = _Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: with 8 fetches connecting at once, a busy machine
    # overflows it and the kernel drops a SYN, which costs the client a 1 s retransmit, and the
    # whole run waits for that source's turn to store. Real feed servers listen far deeper.
    request_queue_size = 128


def cpu_seconds() -> tuple[float, float]:
    """(this process, its finished children: the ingest workers, which fetch and parse)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def timed(app: App) -> tuple[float, tuple[float, float], IngestReport]:
    start, (own, children) = time.perf_counter(), cpu_seconds()
    report = run_ingest(app)
    own_after, children_after = cpu_seconds()
    return time.perf_counter() - start, (own_after - own, children_after - children), report


LABELS = ("cold (all new)", "304 (not modified)", "changed (all updated)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=100)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file per run)")
    parser.add_argument("--parse-workers", type=int, default=0, help="ingest.parse_workers")
    parser.add_argument("--runs", type=int, default=3, help="cold/304/changed rounds (median)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="digest-bench-"))
    edition = work / "edition"
    queue: Any = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(queue, args.feeds, args.items, str(edition)), daemon=True
    )
    edition.write_text("1")
    server.start()
    port = queue.get(timeout=30)
    total = args.feeds * args.items
    print(f"digest from {Path(digest.__file__).parent}")
    rates: dict[str, list[float]] = {label: [] for label in LABELS}
    try:
        for run in range(args.runs):
            if args.db and run:
                break  # a given database is not emptied between runs: one round only
            url = args.db or f"sqlite:///{work / f'bench{run}.db'}"
            app = _app(url, args, port)
            where = f"over HTTP on 127.0.0.1 into {app.engine.dialect.name}"
            load = os.getloadavg()[0]
            print(f"{args.feeds} feeds × {args.items} items {where} (load average {load:.1f})")
            edition.write_text("1")
            for label in LABELS:
                if label.startswith("changed"):
                    edition.write_text("2")
                seconds, cpu, report = timed(app)
                assert report.errors == 0, [s.errors for s in report.sources if s.errors]
                rates[label].append(total / seconds)
                _print_run(label, seconds, cpu, total, report)
    finally:
        server.terminate()
    medians = ", ".join(f"{label} {statistics.median(r):.0f}" for label, r in rates.items())
    print(f"median items/s over {len(rates[LABELS[0]])} run(s): {medians}")


def _app(url: str, args: argparse.Namespace, port: int) -> App:
    engine = make_engine(url)
    upgrade(engine)
    settings = settings_from_mapping(
        {
            "database": {"url": url},
            "sources": [
                {"name": f"feed{n}", "url": f"http://127.0.0.1:{port}/feed{n}.xml"}
                for n in range(args.feeds)
            ],
            "newsletters": NEWSLETTERS,
            "ingest": {"parse_workers": args.parse_workers},
        },
        env={},
    )
    return App(settings=settings, clock=fixed_clock(NOW), _engine=engine)


def _print_run(
    label: str, seconds: float, cpu: tuple[float, float], total: int, report: IngestReport
) -> None:
    own, workers = cpu
    print(
        f"  {label:<22} {seconds:6.2f} s  {total / seconds:8.0f} items/s  "
        f"(CPU {own + workers:5.2f} s = main {own:4.2f} + workers {workers:4.2f}: "
        f"{total / (own + workers):6.0f} items per CPU-second) "
        f"(new {report.new}, updated {report.updated}, unchanged {report.unchanged}, "
        f"not modified {sum(s.not_modified for s in report.sources)})"
    )


if __name__ == "__main__":
    main()
