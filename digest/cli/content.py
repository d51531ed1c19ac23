"""`digest ingest`, `digest articles list`, `digest sources status`, `digest topics reclassify`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from digest.cli.common import console, err_console, fail, get_app, print_json

if TYPE_CHECKING:  # imported where used: `digest --help` should not load the database layer
    from sqlmodel import Session

    from digest.app import App
    from digest.ingest.run import IngestReport, SourceReport
    from digest.storage.models import Article, Source

articles_app = typer.Typer(help="Stored articles.", no_args_is_help=True)
sources_app = typer.Typer(help="Content sources and their health.", no_args_is_help=True)
topics_app = typer.Typer(
    help="Newsletter topics (which articles belong where).", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
REFRESHES_PER_SECOND = 4  # the live bar redraws at most this often, however many sources


def ingest(
    ctx: typer.Context,
    source: Annotated[
        str | None, typer.Option("--source", help="Only this source (its name in the config).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fetch every source (or one), store new and updated articles, classify them into topics.

    Exits 0 when a source fails (its error is printed and recorded); 1 only for bad usage.
    """
    import gc

    # The database layer and the readers are imported here, some 100k long-lived objects:
    # collections during the import walked them again and again (about 0.1 s of CPU here).
    collecting = gc.isenabled()
    gc.disable()
    try:
        from digest.ingest.run import UnknownSourceError

        app = get_app(ctx)
    finally:
        if collecting:
            gc.enable()
    try:
        report = _ingest_with_progress(app, source, show=not as_json and console.is_terminal)
    except UnknownSourceError as exc:
        fail(str(exc))
    if as_json:
        print_json(_report_document(report))
        return
    _print_report(report)


def _ingest_with_progress(app: App, source: str | None, *, show: bool) -> IngestReport:
    """One aggregate bar (sources done, items, errors) while it runs, on a terminal only.

    Redrawn as sources finish, at most REFRESHES_PER_SECOND times a second, so 500 sources cost
    no more to show than 5. Not by rich's refresh thread: with a thread running, the parse
    workers cannot be forked and start by importing everything again (a quarter of the run).
    """
    import time

    from rich import progress as bar

    from digest.ingest.run import run_ingest, select_sources

    if not show:
        return run_ingest(app, source=source)
    total = len(select_sources(app.settings, source))
    columns = (
        bar.TextColumn("ingest"), bar.BarColumn(), bar.MofNCompleteColumn(),
        bar.TextColumn("sources · {task.fields[items]} items · {task.fields[errors]} errors"),
        bar.TimeElapsedColumn(),
    )  # fmt: skip
    with bar.Progress(*columns, console=err_console, transient=True, auto_refresh=False) as shown:
        task = shown.add_task("ingest", total=total, items=0, errors=0)
        items = errors = 0
        drawn = 0.0

        def finished(report: SourceReport) -> None:
            nonlocal items, errors, drawn
            items += report.fetched
            errors += len(report.errors)
            shown.update(task, advance=1, items=items, errors=errors)
            if time.monotonic() - drawn >= 1 / REFRESHES_PER_SECOND:
                shown.refresh()
                drawn = time.monotonic()

        return run_ingest(app, source=source, finished=finished)


def _print_report(report: IngestReport) -> None:
    """The per-source table, once, at the end.

    Laid out here as one styled text, not with rich's Table: measuring 500 rows cell by cell
    cost a tenth of a whole 100-source run.
    """
    from rich.text import Text

    rows: list[tuple[tuple[str, ...], str | None]] = [
        (("source", "fetched", "new", "updated", "unchanged", "errors"), "bold")
    ]
    for s in report.sources:
        fetched = "not modified" if s.not_modified else ("failed" if s.failed else str(s.fetched))
        counts = (str(s.new), str(s.updated), str(s.unchanged), str(len(s.errors)))
        rows.append(((s.name, fetched, *counts), "red" if s.failed else None))
    totals = (report.fetched, report.new, report.updated, report.unchanged, report.errors)
    rows.append((("total", *map(str, totals)), "bold"))
    widths = [max(len(cells[i]) for cells, _ in rows) for i in range(6)]
    rule = "─" * (sum(widths) + 2 * 5) + "\n"

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]) + "\n"

    table = Text(no_wrap=True)
    for number, (cells, style) in enumerate(rows):
        if number in (1, len(rows) - 1):
            table.append(rule, style="dim")
        table.append(line(cells), style=style)
    table.rstrip()
    console.print(table, highlight=False)
    for s in report.sources:
        for error in s.errors:
            console.print(f"[red]error[/] {s.name}: {error}", highlight=False)
        for warning in s.warnings:
            console.print(f"[yellow]warning[/] {s.name}: {warning}", highlight=False)


def _report_document(report: IngestReport) -> dict[str, Any]:
    return {
        "sources": [
            {
                "name": s.name,
                "fetched": s.fetched,
                "new": s.new,
                "updated": s.updated,
                "unchanged": s.unchanged,
                "not_modified": s.not_modified,
                "failed": s.failed,
                "errors": s.errors,
                "warnings": s.warnings,
            }
            for s in report.sources
        ],
        "totals": {
            "fetched": report.fetched,
            "new": report.new,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "errors": report.errors,
        },
    }


def parse_when(text: str, now: datetime) -> datetime:
    """'7d' / '36h' (ago), '2026-11-20' or '2026-11-20T08:00:00+03:00' → aware UTC."""
    from digest.config import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since: not a duration like '7d' or an ISO 8601 date: {text!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)


@articles_app.command("list")
def list_articles(
    ctx: typer.Context,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Only this newsletter's topic.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Published after: '7d', '36h' or an ISO date.")
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List stored articles, newest first, with their topics."""
    from digest.config import ConfigError

    app = get_app(ctx)
    if topic is not None:
        try:
            app.settings.newsletter(topic)
        except ConfigError as exc:
            fail(exc.reason)
    from rich.table import Column, Table

    start = parse_when(since, app.now()) if since else None
    with app.session() as session:
        documents = article_documents(session, topic=topic, since=start, source=source, limit=limit)
    if as_json:
        print_json(documents)
        return
    table = Table("id", Column("published", no_wrap=True), "source", "title", "topics")
    for a in documents:
        table.add_row(
            str(a["id"]), a["published_at"][:16].replace("T", " "), a["source"], a["title"],
            ", ".join(a["topics"]),
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(documents)} article(s)")


def article_documents(
    session: Session,
    *,
    topic: str | None = None,
    since: datetime | None = None,
    source: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Articles as JSON-ready dicts, newest first; `topics` lists newsletter slugs."""
    from sqlmodel import col, select

    from digest.storage.models import Article, ArticleTopic

    statement = select(Article)
    if topic is not None:
        statement = statement.join(
            ArticleTopic, col(ArticleTopic.article_id) == col(Article.id)
        ).where(ArticleTopic.newsletter == topic)
    if since is not None:
        statement = statement.where(col(Article.published_at) >= since)
    if source is not None:
        statement = statement.where(Article.source == source)
    statement = statement.order_by(col(Article.published_at).desc(), col(Article.id).desc())
    articles = session.exec(statement.limit(limit)).all()
    links: dict[int, dict[str, list[str]]] = {}
    ids = [a.id for a in articles]
    for link in session.exec(select(ArticleTopic).where(col(ArticleTopic.article_id).in_(ids))):
        links.setdefault(link.article_id, {})[link.newsletter] = list(link.reasons or [])
    return [_article_document(a, links.get(a.id or 0, {})) for a in articles]


def _article_document(article: Article, topics: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "id": article.id,
        "title": article.title,
        "url": article.url,
        "published_at": article.published_at.isoformat(),
        "date_source": article.date_source,
        "source": article.source,
        "guid": article.guid,
        "author": article.author,
        "language": article.language,
        "tags": list(article.tags or []),
        "topics": sorted(topics),
        "reasons": dict(sorted(topics.items())),
        "summary_text": article.summary_text,
        "image_url": article.image_url,
        "first_seen_at": article.first_seen_at.isoformat(),
        "updated_at": article.updated_at.isoformat(),
    }


@sources_app.command("status")
def sources_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Each source's health: last success, last error, failures in a row, articles stored."""
    from rich.table import Column, Table

    app = get_app(ctx)
    with app.session() as session:
        documents = source_documents(session, [s.name for s in app.settings.sources])
    if as_json:
        print_json(documents)
        return
    table = Table(
        Column("source", no_wrap=True), Column("state", no_wrap=True),
        Column("last success", no_wrap=True), "failures", "articles", "last error / warning",
    )  # fmt: skip
    for s in documents:
        colour = {"ok": "green", "failing": "red", "warning": "yellow"}.get(s["state"], "dim")
        note = s["last_error"] if s["state"] == "failing" else (s["last_warning"] or "")
        table.add_row(
            s["name"], f"[{colour}]{s['state']}[/]", _short(s["last_success_at"]),
            str(s["consecutive_failures"]), str(s["articles"]), note or "",
        )  # fmt: skip
    console.print(table)


def source_documents(session: Session, configured: list[str]) -> list[dict[str, Any]]:
    """Configured sources first (in config order), then sources only seen in the database."""
    from sqlalchemy import func
    from sqlmodel import col, select

    from digest.storage.models import Article, Source

    rows = {s.name: s for s in session.exec(select(Source)).all()}
    counts = dict(
        session.execute(select(Article.source, func.count()).group_by(col(Article.source))).all()  # type: ignore[arg-type]
    )
    names = configured + sorted(set(rows) - set(configured))
    return [_source_document(n, rows.get(n), counts.get(n, 0), n in configured) for n in names]


def _source_document(
    name: str, row: Source | None, articles: int, configured: bool
) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    if row is None or row.last_fetched_at is None:
        state = "never fetched"
    elif row.consecutive_failures:
        state = "failing"
    else:
        state = "warning" if row.last_warning else "ok"
    return {
        "name": name,
        "configured": configured,
        "kind": row.kind if row else None,
        "url": row.url if row else None,
        "state": state,
        "articles": articles,
        "last_fetched_at": iso(row.last_fetched_at) if row else None,
        "last_success_at": iso(row.last_success_at) if row else None,
        "last_error": row.last_error if row else None,
        "last_error_at": iso(row.last_error_at) if row else None,
        "last_warning": row.last_warning if row else None,
        "last_http_status": row.last_http_status if row else None,
        "last_item_count": row.last_item_count if row else 0,
        "consecutive_failures": row.consecutive_failures if row else 0,
        "etag": row.etag if row else None,
        "last_modified": row.last_modified if row else None,
    }


def _short(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "never"


@topics_app.command("reclassify")
def topics_reclassify(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Re-apply the newsletters' current topic rules to every stored article."""
    from digest.ingest.topics import reclassify

    app = get_app(ctx)
    with app.session() as session:
        report = reclassify(session, app.settings, now=app.now())
    document = {
        "articles": report.articles,
        "added": report.added,
        "removed": report.removed,
        "changed": report.changed,
    }
    if as_json:
        print_json(document)
        return
    console.print(
        f"Reclassified {report.articles} article(s): {report.added} topic link(s) added, "
        f"{report.removed} removed, {report.changed} with new reasons."
    )


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.add_typer(articles_app, name="articles")
    app.add_typer(sources_app, name="sources")
    app.add_typer(topics_app, name="topics")
