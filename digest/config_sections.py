"""The config file's sections for sending mail (sender, delivery, the SendGrid and SMTP
transports, bounces, DKIM), for the public web (studio sign-in, forms, engagement tracking) and
for how long per-reader records are kept (retention).

Kept apart from `digest.config`, which composes them into `Settings` and loads the file; import
them from there as from here.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from digest.config_types import Duration, HeaderText, Strict, parse_duration


class SenderConfig(Strict):
    from_email: HeaderText = "newsletter@localhost"
    from_name: HeaderText = "digest"
    reply_to: HeaderText | None = None
    postal_address: str = ""
    # mailto target offered next to the https link in List-Unsubscribe (RFC 2369).
    unsubscribe_mailto: HeaderText | None = None


class TransportName(StrEnum):
    OUTBOX = "outbox"
    SMTP = "smtp"
    SENDGRID = "sendgrid"


class DeliveryConfig(Strict):
    transport: TransportName = TransportName.OUTBOX
    outbox_dir: str = "var/outbox"
    batch_size: int = Field(default=500, ge=1, le=1000)
    concurrency: int = Field(default=4, ge=1, le=64)
    rate_limit: float = Field(default=0, ge=0, description="messages per second, 0 = unlimited")
    max_retries: int = Field(default=5, ge=0, le=20)
    # Recipients frozen per transaction while sending (see digest.sending.freeze): larger is a
    # little faster, smaller holds the database's write lock for less time. On SQLite 5,000
    # cost a 1M send ~1.8 CPU-s more (the indexes' last pages logged and written four times
    # as often) and did not make it faster (bench_send.py).
    freeze_page: int = Field(default=20_000, ge=1, le=1_000_000)
    # Helper processes that sign links, build request bodies and send (digest.sending.
    # send_processes): "auto" is 2 for a topic issue of 250,000+ recipients on 2+ cores, else 0.
    send_processes: int | Literal["auto"] = Field(default="auto")

    # Before the union is tried: its members' own errors name them ("….int") and not "auto".
    @field_validator("send_processes", mode="before")
    @classmethod
    def _helpers_in_range(cls, value: object) -> object:
        return _auto_or_number(value, 0, 16)


def _auto_or_number(value: object, low: int, high: int) -> object:
    if value == "auto" or (type(value) is int and low <= value <= high):
        return value
    raise ValueError(f"must be 'auto' or a whole number from {low} to {high}, not {value!r}")


class SendGridConfig(Strict):
    api_url: str = "https://api.sendgrid.com"
    timeout: float = Field(default=30, gt=0)
    batch_size: int = Field(default=1000, ge=1, le=1000)


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"
    SSL = "ssl"
    NONE = "none"


class SmtpConfig(Strict):
    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    security: SmtpSecurity = SmtpSecurity.STARTTLS
    timeout: float = Field(default=30, gt=0)


_DOMAIN = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"


class BouncesConfig(Strict):
    """Bounces and complaints over SMTP: signed VERP return paths, the bounce mailbox."""

    # Envelope senders `bounce+<id>.<mac>@domain`; None: MAIL FROM is sender.from_email.
    domain: str | None = Field(default=None, pattern=_DOMAIN, max_length=200)
    soft_limit: int = Field(default=3, ge=1, le=100)  # soft bounces in a row, then suppressed
    # imap://user@host[:port]/FOLDER, imaps://…, or a maildir or mbox path; None: no fetch.
    mailbox: str | None = None
    every: Duration = "10m"


class DkimConfig(Strict):
    """DKIM signing of SMTP messages; the private key comes from $DIGEST_DKIM_PRIVATE_KEY."""

    selector: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,63}$")
    domain: str | None = Field(default=None, pattern=_DOMAIN)

    @model_validator(mode="after")
    def _both_or_neither(self) -> DkimConfig:
        if (self.selector is None) != (self.domain is None):
            raise ValueError("dkim: set both selector and domain, or neither")
        return self


class StudioAuth(StrEnum):
    LOGIN = "login"  # editors sign in with a password or a mailed one-time link
    PROXY = "proxy"  # an authenticating proxy (SSO) names the editor in a header
    NONE = "none"  # no sign-in: only when base_url is a loopback address


class StudioConfig(Strict):
    auth: StudioAuth = StudioAuth.LOGIN
    proxy_header: HeaderText = "X-Forwarded-Email"
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # Domains an editor may send a test to besides their own address.
    test_domains: list[str] = Field(default_factory=list)
    session_idle: Duration = "12h"
    session_max: Duration = "14d"
    sign_in_link_ttl: Duration = "15m"


class TrackingConfig(Strict):
    """Engagement tracking of the newsletters that opt in (`track_clicks`, `track_opens`)."""

    # False: counts per issue and per link only, nothing that identifies a reader. True (a
    # redirect per reader) is not implemented: refused rather than silently ignored.
    per_reader: bool = False

    @field_validator("per_reader")
    @classmethod
    def _not_per_reader(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "per-reader engagement is not supported: digest counts per issue and per link"
            )
        return value


class FormsConfig(Strict):
    # One confirmation email per address per this long, however often the form is posted.
    confirmation_cooldown: Duration = "1h"
    # Per client address (IP) per hour: subscribe posts, and studio sign-in attempts.
    subscribe_per_hour: int = Field(default=20, ge=1)
    sign_in_per_hour: int = Field(default=20, ge=1)
    # Per editor account per hour, whatever the client.
    sign_in_per_account_per_hour: int = Field(default=10, ge=1)


class RetentionConfig(Strict):
    """How long records naming a reader are kept (`digest.ops.retention`, run by `digest
    housekeeping` and daily by the scheduler). None: kept forever."""

    # Deliveries and batches of issues sent longer ago than this are deleted, once the issue's
    # counts are stored. At least a week: late bounces and provider events need their delivery.
    deliveries: Duration | None = None
    # Applied provider events (kept so a retried event counts once; SendGrid retries for up to
    # 72 hours). None: as long as deliveries.
    webhook_events: Duration | None = None

    @field_validator("deliveries")
    @classmethod
    def _a_week_at_least(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) < timedelta(days=7):
            raise ValueError(
                "at least 7d: bounces and provider events arrive days later and need their delivery"
            )
        return value

    @field_validator("webhook_events")
    @classmethod
    def _three_days_at_least(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) < timedelta(days=3):
            raise ValueError("at least 3d: providers retry an event for up to 72 hours")
        return value

    @property
    def deliveries_delta(self) -> timedelta | None:
        return parse_duration(self.deliveries) if self.deliveries else None

    @property
    def webhook_events_delta(self) -> timedelta | None:
        kept = self.webhook_events or self.deliveries
        return parse_duration(kept) if kept else None
