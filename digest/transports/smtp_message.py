"""One issue's message bytes for many recipients: serialised once, tokens filled into the bytes.

`recipient_mime(...).as_bytes()` (the email package) costs ~2.4 ms per 50 KB issue, per
recipient. `SharedMessage` serialises the issue once with its tokens left in, then builds each
recipient's bytes by substitution: the same bytes `recipient_mime` gives, byte for byte, for
the same recipient (checked in tests/integration/test_smtp_bytes.py). Where the email package
would write something else for a recipient (a line over 998 bytes once filled, so a
quoted-printable body; a non-ASCII name in a header, so an encoded word), that recipient's
message is built the slow way, by `recipient_mime` itself.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from digest.config import Settings
from digest.mail.message import ONE_CLICK, list_unsubscribe, message_id, one_line
from digest.rendering import personalize
from digest.transports import OutgoingMessage, OutgoingRecipient, recipient_mime

_TEMPLATE_EMAIL = "template@digest.invalid"
_PLAIN_BODY = (b"Content-Transfer-Encoding: 7bit", b"Content-Transfer-Encoding: 8bit")
_MAX_LINE = 998  # the policy's max_line_length in build_mime: longer lines change the encoding
# An address the email package writes as it is (dot-atom local part, plain domain).
_SIMPLE_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                           r"@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")  # fmt: skip
_SPECIALS = frozenset('()<>@,:;."[]\\')  # a display name with one of these gets quoted
# Headers that differ per recipient; the rest of the template's header block is copied.
_VARYING = (b"To", b"Subject", b"Message-ID", b"List-Unsubscribe", b"X-Digest-Delivery")


def _plain(value: str) -> bool:
    """Header text the email package writes unchanged: printable ASCII, nothing to decode."""
    return value.isascii() and value.isprintable() and "=?" not in value and len(value) < 900


_LINE_START_DOT = re.compile(rb"(?<=\n)\.")


def data_payload(message: bytes) -> bytes:
    """The DATA payload of `message`: leading dots doubled (RFC 5321 §4.5.2), ended by
    CRLF . CRLF. Most messages have no line starting with a dot: one scan, no copy but the end."""
    if message.startswith(b".") or b"\n." in message:
        message = _LINE_START_DOT.sub(b"..", b"\n" + message)[1:]
    return message + (b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n")


class SharedMessage:
    """The bytes of `message` for each recipient, the shared part built once."""

    def __init__(self, settings: Settings, message: OutgoingMessage) -> None:
        self.settings = settings
        self.message = message
        # The issue's token names where it has its own, the fixed ones otherwise.
        names = getattr(message, "tokens", None)
        self._tokens: tuple[str, ...] = tuple(names.all) if names else personalize.TOKENS
        self._unsubscribe: str = getattr(names, "unsubscribe_url", personalize.UNSUBSCRIBE_URL)
        self._token = re.compile("|".join(re.escape(t) for t in self._tokens).encode())
        self._subject_varies = any(t in message.subject for t in self._tokens)
        self._template: list[tuple[bytes, bytes]] | None = None  # header name → line
        self._pieces: list[bytes | tuple[str, bool]] = []  # body: literals and (token, html)
        self._lines: list[tuple[int, list[tuple[str, bool]]]] = []  # token lines: length, tokens
        self._ascii_only = False  # a 7bit part: a non-ASCII value would make it 8bit
        self._prepare()

    def bytes_for(self, recipient: OutgoingRecipient) -> bytes:
        """The complete message for `recipient` (raises ValueError for an unusable address)."""
        fast = self._fast(recipient) if self._template is not None else None
        if fast is not None:
            return fast
        return recipient_mime(self.settings, self.message, recipient).as_bytes()

    # -- the template ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        overridden = {name.lower() for name in self.message.headers}
        if overridden & {"to", "subject", "list-unsubscribe", "list-unsubscribe-post"}:
            return
        tokens_kept = {t: t for t in self._tokens}
        stand_in = OutgoingRecipient(0, 0, _TEMPLATE_EMAIL, None, tokens_kept)
        data = recipient_mime(self.settings, self.message, stand_in).as_bytes()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if any(line[:1] in (b" ", b"\t") for line in lines):
            return  # a folded header: not worth handling here
        template = [(line.partition(b":")[0], line) for line in lines]
        if sum(name == b"List-Unsubscribe" for name, _ in template) != 1:
            return
        encodings = re.findall(rb"Content-Transfer-Encoding: \S+", body)
        if len(encodings) != 2 or any(e not in _PLAIN_BODY for e in encodings):
            return  # quoted-printable or base64 already: substitution would not be exact
        self._ascii_only = _PLAIN_BODY[0] in encodings
        self._split_body(body, html_from=body.find(b"Content-Type: text/html"))
        self._template = template

    def _split_body(self, body: bytes, *, html_from: int) -> None:
        pieces: list[bytes | tuple[str, bool]] = [b"\r\n\r\n"]
        lines: dict[int, tuple[int, list[tuple[str, bool]]]] = {}
        at = 0
        for match in self._token.finditer(body):
            token = (match.group().decode(), match.start() > html_from)
            pieces += [body[at : match.start()], token]
            at = match.end()
            start = body.rfind(b"\r\n", 0, match.start()) + 2
            end = body.find(b"\r\n", match.end())
            length = (end if end >= 0 else len(body)) - start
            lines.setdefault(start, (length, []))[1].append(token)
        pieces.append(body[at:])
        self._pieces = pieces
        self._lines = list(lines.values())

    # -- one recipient --------------------------------------------------------------------------

    def _fast(self, recipient: OutgoingRecipient) -> bytes | None:
        values = recipient.values
        if recipient.delivery_id is None or any(t not in values for t in self._tokens):
            return None
        filled = self._filled(values)
        if filled is None:
            return None
        head = self._head(recipient, values)
        if head is None:
            return None
        out = [head]
        for piece in self._pieces:
            out.append(piece if isinstance(piece, bytes) else filled[piece])
        return b"".join(out)

    def _filled(self, values: Mapping[str, str]) -> dict[tuple[str, bool], bytes] | None:
        """Each token's bytes in the text and HTML parts, or None if the encoding would change."""
        filled: dict[tuple[str, bool], bytes] = {}
        for token in self._tokens:
            value = values[token]
            if not value.isprintable() or (self._ascii_only and not value.isascii()):
                return None
            filled[(token, False)] = value.encode()
            filled[(token, True)] = html.escape(value, quote=True).encode()
        for length, tokens in self._lines:
            if length + sum(len(filled[t]) - len(t[0]) for t in tokens) > _MAX_LINE:
                return None
        return filled

    def _head(self, recipient: OutgoingRecipient, values: Mapping[str, str]) -> bytes | None:
        assert self._template is not None
        unsubscribe = one_line(list_unsubscribe(self.settings, values[self._unsubscribe]))
        to = self._to(recipient)
        if to is None or not _plain(unsubscribe):
            return None
        out: list[bytes] = []
        for name, line in self._template:
            if name not in _VARYING:
                out.append(line)
            elif name == b"To":
                out.append(b"To: " + to)
            elif name == b"Subject":
                subject = self._subject(values)
                if subject is None:
                    return None
                out.append(subject)
            elif name == b"Message-ID":
                out.append(b"Message-ID: " + self._message_id(recipient).encode())
            elif name == b"List-Unsubscribe":
                out.append(b"List-Unsubscribe: " + unsubscribe.encode())
                if values[self._unsubscribe].startswith("https://"):
                    out.append(b"List-Unsubscribe-Post: " + ONE_CLICK.encode())
            else:
                out.append(b"X-Digest-Delivery: " + str(recipient.delivery_id).encode())
        return b"\r\n".join(out)

    def _message_id(self, recipient: OutgoingRecipient) -> str:
        """The delivery's stored Message-ID where it has one, else as `recipient_mime` makes it."""
        stored: str | None = getattr(recipient, "message_id", None)
        return stored or message_id(
            self.settings, issue_id=self.message.issue_id, delivery_id=recipient.delivery_id
        )

    def _to(self, recipient: OutgoingRecipient) -> bytes | None:
        address = recipient.email.strip()
        name = one_line(recipient.name or "")
        if not _SIMPLE_EMAIL.fullmatch(address) or not _plain(name):
            return None
        if not _SPECIALS.isdisjoint(name):
            return None
        return f"{name} <{address}>".encode() if name else address.encode()

    def _subject(self, values: Mapping[str, str]) -> bytes | None:
        if not self._subject_varies:
            assert self._template is not None
            return next(line for name, line in self._template if name == b"Subject")
        subject = one_line(personalize.fill(self.message.subject, values, html_escape=False))
        return b"Subject: " + subject.encode() if _plain(subject) else None
