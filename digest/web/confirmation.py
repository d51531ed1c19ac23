"""One-off emails sent from the web: the double opt-in "confirm your subscription", and an
editor's one-time studio sign-in link, both through the configured transport.

It is a one-off message to one address, so it goes through the same transport as the issues
(`digest.transports.build_transport`) as a message without a delivery row (the outbox writes
confirmations under `<outbox>/<newsletter>/confirmations/` and sign-in links under
`<outbox>/studio/sign-in/`, apart from editors' test sends in `tests/`). It carries no
List-Unsubscribe: it is not a list mail, and nothing else is sent unless the link is followed.
"""

from __future__ import annotations

import logging
from functools import cache

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from digest import paths
from digest.app import App
from digest.config import NewsletterConfig, parse_duration
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    RetryPolicy,
    TransportError,
    build_transport,
)

log = logging.getLogger(__name__)

CONFIRMATIONS_FOLDER = "confirmations"  # the outbox folders of these one-off mails
SIGN_IN_FOLDER = "sign-in"
# Someone is waiting on the page: one quick retry, then tell them to try again later.
VISITOR_WAITING = RetryPolicy(max_attempts=2, base_delay=0.5, max_wait=2.0, give_up_after=10.0)


class ConfirmationNotSent(Exception):
    """The transport did not take the confirmation email; the visitor should try again later."""


@cache
def _mail_templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(paths.templates_dir() / "web" / "mail")),
        autoescape=select_autoescape(["html"]),  # the .txt part is plain text, not HTML
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def confirmation_message(
    app: App, confirm_url: str, newsletter: NewsletterConfig
) -> OutgoingMessage:
    context = {
        "lang": newsletter.language,
        "site_name": app.settings.site.name,
        "postal_address": app.settings.sender.postal_address,
        "newsletter": newsletter.title,
        "confirm_url": confirm_url,
    }
    env = _mail_templates()
    return OutgoingMessage(
        issue_id=None,
        newsletter=newsletter,
        subject=f"Confirm your subscription to {newsletter.title}",
        html=env.get_template("confirm.html").render(context),
        text=env.get_template("confirm.txt").render(context),
        outbox_folder=CONFIRMATIONS_FOLDER,
    )


def send_confirmation(
    app: App,
    recipient_email: str,
    confirm_url: str,
    newsletter_title: str,
    *,
    newsletter: NewsletterConfig | None = None,
    subscriber_id: int = 0,
) -> None:
    """Mail the confirmation link; raises ConfirmationNotSent if the transport refuses it."""
    if newsletter is None:
        newsletter = next(
            (n for n in app.settings.newsletters if n.title == newsletter_title), None
        ) or NewsletterConfig(slug="subscribe", title=newsletter_title, archive=False)
    message = confirmation_message(app, confirm_url, newsletter)
    recipient = OutgoingRecipient(
        delivery_id=None, subscriber_id=subscriber_id, email=recipient_email, name=None, values={}
    )
    try:
        transport = build_transport(app.settings, policy=VISITOR_WAITING)
    except TransportError as exc:
        raise ConfirmationNotSent(str(exc)) from exc
    try:
        (result,) = transport.send(OutgoingBatch(message=message, recipients=[recipient]))
    finally:
        transport.close()
    if not result.accepted:
        raise ConfirmationNotSent(f"{result.outcome}: {result.error or 'no reason given'}")


def send_sign_in_link(app: App, address: str, sign_in_url: str) -> None:
    """Mail an editor their one-time sign-in link. A failure is logged (without the link), not
    shown: the page answers the same whether or not the address belongs to an editor."""
    minutes = int(parse_duration(app.settings.studio.sign_in_link_ttl).total_seconds() // 60)
    context = {"site_name": app.settings.site.name, "sign_in_url": sign_in_url, "minutes": minutes}
    env = _mail_templates()
    studio = NewsletterConfig(
        slug="studio", title=f"{app.settings.site.name} studio", archive=False
    )
    message = OutgoingMessage(
        issue_id=None,
        newsletter=studio,
        subject=f"Sign in to the {app.settings.site.name} studio",
        html=env.get_template("sign-in.html").render(context),
        text=env.get_template("sign-in.txt").render(context),
        outbox_folder=SIGN_IN_FOLDER,
    )
    recipient = OutgoingRecipient(
        delivery_id=None, subscriber_id=0, email=address, name=None, values={}
    )
    try:
        transport = build_transport(app.settings, policy=VISITOR_WAITING)
        try:
            (result,) = transport.send(OutgoingBatch(message=message, recipients=[recipient]))
        finally:
            transport.close()
    except TransportError as exc:
        log.error("sign-in link not sent: %s", exc)
        return
    if not result.accepted:
        log.error("sign-in link not accepted: %s", result.error or result.outcome)
