"""Big runs: worker processes fetch and read, the main process stores several sources a commit.

On SQLite and PostgreSQL: conditional GET and per-source errors through the workers, a worker
that dies, and a source that cannot be stored inside a batch of others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from digest.app import App
from digest.config import IngestConfig, NewsletterConfig
from digest.ingest.articles import ArticleData
from digest.ingest.fetch import FetchRequest, FetchResult
from digest.ingest.record import ReadSource, Writer
from digest.ingest.run import read_source, run_ingest, sync_sources
from digest.ingest.upsert import Prepared
from digest.ingest.workers import ReadingPool
from digest.storage.models import Article, DateSource, Source
from tests.support.feed_server import FeedServer, Route

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
RICH = (FEEDS / "rich-metadata.xml").read_bytes()
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LAST_MODIFIED = "Wed, 25 Nov 2026 08:00:00 GMT"


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as running:
        yield running


def test_workers_fetch_conditionally_and_name_each_failure(
    any_engine: Engine, make_app: Callable[..., App], server: FeedServer
) -> None:
    server.routes["/a.xml"] = Route(body=RICH, etag='"a1"')
    server.routes["/b.xml"] = Route(body=RICH.replace(b"rich", b"bee"), last_modified=LAST_MODIFIED)
    server.routes["/c.xml"] = Route(body=RICH.replace(b"rich", b"sea"), etag='"c1"')
    server.routes["/down.xml"] = Route(status=500, body=b"")
    names = ["a", "b", "down", "c"]
    sources = [{"name": n, "url": server.url(f"/{n}.xml")} for n in names]
    ingest = {"parse_workers": 2, "timeout": 2, "total_timeout": 5}
    first = run_ingest(make_app(any_engine, now=NOW, sources=sources, ingest=ingest))
    assert [s.name for s in first.sources] == names
    assert [s.new for s in first.sources] == [3, 3, 0, 3]
    assert first.failed == ["down"] and first.sources[2].errors == [
        "HTTP 500 Internal Server Error"
    ]

    later = NOW + timedelta(hours=1)
    second = run_ingest(make_app(any_engine, now=later, sources=sources, ingest=ingest))
    assert [s.not_modified for s in second.sources] == [True, True, False, True]
    assert second.new == 0 and second.failed == ["down"]
    sent = {path: headers for path, headers in server.requests[len(names) :]}
    assert sent["/a.xml"]["if-none-match"] == '"a1"'
    assert sent["/b.xml"]["if-modified-since"] == LAST_MODIFIED
    with Session(any_engine) as session:
        rows = {s.name: s for s in session.exec(select(Source)).all()}
    assert rows["a"].etag == '"a1"' and rows["a"].last_http_status == 304
    assert rows["down"].consecutive_failures == 2 and rows["down"].last_success_at is None
    with Session(any_engine) as session:
        assert len(session.exec(select(Article)).all()) == 9


def _reader_that_dies_on_boom(
    kind: str, result: FetchResult, now: datetime, newsletters: Sequence[NewsletterConfig]
) -> Any:
    if result.name == "boom":
        os._exit(3)  # as the OOM killer would: no exception, no goodbye
    return read_source(kind, result, now, newsletters)


def test_a_dead_worker_fails_only_the_sources_it_had_not_sent() -> None:
    names = ["boom", *(f"ok{n}" for n in range(7))]
    requests = [FetchRequest(n, str(FEEDS / "rich-metadata.xml")) for n in names]
    pool = ReadingPool(
        2, requests, dict.fromkeys(names, "rss"), IngestConfig(concurrency=2), "test", NOW, [],
        _reader_that_dies_on_boom,
    )  # fmt: skip
    try:
        reads = [pool.take(i) for i in range(len(names))]
    finally:
        pool.close()
    died = "not read: its worker process died (exit code 3)"
    assert [index for index, _, _ in reads] == list(range(len(names)))
    assert reads[0][1].error == died
    outcomes = [result.error for _, result, _ in reads[1:]]
    assert set(outcomes) <= {None, died} and outcomes.count(None) >= 4  # the other one went on
    assert all(read is not None and len(read.items) == 3 for _, r, read in reads if r.ok)


def test_a_source_that_cannot_be_stored_fails_alone_within_its_batch(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    names = ["first", "broken", "last"]
    app = make_app(any_engine, now=NOW, sources=[{"name": n, "url": f"/x/{n}.xml"} for n in names])
    sync_sources(app, app.settings.sources)
    body = FetchResult("first", "/x/first.xml", content=RICH)
    good = read_source("rss", body, NOW, [])
    # An item the database refuses (an article needs a title): a real constraint violation,
    # after an item that was stored fine in the same transaction.
    bad = ArticleData(guid="g", url="https://x.example/untitled", title=None)  # type: ignore[arg-type]
    untitled = Prepared(bad, NOW, DateSource.PUBLISHED, "untitled", "f", frozenset(), {})
    refused = ReadSource(good.feed, [good.items[0], untitled], [])
    writer = Writer(app, NOW, commit_every=60)  # one batch for the three
    reports = writer.add(FetchResult("first", "/x/first.xml", etag='"1"'), good)
    reports += writer.add(FetchResult("broken", "/x/broken.xml"), refused)
    reports += writer.add(FetchResult("last", "/x/last.xml"), good)
    reports += writer.flush()
    assert [r.name for r in reports] == names
    assert [r.new for r in reports] == [3, 0, 0]  # "last" carries the same articles as "first"
    assert reports[1].failed and reports[1].errors[0].startswith("could not store:")
    assert not reports[2].failed and reports[2].unchanged == 3
    with Session(any_engine) as session:
        rows = {s.name: s for s in session.exec(select(Source)).all()}
        stored = session.exec(select(Article)).all()
    assert {a.source for a in stored} == {"first"} and len(stored) == 3
    assert rows["first"].etag == '"1"' and rows["last"].last_success_at == NOW
    assert (rows["broken"].last_error or "").startswith("could not store:")
