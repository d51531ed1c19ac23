"""Operations: `digest status`, `digest serve` and `digest demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from digest.cli.common import console, fail, get_app, get_signing_app, print_json


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Newsletters (next run, last issue, scheduler outcome, failures), sources, the leader,
    the workers."""
    from digest.ops.status import status_report

    report = status_report(get_app(ctx))
    if as_json:
        print_json(report)
        return
    console.print(f"[bold]Status at[/] {_moment(report['now'])}")
    table = Table(
        "newsletter",
        "next run (local)",
        "next issue for",
        "last issue out",
        "deliveries",
        "scheduler",
    )
    table.columns[0].no_wrap = True
    notes: list[str] = []
    for item in report["newsletters"]:
        last = item["last_issue"] or {}
        issue = f"#{last['id']} {_moment(last['period'])} {last['status']}" if last else "-"
        deliveries = ", ".join(f"{k} {v}" for k, v in sorted(last.get("deliveries", {}).items()))
        run = item["last_run"] or {}
        upcoming = item["next_issue"]
        table.add_row(
            item["slug"],
            f"{_moment(item['next_run_local'])} {item['timezone']}",
            _moment(upcoming["period_local"]),
            issue,
            deliveries or "-",
            f"{run['outcome']} {_moment(run['period'])}" if run else "never ran",
        )
        for open_run in item["open_runs"]:
            notes.append(
                f"{item['slug']} {_moment(open_run['period'])}: {open_run['outcome']}: "
                f"{open_run['detail']}"
            )
        for failure in item["failures"]:
            notes.append(
                f"[red]{item['slug']} {_moment(failure['period'])}: {failure['outcome']}[/]: "
                f"{failure['detail']}"
            )
        if last.get("skip_reason") and last.get("status") == "skipped":
            notes.append(f"{item['slug']} #{last['id']} skipped: {last['skip_reason']}")
    console.print(table)
    for note in notes:
        console.print("  " + note, highlight=False)
    sources = Table("source", "health", "last success", "failures", "last error")
    for source in report["sources"]:
        sources.add_row(
            source["name"],
            source["health"],
            _moment(source["last_success_at"]),
            str(source["consecutive_failures"]),
            source["last_error"] or "",
        )
    console.print(sources)
    console.print(_scheduler_line(report["scheduler"]), highlight=False)
    if report["workers"]:
        workers = Table("worker host", "pid", "state", "last heartbeat", "batches in flight")
        for worker in report["workers"]:
            workers.add_row(
                worker["host"],
                str(worker["pid"]),
                worker["state"],
                f"{worker['heartbeat_age_seconds']:.0f}s ago",
                str(worker["in_flight"]),
            )
        console.print(workers)


def _moment(iso: str | None) -> str:
    """'2026-12-01T08:00:00+03:00' → '2026-12-01 08:00+03:00' (compact, still unambiguous)."""
    if not iso:
        return "never"
    text = iso.replace("T", " ")
    return text[:16] + text[19:].replace("+00:00", "Z") if len(text) >= 19 else text


def _scheduler_line(scheduler: dict[str, Any]) -> str:
    leader = scheduler["leader"]
    if leader is None:
        text = "Scheduler: no scheduler has run yet"
    elif leader["state"] == "released":
        released = _moment(leader["released_at"])
        text = f"Scheduler: no leader now (last: {leader['holder']}, released {released})"
    else:
        age = leader["heartbeat_age_seconds"]
        text = f"Scheduler: {leader['holder']} {leader['state']}, heartbeat {age:.0f}s ago"
    text += f"; last tick {_moment(scheduler['last_tick_at'])}"
    ingest = scheduler["last_ingest"]
    if ingest:
        text += (
            f"; last ingest {_moment(ingest['started_at'])} "
            f"({ingest['outcome']}: {ingest['detail']})"
        )
    if scheduler["awaiting_approval"]:
        text += f"; {scheduler['awaiting_approval']} issue(s) awaiting approval"
    return text


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the web app: preview studio, unsubscribe pages, webhooks and the push API."""
    import uvicorn

    from digest.config import StudioAuth
    from digest.web.server import create_app

    app = get_signing_app(ctx)
    if app.settings.studio.auth == StudioAuth.NONE and not app.settings.on_loopback():
        fail(
            f'studio.auth = "none" lets anyone who reaches {app.settings.site.base_url} edit '
            'and approve issues: use "login" or "proxy" (or a loopback base_url)'
        )
    from digest.ops.logs import redact_access_log

    redact_access_log()  # no signed token or sign-in secret in the access log
    uvicorn.run(create_app(app), host=host, port=port, log_level="info")


def demo(
    ctx: typer.Context,
    preview_dir: Annotated[
        Path, typer.Option("--preview-dir", help="Where to write previews.")
    ] = Path("var/preview"),
) -> None:
    """Run the whole pipeline once on the configured (by default bundled) content."""
    from digest.ops.demo import run_demo

    app = get_app(ctx, schema=False)
    report = run_demo(app, preview_dir)
    ingest = report.ingest
    console.print(f"[bold]Ingested[/] {len(ingest.sources)} sources:")
    for source in ingest.sources:
        errors = f", [red]{len(source.errors)} error(s)[/]" if source.errors else ""
        console.print(
            f"  {source.name}: {source.fetched} items, {source.new} new, "
            f"{source.updated} updated{errors}"
        )
    if report.subscribers_imported:
        console.print(f"[bold]Imported[/] {report.subscribers_imported} sample subscribers.")
    for outcome in report.newsletters:
        headline = f"issue {outcome.issue_id}, {outcome.articles} articles, {outcome.status}"
        console.print(f"[bold]{outcome.slug}[/]: {headline}")
        if outcome.note:
            label = "skipped" if outcome.status == "skipped" else "not sent yet"
            console.print(f"  {label}: {outcome.note}", highlight=False)
        for kind, path in outcome.preview.items():
            console.print(f"  preview {kind}: {path}")
        if outcome.send is not None:
            s = outcome.send
            if s.already_done:
                console.print("  nothing left to send (already delivered)")
            else:
                console.print(
                    f"  sent: {s.accepted} accepted, {s.skipped} skipped, {s.failed} failed"
                )
    console.print(f"[bold]Outbox:[/] {report.outbox.resolve()} (one .eml per recipient)")
    console.print("Open a preview .html in a browser, or an .eml in your mail client.")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("serve")(serve)
    app.command("demo")(demo)
