"""The bounce mailbox: a maildir, an mbox file or an IMAP folder, read and tidied.

`bounces.mailbox` is `imap://user@host[:port]/FOLDER` or `imaps://…` (the password from
$DIGEST_BOUNCES_PASSWORD), else a path: a directory with `cur/`, `new/` and `tmp/` is a
maildir, a file an mbox. Messages already seen are skipped. After a message is applied:

- processed (applied or a duplicate): moved to the `Processed` folder (maildir `.Processed`,
  by one rename; an mbox `<file>.processed` beside it and IMAP folder `Processed`, where the
  copy is written before the original is removed, so a crash between the two leaves a
  duplicate, never a loss; a duplicate is recognised by its hash and changes nothing);
- not processed (not a bounce, or a forged one): left where it is and flagged seen, for a
  person to read.

IMAP (imap-tools): messages are fetched with `mark_seen=False` (the library's default would
set \\Seen on fetch, by `BODY[]`) and only unseen ones. Nothing is ever deleted with a plain
EXPUNGE, which would remove every `\\Deleted` message in the folder, not only ours: a server
with MOVE moves; one without gets a copy and the originals flagged `\\Deleted`, left for the
mailbox's own expunge.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

PROCESSED = "Processed"


class BounceMailbox(Protocol):
    def unseen(self) -> Iterator[tuple[str, bytes]]:
        """(key, raw message) of each message not yet seen."""
        ...

    def processed(self, key: str) -> None: ...

    def leave(self, key: str) -> None: ...

    def close(self) -> None: ...


class MailboxError(Exception):
    """The mailbox cannot be opened or read."""


def open_mailbox(spec: str, *, password: str | None = None) -> BounceMailbox:
    if spec.startswith(("imap://", "imaps://")):
        return ImapBox.from_url(spec, password=password)
    path = Path(spec)
    if path.is_dir():
        if not (path / "cur").is_dir() or not (path / "new").is_dir():
            raise MailboxError(f"{path}: a directory without cur/ and new/ is not a maildir")
        return MaildirBox(path)
    if path.is_file():
        return MboxBox(path)
    raise MailboxError(f"{spec}: no such maildir, mbox file or IMAP URL")


class MaildirBox:
    """A maildir read through its layout (`new/`, `cur/` with `:2,FLAGS` names): a message is
    moved or flagged by one rename, atomic within the maildir, so nothing is copied and a crash
    leaves every message in exactly one place."""

    def __init__(self, path: Path) -> None:
        self.root = path
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise MailboxError(f"{path}: not a maildir (it needs cur/, new/ and tmp/)")

    def unseen(self) -> Iterator[tuple[str, bytes]]:
        for sub in ("new", "cur"):
            for entry in sorted((self.root / sub).iterdir()):
                if entry.name.startswith(".") or "S" in _flags(entry.name):
                    continue
                try:
                    raw = entry.read_bytes()
                except FileNotFoundError:  # taken away meanwhile
                    continue
                yield f"{sub}/{entry.name}", raw

    def processed(self, key: str) -> None:
        folder = self.root / f".{PROCESSED}"
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        self._move(key, folder / "cur")

    def leave(self, key: str) -> None:
        self._move(key, self.root / "cur")

    def _move(self, key: str, target: Path) -> None:
        source = self.root / key
        unique = source.name.split(":", 1)[0]
        flags = "".join(sorted(set(_flags(source.name)) | {"S"}))
        source.rename(target / f"{unique}:2,{flags}")

    def close(self) -> None:
        pass


def _flags(name: str) -> str:
    """The flags of a maildir file name (`…:2,FS` → `FS`)."""
    _, sep, info = name.partition(":2,")
    return info if sep else ""


class MboxBox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.box = mailbox.mbox(path, create=False)
        self.box.lock()
        self._done: mailbox.mbox | None = None
        # mbox keys are ints at run time (typeshed says str); the protocol hands out str.
        self._keys: dict[str, Any] = {}

    def unseen(self) -> Iterator[tuple[str, bytes]]:
        for key in list(self.box.keys()):
            message = self.box.get_message(key)
            if "R" in message.get_flags():
                continue
            self._keys[str(key)] = key
            yield str(key), message.as_bytes()

    def processed(self, key: str) -> None:
        if self._done is None:
            self._done = mailbox.mbox(self.path.with_name(self.path.name + ".processed"))
            self._done.lock()
        message = self.box.get_message(self._keys[key])
        message.add_flag("RO")
        self._done.add(message)
        self._done.flush()  # the copy is on disk before the original goes (at close)
        self.box.discard(self._keys[key])

    def leave(self, key: str) -> None:
        message = self.box.get_message(self._keys[key])
        message.add_flag("RO")
        self.box[self._keys[key]] = message

    def close(self) -> None:
        try:
            self.box.flush()
        finally:
            self.box.unlock()
            self.box.close()
            if self._done is not None:
                self._done.unlock()
                self._done.close()


@dataclass
class ImapBox:
    client: Any  # imap_tools.MailBox, logged in

    @classmethod
    def from_url(cls, url: str, *, password: str | None) -> ImapBox:
        from imap_tools import MailBox, MailBoxUnencrypted

        parts = urlsplit(url)
        if not parts.hostname or not parts.username:
            raise MailboxError(f"{url}: an IMAP URL names a user and a host")
        secure = parts.scheme == "imaps"
        port = parts.port or (993 if secure else 143)
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        secret = password if password is not None else unquote(parts.password or "")
        box = MailBox(parts.hostname, port) if secure else MailBoxUnencrypted(parts.hostname, port)
        try:
            box.login(unquote(parts.username), secret, initial_folder=folder)
        except Exception as exc:
            raise MailboxError(f"IMAP {parts.hostname}: {exc}") from exc
        return cls(box)

    def unseen(self) -> Iterator[tuple[str, bytes]]:
        from imap_tools import AND

        for message in self.client.fetch(AND(seen=False), mark_seen=False, bulk=50):
            if message.uid:
                yield message.uid, message.obj.as_bytes()

    def processed(self, key: str) -> None:
        from imap_tools import MailMessageFlags

        client = self.client
        if not client.folder.exists(PROCESSED):
            client.folder.create(PROCESSED)
        client.flag(key, MailMessageFlags.SEEN, True)
        if "MOVE" in client.client.capabilities:
            client.move(key, PROCESSED)
        else:  # no MOVE: never imap-tools' copy + delete, whose EXPUNGE takes every \Deleted
            client.copy(key, PROCESSED)
            client.flag(key, MailMessageFlags.DELETED, True)

    def leave(self, key: str) -> None:
        from imap_tools import MailMessageFlags

        self.client.flag(key, MailMessageFlags.SEEN, True)

    def close(self) -> None:
        self.client.logout()
