"""Fetching over real HTTP on 127.0.0.1: conditional GET, errors, limits, redirects, gzip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

import digest.ingest.run
from digest.app import App
from digest.config import IngestConfig
from digest.ingest.fetch import Fetcher, FetchRequest, FetchResult
from digest.ingest.run import run_ingest
from digest.storage.models import Article, Source
from tests.support.feed_server import FeedServer, Route

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
RICH = (FEEDS / "rich-metadata.xml").read_bytes()
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LAST_MODIFIED = "Wed, 25 Nov 2026 08:00:00 GMT"


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as running:
        yield running


def fetch(url: str, **config: Any) -> FetchResult:
    settings = IngestConfig(**{"timeout": 2, "total_timeout": 5, **config})

    async def go() -> FetchResult:
        async with Fetcher(settings, "digest-test/1.0 (+https://news.example.com)") as fetcher:
            return await fetcher.fetch(FetchRequest("s", url))

    return asyncio.run(go())


def test_a_plain_fetch_sends_the_user_agent_and_keeps_validators(server: FeedServer) -> None:
    server.routes["/feed.xml"] = Route(body=RICH, etag='"v1"', last_modified=LAST_MODIFIED)
    result = fetch(server.url("/feed.xml"))
    assert result.ok and result.status == 200 and result.content == RICH
    assert result.etag == '"v1"' and result.last_modified == LAST_MODIFIED
    assert result.content_type == "application/rss+xml; charset=utf-8"
    headers = server.requests[0][1]
    assert headers["user-agent"].startswith("digest-test/1.0")
    assert "gzip" in headers["accept-encoding"]
    assert "application/rss+xml" in headers["accept"]


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route(status=500, body=b"oops"), "HTTP 500 Internal Server Error"),
        (Route(status=403, body=b"no"), "HTTP 403 Forbidden"),
        (Route(body=b"x" * 5000), "response too large: 5000 bytes (limit 2048)"),
        (Route(body=b"x" * 5000, chunked=True), "response too large: more than 2048 bytes"),
        (Route(body=b"x" * 5000, gzip=True, content_type="text/xml"), "response too large"),
        (Route(status=301, location="/loop"), "more than 5 redirects"),
    ],
)
def test_http_failures_become_messages(server: FeedServer, route: Route, message: str) -> None:
    server.routes["/loop"] = route
    result = fetch(server.url("/loop"), max_bytes=2048)
    assert not result.ok and result.error is not None and result.error.startswith(message)
    assert result.content is None


def test_not_found(server: FeedServer) -> None:
    assert fetch(server.url("/missing.xml")).error == "HTTP 404 Not Found"


def test_a_hanging_server_times_out(server: FeedServer) -> None:
    server.routes["/slow.xml"] = Route(hang=True)
    result = fetch(server.url("/slow.xml"), timeout=0.2, total_timeout=5)
    assert result.error == "timed out (no data for 0.2s)"


def test_the_whole_fetch_has_a_deadline(server: FeedServer) -> None:
    server.routes["/slow.xml"] = Route(hang=True)
    result = fetch(server.url("/slow.xml"), timeout=5, total_timeout=0.3)
    assert result.error == "timed out after 0.3s"


def test_connection_refused() -> None:
    result = fetch("http://127.0.0.1:9/feed.xml")
    assert result.error is not None and result.error.startswith("cannot connect")


def test_redirects_and_gzip_are_followed(server: FeedServer) -> None:
    server.routes["/old.xml"] = Route(status=301, location="/new.xml")
    server.routes["/new.xml"] = Route(body=RICH, gzip=True)
    result = fetch(server.url("/old.xml"))
    assert result.ok and result.content == RICH
    assert server.paths() == ["/old.xml", "/new.xml"]


def test_files_are_read_with_the_same_limits(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(RICH)
    assert fetch(str(path)).content == RICH
    assert fetch(path.as_uri()).content == RICH
    assert (fetch(str(path), max_bytes=1024).error or "").startswith("file too large")
    assert fetch(str(tmp_path / "nope.xml")).error == f"file not found: {tmp_path / 'nope.xml'}"


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = digest.ingest.run.read_source

    def counting(kind: str, result: FetchResult, *args: Any) -> Any:
        calls.append(result.name)
        return real(kind, result, *args)

    monkeypatch.setattr(digest.ingest.run, "read_source", counting)
    return calls


def test_etag_then_304_costs_no_parse(
    any_engine: Engine,
    make_app: Callable[..., App],
    server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server.routes["/feed.xml"] = Route(body=RICH, etag='"v1"')
    server.routes["/lm.xml"] = Route(
        body=RICH.replace(b"rich", b"lmfeed"), last_modified=LAST_MODIFIED
    )
    sources = [
        {"name": "etag", "url": server.url("/feed.xml")},
        {"name": "lm", "url": server.url("/lm.xml")},
    ]
    parsed = _counting_reads(monkeypatch)
    first = run_ingest(make_app(any_engine, now=NOW, sources=sources))
    assert [s.new for s in first.sources] == [3, 3] and sorted(parsed) == ["etag", "lm"]

    later = NOW + timedelta(hours=1)
    second = run_ingest(make_app(any_engine, now=later, sources=sources))
    assert [s.not_modified for s in second.sources] == [True, True]
    assert [s.fetched for s in second.sources] == [0, 0]
    assert len(parsed) == 2  # nothing parsed the second time
    conditional = {path: headers for path, headers in server.requests[2:]}
    assert conditional["/feed.xml"]["if-none-match"] == '"v1"'
    assert conditional["/lm.xml"]["if-modified-since"] == LAST_MODIFIED
    with Session(any_engine) as session:
        etag = session.exec(select(Source).where(Source.name == "etag")).one()
        assert etag.last_success_at == later and etag.last_http_status == 304
        assert etag.etag == '"v1"'

    # The feed changes: a new ETag, a full fetch, one updated item.
    server.routes["/feed.xml"] = Route(
        body=RICH.replace(b"Only an enclosure", b"Enclosure"), etag='"v2"'
    )
    third = run_ingest(make_app(any_engine, now=later, sources=sources))
    assert (third.sources[0].updated, third.sources[0].unchanged) == (1, 2)
    assert len(parsed) == 3


def test_http_failures_are_recorded_and_the_next_success_resets_them(
    any_engine: Engine, make_app: Callable[..., App], server: FeedServer
) -> None:
    server.routes["/ok.xml"] = Route(body=RICH)
    server.routes["/down.xml"] = Route(status=500, body=b"")
    server.routes["/slow.xml"] = Route(hang=True)
    server.routes["/huge.xml"] = Route(body=b"<rss>" + b" " * 20_000 + b"</rss>")
    sources = [
        {"name": name, "url": server.url(f"/{name}.xml")}
        for name in ("ok", "down", "slow", "huge", "gone")
    ]
    app = make_app(
        any_engine, now=NOW, sources=sources, ingest={"timeout": 0.3, "max_bytes": 10_000}
    )
    report = run_ingest(app)
    errors = {s.name: s.errors for s in report.sources}
    assert errors == {
        "ok": [],
        "down": ["HTTP 500 Internal Server Error"],
        "slow": ["timed out (no data for 0.3s)"],
        "huge": ["response too large: 20011 bytes (limit 10000)"],
        "gone": ["HTTP 404 Not Found"],
    }
    assert report.sources[0].new == 3
    with Session(any_engine) as session:
        rows = {s.name: s for s in session.exec(select(Source)).all()}
        assert rows["down"].consecutive_failures == 1 and rows["down"].last_http_status == 500
        assert rows["ok"].consecutive_failures == 0
        assert len(session.exec(select(Article)).all()) == 3

    server.routes["/down.xml"] = Route(body=RICH.replace(b"rich", b"down"))
    run_ingest(app, source="down")
    with Session(any_engine) as session:
        down = session.exec(select(Source).where(Source.name == "down")).one()
        assert down.consecutive_failures == 0 and down.last_success_at == NOW


def test_the_http_charset_reaches_the_parser(
    engine: Engine, make_app: Callable[..., App], server: FeedServer
) -> None:
    body = (FEEDS / "ru-windows-1251-undeclared.xml").read_bytes()
    server.routes["/ru.xml"] = Route(body=body, content_type="text/xml; charset=windows-1251")
    app = make_app(engine, now=NOW, sources=[{"name": "ru", "url": server.url("/ru.xml")}])
    report = run_ingest(app).sources[0]
    assert report.new == 2 and report.warnings == []
    with Session(engine) as session:
        titles = {a.title for a in session.exec(select(Article)).all()}
    assert "В Москве прошёл сильный снегопад" in titles
