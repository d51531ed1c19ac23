"""Ingestion: fetch every source (or one), parse, normalize, deduplicate, store, classify.

The run is a pipeline: fetches overlap (bounded by `ingest.concurrency`); in big runs worker
processes fetch, parse and prepare (`workers`) while this process only stores, several sources
per transaction (`record.Writer`); small runs fetch on an event loop here and parse on its
threads, a transaction per source. Sources are stored in configuration order, with bulk
lookups. A source that fails is recorded on its `Source` row and the others go on; nothing
already stored is ever deleted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlmodel import select

from digest.config import NewsletterConfig, Settings, SourceConfig
from digest.ingest.articles import ArticleData, ParsedFeed
from digest.ingest.feeds import parse_source
from digest.ingest.fetch import Fetcher, FetchRequest, FetchResult, default_user_agent
from digest.ingest.record import ReadSource, SourceReport, Writer, record, store_alone
from digest.ingest.upsert import prepare
from digest.ingest.workers import ReadingPool
from digest.storage.models import Source

if TYPE_CHECKING:
    from digest.app import App

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]
Finished = Callable[[SourceReport], None]
POOL_MIN_SOURCES = 4  # below this, worker processes cost more than they save
__all__ = [
    "IngestReport", "ReadSource", "SourceReport", "UnknownSourceError", "ingest_items",
    "run_ingest", "select_sources",
]  # fmt: skip


@dataclass
class IngestReport:
    sources: list[SourceReport]

    @property
    def fetched(self) -> int:
        return sum(s.fetched for s in self.sources)

    @property
    def new(self) -> int:
        return sum(s.new for s in self.sources)

    @property
    def updated(self) -> int:
        return sum(s.updated for s in self.sources)

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.sources)

    @property
    def errors(self) -> int:
        return sum(len(s.errors) for s in self.sources)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.sources if s.failed]


class UnknownSourceError(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        listed = ", ".join(known) or "none configured"
        super().__init__(f"no source {name!r} in the configuration (known: {listed})")


def run_ingest(
    app: App,
    *,
    source: str | None = None,
    progress: Progress | None = None,
    finished: Finished | None = None,
) -> IngestReport:
    """Ingest every configured source, or only `source`; one report per source, config order.

    `progress(name, message)` hears each step of each source; `finished(report)` each source's
    report once it is committed (both on the calling thread, or the event loop's in small runs).
    """
    configs = select_sources(app.settings, source)
    if not configs:
        return IngestReport([])
    now = app.now()
    requests = sync_sources(app, configs)
    with _old_objects_frozen():
        run = _Run(app, configs, now, progress or _no_progress, finished or _no_report)
        workers = _worker_count(app.settings.ingest.parse_workers, len(requests))
        pooled = workers > 1
        reports = run.with_workers(requests, workers) if pooled else _run(run.run(requests))
    order = {c.name: i for i, c in enumerate(configs)}
    return IngestReport(sorted(reports, key=lambda r: order[r.name]))


def select_sources(settings: Settings, name: str | None) -> list[SourceConfig]:
    if name is None:
        return list(settings.sources)
    chosen = [s for s in settings.sources if s.name == name]
    if not chosen:
        raise UnknownSourceError(name, [s.name for s in settings.sources])
    return chosen


def sync_sources(app: App, configs: Sequence[SourceConfig]) -> list[FetchRequest]:
    """Make sure each configured source has its row; return what to fetch, with validators."""
    with app.session() as session:
        rows = {s.name: s for s in session.exec(select(Source)).all()}
        requests = []
        for config in configs:
            row = rows.get(config.name)
            if row is None:
                row = Source(name=config.name, kind=config.kind, url=config.url)
            elif (row.kind, row.url) != (config.kind, config.url):
                row.kind, row.url = config.kind, config.url
                row.etag = row.last_modified = None  # another document: validators don't apply
            session.add(row)
            requests.append(FetchRequest(config.name, config.url, row.etag, row.last_modified))
    return requests


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Keep the cyclic collector off the objects that existed before the run.

    A run allocates many small objects, so full collections happen during it, and each walked
    the whole heap (libraries, ORM state) again: about 0.1 s with the GIL held, stalling fetches
    and the database thread. Forked parse workers inherit the freeze, so theirs skip it too.
    Unfrozen afterwards (unless someone else froze first), so nothing is kept alive for good.
    """
    if gc.get_freeze_count():
        yield  # frozen by the host process already: leave its choice alone
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _no_progress(_name: str, _message: str) -> None:
    return None


def _no_report(_report: SourceReport) -> None:
    return None


T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also when called from inside a running event loop (on a fresh thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1, thread_name_prefix="digest-ingest") as thread:
        return thread.submit(asyncio.run, coroutine).result()


class _Run:
    """One ingest run: fetch → parse → store, overlapping; in worker processes or in this one."""

    def __init__(
        self,
        app: App,
        configs: Sequence[SourceConfig],
        now: datetime,
        progress: Progress,
        finished: Finished,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.kinds = {c.name: str(c.kind) for c in configs}
        self.now = now
        self.progress = progress
        self.finished = finished
        self.order: list[str] = []
        self.turns: dict[str, asyncio.Event] = {}

    def with_workers(self, requests: list[FetchRequest], count: int) -> list[SourceReport]:
        """Worker processes fetch and read; this thread stores, in order, batch by batch."""
        pool = _start_workers(self, requests, count)
        writer, reports = Writer(self.app, self.now), []
        try:
            for request in requests:
                self.progress(request.name, "fetching")
            for index in range(len(requests)):
                _, result, read = pool.take(index)
                done = writer.add(result, read)
                if not pool.ready(index + 1):  # nothing else to store yet: commit meanwhile
                    done += writer.flush()
                reports += self._report(done)
            reports += self._report(writer.flush())
        finally:
            pool.close()
        return reports

    def _report(self, reports: list[SourceReport]) -> list[SourceReport]:
        for report in reports:
            self.progress(report.name, _summary(report))
            self.finished(report)
        return reports

    async def run(self, requests: list[FetchRequest]) -> list[SourceReport]:
        """In-process: fetches on this event loop, parsing on its threads, one DB thread."""
        writer = ThreadPoolExecutor(1, thread_name_prefix="digest-db")
        try:
            # Stored in configuration order, whatever order fetches finish in: when two sources
            # carry the same article, the first configured one keeps it, run after run.
            self.turns = {r.name: asyncio.Event() for r in requests}
            self.order = [r.name for r in requests]
            async with Fetcher(self.settings.ingest, default_user_agent(self.settings)) as fetcher:
                handled = []
                for request in requests:
                    self.progress(request.name, "fetching")
                async for result in fetcher.fetch_all(requests):
                    handled.append(asyncio.create_task(self._handle(result, writer)))
                return list(await asyncio.gather(*handled))
        finally:
            writer.shutdown(wait=True)

    async def _handle(self, result: FetchResult, writer: ThreadPoolExecutor) -> SourceReport:
        name = result.name
        try:
            read = await self._read(result)
            position = self.order.index(name)
            if position:
                await self.turns[self.order[position - 1]].wait()
            report = await asyncio.get_running_loop().run_in_executor(
                writer, store_alone, self.app, result, read, self.now
            )
        finally:
            self.turns[name].set()  # never leave the next source waiting
        self.progress(name, _summary(report))
        self.finished(report)
        return report

    async def _read(self, result: FetchResult) -> ReadSource | None:
        if result.error:
            self.progress(result.name, f"failed: {result.error}")
            return None
        if result.not_modified:
            self.progress(result.name, "not modified")
            return None
        self.progress(result.name, "parsing")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None,
                read_source,
                self.kinds[result.name],
                result,
                self.now,
                self.settings.newsletters,
            )
        except Exception as exc:  # a reader bug: this source fails alone
            log.exception("parsing source %s failed", result.name)
            result.error = f"could not parse: {type(exc).__name__}: {exc}"
            return None


def read_source(
    kind: str, result: FetchResult, now: datetime, newsletters: Sequence[NewsletterConfig]
) -> ReadSource:
    feed = parse_source(
        kind, result.content or b"", url=result.url, content_type=result.content_type
    )
    items, warnings = prepare(feed.items, result.name, now=now, newsletters=newsletters)
    return ReadSource(feed, items, feed.warnings + warnings)


def _worker_count(workers: int, sources: int) -> int:
    """How many processes fetch and read (1: this one, on its event loop)."""
    cpus = os.cpu_count() or 1
    if workers == 1 or (workers == 0 and (sources < POOL_MIN_SOURCES or cpus < 2)):
        return 1
    return min(workers or cpus, sources)


def _start_workers(run: _Run, requests: list[FetchRequest], count: int) -> ReadingPool:
    settings = run.settings
    return ReadingPool(
        count, requests, run.kinds, settings.ingest, default_user_agent(settings), run.now,
        settings.newsletters, read_source,
    )  # fmt: skip


def _summary(report: SourceReport) -> str:
    if report.failed:
        return f"failed: {report.errors[0]}"
    if report.not_modified:
        return "not modified"
    return f"{report.fetched} items: {report.new} new, {report.updated} updated"


PUSH_URL = "push"  # the Source.url of sources fed through the push API


def ingest_items(app: App, source: str, items: Sequence[ArticleData]) -> SourceReport:
    """Store articles pushed by a CMS as if `source` had just been fetched with these items."""
    now = app.now()
    with app.session() as session:
        if session.exec(select(Source).where(Source.name == source)).first() is None:
            session.add(Source(name=source, kind="api", url=PUSH_URL))
            session.flush()
        result = FetchResult(source, PUSH_URL)
        prepared, warnings = prepare(items, source, now=now, newsletters=app.settings.newsletters)
        read = ReadSource(ParsedFeed(items=list(items)), prepared, warnings)
        return record(session, result, read, app.settings, now)
