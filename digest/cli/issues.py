"""`digest issue …` and `digest preview`: build, inspect and edit issues before they go out."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from digest.cli.common import console, fail, get_app, print_json

if TYPE_CHECKING:  # the rest is imported where used: `digest --help` loads none of it
    from digest.app import App
    from digest.storage.models import Issue

issue_app = typer.Typer(help="Build, inspect and edit issues.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
IssueOpt = Annotated[
    int | None, typer.Option("--issue", help="Issue id (default: the newsletter's next issue).")
]


def _known(app: App, slug: str) -> None:
    """Fail with the list of known newsletters when `slug` is not one of them."""
    from digest.config import ConfigError

    try:
        app.settings.newsletter(slug)
    except ConfigError as exc:
        fail(exc.reason)


def _target(app: App, slug: str, issue_id: int | None) -> Issue:
    from digest.issues import timeline
    from digest.storage.models import Issue

    _known(app, slug)
    if issue_id is None:
        return timeline.next_issue(app, slug)
    with app.session() as session:
        issue = session.get(Issue, issue_id)
    if issue is None or issue.newsletter != slug:
        fail(f"no issue {issue_id} for newsletter {slug!r}")
    return issue


def issue_summary(app: App, issue: Issue) -> dict[str, Any]:
    from digest.issues import assemble

    with app.session() as session:
        rows = assemble.issue_articles(session, issue.id or 0)
        articles = [
            {
                "id": article.id,
                "title": article.title,
                "url": article.url,
                "section": link.section,
                "pinned": link.pinned,
                "excluded": link.excluded,
                "published_at": article.published_at.isoformat(),
            }
            for link, article in rows
        ]
    return {
        "id": issue.id,
        "newsletter": issue.newsletter,
        "period": issue.period,
        "status": issue.status,
        "subject": issue.subject,
        "skip_reason": issue.skip_reason,
        "html_bytes": issue.html_bytes,
        "template_version": issue.template_version,
        "lint": issue.lint,
        "articles": articles,
    }


def _show(app: App, issue: Issue, as_json: bool) -> None:
    from rich.table import Table

    summary = issue_summary(app, issue)
    if as_json:
        print_json(summary)
        return
    console.print(
        f"[bold]{issue.newsletter}[/] issue {issue.id} for {issue.period}: "
        f"[cyan]{issue.status}[/]" + (f" ({issue.skip_reason})" if issue.skip_reason else "")
    )
    console.print(f"Subject: {issue.subject}")
    console.print(f"HTML size: {issue.html_bytes / 1024:.1f} KB")
    table = Table("#", "id", "section", "title", "flags")
    for index, item in enumerate(summary["articles"], 1):
        flags = ("pinned " if item["pinned"] else "") + ("excluded" if item["excluded"] else "")
        table.add_row(str(index), str(item["id"]), item["section"], item["title"], flags.strip())
    console.print(table)
    for finding in issue.lint:
        console.print(f"[yellow]{finding['level']}[/] {finding['code']}: {finding['message']}")


@issue_app.command("build")
def build(ctx: typer.Context, slug: str, as_json: JsonFlag = False) -> None:
    """Build (or refresh) the current period's issue of a newsletter."""
    from digest.issues import assemble

    app = get_app(ctx)
    _show(app, assemble.build_issue(app, slug), as_json)


@issue_app.command("show")
def show(
    ctx: typer.Context, slug: str, issue_id: IssueOpt = None, as_json: JsonFlag = False
) -> None:
    """Show an issue: status, subject, articles and lint findings."""
    app = get_app(ctx)
    _show(app, _target(app, slug, issue_id), as_json)


def _edit(ctx: typer.Context, slug: str, issue_id: int | None, action: Any, *args: Any) -> None:
    from digest.issues.assemble import AssemblyError

    app = get_app(ctx)
    issue = _target(app, slug, issue_id)
    try:
        updated = action(app, issue.id, *args)
    except AssemblyError as exc:
        fail(str(exc))
    _show(app, updated, as_json=False)


@issue_app.command("pin")
def pin(
    ctx: typer.Context,
    slug: str,
    article_id: int,
    issue_id: IssueOpt = None,
    unpin: Annotated[bool, typer.Option("--unpin", help="Remove the pin.")] = False,
) -> None:
    """Pin an article to the top of the next issue (adding it if needed)."""
    from digest.issues import editorial

    _edit(
        ctx,
        slug,
        issue_id,
        lambda a, i, aid: editorial.pin(a, i, aid, pinned=not unpin),
        article_id,
    )


@issue_app.command("exclude")
def exclude(
    ctx: typer.Context,
    slug: str,
    article_id: int,
    issue_id: IssueOpt = None,
    restore: Annotated[bool, typer.Option("--restore", help="Put it back.")] = False,
) -> None:
    """Drop an article from the next issue."""
    from digest.issues import editorial

    _edit(
        ctx,
        slug,
        issue_id,
        lambda a, i, aid: editorial.exclude(a, i, aid, excluded=not restore),
        article_id,
    )


@issue_app.command("reorder")
def reorder(
    ctx: typer.Context, slug: str, article_ids: list[int], issue_id: IssueOpt = None
) -> None:
    """Put these articles first, in this order."""
    from digest.issues import editorial

    _edit(ctx, slug, issue_id, editorial.reorder, article_ids)


@issue_app.command("subject")
def subject(ctx: typer.Context, slug: str, text: str, issue_id: IssueOpt = None) -> None:
    """Set the subject line ('' returns to the subject template)."""
    from digest.issues import editorial

    _edit(ctx, slug, issue_id, editorial.set_subject, text)


@issue_app.command("intro")
def intro(ctx: typer.Context, slug: str, text: str, issue_id: IssueOpt = None) -> None:
    """Set the editor's introduction shown above the articles."""
    from digest.issues import editorial

    _edit(ctx, slug, issue_id, editorial.set_intro, text)


ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who decides (recorded); default cli:<login name>.")
]


def _by(by: str | None) -> str:
    import getpass

    return by or f"cli:{getpass.getuser()}"


@issue_app.command("approve")
def approve(ctx: typer.Context, slug: str, issue_id: IssueOpt = None, by: ByOpt = None) -> None:
    """Approve the next issue for sending (needed when the newsletter requires approval)."""
    from digest.issues import editorial

    _edit(ctx, slug, issue_id, lambda app, i: editorial.approve(app, i, by=_by(by)))


@issue_app.command("unapprove")
def unapprove(ctx: typer.Context, slug: str, issue_id: IssueOpt = None, by: ByOpt = None) -> None:
    """Send an approved issue back to draft to fix it (approve it again afterwards)."""
    from digest.issues import editorial

    _edit(ctx, slug, issue_id, lambda app, i: editorial.unapprove(app, i, by=_by(by)))


@issue_app.command("list")
def list_issues(
    ctx: typer.Context,
    slug: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many issues.")] = 50,
) -> None:
    """The newsletter's issues, newest first: status, period, what became of it, and counts."""
    from rich.table import Table

    from digest.ops.history import issue_history

    app = get_app(ctx)
    _known(app, slug)
    newsletter = app.settings.newsletter(slug)
    with app.session() as session:
        rows = issue_history(session, app.settings, newsletter, app.now(), limit=limit)
    if as_json:
        print_json([row.as_json() for row in rows])
        return
    table = Table("issue", "period", "outcome", "recipients", "sent", "delivered", "bounced",
                  "unsubscribed", "subject")  # fmt: skip
    for row in rows:
        outcome = row.outcome + (f": {row.reason}" if row.reason else "")
        c = row.counts
        table.add_row(
            f"#{row.issue_id}", row.period, outcome, str(c.recipients), str(c.sent),
            str(c.delivered), str(c.bounced), str(c.unsubscribed), row.subject,
        )  # fmt: skip
    console.print(table)


def preview(
    ctx: typer.Context,
    slug: str,
    out: Annotated[Path, typer.Option("--out", help="Directory to write the files into.")] = Path(
        "var/preview"
    ),
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the HTML in a browser.")
    ] = False,
    reader: Annotated[
        str | None,
        typer.Option("--as", help="Personal newsletters: the email this subscriber gets."),
    ] = None,
) -> None:
    """Write the next issue as HTML, text and a complete .eml, exactly as subscribers get it."""
    from digest.mail.preview import NoEmail, write_preview

    app = get_app(ctx)
    _known(app, slug)
    if reader is not None and not app.settings.newsletter(slug).personal:
        fail(f"--as: {slug} is a topic newsletter: every subscriber gets the same email")
    try:
        files = write_preview(app, slug, out, reader=reader)
    except NoEmail as exc:
        fail(str(exc))
    for kind, path in files.items():
        console.print(f"{kind:>5}: {path}")
    if open_browser:
        webbrowser.open(files["html"].resolve().as_uri())


def register(app: typer.Typer) -> None:
    app.add_typer(issue_app, name="issue")
    app.command("preview")(preview)
