"""Operations: `digest status`, `digest serve` and `digest demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from digest.cli.common import console, get_app, print_json


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Newsletters with their next run and last issue; sources with their health."""
    from digest.status import status_report

    report = status_report(get_app(ctx))
    if as_json:
        print_json(report)
        return
    table = Table("newsletter", "next run", "last issue", "state", "deliveries")
    for item in report["newsletters"]:
        last = item["last_issue"] or {}
        deliveries = ", ".join(f"{k} {v}" for k, v in sorted(last.get("deliveries", {}).items()))
        table.add_row(
            item["slug"],
            item["next_run"],
            last.get("period", "-"),
            last.get("status", "-"),
            deliveries,
        )
    console.print(table)
    sources = Table("source", "last success", "failures", "last error")
    for source in report["sources"]:
        sources.add_row(
            source["name"],
            source["last_success_at"] or "never",
            str(source["consecutive_failures"]),
            source["last_error"] or "",
        )
    console.print(sources)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the web app: preview studio, unsubscribe pages, webhooks and the push API."""
    import uvicorn

    from digest.web.app import create_app

    uvicorn.run(create_app(get_app(ctx)), host=host, port=port, log_level="info")


def demo(
    ctx: typer.Context,
    preview_dir: Annotated[
        Path, typer.Option("--preview-dir", help="Where to write previews.")
    ] = Path("var/preview"),
) -> None:
    """Run the whole pipeline once on the configured (by default bundled) content."""
    from digest.demo import run_demo

    app = get_app(ctx)
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
            console.print(f"  skipped: {outcome.note}")
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
