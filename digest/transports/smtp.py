"""SMTP: a pool of reused connections, one message per recipient, pipelined where offered.

The issue is serialised once and each recipient's tokens are filled into the bytes
(`smtp_message.SharedMessage`). With PIPELINING (RFC 2920) MAIL, RCPT and DATA go in one write
and their replies are read in order, then the body: two round trips a message instead of four;
with CHUNKING too (RFC 3030), MAIL, RCPT and `BDAT n LAST` with the message go in one: one.
A failure is placed exactly: refused before DATA means not sent (a 4xx is retried after a
pause, a 5xx fails that recipient only); a connection lost before the body went is reconnected
and retried; a connection lost *during* the body may have delivered the message, so it is
reported unknown. smtplib still connects, says EHLO, STARTTLS and AUTH.

With `bounces.domain` set, each message's MAIL FROM is its own signed VERP address
(`digest.tracking.verp`), so the bounce names the delivery; with `[dkim]` set, each message is
DKIM-signed once its bytes are final (`dkim_signing`).
"""

from __future__ import annotations

import contextlib
import select
import smtplib
import socket
import ssl  # smtplib imports it anyway
import threading
from typing import TYPE_CHECKING, Any

from digest.config import Settings, SmtpSecurity
from digest.mail.message import one_line
from digest.tracking.verp import VerpSigner
from digest.transports import OutgoingBatch, OutgoingMessage, SendOutcome, SendResult
from digest.transports.dkim_signing import DkimSigner
from digest.transports.retry import RetryPolicy
from digest.transports.smtp_message import SharedMessage, data_payload

if TYPE_CHECKING:
    from digest.transports import OutgoingRecipient

_SHARED_KEPT = 64  # serialised messages kept: a personal issue sends one per variant


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return one_line(text)[:300]


class _Refused(Exception):
    def __init__(self, code: int, reply: bytes | str, step: str) -> None:
        self.code = code
        self.message = f"SMTP {code} at {step}: {_text(reply)}"
        super().__init__(self.message)

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class _Unusable(Exception):
    """The server refuses us whatever the message (authentication): fail the rest of the batch."""


class _CutDuringData(Exception):
    """The connection failed after the body began: the server may have queued the message."""


def _envelope(address: str) -> bytes:
    """`<address>` for MAIL/RCPT; ValueError for what would break the command line."""
    address = address.strip()
    if not address.isascii() or not address.isprintable() or any(c in address for c in "<> "):
        raise ValueError(f"not an address SMTP can carry without SMTPUTF8: {address!r}")
    return b"<" + address.encode() + b">"


class SmtpTransport:
    name = "smtp"
    # Every message is answered on its own: the sender records each before the next goes
    # (digest.sending.stream), so a crash leaves only the messages in flight unknown.
    confirms_each = True

    def __init__(
        self,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.smtp
        self.policy = policy or RetryPolicy()
        self.max_batch_size = settings.delivery.batch_size
        self._ssl_context = ssl_context
        self._idle: list[smtplib.SMTP] = []  # the pool: connections not in use by a thread
        self._lock = threading.Lock()
        self._shared: dict[int, SharedMessage] = {}
        self._mail_from = _envelope(settings.sender.from_email)
        domain = settings.bounces.domain
        secret = settings.secret_key.get_secret_value().encode()
        self._verp = VerpSigner(secret, domain) if domain else None
        self._dkim = DkimSigner.from_settings(settings)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy,
        ssl_context: ssl.SSLContext | None = None,
    ) -> SmtpTransport:
        return cls(settings, policy=policy, ssl_context=ssl_context)

    # -- connections ----------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        """Made once, and only when TLS is used: create_default_context costs ~10 ms."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        connection: smtplib.SMTP
        # EHLO with the host name as is: smtplib's default, socket.getfqdn(), can spend
        # seconds in reverse DNS on every connection.
        name = socket.gethostname() or "localhost"
        if config.security == SmtpSecurity.SSL:
            connection = smtplib.SMTP_SSL(
                config.host, config.port, local_hostname=name, timeout=config.timeout,
                context=self._tls(),
            )  # fmt: skip
        else:
            connection = smtplib.SMTP(
                config.host, config.port, local_hostname=name, timeout=config.timeout
            )
        try:
            connection.ehlo()
            if config.security == SmtpSecurity.STARTTLS:
                connection.starttls(context=self._tls())
                connection.ehlo()
            if config.username:
                self._login(connection)
        except BaseException:
            _quietly_close(connection)
            raise
        return connection

    def _login(self, connection: smtplib.SMTP) -> None:
        config = self.config
        password = config.password.get_secret_value() if config.password else ""
        try:
            connection.login(config.username or "", password)
        except smtplib.SMTPAuthenticationError as exc:
            raise _Unusable(
                f"SMTP authentication as {config.username!r} at {config.host}:"
                f"{config.port} refused: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise _Unusable(f"SMTP server {config.host} offers no AUTH: {exc}") from exc

    def _take(self) -> tuple[smtplib.SMTP, bool]:
        """A connection from the pool (True) or a new one (False).

        A pooled connection the server has closed, or spoken on unasked (a 421 for idleness),
        is readable: it is dropped here, before a BDAT could go into it with no way to tell
        afterwards whether the server had read it.
        """
        while True:
            with self._lock:
                if not self._idle:
                    break
                connection = self._idle.pop()
            if not _readable(connection):
                return connection, True
            _quietly_close(connection)
        return self._connect(), False

    def _give_back(self, connection: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.append(connection)

    def close(self) -> None:
        with self._lock:
            connections, self._idle = self._idle, []
        for connection in connections:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                _quietly_close(connection)

    # -- sending --------------------------------------------------------------------------------

    def _message(self, message: OutgoingMessage) -> SharedMessage:
        with self._lock:
            shared = self._shared.get(id(message))
            if shared is None or shared.message is not message:
                if len(self._shared) >= _SHARED_KEPT:  # personal issues: one per variant
                    self._shared.pop(next(iter(self._shared)))
                shared = self._shared[id(message)] = SharedMessage(self.settings, message)
            return shared

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        shared = self._message(batch.message)
        results: list[SendResult] = []
        for recipient in batch.recipients:
            try:
                results.append(self._send_one(shared, recipient))
            except _Unusable as exc:  # the same for everyone: do not try each recipient
                results += [
                    SendResult(r.email, SendOutcome.FAILED, None, str(exc))
                    for r in batch.recipients[len(results) :]
                ]
                break
        return results

    def _send_one(self, shared: SharedMessage, recipient: OutgoingRecipient) -> SendResult:
        try:
            message = shared.bytes_for(recipient)
            to = _envelope(recipient.email)
            mail_from = self._return_path(recipient)
            if self._dkim is not None:
                message = self._dkim.sign(message)
        except ValueError as exc:
            return SendResult(recipient.email, SendOutcome.FAILED, None, str(exc))
        policy = self.policy
        deadline = policy.deadline()
        attempt = 0
        where = f"{self.config.host}:{self.config.port}"
        while True:
            attempt += 1
            connection, reused = None, False
            try:
                connection, reused = self._take()
                if connection.has_extn("chunking") and connection.has_extn("pipelining"):
                    self._converse_bdat(connection, mail_from, to, message)
                else:
                    self._converse(connection, mail_from, to, data_payload(message))
                self._give_back(connection)
                return SendResult(recipient.email, SendOutcome.ACCEPTED)
            except _Refused as refused:
                error = refused.message
                self._reset(connection)
                if not refused.temporary:
                    return SendResult(recipient.email, SendOutcome.FAILED, None, error)
            except _CutDuringData as cut:
                _quietly_close(connection)
                error = f"SMTP connection to {where} lost during DATA: {cut.__cause__}"
                if not policy.retry_ambiguous:
                    return SendResult(recipient.email, SendOutcome.UNKNOWN, None, error)
            except (smtplib.SMTPException, OSError) as exc:
                _quietly_close(connection)
                if reused:  # the server closed it while idle: not an attempt, no pause
                    attempt -= 1
                    continue
                error = f"SMTP connection to {where}: {exc}"
            wait = policy.backoff(attempt)
            if attempt >= policy.max_attempts or policy.clock() + wait > deadline:
                return SendResult(
                    recipient.email,
                    SendOutcome.FAILED,
                    None,
                    f"gave up after {attempt} attempts: {error}",
                )
            policy.sleep(wait)

    def _return_path(self, recipient: OutgoingRecipient) -> bytes:
        """The MAIL FROM of one message: its VERP address, else the sender's address."""
        if self._verp is None:
            return self._mail_from
        address = self._verp.address(
            delivery_id=recipient.delivery_id, subscriber_id=recipient.subscriber_id
        )
        return self._mail_from if address is None else _envelope(address)

    def _converse(self, connection: smtplib.SMTP, mail_from: bytes, to: bytes, data: bytes) -> None:
        """MAIL, RCPT, DATA (in one write if pipelining), then the body.

        Raises _Refused for a refusal, _CutDuringData once body bytes may have gone, and
        SMTPException/OSError when cut off before (nothing was delivered).
        """
        commands = [b"MAIL FROM:" + mail_from, b"RCPT TO:" + to, b"DATA"]
        if connection.has_extn("pipelining"):
            connection.send(b"\r\n".join(commands) + b"\r\n")
            replies = [connection.getreply() for _ in commands]
        else:
            replies = []
            for command in commands:
                connection.send(command + b"\r\n")
                replies.append(connection.getreply())
                if replies[-1][0] not in (250, 251, 354):
                    replies += [(503, b"not sent")] * (len(commands) - len(replies))
                    break
        (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
        refusal = None
        if mail_code != 250:
            refusal = _Refused(mail_code, mail_reply, "MAIL FROM")
        elif rcpt_code not in (250, 251):
            refusal = _Refused(rcpt_code, rcpt_reply, "RCPT TO")
        elif data_code != 354:
            refusal = _Refused(data_code, data_reply, "DATA")
        if refusal is not None:
            if data_code == 354:  # DATA accepted after all (RFC 2920 §3.1): an empty message
                connection.send(b".\r\n")
                connection.getreply()
            raise refusal
        try:
            connection.send(data)
            code, reply = connection.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise _CutDuringData() from exc
        if code != 250:
            raise _Refused(code, reply, "end of DATA")

    def _converse_bdat(
        self, connection: smtplib.SMTP, mail_from: bytes, to: bytes, message: bytes
    ) -> None:
        """MAIL, RCPT and the whole message as one `BDAT n LAST` (RFC 3030), in one write: one
        round trip. A refused MAIL or RCPT leaves the BDAT nothing to deliver; a connection
        lost before a refusal was read may have delivered it (_CutDuringData)."""
        head = b"MAIL FROM:%s\r\nRCPT TO:%s\r\nBDAT %d LAST\r\n" % (mail_from, to,
                                                                       len(message))  # fmt: skip
        try:
            connection.send(head + message)
            mail_code, mail_reply = connection.getreply()
            refusal = None if mail_code == 250 else _Refused(mail_code, mail_reply, "MAIL FROM")
            rcpt_code, rcpt_reply = (0, b"") if refusal else connection.getreply()
            if not refusal and rcpt_code not in (250, 251):
                refusal = _Refused(rcpt_code, rcpt_reply, "RCPT TO")
        except (smtplib.SMTPException, OSError) as exc:
            raise _CutDuringData() from exc
        if refusal is not None:  # nothing to deliver: the replies still due are read (or not)
            with contextlib.suppress(smtplib.SMTPException, OSError):
                for _ in range(2 if rcpt_code == 0 else 1):
                    connection.getreply()
            raise refusal
        try:
            code, reply = connection.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise _CutDuringData() from exc
        if code != 250:
            raise _Refused(code, reply, "BDAT")

    def _reset(self, connection: smtplib.SMTP | None) -> None:
        """RSET after a refusal, and back to the pool; a connection that fails it is dropped."""
        if connection is None:
            return
        try:
            code, _ = connection.rset()
        except (smtplib.SMTPException, OSError):
            _quietly_close(connection)
            return
        if code == 250:
            self._give_back(connection)
        else:
            _quietly_close(connection)


def _readable(connection: smtplib.SMTP) -> bool:
    """Whether an idle connection has something to read (end of file, an unasked reply)."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not ready or not hasattr(sock, "pending"):
        return bool(ready)
    # TLS: the bytes may be a record with no data for us (a TLS 1.3 session ticket).
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1)  # data or end of file: the connection is not idle any more
        return True
    except (ssl.SSLWantReadError, BlockingIOError):
        return False  # only TLS records: still idle, still usable
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _quietly_close(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(OSError):
            connection.close()
