"""Subscribers, lists, consent, tokens, unsubscribe and suppression.

This package never imports `digest`: it is handed a database session and plain values, so it
can be reused by any sender (and, later, by personal digests that span several newsletters).
"""

from subscribers.addresses import InvalidAddress, normalize_email
from subscribers.audience import (
    Recipient,
    audience_page,
    audience_timezones,
    blocked_among,
    count_audience,
    mailable,
)
from subscribers.csv_export import export_csv
from subscribers.csv_io import import_csv
from subscribers.csv_lines import ImportReport, LineError, SkippedLine
from subscribers.directory import SubscriberSummary, list_subscribers
from subscribers.membership import (
    AddOutcome,
    AddResult,
    add_subscriber,
    current_subscriber_id,
    find_subscriber,
    subscriptions_of,
    unsubscribe,
    unsubscribe_all,
)
from subscribers.optin import (
    ConfirmOutcome,
    PreferencesChange,
    SubscribeRequest,
    confirm_subscription,
    request_subscription,
    set_preferences,
)
from subscribers.profile import InvalidField
from subscribers.suppression import is_suppressed, suppress, suppression_of
from subscribers.tokens import Purpose, TokenClaims, TokenError, make_token, verify_token

__all__ = [
    "AddOutcome",
    "AddResult",
    "ConfirmOutcome",
    "ImportReport",
    "InvalidAddress",
    "InvalidField",
    "LineError",
    "PreferencesChange",
    "Purpose",
    "Recipient",
    "SkippedLine",
    "SubscribeRequest",
    "SubscriberSummary",
    "TokenClaims",
    "TokenError",
    "add_subscriber",
    "audience_page",
    "audience_timezones",
    "blocked_among",
    "confirm_subscription",
    "count_audience",
    "current_subscriber_id",
    "export_csv",
    "find_subscriber",
    "import_csv",
    "is_suppressed",
    "list_subscribers",
    "mailable",
    "make_token",
    "normalize_email",
    "request_subscription",
    "set_preferences",
    "subscriptions_of",
    "suppress",
    "suppression_of",
    "unsubscribe",
    "unsubscribe_all",
    "verify_token",
]
