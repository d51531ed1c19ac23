"""People: `digest subscribers add|import|export|list|unsubscribe|suppress|data|forget` and
`digest stats` (`subscribers consent` joins the group from `digest.cli.housekeeping`)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from digest.cli.common import console, enum_value, err_console, fail, get_app, print_json

if TYPE_CHECKING:  # the rest is imported where used: `digest --help` loads none of it
    from digest.app import App

subscribers_app = typer.Typer(
    help="Subscribers: add, import, export, list, unsubscribe, suppress, data, forget, consent.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _forget_keys(app: App) -> tuple[bytes, ...]:
    """The keys forgotten addresses are hashed with (current secret first, then retired ones)."""
    from subscribers.suppression import forget_keys

    return forget_keys(app.settings.verification_keys())


def _known(app: App, slug: str) -> str:
    """The slug of a configured newsletter; an unknown one is the option's error, not the
    config file's."""
    from digest.config import ConfigError

    try:
        return app.settings.newsletter(slug).slug
    except ConfigError as exc:
        fail(f"--newsletter: {exc.reason}")


@subscribers_app.command("add")
def add(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The address to subscribe.")],
    newsletter: Annotated[str, typer.Option("--newsletter", "-n", help="Newsletter slug.")],
    name: Annotated[str | None, typer.Option(help="The subscriber's name.")] = None,
    timezone: Annotated[str | None, typer.Option(help="Time zone, like Europe/Paris.")] = None,
    locale: Annotated[str | None, typer.Option(help="Locale, like en or tr.")] = None,
) -> None:
    """Subscribe an address (never re-subscribes someone who left or is suppressed)."""
    from subscribers.addresses import InvalidAddress, normalize_email
    from subscribers.membership import AddOutcome, add_subscriber
    from subscribers.profile import InvalidField

    app = get_app(ctx)
    slug = _known(app, newsletter)
    try:
        with app.session() as session:
            result = add_subscriber(
                session,
                email,
                slug,
                now=app.now(),
                name=name,
                locale=locale,
                timezone=timezone,
                forget_keys=_forget_keys(app),
            )
    except (InvalidAddress, InvalidField) as exc:
        fail(f"{email!r}: {exc}")
    if result.outcome is AddOutcome.SKIPPED:
        fail(f"{email} not subscribed to {slug}: {result.reason}")
    verb = "subscribed" if result.outcome is AddOutcome.CREATED else "already subscribed"
    console.print(  # the address as stored: lower-cased, one subscriber per mailbox
        f"{escape(normalize_email(email))}: {verb} to {slug} ({result.status})",
        highlight=False,
        soft_wrap=True,
    )


@subscribers_app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV with a header: email, name, newsletters, …")],
    newsletter: Annotated[
        str | None,
        typer.Option("--newsletter", "-n", help="Newsletter for rows that name none."),
    ] = None,
) -> None:
    """Import a CSV: every bad line is reported (line, field, reason) and the rest imported.

    Idempotent: importing the same file again changes nothing, and an address that unsubscribed,
    bounced, complained or is suppressed is skipped, never re-subscribed. Exits with 1 if any
    line was bad (the good lines are imported all the same).
    """
    from subscribers.csv_io import import_csv

    app = get_app(ctx)
    default = _known(app, newsletter) if newsletter else None
    known = {n.slug for n in app.settings.newsletters}
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle, app.session() as session:
            report = import_csv(
                session,
                handle,
                now=app.now(),
                default_newsletter=default,
                known_newsletters=known,
                file_name=file.name,
                forget_keys=_forget_keys(app),
            )
    except FileNotFoundError:
        fail(f"{file}: no such file")
    except UnicodeDecodeError as exc:
        fail(f"{file}: not UTF-8 text (byte {exc.start} of a read block); nothing imported")
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror}")
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if report.ignored_columns:
        columns = ", ".join(repr(c) for c in report.ignored_columns)
        console.print(
            f"{file}: ignored columns: {escape(columns)}", highlight=False, soft_wrap=True
        )
    for skipped in report.skipped:
        console.print(
            f"{file}:{escape(str(skipped)).removeprefix('line ')}", highlight=False, soft_wrap=True
        )
    for error in report.errors:
        err_console.print(
            f"{file}:{escape(str(error)).removeprefix('line ')}", highlight=False, soft_wrap=True
        )
    if report.errors:
        raise typer.Exit(1)


@subscribers_app.command("export")
def export(
    ctx: typer.Context,
    newsletter: Annotated[
        str | None, typer.Option("--newsletter", "-n", help="Only this newsletter.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File (default: stdout).")] = None,
) -> None:
    """Export mailable subscribers (active, not suppressed) as CSV that imports back."""
    from subscribers.csv_export import export_csv

    app = get_app(ctx)
    slug = _known(app, newsletter) if newsletter else None
    with app.session() as session:
        if out is None:
            count = export_csv(session, sys.stdout, newsletter=slug)
        else:
            with out.open("w", encoding="utf-8", newline="") as handle:
                count = export_csv(session, handle, newsletter=slug)
    err_console.print(f"exported {count} subscribers" + (f" to {out}" if out else ""))


@subscribers_app.command("list")
def list_(
    ctx: typer.Context,
    newsletter: Annotated[
        str | None, typer.Option("--newsletter", "-n", help="Only people on this newsletter.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0 = all).", min=0)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List subscribers with each newsletter's status and any suppression."""
    from subscribers.directory import list_subscribers

    app = get_app(ctx)
    slug = _known(app, newsletter) if newsletter else None
    with app.session() as session:
        people = list_subscribers(session, newsletter=slug, limit=limit or None)
    if as_json:
        print_json([asdict(person) for person in people])
        return
    table = Table("id", "email", "name", "newsletters", "suppressed")
    for person in people:
        table.add_row(
            str(person.id),
            escape(person.email),
            escape(person.name or ""),
            ", ".join(f"{n} ({s})" for n, s in person.subscriptions.items()),
            person.suppressed or "",
        )
    console.print(table)
    if limit and len(people) == limit:
        console.print(f"first {limit} shown; --limit 0 shows all")


@subscribers_app.command("unsubscribe")
def unsubscribe_command(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The address to unsubscribe.")],
    newsletter: Annotated[
        str | None, typer.Option("--newsletter", "-n", help="Leave this newsletter.")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Leave every newsletter (also suppresses the address).")
    ] = False,
) -> None:
    """Unsubscribe an address from one newsletter, or from all of them."""
    from subscribers.addresses import InvalidAddress
    from subscribers.membership import find_subscriber, unsubscribe, unsubscribe_all

    if (newsletter is None) == (not everything):
        fail("give exactly one of --newsletter SLUG or --all")
    app = get_app(ctx)
    try:
        with app.session() as session:
            subscriber = find_subscriber(session, email)
            if subscriber is None or subscriber.id is None:
                fail(f"{email}: no such subscriber")
            if everything:
                changed = unsubscribe_all(session, subscriber.id, now=app.now(), method="cli")
                what = "every newsletter"
            else:
                slug = _known(app, newsletter or "")
                changed = unsubscribe(session, subscriber.id, slug, now=app.now(), method="cli")
                what = slug
    except InvalidAddress as exc:
        fail(f"{email!r}: {exc}")
    state = "unsubscribed from" if changed else "was already unsubscribed from"
    console.print(f"{escape(subscriber.email)} {state} {what}", highlight=False, soft_wrap=True)


@subscribers_app.command("suppress")
def suppress_command(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The address never to mail again.")],
    reason_name: Annotated[
        str,
        typer.Option(
            "--reason",
            metavar="[unsubscribed_all|hard_bounce|complaint|manual]",
            help="Why.",
            parser=enum_value("subscribers.models:SuppressionReason"),
        ),
    ],
    detail: Annotated[str | None, typer.Option(help="A note for the record.")] = None,
) -> None:
    """Never mail an address again, whatever list it is on."""
    from subscribers.addresses import InvalidAddress
    from subscribers.models import SuppressionReason
    from subscribers.suppression import lookup_address, suppress

    reason = SuppressionReason(reason_name)
    if reason is SuppressionReason.FORGOTTEN:
        fail("--reason forgotten: use digest subscribers forget EMAIL")
    app = get_app(ctx)
    try:
        with app.session() as session:
            changed = suppress(session, email, reason, now=app.now(), source="cli", detail=detail)
    except InvalidAddress as exc:
        fail(f"{email!r}: {exc}")
    state = "suppressed" if changed else "was already suppressed"
    console.print(
        f"{escape(lookup_address(email))} {state} ({reason.value})", highlight=False, soft_wrap=True
    )


@subscribers_app.command("data")
def data_command(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The address to report on.")],
    as_json: JsonOption = False,
) -> None:
    """Everything held about an address (GDPR article 15), recorded in the consent log."""
    from digest.ops.data_rights import export_data

    app = get_app(ctx)
    with app.session() as session:
        held = export_data(session, email, keys=_forget_keys(app), now=app.now())
    if as_json:
        print_json(held)
        return
    _print_held(held)


def _print_held(held: dict[str, Any]) -> None:
    address = escape(held["address"])
    if not held["held"]:
        console.print(f"nothing is held about {address}", highlight=False, soft_wrap=True)
        return
    sections = (
        ("subscriptions", ("newsletter", "status", "source", "created_at", "unsubscribed_at")),
        ("consent_events", ("at", "action", "newsletter", "method", "ip", "detail")),
        ("deliveries", ("issue_id", "newsletter", "period", "status", "name", "error")),
        ("suppressions", ("reason", "source", "detail", "created_at")),
        ("webhook_events", ("received_at", "provider", "event", "delivery_id")),
        ("form_counters", ("key", "window_start", "count")),
    )
    person = held["subscriber"]
    if person is not None:
        profile = ", ".join(f"{k} {person[k]}" for k in ("name", "locale", "timezone") if person[k])
        console.print(
            f"{address}: subscriber #{person['id']} since {person['created_at']:%Y-%m-%d}"
            + (f" ({escape(profile)})" if profile else ""),
            highlight=False,
            soft_wrap=True,
        )
        for alias in held["aliases"]:
            console.print(f"  also #{alias['old_id']} (merged {alias['merged_at']:%Y-%m-%d})")
    if held["editor"] is not None:
        editor = held["editor"]
        console.print(
            f"{address}: studio editor ({editor['role']}), {len(editor['sessions'])} sessions",
            highlight=False,
            soft_wrap=True,
        )
    for key, columns in sections:
        if held[key]:
            table = Table(*columns, title=key.replace("_", " "))
            for row in held[key]:
                table.add_row(*(escape("" if row.get(c) is None else str(row[c])) for c in columns))
            console.print(table)


@subscribers_app.command("forget")
def forget_command(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The address to erase.")],
) -> None:
    """Erase an address everywhere (GDPR article 17), keeping only a keyed hash in the
    suppression list so it is never mailed, imported or subscribed again."""
    from digest.ops.data_rights import EditorAddress, forget

    app = get_app(ctx)
    app.settings.require_secret_key()  # a hash under the public development key is no secret
    try:
        with app.session() as session:
            report = forget(session, email, keys=_forget_keys(app), now=app.now())
    except EditorAddress as exc:
        fail(f"{exc}: a studio editor; remove the account first (digest editors remove)")
    who = f"subscriber #{report.subscriber_id}" if report.subscriber_id else "no subscriber"
    console.print(
        f"forgotten: {who}, {report.consent_events} consent events and {report.deliveries} "
        f"deliveries without the address, {report.suppressions} suppressions replaced; kept: "
        f"its keyed hash (hmac-sha256:{report.address_hash[:12]}…) in the suppression list",
        highlight=False,
        soft_wrap=True,
    )


def stats(
    ctx: typer.Context,
    newsletter: Annotated[str, typer.Argument(help="Newsletter slug.")],
    limit: Annotated[int, typer.Option(help="Issues to show one by one.", min=1)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Sent, delivered, opened, clicked, bounced, complained, unsubscribed: per issue, total."""
    from digest.ops.stats import newsletter_stats

    app = get_app(ctx)
    slug = _known(app, newsletter)
    with app.session() as session:
        report = newsletter_stats(session, slug, limit=limit)
    if as_json:
        print_json(report.as_json())
        return
    columns = ("sent", "delivered", "opened", "clicked", "bounced", "complained", "unsubscribed")
    table = Table("issue", "period", "status", *columns, title=f"{slug}: per issue")
    for issue in report.issues:
        counts = asdict(issue.counts)
        table.add_row(
            f"#{issue.issue_id}",
            issue.period[:16],
            issue.status,
            *(_cell(counts, c) for c in columns),
        )
    totals = asdict(report.totals)
    table.add_section()
    table.add_row("total", "", "", *(_cell(totals, c) for c in columns))
    console.print(table)
    people = ", ".join(f"{status} {count}" for status, count in sorted(report.subscribers.items()))
    console.print(f"subscriptions: {people or 'none'}", highlight=False, soft_wrap=True)
    for issue in report.issues:
        if issue.variants is not None:
            v = issue.variants
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(v.skipped.items()))
            console.print(
                f"#{issue.issue_id}: {v.variants} variants, readers per variant largest "
                f"{v.readers_largest}, median {v.readers_median:g}; skipped: {skipped or 'none'}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip


def _cell(counts: dict[str, Any], column: str) -> str:
    """A count, with its share of `sent` (or of delivered, for opens and clicks)."""
    value = int(counts[column])
    base = counts["delivered"] if column in ("opened", "clicked") else counts["sent"]
    if column == "sent" or not base:
        return str(value)
    return f"{value} ({100 * value / base:.1f}%)"


def register(app: typer.Typer) -> None:
    app.add_typer(subscribers_app, name="subscribers")
    app.command("stats")(stats)
