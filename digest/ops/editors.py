"""Editor accounts: who may use the studio, with which role, and their passwords.

Passwords are hashed with argon2id at OWASP's recommended floor (19 MiB, 2 iterations, 1 lane:
about 0.15 s on this class of machine), so a stolen table is expensive to crack and a sign-in
stays quick. Removing an editor ends every session they have.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete
from sqlmodel import Session, col, select

from digest.storage.access import ROLE_RANK, Editor, EditorRole, EditorSession, SignInLink
from subscribers.addresses import InvalidAddress, normalize_email

HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; a megabyte "password" is an attack, not a secret
# Compared against when the account does not exist, so an unknown address costs the same time.
_DUMMY_HASH = HASHER.hash("not a password of anyone's")


class EditorError(ValueError):
    """An editor command that cannot apply (bad address, weak password, unknown editor)."""


@dataclass(frozen=True)
class EditorView:
    email: str
    role: str
    has_password: bool
    created_at: datetime
    sessions: int


def add_editor(
    session: Session, email: str, role: EditorRole, *, password: str | None, now: datetime
) -> Editor:
    """Create the editor, or update the role (and password, when given) of an existing one."""
    address = _address(email)
    hashed = hash_password(password) if password is not None else None
    editor = find_editor(session, address)
    if editor is None:
        editor = Editor(email=address, role=role, password_hash=hashed, created_at=now)
    else:
        editor.role = role
        if hashed is not None:
            editor.password_hash = hashed
            _end_sessions(session, editor)  # a new password signs every browser out
    editor.updated_at = now
    session.add(editor)
    session.flush()
    return editor


def remove_editor(session: Session, email: str) -> None:
    editor = find_editor(session, _address(email))
    if editor is None:
        raise EditorError(f"no editor {email!r}")
    _end_sessions(session, editor)
    session.exec(delete(SignInLink).where(col(SignInLink.editor_id) == editor.id))  # type: ignore[call-overload]
    session.delete(editor)


def list_editors(session: Session, now: datetime) -> list[EditorView]:
    views = []
    for editor in session.exec(select(Editor).order_by(col(Editor.email))):
        live = session.exec(
            select(EditorSession).where(
                EditorSession.editor_id == editor.id, col(EditorSession.expires_at) > now
            )
        ).all()
        views.append(
            EditorView(
                editor.email, editor.role, editor.password_hash is not None, editor.created_at,
                len(live),
            )
        )  # fmt: skip
    return views


def find_editor(session: Session, email: str) -> Editor | None:
    try:
        address = normalize_email(email).lower()
    except InvalidAddress:
        return None
    return session.exec(select(Editor).where(Editor.email == address)).first()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise EditorError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise EditorError(f"the password is too long: at most {MAX_PASSWORD} characters")
    return HASHER.hash(password)


def check_password(editor: Editor | None, password: str) -> bool:
    """True if `password` is the editor's. Takes as long for an unknown or password-less editor."""
    stored = editor.password_hash if editor is not None and editor.password_hash else _DUMMY_HASH
    try:
        ok = HASHER.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False
    return ok and stored is not _DUMMY_HASH


def may(role: str, needed: EditorRole) -> bool:
    """Whether `role` includes what `needed` may do (publisher includes editor, and so on)."""
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]  # type: ignore[call-overload]


def _end_sessions(session: Session, editor: Editor) -> None:
    session.exec(delete(EditorSession).where(col(EditorSession.editor_id) == editor.id))  # type: ignore[call-overload]


def _address(email: str) -> str:
    try:
        return normalize_email(email).lower()
    except InvalidAddress as exc:
        raise EditorError(f"{email!r} is not a usable e-mail address: {exc}") from exc
