"""What a subscriber would receive, for editors: the issue personalised for a sample reader."""

from __future__ import annotations

from email.message import EmailMessage

from digest import personalize
from digest.app import App
from digest.message import build_mime, recipient_values
from digest.models import Issue

SAMPLE_EMAIL = "reader@example.com"
SAMPLE_NAME = "Sample Reader"
SAMPLE_SUBSCRIBER_ID = 0  # no real subscriber: its links are valid-looking but unsubscribe no one


def sample_message(
    app: App, issue: Issue, to_email: str = SAMPLE_EMAIL
) -> tuple[EmailMessage, str, str]:
    """The complete message for a sample recipient, with its personalised HTML and text."""
    settings = app.settings
    newsletter = settings.newsletter(issue.newsletter)
    values = recipient_values(
        settings, issue.newsletter, SAMPLE_SUBSCRIBER_ID, SAMPLE_NAME, app.signing_key(), app.now()
    )
    html = personalize.fill(issue.html, values, html_escape=True)
    text = personalize.fill(issue.text, values, html_escape=False)
    message = build_mime(
        settings=settings,
        newsletter=newsletter,
        subject=issue.subject,
        html=issue.html,
        text=issue.text,
        to_email=to_email,
        to_name=SAMPLE_NAME,
        values=values,
    )
    return message, html, text
