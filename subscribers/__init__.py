"""Subscribers, lists, consent, tokens, unsubscribe and suppression.

This package never imports `digest`: it is handed a database session and plain values, so it
can be reused by any sender (and, later, by personal digests that span several newsletters).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each name is imported from its module on first use (PEP 562): importing one module of the
# package (the storage models import `subscribers.timestamps`) must not import all the others,
# e-mail validation and CSV handling included, into every `digest` start-up.
_WHERE = {
    "AddOutcome": "subscribers.membership",
    "AddResult": "subscribers.membership",
    "ConfirmOutcome": "subscribers.optin",
    "ImportReport": "subscribers.csv_lines",
    "InvalidAddress": "subscribers.addresses",
    "InvalidField": "subscribers.profile",
    "LineError": "subscribers.csv_lines",
    "PreferencesChange": "subscribers.optin",
    "Purpose": "subscribers.tokens",
    "Recipient": "subscribers.audience",
    "SkippedLine": "subscribers.csv_lines",
    "SubscribeRequest": "subscribers.optin",
    "SubscriberSummary": "subscribers.directory",
    "TokenClaims": "subscribers.tokens",
    "TokenError": "subscribers.tokens",
    "add_subscriber": "subscribers.membership",
    "audience_page": "subscribers.audience",
    "audience_timezones": "subscribers.audience",
    "blocked_among": "subscribers.audience",
    "confirm_subscription": "subscribers.optin",
    "count_audience": "subscribers.audience",
    "current_subscriber_id": "subscribers.membership",
    "export_csv": "subscribers.csv_export",
    "find_subscriber": "subscribers.membership",
    "import_csv": "subscribers.csv_io",
    "is_suppressed": "subscribers.suppression",
    "list_subscribers": "subscribers.directory",
    "mailable": "subscribers.audience",
    "make_token": "subscribers.tokens",
    "normalize_email": "subscribers.addresses",
    "request_subscription": "subscribers.optin",
    "set_preferences": "subscribers.optin",
    "subscriptions_of": "subscribers.membership",
    "suppress": "subscribers.suppression",
    "suppression_of": "subscribers.suppression",
    "unsubscribe": "subscribers.membership",
    "unsubscribe_all": "subscribers.membership",
    "verify_token": "subscribers.tokens",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'subscribers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
