"""Configuration: one TOML file validated by pydantic, secrets from the environment.

The file is chosen by `--config PATH`, else `$DIGEST_CONFIG`, else `config/digest.toml` in the
current directory, else the bundled default. Secrets never live in the file: the database URL,
the signing key and the SendGrid key come from `DIGEST_DATABASE_URL`, `DIGEST_SECRET_KEY` and
`SENDGRID_API_KEY` (the first may also be set in the file, for the embedded SQLite default).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from digest import paths
from digest.config_sections import (  # noqa: F401 - re-exported
    BouncesConfig,
    DeliveryConfig,
    DkimConfig,
    FormsConfig,
    RetentionConfig,
    SenderConfig,
    SendGridConfig,
    SmtpConfig,
    SmtpSecurity,
    StudioAuth,
    StudioConfig,
    TrackingConfig,
    TransportName,
)
from digest.config_types import Duration, HeaderText, Strict, TimeZoneName, parse_duration

# A development-only key: used when DIGEST_SECRET_KEY is unset and the site is local, so that
# `make demo` works on a fresh machine. `Settings.require_secret_key()` refuses it elsewhere.
DEV_SECRET_KEY = "digest-dev-insecure-key-change-me"  # noqa: S105 - documented dev default

ENV_CONFIG = "DIGEST_CONFIG"
ENV_DATABASE_URL = "DIGEST_DATABASE_URL"
ENV_SECRET_KEY = "DIGEST_SECRET_KEY"  # noqa: S105 - a variable name, not a secret
ENV_SECRET_KEYS_OLD = "DIGEST_OLD_SECRET_KEYS"  # noqa: S105 - a variable name, not a secret
ENV_SENDGRID_KEY = "SENDGRID_API_KEY"
ENV_API_TOKEN = "DIGEST_API_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_SENDGRID_WEBHOOK_KEY = "SENDGRID_WEBHOOK_PUBLIC_KEY"
ENV_SMTP_PASSWORD = "DIGEST_SMTP_PASSWORD"  # noqa: S105 - a variable name, not a secret
ENV_DKIM_PRIVATE_KEY = "DIGEST_DKIM_PRIVATE_KEY"
ENV_BOUNCES_PASSWORD = "DIGEST_BOUNCES_PASSWORD"  # noqa: S105 - a variable name, not a secret


class ConfigError(Exception):
    """A configuration problem, naming the file, the key and what is wrong."""

    def __init__(self, file: Path | str, key: str, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.file}: {key}: {reason}" if key else f"{self.file}: {reason}")


_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class DatabaseConfig(Strict):
    url: str = "sqlite:///var/digest.db"


class SiteConfig(Strict):
    name: str = "digest"
    base_url: str = "http://127.0.0.1:8000"
    timezone: TimeZoneName = "UTC"
    locale: str = "en"
    # Host names `digest serve` answers besides base_url's (another name behind the same proxy).
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an absolute http(s) URL such as https://news.example.com")
        return value.rstrip("/")


class SourceKind(StrEnum):
    RSS = "rss"
    JSON = "json"
    CSV = "csv"


class SourceConfig(Strict):
    name: str = Field(min_length=1)
    kind: SourceKind = SourceKind.RSS
    url: str = Field(min_length=1, description="http(s) URL or a file path")
    # What readers see (by-lines, section titles); None: the feed's own title, else site.name.
    title: str | None = Field(default=None, min_length=1, max_length=200)


class IngestConfig(Strict):
    """How `digest ingest` fetches and stores sources (digest/fetch.py, digest/ingest.py)."""

    concurrency: int = Field(default=8, ge=1, le=64, description="sources fetched at once")
    timeout: float = Field(default=20, gt=0, description="seconds to connect, or between bytes")
    total_timeout: float = Field(default=60, gt=0, description="seconds for one whole fetch")
    max_bytes: int = Field(default=10_000_000, ge=1024, description="response size limit")
    max_redirects: int = Field(default=5, ge=0, le=20)
    user_agent: HeaderText = Field(default="", description="empty: digest/<version> (+base_url)")
    dedupe_window: Duration = Field(default="3d", description="same-title re-publish window")
    parse_workers: int = Field(
        default=0, ge=0, le=64, description="0: one process per CPU for big runs; 1: in-process"
    )


class NewsletterKind(StrEnum):
    TOPIC = "topic"
    PERSONAL = "personal"


class TopicRules(Strict):
    tags: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    exclude_keywords: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list, description="only articles of these sources")


class NewsletterConfig(Strict):
    slug: str
    title: str
    description: str = ""
    schedule: str = "0 8 * * *"
    timezone: TimeZoneName | None = None
    window: Duration = "7d"
    min_articles: int = Field(default=1, ge=0)
    max_articles: int = Field(default=20, ge=1, le=200)
    template: str = "digest"
    language: str = "en"
    requires_approval: bool = False
    # The public subscribe form mails a confirmation link first (double opt-in).
    double_opt_in: bool = True
    # Overrides `[scheduler] approval_deadline` for this newsletter.
    approval_deadline: Duration | None = None
    # Send at the scheduled local time in each subscriber's own time zone (theirs if set).
    send_in_subscriber_timezone: bool = False
    section_by: str = Field(default="source", description="'source' or 'tag'")
    # Sent issues get a public page (/archive/SLUG/…), a feed and a "view in browser" link.
    archive: bool = True
    # Opt-in engagement (#16): links through digest's signed redirect, an open pixel; with the
    # sendgrid transport, SendGrid's own click and open tracking instead.
    track_clicks: bool = False
    track_opens: bool = False
    topic: TopicRules = Field(default_factory=TopicRules)
    # "topic": the articles matching `topic`, the same email for every subscriber. "personal":
    # no topic of its own; each subscriber gets one email merging the topic newsletters they
    # follow (`digest.issues.personal`).
    kind: NewsletterKind = NewsletterKind.TOPIC
    # Personal only: the topic newsletters it merges (default: every topic newsletter), in the
    # order its sections come in.
    topics: list[str] | None = None
    # Personal only: its subscribers do not also get the separate emails of the topics it merges.
    replaces_topic_emails: bool = True
    # Personal only: an article a reader received from this site within this long is not sent
    # to them again, whichever newsletter it came in.
    memory: Duration = "30d"

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError(
                "must be lower-case letters, digits and dashes, like 'turkey-unpacked'"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from digest.cron import validate_crontab

        validate_crontab(value)
        return value

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]+$", value):
            raise ValueError("must be a template name like 'digest' (no path)")
        return value

    @property
    def window_delta(self) -> timedelta:
        return parse_duration(self.window)

    @property
    def personal(self) -> bool:
        return self.kind == NewsletterKind.PERSONAL

    @property
    def memory_delta(self) -> timedelta:
        return parse_duration(self.memory)

    @model_validator(mode="before")
    @classmethod
    def _personal_defaults(cls, data: Any) -> Any:
        """A personal issue differs per reader: it has no public archive page."""
        if isinstance(data, dict) and data.get("kind") == NewsletterKind.PERSONAL:
            if data.get("archive"):
                raise ValueError(
                    f"newsletters ({data.get('slug')}).archive: a personal newsletter differs "
                    "per reader and has no public archive"
                )
            data = {**data, "archive": False}
        return data

    @model_validator(mode="after")
    def _kind_rules(self) -> NewsletterConfig:
        if self.personal:
            if self.topic.tags or self.topic.keywords or self.topic.sources:
                raise ValueError(
                    f"newsletters ({self.slug}).topic: a personal newsletter has no topic of its "
                    "own; it merges the topic newsletters each subscriber follows (`topics`)"
                )
            if self.track_clicks or self.track_opens:
                raise ValueError(
                    f"newsletters ({self.slug}).track_clicks/track_opens: engagement tracking "
                    "is not available for personal newsletters yet"
                )
        elif self.topics is not None:
            raise ValueError(
                f'newsletters ({self.slug}).topics: only a newsletter of kind = "personal" '
                "merges topics"
            )
        return self


class ApiConfig(Strict):
    """The push API used by a CMS; the bearer token comes from $DIGEST_API_TOKEN."""

    enabled: bool = True


class SchedulerConfig(Strict):
    """`digest scheduler` and `digest run-due`: how often, how late, and who leads."""

    ingest_every: Duration = "15m"
    tick_every: Duration = Field(default="1m", description="approvals, resumes, local times")
    catch_up_grace: Duration = "6h"
    approval_deadline: Duration | None = None
    heartbeat_every: Duration = "10s"
    standby_retry: Duration = "10s"
    lock_file: str | None = Field(default=None, description="SQLite only; default: next to the DB")


class LogFormat(StrEnum):
    HUMAN = "human"
    JSON = "json"


class LoggingConfig(Strict):
    format: LogFormat = LogFormat.HUMAN
    level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|error)$")


class Settings(Strict):
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    site: SiteConfig = Field(default_factory=SiteConfig)
    sender: SenderConfig = Field(default_factory=SenderConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    sendgrid: SendGridConfig = Field(default_factory=SendGridConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    bounces: BouncesConfig = Field(default_factory=BouncesConfig)
    dkim: DkimConfig = Field(default_factory=DkimConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    studio: StudioConfig = Field(default_factory=StudioConfig)
    forms: FormsConfig = Field(default_factory=FormsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    newsletters: list[NewsletterConfig] = Field(default_factory=list)

    # Filled from the environment by `load_settings`, never from the file.
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    old_secret_keys: tuple[SecretStr, ...] = ()
    sendgrid_api_key: SecretStr | None = None
    api_token: SecretStr | None = None
    sendgrid_webhook_public_key: str | None = None
    dkim_private_key: SecretStr | None = None  # PEM
    bounces_password: SecretStr | None = None  # the IMAP bounce mailbox's password
    source_file: str = "<defaults>"

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        _require_unique([n.slug for n in self.newsletters], "newsletters", "slug")
        _require_unique([s.name for s in self.sources], "sources", "name")
        topics = {n.slug for n in self.newsletters if not n.personal}
        for n in self.newsletters:
            unknown = [t for t in n.topics or [] if t not in topics]
            if unknown:
                raise ValueError(
                    f"newsletters ({n.slug}).topics: {', '.join(map(repr, unknown))} is not a "
                    f"topic newsletter (topic newsletters: {', '.join(sorted(topics)) or 'none'})"
                )
        kept = self.retention.deliveries_delta
        for n in self.newsletters:
            if kept is not None and n.personal and kept < n.memory_delta:
                raise ValueError(  # "never repeat" reads deliveries sent within the memory
                    f"retention.deliveries ({self.retention.deliveries}) is shorter than "
                    f"newsletters ({n.slug}).memory ({n.memory}): deliveries are what a personal "
                    "newsletter remembers, so keep them at least as long as its memory"
                )
        return self

    def merged_topics(self, newsletter: NewsletterConfig) -> list[NewsletterConfig]:
        """The topic newsletters a personal newsletter merges, in its sections' order."""
        if not newsletter.personal:
            return []
        topics = [n for n in self.newsletters if not n.personal]
        if newsletter.topics is None:
            return topics
        by_slug = {n.slug: n for n in topics}
        return [by_slug[slug] for slug in newsletter.topics]

    def replaced_by(self, slug: str) -> list[str]:
        """The personal newsletters whose subscribers do not get `slug`'s own emails."""
        return [
            n.slug
            for n in self.newsletters
            if n.personal
            and n.replaces_topic_emails
            and slug in {t.slug for t in self.merged_topics(n)}
        ]

    def newsletter(self, slug: str) -> NewsletterConfig:
        for newsletter in self.newsletters:
            if newsletter.slug == slug:
                return newsletter
        known = ", ".join(n.slug for n in self.newsletters) or "none configured"
        raise ConfigError(self.source_file, "newsletters", f"no newsletter {slug!r} ({known})")

    def newsletter_timezone(self, newsletter: NewsletterConfig) -> ZoneInfo:
        return ZoneInfo(newsletter.timezone or self.site.timezone)

    def on_loopback(self) -> bool:
        """True when `site.base_url` is this machine only (127.0.0.0/8, ::1, localhost)."""
        return is_loopback_host(urlsplit(self.site.base_url).hostname or "")

    def has_dev_key(self) -> bool:
        """True when links would be signed with the key printed in our source (or none)."""
        secret = self.secret_key.get_secret_value()
        return not secret or secret == DEV_SECRET_KEY

    def require_secret_key(self) -> None:
        """Refuse to run with the development key anywhere but on this machine."""
        if self.has_dev_key() and not self.on_loopback():
            raise ConfigError(
                self.source_file,
                "site.base_url",
                f"{ENV_SECRET_KEY} is not set: links for {self.site.base_url} would be signed "
                f"with the public development key (set {ENV_SECRET_KEY}, e.g. "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )

    def verification_keys(self) -> list[bytes]:
        """The current signing key first, then retired keys that still verify."""
        keys = [self.secret_key, *self.old_secret_keys]
        return [k.get_secret_value().encode() for k in keys]


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_unique(values: list[str], section: str, key: str) -> None:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{section}[{index}].{key}: duplicate value {value!r}")
        seen.add(value)


def find_config_file(explicit: str | Path | None = None) -> Path:
    """--config, then $DIGEST_CONFIG, then ./config/digest.toml, then the bundled default."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    local = Path("config/digest.toml")
    if local.is_file():
        return local
    return paths.default_config_file()


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read, validate and complete the configuration; raise ConfigError naming file and key."""
    env = dict(os.environ if env is None else env)
    file = find_config_file(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(file, "", "file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {exc}") from exc
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(file, "", "not valid TOML: arrays or tables nested too deeply") from None
    try:
        return settings_from_mapping(raw, file=file, env=env)
    except RecursionError:
        raise ConfigError(file, "", "arrays or tables nested too deeply") from None


def settings_from_mapping(
    raw: dict[str, Any], *, file: Path | str = "<memory>", env: dict[str, str] | None = None
) -> Settings:
    env = {} if env is None else env
    data = dict(raw)
    for forbidden in (
        "secret_key", "sendgrid_api_key", "api_token", "old_secret_keys", "dkim_private_key",
        "bounces_password",
    ):  # fmt: skip
        if forbidden in data:
            raise ConfigError(file, forbidden, "secrets come from the environment, not the file")
    if env.get(ENV_DATABASE_URL):
        data["database"] = {**data.get("database", {}), "url": env[ENV_DATABASE_URL]}
    if env.get(ENV_SECRET_KEY):
        data["secret_key"] = env[ENV_SECRET_KEY]
    if env.get(ENV_SECRET_KEYS_OLD):
        data["old_secret_keys"] = tuple(
            k.strip() for k in env[ENV_SECRET_KEYS_OLD].split(",") if k.strip()
        )
    if env.get(ENV_SENDGRID_KEY):
        data["sendgrid_api_key"] = env[ENV_SENDGRID_KEY]
    if env.get(ENV_API_TOKEN):
        data["api_token"] = env[ENV_API_TOKEN]
    if env.get(ENV_SENDGRID_WEBHOOK_KEY):
        data["sendgrid_webhook_public_key"] = env[ENV_SENDGRID_WEBHOOK_KEY]
    if env.get(ENV_SMTP_PASSWORD):
        data["smtp"] = {**data.get("smtp", {}), "password": env[ENV_SMTP_PASSWORD]}
    if env.get(ENV_DKIM_PRIVATE_KEY):
        # An environment file (systemd's EnvironmentFile) holds one line: a PEM key written
        # there with `\n` for its line breaks is read back with real ones.
        data["dkim_private_key"] = env[ENV_DKIM_PRIVATE_KEY].replace("\\n", "\n")
    if env.get(ENV_BOUNCES_PASSWORD):
        data["bounces_password"] = env[ENV_BOUNCES_PASSWORD]
    data["source_file"] = str(file)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = _dotted(raw, error["loc"])
        raise ConfigError(file, key, _reason(error)) from exc
    except ValueError as exc:  # raised by model validators with their own key in the text
        raise ConfigError(file, "", str(exc)) from exc


def _dotted(raw: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    """('newsletters', 0, 'schedule') → 'newsletters[0].schedule' (slug added when known)."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            try:
                node = node[item]
                name = node.get("slug") or node.get("name") if isinstance(node, dict) else None
                if name:
                    label = f"[{item}] ({name})"
            except (IndexError, KeyError, TypeError):
                node = None
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _reason(error: Any) -> str:
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see the configuration reference in README.md)"
    if error["type"] == "missing":
        return "required key is missing"
    return message
