"""SMTP: one connection per sending thread, reused for every message, one message per recipient.

Each recipient gets a complete message with the tokens filled in (`digest.mail.message`). The
conversation is driven step by step (MAIL, RCPT, DATA) rather than through `sendmail`, so that a
failure is placed exactly: refused before DATA means not sent (a 4xx is retried after a pause,
a 5xx fails that recipient only); a connection lost before DATA is reconnected and retried; a
connection lost *during* DATA may have delivered the message, so it is reported unknown.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
from typing import Any

from digest.config import Settings, SmtpSecurity
from digest.mail.message import one_line
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    SendOutcome,
    SendResult,
    recipient_mime,
)
from digest.transports.retry import RetryPolicy


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
    """The connection failed after DATA began: the server may have queued the message."""


class SmtpTransport:
    name = "smtp"

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
        self._local = threading.local()
        self._all: list[smtplib.SMTP] = []
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policy: RetryPolicy,
        ssl_context: ssl.SSLContext | None = None,
    ) -> SmtpTransport:
        return cls(settings, policy=policy, ssl_context=ssl_context)

    # -- connection -----------------------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        context = self._ssl_context or ssl.create_default_context()
        connection: smtplib.SMTP
        # EHLO with the host name as is: smtplib's default, socket.getfqdn(), can spend
        # seconds in reverse DNS on every connection.
        name = socket.gethostname() or "localhost"
        if config.security == SmtpSecurity.SSL:
            connection = smtplib.SMTP_SSL(
                config.host, config.port, local_hostname=name, timeout=config.timeout,
                context=context,
            )  # fmt: skip
        else:
            connection = smtplib.SMTP(
                config.host, config.port, local_hostname=name, timeout=config.timeout
            )
        try:
            connection.ehlo()
            if config.security == SmtpSecurity.STARTTLS:
                connection.starttls(context=context)
                connection.ehlo()
            if config.username:
                password = config.password.get_secret_value() if config.password else ""
                try:
                    connection.login(config.username, password)
                except smtplib.SMTPAuthenticationError as exc:
                    raise _Unusable(
                        f"SMTP authentication as {config.username!r} at {config.host}:"
                        f"{config.port} refused: {exc.smtp_code} {_text(exc.smtp_error)}"
                    ) from exc
                except smtplib.SMTPNotSupportedError as exc:
                    raise _Unusable(f"SMTP server {config.host} offers no AUTH: {exc}") from exc
        except BaseException:
            _quietly_close(connection)
            raise
        with self._lock:
            self._all.append(connection)
        return connection

    def _connection(self) -> smtplib.SMTP:
        connection: smtplib.SMTP | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            _quietly_close(connection)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            try:
                connection.quit()
            except (smtplib.SMTPException, OSError):
                _quietly_close(connection)

    # -- sending --------------------------------------------------------------------------------

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results: list[SendResult] = []
        for recipient in batch.recipients:
            try:
                results.append(self._send_one(batch.message, recipient))
            except _Unusable as exc:  # the same for everyone: do not try each recipient
                results += [
                    SendResult(r.email, SendOutcome.FAILED, None, str(exc))
                    for r in batch.recipients[len(results) :]
                ]
                break
        return results

    def _send_one(self, message: OutgoingMessage, recipient: OutgoingRecipient) -> SendResult:
        try:
            data = recipient_mime(self.settings, message, recipient).as_bytes()
        except ValueError as exc:
            return SendResult(recipient.email, SendOutcome.FAILED, None, str(exc))
        policy = self.policy
        deadline = policy.deadline()
        attempt = 0
        while True:
            attempt += 1
            try:
                self._converse(self._connection(), recipient.email, data)
                return SendResult(recipient.email, SendOutcome.ACCEPTED)
            except _Refused as refused:
                error = refused.message
                if not refused.temporary:
                    return SendResult(recipient.email, SendOutcome.FAILED, None, error)
            except _CutDuringData as cut:
                self._drop()
                where = f"{self.config.host}:{self.config.port}"
                error = f"SMTP connection to {where} lost during DATA: {cut.__cause__}"
                if not policy.retry_ambiguous:
                    return SendResult(recipient.email, SendOutcome.UNKNOWN, None, error)
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                error = f"SMTP connection to {self.config.host}:{self.config.port}: {exc}"
            wait = policy.backoff(attempt)
            if attempt >= policy.max_attempts or policy.clock() + wait > deadline:
                return SendResult(
                    recipient.email,
                    SendOutcome.FAILED,
                    None,
                    f"gave up after {attempt} attempts: {error}",
                )
            policy.sleep(wait)

    def _converse(self, connection: smtplib.SMTP, to: str, data: bytes) -> None:
        """MAIL, RCPT, DATA; raises _Refused for a refusal (after RSET), OSError when cut off."""
        code, reply = connection.mail(self.settings.sender.from_email)
        if code != 250:
            self._reset(connection)
            raise _Refused(code, reply, "MAIL FROM")
        code, reply = connection.rcpt(to)
        if code not in (250, 251):
            self._reset(connection)
            raise _Refused(code, reply, "RCPT TO")
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPDataError as exc:  # refused before any message byte was sent
            self._reset(connection)
            raise _Refused(exc.smtp_code, exc.smtp_error, "DATA") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise _CutDuringData() from exc
        if code != 250:
            self._reset(connection)
            raise _Refused(code, reply, "end of DATA")

    def _reset(self, connection: smtplib.SMTP) -> None:
        try:
            connection.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()


def _quietly_close(connection: Any) -> None:
    with contextlib.suppress(OSError):
        connection.close()
