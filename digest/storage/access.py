"""Who may use the studio, and the counters that keep public forms from being abused.

Sessions and sign-in links are stored server-side by the SHA-256 of their secret (the cookie or
link holds the secret itself): a session can be revoked at once, and a copy of the table
cannot be replayed as cookies. Throttle rows are fixed-window counters keyed by what they
limit, in the database so several `digest serve` processes share them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from digest.storage.models import _ts
from subscribers.timestamps import utcnow


class EditorRole(StrEnum):
    """What an editor may do in the studio; each role can do everything of the ones before."""

    EDITOR = "editor"  # preview, pin, exclude, subject, intro, test-send to themselves
    PUBLISHER = "publisher"  # also approve, un-approve and send
    ADMIN = "admin"  # also manage editors


ROLE_RANK = {EditorRole.EDITOR: 0, EditorRole.PUBLISHER: 1, EditorRole.ADMIN: 2}


class Editor(SQLModel, table=True):
    __tablename__ = "editor"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)  # normalised, lower case
    role: str = Field(default=EditorRole.EDITOR, max_length=16)
    password_hash: str | None = Field(default=None, max_length=300)  # argon2id; None: links only
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class EditorSession(SQLModel, table=True):
    """A signed-in browser. Ends at `expires_at`, after `idle` without use, or when deleted."""

    __tablename__ = "editor_session"

    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the cookie's secret
    editor_id: int = Field(foreign_key="editor.id", ondelete="CASCADE", index=True)
    csrf: str = Field(max_length=64)  # this session's synchronizer token
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    last_seen_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=300)


class SignInLink(SQLModel, table=True):
    """A one-time sign-in link mailed to an editor: single use, short-lived."""

    __tablename__ = "sign_in_link"

    id: str = Field(primary_key=True, max_length=64)  # sha256 hex of the link's secret
    editor_id: int = Field(foreign_key="editor.id", ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=_ts())


class Throttle(SQLModel, table=True):
    """How often `key` (e.g. `subscribe:client:203.0.113.9`) was used in the current window."""

    __tablename__ = "throttle"

    key: str = Field(primary_key=True, max_length=200)
    window_start: datetime = Field(sa_column=_ts(nullable=False, index=True))
    count: int = 0
